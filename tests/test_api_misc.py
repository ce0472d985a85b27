"""Smaller parts of the public API, each with a behaviour that can fail."""

from __future__ import annotations

import logging

import msgpack
import pytest

from peng3dnet import errors
from peng3dnet.net import Client
from peng3dnet.packet import PrintPacket
from peng3dnet.protocol.framing import HEADER
from tests.conftest import EchoPacket, RawPeer, make_client, make_server
from tests.helpers import active_cids, wait_for


@pytest.fixture
def pair(net):
    """A running server (no process thread) and a handshaken client; torn down by ``net``."""
    s, _ = net.server(process=False, record=None)
    c = net.client(s, process=False)
    (cid,) = active_cids(s)
    return s, c, cid


def test_process_single_packet_and_receive_packet(pair):
    s, c, cid = pair
    echo = s.registry.get_obj("test:echo")
    client_obj = s.clients[cid]
    assert s.process_single_packet(client_obj) is False  # nothing queued
    pid = s.registry.get_id("test:echo")
    # inject one packet (header + body, no length prefix) as if received
    s.receive_packet(HEADER.pack(pid, 0) + msgpack.packb("injected"), cid)
    wait_for(lambda: s._inbox.items, what="queued")
    assert s.process_single_packet(client_obj) is True
    assert echo.got == ["injected"]
    # and the echo reached the client, whose handler runs in our process() call
    wait_for(lambda: c._inbox.items, what="echo queued on the client")
    assert c.process() == 1
    assert c.registry.get_obj("test:echo").got == ["injected"]


@pytest.mark.timeout(60)
def test_process_single_packet_while_packets_arrive(net):
    """process_single_packet (any thread) looks for the client's oldest
    item while the network thread appends to the queue: it once iterated
    the deque itself and raised 'deque mutated during iteration'."""
    import sys
    import threading

    s, _ = net.server(process=False, record=None,
                      **{"net.limits.rate.packets": 0, "net.limits.recv_queue": 10_000_000})
    flooder = net.client(s)
    other = net.client(s)
    active_cids(s, 2)
    echo = s.registry.get_obj("test:echo")
    stop = threading.Event()

    def flood():
        i = 0
        while not stop.is_set():
            flooder.send_message("test:echo", i)
            i += 1

    t = threading.Thread(target=flood, daemon=True)
    t.start()
    wait_for(lambda: len(s._inbox.items) > 5000, what="a long queue")
    flink = max(s._links.values(), key=lambda link: link.n_in)
    olink = next(link for link in s._links.values() if link is not flink)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # (the threads take turns often: the race shows at once)
    try:
        for k in range(100):
            other.send_message("test:echo", f"o{k}")
            wait_for(lambda k=k: olink.n_in > k, what="its packet queued")
            assert s.process_single_packet(olink.owner) is True
    finally:
        sys.setswitchinterval(old)
        stop.set()
        t.join(10)
    assert [m for m in echo.got if isinstance(m, str)] == [f"o{k}" for k in range(100)]


def test_client_receive_packet_dispatches_like_the_socket(pair):
    s, c, cid = pair
    pid = c.registry.get_id("test:echo")
    c.receive_packet(HEADER.pack(pid, 0) + msgpack.packb("fed"))
    wait_for(lambda: c._inbox.items, what="queued")
    assert c.process() == 1
    assert c.registry.get_obj("test:echo").got == ["fed"]


def test_client_on_server_close_and_interrupt_and_pump(pair, net):
    s, c, cid = pair
    rec = net.recorder(s, "peng3dnet:server.*")
    crec = net.recorder(c, "peng3dnet:client.interrupt")
    s.interrupt()
    c.interrupt()
    assert "peng3dnet:server.interrupt" in rec.names()
    crec.wait_for("peng3dnet:client.interrupt")
    c.send_message("test:echo", 1)
    c.pump_write_buffer()  # nothing pending: a no-op that must not fail
    assert c.write_buffer_size == 0
    s.clients[cid].close("kick")
    c.wait_for_close(10)
    assert c.close_reason == "kick"


def test_waits_time_out():
    s = make_server(**{"net.timeout.handshake": 0})
    s.initialize()
    s.bind()  # listening, but no loop: the handshake never starts
    try:
        c = make_client(s)
        c.runAsync()
        with pytest.raises(errors.TimedOutError):
            c.wait_for_connection(0.2)
        with pytest.raises(errors.TimedOutError):
            c.wait_for_close(0.1)
        with pytest.raises(errors.TimedOutError):
            c.join(0.1)
        c.stop()
        c.join(5)
    finally:
        s.shutdown()


def test_debug_print_and_printpacket_log(caplog):
    s = make_server(**{"net.debug.print.recv": True, "net.debug.print.connect": True,
                       "net.debug.print.send": True, "net.debug.print.close": True})
    s.register_packet("test:print", PrintPacket(s.registry, s))
    s.runAsync()
    s.process_async()
    try:
        with caplog.at_level(logging.INFO, logger="peng3dnet"):
            c = Client(addr=s.addr)
            c.register_packet("test:echo", EchoPacket(c.registry, c))
            c.register_packet("test:print", PrintPacket(c.registry, c))
            c.runAsync()
            c.wait_for_connection(10)
            active_cids(s)
            c.send_message("test:print", {"hello": 1})
            wait_for(lambda: "{'hello': 1}" in caplog.text, what="PrintPacket log")
            assert "connected from" in caplog.text
            assert "< server" in caplog.text  # net.debug.print.recv
            assert "> server" in caplog.text  # net.debug.print.send (hello, handshake)
            c.stop()
            c.join(5)
            wait_for(lambda: "closed: clientstop" in caplog.text, what="close log")  # net.debug.print.close
    finally:
        s.shutdown(timeout=5)


def test_send_encoded_frames_compresses_and_refuses_before_the_handshake(net):
    s, _ = net.server(record=None)
    c = net.client(s)
    (cid,) = active_cids(s)
    s.send_encoded("test:echo", msgpack.packb({"pre": "encoded"}), cid)
    big = {"big": "z" * 20000}  # above the compression threshold
    stats = s._links[cid].stats
    before = stats.bytes_out
    s.send_encoded("test:echo", msgpack.packb(big), cid)
    assert stats.bytes_out - before < 1000  # framed compressed: 20 KB of "z" become a few hundred bytes
    assert c.registry.get_obj("test:echo").wait_count(2) == [{"pre": "encoded"}, big]
    peer = RawPeer(s.addr)  # a connection still in the handshake
    assert peer.recv_packet()[0] == 1
    early = wait_for(lambda: [k for k in s.clients if k != cid], what="second connection")[0]
    with pytest.raises(errors.LocalProtocolError):
        s.send_encoded("test:echo", msgpack.packb(1), early)
