"""Flow control, the process queue and link hooks, unit by unit, with fakes
for the peer, the reactor and the connection (no sockets): what the
integration tests in test_peer.py/test_server.py show only as "eventually
slowed" or "eventually closed" is checked here value by value: the inflate
budget's wait, the throttle's one pause, the blocked sender's low-water mark,
its error and its waiter count, the server-wide cap's choice of victims and
its count, the queue's waiter count and its stop, and what resuming a
paused read hands on (the held frames first, the quota, the rate charge)."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from typing import Any

import pytest

from peng3dnet.errors import ConnectionClosedError, WriteBufferFullError
from peng3dnet.flow import Flow
from peng3dnet.inbox import NO_LIMIT, Inbox
from peng3dnet.link import link_hooks, noop_hook
from peng3dnet.peer import Peer
from tests.helpers import wait_for


class FakeReactor:
    def __init__(self) -> None:
        self.soon: list = []
        self.later: list = []
        self.looping = False  # whether in_loop() says the caller is the network thread

    def call_soon(self, fn: Any, *args: Any) -> None:
        self.soon.append((fn, args))

    def call_later(self, delay: float, fn: Any) -> None:
        self.later.append((delay, fn))

    def in_loop(self) -> bool:
        return self.looping


class FakeChan:
    def __init__(self, out: int = 0) -> None:
        self.throttled = False
        self.paused = False
        self.held = False
        self.closed = False
        self.out = bytearray(out)
        self.interest_updates = 0
        self.lock = threading.Lock()
        self.drained = threading.Condition(self.lock)
        self.drain_waiters = 0
        self.low_water = 0
        self.dropped = 0

    def update_interest(self) -> None:
        self.interest_updates += 1

    def drop_unsent(self) -> int:
        assert self.lock.locked()
        self.dropped, self.out = len(self.out), bytearray()
        return self.dropped


class _Drained:
    """A channel's ``drained`` condition that records each wait's time-out
    instead of sleeping (nothing drains: each wait times out)."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def wait(self, timeout: float) -> bool:
        self.waits.append(timeout)
        assert len(self.waits) < 10, f"the sender waits on and on: {self.waits}"
        return False


class _CountingCondition(threading.Condition):
    """A real condition that counts the waits begun on it."""

    def __init__(self, lock: Any) -> None:
        super().__init__(lock)
        self.waits = 0

    def wait(self, timeout: float | None = None) -> bool:
        self.waits += 1
        return super().wait(timeout)


class FakeProto:
    def __init__(self) -> None:
        self.inflate_budget: float | None = None
        self.inflate_action = "hold"
        self.closed = False
        self.close_reason: str | None = None
        self.frames_waiting = False


class FakeLink:
    def __init__(self, cid: int, out: int = 0) -> None:
        self.cid = cid
        self.chan = FakeChan(out)
        self.proto = FakeProto()
        self.acct = 0
        self.held_in = 0
        self.local_closed = False
        self.b_in = self.b_out = self.b_resume_at = 0


class FakePeer:
    _role = "server"

    def __init__(self, links: list[FakeLink] = (), **h: Any) -> None:  # type: ignore[assignment]
        self._reactor = FakeReactor()
        self.links = list(links)
        self.throttle_wait = 0.0
        self.throttle_asked: list = []
        self._h_inflate = h.get("inflate", 0)
        self._h_inflate_rate = h.get("inflate_rate", 1.0)
        self._h_write_total = h.get("write_total", 100)
        self._h_write_block = h.get("write_block", 64)
        self._h_inline = h.get("inline", True)  # (frames_held's full-queue test: off unless asked)
        self._h_recv_queue = h.get("recv_queue", 10)
        self._h_recv_bytes = h.get("recv_bytes", 1000)
        self._h_recv_total = h.get("recv_total", NO_LIMIT)
        self._inbox = Inbox()
        self.cfg = {"net.timeout.send": h.get("timeout", 0.2)}
        self._process_thread = None

    def _throttled_for(self, link: FakeLink) -> float:
        self.throttle_asked.append(link)
        return self.throttle_wait

    def _all_links(self) -> list[FakeLink]:
        return self.links


def _flow(**h: Any) -> tuple[Flow, FakePeer, FakeLink]:
    link = FakeLink(7)
    peer = FakePeer([link], **h)
    return Flow(peer), peer, link  # type: ignore[arg-type]


# --- held frames: the inflate budget and the rate limit ------------------------------------------------


@pytest.mark.parametrize("budget, rate, expected", [(-0.5, 2.0, 0.75), (0.0, 2.0, 0.5), (-3.0, 4.0, 1.0)])
def test_held_frames_wait_until_the_inflate_budget_is_back_to_one_byte(budget, rate, expected):
    flow, peer, link = _flow(inflate=1000, inflate_rate=rate)
    link.proto.inflate_budget = budget
    flow.frames_held(link)
    assert peer._reactor.soon == []
    ((delay, fn),) = peer._reactor.later
    assert delay == pytest.approx(expected) and link.chan.throttled


@pytest.mark.parametrize("action, budget, inflate", [
    ("hold", 0.5, 1000),  # budget left: no wait
    ("drop", -1.0, 1000),  # another action: the core drops, nothing to wait for
    ("hold", None, 1000),  # no budget
    ("hold", -1.0, 0),  # the budget is off
])
def test_held_frames_go_on_at_once_when_nothing_is_to_wait_for(action, budget, inflate):
    flow, peer, link = _flow(inflate=inflate, inflate_rate=2.0)
    link.proto.inflate_action = action
    link.proto.inflate_budget = budget
    flow.frames_held(link)
    assert peer._reactor.later == [] and not link.chan.throttled
    assert peer._reactor.soon == [(flow.resume_reading, (link,))]


def test_held_frames_wait_for_the_longer_of_the_rate_limit_and_the_inflate_budget():
    flow, peer, link = _flow(inflate=1000, inflate_rate=2.0)
    link.proto.inflate_budget = -0.5  # 0.75 s
    peer.throttle_wait = 2.0
    flow.frames_held(link)
    assert [d for d, _ in peer._reactor.later] == [2.0]
    assert peer.throttle_asked == [link]  # the rate limit of this connection
    flow2, peer2, link2 = _flow(inflate=1000, inflate_rate=2.0)
    link2.proto.inflate_budget = 0.5
    peer2.throttle_wait = 0.3
    flow2.frames_held(link2)
    assert [d for d, _ in peer2._reactor.later] == [0.3]


