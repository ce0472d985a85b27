"""The inbox of ``process()``: decoded packets waiting for their handlers.

The network thread puts each application packet here (with the connection's
:class:`~peng3dnet.link.Link`); whichever thread calls ``process()`` takes
them out in order and runs the handlers.  Like websockets' ``Assembler``,
the inbox also owns the flow control between the two: when a connection has
``limit`` packets (or ``byte_limit`` bytes of decoded bodies) waiting,
reading from its socket pauses, and it resumes once ``process()`` brought
that connection down to half of both.  Nothing is dropped; the sender sees
TCP back-pressure.

An item is ``(link, what to call, pid, msg, size)`` (see ``plans.RecvPlan``);
``(link, None, -1, reason, 0)`` is a connection's close, queued behind the
packets that came before it.

Thread safety: :meth:`Inbox.put` and :meth:`Inbox.notify` on the network
thread; :meth:`Inbox.wait`, :meth:`Inbox.take_for` and :meth:`Inbox.done` on the
thread(s) calling ``process()``, which takes the items out of
:attr:`Inbox.items` itself (``Peer._run_batch``).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

__all__ = ["NO_LIMIT", "Inbox"]

NO_LIMIT = 1 << 62
"""A byte limit that is never reached (``net.limits.recv_queue_bytes`` 0)."""


class Inbox:
    """The queue between the network thread and ``process()``."""

    __slots__ = ("items", "_cond", "waiters", "notify_pending", "lock", "stopped", "owner", "ready", "wakes",
                 "b_in", "b_out")

    def __init__(self, owner: Any = None) -> None:
        self.items: deque[tuple[Any, Any, int, Any, int]] = deque()
        """The waiting items, oldest first: ``(link, handler, pid, msg,
        size)``; a close is ``(link, None, -1, reason, 0)``."""
        self.owner = owner
        """The peer whose packets these are."""
        self.ready: deque[Any] | None = None
        """While :attr:`owner`'s handlers are run by a relay: the relay's
        ready queue (``Relay.ready``), where every item put appends
        :attr:`owner`; else ``None``."""
        self._cond = threading.Condition(threading.Lock())
        self.waiters = 0
        """Threads waiting in :meth:`wait` (a plain attribute: tested per read)."""
        self.notify_pending = False
        """A wake-up of the waiters is scheduled (network thread)."""
        self.lock = threading.Lock()
        """Serializes :meth:`done` and its inlined copy in ``Peer._run_batch``
        (``process()`` may run on several threads)."""
        self.stopped = False
        """Set by stop(): waits return at once, process_forever() ends."""
        self.b_in = 0
        """Bytes (decoded bodies) of every packet put, all connections
        (the network thread writes it)."""
        self.b_out = 0
        """Of those, the bytes handled (written under :attr:`lock`)."""
        self.wakes = 0
        """How many times :meth:`notify` ran: a thread that looked at its
        state before waiting passes what it read to :meth:`wait`, and a
        wake-up in between is not lost."""

    # --- network thread ------------------------------------------------------------------
    def put(self, link: Any, pobj: Any, pid: int, msg: Any, limit: int, size: int = 0,
            byte_limit: int = NO_LIMIT) -> bool:
        """Queue one packet (``size``: its decoded body's bytes); return
        whether reading from ``link`` must pause now (``limit`` packets or
        ``byte_limit`` bytes wait).  (Inlined in ``Peer._on_app_packet``:
        keep the two alike.)"""
        link.n_in += 1  # the network thread is its only writer: no lock
        if size:
            link.b_in += size
            self.b_in += size
        self.items.append((link, pobj, pid, msg, size))
        ready = self.ready
        if ready is not None:
            ready.append(self.owner)
        return ((link.n_in - link.n_out >= limit or link.b_in - link.b_out >= byte_limit)
                and not link.chan.paused and self.pause(link, limit, byte_limit))

    def pause(self, link: Any, limit: int, byte_limit: int = NO_LIMIT) -> bool:
        """``link``'s queue looked full (``limit`` packets or ``byte_limit``
        bytes): pause its reading unless the handlers caught up meanwhile;
        return whether it paused (network thread; the rare path of
        :meth:`put` and of ``Peer._on_app_packet``).  Tested again and set
        under :attr:`lock`, under which :meth:`done` counts and decides to
        resume: a pause set after the last handler ran would never be
        lifted.  Reading resumes when both are down to half."""
        with self.lock:
            if ((link.n_in - link.n_out >= limit or link.b_in - link.b_out >= byte_limit)
                    and not link.chan.paused):
                link.resume_at = limit // 2
                link.b_resume_at = byte_limit // 2
                link.chan.paused = True
                return True
        return False

    def put_close(self, link: Any, reason: str | None) -> None:
        """Queue a connection's close behind its packets and wake the waiters."""
        self.items.append((link, None, -1, reason, 0))
        ready = self.ready
        if ready is not None:
            ready.append(self.owner)
        self.notify()

    @property
    def has_waiters(self) -> bool:
        """Whether a thread waits in :meth:`wait`."""
        return self.waiters > 0

    def notify(self) -> None:
        """Wake every thread waiting in :meth:`wait` (any thread)."""
        self.notify_pending = False
        with self._cond:
            self.wakes += 1
            self._cond.notify_all()

    # --- process() side ----------------------------------------------------------------------
    def wait(self, timeout: float | None, seen: int = -1) -> None:
        """Wait until something is queued, :meth:`notify`, or ``timeout``;
        with ``seen`` (:attr:`wakes` as read before the caller looked at
        what it waits for), not at all if :meth:`notify` ran since."""
        if self.items:
            return
        with self._cond:
            self.waiters += 1
            try:
                if not self.items and not self.stopped and (seen < 0 or self.wakes == seen):
                    self._cond.wait(timeout)
            finally:
                self.waiters -= 1

    def take_for(self, link: Any) -> tuple[Any, Any, int, Any, int] | None:
        """Remove and return the oldest item of ``link``, or ``None``.

        Searches a snapshot (``list()`` of a deque is one step under the
        GIL), since the network thread appends while we look and another
        ``process()`` thread may take items from the left; then removes the
        item it found by identity (``deque.remove`` tests identity first,
        and an item of another link never equals it), trying the next one
        of ``link`` when another thread took it meanwhile.
        """
        items = self.items
        for item in list(items):
            if item[0] is link:
                try:
                    items.remove(item)
                except ValueError:  # another process() thread took it
                    continue
                return item
        return None

    def done(self, link: Any, size: int = 0) -> bool:
        """One packet of ``link`` (``size`` bytes, as put) was handled;
        return whether its reading must resume."""
        with self.lock:  # (inlined in Peer._run_batch: keep the two alike)
            link.n_out += 1
            link.b_out += size
            self.b_out += size
            resume: bool = (link.chan.paused and link.n_in - link.n_out <= link.resume_at
                            and link.b_in - link.b_out <= link.b_resume_at)
            if resume:
                link.chan.paused = False
        return resume
