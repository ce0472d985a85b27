"""The lag proxy and LAN discovery (loopback only)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

from peng3dnet.ext.discovery import DiscoveryResponder, discover_servers
from peng3dnet.ext.ping import PingableServerMixin
from peng3dnet.net import Client, Server
from peng3dnet.packet import Packet
from peng3dnet.tools.lagproxy import LagProxy


def test_lagproxy_delays_keeps_order_and_data():
    got: list = []
    done = threading.Event()
    stamps: list = []

    class Echo(Packet):
        def receive(self, msg, cid=None):
            if cid is not None:
                self.peer.send_message("t:e", msg, cid)
            else:
                got.append(msg)
                stamps.append(time.monotonic())
                if len(got) == 200:
                    done.set()

    s = Server(addr=("127.0.0.1", 0), cfg={"net.heartbeat.enabled": False})
    s.register_packet("t:e", Echo(s.registry, s))
    s.runAsync()
    s.process_async()
    proxy = LagProxy(("127.0.0.1", 0), s.addr, delay=0.05, jitter=0.02, seed=3).start()
    try:
        c = Client(addr=proxy.addr, cfg={"net.heartbeat.enabled": False})
        c.register_packet("t:e", Echo(c.registry, c))
        c.runAsync()
        c.process_async()
        c.wait_for_connection(10)
        t0 = time.monotonic()
        for i in range(200):
            c.send_message("t:e", {"i": i, "pad": "x" * 500})
        assert done.wait(20)
        assert [m["i"] for m in got] == list(range(200))  # in order, complete
        assert stamps[0] - t0 >= 2 * 0.03  # two one-way trips of at least delay - jitter
        c.close()
        c.wait_for_close(10)
    finally:
        proxy.stop()
        s.shutdown(timeout=5)


def test_lagproxy_bandwidth_cap():
    s = Server(addr=("127.0.0.1", 0), cfg={"net.heartbeat.enabled": False})
    done = threading.Event()

    class Sink(Packet):
        def receive(self, msg, cid=None):
            done.set()

    s.register_packet("t:e", Sink(s.registry, s))
    s.runAsync()
    s.process_async()
    proxy = LagProxy(("127.0.0.1", 0), s.addr, bandwidth=200_000).start()  # 200 kB/s
    try:
        c = Client(addr=proxy.addr, cfg={"net.heartbeat.enabled": False, "net.compress.enabled": False})
        c.register_packet("t:e", Sink(c.registry, c))
        c.runAsync()
        c.wait_for_connection(10)
        t0 = time.monotonic()
        c.send_message("t:e", b"\1" * 100_000)
        assert done.wait(10)
        assert time.monotonic() - t0 >= 0.4  # 100 kB at 200 kB/s
        c.stop()
        c.join(5)
    finally:
        proxy.stop()
        s.shutdown(timeout=5)


def test_lagproxy_passes_half_closes_both_ways():
    """The client's EOF reaches the server after the data; the server's
    answer and then its EOF come back (a raw TCP server, no peng3dnet)."""
    upstream = socket.create_server(("127.0.0.1", 0))
    upstream.settimeout(10)
    seen: list[bytes] = []

    def serve() -> None:
        conn, _ = upstream.accept()
        with conn:
            conn.settimeout(10)
            data = b""
            while chunk := conn.recv(4096):
                data += chunk
            seen.append(data)  # the loop ended: the client's EOF came through
            conn.sendall(b"pong:" + data)

    t = threading.Thread(target=serve)
    t.start()
    proxy = LagProxy(("127.0.0.1", 0), upstream.getsockname(), delay=0.02).start()
    try:
        with socket.create_connection(proxy.addr, timeout=10) as c:
            c.sendall(b"ping" * 1000)
            c.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := c.recv(4096):
                data += chunk
        t.join(10)
        assert seen == [b"ping" * 1000]
        assert data == b"pong:" + b"ping" * 1000  # then EOF
    finally:
        proxy.stop()
        upstream.close()
        t.join(10)


def test_lagproxy_command_line_help():
    out = subprocess.run([sys.executable, "-m", "peng3dnet.tools.lagproxy", "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "--jitter" in out.stdout and "--bandwidth" in out.stdout


def test_discovery_on_loopback():
    class S(PingableServerMixin, Server):
        pingdata = {"name": "lan game", "players": 2}

    s = S(addr=("127.0.0.1", 0))
    s.bind()
    resp = DiscoveryResponder(s, port=0, host="127.0.0.1").start()
    try:
        found = discover_servers(port=resp.addr[1], timeout=1.0, addr="127.0.0.1")
        assert len(found) == 1
        (info,) = found
        assert info["name"] == "lan game" and info["port"] == s.addr[1] and info["host"] == "127.0.0.1"
        assert info["peng3dnet"]["protoversion"] == 2
        # garbage is ignored, the responder keeps answering
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.sendto(b"\xff" * 50, ("127.0.0.1", resp.addr[1]))
        assert len(discover_servers(port=resp.addr[1], timeout=0.5, addr="127.0.0.1")) == 1
    finally:
        resp.stop()
        s.shutdown()
