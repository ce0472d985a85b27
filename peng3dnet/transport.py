"""Sockets and the selector loop: the only module of the connection layer
that makes socket calls (the layering test enforces it).

Theory of operation
-------------------
A :class:`Reactor` owns one selector and runs it on one thread (the network
thread).  Other threads talk to it only through :meth:`Reactor.call_soon`,
which queues a callable and wakes the selector through a ``socketpair()``
(one byte per batch of calls, never a polling sleep).  Timers
(:meth:`Reactor.call_later`) bound the ``select()`` timeout.

A :class:`Channel` is one connected socket with its outgoing buffer and its
lock.  A write first tries ``send()`` directly (from whatever thread sends);
what the kernel does not take is buffered, and ``EVENT_WRITE`` is registered
only while the buffer is non-empty.  Reading is paused (the socket
unregistered for ``EVENT_READ``) when the application asks for back-pressure.

Connections are made here too: :class:`Listener` binds, listens and
accepts; :func:`connect` connects (and wraps in TLS); :func:`prepare`
readies an accepted or connected socket.  :class:`Datagram` is a UDP socket
(LAN discovery); the lag proxy (a test tool) uses :class:`Listener`,
:func:`connect` and :class:`Channel` like the peers do.

An :class:`OSError` from a socket is mapped to the library's errors in one
place, :func:`map_oserror`: a failed ``recv()`` raises
:class:`~peng3dnet.errors.NetworkError` (or :class:`~peng3dnet.errors.TLSError`)
with its close reason; a failed ``send()`` is stored on the channel and the
channel is closed by the network thread (reason ``socketerror``); "try again
later" errors (:data:`WOULD_BLOCK`, TLS included) are never errors.  The
transport never looks at payloads.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import itertools
import logging
import math
import select
import selectors
import socket
import ssl
import sys
import threading
import time
import types
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from ._mypyc import caused
from .errors import InvalidAddressError, NetworkError, TLSError

__all__ = ["Reactor", "EpollSelector", "Channel", "Timer", "Listener", "Datagram", "WOULD_BLOCK", "connect", "prepare", "map_oserror", "frame_selves"]

log = logging.getLogger(__name__)

_WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
TLS_SEND_MAX = 16384
"""Bytes passed to one TLS ``send()``: one record (see :attr:`Channel.tls_chunk`)."""
"""Exceptions meaning "try again later" on a non-blocking (TLS) socket."""

CORK_GAP = 20e-6
MARK_GAP = 64 * 1024  # bytes between the frame boundaries a Channel remembers (see Channel.drop_unsent)
"""Seconds: a write from another thread starting sooner than this after the
previous one ended is buffered for the network thread (see Channel.write)."""

EVENT_READ = selectors.EVENT_READ
_get_ident = threading.get_ident
EVENT_WRITE = selectors.EVENT_WRITE
_NOT_EPOLLIN = ~getattr(select, "EPOLLIN", 0)
_NOT_EPOLLOUT = ~getattr(select, "EPOLLOUT", 0)


class Timer:
    """A scheduled call; :meth:`cancel` it to prevent it from running."""

    __slots__ = ("when", "fn", "cancelled")

    def __init__(self, when: float, fn: Callable[[], Any]) -> None:
        self.when = when
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        """Prevent the call (any thread); what it would have called is
        released at once (the heap entry stays until its time)."""
        self.cancelled = True
        self.fn = _nothing


_LINGER_RESET = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # struct linger {l_onoff=1, l_linger=0}


class EpollSelector(selectors.BaseSelector):
    """``selectors.EpollSelector``'s behaviour, with its poll and its
    fd-to-key map public: :class:`Reactor` calls :attr:`poll` itself and
    maps the events inline (the stdlib's ``select()`` is Python code run
    once per round).  :meth:`Reactor.start` uses it in place of
    ``selectors.EpollSelector`` (``DefaultSelector`` on Linux).

    Thread safety: like any selector, the network thread's (or before the
    loop runs).
    """

    def fileno(self) -> int:
        """The epoll descriptor: readable while an event is pending (poll
        mode waits on several reactors' selectors at once with it)."""
        return self._epoll.fileno()

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self.keys: dict[int, selectors.SelectorKey] = {}
        """File descriptor -> key of every registered file object."""
        self.poll = self._epoll.poll
        """``epoll.poll(timeout, maxevents)``: ``(fd, epoll mask)`` pairs."""
        self._closed = False

    def _fd(self, fileobj: Any) -> int:
        """The descriptor of ``fileobj``; a closed socket (or any object
        without a descriptor) is found among the keys by identity, as the
        stdlib does.  Raises ValueError when it is not there either."""
        try:
            return _fileobj_to_fd(fileobj)
        except ValueError:
            for key in self.keys.values():
                if key.fileobj is fileobj:
                    return key.fd
            raise

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        """Watch ``fileobj`` (a socket or a descriptor) for ``events``
        (``EVENT_READ``, ``EVENT_WRITE`` or both); return its key.  Raises
        ValueError (bad events, no descriptor) or KeyError (registered)."""
        if not events or events & ~(EVENT_READ | EVENT_WRITE):
            raise ValueError(f"Invalid events: {events!r}")
        fd = _fileobj_to_fd(fileobj)
        if fd in self.keys:
            raise KeyError(f"{fileobj!r} (FD {fd}) is already registered")
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._epoll.register(fd, _epoll_mask(events))
        self.keys[fd] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        """Stop watching ``fileobj`` (closed already is fine); return its key.
        Raises KeyError when it is not registered."""
        try:
            key = self.keys.pop(self._fd(fileobj))
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None
        with contextlib.suppress(OSError):  # (closed already: the kernel forgot it)
            self._epoll.unregister(key.fd)
        return key

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        """Change what ``fileobj`` is watched for and its data; return the
        new key.  Raises KeyError when it is not registered."""
        try:
            key = self.keys[self._fd(fileobj)]
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None
        if events != key.events:
            try:
                self._epoll.modify(key.fd, _epoll_mask(events))
            except BaseException:
                self.unregister(fileobj)  # (as the stdlib does)
                raise
        key = selectors.SelectorKey(key.fileobj, key.fd, events, data)
        self.keys[key.fd] = key
        return key

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        """Wait at most ``timeout`` seconds (``None``: no limit) for events;
        return ``(key, events)`` pairs (:class:`Reactor` polls itself)."""
        ready = []
        for fd, event in self.poll(-1 if timeout is None else max(timeout, 0), len(self.keys) or 1):
            key = self.keys.get(fd)
            if key is not None:
                mask = (EVENT_WRITE if event & _NOT_EPOLLIN else 0) | (EVENT_READ if event & _NOT_EPOLLOUT else 0)
                ready.append((key, mask & key.events))
        return ready

    def get_map(self) -> Any:
        """A read-only mapping descriptor -> key (``None`` once closed)."""
        return None if self._closed else types.MappingProxyType(self.keys)

    def close(self) -> None:
        """Release the epoll object and forget every key."""
        self._closed = True
        self._epoll.close()
        self.keys.clear()


def _fileobj_to_fd(fileobj: Any) -> int:
    """A file object's descriptor (an int is one), as the stdlib's selectors
    find it.  Raises ValueError for an object without one or a closed one."""
    if isinstance(fileobj, int):
        fd = fileobj
    else:
        try:
            fd = int(fileobj.fileno())
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"Invalid file object: {fileobj!r}") from None
    if fd < 0:
        raise ValueError(f"Invalid file descriptor: {fd}")
    return fd


