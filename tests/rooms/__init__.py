"""Helpers of the rooms tests."""

from __future__ import annotations

from typing import Any

from peng3dnet.ext.rooms import RoomClient, RoomServer
from peng3dnet.net import Client, Server


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


class RedisServer:
    """A redis-server of a test's own on ``port`` (loopback, nothing saved):
    stopped and started again on the same port to stand for a Redis restart,
    or one node of a cluster (``*extra`` arguments)."""

    def __init__(self, port: int, data_dir: Any, *extra: str) -> None:
        import shutil

        exe = shutil.which("redis-server") or shutil.which("valkey-server")
        if exe is None:
            raise AssertionError("redis-server is not installed: apt-get install redis-server (bash .ci/run does it)")
        self.exe, self.port, self.dir, self.extra = exe, port, str(data_dir), extra
        self.proc: Any = None
        self.reader: Any = None
        self.url = f"redis://127.0.0.1:{port}/0"

    def start(self) -> RedisServer:
        import subprocess
        import threading

        self.proc = proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir, "--daemonize", "no", "--loglevel", "notice", *self.extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        ready = threading.Event()
        lines: list[str] = []

        def read() -> None:  # the server says when it accepts connections
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                if "Ready to accept connections" in line:
                    ready.set()

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()
        if not ready.wait(15):
            self.stop()
            raise AssertionError(f"redis-server did not start on port {self.port}: {''.join(lines)[-2000:]}")
        return self

    def stop(self) -> None:
        import subprocess

        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        self.reader.join(5)  # (at the end of its output)
        if proc.stdout is not None:
            proc.stdout.close()
