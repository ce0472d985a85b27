"""Shared fixtures: servers/clients on loopback with port 0, event recorders."""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import threading
import zlib
from typing import Any

import msgpack
import pytest

from peng3dnet import events
from peng3dnet.constants import EXTENSIONS_KEY
from peng3dnet.net import Client, Server
from peng3dnet.packet import Packet
from peng3dnet.protocol.framing import FrameDecoder, encode_frame
from tests.helpers import RedisServer


def pytest_sessionstart(session):
    """Under tests/test_compiled.py (``PENG3DNET_TEST_COMPILED`` names its
    run tree) the package must be the compiled one of that tree, not the
    pure one of a checkout found some other way."""
    import os

    tree = os.environ.get("PENG3DNET_TEST_COMPILED")
    if tree:
        import peng3dnet.peer

        where = peng3dnet.peer.__file__ or ""
        if not (where.startswith(tree) and where.endswith(".so")):
            raise pytest.UsageError(f"PENG3DNET_TEST_COMPILED={tree}, but peng3dnet.peer is {where}")


class EchoPacket(Packet):
    """Server: echo back. Client: record."""

    def __init__(self, reg, peer, obj=None):
        super().__init__(reg, peer, obj)
        self.got: list[Any] = []
        self.cond = threading.Condition()

    def receive(self, msg, cid=None):
        if self.peer.is_server:
            self.peer.send_message("test:echo", msg, cid)
        with self.cond:
            self.got.append(msg)
            self.cond.notify_all()

    def wait_count(self, n: int, timeout: float = 10.0) -> list[Any]:
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.got) >= n, timeout):
                raise AssertionError(f"got {len(self.got)} of {n} messages")
            return list(self.got)


class Recorder:
    """Records events of one sender, in order, thread-safely."""

    def __init__(self, sender: Any = events.ANY, pattern: str = "peng3dnet:*") -> None:
        self.items: list[tuple[str, dict]] = []
        self.cond = threading.Condition()
        self.pattern = pattern
        self.sender = sender
        events.subscribe(pattern, self, sender=sender)

    def __call__(self, event: str, data: dict) -> None:
        with self.cond:
            self.items.append((event, data))
            self.cond.notify_all()

    def names(self) -> list[str]:
        with self.cond:
            return [e for e, _ in self.items]

    def wait_for(self, event: str, count: int = 1, timeout: float = 10.0) -> list[dict]:
        with self.cond:
            ok = self.cond.wait_for(lambda: sum(1 for e, _ in self.items if e == event) >= count, timeout)
            if not ok:
                raise AssertionError(f"event {event} x{count} not seen; got {[e for e, _ in self.items]}")
            return [d for e, d in self.items if e == event]

    def close(self) -> None:
        events.unsubscribe(self.pattern, self, sender=self.sender)


def make_server(authenticate: Any = None, **cfg: Any) -> Server:
    cfg.setdefault("net.server.addr", ("127.0.0.1", 0))
    s = Server(cfg=cfg, authenticate=authenticate)
    s.register_packet("test:echo", EchoPacket(s.registry, s))
    return s


def make_client(server: Server, **cfg: Any) -> Client:
    c = Client(addr=server.addr, cfg=cfg)
    c.register_packet("test:echo", EchoPacket(c.registry, c))
    return c


@pytest.fixture
def server():
    s = make_server()
    s.runAsync()
    s.process_async()
    yield s
    close_raw_peers()
    s.shutdown(join=True, timeout=5)
    s.join(5)


@pytest.fixture
def client_factory(server):
    made: list[Client] = []

    def factory(**cfg: Any) -> Client:
        c = make_client(server, **cfg)
        c.runAsync()
        c.process_async()
        made.append(c)
        return c

    yield factory
    for c in made:
        c.stop()
        c.join(5)


_raw_peers: list["RawPeer"] = []


def close_raw_peers() -> None:
    """Close every RawPeer of the test.  The fixtures that stop servers
    call it first: a server shutting down waits (up to its flush timeout,
    2 s) for a peer that never reads to take its last frames; a closed
    peer ends that at once."""
    while _raw_peers:
        _raw_peers.pop().close()


@pytest.fixture(autouse=True)
def _close_raw_peers():
    yield
    close_raw_peers()


