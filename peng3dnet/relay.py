"""Leader/follower hand-over between the library threads of a reactor.

A peer started the documented way (``runAsync()`` and ``process_async()``)
has two threads of ours: the network thread and the process thread (clients
on one :class:`~peng3dnet.client.NetworkLoop` share its network thread,
each with its process thread).  With a
fixed split (one does the I/O, the other runs the handlers) every received
packet crosses from one thread to the other: a wake-up of a sleeping thread
on the critical path, two per round trip on each side, the larger part of a
round trip's time on loopback and most of the CPU per echo.

The relay lets the threads of one reactor swap roles instead.  At any
moment at most one of them is the *leader*, which runs the reactor
(``select()``, reads, writes, timers; :meth:`Reactor.in_loop` is true on it
only); a *runner* runs handlers.  A leader that has queued packets while no
runner is active lets go of the reactor and runs them itself: the handler
runs at once on the thread that read the packet, and nothing wakes up.  The
guarantees of the fixed split stay:

- the handlers of one peer run one at a time and in order, on a thread of
  ours that is not the network thread while they run (sends and state
  changes from it are queued to the leader exactly as from a program
  thread); on a shared loop, the handlers of different clients run one
  batch after the other, and beside each other only when one is stuck;
- a handler may block: a watchdog thread (one per process, for every
  relay) looks every :data:`WATCH_PERIOD` seconds and, when the same batch
  of handlers is still running since its last look, wakes the other thread
  to take the reactor over, so the network is served again within two
  periods (at once when the handler waits in the library:
  ``wait_for_connection()``, a synchronous ``call()``,
  ``process(wait=True)``, ``shutdown(join=True)`` hand the reactor over
  before waiting).  Heavy traffic then runs as the fixed split did: one
  thread reads, another runs handlers; on a shared loop the new leader may
  also run the handlers of the other clients while one client's handler
  is stuck.

The watchdog wakes only while handlers run somewhere in the process or ran
within its last period; an idle process sleeps.  The first batch after a
quiet period wakes it (one wake-up for the process), later batches do not.
The other threads of a relay sleep until they are needed.

Only the threads made by ``runAsync()``, :class:`NetworkLoop` and
``process_async()`` take part: a program that calls ``runBlocking()`` or
``process()``/``process_forever()`` itself keeps its loop or its handlers on
its own thread.

Thread safety: every field is read and written with :attr:`Relay.cond` held
(a few are peeked at without it first, then checked again with it), but
:attr:`Relay.ready`, which the members' inboxes append to from the network
thread without it (a deque's ``append`` and ``popleft`` are atomic; entries
are taken off only with the lock held).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["Flag", "Relay", "WATCH_PERIOD"]

_STARTING = -1  # the leader's ident while the loop's thread starts the reactor

WATCH_PERIOD = 0.05
"""Seconds between the watchdog's looks at a running batch of handlers: a
handler blocking outside the library holds the network for at most about
two periods before another thread takes it over.  Each look takes the GIL
from the packet path for a moment: at 10 ms the round trip's p99 on
loopback rose from about 140 to 180-230 us, at 50 ms to 150-175 us."""


class Flag(threading.Event):
    """A :class:`threading.Event` whose state is also the plain attribute
    :attr:`value`: read once or twice per batch of handlers, where
    ``is_set()`` would be a Python call each time.  ``value`` turns true
    before the event is set and false before it is cleared, so a thread
    that saw the event set sees ``value`` true.  Any thread."""

    def __init__(self) -> None:
        super().__init__()
        self.value = False
        """Whether the flag is set (see the class docstring)."""

    def set(self) -> None:
        """Set the flag (and wake :meth:`wait`)."""
        self.value = True
        super().set()

    def clear(self) -> None:
        """Clear the flag."""
        self.value = False
        super().clear()


class Relay:
    """The roles of the threads serving one reactor (see the module's docstring).

    Args:
        reactor: The reactor.
        loop_done: Set when the loop has ended (by :attr:`end_loop`).
        end_loop: Ends the loop on the leading thread once the reactor
            stops (what ``Reactor.run``'s caller does at its end); it must
            set ``loop_done``.
    """

    __slots__ = ("reactor", "loop_done", "end_loop", "cond", "lock", "enabled", "members", "ready", "threads",
                 "leader", "runners", "stuck", "busy", "batch", "ended", "__weakref__")

    def __init__(self, reactor: Any, loop_done: Flag, end_loop: Callable[[], None]) -> None:
        self.reactor = reactor
        self.loop_done = loop_done
        self.end_loop = end_loop
        self.lock = threading.Lock()
        """The lock of :attr:`cond` (held with a plain ``with`` on the per-batch path:
        a Condition's ``__enter__`` is a Python call)."""
        self.cond = threading.Condition(self.lock)
        """Guards the fields; a follower waits on it for a role."""
        self.enabled = False
        """The loop runs on a thread that takes part (``runAsync()``, a NetworkLoop)."""
        self.members: list[Any] = []
        """The peers whose handlers the relay runs: those with a
        ``process_async()`` thread taking part (the packets of others wait
        for the program's ``process()``)."""
        self.ready: deque[Any] = deque()
        """Members that may have packets waiting, oldest first: a member's
        inbox appends it at every packet it queues (``Inbox.ready`` is this
        deque while it is a member), a runner appends its member when
        packets are left after its batch.  Every member with packets waiting
        and no runner is in it at least once; an entry found stale (no
        packets, a runner, not a member) is dropped (:meth:`_runnable`).
        So finding the next batch costs the same with 1 member or 100 (a
        process of many clients), and members take turns in the order
        their packets came."""
        self.threads: set[int] = set()
        """Idents of the threads taking part."""
        self.leader: int | None = None
        """Ident of the thread running the reactor, or ``None``."""
        self.runners: dict[int, int] = {}
        """Threads running handlers: ident -> the batch they run."""
        self.stuck: set[int] = set()
        """Runners seen running one batch for a whole watchdog period, or
        waiting in the library: others may lead and run beside them."""
        self.busy: set[Any] = set()
        """Members whose handlers run now (one runner per member)."""
        self.batch = 0
        """Counts the batches of handlers started (the watchdog's clock)."""
        self.ended = False
        """:attr:`end_loop` ran (it runs once)."""

    @property
    def runs_handlers(self) -> bool:
        """Whether any peer's handlers are run by the relay."""
        return bool(self.members)

    # --- the threads -------------------------------------------------------------------------
    def starting(self) -> None:
        """The loop's thread is about to start (the caller, before it
        starts it): the relay takes part, and the lead is that thread's
        until it has started the reactor (a process thread must not lead a
        reactor that has no selector yet)."""
        with self.cond:
            self.enabled = True
            if self.leader is None:
                self.leader = _STARTING

    def run_loop_thread(self, start: Callable[[], None]) -> None:
        """The loop's own thread (``runAsync()``, a NetworkLoop): ``start()``
        the reactor on it, then take turns until the loop ends."""
        me = threading.get_ident()
        with self.cond:  # (starting() made the relay take part)
            self.leader = me
            self.threads.add(me)
        try:
            try:
                start()
            except BaseException:
                self._end()
                raise
            self._serve(None, leading=True)
        finally:
            with self.cond:
                self.threads.discard(me)

    def run_process_thread(self, peer: Any) -> None:
        """The ``process_async()`` thread of ``peer``: take turns until
        ``peer``'s loop has ended and its handlers run nowhere else (the
        caller's last drain must not run beside them)."""
        me = threading.get_ident()
        with self.cond:
            if peer not in self.members:
                self.members.append(peer)
            inbox = peer._inbox
            inbox.ready = self.ready  # (first: a packet queued from now on puts it on the ready queue)
            if inbox.items:
                self.ready.append(peer)  # packets queued before it joined
            self.threads.add(me)
        _WATCHDOG.add(self)
        try:
            self._serve(peer, leading=False)
        finally:
            with self.cond:
                self.threads.discard(me)
                if peer in self.members:
                    self.members.remove(peer)
                    peer._inbox.ready = None
                while peer in self.busy:
                    self.cond.wait()
                self.cond.notify_all()  # (we may have taken a wake-up meant for a thread that stays)
                if not self.members:
                    _WATCHDOG.discard(self)

    def wake_all(self) -> None:
        """Let every waiting thread look again (a peer left the loop: its
        process thread leaves the relay).  Any thread."""
        with self.cond:
            self.cond.notify_all()

    def before_wait(self) -> None:
        """A thread is about to wait in the library (any thread): if it
        runs handlers, let another thread lead and run meanwhile."""
        me = threading.get_ident()
        if me not in self.runners:
            return
        with self.cond:
            if me in self.runners and me not in self.stuck:
                self.stuck.add(me)
                self.cond.notify_all()  # (one notify could land on a thread that only leaves)

    def take_over(self, seen: dict[int, int]) -> None:
        """The watchdog saw these runners (ident -> batch) at its last look
        too: those still on the same batch are stuck; wake a follower to
        lead (the watchdog thread)."""
        with self.cond:
            new = [t for t, b in self.runners.items() if seen.get(t) == b and t not in self.stuck]
            if not new:
                return
            self.stuck.update(new)
            log.debug("relay: handlers run for more than %.0f ms; another thread serves the network",
                      WATCH_PERIOD * 1000)
            self.cond.notify_all()

    # --- roles (cond held where noted) --------------------------------------------------------------
    def _free(self) -> bool:
        """No runner is active, or all are stuck (cond held, or a peek)."""
        return len(self.stuck) >= len(self.runners)

    def _runnable(self) -> Any:
        """Take the first member from :attr:`ready` that has packets
        waiting and no runner, or return ``None`` (cond held); the stale
        entries before it are dropped."""
        ready = self.ready
        busy = self.busy
        while ready:
            peer = ready.popleft()
            inbox = peer._inbox
            if inbox.items and peer not in busy and inbox.ready is ready:
                return peer
        return None

    def _done_for(self, home: Any) -> bool:
        """Whether the calling thread leaves: the loop ended, or (a process
        thread) its peer's loop did."""
        return self.loop_done.is_set() or (home is not None and home._loop_done.is_set())

    def _serve(self, home: Any, leading: bool) -> None:
        """Lead, run handlers or sleep, until :meth:`_done_for`."""
        cond = self.cond
        reactor = self.reactor
        me = threading.get_ident()
        while True:
            peer = None
            if not leading:
                with cond:
                    while True:
                        if self._done_for(home):
                            return
                        if self._free():
                            peer = self._start_batch(me)
                            if peer is not None:
                                break
                            if self.leader is None:
                                self.leader = me
                                reactor.thread_id = me
                                leading = True
                                break
                        cond.wait()
            if leading:
                peer = self._lead(me, home)
                if peer is None:
                    return
            leading = self._run(me, peer)

    def _start_batch(self, me: int) -> Any:
        """Become the runner of a member with packets waiting and return
        it, or ``None`` when none waits (cond held)."""
        peer = self._runnable()
        if peer is None:
            return None
        self.busy.add(peer)
        self.batch += 1
        self.runners[me] = self.batch
        return peer

    def _lead(self, me: int, home: Any) -> Any:
        """Run the reactor until packets wait and no runner is active (then
        return the member to run, no longer leading) or the loop stops (end
        it) or the thread leaves (hand the lead on; both return ``None``)."""
        reactor = self.reactor
        try:
            while not reactor.stopping:
                if home is not None and home._loop_done.value and home not in self.busy:
                    cond = self.cond
                    with cond:  # our peer left a shared loop: the others lead on
                        if home not in self.busy:
                            self.leader = None
                            reactor.thread_id = None
                            cond.notify_all()
                            return None
                # (its last batch may still run on a stuck thread: we lead on
                # until that ends, or nobody would serve the loop's other
                # peers meanwhile; the batch's end interrupts our select())
                reactor.run_once(None)
                # Per round (most calls of _lead have one): a peek without
                # the lock (_free() inlined; no runner is the common case),
                # checked again with it.
                runners = self.runners
                ready = self.ready
                if (runners and len(self.stuck) < len(runners)) or not ready:
                    continue
                with self.lock:  # (no continue inside it: mypyc cannot compile that)
                    if not ((runners and len(self.stuck) < len(runners)) or reactor.stopping):
                        busy = self.busy
                        while ready:  # (_start_batch() and _runnable(), inlined)
                            peer = ready.popleft()
                            inbox = peer._inbox
                            if inbox.items and peer not in busy and inbox.ready is ready:
                                busy.add(peer)
                                self.batch += 1
                                runners[me] = self.batch
                                self.leader = None
                                reactor.thread_id = None
                                return peer
        except BaseException:
            self._end()
            if home is None:
                raise
            # A process thread leads: its peer's last packets and closes
            # must still be handled (process_forever() drains them), so the
            # thread does not die with it; said here, as an unhandled
            # exception on the network thread would be.
            log.error("! relay: the network loop ended: an exception escaped it on %s",
                      threading.current_thread().name, exc_info=True)
            return None
        self._end()
        return None

    def _run(self, me: int, peer: Any) -> bool:
        """Run the handlers of ``peer`` (busy, ours), then of other waiting
        members, one member at a time, while some wait; return whether this
        thread leads next (nobody took the reactor meanwhile)."""
        cond = self.cond
        if _WATCHDOG.idle:  # (read after our batch was counted: see _Watchdog._run)
            _WATCHDOG.running()
        while True:
            try:
                peer._run_batch()
            except BaseException:
                # (handlers' errors are reported by _dispatch; this escaped it)
                with cond:  # this thread ends: not a runner, and never the leader
                    self.busy.discard(peer)
                    inbox = peer._inbox
                    if inbox.items and inbox.ready is self.ready:
                        self.ready.append(peer)  # the rest of its packets: another thread's turn
                    self.stuck.discard(me)
                    del self.runners[me]
                    cond.notify_all()
                raise
            with self.lock:  # (cond's lock)
                self.busy.discard(peer)
                inbox = peer._inbox
                if inbox.items and inbox.ready is self.ready:
                    self.ready.append(peer)  # packets came during the batch (their entries were dropped while it ran)
                if peer._loop_done.value:
                    cond.notify_all()  # its process thread may wait to leave
                    if self.leader is not None:
                        self.reactor.interrupt()  # or lead on until now (see _lead)
                stuck = self.stuck
                if stuck:  # (rarely: a runner that waited or was stuck)
                    stuck.discard(me)
                runners = self.runners
                del runners[me]
                peer = self._start_batch(me) if self.ready else None
                if peer is None:
                    lead = (self.leader is None and (not runners or len(stuck) >= len(runners))  # (_free())
                            and not self.loop_done.value)
                    if lead:
                        self.leader = me
                        self.reactor.thread_id = me
                    elif self.leader is None:
                        cond.notify_all()  # the stuck runners still need somebody at the network
            if peer is None:
                return lead

    def _end(self) -> None:
        """End the loop on the leading thread (once) and wake the others."""
        with self.cond:
            if self.ended:
                return
            self.ended = True
        try:
            self.end_loop()
        finally:
            with self.cond:
                self.leader = None
                self.cond.notify_all()


class _Watchdog:
    """The process's one watchdog thread over every relay (see the module's
    docstring); started with the first relay that runs handlers."""

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.relays: set[Relay] = set()
        self.idle = True
        """Asleep until a batch starts (guarded by :attr:`cond`)."""
        self.thread: threading.Thread | None = None

    def add(self, relay: Relay) -> None:
        """Watch ``relay`` (any thread)."""
        with self.cond:
            self.relays.add(relay)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="peng3dnet watchdog", daemon=True)
                self.thread.start()

    def discard(self, relay: Relay) -> None:
        """Stop watching ``relay`` (any thread)."""
        with self.cond:
            self.relays.discard(relay)

    def running(self) -> None:
        """A relay started a batch of handlers (its runner's thread): wake
        the watchdog if it sleeps."""
        with self.cond:
            if self.idle:
                self.idle = False
                self.cond.notify()

    def _run(self) -> None:
        """The watchdog thread: :meth:`_watch`, kept alive."""
        while True:
            try:
                self._watch()
            except Exception:  # (a bug here must not leave stuck handlers unwatched for good)
                log.exception("! relay watchdog: unexpected error; watching on")

    def _watch(self) -> None:
        """Look at the relays every period while handlers run; sleep when
        none ran for a whole period."""
        seen: dict[Relay, tuple[int, dict[int, int]]] = {}
        cond = self.cond
        while True:
            with cond:
                while self.idle:
                    cond.wait()
            with cond:
                cond.wait(WATCH_PERIOD)  # (a running() meanwhile notifies: looking early is harmless)
            self._look(seen)

    def _look(self, seen: dict[Relay, tuple[int, dict[int, int]]]) -> None:
        """One look: a runner on the batch it ran at the last look is stuck
        (:meth:`Relay.take_over`); no batch run or started since the last
        look: go idle.  ``seen`` is what the last look saw, per relay."""
        cond = self.cond
        with cond:
            relays = list(self.relays)
        active = False
        for relay in relays:
            runners = dict(relay.runners)
            last = seen.get(relay)
            if runners:
                active = True
                if last is not None and any(last[1].get(t) == b for t, b in runners.items()):
                    relay.take_over(last[1])
            elif last is None or last[0] != relay.batch:
                active = True
            seen[relay] = (relay.batch, runners)
        with cond:
            for relay in list(seen):
                if relay not in self.relays:
                    del seen[relay]
            if active:
                return
            self.idle = True
            relays = list(self.relays)
        # A runner counts its batch, then reads ``idle`` (without the lock,
        # see Relay._run): it either saw True (and woke us) or counted
        # before we set it, and we see its batch now.
        if any(r.runners or r not in seen or r.batch != seen[r][0] for r in relays):
            with cond:
                self.idle = False


_WATCHDOG = _Watchdog()


def _reset_in_child() -> None:
    """A forked child has none of the parent's threads: a fresh watchdog."""
    global _WATCHDOG
    _WATCHDOG = _Watchdog()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_in_child)
