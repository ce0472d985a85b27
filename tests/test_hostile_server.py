"""A live server against peers that send values which decode and are still
hostile (fault hunt, 2026-12-02): a msgpack value too deep for ``repr()``,
a ping request too large to echo, a settype with a megabyte conntype, and
many incomplete packets held at once.  The bad peer is closed with a
reason; the server, its thread and a well-behaved client go on."""

from __future__ import annotations

import logging
import threading

import msgpack
import pytest

from peng3dnet import server as server_module
from peng3dnet.conntypes import MAX_PING_REQUEST
from peng3dnet.constants import PID_PING_REPLY, PID_PING_REQUEST
from peng3dnet.protocol.framing import encode_frame
from tests.conftest import RawPeer
from tests.helpers import Sink, active_cids, wait_for

DEEP = b"\x91" * 1000 + b"\x01"  # 1,000 levels: decodes, and repr() of it raises RecursionError


def handshaken(addr, extensions=()) -> RawPeer:
    peer = RawPeer(addr)
    peer.registry = peer.handshake(extensions)
    return peer


def unexpected(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "unexpected error" in r.getMessage()]


def echoes(client, n: int) -> list:
    return client.registry.get_obj("test:echo").wait_count(n)


def test_a_deep_call_id_closes_that_peer_and_the_server_goes_on(net, caplog):
    caplog.set_level(logging.INFO)
    s, rec = net.server()
    good = net.client(s)
    bad = handshaken(s.addr, ["calls"])
    bad.send(encode_frame(34, 0, b"\x93" + DEEP + b"\x40\xc0"))  # a call: [id, pid, value], the id 1,000 deep
    assert bad.recv_until_close() == [(16, {"reason": "invalidpacket"})]
    assert unexpected(caplog) == []
    (data,) = rec.wait_for("peng3dnet:server.connection.close")
    assert data["reason"] == "invalidpacket"
    good.send_message("test:echo", "still here")
    assert echoes(good, 1) == ["still here"]


def test_a_deep_closeconn_reason_is_recorded_short(net, caplog):
    caplog.set_level(logging.INFO)
    s, rec = net.server()
    bad = handshaken(s.addr)
    bad.send(encode_frame(16, 0, b"\x81\xa6reason" + DEEP))
    (data,) = rec.wait_for("peng3dnet:server.connection.close")
    assert data["reason"].startswith("[[[") and len(data["reason"]) <= 120
    assert unexpected(caplog) == []


def test_many_packets_then_a_deep_one_close_the_peer_instead_of_piling_up(net, caplog):
    """Every read ended with a frame whose handling raised: the read's
    packets stayed decoded in the core, uncharged and unqueued, read after
    read (800,000 held, +100 MiB, in the fault hunt)."""
    caplog.set_level(logging.INFO)
    s, rec = net.server(packets={"test:sink": Sink})
    bad = handshaken(s.addr, ["calls"])
    small = encode_frame(bad.registry["test:sink"], 0, msgpack.packb(1))
    bad.send(small * 2000 + encode_frame(34, 0, b"\x93" + DEEP + b"\x40\xc0"))
    assert bad.recv_until_close() == [(16, {"reason": "invalidpacket"})]
    (data,) = rec.wait_for("peng3dnet:server.connection.close")
    assert data["reason"] == "invalidpacket"
    assert s.registry.get_obj("test:sink").wait_count(2000) == [1] * 2000  # the packets before it, delivered
    assert unexpected(caplog) == []


def test_a_ping_request_too_large_to_echo_whole_gets_its_time_back(net):
    """The reply echoes the request (``oldmsg``); of one over
    MAX_PING_REQUEST only its ``time`` (all a 0.1.x client reads of it),
    and that only when it is a number: a ``time`` of megabytes was echoed
    (encoded and compressed on the network thread, 0.45 s each, in the
    fault hunt)."""
    s, _ = net.server()
    small = {"time": 1.0, "x": "y" * 100}
    large = {"time": 2.0, "x": "y" * MAX_PING_REQUEST}
    large_time = {"time": b"t" * (4 * MAX_PING_REQUEST)}
    for request, echoed in ((small, small), (large, {"time": 2.0}), (large_time, {"time": None})):
        peer = RawPeer(s.addr)
        assert peer.recv_packet()[0] == 1
        peer.send_packet(2, {"conntype": "ping"})
        peer.send_packet(PID_PING_REQUEST, request)
        pid, msg = peer.recv_packet()
        assert pid == PID_PING_REPLY and msg["oldmsg"] == echoed
        peer.close()


