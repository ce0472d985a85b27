"""Calls (issue "Sessions", part 3): request/response over the ``calls``
extension, both directions, errors, time-outs, closes, many at once, on
real sockets."""

from __future__ import annotations

import logging
import re
import threading

import msgpack
import pytest

from peng3dnet import errors
from peng3dnet.constants import EXTENSIONS_KEY, PID_CALL, PID_CALL_REPLY, STATE_LOGGEDIN
from peng3dnet.net import Client, Server
from peng3dnet.packet import Packet, SmartPacket
from peng3dnet.protocol.framing import encode_frame
from tests.conftest import EchoPacket, RawPeer
from tests.helpers import active_cids, handler_thread, wait_for


class Double(Packet):
    answers = True

    def receive(self, msg, cid=None):
        return msg * 2


class LoggedInOnly(SmartPacket):
    state = STATE_LOGGEDIN
    answers = True

    def receive(self, msg, cid=None):
        return "secret"


def _server(net, **cfg):
    s = Server(cfg={"net.server.addr": ("127.0.0.1", 0), **cfg})
    s.register_packet("test:echo", EchoPacket(s.registry, s))
    s.register_packet("calc:double", Double(s.registry, s))
    s.register_packet("calc:smart", LoggedInOnly(s.registry, s))
    gate = threading.Event()

    @s.handler("calc:info")
    def info(msg, cid):
        if msg == "boom":
            raise KeyError("no such player")
        if msg == "refuse":
            raise errors.CallError("not your turn")
        if msg == "slow":
            gate.wait(10)
        if msg == "unsendable":
            return object()

        return {"cid": cid, "thread": handler_thread(s), "got": msg}

    net.servers.append(s)
    return s, gate


def _client(net, s, start=True, extra=None, **cfg):
    c = Client(addr=s.addr, cfg=cfg)
    c.register_packet("test:echo", EchoPacket(c.registry, c))
    c.register_packet("calc:double", Double(c.registry, c))
    c.register_packet("calc:smart", Packet(c.registry, c))
    c.register_packet("calc:info", Packet(c.registry, c))
    for name, cls in (extra or {}).items():
        c.register_packet(name, cls(c.registry, c))
    net.clients.append(c)
    if start:
        c.runAsync()
        c.process_async()
        c.wait_for_connection(10)
    return c


def test_call_returns_the_handlers_answer(net):
    s, _ = _server(net)
    s.runAsync()
    s.process_async()
    c = _client(net, s)
    (cid,) = active_cids(s)
    assert "calls" in c.extensions
    assert c.call("calc:double", 21) == 42
    assert c.call("calc:double", "ab", timeout=5) == "abab"
    assert c.call("calc:info", [1, {2: 3}]) == {"cid": cid, "thread": "handlers", "got": [1, {2: 3}]}
    # The other direction: the server asks the client.
    assert s.call("calc:double", 4.5, cid) == 9.0
    # A packet that does not declare answers = True is not callable: its handler does not run.
    with pytest.raises(errors.RemoteCallError) as exc:
        c.call("test:echo", "x")
    assert exc.value.unanswered and exc.value.remote_type == "NotCallable" and "test:echo" in str(exc.value)
    assert s.registry.get_obj("test:echo").got == []
    assert s._calls.pending == 0 and c._calls.pending == 0


def test_remote_errors_come_back_typed(net, caplog):
    s, _ = _server(net)
    s.runAsync()
    s.process_async()
    c = _client(net, s)
    with caplog.at_level(logging.ERROR, logger="peng3dnet.user"):
        with pytest.raises(errors.RemoteCallError) as exc:
            c.call("calc:info", "boom")
        assert exc.value.remote_type == "KeyError" and "no such player" in exc.value.remote_message
        assert not exc.value.unanswered
        # A bug: logged on the server (after the answer went out), with its traceback.
        wait_for(lambda: any("call of FunctionPacket" in r.getMessage() for r in caplog.records), what="the log")
        caplog.clear()
        with pytest.raises(errors.RemoteCallError) as exc:
            c.call("calc:info", "refuse")
        assert exc.value.remote_type == "CallError" and exc.value.remote_message == "not your turn"
        assert c.call("calc:double", 0) == 0  # handlers run in order: the one before is done
        assert not any("call of" in r.getMessage() for r in caplog.records)  # an answer: not logged
    with pytest.raises(errors.RemoteCallError) as exc:
        c.call("calc:smart", None)  # not logged in: the SmartPacket check fails
    assert exc.value.unanswered and exc.value.remote_type == "SmartPacketInvalid"
    with pytest.raises(errors.RemoteCallError, match="cannot be sent"):
        c.call("calc:info", "unsendable")

    assert c.call("calc:double", 1) == 2  # the connection is fine


