"""The client side of rooms: join by name, by kind, or with a seat token."""

from __future__ import annotations

from typing import Any

from ...packet import Packet
from .server import JOIN_PACKET, LEAVE_PACKET

__all__ = ["RoomClient"]


class RoomClient:
    """Rooms for one :class:`~peng3dnet.net.Client` (make it before the
    client connects: it registers the room packets).

    Thread safety: any thread but the client's network thread (the calls
    block); :attr:`room` is what the last join answered.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self.room: str | None = None
        """The room we are in (``None``: none)."""
        self.kind: str | None = None
        for name in (JOIN_PACKET, LEAVE_PACKET):
            if name not in client.registry:
                client.register_packet(name, Packet(client.registry, client))

    def join(
        self,
        room: str | None = None,
        *,
        kind: str | None = None,
        options: dict[str, Any] | None = None,
        seat: bytes | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Join a room: ``room`` by name (made if ``kind`` is given and it
        does not exist), or any room of ``kind`` with a free seat (made when
        none has one), or the room of a ``seat`` token from a
        :class:`~.lobby.Lobby` (a token the server checked at login is used
        when none is given).  Leaves the room we were in.

        Returns:
            ``{"room", "kind", "clients", "data"}`` (``data``: what the
            room's ``on_join`` returned).

        Raises:
            RemoteCallError: Refused (full, unknown room, bad seat, or the
                room's own reason).
        """
        req = {"room": room, "kind": kind, "options": options or {}, "seat": seat}
        answer: dict[str, Any] = self.client.call(JOIN_PACKET, req, timeout=timeout)
        self.room, self.kind = answer["room"], answer["kind"]
        return answer

    def leave(self, timeout: float | None = None) -> bool:
        """Leave the room we are in; whether we were in one."""
        left = bool(self.client.call(LEAVE_PACKET, None, timeout=timeout))
        self.room = self.kind = None
        return left
