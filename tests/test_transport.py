"""The reactor's cross-thread wake-up and its per-iteration hooks."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator

from peng3dnet.transport import EVENT_READ, Channel, Reactor


class _RacingSocket:
    """Wraps the wake-up socket: the first recv() lets another thread's
    wake() happen in the middle of the drain (the interleaving that once
    silenced every later wake())."""

    def __init__(self, sock: socket.socket, reactor: Reactor) -> None:
        self.sock = sock
        self.reactor = reactor
        self.raced = False

    def recv(self, n: int) -> bytes:
        data = self.sock.recv(n)
        if not self.raced:
            self.raced = True
            self.reactor.wake()  # "another thread" calls wake() mid-drain
        return data


@contextlib.contextmanager
def _running(on_start: Callable[[Reactor], None] = lambda r: None) -> Iterator[tuple[Reactor, threading.Thread]]:
    """A reactor running on its own thread (``on_start(reactor)`` first
    there); stopped and closed afterwards."""
    r = Reactor("test")
    started = threading.Event()

    def start() -> None:
        on_start(r)
        started.set()

    t = threading.Thread(target=r.run, args=(selectors.DefaultSelector, start))
    t.start()
    try:
        assert started.wait(10)
        yield r, t
    finally:
        r.stop()
        t.join(10)
        r.close()


def _pending_bytes(sock: socket.socket) -> int:
    sock.setblocking(False)
    try:
        return len(sock.recv(4096))
    except BlockingIOError:
        return 0


def test_a_wake_during_the_drain_does_not_silence_later_wakes():
    r = Reactor("test")
    r._wake_r, r._wake_w = socket.socketpair()
    r._wake_r.setblocking(False)
    try:
        r.wake()  # the flag is set and one byte is in flight
        real = r._wake_r
        r._wake_r = _RacingSocket(real, r)  # type: ignore[assignment]
        r._on_wake(EVENT_READ)
        r._wake_r = real
        # Invariant: while the flag says "a wake is pending", a byte is there
        # to wake select(); so after the drain a new wake() must send one.
        if r._wake_pending:
            assert _pending_bytes(real) > 0, "flag set but no byte: later wakes would be lost"
        else:
            r.wake()
            assert _pending_bytes(real) == 1
    finally:
        r._wake_r.close()
        r._wake_w.close()


def test_after_io_runs_once_all_sockets_of_the_select_were_handled():
    pairs = [socket.socketpair() for _ in range(2)]
    order: list[str] = []
    done = threading.Event()

    def on_start(r: Reactor) -> None:
        def after() -> None:
            order.append("after")
            done.set()

        for i, (a, _) in enumerate(pairs):
            a.setblocking(False)

            def cb(mask: int, i: int = i, a: socket.socket = a) -> None:
                a.recv(16)
                order.append(f"io{i}")
                if len(order) == 1:  # the first callback of the iteration asks for the hook
                    r.after_io(after)

            r.register(a, EVENT_READ, cb)
        for _, b in pairs:  # both readable before the first select()
            b.send(b"x")

    try:
        with _running(on_start):
            assert done.wait(10)
        # One select() returned both sockets: the hook ran after both, once.
        assert sorted(order[:2]) == ["io0", "io1"]
        assert order[2:] == ["after"]
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_after_io_asked_for_by_a_queued_call_runs_before_select_blocks():
    ran = threading.Event()
    with _running() as (r, _):
        # Nothing else will ever wake this loop: the hook must not wait for
        # the next select() (it has no timeout here).
        r.call_soon(lambda: r.after_io(ran.set))
        assert ran.wait(5), "the after-I/O hook waited for an event that never came"


def test_lone_writes_go_out_bursts_are_corked_fan_out_writes_are_not():
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        with _running() as (r, _):
            chans = []
            for a, b in pairs:
                a.setblocking(False)
                b.settimeout(5)
                chans.append(Channel(a, r, lambda mask: None))
            corked, direct = chans
            r.last_write = 0.0  # no burst under way: a lone message goes out at once
            with corked.lock:
                corked.write(b"lone")
                assert not corked.out
            assert pairs[0][1].recv(16) == b"lone"
            r.last_write = time.monotonic()  # another thread's write just ended: a burst
            with corked.lock:  # the network thread cannot flush while we look
                corked.write(b"corked")
                assert bytes(corked.out) == b"corked"  # buffered for the network thread
            with direct.lock:
                r.last_write = time.monotonic()
                direct.write(b"direct", cork=False)
                assert not direct.out  # sent at once
            assert pairs[1][1].recv(16) == b"direct"
            assert pairs[0][1].recv(16) == b"corked"  # ... and the network thread flushed it
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_call_at_keeps_the_order_of_equal_due_times():
    order: list[int] = []
    done = threading.Event()
    with _running() as (r, _):
        when = time.monotonic() + 0.05
        for i in range(20):
            r.call_at(when, lambda i=i: order.append(i))
        r.call_at(when - 0.01, lambda: order.append(-1))  # earlier: first, though asked for last
        r.call_at(when, done.set)
        assert done.wait(10)
    assert order == [-1, *range(20)]