def test_time_out_and_late_reply(net):
    s, gate = _server(net)
    s.runAsync()
    s.process_async()
    c = _client(net, s)
    with pytest.raises(errors.TimedOutError):
        c.call("calc:info", "slow", timeout=0.2)
    assert c._calls.pending == 0
    gate.set()  # the answer now comes, too late: dropped
    assert c.call("calc:double", 5) == 10
    assert c.stats.packets_in >= 2 and c._calls.pending == 0


def test_an_async_call_times_out_on_its_own_timer_with_a_clear_message(net):
    """call_async() has no waiter to time it out: the call's own timer
    (on the network thread) fails its future and forgets it."""
    s, gate = _server(net)
    s.runAsync()
    s.process_async()
    c = _client(net, s)
    fut = c.call_async("calc:info", "slow", timeout=0.2)
    exc = fut.exception(10)
    assert isinstance(exc, errors.TimedOutError)
    assert re.fullmatch(r"call \d+ got no reply within 0\.2 s", str(exc)), str(exc)
    assert c._calls.pending == 0
    gate.set()  # the late answer is dropped; the next call works
    assert c.call("calc:double", 4, timeout=10) == 8


def test_a_call_with_timeout_zero_waits_for_its_answer(net):
    """timeout=0 means no time-out: the call's future is still open after
    the client's network thread has run the timers due when it was made
    (two hops through its queued calls: timers run after the calls of a
    round, so the second hop runs a round later)."""
    s, gate = _server(net)
    s.runAsync()
    s.process_async()
    c = _client(net, s)
    fut = c.call_async("calc:info", "slow", timeout=0)
    hopped = threading.Event()
    c._reactor.call_soon(c._reactor.call_soon, hopped.set)
    assert hopped.wait(10)
    assert not fut.done()
    gate.set()
    assert fut.result(10)["got"] == "slow"


def test_close_fails_pending_calls(net):
    s, gate = _server(net)
    s.runAsync()
    s.process_async()
    c = _client(net, s)
    fut = c.call_async("calc:info", "slow", timeout=30)
    (cid,) = active_cids(s)
    s.close_connection(cid, "kicked")
    with pytest.raises(errors.ConnectionClosedError) as exc:
        fut.result(10)
    assert exc.value.reason == "kicked"
    assert str(exc.value) == "connection closed before the reply (kicked)"
    gate.set()
    with pytest.raises(errors.ConnectionClosedError):
        c.call("calc:double", 1)