def _epoll_mask(events: int) -> int:
    return (select.EPOLLIN if events & EVENT_READ else 0) | (select.EPOLLOUT if events & EVENT_WRITE else 0)


class Reactor:
    """A selector loop with cross-thread calls and timers.

    Args:
        name: Used in log messages.

    Thread safety: :meth:`call_soon`, :meth:`call_later`, :meth:`wake` and
    :meth:`stop` from any thread; everything else on the network thread.
    """

    def __init__(self, name: str = "peng3dnet") -> None:
        self.name = name
        self.selector: selectors.BaseSelector | None = None
        self._epoll: Callable[[float, int], list[tuple[int, int]]] | None = None
        """With :class:`EpollSelector` (what ``selectors.EpollSelector``,
        the default on Linux, is replaced by), its ``epoll.poll``, called
        directly by :meth:`run_once` (with :attr:`_fd_keys`, the selector's
        fd-to-key map): a selector's Python ``select()`` was a tenth of a
        round trip's bytecodes.  ``None`` for other selectors."""
        self._fd_keys: dict[int, selectors.SelectorKey] = {}
        # The wake-up pair exists only while run() does (nothing to wake before).
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._wake_pending = False
        self._selecting = False
        """A thread is in (or about to enter) ``select()``: only then does
        :meth:`wake` need to write its byte (see :meth:`run_once`)."""
        self._calls: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._after_io: list[Callable[[], Any]] = []
        self._timers: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self.thread_id: int | None = None
        """Ident of the thread running :meth:`run`, ``None`` when not running."""
        self.running = False
        """Whether :meth:`run` is executing."""
        self.stopping = False
        """Whether :meth:`stop` was asked for (set by it; read it, do not set it)."""
        self.closed = False
        self.read_buffer = bytearray(256 * 1024)
        """Scratch buffer for ``recv_into`` (network thread only)."""
        self.read_view = memoryview(self.read_buffer)
        """A view of :attr:`read_buffer`, to slice without copying."""
        self.contain: Callable[[BaseException], bool] | None = None
        """Asked (network thread) when a callback, call or timer raised a
        BaseException that is not an Exception (``SystemExit``...): return
        true when it was dealt with and the loop goes on; by default (or
        false) it ends the loop.  A :class:`~peng3dnet.client.NetworkLoop`
        stops only the client it came from."""

    # --- cross-thread ------------------------------------------------------------------
    def in_loop(self) -> bool:
        """Whether the caller runs on the network thread."""
        return self.thread_id == threading.get_ident()

    def wake(self) -> None:
        """Make a blocked ``select()`` return (coalesced; any thread).

        When no thread is in ``select()`` (a relay's runner between turns at
        the network, a ``poll()`` loop between calls) nothing is written:
        the next :meth:`run_once` sees what the waker queued before calling
        this (calls, stop) and does not block.  The two sides order their
        steps so that one of them always sees the other: ``run_once`` sets
        ``_selecting`` before it looks at the calls, the waker queues its
        call before it looks at ``_selecting``.
        """
        w = self._wake_w
        if self._wake_pending or w is None or not self._selecting:
            return
        self._wake_pending = True
        try:
            w.send(b"\0")
        except OSError:  # buffer full (a wake is pending anyway) or closed
            pass

    def interrupt(self) -> None:
        """End the current ``select()`` wait, or the next one if no thread
        is in ``select()`` now (a queued empty call; any thread)."""
        self.call_soon(_nothing)

    def has_pending(self) -> bool:
        """Whether calls are queued (:meth:`call_soon`, and :meth:`call_later`
        until its timer is on the heap; timers waiting to come due are not
        counted) or :meth:`stop` was asked for: a callback that could go on
        working (a loop over a buffer) returns early to let them run (any
        thread: a snapshot; not used by :meth:`run_once`).
        """
        return bool(self._calls) or self.stopping

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the network thread soon (any thread)."""
        self._calls.append((fn, args))
        if not self.in_loop():
            self.wake()

    def call_later(self, delay: float, fn: Callable[[], Any]) -> Timer:
        """Run ``fn()`` on the network thread after ``delay`` seconds."""
        return self.call_at(time.monotonic() + delay, fn)

    def call_at(self, when: float, fn: Callable[[], Any]) -> Timer:
        """Run ``fn()`` on the network thread at ``time.monotonic()`` ``when``.
        Calls due at the same time run in the order they were asked for."""
        timer = Timer(when, fn)
        self.call_soon(self._add_timer, timer)
        return timer

    def after_io(self, fn: Callable[[], Any]) -> None:
        """Run ``fn()`` at the end of this loop iteration, after its I/O
        callbacks, queued calls and timers, before the next ``select()``
        (network thread).  Lets one wake-up cover everything one
        ``select()`` returned, instead of one per socket."""
        self._after_io.append(fn)

    def _add_timer(self, timer: Timer) -> None:
        heapq.heappush(self._timers, (timer.when, next(self._seq), timer))

    def _on_wake(self, mask: int) -> None:
        assert self._wake_r is not None
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass
        # Drain first, then clear: a wake() in between sees the flag still
        # set and sends nothing, and its call (queued before that check) runs
        # in this iteration's run_calls().  Clearing first would let us drain
        # the byte of a wake() that set the flag again, leaving the flag set
        # with no byte to wake us: every later wake() would be a no-op.
        self._wake_pending = False

    # --- registration (network thread, or before run()) ----------------------------------------
    def register(self, sock: socket.socket, mask: int, callback: Callable[[int], Any]) -> None:
        assert self.selector is not None
        self.selector.register(sock, mask, callback)

    def modify(self, sock: socket.socket, mask: int, callback: Callable[[int], Any]) -> None:
        assert self.selector is not None
        self.selector.modify(sock, mask, callback)

    def unregister(self, sock: socket.socket) -> None:
        if self.selector is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.selector.unregister(sock)

    # --- the loop ---------------------------------------------------------------------
    def run(self, selector_cls: Callable[[], selectors.BaseSelector], on_start: Callable[[], Any]) -> None:
        """Run until :meth:`stop`; calls ``on_start()`` on the loop thread first."""
        self.start(selector_cls, on_start)
        try:
            while not self.stopping:
                self.run_once(None)
        finally:
            self.running = False

    def start(self, selector_cls: Callable[[], selectors.BaseSelector], on_start: Callable[[], Any]) -> None:
        """Make the calling thread the network thread, without blocking:
        then call :meth:`run_once` from it (the thread-less game loop), or
        use :meth:`run`.  Calls ``on_start()`` first."""
        if self.closed or self.selector is not None:
            raise RuntimeError("a reactor runs only once")
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        if selector_cls is getattr(selectors, "EpollSelector", None):  # (DefaultSelector on Linux)
            selector_cls = EpollSelector
        self.selector = selector_cls()
        self.selector.register(self._wake_r, EVENT_READ, self._on_wake)
        if isinstance(self.selector, EpollSelector):
            self._epoll, self._fd_keys = self.selector.poll, self.selector.keys
        self.thread_id = threading.get_ident()
        self.running = True
        try:
            on_start()
        except BaseException:
            self.running = False
            raise

    def run_once(self, timeout: float | None = 0.0) -> None:
        """One iteration: ``select()`` (waiting at most ``timeout`` seconds,
        less when a call or a timer is due; ``None``: until something
        happens), the I/O callbacks, the queued calls, the due timers, the
        after-I/O calls (network thread, after :meth:`start`)."""
        sel = self.selector
        assert sel is not None
        calls = self._calls
        timers = self._timers
        self._selecting = True  # (before looking at the calls: see wake())
        if calls or self._after_io or self.stopping:
            wait: float | None = 0
        elif timers:
            wait = timers[0][0] - time.monotonic()
            if wait < 0:
                wait = 0
            elif timeout is not None and timeout < wait:
                wait = timeout
        else:
            wait = timeout
        epoll = self._epoll
        try:
            if epoll is None:
                ready = sel.select(wait)
            else:
                # EpollSelector.select(), inlined (epoll.poll() itself rounds
                # the timeout up to the millisecond); the events are mapped
                # and dispatched below.
                events = epoll(-1 if wait is None else wait, len(self._fd_keys) or 1)
        except InterruptedError:
            ready, events = [], []
        finally:
            self._selecting = False
        if epoll is None:
            for key, mask in ready:
                try:
                    key.data(mask)
                except Exception:
                    log.exception("! %s: unexpected error in I/O callback", self.name)
                except BaseException as exc:
                    if not self._contained(exc):
                        raise
        else:
            keys = self._fd_keys
            for fd, event in events:
                found = keys.get(fd)  # (None: unregistered by an earlier callback of this round)
                if found is None:
                    continue
                try:
                    found.data(((EVENT_WRITE if event & _NOT_EPOLLIN else 0) | (EVENT_READ if event & _NOT_EPOLLOUT else 0))
                               & found.events)
                except Exception:
                    log.exception("! %s: unexpected error in I/O callback", self.name)
                except BaseException as exc:
                    if not self._contained(exc):
                        raise
        # Let go of the keys before blocking again: a key of a channel
        # closed in this round would keep the connection alive until
        # the next wake-up.
        ready = events = key = found = None  # type: ignore[assignment]
        if calls:
            self.run_calls()
        if timers:
            now = time.monotonic()
            while timers and timers[0][0] <= now:
                _, _, timer = heapq.heappop(timers)
                if not timer.cancelled:
                    try:
                        timer.fn()
                    except Exception:
                        log.exception("! %s: unexpected error in timer", self.name)
                    except BaseException as exc:
                        if not self._contained(exc):
                            raise
        if self._after_io:
            # Last in the iteration: whatever the callbacks, calls and
            # timers above asked for, before we block in select() again.
            after, self._after_io = self._after_io, []
            for fn in after:
                try:
                    fn()
                except Exception:
                    log.exception("! %s: unexpected error in after-I/O call %r", self.name, fn)
                except BaseException as exc:
                    if not self._contained(exc):
                        raise

    def begin_wait(self, timeout: float) -> float:
        """A wait for this reactor outside :meth:`run_once` begins (see
        :func:`wait_any`): from now on a waker writes to the wake-up socket;
        returns how long this reactor lets the caller wait, at most
        ``timeout`` (0: something is to do now).  Pair it with
        :meth:`end_wait` (network thread)."""
        self._selecting = True  # (before looking at the calls: see wake())
        if self._calls or self._after_io or self.stopping:
            return 0.0
        if self._timers:
            return min(timeout, self._timers[0][0] - time.monotonic())
        return timeout

    def end_wait(self) -> None:
        """The wait that :meth:`begin_wait` began is over (network thread)."""
        self._selecting = False

    def wait_fileno(self) -> int | None:
        """The selector's own descriptor, readable while an event is pending
        (epoll, kqueue), or ``None`` (network thread)."""
        fileno = getattr(self.selector, "fileno", None)
        return None if fileno is None else int(fileno())

    def run_calls(self) -> None:
        """Run the queued cross-thread calls (network thread)."""
        calls = self._calls
        for _ in range(len(calls)):
            try:
                fn, args = calls.popleft()
            except IndexError:  # a call ran the queue itself (a client leaving a shared loop)
                return
            try:
                fn(*args)
            except Exception:
                log.exception("! %s: unexpected error in queued call %r", self.name, fn)
            except BaseException as exc:
                if not self._contained(exc):
                    raise

    def _contained(self, exc: BaseException) -> bool:
        """Whether :attr:`contain` dealt with ``exc`` (network thread)."""
        contain = self.contain
        return contain is not None and contain(exc)

    def stop(self) -> None:
        """Ask the loop to return (any thread); also before :meth:`run` started."""
        self.stopping = True
        self.wake()

    def close(self) -> None:
        """Release the selector and the wake-up sockets (after :meth:`run`)."""
        if self.closed:
            return
        self.closed = True
        if self.selector is not None:
            self.selector.close()
        w, r = self._wake_w, self._wake_r
        self._wake_w = self._wake_r = None
        if w is not None:
            w.close()
        if r is not None:
            r.close()
        self.thread_id = None


_POLL_SELECTORS = sys.platform.startswith("linux")
"""Whether poll(2) may wait on a selector's own descriptor (epoll)."""


