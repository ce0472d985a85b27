"""Calls unit by unit (no sockets): :class:`peng3dnet.calls.Calls` and
:func:`~peng3dnet.calls.wait_result` against a recording fake peer and
links carrying a real (socketless) protocol connection that negotiated
``calls``.  Ids, what is sent and how, time-outs, replies of every status
and shape (truncations at their exact lengths), closes, the answering
wrapper's replies and checks, and the log lines value by value."""

from __future__ import annotations

import concurrent.futures
import logging
import threading

import msgpack
import pytest

from peng3dnet.calls import CallFuture, Calls, wait_result
from peng3dnet.constants import PID_CALL, PID_CALL_REPLY, SIDE_CLIENT, SIDE_SERVER, STATE_ACTIVE
from peng3dnet.errors import (
    CallError,
    ConnectionClosedError,
    LocalProtocolError,
    RemoteCallError,
    TimedOutError,
    WriteBufferFullError,
)
from peng3dnet.packet import Packet, SmartPacket
from peng3dnet.plans import NO_EVENT
from peng3dnet.protocol.connection import (
    CALL_ERROR,
    CALL_OK,
    CALL_UNANSWERED,
    CallReplied,
    CallRequested,
    ProtocolConnection,
)
from peng3dnet.protocol.framing import FrameDecoder
from peng3dnet.registry import PacketRegistry


class Timer:
    def __init__(self, delay, fn):
        self.delay = delay
        self.fn = fn
        self.cancelled = False

    def cancel(self):
        self.cancelled = True


class Reactor:
    def __init__(self):
        self.timers: list[Timer] = []
        self.loop = False

    def call_later(self, delay, fn):
        t = Timer(delay, fn)
        self.timers.append(t)
        return t

    def in_loop(self):
        return self.loop


class View:
    """A connection as a SmartPacket's check sees it."""

    def __init__(self, state=STATE_ACTIVE):
        self.state = state
        self.mode = 0
        self.conntype = "classic"
        self.ssl_seclevel = 0


class Peer:
    _role = "server"
    is_server = True

    def __init__(self):
        self.registry = PacketRegistry()
        self._reactor = Reactor()
        self.sent: list = []
        self.queued: list = []
        self.closed_cids: list = []
        self.clients: dict = {}
        self.send_error: BaseException | None = None
        self.on_send = None

    def _lookup(self, ptype):
        return (self.registry.version, self.registry.get_id(ptype))

    def _send_frame(self, link, frame, pid, data, cork=True):
        if self.on_send is not None:
            self.on_send()
        if self.send_error is not None:
            raise self.send_error
        self.sent.append((link, frame, pid, data, cork))

    def _queue_call(self, link, callback, fut):
        self.queued.append((link, callback, fut))

    def close_connection(self, cid, reason):
        self.closed_cids.append((cid, reason))


class Link:
    def __init__(self, cid=3, session=None):
        self.cid = cid
        self.session = session
        self.proto = ProtocolConnection(SIDE_SERVER)
        self.proto.negotiated = frozenset({"calls"})


def decode(frame):
    frames: list = []
    FrameDecoder(1 << 20).feed(frame, frames)
    ((pid, flags, body),) = frames
    assert flags == 0
    return pid, msgpack.unpackb(body, raw=False, strict_map_key=False)


def replies(peer):
    """What was answered: ``(link, [call id, status, value])``, checking how it was sent."""
    out = []
    for link, frame, pid, data, cork in peer.sent:
        assert (pid, data, cork) == (-1, NO_EVENT, False)
        rpid, body = decode(frame)
        assert rpid == PID_CALL_REPLY
        out.append((link, body))
    return out


@pytest.fixture
def peer():
    p = Peer()
    p.registry.register(object(), "app:a")  # id 64
    return p


# --- the calling side -------------------------------------------------------------------

def test_calls_are_numbered_from_one_and_sent_with_their_packet_id(peer):
    calls = Calls(peer)
    link = Link(cid=9)
    f1 = calls.start(link, "app:a", {"x": 1}, 2.5)
    f2 = calls.start(link, "app:a", [2], 2.5)
    assert (f1.call_id, f1.cid, f2.call_id, f2.cid) == (1, 9, 2, 9)
    assert isinstance(f1, CallFuture)
    assert [(lk, pid, data, cork) for lk, _, pid, data, cork in peer.sent] == [
        (link, 64, NO_EVENT, True), (link, 64, NO_EVENT, True)]
    assert [decode(frame) for _, frame, *_ in peer.sent] == [(PID_CALL, [1, 64, {"x": 1}]), (PID_CALL, [2, 64, [2]])]
    assert calls.pending == 2