def test_a_throttle_pauses_reading_once_and_its_end_resumes_it():
    flow, peer, link = _flow()
    flow.throttle(link, 0.4)
    assert link.chan.throttled is True and link.chan.interest_updates == 1
    ((delay, unthrottle),) = peer._reactor.later
    assert delay == 0.4
    flow.throttle(link, 0.9)  # already paused: no second timer
    assert len(peer._reactor.later) == 1 and link.chan.interest_updates == 1
    unthrottle()
    assert link.chan.throttled is False and link.chan.interest_updates == 2  # resume_reading read again
    closed = FakeLink(8)
    closed.chan.closed = True
    flow.throttle(closed, 0.4)  # a closed connection is not paused
    assert closed.chan.throttled is False and len(peer._reactor.later) == 1


# --- the blocked sender ----------------------------------------------------------------------------


def test_a_sender_at_the_low_water_mark_does_not_wait():
    flow, peer, link = _flow(write_block=65, timeout=10)
    link.chan.out = bytearray(32)  # half the mark, rounded down: the low-water mark itself
    drained = link.chan.drained = _Drained()  # type: ignore[assignment]
    with link.chan.lock:
        flow.wait_drained(link)
    assert drained.waits == [] and link.chan.low_water == 32 and link.chan.drain_waiters == 0


def test_a_sender_over_the_low_water_mark_waits_its_timeout_then_fails_naming_the_connection():
    flow, peer, link = _flow(write_block=64, timeout=0.2)
    link.chan.out = bytearray(33)
    with link.chan.lock:
        t0 = time.monotonic()
        with pytest.raises(WriteBufferFullError) as err:
            flow.wait_drained(link)
    assert time.monotonic() - t0 >= 0.19
    assert str(err.value) == ("cid=7: 33 bytes still wait to be sent after 0.2 s (net.timeout.send); "
                              "the peer does not read")
    assert link.chan.drain_waiters == 0


def test_a_waiting_sender_is_counted_while_it_waits_and_released_by_the_drain():
    flow, peer, link = _flow(write_block=64, timeout=10)
    chan = link.chan
    chan.out = bytearray(40)
    chan.drain_waiters = 1  # another sender already waits
    drained = chan.drained = _CountingCondition(chan.lock)
    done = threading.Event()

    def sender() -> None:
        with chan.lock:
            flow.wait_drained(link)
        done.set()

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    wait_for(lambda: drained.waits or not t.is_alive(), what="the sender waiting")
    assert drained.waits == 1 and chan.drain_waiters == 2  # counted while it waits
    with chan.lock:  # the network thread drains to the low-water mark and tells the waiters
        chan.out = bytearray(32)
        drained.notify_all()
    # Released (not waiting again until its time-out):
    wait_for(lambda: done.is_set() or drained.waits > 1 or not t.is_alive(), what="the sender released")
    assert done.is_set() and drained.waits == 1
    t.join(10)
    assert chan.drain_waiters == 1  # the other one still waits


@pytest.mark.parametrize("ends", [False, True])
def test_a_polling_sender_runs_the_io_itself_until_the_drain_or_the_loops_end(ends):
    """On the polling thread each wait is a round of I/O (the poll
    function, given what is left of the time-out); a loop that ended ends
    the wait with ConnectionClosedError."""
    flow, peer, link = _flow(write_block=64, timeout=10)
    chan = link.chan
    chan.out = bytearray(40)
    drained = chan.drained = _Drained()  # type: ignore[assignment]
    polls: list = []

    def poll(left):
        polls.append(left)
        if ends:
            return False
        if len(polls) == 2:
            chan.out = bytearray(32)  # the second round flushed down to the low-water mark
        return True

    with chan.lock:
        if ends:
            with pytest.raises(ConnectionClosedError, match="^connection closed while waiting to send$"):
                flow.wait_drained(link, poll)
        else:
            flow.wait_drained(link, poll)
    assert len(polls) == (1 if ends else 2) and all(0 < left <= 10 for left in polls)
    assert drained.waits == [] and chan.drain_waiters == 0


def test_a_send_timeout_of_0_waits_without_a_limit_until_the_drain():
    """net.timeout.send 0 is no limit (as for the other time-outs): it
    raised WriteBufferFullError at once."""
    flow, peer, link = _flow(write_block=64, timeout=0)
    chan = link.chan
    chan.out = bytearray(40)

    class Drains:
        waits: list = []

        def wait(self, timeout):
            self.waits.append(timeout)
            chan.out = bytearray(32)  # the network thread drained it meanwhile
            return True

    drained = chan.drained = Drains()  # type: ignore[assignment]
    with chan.lock:
        flow.wait_drained(link)
    assert drained.waits == [None]


@pytest.mark.parametrize("chan_closed, proto_closed", [(False, True), (True, False)])
def test_a_sender_whose_connection_closes_gets_the_close_reason(chan_closed, proto_closed):
    flow, peer, link = _flow(write_block=64, timeout=10)
    link.chan.out = bytearray(100)
    link.chan.closed = chan_closed
    link.proto.closed = proto_closed
    link.proto.close_reason = "slowconsumer"
    drained = link.chan.drained = _Drained()  # type: ignore[assignment]
    with link.chan.lock, pytest.raises(ConnectionClosedError) as err:
        flow.wait_drained(link)
    assert str(err.value) == "connection closed while waiting to send" and err.value.reason == "slowconsumer"
    assert link.chan.drain_waiters == 0 and drained.waits == []  # failed at once


# --- the server-wide cap -----------------------------------------------------------------------------


def _links(*sizes: int) -> list[FakeLink]:
    return [FakeLink(cid, size) for cid, size in enumerate(sizes)]


def test_over_the_cap_the_largest_buffers_are_closed_until_the_rest_fit():
    links = _links(30, 50, 20, 0)
    peer = FakePeer(links, write_total=60)
    flow = Flow(peer)  # type: ignore[arg-type]
    assert flow.shed() == 1
    assert peer._reactor.soon == [(flow.close_slow, (links[1],))]
    assert flow.buffered == 50
    assert [lk.acct for lk in links] == [30, 0, 20, 0]
    # the one chosen: its backlog dropped at once, nothing more queued on it
    assert [lk.chan.dropped for lk in links] == [0, 50, 0, 0] and links[1].chan.out == bytearray()
    assert [getattr(lk, "shed", False) for lk in links] == [False, True, False, False]


