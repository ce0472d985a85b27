"""Leader/follower hand-over between a peer's two library threads.

A peer started the documented way (``runAsync()`` and ``process_async()``)
has two threads of ours: the network thread and the process thread.  With a
fixed split (one does the I/O, the other runs the handlers) every received
packet crosses from one thread to the other: a wake-up of a sleeping thread
on the critical path, two per round trip on each side, the larger part of a
round trip's time on loopback and most of the CPU per echo.

The relay lets the two threads swap roles instead.  At any moment at most
one of them is the *leader*, which runs the reactor (``select()``, reads,
writes, timers; :meth:`Reactor.in_loop` is true on it only), and at most one
is the *runner*, which runs handlers.  A leader that has queued packets
while nobody runs handlers lets go of the reactor and runs them itself: the
handler runs at once on the thread that read the packet, and nothing wakes
up.  The guarantees of the fixed split stay:

- handlers run one at a time, on a thread of ours that is not the network
  thread while they run (sends and state changes from it are queued to the
  leader exactly as from a program thread);
- a handler may block: a watchdog thread (one per process, for every
  relay) looks every :data:`WATCH_PERIOD` seconds and, when the same batch
  of handlers is still running since its last look, wakes the other thread
  to take the reactor over, so the network is served again within two
  periods (at once when the handler waits in the library:
  ``wait_for_connection()``, a synchronous ``call()``,
  ``process(wait=True)``, ``shutdown(join=True)`` hand the reactor over
  before waiting).  Heavy traffic then runs as the fixed split did: one
  thread reads, the other runs handlers.

The watchdog wakes only while handlers run somewhere in the process or ran
within its last period; an idle process sleeps.  The first batch after a
quiet period wakes it (one wake-up for the process), later batches do not.
The other thread of a relay sleeps until it is needed.

Only the threads made by ``runAsync()`` and ``process_async()`` take part: a
program that calls ``runBlocking()`` or ``process()``/``process_forever()``
itself keeps its loop or its handlers on its own thread.

Thread safety: every field is read and written with :attr:`Relay.cond` held
(a few are peeked at without it first, then checked again with it).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["Relay", "WATCH_PERIOD"]

WATCH_PERIOD = 0.01
"""Seconds between the watchdog's looks at a running batch of handlers: a
handler blocking outside the library holds the network for at most about
two periods before the other thread takes it over."""


class Relay:
    """The roles of a peer's two threads (see the module's docstring).

    Args:
        peer: The peer (its reactor, inbox and loop are what is shared).
    """

    __slots__ = ("peer", "cond", "enabled", "runs_handlers", "leader", "runner", "batch", "urgent", "__weakref__")

    def __init__(self, peer: Any) -> None:
        self.peer = peer
        self.cond = threading.Condition(threading.Lock())
        """Guards the fields; a follower waits on it for a role."""
        self.enabled = False
        """The network loop runs on a ``runAsync()`` thread that takes part."""
        self.runs_handlers = False
        """A ``process_async()`` thread takes part: the relay may run
        handlers (without one, packets wait for the program's ``process()``)."""
        self.leader: int | None = None
        """Ident of the thread running the reactor, or ``None``."""
        self.runner: int | None = None
        """Ident of the thread running handlers, or ``None``."""
        self.batch = 0
        """Counts the batches of handlers started (the watchdog's clock)."""
        self.urgent = False
        """The runner is stuck or waits in the library: the other thread
        takes the reactor over."""

    # --- the two threads ---------------------------------------------------------------------
    def run_network_thread(self, selector: Any) -> None:
        """The thread of ``runAsync()``: start the loop, then take turns."""
        peer = self.peer
        with self.cond:
            self.leader = threading.get_ident()
        try:
            peer._reactor.start(selector, peer._on_loop_start)
        except BaseException:
            self._end_loop()
            raise
        self._serve(leading=True)

    def run_process_thread(self) -> None:
        """The thread of ``process_async()``: take turns until the loop ends
        and nobody runs handlers any more (the caller's last drain must not
        run beside them)."""
        with self.cond:
            self.runs_handlers = True
        _WATCHDOG.add(self)
        try:
            self._serve(leading=False)
        finally:
            _WATCHDOG.discard(self)
            with self.cond:
                self.runs_handlers = False

    def before_wait(self) -> None:
        """A thread is about to wait in the library (any thread): if it is
        the runner, the reactor has no leader until the follower takes it,
        so wake the follower to take it now."""
        if self.runner != threading.get_ident():
            return
        with self.cond:
            if self.runner == threading.get_ident() and self.leader is None:
                self.urgent = True
                self.cond.notify()

    def take_over(self, batch: int) -> None:
        """The watchdog saw ``batch`` running for a whole period: wake the
        other thread to take the reactor (the watchdog thread)."""
        with self.cond:
            if self.runner is not None and self.leader is None and self.batch == batch:
                log.debug("relay: handlers of %r run for more than %.0f ms; the other thread serves the network",
                          self.peer, WATCH_PERIOD * 1000)
                self.urgent = True
                self.cond.notify()

    # --- roles -------------------------------------------------------------------------------------
    def _serve(self, leading: bool) -> None:
        """Lead, run handlers or sleep, until the loop ends."""
        cond = self.cond
        peer = self.peer
        reactor = peer._reactor
        inbox = peer._inbox
        done = peer._loop_done
        me = threading.get_ident()
        process_thread = not leading
        while True:
            if not leading:
                with cond:
                    while True:
                        if done.is_set():
                            if self.runner is None or not process_thread:
                                return
                        elif self.runner is None:
                            if inbox.items and self.runs_handlers:
                                self.runner = me
                                self.batch += 1
                                break
                            if self.leader is None:
                                leading = True
                        elif self.leader is None and self.urgent:
                            leading = True  # the runner is stuck or waits in the library
                        if leading:
                            self.leader = me
                            reactor.thread_id = me
                            self.urgent = False
                            break
                        cond.wait()
            if leading:
                if not self._lead(me):
                    return
            leading = self._run(me)

    def _lead(self, me: int) -> bool:
        """Run the reactor until packets wait and nobody runs handlers
        (then become the runner and return True) or the loop stops (end it
        and return False)."""
        peer = self.peer
        reactor = peer._reactor
        inbox = peer._inbox
        cond = self.cond
        try:
            while not reactor.stopping:
                reactor.run_once(None)
                if inbox.items and self.runs_handlers and self.runner is None:
                    with cond:
                        if self.runner is None and self.runs_handlers and not reactor.stopping:
                            self.runner = me
                            self.batch += 1
                            self.leader = None
                            reactor.thread_id = None
                        else:
                            continue
                    _WATCHDOG.running()
                    return True
        except BaseException:
            self._end_loop()
            raise
        self._end_loop()
        return False

    def _run(self, me: int) -> bool:
        """Run handlers while packets wait (the runner); return whether
        this thread leads next (nobody took the reactor meanwhile)."""
        peer = self.peer
        inbox = peer._inbox
        done = peer._loop_done
        cond = self.cond
        while True:
            lead = False
            try:
                peer._dispatching(inbox.drain, peer._dispatch)
            finally:
                with cond:
                    more = bool(inbox.items) and not done.is_set()
                    if more:
                        self.batch += 1
                    else:
                        self.runner = None
                        self.urgent = False
                        if done.is_set():
                            cond.notify_all()
                        elif self.leader is None:
                            self.leader = me
                            peer._reactor.thread_id = me
                            lead = True
            if not more:
                return lead

    def _end_loop(self) -> None:
        """End the loop on the leading thread (what ``Reactor.run``'s
        caller does at its end) and wake the other thread."""
        peer = self.peer
        reactor = peer._reactor
        try:
            peer._on_loop_exit()
        finally:
            reactor.running = False
            reactor.close()
            with self.cond:
                self.leader = None
                peer._loop_done.set()
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
        """Look at the relays every period while handlers run; sleep when
        none ran for a whole period (the watchdog thread)."""
        seen: dict[Relay, int] = {}
        cond = self.cond
        while True:
            with cond:
                while self.idle:
                    cond.wait()
            with cond:
                cond.wait(WATCH_PERIOD)  # (a running() meanwhile notifies: looking early is harmless)
                relays = list(self.relays)
            active = False
            for relay in relays:
                batch = relay.batch
                if relay.runner is not None:
                    active = True
                    if seen.get(relay) == batch and relay.leader is None:
                        relay.take_over(batch)
                elif seen.get(relay) != batch:
                    active = True
                seen[relay] = batch
            with cond:
                for relay in list(seen):
                    if relay not in self.relays:
                        del seen[relay]
                # Idle only if no batch started since the look (running() is
                # called after the batch count goes up, under this lock).
                if not active and all(r.batch == seen.get(r) for r in self.relays):
                    self.idle = True


_WATCHDOG = _Watchdog()
