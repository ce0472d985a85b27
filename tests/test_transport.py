"""The reactor's cross-thread wake-up and its per-iteration hooks; UDP
datagrams; the listener, connect and channel pieces the lag proxy uses."""

from __future__ import annotations

import contextlib
import selectors
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

import pytest

from peng3dnet.errors import NetworkError
from peng3dnet.transport import EVENT_READ, Channel, Datagram, Listener, Reactor, connect


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
    r._selecting = True  # a thread is in select()
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


def test_a_wake_with_nobody_in_select_writes_nothing_and_the_next_round_does_not_block():
    r = Reactor("test")
    ran: list[str] = []
    r.start(selectors.DefaultSelector, lambda: None)
    try:
        assert r._wake_r is not None
        r.thread_id = None  # the network thread is between rounds (a relay's runner, a poll() loop)
        r.call_soon(ran.append, "call")  # wakes nobody: no thread is in select()
        assert _pending_bytes(r._wake_r) == 0 and not r._wake_pending
        r.thread_id = threading.get_ident()
        t0 = time.monotonic()
        r.run_once(10)  # would wait out the 10 s if it did not look at the calls first
        assert ran == ["call"] and time.monotonic() - t0 < 5
        r._selecting = True  # as run_once() sets it while in select()
        r.wake()
        assert _pending_bytes(r._wake_r) == 1 and r._wake_pending
        r._selecting = False
    finally:
        r.close()


def test_a_call_queued_right_after_the_round_looked_at_its_calls_still_wakes_it():
    """The race the flag's order closes: another thread queues a call just
    after run_once() found none (it will block) and before it is in
    select(); the waker must see the flag already set and write its byte."""
    r = Reactor("test")
    ran: list[str] = []
    r.start(selectors.DefaultSelector, lambda: None)

    class RacingCalls(deque):  # type: ignore[type-arg]
        armed = True

        def __bool__(self) -> bool:
            empty = len(self) == 0
            if empty and self.armed:
                self.armed = False
                t = threading.Thread(target=r.call_soon, args=(ran.append, "late"))
                t.start()
                t.join(10)
            return not empty  # the answer from before the other thread's call

    r._calls = RacingCalls()  # type: ignore[assignment]
    try:
        t0 = time.monotonic()
        r.run_once(10)  # selects (no calls seen); the late call's wake-up must end the wait
        r.run_once(0)  # (if the wake-up came in the first round, its call may run in this one)
        assert ran == ["late"] and time.monotonic() - t0 < 5, "the late call's wake-up was lost"
    finally:
        r.close()


def test_calls_from_another_thread_wake_the_loop_whether_or_not_it_is_in_select():
    """200 calls from another thread, each waited for: the loop blocks in
    select() between them, and each call's wake-up must end that wait."""
    r = Reactor("test")
    started = threading.Event()
    stop = False

    def loop() -> None:
        r.start(selectors.DefaultSelector, started.set)
        while not stop:
            r.run_once(None)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        assert started.wait(10)
        for i in range(200):
            ev = threading.Event()
            r.call_soon(ev.set)
            assert ev.wait(10), f"call {i} never ran: a wake-up was lost"
    finally:
        stop = True
        r.stop()
        t.join(10)
        r.close()
    assert not t.is_alive()


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
            corked.last_write = 0.0  # no burst under way: a lone message goes out at once
            with corked.lock:
                corked.write(b"lone")
                assert not corked.out
            assert pairs[0][1].recv(16) == b"lone"
            corked.last_write = time.monotonic()  # another thread's write to it just ended: a burst
            with corked.lock:  # the network thread cannot flush while we look
                corked.write(b"corked")
                assert bytes(corked.out) == b"corked"  # buffered for the network thread
            with direct.lock:
                direct.last_write = time.monotonic()
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


# --- Datagram (UDP) -------------------------------------------------------------------------


@contextlib.contextmanager
def _datagrams(*kwargs: dict) -> Iterator[list[Datagram]]:
    socks = [Datagram(**kw) for kw in kwargs]
    try:
        yield socks
    finally:
        for d in socks:
            d.close()


def test_datagram_round_trip_with_the_senders_address():
    with _datagrams({"host": "127.0.0.1"}, {"host": "127.0.0.1"}) as (a, b):
        assert a.addr[0] == "127.0.0.1" and a.addr[1] > 0 and a.addr != b.addr
        assert a.send_to(b"hello", b.addr) is True
        assert b.recv_from(64, timeout=5) == (b"hello", a.addr)
        assert b.send_to(b"back", a.addr)
        assert a.recv_from(64, timeout=5) == (b"back", b.addr)