def test_a_thousand_concurrent_calls(net):
    s, _ = _server(net)
    s.runAsync()
    s.process_async()
    c = _client(net, s)
    results: dict[int, object] = {}

    def caller(base):
        futs = [(i, c.call_async("calc:double", i)) for i in range(base, base + 250)]
        for i, f in futs:
            results[i] = f.result(30)

    threads = [threading.Thread(target=caller, args=(k * 250,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {i: 2 * i for i in range(1000)}
    assert c._calls.pending == 0


def test_callback_runs_where_handlers_run(net):
    s, _ = _server(net)
    s.runAsync()
    s.process_async()
    c = _client(net, s)
    done = threading.Event()
    seen = []

    def cb(fut):
        seen.append((fut.result(), handler_thread(c)))
        done.set()

    c.call_async("calc:double", 8, callback=cb)
    assert done.wait(10)
    assert seen == [(16, "handlers")]
    assert c.call("calc:double", 1) == 2


def test_nested_calls_do_not_deadlock(net):
    """A server handler that calls the client back while the client waits for it."""
    s, _ = _server(net)

    @s.handler("calc:ask")
    def ask(msg, cid):
        return s.call("calc:double", msg, cid) + 1  # on the server's process thread

    s.runAsync()
    s.process_async()
    c = _client(net, s, extra={"calc:ask": Packet})
    assert c.call("calc:ask", 20) == 41


def test_call_on_the_network_thread_is_refused(net):
    s, _ = _server(net, **{"net.process.inline": True})
    got = []

    @s.handler("calc:relay")
    def relay(msg, cid):
        try:
            s.call("calc:double", 1, cid)
        except errors.LocalProtocolError as exc:
            got.append(str(exc))
        fut = s.call_async("calc:double", msg, cid)  # the async form works there
        fut.add_done_callback(lambda f: got.append(f.result()))
        return "ok"

    s.runAsync()
    c = _client(net, s, extra={"calc:relay": Packet})
    assert c.call("calc:relay", 3) == "ok"
    wait_for(lambda: len(got) == 2, what="the async answer")
    assert "network thread" in got[0] and got[1] == 6


def test_calls_in_poll_mode(net):
    s, _ = _server(net)
    s.runAsync()
    s.process_async()
    c = _client(net, s, start=False)
    while not c.poll(0.01) and c.protocol_state.name != "ACTIVE":
        pass
    c.wait_for_connection(10)
    assert c.call("calc:double", 7) == 14  # the polling thread polls while it waits
    seen = []
    c.call_async("calc:double", 1, callback=lambda f: seen.append((f.result(), threading.current_thread())))
    wait_for(lambda: c.poll(0.01) is not None and seen, what="the callback in poll()")
    assert seen == [(2, threading.current_thread())]
    c.stop()
    while c.run:
        c.poll(0.01)


def test_reply_from_another_connection_is_dropped(net):
    """Call ids are per server: a client cannot answer another's call."""
    s, _ = _server(net)
    slow_answer = threading.Event()

    class Waits(Packet):
        answers = True

        def receive(self, msg, cid=None):
            slow_answer.wait(10)
            return "from the right client"

    s.register_packet("calc:wait", Packet(s.registry, s))
    s.runAsync()
    s.process_async()
    _client(net, s, extra={"calc:wait": Waits})  # the client that answers
    (cid,) = active_cids(s)
    fut = s.call_async("calc:wait", None, cid, timeout=30)
    evil = RawPeer(s.addr)
    evil.recv_packet()
    evil.send_packet(2, {"conntype": "classic", EXTENSIONS_KEY: ["calls"]})
    _, hs = evil.recv_packet()
    evil.send_packet(4, {"success": True})
    evil.send_packet(PID_CALL_REPLY, [fut.call_id, 0, "forged"])
    # A call of its own after the forgery: its answer proves the forgery was read.
    evil.send_packet(PID_CALL, [99, hs["registry"]["calc:double"], 5])
    assert evil.recv_packet() == (PID_CALL_REPLY, [99, 0, 10])
    assert not fut.done()
    slow_answer.set()
    assert fut.result(10) == "from the right client"


def test_malformed_call_closes_only_that_connection(net):
    s, _ = _server(net)
    s.runAsync()
    s.process_async()
    c = _client(net, s)
    evil = RawPeer(s.addr)
    evil.recv_packet()
    evil.send_packet(2, {"conntype": "classic", EXTENSIONS_KEY: ["calls"]})
    evil.recv_packet()
    evil.send_packet(4, {"success": True})
    evil.send_packet(PID_CALL, [1, 3, None])  # packet id 3: not an application packet
    assert evil.recv_until_close()[-1] == (16, {"reason": "invalidpacket"})
    assert c.call("calc:double", 2) == 4


def test_on_receive_sees_calls_as_packets_and_never_a_callback(net):
    s, _ = _server(net)
    s.runAsync()
    s.process_async()

    class Hooked(Client):
        pids: list = []

        def on_receive(self, pid, msg):
            self.pids.append((pid, msg))

    c = Hooked(addr=s.addr)
    for name, cls in (("test:echo", EchoPacket), ("calc:double", Double), ("calc:smart", Packet), ("calc:info", Packet)):
        c.register_packet(name, cls(c.registry, c))
    net.clients.append(c)
    c.runAsync()
    c.process_async()
    c.wait_for_connection(10)
    (cid,) = active_cids(s)
    done = threading.Event()
    c.call_async("calc:double", 3, callback=lambda f: done.set())
    assert done.wait(10)
    assert s.call("calc:double", 4, cid) == 8  # answered by the client: its hook sees the packet
    wait_for(lambda: c.pids, what="on_receive")
    assert c.pids == [(c.registry.get_id("calc:double"), 4)]


@pytest.mark.parametrize("action", ["close", "drop"])
def test_call_requests_are_rate_limited_like_packets(net, action):
    runs = []
    s = Server(cfg={"net.server.addr": ("127.0.0.1", 0), "net.limits.rate.packets": 10.0,
                    "net.limits.rate.burst": 1.0, "net.limits.rate.action": action})
    s.register_packet("test:echo", EchoPacket(s.registry, s))

    @s.handler("calc:count")
    def count(msg, cid):
        runs.append(msg)
        return msg

    net.servers.append(s)
    s.runAsync()
    s.process_async()
    evil = RawPeer(s.addr)
    evil.recv_packet()
    evil.send_packet(2, {"conntype": "classic", EXTENSIONS_KEY: ["calls"]})
    _, hs = evil.recv_packet()
    evil.send_packet(4, {"success": True})
    pid = hs["registry"]["calc:count"]
    evil.send(b"".join(encode_frame(PID_CALL, 0, msgpack.packb([i, pid, i])) for i in range(200)))
    if action == "close":
        packets = evil.recv_until_close()
        assert packets[-1] == (16, {"reason": "ratelimit"})
    else:
        # Probes until one is answered (the bucket refills at 10/s): by then
        # everything sent before it was read, and let through or dropped.
        import socket as _socket

        evil.sock.settimeout(0.3)
        answered = False
        for k in range(1000, 1050):
            evil.send_packet(PID_CALL, [k, pid, "probe"])
            try:
                while not answered:
                    answered = evil.recv_packet() == (PID_CALL_REPLY, [k, 0, "probe"])
            except (_socket.timeout, TimeoutError):
                continue
            break
        assert answered
        while "probe" in runs:
            runs.remove("probe")
    assert len(runs) <= 11, f"{len(runs)} of 200 call handlers ran over a limit of 10/s"
