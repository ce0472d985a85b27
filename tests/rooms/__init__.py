"""Helpers of the rooms tests."""

from __future__ import annotations

from typing import Any

from peng3dnet.ext.rooms import RoomClient, RoomServer
from peng3dnet.net import Client, Server
from tests.helpers import RedisServer as RedisServer  # (a test's own redis-server: its home is tests/helpers.py)


def room_client(net: Any, addr: Any, **kw: Any) -> tuple[Client, RoomClient]:
    """A running, handshaken Client with a RoomClient (cleaned up by ``net``)."""
    c = Client(addr=addr, **kw)
    rc = RoomClient(c)
    net.clients.append(c)
    c.runAsync()
    c.process_async()
    c.wait_for_connection(10)
    return c, rc


def room_server(net: Any, presence: Any, room_cls: Any, **kw: Any) -> RoomServer:
    """A running Server with a started RoomServer offering ``arena`` rooms."""
    s = Server(cfg={"net.server.addr": ("127.0.0.1", 0)})
    rooms = RoomServer(s, presence, **kw)
    rooms.define("arena", room_cls)
    net.servers.append(s)
    s.runAsync()
    s.process_async()
    rooms.start()
    return rooms


class FakeServer:
    """What a RoomServer uses of a Server (for unit tests without sockets):
    handlers and packets registered, events sent recorded."""

    def __init__(self) -> None:
        self.clients: dict[int, Any] = {}
        self.handlers: dict[str, Any] = {}
        self.events: list[tuple[str, dict]] = []
        self.cfg = {"net.limits.max_clients": 100}
        self.addr = ("127.0.0.1", 4000)
        self.registry = object()
        self.packets: dict[str, Any] = {}
        self.broadcasts: list[tuple[Any, Any, Any]] = []

    def handler(self, name: str) -> Any:
        def register(fn: Any) -> Any:
            self.handlers[name] = fn
            return fn

        return register

    def register_packet(self, name: str, packet: Any) -> None:
        self.packets[name] = packet

    def sendEvent(self, event: str, data: dict) -> None:  # noqa: N802 (the fixed API)
        self.events.append((event, dict(data)))

    def broadcast(self, ptype: Any, data: Any, cids: Any = None) -> int:
        self.broadcasts.append((ptype, data, cids))
        return len(cids or ())


class FakeClient:
    def __init__(self, cid: int) -> None:
        self.cid = cid
