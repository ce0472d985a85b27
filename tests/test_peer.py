"""The peer core through Server and Client on loopback: sending, receiving,
closing, the process queue, inline handlers, broadcast, runtime config and
write coalescing."""

from __future__ import annotations

import socket
import threading
import time
import zlib

import msgpack
import pytest

from peng3dnet import errors
from peng3dnet.constants import PID_CLOSECONN, SIDE_CLIENT, STATE_ACTIVE, STATE_LOGGEDIN
from peng3dnet.errors import LocalProtocolError
from peng3dnet.ext.ping import PingableServerMixin, pingServer
from peng3dnet.net import Client, ClientOnServer, Server
from peng3dnet.packet import Packet, SmartPacket
from peng3dnet.protocol.framing import encode_frame
from tests.conftest import EchoPacket, RawPeer, Recorder, make_client, make_server
from tests.helpers import active_cids, wait_for


def test_echo_roundtrip(server, client_factory):
    c = client_factory()
    c.wait_for_connection(10)
    assert c.remote_state == STATE_ACTIVE
    c.send_message("test:echo", {"hello": [1, 2.5, b"\x00"]})
    assert c.registry.get_obj("test:echo").wait_count(1) == [{"hello": [1, 2.5, b"\x00"]}]


def test_send_by_id_name_and_object(server, client_factory):
    c = client_factory()
    c.wait_for_connection(10)
    obj = c.registry.get_obj("test:echo")
    c.send_message(c.registry.get_id("test:echo"), 1)
    c.send_message("test:echo", 2)
    c.send_message(obj, 3)
    assert obj.wait_count(3) == [1, 2, 3]


def test_large_compressed_message(server, client_factory):
    c = client_factory()
    c.wait_for_connection(10)
    big = {"blob": "z" * 3_000_000}
    c.send_message("test:echo", big)
    assert c.registry.get_obj("test:echo").wait_count(1)[0] == big


@pytest.mark.parametrize("direction", ["c2s", "s2c"])
def test_100k_back_to_back_messages_complete_and_in_order(direction):
    n = 100_000
    got: list = []
    done = threading.Event()

    class Sink(Packet):
        def receive(self, msg, cid=None):
            got.append(msg)
            if len(got) == n:
                done.set()

    # A bulk transfer, far above the default per-connection rate limit.
    s = Server(cfg={"net.server.addr": ("127.0.0.1", 0), "net.limits.rate.packets": 0})
    s.register_packet("t:m", Sink(s.registry, s))
    s.runAsync()
    s.process_async()
    c = Client(addr=s.addr)
    c.register_packet("t:m", Sink(c.registry, c))
    c.runAsync()
    c.process_async()
    try:
        c.wait_for_connection(10)
        if direction == "c2s":
            for i in range(n):
                c.send_message("t:m", i)
        else:
            (cid,) = active_cids(s)
            for i in range(n):
                s.send_message("t:m", i, cid)
        assert done.wait(60), f"only {len(got)} of {n} arrived"
        assert got == list(range(n))
    finally:
        c.stop()
        c.join(5)
        s.shutdown(timeout=5)


def test_send_before_handshake_is_a_local_error(server):
    c = make_client(server)
    c.connect()  # loop not running: no handshake can happen
    with pytest.raises(errors.LocalProtocolError):
        c.send_message("test:echo", 1)
    with pytest.raises(errors.RegistryError):
        c.send_message("nope:nope", 1)
    c.stop()


def test_unknown_packet_and_closed_cid(server, client_factory):
    c = client_factory()
    c.wait_for_connection(10)
    with pytest.raises(errors.RegistryError):
        server.send_message("nope:nope", 1, active_cids(server)[0])
    with pytest.raises(errors.ConnectionClosedError):
        server.send_message("test:echo", 1, 999999)


def test_close_connection_flushes_queued_then_closes_with_reason(server, client_factory):
    c = client_factory()
    c.wait_for_connection(10)
    (cid,) = active_cids(server)
    for i in range(1000):
        server.send_message("test:echo", i, cid)
    server.close_connection(cid, "kicked")
    c.wait_for_close(10)
    assert c.close_reason == "kicked"
    assert c.registry.get_obj("test:echo").wait_count(1000) == list(range(1000))


def test_client_close_reason_reaches_server(server, client_factory):
    rec = Recorder(server, "peng3dnet:server.connection.close")
    try:
        c = client_factory()
        c.wait_for_connection(10)
        c.close("done")
        (d,) = rec.wait_for("peng3dnet:server.connection.close")
        assert d["reason"] == "done"
        c.wait_for_close(10)
        c.join(10)  # the client loop ends by itself after the close
    finally:
        rec.close()


def test_shutdown_delivers_everything_and_closeconn_to_every_client():
    s = make_server()
    s.runAsync()
    s.process_async()
    clients = [make_client(s) for _ in range(3)]
    for c in clients:
        c.runAsync()
        c.process_async()
        c.wait_for_connection(10)
    for cid in active_cids(s, 3):
        for i in range(500):
            s.send_message("test:echo", {"i": i, "pad": "x" * 200}, cid)
    s.shutdown(join=True, timeout=10)
    for c in clients:
        c.wait_for_close(10)
        assert c.close_reason == "servershutdown"
        assert len(c.registry.get_obj("test:echo").wait_count(500)) == 500
        c.join(5)
    s.join(5)


