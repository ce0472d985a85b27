"""The relay (peng3dnet.relay) one step at a time, on the test's thread, with
fakes for the peers, the reactor and the relay's condition: no other
thread, no clock.  The thread-driven tests of test_relay.py show the
turn-taking only as it happens in one run's interleaving; here each step
that another thread could take (start or end a batch, drain a peer, add a
relay, wake a sleeper) is scripted at the exact point it matters: between
the leader's unlocked peek and its locked re-check, while a follower
sleeps, while the watchdog looks.  What is checked: who leads, who runs
which batch, what the sets of threads, runners, busy peers and stuck
runners hold afterwards, who is woken (and that nobody is woken for
nothing), and the log lines' values."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from peng3dnet import relay as relay_mod

ME = threading.get_ident()  # (the tests run on one thread; each call below runs on it)
LEADER = -7  # idents of the relay's other threads (a leader, a runner), played by the test's thread
OTHER = -42


class WouldSleepError(Exception):
    """Raised by :class:`ScriptedCond` where the thread would sleep with
    nothing scripted to wake it (for good, in the real relay)."""


class Escape(BaseException):
    """A BaseException out of a peer's handlers (what a SystemExit is)."""


class ScriptedCond:
    """Stands in for a Condition over a real lock: ``wait()`` releases the
    lock, runs the next scripted step (what the other threads do
    meanwhile), takes the lock back, and returns if the step notified; with
    no step left, or a step that woke nobody, it raises :class:`WouldSleepError`.
    Records each wait's time-out and counts the notifies; ``on_enter[n]``
    runs just before the n-th ``with`` takes the lock (what another thread
    did just before)."""

    def __init__(self, lock: Any, steps: list | None = None) -> None:
        self.lock = lock
        self.steps = list(steps or [])
        self.waits: list = []
        self.notifies = 0
        self.entries = 0
        self.on_enter: dict[int, Any] = {}

    def __enter__(self) -> ScriptedCond:
        self.entries += 1
        hook = self.on_enter.pop(self.entries, None)
        if hook is not None:
            hook()
        self.lock.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.lock.release()

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        if not self.steps:
            raise WouldSleepError(f"waits (time-out {timeout}) with nothing to wake it")
        before = self.notifies
        self.lock.release()
        try:
            self.steps.pop(0)()
        finally:
            self.lock.acquire()
        if self.notifies == before:
            raise WouldSleepError("the step woke nobody")
        return True

    def notify_all(self) -> None:
        self.notifies += 1

    notify = notify_all


class HookLock:
    """The relay's lock; ``before`` runs once, at the next acquisition,
    before the lock is taken (another thread acting between a peek without
    the lock and the taking of it)."""

    def __init__(self) -> None:
        self.real = threading.Lock()
        self.before: Any = None

    def __enter__(self) -> HookLock:
        if self.before is not None:
            hook, self.before = self.before, None
            hook()
        self.real.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.real.release()


class CountingLock:
    """A lock that counts its acquisitions."""

    def __init__(self) -> None:
        self.real = threading.Lock()
        self.taken = 0

    def __enter__(self) -> CountingLock:
        self.taken += 1
        self.real.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.real.release()


class FakeInbox:
    def __init__(self, items: list) -> None:
        self._items = list(items)
        self.owner: Any = None
        self.ready: Any = None  # the relay's ready queue while the owner is a member (Inbox.ready)

    @property
    def items(self) -> list:
        return list(self._items)

    def drain(self) -> list:
        got, self._items = self._items, []
        return got

    def put(self, item: Any) -> None:
        """The network thread queues a packet (as Inbox.put: the owner goes on the relay's ready queue)."""
        self._items.append(item)
        if self.ready is not None:
            self.ready.append(self.owner)


class FakePeer:
    """A member: its packets in a fake inbox; running its handlers drains
    them, records ``(name, packets, what `during` returns)`` in ``ran``
    and calls ``during`` (a handler's doing: its value is recorded)."""

    def __init__(self, name: str, ran: list, items: list = ()) -> None:  # type: ignore[assignment]
        self.name = name
        self.ran = ran
        self._inbox = FakeInbox(list(items))
        self._inbox.owner = self
        self._loop_done = relay_mod.Flag()
        self.during: Any = None

    def _run_batch(self) -> None:
        got = self._inbox.drain()
        self.ran.append((self.name, got, self.during() if self.during is not None else None))

    def __repr__(self) -> str:
        return f"<peer {self.name}>"