def test_a_victim_whose_lock_another_thread_holds_keeps_its_backlog_for_the_close():
    """shed() never waits for a victim's lock (its caller holds its own
    channel's: two threads shedding at once would wait for each other):
    when another thread holds it, the backlog goes with the close, later."""
    links = _links(30, 50)
    peer = FakePeer(links, write_total=60)
    flow = Flow(peer)  # type: ignore[arg-type]
    taken, done = threading.Event(), threading.Event()

    def hold():
        with links[1].chan.lock:
            taken.set()
            done.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert taken.wait(10)
        assert flow.shed() == 1  # (returns: it did not wait)
        assert links[1].shed and links[1].chan.dropped == 0 and len(links[1].chan.out) == 50
        assert peer._reactor.soon == [(flow.close_slow, (links[1],))]
    finally:
        done.set()
        t.join(10)


def test_a_victim_closed_by_another_thread_before_its_lock_is_taken_keeps_its_closeconn():
    """Between shed()'s look (not closed) and its taking of the victim's
    lock, another thread closed it (close_connection(): the closeconn is
    queued): the backlog is not dropped, or the closeconn went with it and
    the peer never learned why."""
    links = _links(30, 50)
    peer = FakePeer(links, write_total=60)
    flow = Flow(peer)  # type: ignore[arg-type]
    real = links[1].chan.lock

    class ClosedMeanwhile:
        def acquire(self, blocking=True):
            links[1].proto.closed = True  # the other thread's close_connection(), just before
            return real.acquire(blocking)

        def release(self):
            real.release()

    links[1].chan.lock = ClosedMeanwhile()
    assert flow.shed() == 1
    assert links[1].chan.dropped == 0 and len(links[1].chan.out) == 50


def test_what_the_cap_closes_is_logged_with_its_numbers(caplog):
    links = _links(30, 50, 20)
    peer = FakePeer(links, write_total=60)
    flow = Flow(peer)  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="peng3dnet.flow"):
        flow.shed()
    assert [r.getMessage() for r in caplog.records] == [
        "! server cid=1: 50 bytes queued while all connections hold 100 (cap 60): closing the largest"]


def test_a_throttle_and_a_slow_consumers_drop_are_logged(caplog):
    flow, peer, link = _flow()
    dropped: list = []
    link.chan.drop_unsent = lambda: 1234  # type: ignore[attr-defined]
    peer._close_link = lambda lk, reason: dropped.append((lk.cid, reason))  # type: ignore[attr-defined]
    with caplog.at_level(logging.DEBUG, logger="peng3dnet.flow"):
        flow.throttle(link, 0.25)
        flow.close_slow(link)
    assert [r.getMessage() for r in caplog.records] == [
        "= server cid=7: over a rate limit, reading paused for 0.250 s",
        "= server cid=7: dropped 1234 unsent bytes",
    ]
    assert dropped == [(7, "slowconsumer")]


def test_a_connection_the_core_closed_already_is_not_chosen():
    """Its closeconn (the core queued it with the reason) must stay in its
    buffer: close_slow keeps it, an immediate drop would not."""
    links = _links(80, 30)
    links[0].proto.closed = True
    peer = FakePeer(links, write_total=20)
    flow = Flow(peer)  # type: ignore[arg-type]
    assert flow.shed() == 1
    assert [args[0].cid for _, args in peer._reactor.soon] == [1]
    assert links[0].chan.dropped == 0 and len(links[0].chan.out) == 80 and not getattr(links[0], "shed", False)


def test_exactly_at_the_cap_nothing_is_closed():
    links = _links(40, 20)
    peer = FakePeer(links, write_total=60)
    flow = Flow(peer)  # type: ignore[arg-type]
    assert flow.shed() == 0 and peer._reactor.soon == [] and flow.buffered == 60


def test_with_a_zero_cap_every_non_empty_buffer_is_closed_and_counted():
    links = _links(5, 1, 0, 3)
    peer = FakePeer(links, write_total=0)
    flow = Flow(peer)  # type: ignore[arg-type]
    assert flow.shed() == 3
    assert [args[0].cid for _, args in peer._reactor.soon] == [0, 3, 1]  # largest first
    assert flow.buffered == 0


def test_connections_already_closing_are_not_counted_nor_closed_again():
    links = _links(500, 40)
    links[0].local_closed = True  # closing: its buffer is being dropped
    peer = FakePeer(links, write_total=60)
    flow = Flow(peer)  # type: ignore[arg-type]
    assert flow.shed() == 0 and flow.buffered == 40


# --- the process queue -------------------------------------------------------------------------------


class _RecordingCond:
    """The inbox's condition, recording each wait's time-out instead of sleeping."""

    def __init__(self) -> None:
        self.waits: list = []

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc: Any) -> None:
        pass

    def wait(self, timeout: float | None) -> bool:
        self.waits.append(timeout)
        return False


def test_an_idle_inbox_waits_its_timeout_and_a_busy_or_stopped_one_does_not_wait():
    inbox = Inbox()
    cond = inbox._cond = _RecordingCond()  # type: ignore[assignment]
    inbox.wait(0.25)
    assert cond.waits == [0.25] and inbox.waiters == 0
    inbox.items.append(("link", "f", 64, "m", 0))
    inbox.wait(0.25)  # something is queued
    assert cond.waits == [0.25]
    inbox.items.clear()
    inbox.stopped = True  # stop(): waits return at once
    inbox.wait(0.25)
    assert cond.waits == [0.25] and inbox.waiters == 0


@pytest.mark.parametrize(("n", "b"), [(10, 0), (0, 1000)])
def test_frames_held_while_the_queue_is_full_pause_reading_instead_of_going_on(n, b):
    # (the limits lowered below what waits while reading was not paused:
    # going on would find no room again and again, a spin)
    link = FakeLink(1)
    link.n_in, link.n_out, link.b_in, link.b_out, link.resume_at = n, 0, b, 0, 0
    peer = FakePeer([link], inline=False)
    flow = Flow(peer)  # type: ignore[arg-type]
    flow.frames_held(link)  # type: ignore[arg-type]
    assert link.chan.paused and peer._reactor.soon == [] and link.resume_at == 5 and link.b_resume_at == 500


def _total_peer(cap: int, waiting: int) -> tuple[Flow, FakePeer]:
    peer = FakePeer([], recv_total=cap)
    peer._inbox.b_in, peer._inbox.b_out = waiting + 7, 7
    return Flow(peer), peer  # type: ignore[arg-type]