@pytest.mark.timeout(30)
def test_a_client_connecting_while_shutdown_waits_is_refused_with_its_reason_and_the_wait_ends():
    """shutdown(join=True) waits for every open connection to close; the
    listening socket still accepts meanwhile.  A client that connects then
    is refused with shutdown()'s reason (it was accepted, handshaken and
    never closed: the wait, with timeout 0, never ended)."""
    s = make_server()
    s.runAsync()
    s.process_async()
    done = threading.Event()
    lingerer = RawPeer(s.addr)  # handshaken, then never closes: the server's close lingers
    lingerer.handshake()
    late = None
    t = threading.Thread(target=lambda: (s.shutdown(join=True, timeout=0, reason="maintenance"), done.set()),
                         daemon=True)
    try:
        t.start()
        assert lingerer.recv_packet() == (PID_CLOSECONN, {"reason": "maintenance"})  # shutdown() waits now
        late = RawPeer(s.addr)  # connects during that wait
        assert late.recv_until_close() == [(PID_CLOSECONN, {"reason": "maintenance"})]
        assert done.wait(10), "shutdown(join=True) still waits 10 s after a client connected during it"
        assert s.stats.connections_refused == 1
    finally:
        if not done.is_set():
            s.stop()
        t.join(10)
        lingerer.close()
        if late is not None:
            late.close()


def test_unknown_conntype_is_refused(server):
    peer = RawPeer(server.addr)
    assert peer.recv_packet()[0] == 1
    peer.send_packet(2, {"conntype": "teleport"})
    assert peer.recv_until_close() == [(16, {"reason": "unknownconntype"})]


def test_registry_mismatch_client_side(server):
    c = Client(addr=server.addr)
    c.register_packet("other:packet", EchoPacket(c.registry, c))
    c.runAsync()
    with pytest.raises(errors.ConnectionClosedError):
        c.wait_for_connection(10)
    assert c.close_reason == "packetregmismatch"
    c.join(5)


def test_registry_config_keys_reach_the_core(server):
    # "ignore": registries that name different packets are accepted (and renumbered)
    c = Client(addr=server.addr, cfg={"net.registry.missingpacketaction": "ignore"})
    c.register_packet("other:packet", EchoPacket(c.registry, c))  # only we know it
    c.register_packet("test:echo", EchoPacket(c.registry, c))
    assert c.registry.get_id("test:echo") == 65
    c.runAsync()
    c.wait_for_connection(10)
    assert c.registry.get_id("test:echo") == server.registry.get_id("test:echo") == 64  # adopted
    c.stop()
    c.join(5)
    # autosync off: no check, no renumbering (the same mismatch is not a close)
    c2 = Client(addr=server.addr, cfg={"net.registry.autosync": False})
    c2.register_packet("other:packet", EchoPacket(c2.registry, c2))
    c2.register_packet("test:echo", EchoPacket(c2.registry, c2))
    c2.runAsync()
    c2.wait_for_connection(10)
    assert c2.registry.get_id("test:echo") == 65  # kept its own numbering
    c2.stop()
    c2.join(5)