class FakeReactor:
    """Each ``run_once()`` is one scripted round; records the thread id the
    reactor had (who the relay said runs it) at each round."""

    def __init__(self, rounds: list | None = None) -> None:
        self.stopping = False
        self.thread_id: Any = None
        self.rounds = list(rounds or [])
        self.seen: list = []
        self.interrupts = 0

    def interrupt(self) -> None:
        """Another thread ends the leader's select() (counted)."""
        self.interrupts += 1

    def run_once(self, timeout: Any) -> None:
        assert timeout is None
        self.seen.append(self.thread_id)
        if not self.rounds:
            raise AssertionError("a round more than scripted")
        self.rounds.pop(0)()


class AliveThread:
    def is_alive(self) -> bool:
        return True


@pytest.fixture
def watchdog(monkeypatch):
    """A watchdog of the test's own that starts no thread (one runs already, as far as it knows)."""
    wd = relay_mod._Watchdog()
    wd.thread = AliveThread()  # type: ignore[assignment]
    monkeypatch.setattr(relay_mod, "_WATCHDOG", wd)
    return wd


def _relay(reactor: Any = None, scripted: bool = True) -> tuple[relay_mod.Relay, list]:
    ended: list = []

    def end_loop():
        ended.append("end_loop")
        r.loop_done.set()

    r = relay_mod.Relay(reactor if reactor is not None else FakeReactor(), relay_mod.Flag(), end_loop)
    if scripted:
        r.cond = ScriptedCond(r.lock)  # type: ignore[assignment]
    return r, ended


def _join(r: relay_mod.Relay, *peers: FakePeer) -> None:
    """Make ``peers`` members, as run_process_thread() does (without a thread)."""
    for p in peers:
        r.members.append(p)
        p._inbox.ready = r.ready
        if p._inbox._items:
            r.ready.append(p)


def _state(r: relay_mod.Relay) -> dict:
    return {"leader": r.leader, "thread_id": r.reactor.thread_id, "runners": dict(r.runners), "busy": set(r.busy),
            "stuck": set(r.stuck), "threads": set(r.threads)}


def test_a_flags_value_follows_set_and_clear_exactly():
    flag = relay_mod.Flag()
    assert flag.value is False and not flag.is_set()
    flag.set()
    assert flag.value is True and flag.is_set() and flag.wait(0)
    flag.clear()
    assert flag.value is False and not flag.is_set()


# --- the threads joining and leaving -------------------------------------------------------------


def test_the_loop_thread_leads_while_it_starts_and_leaves_the_relay_when_the_loop_ends():
    reactor = FakeReactor()
    r, ended = _relay(reactor)
    r.starting()
    during: list = []

    def start():
        during.append(_state(r))
        reactor.stopping = True  # (the loop is stopped before its first round)

    r.run_loop_thread(start)
    assert during == [{"leader": ME, "thread_id": None, "runners": {}, "busy": set(), "stuck": set(), "threads": {ME}}]
    assert reactor.seen == []
    assert ended == ["end_loop"] and r.ended
    assert r.leader is None and r.threads == set()


def test_a_loop_thread_whose_start_fails_ends_the_loop_and_leaves():
    r, ended = _relay()
    r.starting()

    def start():
        raise OSError("no selector")

    with pytest.raises(OSError, match="no selector"):
        r.run_loop_thread(start)
    assert ended == ["end_loop"] and r.leader is None and r.threads == set()
    assert r.cond.notifies == 1  # the process threads wake to see the loop ended  # type: ignore[attr-defined]


def test_a_process_thread_runs_its_peers_batch_and_leaves_when_its_loop_ends(watchdog):
    ran: list = []
    r, ended = _relay()
    p = FakePeer("p", ran, [1, 2])
    r.leader = LEADER  # the loop's thread leads
    r.reactor.thread_id = LEADER

    def handler():
        p._loop_done.set()  # (the peer is closed from its handler: its loop ends)
        return (_state(r), list(r.members), r in watchdog.relays, p._inbox.ready is r.ready)

    p.during = handler
    r.run_process_thread(p)
    inside = {"leader": LEADER, "thread_id": LEADER, "runners": {ME: 1}, "busy": {p}, "stuck": set(), "threads": {ME}}
    assert ran == [("p", [1, 2], (inside, [p], True, True))]
    assert p._inbox.ready is None and not r.ready  # left: its packets no longer go on the relay's queue
    assert r.batch == 1
    assert _state(r) == {"leader": LEADER, "thread_id": LEADER, "runners": {}, "busy": set(), "stuck": set(),
                         "threads": set()}
    assert r.members == [] and r not in watchdog.relays  # the last member gone: not watched
    assert not watchdog.idle  # (woken by the batch)
    assert r.cond.waits == [] and ended == []  # type: ignore[attr-defined]