def test_datagram_recv_from_is_bounded_and_does_not_wait_unless_asked():
    with _datagrams({"host": "127.0.0.1"}, {"host": "127.0.0.1"}) as (a, b):
        assert b.recv_from(64) is None  # nothing waiting: at once
        t0 = time.monotonic()
        assert b.recv_from(64, timeout=0.05) is None  # nothing came within the timeout
        assert time.monotonic() - t0 >= 0.04
        a.send_to(b"x" * 100, b.addr)
        data, _ = b.recv_from(10, timeout=5)
        assert data == b"x" * 10  # cut at max_bytes, the rest discarded
        assert b.recv_from(64) is None
        assert not b.sock.getblocking()  # a wait leaves it non-blocking, as it was
        a.send_to(b"after", b.addr)
        assert b.recv_from(64, timeout=5) == (b"after", a.addr)
        with pytest.raises(ValueError):
            b.recv_from(0)


def test_datagram_unbound_gets_a_port_at_its_first_send():
    with _datagrams({}, {"host": "127.0.0.1"}) as (a, b):
        assert a.addr[1] == 0
        assert a.send_to(b"q", b.addr)
        data, src = b.recv_from(64, timeout=5)
        assert data == b"q" and src[1] > 0
        b.send_to(b"a", src)
        assert a.recv_from(64, timeout=5) == (b"a", b.addr)


def test_datagram_options_and_bind_errors():
    with _datagrams({"host": "127.0.0.1", "reuseaddr": True}, {"broadcast": True}, {}) as (r, bc, plain):
        assert r.sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        assert bc.sock.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST)
        assert not plain.sock.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST)
        assert not plain.sock.getblocking()
        with pytest.raises(NetworkError, match="bind"):
            Datagram("127.0.0.1", r.addr[1])  # taken, and this one does not reuse it
        if sys.platform.startswith("linux"):  # both reuse it: UDP lets them share the port
            with _datagrams({"host": "127.0.0.1", "port": r.addr[1], "reuseaddr": True}) as (r2,):
                assert r2.addr == r.addr


def test_datagram_registered_with_a_reactor_is_served_on_its_thread():
    got: list[tuple[bytes, int]] = []
    done = threading.Event()
    with _datagrams({"host": "127.0.0.1"}, {"host": "127.0.0.1"}) as (a, b):

        def on_read(mask: int) -> None:
            while (item := b.recv_from(64)) is not None:  # drain: non-blocking
                got.append((item[0], threading.get_ident()))
                b.send_to(item[0].upper(), item[1])
            if len(got) == 3:
                done.set()

        with _running(lambda r: r.register(b.sock, EVENT_READ, on_read)) as (r, t):
            for word in (b"one", b"two", b"three"):
                a.send_to(word, b.addr)
            assert done.wait(10)
            replies = {a.recv_from(64, timeout=5)[0] for _ in range(3)}
        assert sorted(w for w, _ in got) == [b"one", b"three", b"two"]
        assert {tid for _, tid in got} == {t.ident}
        assert replies == {b"ONE", b"TWO", b"THREE"}
    b.close()  # idempotent
    assert b.fileno() == -1
    with pytest.raises(NetworkError, match="recvfrom"):  # an OSError surfaces mapped
        b.recv_from(64)
    with pytest.raises(NetworkError, match="sendto"):
        b.send_to(b"x", a.addr)


# --- Listener, connect, Channel: what the lag proxy is built from -----------------------------


def test_accepted_channel_half_closes_and_keeps_reading():
    listener = Listener("127.0.0.1", 0)
    accepted: list[Channel] = []
    eof = threading.Event()
    received = bytearray()

    def on_start(r: Reactor) -> None:
        def on_ready(mask: int) -> None:
            ch = accepted[0]
            with ch.lock:
                n = ch.read_into(r.read_buffer)
            if n > 0:
                received.extend(r.read_buffer[:n])
            elif n == 0:  # the client's EOF: read no more
                ch.paused = True
                ch.update_interest()
                eof.set()

        def on_accept(mask: int) -> None:
            for sock, _ in listener.accept_waiting():
                ch = Channel(sock, r, on_ready)
                accepted.append(ch)
                with ch.lock:
                    ch.write(b"hello")
                ch.shutdown_write()  # nothing more from us, but we still read
                ch.update_interest()

        r.register(listener.sock, EVENT_READ, on_accept)

    client = connect(listener.addr, timeout=5)
    try:
        # connect() prepares its socket as accept_waiting() does: non-blocking, no Nagle
        assert not client.getblocking() and client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        with _running(on_start) as (r, _):
            client.settimeout(5)
            data = b""
            while chunk := client.recv(64):
                data += chunk
            assert data == b"hello"  # then EOF: the server's half-close
            client.sendall(b"still open")
            client.shutdown(socket.SHUT_WR)
            assert eof.wait(10)
            assert bytes(received) == b"still open"
            assert accepted[0].mask == 0  # paused with nothing to send: unregistered
            r.call_soon(accepted[0].close)
    finally:
        client.close()
        listener.close()