HOSTILE = {
    "length_below_header": (b"\x00\x00\x00\x03abc", "invalidpacket"),
    "length_4GiB": (b"\xff\xff\xff\xff", "packettoolarge"),
    "unknown_flags": (encode_frame(64, 2, msgpack.packb(1)), "invalidflags"),
    "bad_msgpack": (encode_frame(64, 0, b"\xc1"), "invalidmsgpack"),
    "bad_zlib": (encode_frame(64, 1, b"garbage"), "invalidcompression"),
    "zlib_bomb": (encode_frame(64, 1, zlib.compress(b"\0" * (64 << 20), 9)), "packettoolarge"),
    "unknown_pid": (encode_frame(4000, 0, msgpack.packb(1)), "unknownpacket"),
    "reserved_pid": (encode_frame(20, 0, msgpack.packb(1)), "unknownpacket"),
    "hello_from_client": (encode_frame(1, 0, msgpack.packb({"version": "x", "protoversion": 2})), "invalidside"),
    "handshake_again": (encode_frame(4, 0, msgpack.packb({"success": True})), "invalidstate"),
    "closeconn_weird_reason": (encode_frame(16, 0, msgpack.packb({"reason": [1, 2]})), "[1, 2]"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_peer_closes_only_its_connection(case):
    payload, reason = HOSTILE[case]
    s = make_server(**{"net.limits.max_packet_size": 1 << 20, "net.limits.max_decompressed_size": 1 << 20})
    rec = Recorder(s, "peng3dnet:server.connection.*")
    s.runAsync()
    s.process_async()
    try:
        good = make_client(s)
        good.runAsync()
        good.process_async()
        good.wait_for_connection(10)
        bad = RawPeer(s.addr)
        bad.handshake()
        bad.send(payload)
        tail = bad.recv_until_close()
        if case != "closeconn_weird_reason":
            assert tail[-1] == (16, {"reason": reason})
        closes = rec.wait_for("peng3dnet:server.connection.close", 1)
        assert closes[0]["reason"] == reason
        # the server and the other connection are unaffected
        good.send_message("test:echo", "still here")
        assert good.registry.get_obj("test:echo").wait_count(1) == ["still here"]
        late = make_client(s)
        late.runAsync()
        late.wait_for_connection(10)
        late.stop()
        late.join(5)
        good.stop()
        good.join(5)
        rec.wait_for("peng3dnet:server.connection.close", 3)
        accepts = rec.wait_for("peng3dnet:server.connection.accept", 3)
        # exactly one close per accepted connection
        closed_cids = sorted(d["client"].cid for d in rec.wait_for("peng3dnet:server.connection.close", 3))
        assert closed_cids == sorted(d["cid"] for d in accepts)
    finally:
        s.shutdown(timeout=5)
        rec.close()


def test_connection_that_fails_before_handshake_gets_one_close(server):
    rec = Recorder(server, "peng3dnet:server.connection.*")
    try:
        peer = RawPeer(server.addr)
        peer.recv_packet()
        peer.close()  # vanish without a word
        (d,) = rec.wait_for("peng3dnet:server.connection.close")
        assert d["reason"] == "socketclose"
        assert "peng3dnet:server.connection.handshakecomplete" not in rec.names()
    finally:
        rec.close()


class Limited(SmartPacket):
    side = SIDE_CLIENT  # only the client receives it: only the server sends it
    invalid_action = "close"


class Ignored(SmartPacket):
    side = SIDE_CLIENT


def test_smartpacket_side_rules():
    s = make_server()
    s.register_packet("t:limited", Limited(s.registry, s))
    s.register_packet("t:ignored", Ignored(s.registry, s))
    s.runAsync()
    s.process_async()
    try:
        peer = RawPeer(s.addr)
        reg = peer.handshake()
        peer.send_packet(reg["t:ignored"], 1)  # ignored, connection stays
        peer.send_packet(reg["test:echo"], "alive")
        assert peer.recv_packet() == (reg["test:echo"], "alive")
        peer.send_packet(reg["t:limited"], 1)
        assert peer.recv_until_close() == [(16, {"reason": "smartpacketinvalid"})]
        # with the strict send check, a client may not send a server-only packet either
        c = Client(addr=s.addr, cfg={"net.smartpacket.strict_send": True})
        for name in ("test:echo", "t:limited", "t:ignored"):
            c.register_packet(name, Limited(c.registry, c) if name != "test:echo" else EchoPacket(c.registry, c))
        c.runAsync()
        c.wait_for_connection(10)
        with pytest.raises(errors.LocalProtocolError):
            c.send_message("t:limited", 1)
        c.stop()
        c.join(5)
    finally:
        s.shutdown(timeout=5)


def test_application_packet_before_handshake_closes(server):
    peer = RawPeer(server.addr)
    assert peer.recv_packet()[0] == 1
    peer.send_packet(2, {"conntype": "classic"})
    pid, msg = peer.recv_packet()
    peer.send_packet(msg["registry"]["test:echo"], "too early")
    assert peer.recv_until_close() == [(16, {"reason": "smartpacketinvalid"})]


def _unprocessed_pair(**cfg):
    """A server whose process() nobody calls (the test does), with one
    client; packets "t:m" are appended to the returned list when handled."""
    got: list = []

    class Slow(Packet):
        def receive(self, msg, cid=None):
            got.append(msg)

    s = Server(cfg={"net.server.addr": ("127.0.0.1", 0), **cfg})
    s.register_packet("t:m", Slow(s.registry, s))
    s.runAsync()
    try:
        c = Client(addr=s.addr)
        c.register_packet("t:m", Slow(c.registry, c))
        c.runAsync()
        c.wait_for_connection(10)
    except BaseException:
        s.shutdown(timeout=5)
        raise
    return s, c, got


def test_backpressure_pauses_reading_and_loses_nothing():
    s, c, got = _unprocessed_pair(**{"net.limits.recv_queue": 100})
    try:
        for i in range(5000):
            c.send_message("t:m", {"i": i, "pad": "p" * 100})
        link = next(iter(s._links.values()))
        wait_for(lambda: link.chan.paused, what="reading to pause")
        # The queue holds its limit exactly; the rest of the read that
        # reached it waits undecoded in the core (at most one read's bytes;
        # none when that read ended on the 100th packet's last byte).
        assert link.queued == 100 == len(s._inbox.items)
        assert 0 <= link.proto.frames_waiting <= 256 * 1024 // 100
        total = 0
        peak = 0
        while total < 5000:
            total += s.process(wait=True, timeout=10)
            peak = max(peak, link.queued)
        assert [m["i"] for m in got] == list(range(5000))  # nothing lost, in order
        assert peak <= 100
        c.stop()
        c.join(5)
    finally:
        s.shutdown(timeout=5)


def test_backpressure_counts_bytes_too_and_loses_nothing():
    """Large packets pause reading at net.limits.recv_queue_bytes, long
    before the packet limit: what waits for process() is bounded in bytes,
    whatever the packet count."""
    limit = 1024 * 1024
    s, c, got = _unprocessed_pair(**{"net.limits.recv_queue_bytes": limit})
    try:
        blob = b"b" * (100 * 1024)
        for i in range(30):  # 3 MiB (under write_buffer_block: the sender never waits)
            c.send_message("t:m", [i, blob])
        link = next(iter(s._links.values()))
        wait_for(lambda: link.chan.paused, what="reading to pause")
        # Paused at the byte limit, not the packet limit (65,536), at most
        # one packet past it: however many packets one read brings (these
        # compress to almost nothing on the wire), the core decodes no more.
        size = len(msgpack.packb([0, blob]))
        assert limit <= link.queued_bytes < limit + size
        assert link.queued == len(s._inbox.items) == -(-limit // size)
        assert link.queued_bytes == sum(item[4] for item in s._inbox.items)
        total = 0
        peak = 0
        while total < 30:
            total += s.process(wait=True, timeout=10)
            peak = max(peak, link.queued_bytes)
        assert [m[0] for m in got] == list(range(30)) and all(m[1] == blob for m in got)  # nothing lost, in order
        assert peak < limit + size
        assert link.queued_bytes == 0 and link.b_in == 30 * len(msgpack.packb([29, blob]))
        c.stop()
        c.join(5)
    finally:
        s.shutdown(timeout=5)


def test_the_queues_total_holds_the_connections_that_add_to_it_and_loses_nothing():
    """net.limits.recv_queue_total: once all connections' process queues
    together are over it, a connection is held (not read) from its next
    read that queues packets; one that sends nothing goes on; down to
    half, all are read again; every packet arrives, in order."""
    from peng3dnet.transport import EVENT_READ

    got: list = []

    class Slow(Packet):
        def receive(self, msg, cid=None):
            got.append((cid, msg[0]))

    cap = 1024 * 1024
    s = Server(cfg={"net.server.addr": ("127.0.0.1", 0), "net.limits.recv_queue_total": cap})
    s.register_packet("t:m", Slow(s.registry, s))
    s.runAsync()  # nobody calls process() yet
    clients = []
    try:
        for _ in range(4):
            c = Client(addr=s.addr)
            c.register_packet("t:m", Packet(c.registry, c))
            c.runAsync()
            c.wait_for_connection(10)
            clients.append(c)
        cids = sorted(active_cids(s, 4))
        links = [s._links[cid] for cid in cids]
        local = {c.sock.getsockname(): c for c in clients}
        by_cid = {lk.cid: local[lk.chan.sock.getpeername()] for lk in links}
        senders, quiet = links[:3], links[3]
        blob = bytes(range(256)) * 400  # 100 KiB
        for lk in senders:
            for i in range(5):
                by_cid[lk.cid].send_message("t:m", [i, blob])
        inbox = s._inbox
        wait_for(lambda: inbox.b_in - inbox.b_out > cap and s._flow.over_total, what="the total over the cap")
        for lk in senders:  # more: each one's next read holds it
            for i in range(5, 10):
                by_cid[lk.cid].send_message("t:m", [i, blob])
        wait_for(lambda: all(lk.chan.held for lk in senders), what="the three senders held")
        assert all(not lk.chan.mask & EVENT_READ for lk in senders) and s._flow.queue_held == set(senders)
        assert not quiet.chan.held and quiet.chan.mask & EVENT_READ  # nothing queued: it goes on
        by_cid[quiet.cid].send_message("t:m", [0, b"q"])
        # (read, and since it added to the total, held from then on)
        wait_for(lambda: quiet.queued == 1 and quiet.chan.held, what="the quiet connection's packet read, then held")
        while len(got) < 31:
            s.process(wait=True, timeout=10)
        for cid in cids:
            mine = [m for c, m in got if c == cid]
            assert mine == ([0] if cid == quiet.cid else list(range(10)))  # all, in order
        wait_for(lambda: not s._flow.over_total and not any(lk.chan.held for lk in links), what="all released")
        assert inbox.b_in == inbox.b_out == sum(lk.b_in for lk in links)
    finally:
        for c in clients:
            c.stop()
            c.join(5)
        s.shutdown(timeout=5)


def test_the_queues_total_lifted_at_run_time_releases_the_held_from_the_housekeeping():
    """A connection held for net.limits.recv_queue_total while nobody runs
    the handlers (no batch ends to look at the total): lifting the cap
    (0, no limit) releases it from the housekeeping timer, and reading goes
    on; nothing is lost."""
    s, c, got = _unprocessed_pair(**{"net.limits.recv_queue_total": 256 * 1024})
    try:
        blob = bytes(range(256)) * 400  # 100 KiB
        for i in range(10):
            c.send_message("t:m", [i, blob])
        link = next(iter(s._links.values()))
        wait_for(lambda: link.chan.held and s._flow.over_total, what="the connection held for the total")
        assert link.queued < 10  # held: the rest waits in the socket
        s.cfg["net.limits.recv_queue_total"] = 0
        wait_for(lambda: not link.chan.held and link.queued == 10, what="released and read without a batch")
        assert not s._flow.over_total and not s._flow.queue_held and not got
        while len(got) < 10:
            s.process(wait=True, timeout=10)
        assert [m[0] for m in got] == list(range(10)) and all(m[1] == blob for m in got)
        c.stop()
        c.join(5)
    finally:
        s.shutdown(timeout=5)


def test_process_wait_and_process_forever_stop_promptly():
    s = make_server()
    s.runAsync()
    try:
        assert s.process(wait=True, timeout=0.05) == 0  # times out, returns
        t = s.process_async()
        assert t.name == "peng3dnet process Thread"
        s.stop()
        t.join(5)
        assert not t.is_alive()
        s.join(5)
    finally:
        s.shutdown(timeout=1)


def test_threads_are_named_and_daemon(server, client_factory):
    c = client_factory()
    c.wait_for_connection(10)
    names = {t.name: t.daemon for t in threading.enumerate()}
    assert names.get("peng3dnet Server Thread") is True
    assert names.get("peng3dnet Client Thread") is True


def test_repeated_calls_are_ignored_and_cids_increase():
    s = make_server()
    s.initialize()
    s.initialize()
    s.bind()
    addr = s.addr
    s.bind()
    assert s.addr == addr
    a, b, c = s.genCID(), s.genCID(), s.genCID()
    assert a < b < c
    with pytest.raises(errors.AlreadyRegisteredError):
        s.addConnType("classic", object())
    s.shutdown()


def test_mixin_hooks_called_by_initialize():
    calls = []

    class M:
        def _reg_packets_game(self):
            calls.append("packets")
            self.register_packet("game:x", Packet(self.registry, self))

        def _reg_conntypes_game(self):
            calls.append("conntypes")

    class S(M, Server):
        pass

    s = S(addr=("127.0.0.1", 0))
    s.initialize()
    assert calls == ["packets", "conntypes"] and "game:x" in s.registry


def test_ping(server):
    class PS(PingableServerMixin, Server):
        pingdata = {"name": "srv", "players": 2}

    s = PS(addr=("127.0.0.1", 0))
    s.runAsync()
    try:
        r = pingServer(addr=s.addr, timeout=10)
        assert r["name"] == "srv" and r["players"] == 2
        assert r["peng3dnet"]["protoversion"] == 2
        assert r["delay"] >= 0 and "time" in r["oldmsg"]
    finally:
        s.shutdown(timeout=5)


def test_ping_result_of_a_custom_client_class(server):
    from peng3dnet.ext.ping import PingableClientMixin

    made: list = []

    class MyPingClient(PingableClientMixin, Client):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)

    before = MyPingClient(addr=server.addr)
    assert before.ping_result is None  # nothing yet
    r = pingServer(addr=server.addr, data={"who": "me"}, clientcls=MyPingClient, timeout=10)
    (c,) = made[1:]
    assert c.ping_result is r  # the same reply, kept on the client
    assert r["oldmsg"]["who"] == "me" and r["delay"] >= 0 and r["recvtime"] >= r["oldmsg"]["time"]


def test_ping_with_garbage_request_is_closed(server):
    peer = RawPeer(server.addr)
    peer.recv_packet()
    peer.send_packet(2, {"conntype": "ping"})
    peer.send_packet(64, [1, 2, 3])
    assert peer.recv_until_close() == [(16, {"reason": "invalidpingpacket"})]


def test_custom_clientcls_and_hooks():
    seen = []

    class MyClient(ClientOnServer):
        def on_connect(self):
            seen.append(("connect", self.cid))

        def on_handshake_complete(self):
            super().on_handshake_complete()
            seen.append(("hs", self.conntype, self.state))

        def on_close(self, reason=None):
            seen.append(("close", reason))

    s = Server(addr=("127.0.0.1", 0), clientcls=MyClient)
    s.register_packet("test:echo", EchoPacket(s.registry, s))
    s.runAsync()
    done = threading.Event()

    class C(Client):
        def on_close(self, reason=None):
            done.set()

    try:
        c = C(addr=s.addr)
        c.register_packet("test:echo", EchoPacket(c.registry, c))
        c.runAsync()
        c.wait_for_connection(10)
        active_cids(s)
        assert isinstance(next(iter(s.clients.values())), MyClient)
        c.close("bye")
        assert done.wait(10)
        wait_for(lambda: len(seen) == 3, what="hooks")
        assert seen == [("connect", 1), ("hs", "classic", STATE_ACTIVE), ("close", "bye")]
    finally:
        s.shutdown(timeout=5)


def test_ipv6_loopback(net):
    if not socket.has_ipv6:
        pytest.fail("this machine has no IPv6 support; the test needs ::1")
    s, _ = net.server(record=None, **{"net.server.addr": "[::1]:0"})
    assert s.addr[0] == "::1"
    c = net.client(s, addr=f"[::1]:{s.addr[1]}")
    c.send_message("test:echo", "v6")
    assert c.registry.get_obj("test:echo").wait_count(1) == ["v6"]


def test_connect_refused_is_network_error():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    c = Client(addr=("127.0.0.1", port))
    with pytest.raises(errors.NetworkError):
        c.connect()


def test_inline_handlers_run_on_the_network_thread_without_process(net):
    threads = []
    done = threading.Event()

    class Inline(Packet):
        def receive(self, msg, cid=None):
            threads.append(threading.current_thread().name)
            self.peer.send_message("t:i", msg, cid)  # handlers may send
            done.set()

    s, _ = net.server(process=False, record=None, **{"net.process.inline": True})  # no process_async()
    s.register_packet("t:i", Inline(s.registry, s))
    c = net.client(s, packets={"t:i": EchoPacket})
    active_cids(s)
    c.send_message("t:i", "x")
    assert done.wait(10)
    assert threads == ["peng3dnet Server Thread"]
    assert c.registry.get_obj("t:i").wait_count(1) == ["x"]
    assert s.process() == 0  # nothing was queued


def test_broadcast_encodes_once_and_skips_closed(net):
    s, _ = net.server(record=None)
    clients = [net.client(s) for _ in range(5)]
    cids = active_cids(s, 5)
    assert s.broadcast("test:echo", {"all": 1}) == 5
    for c in clients:
        assert c.registry.get_obj("test:echo").wait_count(1) == [{"all": 1}]
    assert s.broadcast("test:echo", "some", cids=[cids[0], cids[1], 99999]) == 2
    clients[0].close("bye")
    clients[0].join(10)
    wait_for(lambda: len(s.clients) == 4, what="close")
    assert s.broadcast("test:echo", "rest") == 4
    assert clients[4].registry.get_obj("test:echo").wait_count(2)[-1] == "rest"

    # with the strict send check, a SmartPacket is sent where its check passes (nobody is logged in)
    class LoggedInOnly(SmartPacket):
        state = STATE_LOGGEDIN

    s.register_packet("t:li", LoggedInOnly(s.registry, s))
    s.cfg["net.smartpacket.strict_send"] = True
    assert s.broadcast("t:li", "not yet") == 0
    with pytest.raises(LocalProtocolError):
        s.broadcast(PID_CLOSECONN, {"reason": "no"})  # internal packets are the library's


def test_config_change_at_runtime_is_seen(net):
    s, rec = net.server(process=False, record="peng3dnet:server.connection.*")
    s.cfg["net.events.enable"] = False
    c = net.client(s, process=False)
    active_cids(s)
    assert rec.names() == []
    s.cfg["net.events.enable"] = True
    c.close("bye")
    (d,) = rec.wait_for("peng3dnet:server.connection.close")
    assert d["reason"] == "bye"
    c.join(5)


def test_a_compression_change_at_runtime_applies_to_open_connections_as_to_broadcast(net):
    """cfg["net.compress.*"] set at run time reached broadcast() at once
    but not send_message() on the connections already open."""
    s, _ = net.server(record=None)
    peer = RawPeer(s.addr)
    reg = peer.handshake()
    (cid,) = active_cids(s)
    body = "z" * 20000  # compressible, over the default threshold

    def flags_of_next_frame() -> int:
        frames: list = []
        while not frames:
            peer.dec.feed(peer.sock.recv(65536), frames)
        ((pid, flags, _),) = frames
        assert pid == reg["test:echo"]
        return flags

    s.send_message("test:echo", body, cid)
    assert flags_of_next_frame() & 1  # compressed (the default)
    s.cfg["net.compress.enabled"] = False
    s.send_message("test:echo", body, cid)
    assert flags_of_next_frame() == 0
    s.broadcast("test:echo", body)
    assert flags_of_next_frame() == 0
    s.cfg["net.compress.enabled"] = True
    s.cfg["net.compress.threshold"] = 40000  # the body is under it now
    s.send_message("test:echo", body, cid)
    assert flags_of_next_frame() == 0
    peer.close()


def test_burst_from_another_thread_is_coalesced_and_complete(net):
    got: list = []
    n = 20000

    class Sink(Packet):
        def receive(self, msg, cid=None):
            got.append(msg)

    s, _ = net.server(process=False, record=None, **{"net.process.inline": True, "net.limits.rate.packets": 0})
    s.register_packet("t:b", Sink(s.registry, s))
    c = net.client(s, process=False, packets={"t:b": Sink})
    active_cids(s)
    for i in range(n):
        c.send_message("t:b", i)
    wait_for(lambda: len(got) == n, what="all messages")
    assert got == list(range(n))
    # far fewer send() calls than messages: the stats count packets, the
    # kernel saw large writes (bytes per read on the server side prove it)
    (cid,) = active_cids(s)
    st = s.clients[cid].stats
    assert st.packets_in >= n


# --- lossless flow control on the default path ---------------------------------------------------

def _slow_sink(n_expected, delay_every=50):
    got = []
    done = threading.Event()

    class Sink(Packet):
        def receive(self, msg, cid=None):
            got.append(msg)
            if len(got) % delay_every == 0:
                time.sleep(0.0005)  # a handler slower than the sender (simulated work)
            if len(got) == n_expected:
                done.set()

    return Sink, got, done


@pytest.mark.parametrize("n,cfg,delay_every", [
    (100_000, {}, 50),  # the defaults: the rate limit's bucket (100,000 packets), recv_queue, blocking sends
    (6_000, {"net.limits.rate.packets": 2000.0, "net.limits.rate.burst": 0.5}, 50),  # a low rate limit
    # A million, the rest of the defaults as they are: at the default rate
    # limit's sustained 20,000 packets/s it would take 45 s more.
    (1_000_000, {"net.limits.rate.packets": 0}, 500),
])
def test_a_burst_from_the_main_thread_is_slowed_not_cut_off(net, n, cfg, delay_every):
    sink_cls, got, done = _slow_sink(n, delay_every)
    s, rec = net.server(packets={"t:sink": sink_cls}, **cfg)
    c = net.client(s, packets={"t:sink": sink_cls}, **{"net.limits.write_buffer_block": 256 * 1024})
    link = next(iter(s._links.values()))
    peak = {"client_buffer": 0, "server_queue": 0, "held": 0}
    stop = threading.Event()

    def sample():
        while not stop.wait(0.002):
            peak["client_buffer"] = max(peak["client_buffer"], c.write_buffer_size)
            peak["server_queue"] = max(peak["server_queue"], link.queued)
            peak["held"] = max(peak["held"], link.proto.frames_waiting)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        pad = "p" * 100  # 100,000 x ~110 bytes: more than the kernels' socket buffers hold
        for i in range(n):  # the program's main thread, as fast as it can
            c.send_message("t:sink", [i, pad])
        assert done.wait(120), f"{len(got)} of {n} delivered"
    finally:
        stop.set()
        t.join(5)
    assert [m[0] for m in got] == list(range(n))  # every message, in order
    assert c.close_reason is None and "peng3dnet:server.connection.close" not in rec.names()
    # memory bounded on both sides: the sender blocked near its high-water mark
    assert peak["client_buffer"] <= 256 * 1024 + 64 * 1024
    assert peak["server_queue"] <= s.cfg["net.limits.recv_queue"]


def test_a_blocked_sender_waits_for_half_the_mark(net):
    """The documented hysteresis: a program thread blocked over
    net.limits.write_buffer_block waits until the buffer is down to half of
    it (not merely under the mark, which would wake it once per frame).
    Checked on the waiting channel while the sender is blocked."""
    block = 64 * 1024
    s, _ = net.server(process=False, **{"net.limits.recv_queue": 10, "net.limits.rate.packets": 0.0})
    c = net.client(s, **{"net.limits.write_buffer_block": block, "net.timeout.send": 2.0})
    chan = c._link_obj.chan
    seen = []

    def sender():
        try:
            for _ in range(100_000):
                c.send_message("test:echo", "x" * 4000)
        except (errors.WriteBufferFullError, errors.ConnectionClosedError) as exc:
            seen.append(type(exc).__name__)

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    # (read while the sender waits: on a loaded machine this thread may come
    # back only after the send's time-out, when the mark is gone; what is
    # queued is not checked: the kernel's socket buffers may grow and take
    # it while the waiter has not woken yet)
    low = wait_for(lambda: chan.drain_waiters > 0 and chan.low_water, what="the sender blocked")
    assert low == block // 2
    t.join(10)
    assert seen == ["WriteBufferFullError"]


def test_a_blocked_send_times_out_with_a_clear_error(net):
    s, rec = net.server(process=False, **{"net.limits.recv_queue": 10, "net.limits.rate.packets": 0.0})
    c = net.client(s, **{"net.limits.write_buffer_block": 64 * 1024, "net.timeout.send": 0.5})
    blob = "x" * 4000
    t0 = None
    with pytest.raises(errors.WriteBufferFullError) as info:
        for _ in range(100_000):  # the server reads nothing more: kernel buffers, then ours fill
            t0 = time.monotonic()
            c.send_message("test:echo", blob)
    assert time.monotonic() - t0 >= 0.5  # it waited for the drain that never came
    assert "cid=" in str(info.value) and "net.timeout.send" in str(info.value)
    assert c.write_buffer_size <= 64 * 1024 + 5000  # blocked at the mark, nothing beyond it queued
    assert c.close_reason is None  # the connection stays; the program decides


def _sender_until_it_fails(send, sent=None):
    """A daemon thread calling ``send()`` (then ``sent()``) up to 100,000
    times, until it raises: ``(thread, woke, seen)``, ``woke`` set when it
    ended, ``seen`` the exception."""
    woke = threading.Event()
    seen: list = []

    def sender():
        try:
            for _ in range(100_000):
                send()
                if sent is not None:
                    sent()
        except Exception as exc:  # noqa: BLE001 - checked by the caller
            seen.append(exc)
        woke.set()

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    return t, woke, seen


@pytest.mark.parametrize("resume", [False, True])
def test_closing_wakes_a_sender_blocked_on_a_full_buffer(net, resume):
    """A program thread blocked in send_message() over
    net.limits.write_buffer_block learns of the close at once
    (ConnectionClosedError), not when the socket finally goes (the close
    linger, 2 s, for a peer that does not read) nor after net.timeout.send.
    With a session too: a close of ours ends it, so the send is not kept for
    a next socket (907 sends "succeeded" after the close, all lost, before
    2026-12-02)."""
    block = 64 * 1024
    s = make_server(**{"net.limits.recv_queue": 10, "net.limits.rate.packets": 0.0, "net.session.resume": resume})
    net.servers.append(s)
    rec = net.recorder(s, "peng3dnet:server.connection.close")
    s.bind()
    # Small kernel buffers on both ends (accepted sockets inherit the
    # listener's): once the sender blocks, what the kernels still take is far
    # less than the way down to the low-water mark, so only the close can wake it.
    s.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.runAsync()  # no process(): the server stops reading once 10 packets wait
    c = net.client(s, **{"net.limits.write_buffer_block": block, "net.timeout.send": 30.0,
                         "net.session.resume": resume})
    assert (c._link_obj.session is not None) is resume
    chan = c._link_obj.chan
    chan.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    (link,) = s._links.values()
    # The server stops reading first: were it still reading when the sender
    # blocked, its last reads could take the buffer under the margin below
    # (but not under the low-water mark), and the wait would never end.
    for _ in range(12):
        c.send_message("test:echo", "p")
    wait_for(lambda: link.chan.paused, what="the server no longer reading")
    closing = threading.Event()
    after_close = [0]

    def sent():
        if closing.is_set():  # (it was blocked when the close came: this one went after it)
            after_close[0] += 1

    t, woke, seen = _sender_until_it_fails(lambda: c.send_message("test:echo", "x" * 4000), sent)
    wait_for(lambda: chan.drain_waiters > 0 and len(chan.out) > block // 2 + 16 * 1024, what="the sender blocked")
    assert link.chan.paused
    assert not woke.is_set()
    closer = threading.Thread(target=c.close, args=("bye",), daemon=True)  # (waits for its flush, up to 2 s)
    closing.set()
    closer.start()
    assert woke.wait(1.0), "the blocked sender was not woken by the close"
    assert [(type(e), e.reason) for e in seen] == [(errors.ConnectionClosedError, "bye")]
    assert after_close[0] == 0  # none "sent" after the close
    assert not chan.closed  # woken by the close itself, not by the socket going
    t.join(5)
    deadline = time.monotonic() + 10
    while not chan.closed and time.monotonic() < deadline:  # the server reads again: the close completes
        s.process(wait=True, timeout=0.05)
    closer.join(5)
    assert chan.closed and c.close_reason == "bye"
    (d,) = rec.wait_for("peng3dnet:server.connection.close")
    assert d["reason"] == "bye"


def test_fan_out_and_handler_threads_never_block(net):
    """broadcast() and handlers on the process thread keep the cap-and-close
    policy: they serve every connection and must not wait for one."""
    s, rec = net.server(**{"net.limits.write_buffer_block": 1024, "net.timeout.send": 30.0})
    assert s._flow.may_block()  # the test's (main) thread
    flags = []

    class Probe(Packet):
        def receive(self, msg, cid=None):
            flags.append(self.peer._flow.may_block())

    s.register_packet("t:probe", Probe(s.registry, s))
    c = net.client(s, packets={"t:probe": Packet})
    c.send_message("t:probe", 1)
    wait_for(lambda: flags, what="the handler")
    assert flags == [False]  # on the process thread
    # handlers run by process() on the main thread (a 0.1.x loop) do not block either
    s2, _ = net.server(process=False, record=None, **{"net.limits.write_buffer_block": 1024})
    s2.register_packet("t:probe", Probe(s2.registry, s2))
    c2 = net.client(s2, packets={"t:probe": Packet})
    c2.send_message("t:probe", 2)
    wait_for(lambda: s2.process() or len(flags) > 1, what="the main-thread handler")
    assert flags == [False, False] and s2._flow.may_block()  # outside process() it may


def test_int_and_other_scalar_map_keys_travel_both_ways(net):
    s, rec = net.server()
    c = net.client(s)
    (cid,) = active_cids(s)
    msg = {1: "entity one", 2: {"hp": 3}, 4.5: [6], None: True, "name": "x"}
    c.send_message("test:echo", msg)  # the server echoes it back
    assert c.registry.get_obj("test:echo").wait_count(1) == [msg]
    assert s.registry.get_obj("test:echo").wait_count(1) == [msg]  # (it records after echoing)
    assert "mapkeys" in c.extensions and "mapkeys" in s.clients[cid].extensions
    s.broadcast("test:echo", {7: "all"})
    assert c.registry.get_obj("test:echo").wait_count(2)[-1] == {7: "all"}


def test_register_packet_refuses_the_protocols_ids_for_other_names():
    """Ids 0-63 are the protocol's: a peer of ours refuses a handshake
    registry that gives one to anything else, so registering it fails here,
    at once, not at the first connection."""
    s = make_server()
    s.initialize()  # (the internal packets are registered at their ids)
    for n in (0, 5, 16, 63):
        with pytest.raises(errors.RegistryError, match=f"packet id {n} is reserved for the protocol's own packets"):
            s.register_packet("game:low", Packet(s.registry, s), n)
    assert "game:low" not in s.registry
    assert s.register_packet("game:low", Packet(s.registry, s), 1000) == 1000
    assert s.registry.getID("peng3dnet:internal.closeconn") == 16


def test_a_close_by_the_peer_wakes_a_sender_blocked_on_its_full_buffer(net):
    """The peer sends closeconn and keeps its socket open (nor reads): a
    program thread blocked in send_message() on that connection learns of
    the close at once, not when the socket goes (the close linger, 2 s)."""
    block = 64 * 1024
    s = make_server(**{"net.limits.write_buffer_block": block, "net.timeout.send": 30.0,
                       "net.heartbeat.interval": 0})
    net.servers.append(s)
    s.runAsync()
    p = RawPeer(s.addr)
    p.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    p.handshake()
    (cid,) = active_cids(s)
    chan = s._links[cid].chan
    chan.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    t, woke, seen = _sender_until_it_fails(lambda: s.send_message("test:echo", "x" * 4000, cid))
    wait_for(lambda: chan.drain_waiters > 0 and len(chan.out) > block // 2 + 16 * 1024, what="the sender blocked")
    assert not woke.is_set()
    p.send_packet(16, {"reason": "gone"})  # closeconn; the socket stays open, unread
    assert woke.wait(1.0), "the blocked sender was not woken by the peer's close"
    assert [(type(e), e.reason) for e in seen] == [(errors.ConnectionClosedError, "gone")]
    assert not chan.closed  # woken by the close itself, not by the socket going
    t.join(5)
    p.close()
