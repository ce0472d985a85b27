"""Rooms, a lobby, and scale-out across server processes.

* :class:`RoomServer` / :class:`Room`: many named rooms per server process,
  join/leave with a maximum size, hooks, per-room state and tick (and a
  per-room ``SyncServer``), events ``peng3dnet:room.*``;
  :class:`RoomClient` joins by name, by kind or with a seat token.
* :class:`Presence`: the directory shared by the processes of a game,
  :class:`LocalPresence` in one process (the default, nothing to install),
  :class:`~peng3dnet.ext.rooms.redispresence.RedisPresence` on Redis
  (``pip install peng3dnet[redis]``): server registration with a TTL, rooms
  and seats (reserved atomically), cross-process messages
  (``peng3dnet:cluster.message``), shared keys and leaderboards.
* :class:`Lobby`: ``matchmake(kind)`` -> the address of the server that
  holds (or gets) a room with a free seat, and a signed, expiring seat token.

See the README, "Rooms, lobby and scale-out".
"""

from __future__ import annotations

from .client import RoomClient
from .lobby import Lobby, NoServerError
from .presence import LocalPresence, Presence
from .server import CLUSTER_EVENT, JOIN_PACKET, LEAVE_PACKET, Room, RoomServer
from .tokens import Seat, TokenError, make_token, read_token

__all__ = [
    "Room", "RoomServer", "RoomClient", "Presence", "LocalPresence", "Lobby", "NoServerError",
    "Seat", "TokenError", "make_token", "read_token", "JOIN_PACKET", "LEAVE_PACKET", "CLUSTER_EVENT",
]


def __getattr__(name: str) -> object:
    """``from peng3dnet.ext.rooms import RedisPresence`` imports its module
    (and redis) only then: the rest of the package needs no redis."""
    if name == "RedisPresence":
        from .redispresence import RedisPresence

        return RedisPresence
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

