"""Flow control of a peer's connections: pausing and resuming reads
(the process queue, rate limits, the inflate budget), blocking senders over
the high-water mark, and the server-wide cap on buffered bytes.

Composed into :class:`~peng3dnet.peer.Peer` (``peer._flow``); none of it is on
the per-packet path except through a check the peer makes first.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import TYPE_CHECKING, Callable

from .errors import ConnectionClosedError, WriteBufferFullError

if TYPE_CHECKING:
    from .link import Link
    from .peer import Peer

__all__ = ["Flow"]

log = logging.getLogger(__name__)


class Flow:
    """The flow control of one peer (see the module docstring)."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.dispatching = threading.local()
        """``.active`` is True on a thread while it runs ``process()``
        (handlers serve every connection: a send there must not block)."""
        self.buffered = 0
        """Bytes waiting in the write buffers of all the peer's connections
        (kept by :meth:`account`; recounted by :meth:`recount`)."""
        self.read_held = 0
        """Bytes of incomplete frames the decoders of all the peer's
        connections hold (a server's; kept by :meth:`hold_read`)."""
        self._holders: set[Link] = set()
        """The connections counted in :attr:`read_held` (network thread)."""
        self.queue_held: set[Link] = set()
        """The connections whose reading is held for
        ``net.limits.recv_queue_total`` (network thread; read on any thread)."""
        self.over_total = False
        """The process queue's bytes went over ``net.limits.recv_queue_total``
        and are not down to half yet (network thread)."""
        self.total_check_pending = False
        """A :meth:`check_queue_total` is scheduled (set on any thread)."""

    def hold_queue(self, link: Link) -> None:
        """``net.limits.recv_queue_total``: the bytes waiting for
        ``process()`` (``Inbox.b_in - Inbox.b_out``: every connection's,
        those closed since included) are over it, and ``link`` just queued
        some: stop reading from it until the total is down to half (its
        handlers lag: what it sends waits in the socket, TCP back-pressure,
        nothing lost).  A connection with nothing to queue goes on.
        Network thread, after a read that queued packets."""
        chan = link.chan
        if not self.over_total:
            self.over_total = True
            inbox = self.peer._inbox
            log.info("= %s: %d bytes wait for process() in all (net.limits.recv_queue_total %d): "
                     "reading pauses for the connections that add to them", self.peer._role,
                     inbox.b_in - inbox.b_out, self.peer._h_recv_total)
        if not chan.held and not chan.closed:
            chan.held = True
            chan.update_interest()
            self.queue_held.add(link)

    def check_queue_total(self) -> int:
        """Once the process queue's bytes are down to half of
        ``net.limits.recv_queue_total`` (or it was set to 0), read from
        the connections :meth:`hold_queue` held again.  Network thread: the
        housekeeping timer, and after a batch of handlers while any is
        held.  Returns the bytes waiting."""
        self.total_check_pending = False
        peer = self.peer
        inbox = peer._inbox
        total: int = inbox.b_in - inbox.b_out
        cap = peer._h_recv_total
        if self.over_total and total <= cap // 2:  # (0 in the config, no limit: NO_LIMIT)
            self.over_total = False
            held, self.queue_held = self.queue_held, set()
            log.debug("= %s: %d bytes wait for process() in all: reading from %d connections again",
                      peer._role, total, len(held))
            for link in held:
                link.chan.held = False
                self.resume_reading(link)
        return total

    def recount(self) -> None:
        """Count the buffered bytes exactly (the housekeeping timer)."""
        total = 0
        for link in self.peer._all_links():
            link.acct = 0 if link.chan.closed else len(link.chan.out)
            total += link.acct
        self.buffered = total

    def released(self, link: Link) -> None:
        """A connection's channel closed: its buffers are gone."""
        self.buffered -= link.acct
        link.acct = 0
        if link.held_in:
            self.read_held -= link.held_in
            link.held_in = 0
        self._holders.discard(link)
        self.queue_held.discard(link)

    def hold_read(self, link: Link, held: int, fresh: bool = False) -> None:
        """A connection's decoder now holds ``held`` bytes of an incomplete
        frame (0: none; a closed connection's are gone); ``fresh``: a frame
        was completed by the read too, so the one held began in it: keep
        the total, and hold the server-wide cap
        (``net.limits.read_buffer_total``; a client counts them for
        ``net.limits.min_read_rate`` only) (network thread)."""
        delta = held - link.held_in
        if held and (fresh or not link.held_in):
            link.held_since = time.monotonic()
        link.held_in = held
        self.read_held += delta
        if held:
            self._holders.add(link)
        else:
            self._holders.discard(link)
        cap = self.peer._h_read_total
        if delta > 0 and cap and self.read_held > cap:  # (0: off, or a client's: counted for the minimum rate)
            self.shed_reads()

    def shed_reads(self) -> int:
        """Over the server-wide cap on incomplete frames: count what each
        holder really holds now, then close the holders, the slowest
        producer first, until the rest fit; ``slowproducer`` (network
        thread).  Slow is the bytes held per second since it began holding
        them: a peer that sent most of a packet and stopped gets slower by
        the second, and so does one that trickles a byte now and then to
        look alive; a large packet arriving at speed is fast.  A
        connection we stopped reading (its process queue full, its rate
        spent, frames waiting) goes last: its slowness is ours.  Returns
        how many were closed."""
        peer = self.peer
        now = time.monotonic()
        total = 0
        ranked = []
        for link in list(self._holders):
            proto = link.proto
            held = 0 if link.chan.closed or proto.closed else proto._decoder.buffered
            link.held_in = held
            if not held:
                self._holders.discard(link)
                continue
            total += held
            chan = link.chan
            ours = bool(chan.paused or chan.throttled or chan.held or proto.frames_waiting)  # (what it sends waits in the socket)
            rate = held / max(now - link.held_since, 1e-3)
            ranked.append((ours, rate, link))
        ranked.sort(key=lambda r: (r[0], r[1]))
        cap = peer._h_read_total
        closed = 0
        for _ours, rate, link in ranked:
            if total <= cap:
                break
            held = link.held_in
            log.info("! %s cid=%s: holds %d bytes of an incomplete packet (%.0f bytes/s since it began) while "
                     "all connections hold %d (cap %d): closing it", peer._role, link.cid, held, rate, total, cap)
            total -= held
            link.held_in = 0
            self._holders.discard(link)
            closed += 1
            peer._close_link(link, "slowproducer")  # (its decoder is emptied by the close)
        self.read_held = total
        return closed

    def close_slow_producers(self, now: float, min_rate: float, grace: float) -> int:
        """Close the connections that have held an incomplete packet for
        more than ``grace`` seconds at fewer than ``min_rate`` bytes a
        second since they began (``net.limits.min_read_rate``: a peer
        trickling a byte now and then keeps the heartbeat time-out from
        closing it, and holds its place for ever); not those we stopped
        reading ourselves.  ``slowproducer`` (network thread, from the
        housekeeping; a client's too: a hostile server can trickle).
        Returns how many were closed."""
        closed = 0
        for link in list(self._holders):
            chan = link.chan
            if chan.paused or chan.throttled or chan.held or link.proto.frames_waiting:
                link.held_since = now  # (its slowness is ours: its clock starts again when we read again)
                continue
            age = now - link.held_since
            if age <= grace or link.held_in >= min_rate * age or chan.closed or link.proto.closed:
                continue
            log.info("! %s cid=%s: %d bytes of an incomplete packet in %.1f s (net.limits.min_read_rate %g): "
                     "closing it", self.peer._role, link.cid, link.held_in, age, min_rate)
            closed += 1
            self.peer._close_link(link, "slowproducer")
        return closed

    def frames_held(self, link: Link) -> None:
        """The core holds frames back, and the process queue has room (or
        they are packets nobody queues): no read event will come for them.
        Over the decompression budget (``"throttle"``), wait until it is
        refilled; else go on at once (network thread)."""
        peer = self.peer
        if link.chan.held:
            return  # check_queue_total() resumes it
        if not peer._h_inline and (link.n_in - link.n_out >= peer._h_recv_queue
                                   or link.b_in - link.b_out >= peer._h_recv_bytes):
            # The queue is full although reading was not paused (its limits
            # were lowered below what waits): pause until process() makes
            # room; going on would find no room again, and again (a spin).
            if peer._inbox.pause(link, peer._h_recv_queue, peer._h_recv_bytes):
                link.chan.update_interest()
                return
        budget = link.proto.inflate_budget
        wait = peer._throttled_for(link)
        if link.proto.inflate_action == "hold" and budget is not None and budget <= 0 and peer._h_inflate:
            wait = max(wait, (1 - budget) / peer._h_inflate_rate)
        if wait > 0:
            self.throttle(link, wait)
        else:
            peer._reactor.call_soon(self.resume_reading, link)

    def throttle(self, link: Link, delay: float) -> None:
        """Pause reading from a connection for ``delay`` seconds: a rate
        limit with the ``"throttle"`` action (network thread).  The sender
        feels TCP back-pressure; nothing is lost."""
        peer = self.peer
        chan = link.chan
        if chan.throttled or chan.closed:
            return
        chan.throttled = True
        chan.update_interest()
        log.debug("= %s cid=%s: over a rate limit, reading paused for %.3f s", peer._role, link.cid, delay)
        peer._reactor.call_later(delay, functools.partial(self._unthrottle, link))

    def _unthrottle(self, link: Link) -> None:
        link.chan.throttled = False
        self.resume_reading(link)

    def resume_reading(self, link: Link) -> None:
        """``process()`` made room, a throttle ended, or :meth:`Peer._read`
        asked: hand on the frames the core held back, then read again
        (network thread)."""
        peer = self.peer
        chan = link.chan
        proto = link.proto
        if chan.closed:
            return
        link.held_at = time.monotonic()  # held until now: silence counts from here (Peer._housekeeping)
        if proto.frames_waiting and not chan.paused and not chan.throttled and not chan.held and not proto.closed:
            now = time.monotonic()  # one clock reading for every bucket
            if peer._h_inflate:
                peer._refill_inflate(link, now)
            with chan.lock:
                quota = proto.packet_quota = peer._read_quota(link, now)
                proto.byte_quota = peer._byte_quota(link)
                proto.receive_data(b"")
                outs = proto.drain_received()
                if proto.has_data_to_send:
                    peer._push(link)
            # The packets are charged now (their bytes were, when read).
            if peer._h_rate_reads and not peer._read_allowed(link, 0, outs, quota - proto.packet_quota, now):
                outs = []
            if outs:
                peer._handle_outputs(link, outs)
            if proto.frames_waiting and not chan.paused and not chan.closed:
                self.frames_held(link)
                return
        chan.update_interest()

    def may_block(self) -> bool:
        """Whether a send may wait for a full buffer to drain: only on a
        program thread outside ``process()`` (not the network thread, which
        would wait for itself, nor the process thread or any thread running
        handlers, which serve every connection)."""
        peer = self.peer
        return (not peer._reactor.in_loop() and threading.current_thread() is not peer._process_thread
                and not getattr(self.dispatching, "active", False))

    def wait_drained(self, link: Link, poll: Callable[[float | None], bool] | None = None) -> None:
        """Block (channel lock held; it is released while waiting) until the
        write buffer is down to half the high-water mark
        (``net.limits.write_buffer_block``), for at most ``net.timeout.send``
        seconds (0: no limit): lossless flow control for a program thread that sends
        faster than the peer reads.

        ``poll``: on the polling thread (poll mode), where nobody else does
        the I/O we wait for, each wait is ``poll(seconds or None)`` instead
        (a round of network I/O, and the handlers of the other peers that
        thread polls, not the sender's; the channel lock is re-entered by
        it), which returns ``False`` when the loop has ended.

        Raises:
            WriteBufferFullError: Still over the mark after the timeout.
            ConnectionClosedError: The connection closed (or, polling, the
                loop ended) meanwhile.
        """
        peer = self.peer
        chan = link.chan
        timeout = float(peer.cfg["net.timeout.send"])
        deadline = time.monotonic() + timeout if timeout > 0 else None  # (0: no limit)
        chan.low_water = peer._h_write_block // 2
        chan.drain_waiters += 1
        ended = False
        try:
            while len(chan.out) > chan.low_water and not chan.closed and not link.proto.closed:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise WriteBufferFullError(
                        f"cid={link.cid}: {len(chan.out)} bytes still wait to be sent after {timeout} s "
                        "(net.timeout.send); the peer does not read"
                    )
                if poll is None:
                    chan.drained.wait(left)
                elif not poll(left):
                    ended = True
                    break
        finally:
            chan.drain_waiters -= 1
        if link.proto.closed or chan.closed or ended:
            raise ConnectionClosedError("connection closed while waiting to send", link.proto.close_reason)

    def account(self, link: Link) -> None:
        """Keep the peer's total of buffered bytes (:attr:`buffered`) up to date
        for one connection whose buffer is or was non-empty (channel lock
        held; any thread), and hold the server-wide cap
        (``net.limits.write_buffer_total``).  Only backlogged connections
        pay for this; the total may drift (writes from several threads,
        corked flushes), so :meth:`shed` recounts before it acts and the
        housekeeping recounts every second."""
        peer = self.peer
        size = len(link.chan.out)
        delta = size - link.acct
        if delta:
            link.acct = size
            self.buffered += delta
            if delta > 0 and self.buffered > peer._h_write_total:
                self.shed()

    def shed(self) -> int:
        """Over the server-wide cap: close the connections with the largest
        buffers ("slowconsumer") until the rest fit (any thread); return how
        many were closed."""
        peer = self.peer
        links = [link for link in peer._all_links() if not link.chan.closed and not link.local_closed]
        sizes = sorted(((len(link.chan.out), i) for i, link in enumerate(links)), reverse=True)
        total = sum(size for size, _ in sizes)
        self.buffered = total
        closed = 0
        for link in links:
            link.acct = len(link.chan.out)
        for size, i in sizes:
            if total <= peer._h_write_total or size == 0:
                break
            link = links[i]
            if link.proto.closed:
                # Closing already (the core queued a closeconn with its reason,
                # which must stay: no drop here): its buffer goes with it.
                total -= size
                link.acct = 0
                continue
            log.info("! %s cid=%s: %d bytes queued while all connections hold %d (cap %d): closing the largest",
                     peer._role, link.cid, size, total, peer._h_write_total)
            total -= size
            link.acct = 0
            link.shed = True  # (from now on, its writers queue nothing more: see Peer._send_frame)
            closed += 1
            # Its backlog goes now if its lock is free (or ours: the lock is
            # reentrant), so the others may fill up to the cap meanwhile
            # without the total held in memory passing it; never waiting for
            # it: the caller holds its own channel's lock, and two threads
            # shedding at once must not wait for each other's.
            lock = link.chan.lock
            if lock.acquire(blocking=False):
                try:
                    if not link.proto.closed:  # (closed by another thread since the look above: its closeconn stays)
                        link.chan.drop_unsent()
                finally:
                    lock.release()
            # The close on the network thread, later (close_slow takes the lock).
            peer._reactor.call_soon(self.close_slow, link)
        self.buffered = total
        return closed

    def close_slow(self, link: Link) -> None:
        """Close a peer that does not read (any thread).  What is queued
        cannot be delivered, so it is dropped at once (its memory with it),
        except the frame partly sent; the ``closeconn`` goes right behind
        that frame, so a peer that reads again learns why (``slowconsumer``),
        and the close linger (``CLOSE_LINGER``) bounds the wait for it."""
        peer = self.peer
        chan = link.chan
        with chan.lock:
            if link.proto.closed:  # closed meanwhile (twice scheduled): its closeconn must stay
                return
            dropped = chan.drop_unsent()
            if link.acct:
                self.account(link)
        log.debug("= %s cid=%s: dropped %d unsent bytes", peer._role, link.cid, dropped)
        peer._close_link(link, "slowconsumer")
