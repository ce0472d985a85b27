"""A TCP proxy that adds latency, jitter and a bandwidth cap, for testing netcode.

    python -m peng3dnet.tools.lagproxy --listen 9000 --to 127.0.0.1:8080 --delay 150 --jitter 30

Each chunk read from one side is delivered to the other side ``delay`` ms
(+/- a uniform ``jitter``) later, never before an earlier chunk of the same
direction (TCP order is kept), and at most ``bandwidth`` KiB/s per direction.
One selector thread; timers, no polling.  Loopback use only.
"""

from __future__ import annotations

import argparse
import functools
import logging
import random
import selectors
import socket
import threading
import time
from typing import Any

from ..transport import EVENT_READ, EVENT_WRITE, Reactor
from ..util import normalize_addr_socketstyle

__all__ = ["LagProxy", "main"]

log = logging.getLogger(__name__)


class _Pipe:
    """One direction: src -> dst."""

    __slots__ = ("src", "dst", "last_due", "out", "peer", "closed_src")

    def __init__(self, src: socket.socket, dst: socket.socket) -> None:
        self.src = src
        self.dst = dst
        self.last_due = 0.0
        self.out = bytearray()
        self.peer: _Pipe | None = None
        self.closed_src = False


class LagProxy:
    """Proxy ``listen`` -> ``target`` with added delay/jitter/bandwidth.

    Args:
        listen: ``(host, port)`` to listen on (port 0: any; see :attr:`addr`).
        target: ``(host, port)`` to connect each client to.
        delay: One-way delay in seconds.
        jitter: +/- uniform jitter in seconds.
        bandwidth: Bytes per second per direction (0: unlimited).
        seed: Random seed for the jitter.

    Thread safety: :meth:`start` and :meth:`stop` from any thread.
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
    ) -> None:
        self.target = normalize_addr_socketstyle(target)
        self.delay = delay
        self.jitter = jitter
        self.bandwidth = bandwidth
        self._rng = random.Random(seed)
        self._lsock = socket.create_server(normalize_addr_socketstyle(listen, 0)[:2])
        self._lsock.setblocking(False)
        self.addr = self._lsock.getsockname()[:2]
        """The address the proxy listens on."""
        self._reactor = Reactor("peng3dnet lagproxy")  # selector loop, wake-up, timers
        self._thread: threading.Thread | None = None
        self._socks: set[socket.socket] = set()
        self._readpipe: dict[socket.socket, _Pipe] = {}
        self._mask: dict[socket.socket, int] = {}

    def start(self) -> LagProxy:
        """Run in a daemon thread "peng3dnet lagproxy"."""
        self._thread = threading.Thread(target=self.run, name="peng3dnet lagproxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop and close every socket."""
        self._reactor.stop()
        if self._thread is not None:
            self._thread.join(5)

    def run(self) -> None:
        """The proxy loop (blocks until :meth:`stop`)."""
        r = self._reactor
        try:
            r.run(selectors.DefaultSelector, lambda: r.register(self._lsock, EVENT_READ, self._accept))
        finally:
            for s in list(self._socks) + [self._lsock]:
                try:
                    s.close()
                except OSError:
                    pass
            r.close()

    def _accept(self, mask: int) -> None:
        try:
            c, _ = self._lsock.accept()
        except OSError:
            return
        try:
            u = socket.create_connection(self.target[:2], timeout=5)
        except OSError as exc:
            log.info("lagproxy: cannot reach %s: %s", self.target, exc)
            c.close()
            return
        for s in (c, u):
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._socks.add(s)
        up, down = _Pipe(c, u), _Pipe(u, c)
        up.peer, down.peer = down, up
        self._readpipe[c], self._readpipe[u] = up, down
        self._update(c)
        self._update(u)

    def _on_ready(self, sock: socket.socket, mask: int) -> None:
        rp = self._readpipe.get(sock)
        if rp is None:  # closed by an earlier callback of this iteration
            return
        if mask & EVENT_WRITE:
            self._flush(rp.peer)  # type: ignore[arg-type]
        if mask & EVENT_READ and sock in self._socks:
            pipe = rp
            try:
                chunk = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                chunk = b""
            now = time.monotonic()
            due = now + self.delay + (self._rng.uniform(-self.jitter, self.jitter) if self.jitter else 0.0)
            if self.bandwidth > 0 and chunk:
                due = max(due, pipe.last_due + len(chunk) / self.bandwidth)
            due = max(due, pipe.last_due)  # keep TCP order
            pipe.last_due = due
            if not chunk:
                pipe.closed_src = True
                self._update(sock)
            # call_at keeps the order of equal due times: TCP order per pipe
            self._reactor.call_at(due, functools.partial(self._deliver, pipe, chunk))

    def _deliver(self, pipe: _Pipe, data: bytes) -> None:
        if data:
            pipe.out += data
        self._flush(pipe)  # an EOF (empty chunk) shuts the other side once flushed

    def _flush(self, pipe: _Pipe) -> None:
        if pipe.out:
            try:
                n = pipe.dst.send(pipe.out)
                del pipe.out[:n]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                pipe.out.clear()
        if not pipe.out and pipe.closed_src and pipe.last_due <= time.monotonic():
            self._shut(pipe)
        self._update(pipe.dst)

    def _shut(self, pipe: _Pipe) -> None:
        try:
            pipe.dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        peer = pipe.peer
        if peer is not None and peer.closed_src and not peer.out:
            for s in (pipe.src, pipe.dst):
                self._close(s)

    def _close(self, s: socket.socket) -> None:
        if s in self._socks:
            self._socks.discard(s)
            if self._mask.pop(s, 0):
                self._reactor.unregister(s)
            self._readpipe.pop(s, None)
            s.close()

    def _update(self, sock: socket.socket) -> None:
        if sock not in self._socks:
            return
        rp = self._readpipe[sock]  # the pipe that reads from this socket
        wp = rp.peer  # the pipe that writes into it
        assert wp is not None
        mask = (0 if rp.closed_src else EVENT_READ) | (EVENT_WRITE if wp.out else 0)
        cur = self._mask.get(sock, 0)
        if mask == cur:
            return
        callback = functools.partial(self._on_ready, sock)
        if cur == 0:
            self._reactor.register(sock, mask, callback)
        elif mask == 0:
            self._reactor.unregister(sock)
        else:
            self._reactor.modify(sock, mask, callback)
        self._mask[sock] = mask


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m peng3dnet.tools.lagproxy", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", required=True, help="PORT or HOST:PORT to listen on")
    ap.add_argument("--to", required=True, help="HOST:PORT of the server")
    ap.add_argument("--delay", type=float, default=100.0, help="one-way delay, ms")
    ap.add_argument("--jitter", type=float, default=0.0, help="+/- jitter, ms")
    ap.add_argument("--bandwidth", type=float, default=0.0, help="KiB/s per direction (0: unlimited)")
    args = ap.parse_args(argv)
    listen = args.listen if ":" in args.listen else f"127.0.0.1:{args.listen}"
    proxy = LagProxy(listen, args.to, delay=args.delay / 1000, jitter=args.jitter / 1000,
                     bandwidth=args.bandwidth * 1024)
    print(f"lagproxy {proxy.addr[0]}:{proxy.addr[1]} -> {args.to} "
          f"(delay {args.delay} ms, jitter {args.jitter} ms, bandwidth {args.bandwidth or 'unlimited'} KiB/s)",
          flush=True)
    try:
        proxy.run()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(main())