def test_a_megabyte_conntype_is_refused_and_described_not_repr_d(net, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="peng3dnet.server")
    s, _ = net.server()
    described: list = []
    real = server_module.describe
    monkeypatch.setattr(server_module, "describe", lambda v, *a: described.append(len(v)) or real(v, *a))
    peer = RawPeer(s.addr)
    assert peer.recv_packet()[0] == 1
    peer.send_packet(2, {"conntype": "z" * (1 << 20)})
    assert peer.recv_until_close() == [(16, {"reason": "unknownconntype"})]
    (line,) = [r.getMessage() for r in caplog.records if "unknown connection type" in r.getMessage()]
    assert len(line) < 200 and described == [1 << 20]  # (cut by describe(), which slices before repr())


def test_a_holder_closed_another_way_is_not_counted_any_more(net):
    """A connection holding part of a packet and closed by the server for
    another reason (here by the application) leaves the total at once,
    before its socket goes (the close linger): else the next holder would
    be closed to pay for memory already freed."""
    s, rec = net.server(**{"net.limits.read_buffer_total": 2 << 20, "net.limits.max_packet_size": 2 << 20})
    a = handshaken(s.addr)
    (cid_a,) = active_cids(s)
    part = 300 * 1024
    a.send(encode_frame(a.registry["test:echo"], 0, msgpack.packb(b"a" * (1 << 20)))[:part])
    wait_for(lambda: s._flow.read_held == part, what="a's part held")
    s.close_connection(cid_a, "bye")
    wait_for(lambda: s._flow.read_held == 0, what="a's part no longer counted")
    assert not s._links[cid_a].chan.closed if cid_a in s._links else True  # (its socket may linger)


def test_the_packets_of_the_read_that_went_over_the_cap_are_delivered_first(net):
    """A read that takes the total over the cap closes its own connection
    (the slowest producer, here the only one we still read: the other holder
    waits for our rate limit): the whole packets of that read still reach
    the handler, and their answers the peer, before the closeconn."""
    cap = 64 * 1024  # (at least the packet size, or the server refuses the config)
    s, rec = net.server(**{"net.limits.read_buffer_total": cap, "net.limits.max_packet_size": cap,
                           "net.process.inline": True, "net.limits.rate.packets": 1.0})  # (a bucket of 5 packets)
    a, b = handshaken(s.addr), handshaken(s.addr)
    cid_a, cid_b = sorted(active_cids(s, 2))
    echo = a.registry["test:echo"]
    # b: more packets than its bucket holds, then half of a large one: we hold
    # its packets back (our flow control), and its part is held.  (Each send
    # stays under loopback's 64 KiB segment, so the server reads it whole:
    # while b's packets are held back, we read no more from it.)
    b.send(b"".join(encode_frame(echo, 0, msgpack.packb(i)) for i in range(8))
           + encode_frame(echo, 0, msgpack.packb(b"b" * (60 * 1024)))[:30 * 1024])
    wait_for(lambda: s._flow.read_held == 30 * 1024 and s._links[cid_b].proto.frames_waiting, what="b held back")
    first = encode_frame(echo, 0, msgpack.packb(b"1" * (10 * 1024)))
    a.send(first[:5 * 1024])
    wait_for(lambda: s._flow.read_held == 35 * 1024, what="a's part held")
    # a's read ends its first packet and begins a second one: over the cap
    a.send(first[5 * 1024:] + encode_frame(echo, 0, msgpack.packb(b"2" * (60 * 1024)))[:40 * 1024])
    assert a.recv_until_close() == [(echo, b"1" * (10 * 1024)), (16, {"reason": "slowproducer"})]
    wait_for(lambda: s._flow.read_held == 30 * 1024, what="b's part alone counted")  # (set after the closeconn went)
    assert s._links[cid_b].proto.is_open
    closes = {d["client"].cid: d["reason"] for d in rec.wait_for("peng3dnet:server.connection.close")}
    assert closes == {cid_a: "slowproducer"}