def _busy_elsewhere(r: relay_mod.Relay, p: FakePeer) -> None:
    """Another thread (OTHER) runs a batch of member ``p``."""
    _join(r, p)
    p._inbox.put("last")
    assert r._start_batch(OTHER) is p


def test_a_leaving_process_thread_waits_while_its_peers_last_batch_runs_elsewhere(watchdog):
    ran: list = []
    r, _ = _relay()
    p, q = FakePeer("p", ran), FakePeer("q", ran)
    _join(r, q)
    r.leader = LEADER
    _busy_elsewhere(r, p)
    p._loop_done.set()
    r.cond.steps = [lambda: r._run(OTHER, p)]  # type: ignore[attr-defined]
    r.run_process_thread(p)
    assert r.cond.waits == [None]  # type: ignore[attr-defined]
    assert ran == [("p", ["last"], None)]
    assert r.members == [q] and r.threads == set() and r.runners == {} and r.busy == set()
    assert r in watchdog.relays  # q's thread still takes part


def test_after_the_loop_ended_a_runner_wakes_the_process_thread_waiting_to_leave(watchdog):
    """The loop ended (nobody leads) while another thread ran the peer's
    batch; the peer's own loop is not marked done: the process thread
    leaves the relay and waits for the batch, whose end must wake it."""
    ran: list = []
    r, ended = _relay()
    p = FakePeer("p", ran)
    _busy_elsewhere(r, p)
    r._end()
    assert ended == ["end_loop"] and r.loop_done.is_set()
    r.cond.steps = [lambda: r._run(OTHER, p)]  # type: ignore[attr-defined]
    r.run_process_thread(p)
    assert ran == [("p", ["last"], None)]
    assert r.leader is None and r.reactor.thread_id is None  # the runner did not lead the ended loop
    assert r.runners == {} and r.busy == set() and r.threads == set() and r.members == []


def test_a_process_thread_whose_peer_left_leads_on_while_its_last_batch_runs_stuck_elsewhere(watchdog):
    """A shared loop: its thread (OTHER) runs the batch of peer p and is
    stuck in a handler, p's process thread (ME) took the lead meanwhile,
    and p leaves the loop (stopped).  ME must not give up the lead while
    p's batch still runs: the stuck thread cannot lead, ME waits to leave,
    and the loop's other peers got no I/O until the handler returned."""
    ran: list = []
    r, ended = _relay()
    p = FakePeer("p", ran)
    _busy_elsewhere(r, p)
    r.stuck.add(OTHER)  # (the watchdog saw it)
    r.leader = ME
    r.reactor.thread_id = ME
    p._loop_done.set()
    r.reactor.rounds = [lambda: None, lambda: r._run(OTHER, p)]  # the stuck batch ends in the second round
    assert r._lead(ME, p) is None
    assert r.reactor.seen == [ME, ME]  # led on for both rounds
    assert ran == [("p", ["last"], None)]
    assert r.reactor.interrupts == 1  # the batch's end ended our select() (its peer left: we may hand over)
    assert _state(r) == {"leader": None, "thread_id": None, "runners": {}, "busy": set(), "stuck": set(),
                         "threads": set()}
    assert r.cond.notifies >= 1 and ended == []  # type: ignore[attr-defined]  # handed over, the loop goes on


def test_a_base_exception_out_of_the_loop_on_a_process_thread_ends_the_loop_and_returns(caplog):
    """A SystemExit out of a hook on the network thread while a process
    thread leads: the loop ends there and the thread returns (its peer's
    last packets and closes still to be drained), with the traceback logged;
    the loop's own thread (home None) re-raises it."""
    for home in (FakePeer("p", []), None):
        def escape():
            raise Escape("from a hook")

        r, ended = _relay(FakeReactor([escape]))
        r.leader = ME
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="peng3dnet.relay"):
            if home is None:
                with pytest.raises(Escape):
                    r._lead(ME, home)
            else:
                assert r._lead(ME, home) is None
        assert ended == ["end_loop"] and r.leader is None
        logged = [rec for rec in caplog.records if rec.name == "peng3dnet.relay"]
        if home is None:
            assert logged == []
        else:
            (rec,) = logged
            assert rec.getMessage() == (f"! relay: the network loop ended: an exception escaped it on "
                                        f"{threading.current_thread().name}")
            assert rec.exc_info is not None and isinstance(rec.exc_info[1], Escape)