def test_a_call_times_out_on_its_timer_and_is_forgotten(peer):
    calls = Calls(peer)
    fut = calls.start(Link(), "app:a", None, 2.5)
    (timer,) = peer._reactor.timers
    assert timer.delay == 2.5 and not fut.done()
    timer.fn()
    with pytest.raises(TimedOutError) as ei:
        fut.result(0)
    assert str(ei.value) == "call 1 got no reply within 2.5 s"
    assert calls.pending == 0
    timer.fn()  # fired twice, or after the reply: nothing to do
    calls._expire(99, 1.0)
    assert calls.pending == 0


@pytest.mark.parametrize("timeout", [None, 0, -1])
def test_a_call_without_a_positive_timeout_has_no_timer(peer, timeout):
    calls = Calls(peer)
    calls.start(Link(), "app:a", None, timeout)
    assert peer._reactor.timers == [] and calls.pending == 1


def test_a_call_that_cannot_be_sent_is_forgotten_and_the_error_raised(peer):
    calls = Calls(peer)
    peer.send_error = ConnectionClosedError("gone", "x")
    with pytest.raises(ConnectionClosedError) as ei:
        calls.start(Link(), "app:a", None, 5)
    assert str(ei.value) == "gone" and calls.pending == 0 and peer._reactor.timers == []


def test_a_call_failed_by_a_close_while_it_was_being_sent_raises_the_send_error(peer):
    calls = Calls(peer)
    link = Link()
    peer.on_send = lambda: calls.closed(link, "broken")  # the network thread closed it meanwhile
    peer.send_error = ConnectionClosedError("gone", "broken")
    with pytest.raises(ConnectionClosedError) as ei:
        calls.start(link, "app:a", None, 5)
    assert str(ei.value) == "gone" and calls.pending == 0


def test_a_call_failed_by_a_close_during_the_send_starts_no_timer_to_keep(peer):
    calls = Calls(peer)
    link = Link()
    peer.on_send = lambda: calls.closed(link, "broken")
    fut = calls.start(link, "app:a", None, 5)
    (timer,) = peer._reactor.timers
    assert timer.cancelled is True and calls.pending == 0
    with pytest.raises(ConnectionClosedError):
        fut.result(0)


def test_the_callback_is_queued_for_the_handler_thread_when_the_reply_comes(peer):
    calls = Calls(peer)
    link = Link()
    cb = object()
    fut = calls.start(link, "app:a", None, 5, callback=cb)
    assert peer.queued == []
    calls.on_reply(link, CallReplied(1, CALL_OK, "v"))
    assert peer.queued == [(link, cb, fut)]


def test_a_reply_resolves_its_call_and_cancels_its_timer(peer):
    calls = Calls(peer)
    link = Link()
    fut = calls.start(link, "app:a", None, 5)
    calls.on_reply(link, CallReplied(1, CALL_OK, {"v": [1, 2]}))
    assert fut.result(0) == {"v": [1, 2]}
    assert peer._reactor.timers[0].cancelled is True and calls.pending == 0


def test_a_reply_of_another_connection_or_an_unknown_call_is_dropped_and_logged(peer, caplog):
    caplog.set_level(logging.DEBUG, "peng3dnet.calls")
    calls = Calls(peer)
    link, other = Link(cid=3), Link(cid=4)
    fut = calls.start(link, "app:a", None, 5)
    calls.on_reply(other, CallReplied(1, CALL_OK, "stolen"))
    calls.on_reply(link, CallReplied(8, CALL_OK, "unknown"))
    assert not fut.done() and calls.pending == 1 and peer._reactor.timers[0].cancelled is False
    assert [(r.levelno, r.msg, r.args) for r in caplog.records if r.name == "peng3dnet.calls"] == [
        (logging.DEBUG, "= %s cid=%s: reply to call %d dropped (late or unknown)", ("server", 4, 1)),
        (logging.DEBUG, "= %s cid=%s: reply to call %d dropped (late or unknown)", ("server", 3, 8)),
    ]


