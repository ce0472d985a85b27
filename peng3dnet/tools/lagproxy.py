"""A TCP proxy that adds latency, jitter and a bandwidth cap, and cuts or
stalls connections, for testing netcode.

    python -m peng3dnet.tools.lagproxy --listen 9000 --to 127.0.0.1:8080 --delay 150 --jitter 30

Each chunk read from one side is delivered to the other side ``delay`` ms
(+/- a uniform ``jitter``) later, never before an earlier chunk of the same
direction (TCP order is kept), and at most ``bandwidth`` KiB/s per direction.

Faults (for session resume and reconnect logic): :meth:`LagProxy.cut` (or
``--cut-every S``) resets every proxied connection at once, both sides
seeing a broken connection (TCP reset), with the bytes in flight lost;
:meth:`LagProxy.stall` (or ``--stall-every S --stall-for D``) stops
forwarding in both directions for ``D`` seconds, then delivers what waited
(a partition that heals; long enough, and heartbeats declare the peer dead).
One selector thread; timers, no polling.  Loopback use only.
"""

from __future__ import annotations

import argparse
import functools
import logging
import random
import selectors
import threading
import time
from typing import Any

from ..errors import InvalidAddressError, NetworkError
from ..transport import EVENT_READ, EVENT_WRITE, Channel, Listener, Reactor, connect
from ..util import normalize_addr_socketstyle

__all__ = ["LagProxy", "add_arguments", "from_args", "main"]

log = logging.getLogger(__name__)

_CHUNK = 65536
"""The most bytes read from a socket at a time."""

HOLD_MIN = 4 * 1024 * 1024
"""Bytes a pipe holds at least (in flight and waiting to be written)
before it stops reading its sender: the proxy pushes back like a network
(TCP) instead of taking everything into memory; with a bandwidth, one
second of it if that is more."""


def _nothing(mask: int) -> None:
    """A channel's callback until its pipe exists."""


class _Pipe:
    """One direction: src -> dst (two channels; the bytes in flight to
    ``dst`` wait in ``dst.out``)."""

    __slots__ = ("src", "dst", "last_due", "peer", "closed_src", "inflight", "held", "stalled", "eof_delivered")

    def __init__(self, src: Channel, dst: Channel) -> None:
        self.src = src
        self.dst = dst
        self.last_due = 0.0
        self.peer: _Pipe | None = None
        self.closed_src = False
        self.inflight = 0  # bytes read from src, not yet handed to dst.out
        self.held = False  # reading from src paused: too much in flight (back-pressure)
        self.stalled: list[bytes] | None = None  # chunks that came due during a stall, in order
        self.eof_delivered = False  # src's EOF handed to dst, behind all its data: dst may be shut once flushed