# --- a follower ------------------------------------------------------------------------------------


def test_a_follower_takes_the_lead_when_nobody_leads_and_nothing_waits(watchdog):
    ran: list = []
    home = FakePeer("home", ran)
    at_round: list = []

    def round_1():
        at_round.append(_state(r))
        home._loop_done.set()  # its peer leaves the shared loop: the others lead on

    reactor = FakeReactor([round_1])
    r, ended = _relay(reactor)
    _join(r, home)
    r._serve(home, leading=False)
    assert reactor.seen == [ME]
    assert at_round == [{"leader": ME, "thread_id": ME, "runners": {}, "busy": set(), "stuck": set(), "threads": set()}]
    assert r.leader is None and reactor.thread_id is None
    assert ended == []  # the loop goes on for the others
    assert r.cond.notifies == 1 and r.cond.waits == []  # type: ignore[attr-defined]


def test_a_follower_sleeps_while_a_runner_is_active_then_runs_what_waits(watchdog):
    ran: list = []
    home, q = FakePeer("home", ran), FakePeer("q", ran, ["q1"])
    r, _ = _relay()
    _join(r, home, q)
    r.leader = LEADER
    r.runners[OTHER] = 1  # another thread runs a batch of some member: not free
    r.batch = 1

    def the_runner_gets_stuck():
        r.take_over({OTHER: 1})  # (the watchdog's doing)

    def done():
        home._loop_done.set()
        return _state(r)

    q.during = done
    r.cond.steps = [the_runner_gets_stuck]  # type: ignore[attr-defined]
    r._serve(home, leading=False)
    assert r.cond.waits == [None]  # type: ignore[attr-defined]
    assert ran == [("q", ["q1"], {"leader": LEADER, "thread_id": None, "runners": {OTHER: 1, ME: 2}, "busy": {q},
                                  "stuck": {OTHER}, "threads": set()})]
    assert r.runners == {OTHER: 1} and r.busy == set() and r.stuck == {OTHER}


def test_a_follower_with_a_leader_and_nothing_to_run_sleeps(watchdog):
    r, _ = _relay()
    home = FakePeer("home", [])
    _join(r, home)
    r.leader = LEADER
    with pytest.raises(WouldSleepError):
        r._serve(home, leading=False)
    assert r.leader == LEADER and r.runners == {} and r.cond.waits == [None]  # type: ignore[attr-defined]


def test_a_process_thread_joining_puts_its_peer_on_the_ready_queue_only_with_packets_waiting(watchdog):
    r, _ = _relay()
    r.leader = LEADER
    idle, busy_one = FakePeer("idle", []), FakePeer("busy", [], ["b1"])
    seen: list = []

    def first_wait():  # (each process thread, once it waits for a role)
        seen.append((list(r.ready), idle._inbox.ready is r.ready))
        idle._loop_done.set()
        r.cond.notify_all()

    r.cond.steps = [first_wait]  # type: ignore[attr-defined]
    r.run_process_thread(idle)
    assert seen == [([], True)]  # nothing queued: not on the queue, but its inbox will put it there
    r.runners[OTHER] = 1  # (somebody else's batch: busy_one's thread only joins and waits)

    def second_wait():
        seen.append(list(r.ready))
        busy_one._loop_done.set()
        r.cond.notify_all()

    r.cond.steps = [second_wait]  # type: ignore[attr-defined]
    r.run_process_thread(busy_one)
    assert seen[1] == [busy_one]  # a packet queued before it joined


# --- the leader ------------------------------------------------------------------------------------


def _leading(rounds: list, *peers: FakePeer) -> tuple[relay_mod.Relay, list, FakeReactor]:
    reactor = FakeReactor(rounds)
    r, ended = _relay(reactor)
    _join(r, *peers)
    r.leader = ME
    reactor.thread_id = ME
    return r, ended, reactor


def test_the_leader_lets_go_of_the_reactor_to_run_waiting_packets_then_leads_again(watchdog):
    ran: list = []
    p = FakePeer("p", ran)

    def stop():
        reactor.stopping = True

    r, ended, reactor = _leading([lambda: p._inbox.put("x"), stop], p)
    p.during = lambda: _state(r)
    r._serve(None, leading=True)
    assert ran == [("p", ["x"], {"leader": None, "thread_id": None, "runners": {ME: 1}, "busy": {p}, "stuck": set(),
                                 "threads": set()})]
    assert reactor.seen == [ME, ME]  # the runner took the lead back after the batch
    assert ended == ["end_loop"] and r.leader is None and r.runners == {} and r.busy == set()


