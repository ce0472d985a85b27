"""The lag proxy and LAN discovery (loopback only)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest

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


def lan_server(pingdata, start=True, **kw):
    """A bound (not running) pingable server with ``pingdata`` and a
    discovery responder for it on loopback (started unless ``start=False``);
    the test stops both."""
    class S(PingableServerMixin, Server):
        pass

    S.pingdata = pingdata
    s = S(addr=("127.0.0.1", 0))
    s.bind()
    resp = DiscoveryResponder(s, port=0, host="127.0.0.1", **kw)
    return s, (resp.start() if start else resp)


def test_discovery_on_loopback():
    s, resp = lan_server({"name": "lan game", "players": 2})
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


def test_discovery_answers_each_query_and_lists_each_server_once():
    """The query goes out ``tries`` times (a broadcast may be lost); a
    server answering every copy is listed once."""
    s, resp = lan_server({"name": "lan game"})
    try:
        found = discover_servers(port=resp.addr[1], timeout=0.6, addr="127.0.0.1", tries=3)
        assert [f["port"] for f in found] == [s.addr[1]]
        wait_for_value(lambda: resp.answered, 3)
        with pytest.raises(ValueError):
            discover_servers(port=resp.addr[1], timeout=0.1, addr="127.0.0.1", tries=0)
    finally:
        resp.stop()
        s.shutdown()


def wait_for_value(get, want, timeout=5.0):
    deadline = time.monotonic() + timeout
    while get() != want:
        assert time.monotonic() < deadline, f"{get()} != {want}"
        time.sleep(0.005)


def test_discovery_query_lost_once_is_answered_on_a_later_try():
    """A responder that ignores the first query (a lost broadcast) is still
    found, because the query is sent again."""
    s, resp = lan_server({"name": "late"}, start=False)
    first = [True]
    allowed = resp.allowed

    def lose_first(host, now):
        if first[0]:
            first[0] = False
            return False
        return allowed(host, now)

    resp.allowed = lose_first  # type: ignore[method-assign]
    resp.start()
    try:
        found = discover_servers(port=resp.addr[1], timeout=0.6, addr="127.0.0.1", tries=3)
        assert [f["name"] for f in found] == ["late"]
        assert resp.dropped == 1
        assert discover_servers(port=resp.addr[1], timeout=0.3, addr="127.0.0.1", tries=1) != []
    finally:
        resp.stop()
        s.shutdown()


def test_discovery_responder_rate_limits_and_local_only():
    """Token buckets: a burst of twice the rate per address, then the rate;
    the total bucket over every address; non-local senders get nothing
    unless public=True.  (Driven with explicit times: no sockets.)"""
    s = Server(addr=("127.0.0.1", 0))
    resp = DiscoveryResponder(s, port=0, host="127.0.0.1", per_address=4, total=10)
    try:
        t = 1000.0
        assert [resp.allowed("192.168.1.5", t) for _ in range(9)] == [True] * 8 + [False]  # burst 8
        assert resp.allowed("192.168.1.5", t + 0.24) is False  # 0.96 of a token
        assert resp.allowed("192.168.1.5", t + 0.25) is True  # refilled at 4/s
        # the total: a burst of 20 over all addresses, refilled at 10/s: 20 - 8
        # at t, + 2.5 by t + 0.25, - 1 there: 13.5 left
        assert sum(resp.allowed(f"10.0.0.{i}", t + 0.25) for i in range(20)) == 13
        assert resp.allowed("10.0.1.1", t + 0.25) is False
        assert resp.allowed("10.0.1.1", t + 0.35) is True  # 10/s: one more after 0.1 s
        # local networks only
        for host in ("8.8.8.8", "2001:4860::1", "not an address"):
            assert resp.allowed(host, t + 100) is False
        for host in ("127.0.0.1", "::1", "fe80::1%eth0", "::ffff:192.168.0.2", "172.16.0.1"):
            assert resp.allowed(host, t + 200) is True
        resp.public = True
        assert resp.allowed("8.8.8.8", t + 300) is True
        with pytest.raises(ValueError):
            DiscoveryResponder(s, port=0, host="127.0.0.1", per_address=0)
    finally:
        resp.stop()


def test_discovery_responder_drops_a_flood_from_one_address():
    s, resp = lan_server({"name": "flooded"}, per_address=4, total=1000)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            for _ in range(100):
                u.sendto(b"peng3dnet?", ("127.0.0.1", resp.addr[1]))
        wait_for_value(lambda: resp.answered + resp.dropped, 100)
        assert resp.answered <= 9  # the burst of 8 (+1 refilled while the flood was read)
    finally:
        resp.stop()
        s.shutdown()


def test_discovery_rate_table_is_bounded_when_refusing():
    """Refused queries from ever new addresses do not grow the table past
    its bound (only the allowed path evicted)."""
    from peng3dnet.ext import discovery

    s = Server(addr=("127.0.0.1", 0))
    resp = DiscoveryResponder(s, port=0, host="127.0.0.1", total=1)
    try:
        t = 1000.0
        results = [resp.allowed(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", t) for i in range(20_000)]
        assert results[:2] == [True, True] and not any(results[2:])  # the total's burst of 2, then nothing
        assert len(resp._buckets) == discovery._MAX_TRACKED
        assert resp.allowed("100.64.1.2", t + 10)  # carrier-grade NAT space counts as local
        for bad in (0, -1, float("nan")):
            with pytest.raises(ValueError):
                DiscoveryResponder(s, port=0, host="127.0.0.1", per_address=bad)
    finally:
        resp.stop()


def test_discover_keeps_its_answers_when_a_repeated_query_fails(monkeypatch):
    """A network that goes away after the first query: the answers already
    in are returned (a failing first query still raises)."""
    from peng3dnet.errors import NetworkError
    from peng3dnet.ext import discovery
    from peng3dnet.transport import Datagram

    s, resp = lan_server({"name": "still here"})
    sent = []

    class Failing(Datagram):  # the querying side only (the responder's socket exists already)
        def send_to(self, data, addr):
            sent.append(data)
            if len(sent) > 1:
                raise NetworkError("network is unreachable")
            return super().send_to(data, addr)

    try:
        monkeypatch.setattr(discovery, "Datagram", Failing)
        found = discover_servers(port=resp.addr[1], timeout=0.6, addr="127.0.0.1", tries=3)
        assert [f["name"] for f in found] == ["still here"] and len(sent) == 3
        sent.clear()
        sent.append(b"make the first fail")
        with pytest.raises(NetworkError):
            discover_servers(port=resp.addr[1], timeout=0.3, addr="127.0.0.1", tries=2)
    finally:
        monkeypatch.undo()
        resp.stop()
        s.shutdown()