def wait_any(reactors: list[Reactor], timeout: float) -> None:
    """Wait until any of ``reactors`` has something to do (I/O, a queued
    call, a due timer, a stop), at most ``timeout`` seconds, without doing
    it: the caller then runs ``run_once(0)`` on each.  For poll mode, where
    one thread runs several peers' loops (a game polling its own server and
    client) and a wait of one must not starve the others.

    The wait is on the selectors' own descriptors (epoll, kqueue), which
    are readable while an event is pending, wake-up sockets included.  A
    selector without one (``SelectSelector``, Windows) cannot be waited on
    with the others: then the wait is cut to 5 ms slices.

    Thread safety: the thread that runs every one of ``reactors``.
    """
    fds: list[int] = []
    wait = timeout
    try:
        for r in reactors:
            wait = min(wait, r.begin_wait(timeout))
            fd = r.wait_fileno()
            if fd is None:
                wait = min(wait, 0.005)
            else:
                fds.append(fd)
        if wait <= 0:
            return
        if fds and _POLL_SELECTORS:
            poller = select.poll()  # (not select(): no limit on the descriptors' numbers)
            for fd in fds:
                poller.register(fd, select.POLLIN)
            poller.poll(math.ceil(wait * 1000.0))  # (rounded up: a timer due then is due on return)
        elif fds:
            select.select(fds, [], [], wait)  # (kqueue: select() is what it documents)
        else:
            time.sleep(wait)
    finally:
        for r in reactors:
            r.end_wait()


