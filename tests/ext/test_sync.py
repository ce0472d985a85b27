"""peng3dnet.ext.sync as a whole: the public names and signatures."""

from __future__ import annotations

import inspect
import time

import peng3dnet.ext.sync as sync


def test_public_names():
    assert sorted(sync.__all__) == sorted(
        ["SyncServer", "SyncClient", "SNAPSHOT_PACKET", "INPUT_PACKET", "checksum", "diff_views", "apply_delta", "distance_interest"]
    )
    assert (sync.SNAPSHOT_PACKET, sync.INPUT_PACKET) == ("peng3dnet:sync.snapshot", "peng3dnet:sync.input")
    for name in sync.__all__:
        obj = getattr(sync, name)
        assert isinstance(obj, str) or obj.__module__.startswith("peng3dnet.ext.sync.")


def test_signatures_kept():
    def params(fn):
        return [(p.name, p.kind.name, p.default) for p in inspect.signature(fn).parameters.values()]

    kw = "KEYWORD_ONLY"
    assert params(sync.SyncServer)[:4] == [
        ("server", "POSITIONAL_OR_KEYWORD", inspect.Parameter.empty),
        ("tick_rate", kw, 20.0),
        ("history", kw, 64),
        ("interest", kw, None),
    ]
    assert params(sync.SyncClient) == [
        ("client", "POSITIONAL_OR_KEYWORD", inspect.Parameter.empty),
        ("tick_rate", kw, 20.0),
        ("interp_delay", kw, 0.1),
        ("history", kw, 64),
        ("predict", kw, None),
        ("clock", kw, time.monotonic),
        ("ack_every", kw, 2),
    ]
    assert [p[0] for p in params(sync.distance_interest)] == ["radius", "x", "y"]
    assert [p[0] for p in params(sync.diff_views)] == ["base", "new"]
    assert [p[0] for p in params(sync.apply_delta)] == ["base", "delta"]
    assert [p[0] for p in params(sync.checksum)] == ["view"]