def test_a_runner_starting_between_the_leaders_peek_and_its_lock_keeps_the_leader_at_the_network():
    ran: list = []
    p, q = FakePeer("p", ran), FakePeer("q", ran)

    def another_thread_starts_a_batch():  # (a follower runs q's packets)
        r.busy.add(q)
        r.batch += 1
        r.runners[OTHER] = r.batch

    def round_1():
        p._inbox.put("p1")
        r.lock.before = another_thread_starts_a_batch  # type: ignore[attr-defined]

    def round_2():  # the other runner's batch ended meanwhile
        r.busy.discard(q)
        del r.runners[OTHER]

    r, ended, reactor = _leading([round_1, round_2], p, q)
    r.lock = HookLock()  # type: ignore[assignment]
    assert r._lead(ME, None) is p
    assert reactor.seen == [ME, ME]  # a second round at the network: never two active runners at once
    assert r.runners == {ME: 2} and r.busy == {p} and r.leader is None and reactor.thread_id is None
    assert ended == []


def test_packets_taken_by_another_thread_between_the_leaders_peek_and_its_lock_keep_the_leader_on():
    ran: list = []
    p = FakePeer("p", ran)

    def another_thread_drains_p():
        p._inbox._items.clear()

    def round_1():
        p._inbox.put("p1")
        r.lock.before = another_thread_drains_p  # type: ignore[attr-defined]

    r, ended, reactor = _leading([round_1, lambda: p._inbox.put("p2")], p)
    r.lock = HookLock()  # type: ignore[assignment]
    assert r._lead(ME, None) is p
    assert reactor.seen == [ME, ME]
    assert r.runners == {ME: 1} and r.batch == 1 and ended == []


def test_a_leader_whose_reactor_stops_with_packets_waiting_ends_the_loop_instead_of_running_them():
    ran: list = []
    p = FakePeer("p", ran)

    def round_1():
        p._inbox.put("p1")
        reactor.stopping = True

    r, ended, reactor = _leading([round_1], p)
    assert r._lead(ME, None) is None
    assert ended == ["end_loop"] and r.leader is None
    assert r.runners == {} and r.busy == set() and r.batch == 0 and ran == []


def test_a_leaders_rounds_take_no_lock_while_nothing_waits_or_a_runner_is_active():
    """The per-round cost: the relay's lock is taken only when packets wait
    and no runner is active (peeked without it, checked again with it)."""
    ran: list = []
    p, q = FakePeer("p", ran), FakePeer("q", ran)

    def a_runner_starts():
        r.busy.add(q)
        r.runners[OTHER] = 1
        p._inbox.put("p1")  # waits behind the active runner

    def stop():
        reactor.stopping = True

    r, ended, reactor = _leading([lambda: None, lambda: None, a_runner_starts, lambda: None, stop], p, q)
    r.lock = CountingLock()  # type: ignore[assignment]
    assert r._lead(ME, None) is None
    assert r.lock.taken == 0  # type: ignore[attr-defined]
    assert len(reactor.seen) == 5 and ended == ["end_loop"]


def test_a_leader_runs_waiting_packets_beside_a_runner_that_is_stuck():
    """Every runner stuck: the relay is free, and the leader starts a batch
    beside them (not only when no runner exists at all)."""
    ran: list = []
    p = FakePeer("p", ran)

    def round_1():
        r.runners[OTHER] = 1
        r.stuck.add(OTHER)  # (the watchdog's take-over)
        p._inbox.put("p1")

    r, ended, reactor = _leading([round_1], p)
    assert r._lead(ME, None) is p
    assert r.runners == {OTHER: 1, ME: 1} and r.busy == {p} and r.leader is None and reactor.seen == [ME]


# --- a runner ----------------------------------------------------------------------------------------


def test_a_runner_runs_the_waiting_members_one_at_a_time_then_takes_the_lead(watchdog):
    ran: list = []
    p, q, s = FakePeer("p", ran, ["p1"]), FakePeer("q", ran, ["q1"]), FakePeer("s", ran)
    r, ended = _relay()
    _join(r, p, q, s)
    for peer in (p, q):
        peer.during = lambda: (dict(r.runners), set(r.busy))
    assert r._start_batch(ME) is p
    assert r._run(ME, p) is True
    assert ran == [("p", ["p1"], ({ME: 1}, {p})), ("q", ["q1"], ({ME: 2}, {q}))]
    assert r.leader == ME and r.reactor.thread_id == ME
    assert r.runners == {} and r.busy == set() and r.batch == 2
    assert r.cond.notifies == 0  # type: ignore[attr-defined]


