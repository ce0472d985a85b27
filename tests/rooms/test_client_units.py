"""RoomClient on a stand-in client: the packets it registers, what its
calls send (and their time-outs), and the room it remembers."""

from __future__ import annotations

from typing import Any

import pytest

from peng3dnet.errors import RemoteCallError
from peng3dnet.ext.rooms import RoomClient
from peng3dnet.ext.rooms.server import JOIN_PACKET, LEAVE_PACKET


class FakeClient:
    def __init__(self, answers: list[Any]) -> None:
        self.registry: dict[str, Any] = {}
        self.calls: list[tuple[str, Any, Any]] = []
        self.answers = answers

    def register_packet(self, name: str, packet: Any) -> None:
        self.registry[name] = packet

    def call(self, name: str, msg: Any, timeout: float | None = None) -> Any:
        self.calls.append((name, msg, timeout))
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def test_the_room_packets_are_registered_once_for_the_client():
    c = FakeClient([])
    rc = RoomClient(c)
    assert (rc.room, rc.kind) == (None, None)
    assert set(c.registry) == {JOIN_PACKET, LEAVE_PACKET}
    for packet in c.registry.values():
        assert packet.reg is c.registry and packet.peer is c
    first = dict(c.registry)
    RoomClient(c)  # a second RoomClient keeps the registered packets
    assert c.registry == first


def test_join_and_leave_send_their_requests_with_their_time_outs_and_remember_the_room():
    answer = {"room": "red", "kind": "arena", "clients": 2, "data": {"hi": 1}}
    c = FakeClient([answer, 1, RemoteCallError("room 'x' is full"), 0])
    rc = RoomClient(c)
    assert rc.join("red", kind="arena", options={"o": 1}, timeout=2.5) == answer
    assert (rc.room, rc.kind) == ("red", "arena")
    assert rc.leave(timeout=1.5) is True
    assert (rc.room, rc.kind) == (None, None)
    with pytest.raises(RemoteCallError):
        rc.join(seat=b"tok")
    assert rc.leave() is False
    assert c.calls == [
        (JOIN_PACKET, {"room": "red", "kind": "arena", "options": {"o": 1}, "seat": None}, 2.5),
        (LEAVE_PACKET, None, 1.5),
        (JOIN_PACKET, {"room": None, "kind": None, "options": {}, "seat": b"tok"}, None),
        (LEAVE_PACKET, None, None),
    ]
