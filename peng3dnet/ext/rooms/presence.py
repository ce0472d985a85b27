"""Presence and directory: what every server process of a game shares.

One small interface, two implementations: :class:`LocalPresence` (one
process, nothing to install; the default) and
:class:`~peng3dnet.ext.rooms.redispresence.RedisPresence` (many processes or
machines, on Redis or Valkey).  Through it:

* each server process registers itself (``server_info``: its public address,
  kinds of rooms, players, load) with a TTL that it refreshes; a process that
  dies disappears when its TTL runs out;
* rooms are listed with their seats (``room_info``), each also with a TTL
  refreshed by its server;
* a seat is reserved atomically (:meth:`Presence.reserve_seat`: no double
  booking under concurrency) and a reservation's token is used once
  (:meth:`Presence.claim`);
* :meth:`Presence.publish` reaches every subscriber of the channel in every
  process, once;
* a shared key/value store and sorted sets (leaderboards).

Values are plain msgpack-able data (dicts, lists, str, int, float, bytes).
Thread safety: every method from any thread; subscription callbacks run on
the presence's own thread (Redis) or on the publishing thread (local).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Presence", "LocalPresence"]


class Presence:
    """The interface (see the module docstring).  Methods raise
    :class:`~peng3dnet.errors.NetworkError` when the backing store cannot be
    reached."""

    # --- servers -----------------------------------------------------------------------------
    def register_server(self, server_id: str, info: dict[str, Any], ttl: float) -> None:
        """Register (or refresh) a server process for ``ttl`` seconds."""
        raise NotImplementedError

    def unregister_server(self, server_id: str) -> None:
        """Remove a server process and its rooms now (a clean stop)."""
        raise NotImplementedError

    def servers(self) -> dict[str, dict[str, Any]]:
        """The live server processes: id -> info."""
        raise NotImplementedError

    # --- rooms -------------------------------------------------------------------------------
    def set_room(self, room_id: str, info: dict[str, Any], ttl: float) -> None:
        """Publish (or refresh) a room: ``info`` has at least ``server``,
        ``kind``, ``clients`` (how many are in it) and ``max_clients``."""
        raise NotImplementedError

    def remove_room(self, room_id: str) -> None:
        raise NotImplementedError

    def rooms(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Rooms on live servers (of ``kind``), each info with ``id`` and
        ``seats`` (free seats: ``max_clients`` minus clients minus
        reservations not yet used)."""
        raise NotImplementedError

    def reserve_seat(self, room_id: str, seat_id: str, ttl: float, info: dict[str, Any] | None = None) -> bool:
        """Reserve one seat of ``room_id`` for ``ttl`` seconds, atomically:
        ``False`` when the room is full (clients + live reservations).  With
        ``info`` the room is created in the directory if it is not there
        (a room the lobby places on a server before the server made it)."""
        raise NotImplementedError

    def release_seat(self, room_id: str, seat_id: str) -> None:
        """The reservation was used (the client is in the room) or given up."""
        raise NotImplementedError

    def claim(self, token_id: str, ttl: float) -> bool:
        """Mark a token used; ``False`` when it already was (replay)."""
        raise NotImplementedError

    # --- messages ------------------------------------------------------------------------------
    def publish(self, channel: str, data: Any) -> int:
        """Send ``data`` to every subscriber of ``channel`` in every process;
        returns how many processes' subscriptions got it (as Redis counts)."""
        raise NotImplementedError

    def subscribe(self, channel: str, callback: Callable[[str, Any], None]) -> None:
        """Call ``callback(channel, data)`` for every message published on
        ``channel`` from now on."""
        raise NotImplementedError

    def unsubscribe(self, channel: str, callback: Callable[[str, Any], None]) -> None:
        raise NotImplementedError

    # --- shared data ---------------------------------------------------------------------------
    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        raise NotImplementedError

    def get(self, key: str, default: Any = None) -> Any:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def incr_score(self, key: str, member: str, amount: float) -> float:
        """Add ``amount`` to ``member``'s score in sorted set ``key``; the new score."""
        raise NotImplementedError

    def top(self, key: str, n: int = 10) -> list[tuple[str, float]]:
        """The ``n`` best of sorted set ``key``, best first."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections and threads."""