def test_incomplete_packets_over_the_server_wide_cap_close_the_one_that_waited_longest(net):
    cap = 2 << 20
    s, rec = net.server(**{"net.limits.read_buffer_total": cap, "net.limits.max_packet_size": cap})
    good = net.client(s)
    a = handshaken(s.addr)
    b = handshaken(s.addr)
    cid_a, cid_b = sorted(active_cids(s, 3))[1:]  # (the good client came first)
    echo = a.registry["test:echo"]
    size = 3 << 19  # 1.5 MiB each: either fits under the cap, the two parts together do not
    body_a = msgpack.packb(b"a" * size)
    body_b = msgpack.packb(b"b" * size)
    frame_a = encode_frame(echo, 0, body_a)
    frame_b = encode_frame(echo, 0, body_b)
    part = 1200 * 1024
    a.send(frame_a[:part])
    wait_for(lambda: s._flow.read_held == part, what="a's part held")
    # a has been quiet for a second now (its hold's clock set back, not slept:
    # the slowest producer goes first, and on a loaded machine b's part could
    # arrive in reads spread over more time than a had waited: b was closed,
    # and a's closeconn never came)
    s._links[cid_a].held_since -= 1.0
    b.send(frame_b[:part])  # the total goes over the cap: a, quiet since, is closed
    assert a.recv_until_close() == [(16, {"reason": "slowproducer"})]
    b.send(frame_b[part:])
    pid, msg = b.recv_packet()
    assert (pid, msg) == (echo, b"b" * size)  # b's packet, whole
    assert s._links[cid_b].proto.is_open
    wait_for(lambda: s._flow.read_held == 0, what="nothing held any more")
    closes = {d["client"].cid: d["reason"] for d in rec.wait_for("peng3dnet:server.connection.close")}
    assert closes == {cid_a: "slowproducer"}
    good.send_message("test:echo", "still served")
    assert echoes(good, 1) == ["still served"]


@pytest.mark.unhandled_packets
def test_an_unexpected_error_handling_a_packet_is_logged_with_its_traceback(net, caplog, monkeypatch):
    """(The catch-all, end to end: a bug of ours stands in for the cause.)"""
    from peng3dnet.protocol import connection as connection_mod

    caplog.set_level(logging.INFO)
    s, rec = net.server()
    good = net.client(s)
    bad = handshaken(s.addr, ["heartbeat"])
    real = connection_mod.ProtocolConnection._on_heartbeat

    def broken(self, pid, msg):
        if msg == "boom":
            raise ZeroDivisionError("a bug of ours")
        real(self, pid, msg)

    monkeypatch.setattr(connection_mod.ProtocolConnection, "_on_heartbeat", broken)
    bad.send_packet(32, "boom")
    assert bad.recv_until_close() == [(16, {"reason": "invalidpacket"})]
    warned = wait_for(lambda: [r for r in caplog.records
                               if r.levelno == logging.WARNING and "protocol error" in r.getMessage()],
                      what="the warning")  # (logged as the close is handled, maybe after the closeconn went)
    (record,) = warned
    assert record.exc_info[0] is ZeroDivisionError and "a bug of ours" in record.getMessage()
    good.send_message("test:echo", "unharmed")
    assert echoes(good, 1) == ["unharmed"]


def test_a_peer_that_disconnects_mid_packet_leaves_the_total(net):
    s, rec = net.server(**{"net.limits.read_buffer_total": 2 << 20, "net.limits.max_packet_size": 2 << 20})
    a = handshaken(s.addr)
    part = 300 * 1024
    a.send(encode_frame(a.registry["test:echo"], 0, msgpack.packb(b"a" * (1 << 20)))[:part])
    wait_for(lambda: s._flow.read_held == part, what="a's part held")
    a.close()  # EOF in the middle of the packet
    rec.wait_for("peng3dnet:server.connection.close")
    wait_for(lambda: s._flow.read_held == 0 and not s._flow._holders, what="nothing counted any more")


