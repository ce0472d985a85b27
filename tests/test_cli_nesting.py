"""A LAN answer nested deeply (under 2 KiB, within msgpack's limits) does not
crash 'peng3dnet discover' (found by a review)."""

from __future__ import annotations

import msgpack
import pytest

from tests.test_cli import cli
from tests.test_cli_hostile import FakeResponder


def _deep(n: int) -> bytes:
    v: list = []
    for _ in range(n):
        v = [v]
    return msgpack.packb({"port": 9, "name": "lan", "x": v})


@pytest.mark.timeout(60)
@pytest.mark.parametrize("as_json", [True, False])
def test_discover_survives_a_deeply_nested_answer(as_json):
    fake = FakeResponder(_deep(1000))
    try:
        extra = ["--json"] if as_json else []
        out = cli("discover", "--addr", "127.0.0.1", "--port", str(fake.port), "--timeout", "1", *extra)
    finally:
        fake.close()
    assert "Traceback" not in out.stderr, out.stderr[-600:]
    assert out.returncode == 0, out.stderr[-600:]
