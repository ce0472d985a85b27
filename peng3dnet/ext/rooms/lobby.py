"""The lobby: matchmaking over the shared directory."""

from __future__ import annotations

import time
import uuid
from typing import Any

from ...errors import Peng3dNetError
from .presence import Presence
from .tokens import ROOM_NAME_RULE, Seat, make_token, valid_room_name

__all__ = ["Lobby", "NoServerError"]


class NoServerError(Peng3dNetError):
    """No live server offers rooms of that kind with a free seat."""


class Lobby:
    """Places players in rooms across every server of the directory.

    Args:
        presence: The shared directory (a ``RedisPresence`` across processes).
        secret: The cluster's seat-token secret (the servers' ``secret``).
        seat_ttl: Seconds a reservation (and its token) stays valid.

    Thread safety: any thread.
    """

    def __init__(self, presence: Presence, secret: bytes, seat_ttl: float = 15.0) -> None:
        self.presence = presence
        self.secret = secret
        self.seat_ttl = seat_ttl

    def matchmake(self, kind: str, options: dict[str, Any] | None = None, room: str | None = None) -> dict[str, Any]:
        """Reserve a seat: in ``room`` (made on the least-loaded server if it
        does not exist), or in the fullest room of ``kind`` that has a free
        seat on a live server, or in a new room on the least-loaded server
        that offers ``kind``.  Connect to ``addr`` and join with ``token``
        (``RoomClient.join(seat=token)``, or as credentials ``{"seat": token}``
        to a server whose login hook is ``RoomServer.authenticate``).

        Returns:
            ``{"addr": "host:port", "token": bytes, "room", "server", "kind"}``.

        Raises:
            NoServerError: No live server offers ``kind`` (or ``room`` is
                full, or is a room of another kind).
            ValueError: ``room`` is not a room name (1-64 characters of
                letters, digits and ``_ . : -``), or ``options`` make a token
                over its size limit (the seat is released again).
            TypeError: ``options`` is not a dict (a room's options are).
        """
        if room is not None and not valid_room_name(room):
            raise ValueError(ROOM_NAME_RULE)
        if options is not None and not isinstance(options, dict):
            raise TypeError(f"options must be a dict, not {type(options).__name__}")
        servers = {sid: s for sid, s in self.presence.servers().items() if kind in (s.get("kinds") or {})}
        if not servers:
            raise NoServerError(f"no live server offers rooms of kind {kind!r}")
        seat_id = uuid.uuid4().hex
        if room is not None:
            candidates = [r for r in self.presence.rooms() if r["id"] == room]
            for r in candidates:  # (a name is one room in the cluster, of one kind)
                if r.get("kind") != kind:
                    raise NoServerError(f"room {room!r} is a room of kind {r.get('kind')!r}, not {kind!r}")
            if candidates and all(r["server"] not in servers for r in candidates):
                raise NoServerError(f"room {room!r} is on a server that no longer offers rooms of kind {kind!r}")
        else:
            rooms = self.presence.rooms(kind)
            # Fill rooms first (most players first), then the least-loaded server.
            candidates = sorted((r for r in rooms if r["seats"] > 0 and r["server"] in servers),
                                key=lambda r: (-r["clients"], servers[r["server"]].get("load", 0.0)))
        for r in candidates:
            if self.presence.reserve_seat(r["id"], seat_id, self.seat_ttl):
                return self._ticket(r["id"], r["server"], seat_id, kind, options, servers[r["server"]]["addr"])
        if room is not None and candidates:
            raise NoServerError(f"room {room!r} is full")
        # Least loaded, counted live from the directory: seats taken or
        # reserved in its rooms (its own report of players is refreshed
        # only every ttl/3), then the rooms it holds.
        taken = {sid: 0 for sid in servers}
        held = {sid: 0 for sid in servers}
        for r in self.presence.rooms():
            if r.get("server") in taken:
                taken[r["server"]] += int(r.get("max_clients", 0)) - int(r.get("seats", 0))
                held[r["server"]] += 1
        best = min((taken[s], held[s]) for s in servers)
        ties = sorted(s for s in servers if (taken[s], held[s]) == best)
        # Lobbies placing rooms at the same moment see the same loads: an
        # atomic counter in the directory sends them to different servers.
        turn = int(self.presence.incr_score("peng3dnet:lobby", kind, 1))
        sid = ties[turn % len(ties)]
        name = room or f"{kind}-{uuid.uuid4().hex[:8]}"
        if not valid_room_name(name):  # (a kind whose name is not a room name's beginning)
            name = f"room-{uuid.uuid4().hex[:8]}"
        info = {"server": sid, "kind": kind, "clients": 0, "max_clients": int(servers[sid]["kinds"][kind]),
                "addr": servers[sid]["addr"], "created": time.time()}
        if not self.presence.reserve_seat(name, seat_id, self.seat_ttl, info):
            raise NoServerError(f"room {name!r} is full")
        if room is not None:
            # Another lobby may have placed a room of that name at the same
            # moment: the reservation went to the room that exists, wherever
            # it is.  (Generated names are unique.)
            found = next((r for r in self.presence.rooms() if r["id"] == name), None)
            owner = sid if found is None else found["server"]
            if found is not None and found.get("kind") != kind:
                self.presence.release_seat(name, seat_id)
                raise NoServerError(f"room {name!r} is a room of kind {found.get('kind')!r}, not {kind!r}")
            if owner != sid:
                if owner not in servers:
                    self.presence.release_seat(name, seat_id)
                    raise NoServerError(f"room {name!r} is on a server that is gone")
                sid = owner
        return self._ticket(name, sid, seat_id, kind, options, servers[sid]["addr"])

    def _ticket(self, room: str, server: str, seat: str, kind: str, options: Any, addr: str) -> dict[str, Any]:
        """The ticket for a seat reserved; the seat is released again when
        no token can be made of it (options too large or not msgpack)."""
        try:
            token = make_token(self.secret, Seat(room, server, seat, kind, time.time() + self.seat_ttl, options or {}))
        except (ValueError, TypeError):
            try:
                self.presence.release_seat(room, seat)
            except Peng3dNetError:  # (it expires by itself; the caller hears of the real error)
                pass
            raise
        return {"addr": addr, "token": token, "room": room, "server": server, "kind": kind}