def test_a_peer_trickling_bytes_to_look_alive_is_still_the_slowest_producer(net):
    """Shedding goes by bytes held per second since a connection began
    holding them: a peer that sent most of a packet and then trickles a
    byte now and then (its last read always recent) is closed before a
    peer that sent its part fast and paused a moment (ranked by the time
    since the last read, that peer would have gone instead)."""
    s, rec = net.server(**{"net.limits.read_buffer_total": 2 << 20, "net.limits.max_packet_size": 2 << 20})
    a, b, c = handshaken(s.addr), handshaken(s.addr), handshaken(s.addr)
    cid_a, cid_b, cid_c = sorted(active_cids(s, 3))
    echo = a.registry["test:echo"]
    frame = encode_frame(echo, 0, msgpack.packb(b"x" * (3 << 19)))  # 1.5 MiB: one fits under the cap
    a.send(frame[:1200 * 1024])
    wait_for(lambda: s._links[cid_a].held_in == 1200 * 1024, what="a's part held")
    stop = threading.Event()

    def trickle():
        i = 1200 * 1024
        while not stop.wait(0.02):
            try:
                a.send(frame[i:i + 1])
            except OSError:
                return
            i += 1

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    try:
        stop.wait(1.0)  # (the scenario: a has held its part for a second, looking alive)
        b.send(frame[:700 * 1024])
        wait_for(lambda: s._links[cid_b].held_in == 700 * 1024, what="b's part held")
        stop.wait(0.1)  # (b pauses a moment)
        c.send(frame[:300 * 1024])  # the total goes over the cap
        assert a.recv_until_close()[-1] == (16, {"reason": "slowproducer"})
    finally:
        stop.set()
        t.join(5)
    closes = {d["client"].cid: d["reason"] for d in rec.wait_for("peng3dnet:server.connection.close")}
    assert closes == {cid_a: "slowproducer"}
    assert s._links[cid_b].proto.is_open and s._links[cid_c].proto.is_open


def test_an_incomplete_packet_trickled_below_the_minimum_rate_is_closed(net):
    """net.limits.min_read_rate: a peer that sent part of a packet and then
    trickles (or nothing) keeps its place for ever otherwise: a byte now and
    then also keeps the heartbeat time-out from closing it."""
    s, rec = net.server(**{"net.limits.min_read_rate": 50_000.0, "net.limits.min_read_grace": 0.3,
                           "net.limits.rate.packets": 1.0})  # (a bucket of 5 packets)
    good = net.client(s)
    b = handshaken(s.addr)  # held back by us: more packets than its bucket, then part of one
    echo = b.registry["test:echo"]
    b.send(b"".join(encode_frame(echo, 0, msgpack.packb(i)) for i in range(8))
           + encode_frame(echo, 0, msgpack.packb(b"b" * (1 << 20)))[:5000])
    a = handshaken(s.addr)
    cid_good, cid_b, cid_a = sorted(active_cids(s, 3))
    wait_for(lambda: s._links[cid_b].proto.frames_waiting, what="b held back")
    a.send(encode_frame(echo, 0, msgpack.packb(b"a" * (1 << 20)))[:5000])
    assert a.recv_until_close() == [(16, {"reason": "slowproducer"})]
    closes = {d["client"].cid: d["reason"] for d in rec.wait_for("peng3dnet:server.connection.close")}
    assert closes == {cid_a: "slowproducer"}
    assert s._links[cid_b].proto.is_open  # its slowness is ours: not measured while we hold it back
    good.send_message("test:echo", "still served")
    assert echoes(good, 1) == ["still served"]


