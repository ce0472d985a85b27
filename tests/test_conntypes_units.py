"""The ping connection type, value by value, with a fake peer and a fake
clock (no sockets): the request a client sends, and the result it makes of
the server's reply (the round trip in seconds, the time it came)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from peng3dnet import conntypes
from peng3dnet.conntypes import PingConnectionType
from peng3dnet.constants import PID_PING_REPLY, PID_PING_REQUEST, SIDE_CLIENT


class FakeClient:
    side = SIDE_CLIENT

    def __init__(self) -> None:
        self.sent: list[tuple[Any, int, Any]] = []
        self.closed: list[tuple[Any, Any]] = []
        self.ping_request_data = {"who": "me"}

    def send_raw(self, cid: Any, pid: int, msg: Any) -> None:
        self.sent.append((cid, pid, msg))

    def close_connection(self, cid: Any = None, reason: str | None = None) -> None:
        self.closed.append((cid, reason))


def test_the_ping_result_holds_the_round_trip_in_seconds(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(conntypes, "time", SimpleNamespace(time=lambda: clock[0]))
    peer = FakeClient()
    ct = PingConnectionType(peer)
    ct.init(None)  # the client's request, stamped with the time it was sent
    ((cid, pid, request),) = peer.sent
    assert (cid, pid, request) == (None, PID_PING_REQUEST, {"who": "me", "time": 1000.0})
    clock[0] = 1000.25  # the reply comes a quarter of a second later
    assert ct.receive({"oldmsg": request, "name": "srv"}, PID_PING_REPLY, 0, None) is True  # (consumed: 0.1.x reads a true result as "stop here")
    assert ct.result is not None
    assert ct.result["delay"] == pytest.approx(0.25) and ct.result["recvtime"] == 1000.25
    assert ct.result["name"] == "srv" and ct.result["oldmsg"] == request
    assert peer.closed == [(None, "pingcomplete")]


def test_a_reply_without_the_request_time_has_no_delay(monkeypatch):
    monkeypatch.setattr(conntypes, "time", SimpleNamespace(time=lambda: 5.0))
    peer = FakeClient()
    ct = PingConnectionType(peer)
    ct.receive({"oldmsg": {"who": "me"}}, PID_PING_REPLY, 0, None)
    assert ct.result is not None and ct.result["delay"] is None and ct.result["recvtime"] == 5.0