def test_a_runner_that_another_thread_replaced_at_the_network_wakes_nobody(watchdog):
    ran: list = []
    p = FakePeer("p", ran, ["p1"])
    r, _ = _relay()
    _join(r, p)
    r.leader = LEADER
    assert r._start_batch(ME) is p
    assert r._run(ME, p) is False
    assert r.leader == LEADER and r.runners == {} and r.busy == set()
    assert r.cond.notifies == 0  # type: ignore[attr-defined]


def test_a_runner_beside_an_active_one_leaves_the_lead_to_it(watchdog):
    ran: list = []
    p = FakePeer("p", ran, ["p1"])
    r, _ = _relay()
    _join(r, p)
    r.runners[OTHER] = 5  # active, not stuck: it leads after its batch
    assert r._start_batch(ME) is p
    assert r._run(ME, p) is False
    assert r.leader is None and r.runners == {OTHER: 5}


def test_a_runner_beside_a_stuck_one_with_nobody_leading_takes_the_lead(watchdog):
    ran: list = []
    p = FakePeer("p", ran, ["p1"])
    r, _ = _relay()
    _join(r, p)
    r.runners[OTHER] = 5
    r.stuck.add(OTHER)  # stuck in a handler: somebody must serve the network
    assert r._start_batch(ME) is p
    assert r._run(ME, p) is True
    assert r.leader == ME and r.reactor.thread_id == ME and r.runners == {OTHER: 5}
    assert r.cond.notifies == 0  # type: ignore[attr-defined]


def test_the_runner_of_a_peer_whose_loop_ended_wakes_its_process_thread(watchdog):
    ran: list = []
    p = FakePeer("p", ran, ["p1"])
    r, _ = _relay()
    _join(r, p)
    r.leader = LEADER
    p.during = p._loop_done.set
    assert r._start_batch(ME) is p
    assert r._run(ME, p) is False
    assert r.cond.notifies == 1  # type: ignore[attr-defined]


def test_a_base_exception_out_of_a_batch_leaves_no_runner_busy_peer_or_stuck_runner(watchdog):
    ran: list = []
    p, q = FakePeer("p", ran, ["p1"]), FakePeer("q", ran, ["q1"])
    r, _ = _relay()
    _join(r, p, q)

    def handler_waits_then_escapes():
        r.before_wait()  # (it waited in the library first: stuck)
        assert r.stuck == {ME}
        raise Escape

    p.during = handler_waits_then_escapes
    assert r._start_batch(ME) is p
    with pytest.raises(Escape):
        r._run(ME, p)
    assert r.runners == {} and r.busy == set() and r.stuck == set()
    assert r.leader is None  # this thread ends: never the leader
    assert list(r.ready) == [q]  # p has nothing left: not queued again
    assert r._runnable() is q  # (q's packets wait for another thread)
    assert r.cond.notifies == 2  # before_wait's, and this thread's leaving  # type: ignore[attr-defined]


def test_packets_queued_during_a_batch_are_run_after_the_members_that_waited_before_them(watchdog):
    ran: list = []
    p, q = FakePeer("p", ran, ["p1"]), FakePeer("q", ran)
    r, _ = _relay()
    _join(r, p, q)
    r.leader = LEADER

    def meanwhile():  # the network thread queues while p's (first) handlers run
        p.during = None
        q._inbox.put("q1")
        p._inbox.put("p2")
        return list(r.ready)

    p.during = meanwhile
    assert r._start_batch(ME) is p
    assert r._run(ME, p) is False
    assert ran == [("p", ["p1"], [q, p]), ("q", ["q1"], None), ("p", ["p2"], None)]
    assert not r.ready and r.runners == {} and r.busy == set() and r.batch == 3


def test_a_member_whose_entries_were_dropped_while_it_ran_is_put_back_after_its_batch(watchdog):
    ran: list = []
    p = FakePeer("p", ran, ["p1"])
    r, _ = _relay()
    _join(r, p)
    r.leader = LEADER

    def another_thread_looks():  # a packet for p, and another thread finds p running: entry dropped
        p.during = None
        p._inbox.put("p2")
        with r.lock:
            assert r._runnable() is None
        return list(r.ready)

    p.during = another_thread_looks
    assert r._start_batch(ME) is p
    assert r._run(ME, p) is False
    assert ran == [("p", ["p1"], []), ("p", ["p2"], None)]  # put back by its runner, and run