class LagProxy:
    """Proxy ``listen`` -> ``target`` with added delay/jitter/bandwidth.

    Args:
        listen: ``(host, port)`` to listen on (port 0: any; see :attr:`addr`).
        target: ``(host, port)`` to connect each client to.
        delay: One-way delay in seconds.
        jitter: +/- uniform jitter in seconds.
        bandwidth: Bytes per second per direction (0: unlimited).
        seed: Random seed for the jitter.
        cut_every: Reset every connection every this many seconds (0: never).
        stall_every: Stall forwarding every this many seconds (0: never) ...
        stall_for: ... for this many seconds.

    Raises:
        InvalidAddressError: An address cannot be parsed or resolved.
        NetworkError: ``listen`` cannot be bound.

    Thread safety: :meth:`start` and :meth:`stop` from any thread; the
    rest runs on the proxy's thread (the one running :meth:`run`).
    """

    def __init__(
        self,
        listen: Any,
        target: Any,
        *,
        delay: float = 0.0,
        jitter: float = 0.0,
        bandwidth: float = 0.0,
        seed: int | None = None,
        cut_every: float = 0.0,
        stall_every: float = 0.0,
        stall_for: float = 0.0,
    ) -> None:
        self.target = normalize_addr_socketstyle(target)
        self.delay = delay
        self.jitter = jitter
        self.bandwidth = bandwidth
        self._hold = max(HOLD_MIN, int(bandwidth))  # (see HOLD_MIN)
        self._rng = random.Random(seed)
        host, port = normalize_addr_socketstyle(listen, 0)[:2]
        self._listener = Listener(host, port)
        self.addr = self._listener.addr
        """The address the proxy listens on."""
        self._reactor = Reactor("peng3dnet lagproxy")  # selector loop, wake-up, timers
        self._thread: threading.Thread | None = None
        self._chans: set[Channel] = set()
        self.cut_every = cut_every
        self.stall_every = stall_every
        self.stall_for = stall_for
        self._stall_until = 0.0
        self.cuts = 0
        """Connections reset so far (each proxied connection counts once)."""

    def cut(self) -> None:
        """Reset every proxied connection now: both ends see a broken
        connection (TCP reset) and what was in flight is lost (any thread)."""
        self._reactor.call_soon(self._cut)

    def stall(self, seconds: float) -> None:
        """Forward nothing, either way, for ``seconds``; then deliver what
        waited, in order (any thread)."""
        self._reactor.call_soon(self._stall, seconds)

    def _cut(self) -> None:
        pairs = {id(ch): ch for ch in self._chans}
        for ch in pairs.values():
            ch.reset()
        self.cuts += len(pairs) // 2
        self._chans.clear()
        log.info("lagproxy: cut %d connections", len(pairs) // 2)

    def _stall(self, seconds: float) -> None:
        self._stall_until = max(self._stall_until, time.monotonic() + seconds)

    def _every(self, period: float, fn: Any) -> None:
        def tick() -> None:
            fn()
            self._reactor.call_later(period, tick)

        self._reactor.call_later(period, tick)

    def _start_faults(self) -> None:
        self._reactor.register(self._listener.sock, EVENT_READ, self._accept)
        if self.cut_every > 0:
            self._every(self.cut_every, self._cut)
        if self.stall_every > 0 and self.stall_for > 0:
            self._every(self.stall_every, lambda: self._stall(self.stall_for))

    def start(self) -> LagProxy:
        """Run in a daemon thread "peng3dnet lagproxy" (any thread)."""
        self._thread = threading.Thread(target=self.run, name="peng3dnet lagproxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop and close every socket (any thread)."""
        self._reactor.stop()
        if self._thread is not None:
            self._thread.join(5)

    def run(self) -> None:
        """The proxy loop (blocks the calling thread until :meth:`stop`)."""
        r = self._reactor
        try:
            r.run(selectors.DefaultSelector, self._start_faults)
        finally:
            for ch in list(self._chans):
                ch.close()
            self._chans.clear()
            self._listener.close()
            r.close()

    def _accept(self, mask: int) -> None:
        """Clients are waiting: connect each to the target (proxy thread;
        blocks it up to 5 s per client, a test tool's simplicity)."""
        for c, _ in self._listener.accept_waiting():
            try:
                u = connect(self.target, timeout=5)  # non-blocking, TCP_NODELAY, like c
            except (NetworkError, InvalidAddressError) as exc:
                log.info("lagproxy: cannot reach %s: %s", self.target, exc)
                c.close()
                continue
            cc, uc = Channel(c, self._reactor, _nothing), Channel(u, self._reactor, _nothing)
            up, down = _Pipe(cc, uc), _Pipe(uc, cc)
            up.peer, down.peer = down, up
            # A channel's callback gets the pipe that reads from it.
            cc.on_ready = functools.partial(self._on_ready, up)
            uc.on_ready = functools.partial(self._on_ready, down)
            self._chans |= {cc, uc}
            cc.update_interest()
            uc.update_interest()

    def _on_ready(self, pipe: _Pipe, mask: int) -> None:
        """``pipe.src`` is readable or writable (proxy thread)."""
        src = pipe.src
        if src.closed:  # closed by an earlier callback of this iteration
            return
        if mask & EVENT_WRITE:
            self._flush(pipe.peer)  # type: ignore[arg-type]  # the pipe writing into src
        if mask & EVENT_READ and not src.closed:
            view = self._reactor.read_view[:_CHUNK]
            try:
                with src.lock:
                    n = src.read_into(view)
            except NetworkError:
                n = 0  # an error ends this direction like an EOF
            if n < 0:
                return
            chunk = bytes(view[:n])
            now = time.monotonic()
            due = now + self.delay + (self._rng.uniform(-self.jitter, self.jitter) if self.jitter else 0.0)
            if self.bandwidth > 0 and chunk:
                due = max(due, pipe.last_due + len(chunk) / self.bandwidth)
            due = max(due, pipe.last_due, self._stall_until)  # keep TCP order; wait out a stall
            pipe.last_due = due
            pipe.inflight += len(chunk)
            if not chunk:
                pipe.closed_src = True
                src.paused = True  # read no more from it
                src.update_interest()
            elif pipe.inflight + len(pipe.dst.out) > self._hold:
                pipe.held = True  # back-pressure: read again once half of it is gone
                src.paused = True
                src.update_interest()
            # call_at keeps the order of equal due times: TCP order per pipe
            self._reactor.call_at(due, functools.partial(self._deliver, pipe, chunk))

    def _deliver(self, pipe: _Pipe, data: bytes) -> None:
        """A chunk is due at ``pipe.dst`` (proxy thread); during a stall it
        waits, in order, until the stall ends (chunks already in flight
        when it began too)."""
        if pipe.stalled is not None or time.monotonic() < self._stall_until:
            if pipe.stalled is None:
                pipe.stalled = []
                self._reactor.call_at(self._stall_until, functools.partial(self._release, pipe))
            pipe.stalled.append(data)
            return
        self._deliver_now(pipe, data)

    def _release(self, pipe: _Pipe) -> None:
        """A stall ended (or was made longer): deliver what waited, in order."""
        if time.monotonic() < self._stall_until:
            self._reactor.call_at(self._stall_until, functools.partial(self._release, pipe))
            return
        waiting, pipe.stalled = pipe.stalled or [], None
        for data in waiting:
            self._deliver_now(pipe, data)

    def _deliver_now(self, pipe: _Pipe, data: bytes) -> None:
        pipe.inflight -= len(data)
        if not data:
            pipe.eof_delivered = True
        elif not pipe.dst.closed:
            with pipe.dst.lock:
                pipe.dst.out += data
        self._flush(pipe)  # an EOF (empty chunk) shuts the other side once flushed

    def _flush(self, pipe: _Pipe) -> None:
        """Send what ``pipe.dst`` takes; shut it once ``pipe`` is done (proxy thread)."""
        dst = pipe.dst
        if dst.closed:
            return
        with dst.lock:
            dst.flush()
            if dst.error is not None:
                dst.out.clear()  # a broken socket: what it would have got is dropped
        if pipe.held and pipe.inflight + len(dst.out) <= self._hold // 2 and not pipe.src.closed:
            pipe.held = False  # half of it gone: read from the sender again
            pipe.src.paused = pipe.closed_src
            pipe.src.update_interest()
        if not dst.out and pipe.eof_delivered:
            self._shut(pipe)
        dst.update_interest()

    def _shut(self, pipe: _Pipe) -> None:
        """Half-close ``pipe.dst``; close both sockets once both directions
        are done (proxy thread)."""
        pipe.dst.shutdown_write()
        peer = pipe.peer
        if peer is not None and peer.eof_delivered and not peer.dst.out:
            for ch in (pipe.src, pipe.dst):
                self._chans.discard(ch)
                ch.close()


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """Add the proxy's options (``--delay``, ``--jitter``, ``--bandwidth``,
    ``--seed``) to ``ap``; shared by this module and ``peng3dnet lagproxy``."""
    ap.add_argument("--delay", type=float, default=100.0, help="one-way delay, ms (default 100)")
    ap.add_argument("--jitter", type=float, default=0.0, help="+/- uniform jitter, ms")
    ap.add_argument("--bandwidth", type=float, default=0.0, help="KiB/s per direction (0: unlimited)")
    ap.add_argument("--seed", type=int, default=None, help="random seed of the jitter")
    ap.add_argument("--cut-every", type=float, default=0.0, help="reset every connection every S seconds (0: never)")
    ap.add_argument("--stall-every", type=float, default=0.0, help="stall forwarding every S seconds (0: never)")
    ap.add_argument("--stall-for", type=float, default=1.0, help="how long each stall lasts, seconds (default 1)")


def from_args(listen: str, target: str, args: argparse.Namespace) -> LagProxy:
    """Build a :class:`LagProxy` from parsed :func:`add_arguments` options.

    ``listen`` is ``PORT`` (on 127.0.0.1) or ``HOST:PORT``.

    Raises:
        InvalidAddressError: An address cannot be parsed or resolved.
        NetworkError: ``listen`` cannot be bound.
    """
    if listen.isdigit():
        listen = f"127.0.0.1:{listen}"
    return LagProxy(listen, target, delay=args.delay / 1000, jitter=args.jitter / 1000,
                    bandwidth=args.bandwidth * 1024, seed=args.seed, cut_every=args.cut_every,
                    stall_every=args.stall_every, stall_for=args.stall_for)


def main(argv: list[str] | None = None) -> int:
    """``python -m peng3dnet.tools.lagproxy --listen L --to T ...``: the same
    as ``peng3dnet lagproxy L T ...``."""
    import importlib
    import sys

    ap = argparse.ArgumentParser(prog="python -m peng3dnet.tools.lagproxy", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", required=True, help="PORT or HOST:PORT to listen on")
    ap.add_argument("--to", required=True, help="HOST:PORT of the server")
    add_arguments(ap)
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    opts = ["--delay", str(args.delay), "--jitter", str(args.jitter), "--bandwidth", str(args.bandwidth),
            "--cut-every", str(args.cut_every), "--stall-every", str(args.stall_every), "--stall-for", str(args.stall_for)]
    if args.seed is not None:
        opts += ["--seed", str(args.seed)]
    # The program entry, not a library import: the CLI is a floor above.
    return int(importlib.import_module("peng3dnet.cli").main(["lagproxy", args.listen, args.to, *opts]))


if __name__ == "__main__":
    raise SystemExit(main())