class Channel:
    """One connected socket: outgoing buffer, interest set and lock.

    Args:
        sock: A connected, non-blocking socket.
        reactor: The reactor that will serve it.
        on_ready: Called with the selector mask on the network thread.

    Thread safety: :meth:`write` with :attr:`lock` held, from any thread;
    the rest on the network thread.
    """

    __slots__ = (
        "sock",
        "reactor",
        "on_ready",
        "lock",
        "out",
        "mask",
        "paused",
        "closing",
        "closed",
        "error",
        "linger",
        "shut",
        "tls_pending",
        "tls_chunk",
        "tls_inflight",
        "head",
        "marks",
        "throttled",
        "held",
        "drained",
        "drain_waiters",
        "low_water",
        "last_write",
        "__weakref__",
    )

    def __init__(self, sock: socket.socket, reactor: Reactor, on_ready: Callable[[int], Any]) -> None:
        self.sock = sock
        self.reactor = reactor
        self.on_ready = on_ready
        self.lock = threading.RLock()
        """Guards the protocol connection and :attr:`out`."""
        self.out = bytearray()
        """Bytes waiting for the socket to become writable."""
        self.mask = 0
        self.paused = False
        self.closing = False
        self.closed = False
        self.error: NetworkError | None = None
        """The socket error that broke this channel, if any."""
        self.linger: Timer | None = None
        self.shut = False
        """Whether our sending side was shut down (``SHUT_WR``)."""
        self.tls_pending = 0
        """While a TLS handshake is in progress: the event it waits for
        (``EVENT_READ`` or ``EVENT_WRITE``); 0 otherwise."""
        self.tls_chunk = TLS_SEND_MAX if isinstance(sock, ssl.SSLSocket) else 0
        """A TLS socket's ``send()`` writes the whole buffer or raises
        ``SSLWantWriteError`` (having written part of it: the retry must
        start with the same bytes), never a part: so at most this much is
        passed at once (one record), and what went out is counted as it
        goes (the write-buffer caps, the close linger, :meth:`drop_unsent`).
        0: plaintext."""
        self.tls_inflight = 0
        """The length of the TLS send that raised ``SSLWantWriteError`` and
        must be retried from :attr:`out`'s start (OpenSSL holds part of it):
        :meth:`drop_unsent` keeps at least that much."""
        # Frame boundaries in ``out``, for drop_unsent(): every write is whole
        # frames, so where a write ends a frame ends.  ``head`` is the offset
        # of out[0] on a running count of the bytes that went through ``out``
        # (writes sent at once never enter it); ``marks`` are offsets of
        # write ends on that count, at least MARK_GAP apart (a 32 MiB buffer
        # holds at most 512).
        self.head = 0
        self.marks: deque[int] = deque()
        self.drained = threading.Condition(self.lock)
        """Notified (by :meth:`flush`, :meth:`close`) when :attr:`out` fell to
        :attr:`low_water` bytes or less while :attr:`drain_waiters` > 0: a
        sender blocked on a full buffer waits on it."""
        self.drain_waiters = 0
        self.low_water = 0
        self.throttled = False
        """Reading is paused by a rate limit (see :attr:`paused` for the
        process queue's pause); either one stops reading."""
        self.held = False
        """Reading is paused because the process queues of all connections
        together are over ``net.limits.recv_queue_total`` (``Flow.check_queue_total``)."""
        self.last_write = 0.0
        """Monotonic time the last direct write from another thread than
        the network thread ended (see :meth:`write`); 0.0 after a flush."""

    def write(self, data: bytes, cork: bool = True) -> None:
        """Send ``data`` now if possible, buffer the rest (lock held).

        Writes from other threads that come in a burst to one connection
        (less than :data:`CORK_GAP` after the previous direct write to it
        from such a thread) are buffered and flushed by the network
        thread, one ``send()`` for the lot: a loop of ``send_message``
        calls to one peer costs one syscall per socket-buffer-full instead
        of one per message.  A lone message (a request, an RTT probe, one
        answer to each of many clients from a batch of handlers) still goes
        out at once: buffering it would save no syscall and cost a call
        and a flush on the network thread.  Fan-out paths (one message to
        each of many connections) pass ``cork=False``.  A socket error is stored in
        :attr:`error` and the channel is handed to the network thread to be
        closed; it is not raised.
        """
        if not data or self.closed:
            return
        if self.out or self.error is not None:
            self.out += data
            self._mark()
            return
        reactor = self.reactor
        in_loop = reactor.thread_id == _get_ident()  # in_loop(), inlined: once per message
        if (
            not in_loop
            and cork
            and reactor.selector is not None
            and time.monotonic() - self.last_write < CORK_GAP
        ):
            self.out += data
            self._mark()
            reactor.call_soon(self._flush_soon)
            return
        try:
            n = self._tls_send(data) if self.tls_chunk else self.sock.send(data)
        except _WOULD_BLOCK:
            n = 0
        except OSError as exc:
            self.error = NetworkError(f"send: {exc}")
            reactor.call_soon(self.on_ready, EVENT_WRITE)
            return
        if not in_loop:
            self.last_write = time.monotonic()
        if n < len(data):
            self.out += memoryview(data)[n:]
            self.head += n
            self._mark()
            if in_loop:
                self.update_interest()
            else:
                reactor.call_soon(self.update_interest)

    def _tls_send(self, data: bytes | bytearray | memoryview) -> int:
        """Send ``data`` on a TLS socket a record at a time (lock held):
        the bytes sent; stops at ``SSLWantWriteError`` (noting
        :attr:`tls_inflight`); raises ``OSError`` as ``send()`` does."""
        sent = 0
        size = len(data)
        with memoryview(data) as view:
            while sent < size:
                end = sent + max(self.tls_chunk, self.tls_inflight)
                # (a bytes copy of the record, not a slice of the view: nothing
                # of ``data`` stays exported when an exception leaves here)
                chunk = bytes(view[sent:end])
                try:
                    n = self.sock.send(chunk)
                except _WOULD_BLOCK:
                    self.tls_inflight = len(chunk)
                    n = -1
                if n < 0:
                    break
                self.tls_inflight = 0
                if not n:
                    break
                sent += n
        return sent

    def _mark(self) -> None:
        """Note that ``out`` ends at a frame boundary now (lock held)."""
        end = self.head + len(self.out)
        marks = self.marks
        if not marks or end - marks[-1] >= MARK_GAP:
            marks.append(end)

    def drop_unsent(self) -> int:
        """Forget the buffered bytes after the first frame boundary (lock
        held): the frame partly sent (and at most ``MARK_GAP`` bytes more)
        is kept, so the stream stays whole and a last frame written now
        (a ``closeconn``) is the next thing the peer can read.  Returns the
        number of bytes dropped.

        Thread safety: any thread, with :attr:`lock` held.
        """
        out = self.out
        if not out:
            return 0
        keep = min(len(out), self.marks[0] - self.head) if self.marks else len(out)
        if keep < self.tls_inflight:  # (OpenSSL holds part of that send: its retry needs those bytes)
            keep = next((m - self.head for m in self.marks if m - self.head >= self.tls_inflight), len(out))
            keep = min(keep, len(out))
        dropped = len(out) - keep
        del out[keep:]
        self.marks.clear()
        self.marks.append(self.head + keep)
        return dropped

    def read_into(self, buf: bytearray | memoryview) -> int:
        """Read into ``buf`` (network thread, lock held): the number of
        bytes, 0 at EOF, -1 when nothing can be read now.

        Raises:
            NetworkError: The socket failed (its ``reason`` is the close
                reason: ``socketerror``, or ``tlserror`` for TLS).
        """
        try:
            return self.sock.recv_into(buf)
        except _WOULD_BLOCK:
            return -1
        except OSError as exc:
            err = map_oserror(exc, "recv")
            if not isinstance(err, NetworkError):
                err = NetworkError(str(exc))
            raise caused(err, exc) from exc

    def pending(self) -> bool:
        """Whether TLS holds decrypted bytes that the selector will not
        report (read them now)."""
        sock = self.sock
        return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0

    def tls_step(self) -> None:
        """Drive a non-blocking server-side TLS handshake one step (network
        thread): sets :attr:`tls_pending` to the event it waits for, or to 0
        when the handshake is complete.

        Raises:
            TLSError: The handshake failed.
        """
        sock = self.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            with self.lock:
                sock.do_handshake()
        except ssl.SSLWantReadError:
            self.tls_pending = EVENT_READ
            return
        except ssl.SSLWantWriteError:
            self.tls_pending = EVENT_WRITE
            return
        except (ssl.SSLError, OSError) as exc:
            self.tls_pending = 0
            err = map_oserror(exc, "handshake")
            raise caused(err if isinstance(err, TLSError) else TLSError(str(exc)), exc) from exc
        self.tls_pending = 0

    def tls_version(self) -> str | None:
        """The TLS version in use, or ``None``."""
        sock = self.sock
        return sock.version() if isinstance(sock, ssl.SSLSocket) else None

    def _flush_soon(self) -> None:
        with self.lock:
            self.flush()
            self.last_write = 0.0
        if self.error is not None:
            self.on_ready(EVENT_WRITE)
        else:
            self.update_interest()

    def flush(self) -> bool:
        """Write as much of :attr:`out` as the socket takes (network thread, lock held).

        Returns:
            Whether the buffer is now empty.
        """
        out = self.out
        if out and self.error is None:
            sent = 0
            size = len(out)
            if self.tls_chunk:
                try:
                    sent = self._tls_send(out)
                except OSError as exc:
                    self.error = NetworkError(f"send: {exc}")
            else:
                with memoryview(out) as view:
                    while sent < size:
                        try:
                            n = self.sock.send(view[sent:])
                        except _WOULD_BLOCK:
                            break
                        except OSError as exc:
                            self.error = NetworkError(f"send: {exc}")
                            break
                        if not n:
                            break
                        sent += n
            if sent:
                del out[:sent]  # once per flush, not once per send()
                head = self.head = self.head + sent
                marks = self.marks
                while marks and marks[0] <= head:
                    marks.popleft()
                if self.drain_waiters and len(out) <= self.low_water:
                    self.drained.notify_all()
            if self.error is not None:
                return False
        return not out

    def update_interest(self) -> None:
        """Register exactly the events we need now (network thread).

        Before the loop runs there is no selector; the loop calls this again
        when it starts.
        """
        if self.closed or self.reactor.selector is None or self.reactor.closed:
            return
        # While closing we keep reading (and discarding) until the peer's EOF:
        # closing a socket with unread input sends RST, which can destroy our
        # last bytes (the closeconn) in the peer's receive buffer.
        if self.tls_pending:
            mask = self.tls_pending
        else:
            reading = self.closing or not (self.paused or self.throttled or self.held)
            mask = (EVENT_READ if reading else 0) | (EVENT_WRITE if self.out and self.error is None else 0)
        if mask == self.mask:
            return
        try:
            if self.mask == 0:
                self.reactor.register(self.sock, mask, self.on_ready)
            elif mask == 0:
                self.reactor.unregister(self.sock)
            else:
                self.reactor.modify(self.sock, mask, self.on_ready)
        except (KeyError, ValueError, OSError) as exc:
            log.debug("! interest update failed: %r", exc)
        self.mask = mask

    def shutdown_write(self) -> None:
        """Half-close: tell the peer we will send nothing more (network thread)."""
        if self.shut or self.closed:
            return
        self.shut = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def reset(self) -> None:
        """Close with a TCP reset (``SO_LINGER`` 0): the peer sees a broken
        connection, not an orderly end; unsent bytes are dropped (network
        thread; a fault for test tools)."""
        if self.closed:
            return
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        self.close()

    def close(self) -> None:
        """Unregister and close the socket (network thread).  Idempotent."""
        if self.closed:
            return
        self.closed = True
        if self.linger is not None:
            self.linger.cancel()
            self.linger = None
        if self.mask:
            self.reactor.unregister(self.sock)
            self.mask = 0
        with contextlib.suppress(OSError):
            self.sock.close()
        # Release at once what a closed channel holds: its unsent bytes (up
        # to the write-buffer cap) and its callback (a cycle through the
        # connection's state), so no cyclic garbage collection is needed.
        self.out = bytearray()
        self.marks.clear()
        self.on_ready = _nothing
        if self.drain_waiters:
            with self.lock:
                self.drained.notify_all()