def test_a_call_of_a_session_is_answered_on_the_sessions_next_connection(peer):
    calls = Calls(peer)
    session = object()
    fut = calls.start(Link(cid=3, session=session), "app:a", None, 5)
    calls.on_reply(Link(cid=5), CallReplied(1, CALL_OK, "no session"))  # another connection
    assert not fut.done()
    calls.on_reply(Link(cid=6, session=session), CallReplied(1, CALL_OK, "resumed"))
    assert fut.result(0) == "resumed"


def _failed(calls, link, value, status=CALL_ERROR):
    fut = calls.start(link, "app:a", None, 5)
    calls.on_reply(link, CallReplied(fut.call_id, status, value))
    exc = fut.exception(0)
    assert isinstance(exc, RemoteCallError)
    return exc


def test_error_replies_of_every_shape(peer):
    calls = Calls(peer)
    link = Link()
    e = _failed(calls, link, {"type": "KeyError", "message": "'k'"})
    assert (str(e), e.remote_message, e.remote_type, e.unanswered) == ("KeyError: 'k'", "'k'", "KeyError", False)
    e = _failed(calls, link, "not a map")
    assert (str(e), e.remote_message, e.remote_type, e.unanswered) == ("remote error", "remote error", "", False)
    e = _failed(calls, link, {}, CALL_UNANSWERED)
    assert (str(e), e.remote_message, e.remote_type, e.unanswered) == ("remote error", "remote error", "", True)
    e = _failed(calls, link, {"type": None, "message": None})
    assert (e.remote_message, e.remote_type) == ("remote error", "")
    e = _failed(calls, link, {"type": 12, "message": 34})
    assert (e.remote_message, e.remote_type) == ("34", "12")


def test_a_remote_errors_type_is_cut_at_100_and_its_message_at_1000_characters(peer):
    calls = Calls(peer)
    link = Link()
    e = _failed(calls, link, {"type": "T" * 100, "message": "m" * 1000})
    assert (e.remote_type, e.remote_message) == ("T" * 100, "m" * 1000)
    e = _failed(calls, link, {"type": "T" * 101 + "x", "message": "m" * 1001 + "x"})
    assert (e.remote_type, e.remote_message) == ("T" * 100, "m" * 1000)


def test_a_close_fails_the_connections_calls_and_cancels_their_timers(peer):
    calls = Calls(peer)
    link, other = Link(cid=3), Link(cid=4)
    f1 = calls.start(link, "app:a", None, 5)
    f2 = calls.start(other, "app:a", None, 5)
    f3 = calls.start(link, "app:a", None, None)
    calls.closed(link, "bye")
    for f in (f1, f3):
        exc = f.exception(0)
        assert type(exc) is ConnectionClosedError
        assert (str(exc), exc.reason) == ("connection closed before the reply (bye)", "bye")
    t1, t2 = peer._reactor.timers
    assert (t1.cancelled, t2.cancelled) == (True, False)
    assert not f2.done() and calls.pending == 1


def test_forget_drops_a_call_and_cancels_its_timer(peer):
    calls = Calls(peer)
    link = Link()
    calls.start(link, "app:a", None, 5)
    calls.start(link, "app:a", None, None)
    calls.forget(1)
    calls.forget(2)
    calls.forget(3)
    assert calls.pending == 0 and peer._reactor.timers[0].cancelled is True


# --- the answering side -----------------------------------------------------------------

def test_a_call_of_an_unknown_packet_is_answered_unanswered_at_once(peer):
    calls = Calls(peer)
    link = Link()
    assert calls.on_request(link, CallRequested(5, 77, "x")) is None
    peer.registry.register(object(), "app:obj")  # 65: registered, but not a Packet
    assert calls.on_request(link, CallRequested(6, 65, "x")) is None
    assert replies(peer) == [
        (link, [5, CALL_UNANSWERED, {"type": "UnknownPacketError", "message": "no packet 77"}]),
        (link, [6, CALL_UNANSWERED, {"type": "UnknownPacketError", "message": "no packet 65"}]),
    ]