class LocalPresence(Presence):
    """Presence inside one process: dicts under a lock, TTLs on
    :func:`time.monotonic`.  The default of a
    :class:`~peng3dnet.ext.rooms.RoomServer`; share one instance between
    servers of one process to have them see each other."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.RLock()
        self._servers: dict[str, tuple[float, dict[str, Any]]] = {}
        self._rooms: dict[str, tuple[float, dict[str, Any]]] = {}
        self._seats: dict[str, dict[str, float]] = {}  # room -> seat -> expiry
        self._claims: dict[str, float] = {}
        self._subs: dict[str, list[Callable[[str, Any], None]]] = {}
        self._kv: dict[str, tuple[float | None, Any]] = {}
        self._zsets: dict[str, dict[str, float]] = {}

    def _live(self, table: dict[str, tuple[float, Any]]) -> dict[str, Any]:
        now = self._clock()
        for key in [k for k, (exp, _) in table.items() if exp <= now]:
            del table[key]
        return {k: v for k, (_, v) in table.items()}

    def register_server(self, server_id: str, info: dict[str, Any], ttl: float) -> None:
        with self._lock:
            self._servers[server_id] = (self._clock() + ttl, dict(info))

    def unregister_server(self, server_id: str) -> None:
        with self._lock:
            self._servers.pop(server_id, None)
            for rid in [r for r, (_, i) in self._rooms.items() if i.get("server") == server_id]:
                self.remove_room(rid)

    def servers(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return self._live(self._servers)

    def set_room(self, room_id: str, info: dict[str, Any], ttl: float) -> None:
        with self._lock:
            self._rooms[room_id] = (self._clock() + ttl, dict(info))

    def remove_room(self, room_id: str) -> None:
        with self._lock:
            self._rooms.pop(room_id, None)
            self._seats.pop(room_id, None)

    def _reserved(self, room_id: str) -> int:
        seats = self._seats.get(room_id)
        if not seats:
            return 0
        now = self._clock()
        for sid in [s for s, exp in seats.items() if exp <= now]:
            del seats[sid]
        return len(seats)

    def rooms(self, kind: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            live_servers = self._live(self._servers)
            out = []
            for rid, info in self._live(self._rooms).items():
                if info.get("server") not in live_servers or (kind is not None and info.get("kind") != kind):
                    continue
                seats = int(info.get("max_clients", 0)) - int(info.get("clients", 0)) - self._reserved(rid)
                out.append({**info, "id": rid, "seats": max(0, seats)})
            return out

    def reserve_seat(self, room_id: str, seat_id: str, ttl: float, info: dict[str, Any] | None = None) -> bool:
        with self._lock:
            rooms = self._live(self._rooms)
            room = rooms.get(room_id)
            if room is None:
                if info is None:
                    return False
                self._rooms[room_id] = (self._clock() + ttl, dict(info))
                room = info
            free = int(room.get("max_clients", 0)) - int(room.get("clients", 0)) - self._reserved(room_id)
            if free <= 0:
                return False
            self._seats.setdefault(room_id, {})[seat_id] = self._clock() + ttl
            return True

    def release_seat(self, room_id: str, seat_id: str) -> None:
        with self._lock:
            self._seats.get(room_id, {}).pop(seat_id, None)

    def claim(self, token_id: str, ttl: float) -> bool:
        with self._lock:
            now = self._clock()
            exp = self._claims.get(token_id)
            if exp is not None and exp > now:
                return False
            self._claims[token_id] = now + ttl
            if len(self._claims) > 100_000:  # bounded: forget the expired ones
                for k in [k for k, e in self._claims.items() if e <= now]:
                    del self._claims[k]
            return True

    def publish(self, channel: str, data: Any) -> int:
        with self._lock:
            subs = list(self._subs.get(channel, ()))
        for cb in subs:
            cb(channel, data)
        return len(subs)

    def subscribe(self, channel: str, callback: Callable[[str, Any], None]) -> None:
        with self._lock:
            self._subs.setdefault(channel, []).append(callback)

    def unsubscribe(self, channel: str, callback: Callable[[str, Any], None]) -> None:
        with self._lock:
            subs = self._subs.get(channel, [])
            if callback in subs:
                subs.remove(callback)

    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        with self._lock:
            self._kv[key] = (None if ttl is None else self._clock() + ttl, value)

    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            entry = self._kv.get(key)
            if entry is None or (entry[0] is not None and entry[0] <= self._clock()):
                self._kv.pop(key, None)
                return default
            return entry[1]

    def delete(self, key: str) -> None:
        with self._lock:
            self._kv.pop(key, None)
            self._zsets.pop(key, None)

    def incr_score(self, key: str, member: str, amount: float) -> float:
        with self._lock:
            z = self._zsets.setdefault(key, {})
            z[member] = z.get(member, 0.0) + amount
            return z[member]

    def top(self, key: str, n: int = 10) -> list[tuple[str, float]]:
        with self._lock:
            z = self._zsets.get(key, {})
            return sorted(z.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