def test_over_the_total_a_connection_that_queued_is_held_and_the_first_logs(caplog):
    flow, peer = _total_peer(1000, 1100)
    a, b = FakeLink(1), FakeLink(2)
    with caplog.at_level(logging.INFO, logger="peng3dnet.flow"):
        flow.hold_queue(a)  # type: ignore[arg-type]
        flow.hold_queue(a)  # type: ignore[arg-type]  # held already: not again
        flow.hold_queue(b)  # type: ignore[arg-type]
    assert a.chan.held and b.chan.held and flow.over_total and flow.queue_held == {a, b}
    assert a.chan.interest_updates == 1 and b.chan.interest_updates == 1
    assert [r.getMessage() for r in caplog.records] == [
        "= server: 1100 bytes wait for process() in all (net.limits.recv_queue_total 1000): "
        "reading pauses for the connections that add to them"]
    c = FakeLink(3)
    c.chan.closed = True
    flow.hold_queue(c)  # type: ignore[arg-type]
    assert not c.chan.held and c not in flow.queue_held


def test_half_the_total_releases_every_held_connection_and_over_half_none():
    flow, peer = _total_peer(1000, 1001)
    links = [FakeLink(1), FakeLink(2)]
    for lk in links:
        flow.hold_queue(lk)  # type: ignore[arg-type]
    resumed: list = []
    flow.resume_reading = resumed.append  # type: ignore[method-assign]
    flow.total_check_pending = True
    peer._inbox.b_out += 500  # 501 wait: over half
    assert flow.check_queue_total() == 501
    assert all(lk.chan.held for lk in links) and flow.over_total and not flow.total_check_pending
    peer._inbox.b_out += 1  # 500: half
    assert flow.check_queue_total() == 500
    assert not any(lk.chan.held for lk in links) and flow.queue_held == set() and not flow.over_total
    assert set(resumed) == set(links)
    assert flow.check_queue_total() == 500 and len(resumed) == 2  # nothing held: nothing to do


def test_a_total_set_to_0_releases_what_was_held():
    flow, peer = _total_peer(1000, 5000)
    link = FakeLink(1)
    flow.hold_queue(link)  # type: ignore[arg-type]
    peer._h_recv_total = NO_LIMIT  # (what 0 in the config becomes)
    flow.resume_reading = lambda lk: None  # type: ignore[method-assign]
    flow.check_queue_total()
    assert not link.chan.held and not flow.queue_held and not flow.over_total


def test_the_inbox_counts_the_bytes_of_all_connections_in_and_out():
    inbox = Inbox()
    a, b = FakeLink(1), FakeLink(2)
    for lk in (a, b):
        lk.n_in = lk.n_out = lk.resume_at = 0
    inbox.put(a, "f", 64, "x", 10, 300)
    inbox.put(b, "f", 64, "y", 10, 200)
    inbox.put(b, "f", -2, None, 10)  # a call's callback: no bytes
    assert inbox.b_in == 500 and (a.b_in, b.b_in) == (300, 200)
    inbox.done(a, 300)
    assert inbox.b_out == 300 and a.b_out == 300


def test_frames_held_on_a_held_connection_wait_for_the_release():
    link = FakeLink(1)
    link.n_in = link.n_out = 0
    link.chan.held = True
    peer = FakePeer([link], inline=False)
    Flow(peer).frames_held(link)  # type: ignore[arg-type]
    assert peer._reactor.soon == [] and peer._reactor.later == [] and not link.chan.paused


def test_frames_held_with_room_in_the_queue_go_on():
    link = FakeLink(1)
    link.n_in, link.n_out, link.b_in, link.b_out = 9, 0, 999, 0
    peer = FakePeer([link], inline=False)
    flow = Flow(peer)  # type: ignore[arg-type]
    flow.frames_held(link)  # type: ignore[arg-type]
    assert not link.chan.paused and peer._reactor.soon == [(flow.resume_reading, (link,))]


def test_a_wait_given_the_wake_count_it_saw_does_not_wait_after_a_notify_since():
    inbox = Inbox()
    seen = inbox.wakes
    inbox.notify()  # (between the caller's look and its wait)
    assert inbox.wakes == seen + 1
    cond = inbox._cond = _RecordingCond()  # type: ignore[assignment]
    inbox.wait(0.25, seen)
    assert cond.waits == []
    inbox.wait(0.25, inbox.wakes)  # nothing since: it waits
    inbox.wait(0.25)  # no count given: it waits
    assert cond.waits == [0.25, 0.25] and inbox.waiters == 0


class Batch:
    """What ``Peer._run_batch`` uses of its peer: the inbox, the
    dispatching mark, ``_dispatch`` (for queued closes), ``_handler_failed``,
    the reactor's ``call_soon`` and the flow's ``resume_reading``.  Its
    ``handler`` records ``(msg, cid, the mark it saw)``; a message equal to
    ``fail`` raises ``fail_with``."""

    def __init__(self, inbox: Inbox, fail: Any = None, fail_with: BaseException | None = None) -> None:
        self._inbox = inbox
        self._flow = type("F", (), {"dispatching": threading.local(), "resume_reading": "resume",
                                    "over_total": False, "total_check_pending": False,
                                    "check_queue_total": "check total"})()
        self._reactor = type("R", (), {})()
        self.soon: list = []
        self._reactor.call_soon = lambda fn, *args: self.soon.append((fn, *args))
        self.seen: list = []
        self.failed: list = []
        self.fail, self.fail_with = fail, fail_with

    def handler(self, msg: Any, cid: Any) -> None:
        self.seen.append((msg, cid, self._flow.dispatching.active))
        if msg == self.fail:
            raise self.fail_with  # type: ignore[misc]

    def _dispatch(self, link: Any, fn: Any, pid: int, msg: Any, size: int = 0) -> None:
        self.seen.append(("close", link.cid, fn, pid, msg, self._flow.dispatching.active))

    def _handler_failed(self, link: Any, fn: Any) -> None:
        self.failed.append((link.cid, fn))
        if not isinstance(sys.exc_info()[1], Exception):
            raise  # (as on the main thread)

    def run(self) -> int:
        return Peer._run_batch(self)  # type: ignore[arg-type]


def _batch_link(cid: int = 3) -> FakeLink:
    link = FakeLink(cid)
    link.n_in = link.n_out = 0
    link.on_recv = None
    link.resume_at = 0
    return link


def test_a_batch_counts_packets_not_the_closes_queued_behind_them():
    inbox = Inbox()
    link = _batch_link()
    b = Batch(inbox)
    inbox.put(link, b.handler, 64, "a", limit=100)
    inbox.put(link, b.handler, 64, "b", limit=100)
    inbox.put_close(link, "bye")
    assert b.run() == 2
    # each one dispatched marked as running handlers, the mark taken off after
    assert b.seen == [("a", 3, True), ("b", 3, True), ("close", 3, None, -1, "bye", True)]
    assert b._flow.dispatching.active is False and link.n_out == 2 and b.soon == []
    assert b.run() == 0 and len(b.seen) == 3