def test_a_heartbeat_flood_is_held_to_the_packet_rate_and_every_probe_answered(net):
    """The protocol's own packets count against net.limits.rate.packets: a
    peer flooding heartbeat probes (each decoded and answered on the network
    thread) was held by nothing but the byte rate, 32 MiB/s of tiny packets
    (a probe client's p50 went to 300 ms in the fault hunt); now they wait
    for the bucket like any packet (throttled, lossless)."""
    s, rec = net.server(**{"net.limits.rate.packets": 2000.0, "net.limits.rate.burst": 0.25})  # a bucket of 500
    good = net.client(s)
    bad = handshaken(s.addr, ["heartbeat"])
    link = s._links[max(active_cids(s, 2))]  # (the later connection: cids increase)
    bad.send(encode_frame(32, 0, msgpack.packb({"t": 1.0})) * 2000)
    wait_for(lambda: link.proto.frames_waiting > 0, what="probes held back for the bucket")
    acks = 0
    while acks < 2000:
        pid, msg = bad.recv_packet()
        if pid == 33:  # (the server's own probes, 32, may come between)
            assert msg == {"t": 1.0}
            acks += 1
    assert link.proto.is_open and link.proto.frames_waiting == 0
    good.send_message("test:echo", "still served")
    assert echoes(good, 1) == ["still served"]


def test_the_minimum_rate_holds_without_the_server_wide_cap(net):
    """net.limits.min_read_rate does not need net.limits.read_buffer_total:
    with that cap off, incomplete packets are still counted for the rate."""
    s, rec = net.server(**{"net.limits.min_read_rate": 50_000.0, "net.limits.min_read_grace": 0.3,
                           "net.limits.read_buffer_total": 0})
    a = handshaken(s.addr)
    a.send(encode_frame(a.registry["test:echo"], 0, msgpack.packb(b"a" * (1 << 20)))[:5000])
    assert a.recv_until_close() == [(16, {"reason": "slowproducer"})]
    (data,) = rec.wait_for("peng3dnet:server.connection.close")
    assert data["reason"] == "slowproducer" and s._flow.read_held == 0


def test_large_packets_arriving_back_to_back_are_measured_from_the_one_in_flight(net):
    """Every read ending inside a packet (the next one begun): the rate is
    the packet in flight's, since its first byte, not since the first packet
    of the stream (by which the stream would have got slower and slower)."""
    s, rec = net.server(**{"net.limits.min_read_rate": 100_000.0, "net.limits.min_read_grace": 0.2,
                           "net.process.inline": True})
    a = handshaken(s.addr)
    echo = a.registry["test:echo"]
    frames = [encode_frame(echo, 0, msgpack.packb(bytes([i]) * (64 * 1024))) for i in range(12)]
    half = len(frames[0]) // 2
    pace = threading.Event()
    a.send(frames[0][:half])
    for i in range(1, len(frames)):  # the rest of one packet and half of the next, every 0.1 s: 320 KiB/s
        pace.wait(0.1)  # (the traffic's shape, not synchronisation)
        a.send(frames[i - 1][half:] + frames[i][:half])
    a.send(frames[-1][half:])
    got = [a.recv_packet() for _ in frames]
    assert got == [(echo, bytes([i]) * (64 * 1024)) for i in range(12)]
    assert s._links[min(active_cids(s, 1))].proto.is_open


def test_a_heartbeat_echo_the_server_did_not_send_sets_no_rtt(net):
    """The RTT comes from the echo of one of the server's last probes, each
    counted once: a peer echoing a time of its choosing made up its own RTT
    (in stats and the heartbeat event)."""
    s, rec = net.server(**{"net.heartbeat.interval": 0.2})
    bad = handshaken(s.addr, ["heartbeat"])
    link = s._links[max(active_cids(s, 1))]
    now = link.hb_sent
    bad.send(encode_frame(33, 0, msgpack.packb({"t": now - 1000.0})) + encode_frame(33, 0, msgpack.packb(5)))
    while True:
        pid, msg = bad.recv_packet()
        if pid == 32:  # the server's probe: echo it, twice
            bad.send_packet(33, msg)
            bad.send_packet(33, msg)
            break
    echo = bad.registry["test:echo"]
    bad.send_packet(echo, "after")  # answered once everything before it was handled
    while bad.recv_packet() != (echo, "after"):
        pass
    beats = [d for n, d in list(rec.items) if n == "peng3dnet:server.connection.heartbeat"]
    assert len(beats) == 1  # the second echo of the same probe counts no more
    assert 0 <= beats[0]["rtt"] < 10 and link.stats.rtt == beats[0]["rtt"]  # (a made-up one: some 1000 s)