@pytest.fixture(autouse=True)
def _fresh_user_error_repeats():
    """Each test sees its handlers' first failure logged in full: the same
    failure within 10 s is only counted (peng3dnet.userlog), across tests too."""
    from peng3dnet import userlog

    with userlog._repeats_lock:
        userlog._repeats.clear()
    yield


class _UnhandledPackets(logging.Handler):
    """Collects the WARNING a peer logs when a packet's handling raised an
    exception the library did not expect (``UnhandledPacketError``): the
    catch-all keeps the thread alive, so a bug of ours would otherwise show
    only as a closed connection with ``invalidpacket``."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "protocol error, closing" in str(record.msg):
            self.seen.append(record.getMessage())


@pytest.fixture(autouse=True)
def _no_unhandled_packets(request):
    watch = _UnhandledPackets()
    logger = logging.getLogger("peng3dnet")
    logger.addHandler(watch)
    yield
    logger.removeHandler(watch)
    if watch.seen and request.node.get_closest_marker("unhandled_packets") is None:
        pytest.fail(f"a peer could not handle a packet (UnhandledPacketError): {watch.seen[:3]}")


class RawPeer:
    """A hand-driven socket speaking (or abusing) the protocol: a client
    (``RawPeer(addr)``) or, accepted by a :class:`RawListener`, a server."""

    def __init__(self, addr, sock: socket.socket | None = None) -> None:
        _raw_peers.append(self)
        self.sock = sock if sock is not None else socket.create_connection(addr[:2], timeout=10)
        self.sock.settimeout(10)
        self.dec = FrameDecoder(64 << 20)
        self.frames: list = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_packet(self, pid: int, msg: Any, flags: int = 0) -> None:
        self.send(encode_frame(pid, flags, msgpack.packb(msg)))

    def recv_packet(self) -> tuple[int, Any]:
        while not self.frames:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("peer closed")
            self.dec.feed(data, self.frames)
        pid, flags, body = self.frames.pop(0)
        if flags & 1:  # FLAG_COMPRESSED
            body = zlib.decompress(body)
        return pid, msgpack.unpackb(body, raw=False)

    def recv_until_close(self) -> list[tuple[int, Any]]:
        """Read until the server's closeconn (then close, as a protocol-2
        peer does) or EOF."""
        out = []
        while True:
            try:
                out.append(self.recv_packet())
            except (EOFError, ConnectionResetError):
                self.close()
                return out
            if out[-1][0] == 16:
                self.close()
                return out

    def handshake(self, extensions: Any = ()) -> dict[str, int]:
        """hello, settype classic (asking for ``extensions``), handshake,
        accept: returns the registry the server sent."""
        assert self.recv_packet()[0] == 1
        settype: dict[str, Any] = {"conntype": "classic"}
        if extensions:
            settype[EXTENSIONS_KEY] = list(extensions)
        self.send_packet(2, settype)
        pid, msg = self.recv_packet()
        assert pid == 3
        self.send_packet(4, {"success": True})
        return msg["registry"]

    def serve_handshake(self, registry: dict[str, int], extensions: Any = ("calls", "mapkeys")) -> dict[str, Any]:
        """The server's side: hello (offering ``extensions``), the client's
        settype, a handshake with ``registry`` (the internal packets and the
        negotiated extensions' added), the client's accept; returns the settype."""
        from peng3dnet.constants import EXTENSION_PACKETS, INTERNAL_PACKET_IDS

        self.send_packet(1, {"version": "raw", "protoversion": 2, EXTENSIONS_KEY: list(extensions)})
        pid, settype = self.recv_packet()
        assert pid == 2, (pid, settype)
        full = dict(INTERNAL_PACKET_IDS)
        for ext in settype.get(EXTENSIONS_KEY, ()):
            full.update(EXTENSION_PACKETS[ext])
        full.update(registry)
        self.send_packet(3, {"version": "raw", "protoversion": 2, "registry": full})
        assert self.recv_packet() == (4, {"success": True})
        return settype

    def close(self) -> None:
        self.sock.close()


class RawListener:
    """A listening socket on loopback whose connections are :class:`RawPeer` s
    (a hostile server for a real Client)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.addr = self.sock.getsockname()

    def accept(self, timeout: float = 10.0) -> RawPeer:
        self.sock.settimeout(timeout)
        conn, _ = self.sock.accept()
        return RawPeer(None, conn)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw_listener():
    lst = RawListener()
    yield lst
    lst.close()


@pytest.fixture(scope="session")
def xvfb_display():
    """Start our own Xvfb (``-displayfd`` picks a free display); yield ':N'.

    Fails (never skips) with a clear message when Xvfb is not installed.
    """
    import os

    exe = shutil.which("Xvfb")
    if exe is None:
        pytest.fail("Xvfb is not installed: run `bash .ci/run` (it installs xvfb, xauth, libglu1-mesa, ...)")
    r, w = os.pipe()
    proc = subprocess.Popen(
        [exe, "-displayfd", str(w), "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
        pass_fds=(w,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(w)
    with os.fdopen(r) as f:
        num = f.readline().strip()
    if not num:
        proc.kill()
        proc.wait()
        pytest.fail("Xvfb did not report a display number")
    yield f":{num}"
    proc.terminate()
    proc.wait(10)


class Net:
    """Live servers, clients and recorders on loopback, all torn down at the
    end of the test (clients stopped, recorders unsubscribed, servers shut down)."""

    def __init__(self) -> None:
        self.servers: list[Server] = []
        self.clients: list[Client] = []
        self.recorders: list[Recorder] = []

    def server(self, *, process: bool = True, record: str | None = "peng3dnet:server.*", clientcls: Any = None,
               packets: dict[str, Any] | None = None, authenticate: Any = None, **cfg: Any):
        """A running server with the test:echo packet and ``packets`` (name ->
        packet class), its connections made with ``clientcls``; returns
        ``(server, recorder)``."""
        s = make_server(authenticate, **cfg)
        if clientcls is not None:
            s.clientcls = clientcls
        for name, cls in (packets or {}).items():
            s.register_packet(name, cls(s.registry, s))
        self.servers.append(s)
        rec = self.recorder(s, record) if record else None
        s.runAsync()
        if process:
            s.process_async()
        return s, rec

    def client(self, server: Server, *, addr: Any = None, process: bool = True, wait: bool = True,
               packets: dict[str, Any] | None = None, credentials: Any = None, **cfg: Any) -> Client:
        """A running client with the test:echo packet and ``packets`` (name ->
        packet class, registered before connecting); handshaken when ``wait``."""
        c = Client(addr=addr or server.addr, cfg=cfg, credentials=credentials)
        c.register_packet("test:echo", EchoPacket(c.registry, c))
        for name, cls in (packets or {}).items():
            c.register_packet(name, cls(c.registry, c))
        self.clients.append(c)
        c.runAsync()
        if process:
            c.process_async()
        if wait:
            c.wait_for_connection(10)
        return c

    def recorder(self, sender: Any, pattern: str) -> Recorder:
        rec = Recorder(sender, pattern)
        self.recorders.append(rec)
        return rec

    def close(self) -> None:
        close_raw_peers()
        for c in self.clients:
            c.stop()
            c.join(5)
        for rec in self.recorders:
            rec.close()
        for s in self.servers:
            s.shutdown(timeout=5)


@pytest.fixture
def net():
    """Factory for live servers and clients, cleaned up after the test."""
    n = Net()
    yield n
    n.close()


# --- a real redis-server (the rooms and cluster tests) --------------------------------------------
# Our own instance on a free loopback port with its own data directory,
# stopped after the session.  No redis-server: the tests that need it fail
# with a message saying how to get it (.ci/run installs the apt package).

def _redis_free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    try:
        import redis
    except ImportError:
        pytest.fail("redis-py is not installed: pip install -e '.[test]' (bash .ci/run does it)")
    server = RedisServer(_redis_free_port(), tmp_path_factory.mktemp("redis"), "--protected-mode", "yes").start()
    try:
        r = redis.Redis.from_url(server.url, socket_connect_timeout=1)
        assert r.ping()
        r.close()
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_ns(redis_url, request):
    """A fresh key namespace per test on the shared instance."""
    return redis_url, "t" + str(abs(hash(request.node.nodeid)))[:10]
