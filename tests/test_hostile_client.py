"""A hostile server against a real Client (the fault hunt's client-side
findings): what the server sends is bounded and described, and a failure
handling it closes that connection, never the client's loop."""

from __future__ import annotations

import logging
import socket
import threading

import msgpack
import pytest

from peng3dnet import calls as calls_mod
from peng3dnet.errors import ConnectionClosedError, RemoteCallError
from peng3dnet.net import Client
from peng3dnet.protocol.framing import encode_frame
from tests.helpers import Sink, wait_for

REGISTRY = {"app:q": 64, "app:p": 65}


def deep(levels: int) -> list:
    v: list = []
    for _ in range(levels):
        v = [v]
    return v


def frame(pid: int, msg) -> bytes:
    return encode_frame(pid, 0, msgpack.packb(msg))


def _serve(raw_listener, answer):
    """Accept one client, handshake, wait for its call and send
    ``answer(call_id)`` (bytes) in one write; returns the thread and what
    the server read afterwards."""
    seen: list = []

    def run():
        peer = raw_listener.accept()
        peer.serve_handshake(REGISTRY)
        pid, msg = peer.recv_packet()
        assert pid == 34, (pid, msg)  # peng3dnet:ext.call
        peer.send(answer(msg[0]))
        seen.extend(peer.recv_until_close())

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, seen


def _client(net, addr, cfg=None) -> tuple[Client, Sink]:
    c = Client(addr=addr, cfg=cfg)
    sink = Sink(c.registry, c)
    c.register_packet("app:q", Sink(c.registry, c))
    c.register_packet("app:p", sink)
    net.clients.append(c)
    c.runAsync()
    c.process_async()
    c.wait_for_connection(10)
    return c, sink


def test_a_call_reply_with_a_1000_deep_error_is_described_and_the_read_goes_on(net, raw_listener):
    """str() of the error's message raised RecursionError on the network
    thread: the call was never settled (the caller waited for ever with no
    time-out), and the rest of the read (a packet, the server's close) was lost."""
    t, _ = _serve(raw_listener, lambda call_id: (
        frame(35, [call_id, 1, {"type": deep(1000), "message": deep(1000)}])
        + frame(65, "after the reply") + frame(16, {"reason": "bye"})))
    c, sink = _client(net, raw_listener.addr)
    with pytest.raises(RemoteCallError) as info:
        c.call("app:q", 1, timeout=None)
    text = str(info.value)
    assert "[[[" in text and len(text) < 300 and "[[[" in info.value.remote_type
    assert sink.wait_count(1) == ["after the reply"]
    c.wait_for_close(10)
    assert c.close_reason == "bye"
    t.join(10)


@pytest.mark.unhandled_packets
def test_an_output_whose_handling_raises_closes_that_connection_only(net, raw_listener, monkeypatch, caplog):
    """(A bug of ours stands in for any unforeseen failure past the core.)"""
    caplog.set_level(logging.WARNING, logger="peng3dnet")

    def broken(self, link, o):
        raise ZeroDivisionError("a bug of ours")

    monkeypatch.setattr(calls_mod.Calls, "on_reply", broken)
    # (many failing outputs in one read: the connection is closed once, warned about once)
    t, seen = _serve(raw_listener, lambda call_id: frame(35, [call_id, 0, 5]) * 500 + frame(65, "after"))
    c, sink = _client(net, raw_listener.addr)
    with pytest.raises(ConnectionClosedError) as info:
        c.call("app:q", 1, timeout=10)
    assert info.value.reason == "invalidpacket"
    c.wait_for_close(10)
    wait_for(lambda: not c.run, what="the client's loop ends")
    assert c.close_reason == "invalidpacket" and sink.got == []  # (what came after the failure is not delivered)
    t.join(10)
    assert seen == [(16, {"reason": "invalidpacket"})]
    (record,) = [r for r in caplog.records if "protocol error, closing" in r.getMessage()]
    assert record.levelno == logging.WARNING and record.exc_info[0] is ZeroDivisionError
    assert "handling CallReplied raised ZeroDivisionError" in record.getMessage()


def test_a_server_trickling_an_incomplete_packet_below_the_minimum_rate_is_left(net, raw_listener):
    """net.limits.min_read_rate on the client side: a hostile server that
    sends part of a packet and then a byte now and then (which keeps the
    heartbeat time-out from closing it) no longer holds the client: it
    leaves with ``slowproducer`` and says so."""
    seen: list = []
    stop = threading.Event()

    def run():
        peer = raw_listener.accept()
        peer.serve_handshake(REGISTRY)
        part = frame(65, b"x" * (1 << 20))
        peer.send(part[:5000])
        i = 5000
        while not stop.wait(0.05):  # the attack's own pace: a byte every 50 ms
            try:
                peer.send(part[i:i + 1])
            except OSError:
                break
            i += 1
            peer.sock.setblocking(False)
            try:
                if peer.sock.recv(65536, socket.MSG_PEEK):
                    break  # the client said something (its closeconn): read it below
            except BlockingIOError:
                pass
            finally:
                peer.sock.setblocking(True)
                peer.sock.settimeout(10)
        seen.extend(peer.recv_until_close())

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        c, _ = _client(net, raw_listener.addr, {"net.limits.min_read_rate": 50_000.0,
                                                "net.limits.min_read_grace": 0.3})
        wait_for(lambda: c.close_reason is not None, what="the client to leave")
        assert c.close_reason == "slowproducer"
        t.join(10)
        assert seen == [(16, {"reason": "slowproducer"})]
    finally:
        stop.set()


def test_a_resume_on_a_socket_that_did_not_negotiate_resume_again_is_refused(net, raw_listener):
    """After a drop the server's new hello no longer offers "resume" but its
    handshake carries the session: the client resumed anyway, and with no
    acks possible on that socket everything it sent waited in the replay
    buffer until replayoverflow (the fault hunt of 2026-12-02)."""
    from peng3dnet.constants import EXTENSION_PACKETS, EXTENSIONS_KEY, INTERNAL_PACKET_IDS, SESSION_KEY

    token = b"t" * 16
    seen: list = []

    def serve(peer, offer):
        peer.send_packet(1, {"version": "raw", "protoversion": 2, EXTENSIONS_KEY: offer})
        pid, settype = peer.recv_packet()
        assert pid == 2, (pid, settype)
        seen.append(settype)
        registry = dict(INTERNAL_PACKET_IDS)
        for ext in settype.get(EXTENSIONS_KEY, ()):
            registry.update(EXTENSION_PACKETS[ext])
        registry.update(REGISTRY)
        peer.send_packet(3, {"version": "raw", "protoversion": 2, "registry": registry,
                             SESSION_KEY: {"token": token, "received": 0}})

    def run():
        first = raw_listener.accept()
        serve(first, ["resume"])
        assert first.recv_packet() == (4, {"success": True})
        first.close()  # a drop: the client comes back to resume
        second = raw_listener.accept()
        serve(second, [])  # no "resume" offered, the session in the handshake all the same
        seen.extend(second.recv_until_close())

    t = threading.Thread(target=run, daemon=True)
    t.start()
    c, _ = _client(net, raw_listener.addr, {"net.session.resume": True})
    wait_for(lambda: c.close_reason is not None, what="the client to give the session up")
    assert c.close_reason == "resume:mismatch"
    t.join(10)
    assert "resume" in seen[0][EXTENSIONS_KEY] and seen[-1] == (16, {"reason": "resume:mismatch"})