def test_a_packet_that_does_not_answer_is_answered_not_callable(peer):
    calls = Calls(peer)
    link = Link()
    peer.registry.register(Packet(peer.registry, peer), "app:plain")
    assert calls.on_request(link, CallRequested(5, 65, "x")) is None
    assert replies(peer) == [
        (link, [5, CALL_UNANSWERED, {"type": "NotCallable", "message": "packet 'app:plain' does not answer calls"}])]


class Answering(Packet):
    answers = True

    def receive(self, msg, cid=None):
        if msg == "refuse":
            raise CallError("not your turn")
        if msg == "boom":
            raise KeyError("k")
        if msg == "unsendable":
            return object()
        return [msg, cid]


class OwnChecks(Packet):
    answers = True

    def _receive(self, msg, cid=None):
        return ("checked", msg, cid)


def test_the_handler_answers_with_what_it_returns(peer):
    calls = Calls(peer)
    link = Link()
    peer.registry.register(Answering(peer.registry, peer), "app:ans")
    answer = calls.on_request(link, CallRequested(5, 65, "hi"))
    assert answer.__qualname__ == "call of Answering"
    assert peer.sent == []
    answer("hi", 3)
    assert replies(peer) == [(link, [5, CALL_OK, ["hi", 3]])]


def test_a_packet_with_its_own_receive_checks_answers_with_what_they_return(peer):
    calls = Calls(peer)
    link = Link()
    peer.registry.register(OwnChecks(peer.registry, peer), "app:own")
    calls.on_request(link, CallRequested(5, 65, "hi"))("hi", 3)
    assert replies(peer) == [(link, [5, CALL_OK, ["checked", "hi", 3]])]


def test_handler_errors_are_answered_and_only_a_bug_goes_on(peer):
    calls = Calls(peer)
    link = Link()
    peer.registry.register(Answering(peer.registry, peer), "app:ans")
    calls.on_request(link, CallRequested(5, 65, None))("refuse", 3)
    with pytest.raises(KeyError):
        calls.on_request(link, CallRequested(6, 65, None))("boom", 3)
    assert replies(peer) == [
        (link, [5, CALL_ERROR, {"type": "CallError", "message": "not your turn"}]),
        (link, [6, CALL_ERROR, {"type": "KeyError", "message": "'k'"}]),
    ]


def test_an_answer_that_cannot_be_encoded_is_answered_with_the_error(peer):
    calls = Calls(peer)
    link = Link()
    peer.registry.register(Answering(peer.registry, peer), "app:ans")
    calls.on_request(link, CallRequested(5, 65, None))("unsendable", 3)
    ((_, (call_id, status, value)),) = replies(peer)
    assert (call_id, status, value["type"]) == (5, CALL_ERROR, "LocalProtocolError")
    assert value["message"].startswith("the answer cannot be sent: cannot encode message: ")
    assert set(value) == {"type", "message"}


def test_an_answer_for_a_closed_connection_is_not_sent(peer):
    calls = Calls(peer)
    link = Link()
    link.proto.closed = True
    calls._reply(link, 5, CALL_OK, object())
    assert peer.sent == []


def test_an_answer_that_cannot_be_queued_is_logged_and_a_closed_one_is_not(peer, caplog):
    caplog.set_level(logging.DEBUG, "peng3dnet.calls")
    calls = Calls(peer)
    link = Link(cid=8)
    err = WriteBufferFullError("full")
    peer.send_error = err
    calls._reply(link, 5, CALL_OK, 1)
    peer.send_error = ConnectionClosedError("gone")
    calls._reply(link, 6, CALL_OK, 1)
    assert [(r.levelno, r.msg, r.args) for r in caplog.records if r.name == "peng3dnet.calls"] == [
        (logging.INFO, "! %s cid=%s: the answer to call %d cannot be sent: %s", ("server", 8, 5, err))]


class Smart(SmartPacket):
    answers = True
    side = SIDE_SERVER  # clients send it: valid when received by the server
    invalid_action = "close"

    def receive(self, msg, cid=None):
        return ("smart", msg, cid)


def test_a_smart_packet_is_answered_when_valid_for_the_callers_connection(peer):
    calls = Calls(peer)
    link = Link(cid=3)
    peer.clients[3] = View()
    peer.registry.register(Smart(peer.registry, peer), "app:smart")
    calls.on_request(link, CallRequested(5, 65, "m"))("m", 3)
    assert replies(peer) == [(link, [5, CALL_OK, ["smart", "m", 3]])]
    assert peer.closed_cids == []


