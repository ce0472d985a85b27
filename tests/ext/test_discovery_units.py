"""The LAN discovery responder's answer and limits, value by value, without
sending a datagram: the defaults, the argument check, what getPingData is
asked, the answer's size limit and its fallback."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from peng3dnet.ext import discovery
from peng3dnet.ext.discovery import DiscoveryResponder
from peng3dnet.net import Server
from peng3dnet.version import PROTOVERSION, RELEASE, VERSION

INFO = {"version": VERSION, "release": RELEASE, "protoversion": PROTOVERSION}


class Pingable(Server):
    def __init__(self, data: Any) -> None:
        super().__init__(addr=("127.0.0.1", 0))
        self.data = data
        self.asked: list = []

    def getPingData(self, msg: Any, cid: Any) -> Any:  # noqa: N802 (0.1.x name)
        self.asked.append((msg, cid))
        return self.data


def _responder(server: Server, **kw: Any) -> DiscoveryResponder:
    return DiscoveryResponder(server, port=0, host="127.0.0.1", **kw)


def test_the_defaults_are_four_answers_a_second_per_address_and_64_in_all():
    resp = _responder(Server(addr=("127.0.0.1", 0)))
    try:
        assert (resp.per_address, resp.total, resp.public) == (4.0, 64.0, False)
        t = 1000.0
        assert [resp.allowed("10.0.0.1", t) for _ in range(9)] == [True] * 8 + [False]  # burst: twice the rate
        assert sum(resp.allowed(f"10.0.1.{i}", t) for i in range(200)) == 128 - 8  # the total's burst
    finally:
        resp.stop()


def test_any_positive_rate_is_accepted_and_others_refused_with_a_reason():
    s = Server(addr=("127.0.0.1", 0))
    resp = _responder(s, per_address=0.5, total=0.5)
    resp.stop()
    with pytest.raises(ValueError, match="^per_address and total must be positive answers per second$"):
        _responder(s, total=0)


def test_the_answer_carries_the_ping_data_the_version_and_the_port():
    s = Pingable({"name": "lan game", "players": 3})
    resp = _responder(s)
    try:
        got = msgpack.unpackb(resp.answer())
        assert got == {"name": "lan game", "players": 3, "peng3dnet": INFO, "port": s.addr[1]}
        assert s.asked == [({"discovery": True}, None)]  # what getPingData is asked
    finally:
        resp.stop()


def test_an_answer_of_exactly_the_datagram_limit_is_kept_one_byte_more_falls_back():
    s = Pingable({"name": ""})
    resp = _responder(s)
    port = s.addr[1]

    def size(n: int) -> int:  # the answer's encoding, key order as answer() builds it
        return len(msgpack.packb({"name": "x" * n, "peng3dnet": INFO, "port": port}))

    try:
        n = discovery._MAX - size(0) - 2  # a str16 name (3-byte header) grows one byte per character
        while size(n) < discovery._MAX:
            n += 1
        assert size(n) == discovery._MAX
        s.data = {"name": "x" * n}
        out = resp.answer()
        assert len(out) == discovery._MAX and msgpack.unpackb(out)["name"] == "x" * n
        s.data = {"name": "x" * (n + 1)}
        assert msgpack.unpackb(resp.answer()) == {"peng3dnet": INFO, "port": port}
    finally:
        resp.stop()