def test_a_base_exception_out_of_a_batch_puts_the_member_back_when_packets_came_meanwhile(watchdog):
    ran: list = []
    p = FakePeer("p", ran, ["p1"])
    r, _ = _relay()
    _join(r, p)

    def queued_then_escapes():
        p._inbox.put("p2")
        with r.lock:
            assert r._runnable() is None  # (p runs: its entry dropped)
        raise Escape

    p.during = queued_then_escapes
    assert r._start_batch(ME) is p
    with pytest.raises(Escape):
        r._run(ME, p)
    assert list(r.ready) == [p] and r._runnable() is p  # another thread runs p2


def test_the_first_batch_after_a_quiet_period_wakes_the_watchdog_later_ones_do_not(watchdog):
    ran: list = []
    p = FakePeer("p", ran)
    r, _ = _relay()
    _join(r, p)
    r.leader = LEADER
    watchdog.cond = ScriptedCond(threading.Lock())  # type: ignore[assignment]
    assert watchdog.idle  # (a new watchdog sleeps)
    for batch in range(3):
        p._inbox.put(batch)
        assert r._start_batch(ME) is p
        assert r._run(ME, p) is False
    assert [packets for _, packets, _ in ran] == [[0], [1], [2]]
    assert not watchdog.idle
    assert watchdog.cond.notifies == 1 and watchdog.cond.entries == 1  # type: ignore[attr-defined]


# --- waiting in the library, the watchdog's take-over ---------------------------------------------


def test_a_runner_waiting_in_the_library_twice_wakes_the_others_once():
    r, _ = _relay()
    r.runners = {OTHER: 1}
    r.before_wait()  # not a runner: nothing
    assert r.stuck == set() and r.cond.notifies == 0  # type: ignore[attr-defined]
    r.runners[ME] = 2
    r.before_wait()
    assert r.stuck == {ME} and r.cond.notifies == 1  # type: ignore[attr-defined]
    r.before_wait()  # stuck already: nobody is woken for nothing
    assert r.stuck == {ME} and r.cond.notifies == 1  # type: ignore[attr-defined]


def test_wake_all_wakes_every_waiting_thread():
    r, _ = _relay()
    r.wake_all()
    assert r.cond.notifies == 1  # type: ignore[attr-defined]


def test_take_over_marks_only_the_runners_on_the_batch_seen_and_logs_once(caplog):
    caplog.set_level(logging.DEBUG, logger="peng3dnet.relay")
    r, _ = _relay()
    r.runners = {1: 5, 2: 6, 3: 7, 4: 8}
    r.stuck = {3}
    r.take_over({1: 5, 2: 9, 3: 7})  # 2 moved on; 3 is stuck already; 4 was not seen
    assert r.stuck == {1, 3}
    assert r.cond.notifies == 1  # type: ignore[attr-defined]
    r.take_over({1: 5, 2: 9, 3: 7})  # nobody new: nobody woken, nothing logged
    assert r.stuck == {1, 3} and r.cond.notifies == 1  # type: ignore[attr-defined]
    assert [(rec.name, rec.levelno, rec.getMessage()) for rec in caplog.records] == [
        ("peng3dnet.relay", logging.DEBUG,
         "relay: handlers run for more than 50 ms; another thread serves the network")]


def test_take_overs_log_line_gives_the_period_in_milliseconds(caplog, monkeypatch):
    caplog.set_level(logging.DEBUG, logger="peng3dnet.relay")
    monkeypatch.setattr(relay_mod, "WATCH_PERIOD", 2.0)
    r, _ = _relay()
    r.runners = {1: 5}
    r.take_over({1: 5})
    assert [rec.getMessage() for rec in caplog.records] == [
        "relay: handlers run for more than 2000 ms; another thread serves the network"]


# --- the watchdog ------------------------------------------------------------------------------------


def _watched() -> tuple[relay_mod._Watchdog, relay_mod.Relay]:
    wd = relay_mod._Watchdog()
    wd.cond = ScriptedCond(threading.Lock())  # type: ignore[assignment]
    r, _ = _relay(scripted=False)
    wd.relays.add(r)
    wd.idle = False
    return wd, r