WOULD_BLOCK = _WOULD_BLOCK


def frame_selves(exc: BaseException) -> Iterator[Any]:
    """The ``self`` of each frame of ``exc``'s traceback, outermost first
    (``None`` for frames without one): which objects the error passed
    through (a half-made socket to close, the client whose hook raised)."""
    tb = exc.__traceback__
    while tb is not None:
        yield tb.tb_frame.f_locals.get("self")
        tb = tb.tb_next


def _nothing(*args: Any) -> None:
    """What a cancelled timer or a closed channel calls."""


def map_oserror(exc: OSError, what: str) -> NetworkError:
    """The library's error for an :class:`OSError` of a socket operation
    (the one place that maps them; ``what`` names the operation)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TLSError(f"TLS: the certificate was not accepted: {exc.verify_message}")
    if isinstance(exc, ssl.SSLError):
        text = str(exc)
        hint = ""
        if "WRONG_VERSION_NUMBER" in text or "record layer" in text:
            hint = " (does the server have TLS enabled?)"
        elif "CERTIFICATE_REQUIRED" in text.upper():
            hint = " (the server requires a client certificate)"
        return TLSError(f"TLS {what} failed: {exc}{hint}")
    if isinstance(exc, socket.gaierror):
        return InvalidAddressError(f"cannot resolve the address for {what}: {exc}")  # type: ignore[return-value]
    return NetworkError(f"{what}: {exc}")


def prepare(sock: socket.socket) -> None:
    """Make an accepted or connected socket ready for a :class:`Channel`:
    non-blocking, ``TCP_NODELAY`` on TCP."""
    sock.setblocking(False)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def connect(addr: tuple[Any, ...], timeout: float, ctx: ssl.SSLContext | None = None) -> socket.socket:
    """Connect to ``addr`` (blocking, up to ``timeout`` seconds), wrap it in
    TLS when ``ctx`` is given (the handshake too), and :func:`prepare` it.

    Raises:
        InvalidAddressError: The host cannot be resolved.
        NetworkError: The connection cannot be made.
        TLSError: The TLS handshake failed.
    """
    try:
        sock = socket.create_connection(addr[:2], timeout=timeout)
    except socket.gaierror as exc:
        raise caused(InvalidAddressError(f"cannot resolve {addr[0]!r}: {exc}"), exc) from exc
    except OSError as exc:
        raise caused(NetworkError(f"cannot connect to {addr}: {exc}"), exc) from exc
    if ctx is not None:
        try:
            sock = ctx.wrap_socket(sock, server_hostname=str(addr[0]))
        except (ssl.SSLError, OSError) as exc:
            sock.close()
            raise caused(map_oserror(exc, f"handshake with {addr}"), exc) from exc
    prepare(sock)
    return sock


# accept() errors that say the process or the system ran out of descriptors
# or memory: listening again at once would only spin.
STARVED_ERRNOS = frozenset(e for e in (getattr(errno, n, None) for n in ("EMFILE", "ENFILE", "ENOBUFS", "ENOMEM"))
                           if e is not None)


class Listener:
    """A listening TCP socket (bind, listen, accept).

    Args:
        host: Host or address to bind (resolved with ``getaddrinfo``).
        port: Port (0: any free one).
        dualstack: For an IPv6 address: accept IPv4 clients too.
        backlog: ``listen()`` backlog.

    Raises:
        InvalidAddressError: The host cannot be resolved.
        NetworkError: The address cannot be bound.

    Thread safety: :meth:`accept` and :meth:`close` on the network thread.
    """

    def __init__(self, host: str, port: int, *, dualstack: bool = False, backlog: int = 128) -> None:
        try:  # an empty host: every interface
            infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise caused(InvalidAddressError(f"cannot resolve {host!r}: {exc}"), exc) from exc
        family, socktype, proto, _, sockaddr = infos[0]
        sock = socket.socket(family, socktype, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPV6_V6ONLY"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dualstack else 1)
            sock.bind(sockaddr)
            sock.listen(backlog)
        except OSError as exc:
            sock.close()
            raise caused(NetworkError(f"cannot bind {host!r}:{port}: {exc}"), exc) from exc
        sock.setblocking(False)
        self.sock = sock
        """The listening socket."""
        self.addr: tuple[Any, ...] = sock.getsockname()[:2]
        """The address bound."""
        self.starved: OSError | None = None
        """The last :meth:`accept_waiting` ended for want of descriptors or
        memory (the error), else ``None``."""

    def accept_waiting(self, limit: int = 64) -> list[tuple[socket.socket, Any]]:
        """Accept up to ``limit`` waiting connections, each :func:`prepare` d.
        An error ends this round: one that says the process or the system
        is out of descriptors or memory (``EMFILE``, ``ENFILE``,
        ``ENOBUFS``, ``ENOMEM``) is kept in :attr:`starved` (the caller
        should stop listening for a while: the connection still waits, and
        the selector would report it again at once); any other is logged."""
        out = []
        self.starved = None
        for _ in range(limit):
            try:
                sock, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in STARVED_ERRNOS:
                    self.starved = exc
                else:
                    log.warning("! accept failed: %s", exc)
                break
            prepare(sock)
            out.append((sock, addr))
        return out

    @staticmethod
    def refuse(sock: socket.socket, data: bytes) -> None:
        """Send ``data`` (a last word, best effort) and close ``sock``."""
        with contextlib.suppress(OSError):
            sock.send(data)
        sock.close()

    @staticmethod
    def wrap_tls(sock: socket.socket, ctx: ssl.SSLContext) -> socket.socket:
        """Wrap an accepted socket for a non-blocking server-side TLS
        handshake (driven by :meth:`Channel.tls_step`).

        Raises:
            TLSError: It cannot be wrapped (closed, or reset by the peer);
                the socket is closed.
        """
        try:
            return ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except (ssl.SSLError, OSError) as exc:
            # A failure inside wrap_socket() after it took the descriptor over
            # (a peer that reset the connection before the wrap) leaves a
            # half-made SSLSocket owning it, and ``sock`` detached: close that one.
            for made in frame_selves(exc):
                if isinstance(made, ssl.SSLSocket):
                    with contextlib.suppress(OSError):
                        made.close()
                    break
            sock.close()
            err = map_oserror(exc, "wrap")
            raise caused(err if isinstance(err, TLSError) else TLSError(str(err)), exc) from exc

    def close(self) -> None:
        """Close the listening socket."""
        self.sock.close()


class Datagram:
    """A non-blocking UDP socket (IPv4): bound or not, with broadcast
    allowed or not.  Register :attr:`sock` with a :class:`Reactor` for
    ``EVENT_READ`` to be told when a datagram is waiting.

    Args:
        host: Address to bind (``""``: every interface); ``None``: do not
            bind (the system picks a port at the first :meth:`send_to`).
        port: Port to bind (0: any free one; see :attr:`addr`).
        reuseaddr: Set ``SO_REUSEADDR`` before binding (rebind a port at
            once; several sockets on one port).
        broadcast: Allow sending to broadcast addresses (``SO_BROADCAST``).

    Raises:
        InvalidAddressError: The host cannot be resolved.
        NetworkError: The socket cannot be made or bound.

    Thread safety: one thread at a time; while registered with a reactor,
    only its network thread.
    """

    def __init__(
        self, host: str | None = None, port: int = 0, *, reuseaddr: bool = False, broadcast: bool = False
    ) -> None:
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        except OSError as exc:
            raise caused(map_oserror(exc, "socket"), exc) from exc
        try:
            if reuseaddr:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if broadcast:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            if host is not None:
                sock.bind((host, port))
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise caused(map_oserror(exc, f"bind {host!r}:{port}"), exc) from exc
        self.sock = sock
        """The UDP socket (to register with a reactor)."""
        self.addr: tuple[Any, ...] = sock.getsockname()[:2]
        """The address bound (``("0.0.0.0", 0)`` while unbound)."""

    def fileno(self) -> int:
        """The socket's file descriptor (-1 once closed)."""
        return self.sock.fileno()

    def recv_from(self, max_bytes: int, timeout: float = 0.0) -> tuple[bytes, tuple[Any, ...]] | None:
        """One datagram and its sender's address, cut at ``max_bytes``
        (any thread, see the class).

        Args:
            max_bytes: The most bytes returned (the rest of a longer datagram
                is discarded).
            timeout: Seconds to wait for a datagram; 0: return at once.

        Returns:
            ``(data, (host, port))``, or ``None`` when no datagram came.

        Raises:
            NetworkError: The socket reported an error (it is closed, for
                example).
        """
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, not {max_bytes!r}")
        sock = self.sock
        if timeout > 0:
            sock.settimeout(timeout)
        try:
            data, addr = sock.recvfrom(max_bytes)
        except (TimeoutError, *_WOULD_BLOCK):
            return None
        except OSError as exc:
            raise caused(map_oserror(exc, "recvfrom"), exc) from exc
        finally:
            if timeout > 0:
                with contextlib.suppress(OSError):
                    sock.setblocking(False)
        return data, addr

    def send_to(self, data: bytes, addr: tuple[Any, ...]) -> bool:
        """Send ``data`` as one datagram to ``addr`` (any thread, see the class).

        Returns:
            Whether it was sent; ``False``: the socket buffer is full, the
            datagram was dropped (UDP gives no delivery guarantee anyway).

        Raises:
            InvalidAddressError: ``addr`` cannot be resolved.
            NetworkError: It cannot be sent (no route, too large, closed).
        """
        try:
            self.sock.sendto(data, addr)
        except _WOULD_BLOCK:
            return False
        except OSError as exc:
            raise caused(map_oserror(exc, f"sendto {addr}"), exc) from exc
        return True

    def close(self) -> None:
        """Close the socket (idempotent; unregister it from its reactor first)."""
        self.sock.close()