def test_a_batch_calls_the_owners_hook_after_each_packet_but_not_for_a_calls_callback():
    inbox = Inbox()
    link = _batch_link()
    b = Batch(inbox)
    link.on_recv = lambda pid, msg: b.seen.append(("hook", pid, msg))
    inbox.items.extend([(link, b.handler, 64, "a", 0), (link, b.handler, 0, "zero", 0), (link, b.handler, -2, "cb", 0)])
    assert b.run() == 3
    assert b.seen == [("a", 3, True), ("hook", 64, "a"), ("zero", 3, True), ("hook", 0, "zero"), ("cb", 3, True)]


def test_a_batch_runs_what_was_queued_when_it_began_and_keeps_an_outer_mark():
    inbox = Inbox()
    link = _batch_link()
    b = Batch(inbox)

    def handler(msg: Any, cid: Any) -> None:
        b.seen.append(msg)
        inbox.items.append((link, handler, 64, "later", 0))  # arrives meanwhile: the next batch's

    inbox.items.extend([(link, handler, 64, "m1", 0), (link, handler, 64, "m2", 0)])
    b._flow.dispatching.active = True  # a batch run from a handler (process() inside a handler)
    assert b.run() == 2
    assert b.seen == ["m1", "m2"] and len(inbox.items) == 2
    assert b._flow.dispatching.active is True


def test_a_handler_error_is_reported_counted_and_the_batch_goes_on():
    inbox = Inbox()
    link = _batch_link()
    b = Batch(inbox, fail="m1", fail_with=ValueError("bad"))
    inbox.items.extend([(link, b.handler, 64, "m1", 0), (link, b.handler, 64, "m2", 0)])
    assert b.run() == 2
    assert b.failed == [(3, b.handler)] and [m for m, _, _ in b.seen] == ["m1", "m2"] and link.n_out == 2


def test_a_batch_that_a_handler_escapes_counts_it_done_takes_its_mark_off_and_leaves_the_rest():
    inbox = Inbox()
    link = _batch_link()
    b = Batch(inbox, fail="m2", fail_with=KeyboardInterrupt())
    inbox.items.extend([(link, b.handler, 64, "m1", 0), (link, b.handler, 64, "m2", 0), (link, b.handler, 64, "m3", 0)])
    with pytest.raises(KeyboardInterrupt):
        b.run()
    assert [m for m, _, _ in b.seen] == ["m1", "m2"] and list(inbox.items) == [(link, b.handler, 64, "m3", 0)]
    assert b._flow.dispatching.active is False and link.n_out == 2 and b.failed == [(3, b.handler)]


def test_a_batch_asks_for_one_look_at_the_total_while_it_is_over():
    inbox = Inbox()
    link = _batch_link()
    b = Batch(inbox)
    inbox.put(link, b.handler, 64, "a", limit=100, size=40)
    assert b.run() == 1 and b.soon == [] and inbox.b_out == 40  # not over: no look
    b._flow.over_total = True
    for m in ("b", "c"):
        inbox.put(link, b.handler, 64, m, limit=100, size=2)
        assert b.run() == 1
    assert b.soon == [("check total",)] and b._flow.total_check_pending  # one look scheduled, not two
    assert inbox.b_out == 44


def test_a_batch_resumes_a_paused_connection_once_at_its_mark():
    inbox = Inbox()
    link = _batch_link()
    b = Batch(inbox)
    for m in range(6):
        inbox.put(link, b.handler, 64, m, limit=6)  # the 6th pauses reading; resume at 3 waiting
    assert link.chan.paused is True and link.resume_at == 3
    seen_paused = []
    link.on_recv = lambda pid, msg: seen_paused.append(link.chan.paused)
    assert b.run() == 6
    # done with the 3rd packet (3 left waiting): resumed then, once
    assert seen_paused == [True, True, True, False, False, False]
    assert link.chan.paused is False and b.soon == [("resume", link)]


def test_the_inbox_puts_its_owner_on_the_ready_queue_at_every_item_while_it_has_one():
    from collections import deque

    owner = object()
    inbox = Inbox(owner)
    assert inbox.owner is owner and inbox.ready is None
    link = FakeLink(1)
    link.n_in = link.n_out = 0
    inbox.put(link, "f", 64, "a", limit=100)  # not a relay's member: no queue
    inbox.ready = ready = deque()
    inbox.put(link, "f", 64, "b", limit=100)
    inbox.put_close(link, "bye")
    assert list(ready) == [owner, owner] and len(inbox.items) == 3