def _during_next_look(wd: relay_mod._Watchdog, hook: Any) -> None:
    """Run ``hook`` in the next look, after it read the relays and just
    before it takes the watchdog's lock again to decide whether to sleep."""
    wd.cond.on_enter[wd.cond.entries + 2] = hook  # type: ignore[attr-defined]


def test_a_new_watchdog_sleeps_until_a_batch_starts_then_looks_every_period():
    wd = relay_mod._Watchdog()
    wd.cond = ScriptedCond(threading.Lock(), [wd.running])  # type: ignore[assignment]
    with pytest.raises(WouldSleepError):
        wd._watch()
    assert wd.cond.waits == [None, relay_mod.WATCH_PERIOD]  # type: ignore[attr-defined]
    assert not wd.idle


def test_a_look_that_saw_handlers_running_stays_awake_though_they_ended_meanwhile():
    wd, r = _watched()
    seen: dict = {}
    r.batch = 1
    r.runners = {101: 1}
    _during_next_look(wd, r.runners.clear)  # the batch ends while the watchdog looks
    wd._look(seen)
    assert not wd.idle  # handlers ran within this period
    wd._look(seen)
    assert wd.idle  # none since


def test_a_batch_run_while_the_watchdog_goes_idle_wakes_it_again():
    wd, r = _watched()
    seen: dict = {}
    r.batch = 1
    wd._look(seen)
    assert not wd.idle

    def a_batch_runs():  # (its runner read idle before the watchdog set it: it did not wake it)
        r.batch += 1

    _during_next_look(wd, a_batch_runs)
    wd._look(seen)
    assert not wd.idle
    assert wd.cond.entries == 5  # (two looks and the one that woke it back)  # type: ignore[attr-defined]


def test_a_relay_added_while_the_watchdog_goes_idle_keeps_it_awake():
    wd, r = _watched()
    seen: dict = {}
    wd._look(seen)  # (r's batch 0 first seen: awake)
    r2, _ = _relay(scripted=False)
    _during_next_look(wd, lambda: wd.relays.add(r2))
    wd._look(seen)  # r quiet: it goes idle, then sees r2, never looked at
    assert not wd.idle
    assert r2 not in seen
    wd._look(seen)
    assert r2 in seen and not wd.idle  # (r2's batch 0 first seen)
    wd._look(seen)
    assert wd.idle


def test_the_watchdog_thread_is_a_daemon_one_per_process():
    wd = relay_mod._Watchdog()
    gate = threading.Event()
    runs: list = []

    def run():  # (in place of the watching loop: the test ends it)
        runs.append(threading.current_thread())
        gate.wait(10)

    wd._run = run  # type: ignore[method-assign]
    r1, _ = _relay(scripted=False)
    r2, _ = _relay(scripted=False)
    wd.add(r1)
    first = wd.thread
    assert first is not None and first.daemon and first.name == "peng3dnet watchdog"  # never keeps a process alive
    wd.add(r2)
    assert wd.thread is first and wd.relays == {r1, r2}
    gate.set()
    first.join(10)
    assert not first.is_alive() and runs == [first]
    wd.discard(r1)
    wd.add(r1)  # (its thread died: a new one)
    assert wd.thread is not first and wd.thread.daemon
    wd.thread.join(10)
    assert wd.relays == {r1, r2}


def test_the_watchdog_logs_an_unexpected_error_and_watches_on(caplog):
    caplog.set_level(logging.DEBUG, logger="peng3dnet.relay")
    wd = relay_mod._Watchdog()
    calls: list = []

    def watch():
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("a bug")
        raise Escape  # (ends the test's loop)

    wd._watch = watch  # type: ignore[method-assign]
    with pytest.raises(Escape):
        wd._run()
    assert calls == [1, 1]
    assert [(rec.name, rec.levelno, rec.getMessage()) for rec in caplog.records] == [
        ("peng3dnet.relay", logging.ERROR, "! relay watchdog: unexpected error; watching on")]
    assert caplog.records[0].exc_info[0] is ValueError


def test_a_forked_child_gets_a_fresh_watchdog(monkeypatch):
    parent = relay_mod._Watchdog()
    parent.relays.add(_relay(scripted=False)[0])
    parent.idle = False
    monkeypatch.setattr(relay_mod, "_WATCHDOG", parent)
    relay_mod._reset_in_child()
    child = relay_mod._WATCHDOG
    assert isinstance(child, relay_mod._Watchdog) and child is not parent
    assert child.relays == set() and child.idle and child.thread is None