def test_a_smart_packet_not_valid_now_is_answered_unanswered_and_handled_as_invalid(peer, caplog):
    caplog.set_level(logging.DEBUG, "peng3dnet.packet")
    calls = Calls(peer)
    link = Link(cid=3)
    peer.clients[3] = View(state=99)
    peer.registry.register(Smart(peer.registry, peer), "app:smart")
    calls.on_request(link, CallRequested(5, 65, "m"))("m", 3)
    assert replies(peer) == [(link, [5, CALL_UNANSWERED, {"type": "SmartPacketInvalid", "message": "not valid now"}])]
    assert peer.closed_cids == [(3, "smartpacketinvalid")]
    assert [r.args for r in caplog.records if r.name == "peng3dnet.packet"] == [(3, "Smart", "received")]


def test_a_smart_packet_sent_the_wrong_way_is_not_answered(peer):
    calls = Calls(peer)
    link = Link(cid=3)
    peer.clients[3] = View()

    class ServerSent(Smart):
        side = SIDE_CLIENT  # only the server sends it: a server receiving it is invalid

    peer.registry.register(ServerSent(peer.registry, peer), "app:smart")
    calls.on_request(link, CallRequested(5, 65, "m"))("m", 3)
    assert replies(peer)[0][1][1] == CALL_UNANSWERED


# --- waiting ----------------------------------------------------------------------------

class WaitPeer:
    def __init__(self, *, in_loop=False, polled=False):
        self._reactor = Reactor()
        self._reactor.loop = in_loop
        self.polled = polled
        self.drives: list = []
        self.waits = 0
        self.forgotten: list = []
        self._relay = self
        self._calls = self

    def _polled_here(self):
        return self.polled

    def _drive(self, done, limit):
        self.drives.append((done, limit))

    def before_wait(self):
        self.waits += 1

    def forget(self, call_id):
        self.forgotten.append(call_id)


class Recording(CallFuture):
    def __init__(self, call_id=9, outcome=None):
        super().__init__()
        self.call_id = call_id
        self.outcome = outcome
        self.limits: list = []

    def result(self, timeout=None):
        self.limits.append(timeout)
        if self.outcome is not None:
            raise self.outcome
        return "value"


@pytest.mark.parametrize("timeout, limit", [(2.5, 3.5), (0.5, 1.5), (0, None), (-1, None), (None, None)])
def test_the_wait_lasts_the_timeout_and_a_second_more(timeout, limit):
    p = WaitPeer()
    fut = Recording()
    assert wait_result(p, fut, timeout) == "value"
    assert fut.limits == [limit] and p.waits == 1 and p.drives == []

    p = WaitPeer(in_loop=True, polled=True)
    fut = Recording()
    assert wait_result(p, fut, timeout) == "value"
    assert p.drives == [(fut.done, limit)] and fut.limits == [limit] and p.waits == 0


def test_a_wait_that_runs_out_forgets_the_call():
    p = WaitPeer()
    fut = Recording(call_id=9, outcome=concurrent.futures.TimeoutError())
    with pytest.raises(TimedOutError) as ei:
        wait_result(p, fut, 1)
    assert str(ei.value) == "call 9 got no reply" and p.forgotten == [9]


def test_the_calls_own_time_out_goes_through_as_it_is():
    p = WaitPeer()
    own = TimedOutError("call 9 got no reply within 1 s")
    with pytest.raises(TimedOutError) as ei:
        wait_result(p, Recording(outcome=own), 1)
    assert ei.value is own and p.forgotten == []


def test_waiting_on_the_network_thread_is_refused():
    p = WaitPeer(in_loop=True, polled=False)
    with pytest.raises(LocalProtocolError) as ei:
        wait_result(p, Recording(), 1)
    assert str(ei.value) == (
        "call() on the network thread (an inline handler or an event handler) would wait for itself; use call_async()")
    assert p.waits == 0 and p.drives == []


def test_a_real_future_waits_for_its_result_from_another_thread():
    p = WaitPeer()
    fut = CallFuture()
    fut.call_id = 1
    t = threading.Thread(target=fut.set_result, args=("late",))
    t.start()
    assert wait_result(p, fut, 5) == "late"
    t.join(5)