def test_the_inbox_counts_every_waiter_until_it_leaves():
    inbox = Inbox()
    cond = inbox._cond = _CountingCondition(threading.Lock())
    threads = [threading.Thread(target=inbox.wait, args=(10,), daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    wait_for(lambda: cond.waits >= 2 or not all(t.is_alive() for t in threads), what="both threads waiting")
    assert cond.waits == 2 and inbox.waiters == 2 and inbox.has_waiters
    inbox.stopped = True
    inbox.notify()
    for t in threads:
        t.join(10)
    assert inbox.waiters == 0 and not inbox.has_waiters


# --- hooks -------------------------------------------------------------------------------------------


def test_link_hooks_skip_the_base_classes_empty_hooks_only():
    class Base:
        @noop_hook
        def on_receive(self, pid: int, msg: Any) -> None:
            pass

        @noop_hook
        def on_send(self, ptype: Any, data: Any) -> None:
            pass

    class Game(Base):
        def on_receive(self, pid: int, msg: Any) -> None:
            pass

    class Sender(Base):
        def on_send(self, ptype: Any, data: Any) -> None:
            pass

    assert link_hooks(Base()) == (None, None)
    g = Game()
    recv, send = link_hooks(g)
    assert recv == g.on_receive and send is None
    w = Sender()
    recv, send = link_hooks(w)
    assert recv is None and send == w.on_send


# --- resume_reading: the frames the core held back ------------------------------------------------------


class HeldProto:
    """A core holding ``held`` application frames: ``receive_data(b"")``
    decodes at most ``packet_quota`` of them; ``answer`` puts bytes to send."""

    def __init__(self, held: int, answer: bool = False) -> None:
        self.closed = False
        self.inflate_budget: float | None = None
        self.inflate_action = "hold"
        self.held = held
        self.packet_quota = 0
        self.fed: list[bytes] = []
        self._outs: list[str] = []
        self.has_data_to_send = answer

    @property
    def frames_waiting(self) -> int:
        return self.held

    def receive_data(self, data: bytes) -> None:
        self.fed.append(data)
        n = min(self.held, self.packet_quota)
        self._outs += [f"p{i}" for i in range(n)]
        self.held -= n
        self.packet_quota -= n

    def drain_received(self) -> list[str]:
        outs, self._outs = self._outs, []
        return outs


class ResumePeer(FakePeer):
    def __init__(self, link: FakeLink, quota: int, allowed: bool = True, **h: Any) -> None:
        super().__init__([link], **h)
        self.quota = quota
        self.allowed = allowed
        self._h_rate_reads = h.get("rate_reads", False)
        self.calls: list = []

    def _refill_inflate(self, link: FakeLink, now: float) -> None:
        self.calls.append(("refill_inflate", link.cid, now))

    def _read_quota(self, link: FakeLink, now: float) -> int:
        self.calls.append(("read_quota", link.cid, now))
        return self.quota

    def _byte_quota(self, link: FakeLink) -> int:
        return 1 << 40

    def _push(self, link: FakeLink) -> None:
        self.calls.append(("push", link.cid))

    def _read_allowed(self, link: FakeLink, nbytes: int, outs: list, npackets: int, now: float) -> bool:
        self.calls.append(("read_allowed", link.cid, nbytes, list(outs), npackets, now))
        return self.allowed

    def _handle_outputs(self, link: FakeLink, outs: list) -> None:
        self.calls.append(("handle", link.cid, list(outs)))


def _resume(held: int, quota: int, **h: Any) -> tuple[Flow, ResumePeer, FakeLink]:
    link = FakeLink(7)
    link.proto = HeldProto(held, h.pop("answer", False))  # type: ignore[assignment]
    peer = ResumePeer(link, quota, h.pop("allowed", True), **h)
    return Flow(peer), peer, link  # type: ignore[arg-type]


def test_resume_hands_on_what_the_quota_allows_and_reads_again():
    flow, peer, link = _resume(held=3, quota=5)
    flow.resume_reading(link)  # type: ignore[arg-type]
    assert link.proto.fed == [b""]
    (read_quota, handle) = peer.calls
    assert read_quota[:2] == ("read_quota", 7) and handle == ("handle", 7, ["p0", "p1", "p2"])
    assert link.proto.packet_quota == 2  # the quota was given to the core, then used
    assert link.chan.interest_updates == 1 and peer._reactor.soon == [] and peer._reactor.later == []


@pytest.mark.parametrize("closed", [False, True])
def test_resume_marks_when_reading_was_held_until(closed):
    """The peer's silence (heartbeat and idle time-outs) counts from the
    later of its last read and the end of our own hold (Peer._housekeeping)."""
    flow, peer, link = _resume(held=0, quota=5)
    link.held_at = -1.0
    link.chan.closed = closed
    t0 = time.monotonic()
    flow.resume_reading(link)  # type: ignore[arg-type]
    if closed:
        assert link.held_at == -1.0
    else:
        assert t0 <= link.held_at <= time.monotonic()


def test_resume_with_frames_left_over_the_quota_waits_again_instead_of_reading():
    flow, peer, link = _resume(held=5, quota=2)
    flow.resume_reading(link)  # type: ignore[arg-type]
    assert peer.calls[-1] == ("handle", 7, ["p0", "p1"])
    assert link.proto.held == 3
    assert link.chan.interest_updates == 0  # no read: the held frames go first
    assert peer._reactor.soon == [(flow.resume_reading, (link,))]  # frames_held: nothing to wait for


@pytest.mark.parametrize("state", ["chan closed", "paused", "throttled", "proto closed", "nothing held"])
def test_resume_feeds_nothing_when_it_must_not_or_has_nothing_to(state):
    flow, peer, link = _resume(held=0 if state == "nothing held" else 3, quota=5)
    if state == "chan closed":
        link.chan.closed = True
    elif state == "paused":
        link.chan.paused = True
    elif state == "throttled":
        link.chan.throttled = True
    elif state == "proto closed":
        link.proto.closed = True
    flow.resume_reading(link)  # type: ignore[arg-type]
    assert link.proto.fed == [] and peer.calls == []
    # A closed channel is left alone; otherwise the read interest is set again.
    assert link.chan.interest_updates == (0 if state == "chan closed" else 1)


def test_resume_uses_one_clock_reading_for_the_inflate_budget_and_the_quota_and_pushes_answers():
    flow, peer, link = _resume(held=1, quota=1, inflate=1000, answer=True)
    t0 = time.monotonic()
    flow.resume_reading(link)  # type: ignore[arg-type]
    (refill, read_quota, push, handle) = peer.calls
    assert refill[:2] == ("refill_inflate", 7) and read_quota[:2] == ("read_quota", 7)
    assert refill[2] == read_quota[2] and t0 <= refill[2] <= time.monotonic()
    assert push == ("push", 7) and handle == ("handle", 7, ["p0"])


def test_resume_without_an_inflate_limit_or_an_answer_neither_refills_nor_pushes():
    flow, peer, link = _resume(held=1, quota=1, inflate=0, answer=False)
    flow.resume_reading(link)  # type: ignore[arg-type]
    assert [c[0] for c in peer.calls] == ["read_quota", "handle"]


@pytest.mark.parametrize("allowed", [True, False])
def test_resume_charges_the_rate_limit_for_the_packets_it_decoded(allowed):
    flow, peer, link = _resume(held=2, quota=3, rate_reads=True, allowed=allowed)
    flow.resume_reading(link)  # type: ignore[arg-type]
    read_quota, charge = peer.calls[:2]
    # No bytes (they were charged when read), the 2 packets decoded now (not the
    # quota of 3), the same clock reading.
    assert charge == ("read_allowed", 7, 0, ["p0", "p1"], 2, read_quota[2])
    if allowed:
        assert peer.calls[2:] == [("handle", 7, ["p0", "p1"])]
    else:  # the rate limit closed or dropped them: nothing handed on
        assert peer.calls[2:] == []


def test_resume_with_frames_left_on_a_paused_link_neither_waits_nor_reads():
    flow, peer, link = _resume(held=5, quota=2)

    def handle(lk: Any, outs: list) -> None:
        peer.calls.append(("handle", lk.cid, list(outs)))
        lk.chan.paused = True  # the process queue filled up meanwhile

    peer._handle_outputs = handle  # type: ignore[method-assign]
    flow.resume_reading(link)  # type: ignore[arg-type]
    assert peer._reactor.soon == [] and peer._reactor.later == []
    assert link.chan.interest_updates == 1  # interest recomputed (paused: no read)


# --- account(): the running total and when it asks shed() ---------------------------------------------


def test_account_adds_the_change_of_one_buffer_and_sheds_only_when_it_grew_over_the_cap(monkeypatch):
    link = FakeLink(1, out=40)
    peer = FakePeer([link], write_total=100)
    flow = Flow(peer)  # type: ignore[arg-type]
    shed: list[int] = []
    monkeypatch.setattr(flow, "shed", lambda: shed.append(flow.buffered) or 0)
    flow.buffered = 50  # other connections' bytes
    flow.account(link)  # type: ignore[arg-type]
    assert (flow.buffered, link.acct, shed) == (90, 40, [])
    link.chan.out = bytearray(50)
    flow.account(link)  # type: ignore[arg-type]
    assert (flow.buffered, link.acct, shed) == (100, 50, [])  # exactly at the cap: kept
    link.chan.out = bytearray(51)
    flow.account(link)  # type: ignore[arg-type]
    assert (flow.buffered, link.acct, shed) == (101, 51, [101])  # one byte over: shed
    flow.buffered = 150  # over the cap already (others grew), this buffer shrinks: no shedding
    link.chan.out = bytearray(20)
    flow.account(link)  # type: ignore[arg-type]
    assert (flow.buffered, link.acct, shed) == (119, 20, [101])
    flow.account(link)  # type: ignore[arg-type]  # unchanged: nothing to do
    assert (flow.buffered, link.acct, shed) == (119, 20, [101])


def test_done_resumes_a_paused_link_at_exactly_its_mark_and_never_an_unpaused_one():
    inbox = Inbox()
    link = FakeLink(1)
    link.n_in, link.n_out, link.resume_at = 10, 4, 5
    link.chan.paused = True
    assert inbox.done(link) is True and link.n_out == 5 and link.chan.paused is False  # 5 queued: at the mark
    link.chan.paused = True
    link.n_in, link.n_out = 12, 5
    assert inbox.done(link) is False and link.chan.paused is True  # 6 queued: over it
    unpaused = FakeLink(2)
    unpaused.n_in, unpaused.n_out, unpaused.resume_at = 1, 0, 5
    assert inbox.done(unpaused) is False and unpaused.chan.paused is False


def test_take_for_removes_the_oldest_item_of_that_link_only():
    inbox = Inbox()
    a, b = FakeLink(1), FakeLink(2)
    inbox.items.extend([(a, "fa", 64, "a1"), (b, "fb", 64, "b1"), (a, "fa", 65, "a2")])
    assert inbox.take_for(b) == (b, "fb", 64, "b1")
    assert inbox.take_for(a) == (a, "fa", 64, "a1")
    assert list(inbox.items) == [(a, "fa", 65, "a2")]
    assert inbox.take_for(b) is None and len(inbox.items) == 1


def test_take_for_tries_the_next_item_of_that_link_when_another_thread_took_the_first():
    a, b = FakeLink(1), FakeLink(2)
    first, second = (a, "fa", 64, "a1"), (a, "fa", 65, "a2")

    class Racing(deque):  # another process() thread takes the oldest item as we remove it
        def remove(self, value):
            if value is first and self and self[0] is first:
                self.popleft()
            super().remove(value)

    inbox = Inbox()
    inbox.items = Racing([first, (b, "fb", 64, "b1"), second])
    assert inbox.take_for(a) is second
    assert list(inbox.items) == [(b, "fb", 64, "b1")]
    assert inbox.take_for(a) is None


def test_a_batch_racing_another_counts_what_it_dispatched():
    class Racing(deque):  # another thread empties the queue after our first item
        def popleft(self):
            item = super().popleft()
            self.clear()
            return item

    inbox = Inbox()
    link = _batch_link(1)
    b = Batch(inbox)
    inbox.items = Racing([(link, b.handler, 64, "m1", 0), (link, b.handler, 64, "m2", 0), (link, b.handler, 64, "m3", 0)])
    assert b.run() == 1
    assert b.seen == [("m1", 1, True)]


# --- the running total of buffered bytes: recount() and released() --------------------------------------


def test_a_new_flow_counts_no_buffered_bytes():
    link = FakeLink(1, out=40)
    flow = Flow(FakePeer([link], write_total=100))  # type: ignore[arg-type]
    assert flow.buffered == 0
    flow.account(link)  # type: ignore[arg-type]
    assert flow.buffered == 40


def test_recount_counts_each_open_buffer_exactly_and_a_closed_one_as_empty():
    links = _links(30, 20, 5)
    links[1].chan.closed = True  # its buffer is gone with the socket
    for lk, stale in zip(links, (7, 9, 11)):  # drifted counts (corked flushes, racing senders)
        lk.acct = stale
    peer = FakePeer(links)
    flow = Flow(peer)  # type: ignore[arg-type]
    flow.buffered = 999
    flow.recount()
    assert flow.buffered == 35
    assert [lk.acct for lk in links] == [30, 0, 5]


def test_a_released_connection_takes_its_counted_bytes_out_of_the_total():
    link = FakeLink(1, out=30)
    flow = Flow(FakePeer([link]))  # type: ignore[arg-type]
    flow.buffered = 100
    link.acct = 30
    flow.released(link)  # type: ignore[arg-type]
    assert (flow.buffered, link.acct) == (70, 0)


def test_a_slow_consumers_drop_takes_the_dropped_bytes_out_of_the_total():
    flow, peer, link = _flow()
    link.acct = 100
    flow.buffered = 150  # 50 of another connection

    def drop_unsent() -> int:  # all but the frame partly sent
        link.chan.out = bytearray(10)
        return 90

    link.chan.drop_unsent = drop_unsent  # type: ignore[attr-defined]
    closed: list = []
    peer._close_link = lambda lk, reason: closed.append((lk, reason))  # type: ignore[attr-defined]
    flow.close_slow(link)  # type: ignore[arg-type]
    assert (flow.buffered, link.acct) == (60, 10)
    assert closed == [(link, "slowconsumer")]


def test_a_slow_consumer_closed_meanwhile_keeps_what_is_queued():
    """close_slow() on a connection closed meanwhile (a second close
    scheduled by the core's own replies) drops nothing: what waits is the
    closeconn the first close queued."""
    flow, peer, link = _flow()
    link.proto.closed = True
    dropped: list = []
    link.chan.drop_unsent = lambda: dropped.append(1) or 0  # type: ignore[attr-defined]
    closed: list = []
    peer._close_link = lambda lk, reason: closed.append((lk, reason))  # type: ignore[attr-defined]
    flow.close_slow(link)  # type: ignore[arg-type]
    assert dropped == [] and closed == []


def test_a_send_accounted_on_another_thread_while_shed_closes_a_victim_does_not_fail():
    links = _links(30, 50)
    other = FakeLink(9, out=4)  # a connection of another sending thread
    peer = FakePeer([*links, other], write_total=60)
    flow = Flow(peer)  # type: ignore[arg-type]
    accounted: list = []

    def call_soon(fn: Any, *args: Any) -> None:  # the other thread's buffer drains, it runs account() now
        if not accounted:  # once
            other.chan.out = bytearray(0)
            accounted.append(None)
            with other.chan.lock:
                flow.account(other)  # type: ignore[arg-type]
            accounted[0] = other.acct
        peer._reactor.soon.append((fn, args))

    peer._reactor.call_soon = call_soon  # type: ignore[method-assign]
    assert flow.shed() == 1
    assert accounted == [0] and peer._reactor.soon == [(flow.close_slow, (links[1],))]


# --- may_block(): which threads may wait for a full buffer ------------------------------------------------


def test_only_a_program_thread_outside_process_may_block():
    flow, peer, _ = _flow()
    assert flow.may_block() is True  # the test's thread: a program thread
    peer._reactor.looping = True  # the network thread would wait for itself
    assert flow.may_block() is False
    peer._reactor.looping = False
    peer._process_thread = threading.current_thread()  # the process thread serves every connection
    assert flow.may_block() is False
    peer._process_thread = None
    assert flow.may_block() is True


def test_a_thread_running_handlers_may_not_block_and_other_threads_still_may():
    flow, peer, _ = _flow()
    flow.dispatching.active = True  # this thread runs process()'s handlers
    assert flow.may_block() is False
    other: list = []
    t = threading.Thread(target=lambda: other.append(flow.may_block()))
    t.start()
    t.join(10)
    assert other == [True]  # the mark is per thread
    flow.dispatching.active = False
    assert flow.may_block() is True


# --- wait_drained() at its deadline --------------------------------------------------------------------


class _Clock:
    """Hands out the given monotonic readings, then one second more at each reading."""

    def __init__(self, *readings: float) -> None:
        self.readings = list(readings)
        self.now = readings[0]

    def monotonic(self) -> float:
        self.now = self.readings.pop(0) if self.readings else self.now + 1.0
        return self.now


@pytest.mark.parametrize("readings, waits", [
    ((100.0, 100.125, 100.25), [0.125]),  # before the deadline: waits what is left, then fails at it
    ((100.0, 100.25), []),  # exactly at the deadline: fails without waiting again
])
def test_a_blocked_sender_waits_what_is_left_of_its_timeout_and_fails_at_the_deadline(monkeypatch, readings, waits):
    import peng3dnet.flow

    flow, peer, link = _flow(write_block=64, timeout=0.25)
    link.chan.out = bytearray(40)
    drained = link.chan.drained = _Drained()  # type: ignore[assignment]
    monkeypatch.setattr(peng3dnet.flow, "time", _Clock(*readings))
    with pytest.raises(WriteBufferFullError):
        flow.wait_drained(link)  # type: ignore[arg-type]
    assert drained.waits == waits and link.chan.drain_waiters == 0


# --- Inbox.put(): when reading pauses ---------------------------------------------------------------------


def test_put_pauses_reading_once_when_exactly_limit_packets_wait_and_resumes_at_half():
    inbox = Inbox()
    link = FakeLink(1)
    link.n_in, link.n_out, link.resume_at = 3, 3, 0  # 3 packets came and were handled before
    pauses = [inbox.put(link, "f", 64, i, limit=5) for i in range(4)]
    assert pauses == [False] * 4 and link.n_in == 7 and not link.chan.paused  # 4 wait
    assert inbox.put(link, "f", 64, 4, limit=5) is True  # the fifth: pause
    assert link.chan.paused and link.resume_at == 2 and link.n_in == 8
    assert inbox.put(link, "f", 64, 5, limit=5) is False  # paused already: not again
    assert link.chan.paused and link.resume_at == 2 and link.n_in == 9
    assert [item[3] for item in inbox.items] == [0, 1, 2, 3, 4, 5]


def test_put_pauses_reading_when_exactly_the_byte_limit_waits_and_resumes_when_both_are_at_half():
    inbox = Inbox()
    link = FakeLink(1)
    link.n_in = link.n_out = link.resume_at = 0
    assert inbox.put(link, "f", 64, "a", 10, 599, 1000) is False
    assert inbox.put(link, "f", 64, "b", 10, 400, 1000) is False  # 999 bytes wait: under
    assert inbox.put(link, "f", 64, "c", 10, 1, 1000) is True  # 1,000: the limit
    assert link.chan.paused and link.b_in == 1000 and link.b_resume_at == 500 and link.resume_at == 5
    assert [item[4] for item in inbox.items] == [599, 400, 1]
    assert inbox.done(link, 499) is False and link.b_out == 499  # 501 bytes wait
    assert inbox.done(link, 1) is True and not link.chan.paused  # 500 bytes, 1 packet: both at half
    # Packets at the packet limit pause too, and reading waits for the bytes as well.
    link2 = FakeLink(2)
    link2.n_in = link2.n_out = link2.resume_at = 0
    assert [inbox.put(link2, "f", 64, i, 2, 700, 1000) for i in range(2)] == [False, True]
    assert inbox.done(link2, 0) is False  # 1 packet waits (half of 2), but 1,400 bytes do too
    assert link2.chan.paused and inbox.done(link2, 900) is True


def test_pause_looks_again_under_the_lock_at_packets_and_bytes():
    inbox = Inbox()
    link = FakeLink(1)
    link.n_in, link.n_out, link.b_in, link.b_out = 5, 5, 100, 100  # handled meanwhile
    assert inbox.pause(link, 5, 100) is False and not link.chan.paused
    link.b_in = 200
    assert inbox.pause(link, 5, 100) is True and link.chan.paused and link.b_resume_at == 50


def test_a_new_inbox_has_no_wake_up_pending_and_notify_clears_it():
    inbox = Inbox()
    assert not inbox.notify_pending  # the network thread schedules the first wake-up itself
    inbox.notify_pending = True  # scheduled (Peer: reactor.after_io(inbox.notify))
    inbox.notify()
    assert not inbox.notify_pending