# --- Channel.drop_unsent: the slow consumer's last write ------------------------------------

@pytest.mark.parametrize("size", [10, 3000, 70_000])
def test_drop_unsent_keeps_whole_frames_and_what_follows_is_next(size):
    from peng3dnet.protocol.framing import FrameDecoder, encode_frame
    from peng3dnet.transport import MARK_GAP

    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    chan = Channel(a, Reactor("t"), lambda mask: None)
    frames = [encode_frame(64, 0, bytes([i % 251]) * size) for i in range(3000 if size < 1000 else 200)]
    with chan.lock:
        for f in frames:
            chan.write(f)
        assert chan.out, "the socket buffer should be full"
        queued = len(chan.out)
        dropped = chan.drop_unsent()
        assert 0 < dropped <= queued
        assert len(chan.out) <= MARK_GAP + size + 6  # the frame partly sent and at most MARK_GAP more
        last = encode_frame(16, 0, b"\x81\xa6reason\xacslowconsumer")
        chan.write(last)
    got, dec = [], FrameDecoder(1 << 20)
    while True:
        with chan.lock:
            empty = chan.flush()
        try:
            data = b.recv(1 << 20)
        except BlockingIOError:
            data = b""
        dec.feed(data, got)
        if empty and not data:
            break
    bodies = [body for pid, flags, body in got]
    assert got[-1][0] == 16 and bodies[-1] == b"\x81\xa6reason\xacslowconsumer"
    n = len(got) - 1
    assert [encode_frame(pid, flags, body) for pid, flags, body in got[:-1]] == frames[:n]  # whole, in order
    a.close()
    b.close()


def test_drop_unsent_with_nothing_queued_drops_nothing():
    a, b = socket.socketpair()
    a.setblocking(False)
    chan = Channel(a, Reactor("t"), lambda mask: None)
    with chan.lock:
        chan.write(b"\0\0\0\x06\0\x40\0\0\0\0")
        assert chan.drop_unsent() == 0 and not chan.out
    assert b.recv(100) == b"\0\0\0\x06\0\x40\0\0\0\0"
    a.close()
    b.close()


def _raise_exit() -> None:
    raise SystemExit(5)


@pytest.mark.parametrize("site", ["call", "timer", "after_io", "io callback", "io callback (poll selector)"])
@pytest.mark.parametrize("answer", [None, False, True])
def test_a_base_exception_ends_the_round_unless_contain_deals_with_it(site, answer):
    r = Reactor("test")
    r.start(selectors.PollSelector if "poll" in site else selectors.DefaultSelector, lambda: None)
    a, b = socket.socketpair()
    seen: list[BaseException] = []
    ran_after: list[str] = []
    try:
        if answer is not None:
            def contain(exc: BaseException) -> bool:
                seen.append(exc)
                return answer
            r.contain = contain
        if site == "call":
            r.call_soon(_raise_exit)
            r.call_soon(ran_after.append, "next call")
        elif site == "timer":
            r.call_at(0.0, _raise_exit)
        elif site == "after_io":
            r.after_io(_raise_exit)
        else:
            r.register(a, selectors.EVENT_READ, lambda mask: _raise_exit())
            b.send(b"x")
        rounds = 2 if site == "timer" else 1  # (a timer is added by a queued call first)
        if answer:
            for _ in range(rounds):
                r.run_once(1.0)
            assert len(seen) == 1 and isinstance(seen[0], SystemExit) and seen[0].code == 5
            if site == "call":
                assert ran_after == ["next call"]  # the round went on
        else:
            with pytest.raises(SystemExit):
                for _ in range(rounds):
                    r.run_once(1.0)
            assert len(seen) == (1 if answer is False else 0)
    finally:
        r.unregister(a)
        a.close()
        b.close()
        r.close()
