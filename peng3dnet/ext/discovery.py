"""LAN discovery: servers answer UDP broadcasts with their ping data.

A server runs a :class:`DiscoveryResponder` on a UDP port (default
``DISCOVERY_PORT``); :func:`discover_servers` broadcasts a query, sends it
again a few times while it waits (UDP broadcasts get lost), and collects
one answer per server for ``timeout`` seconds.  Query: the bytes
``b"peng3dnet?"``.  Answer: msgpack ``{"peng3dnet": {...version info},
"port": game port, **ping data}``.  Datagrams are bounded (answers are cut
at 1,400 bytes of ping data) and anything else is ignored.

The responder is a UDP service anyone can send to, and its answer is
bigger than the query, so it is bounded: it answers only senders on a
local network (private, loopback, link-local and RFC 6598 shared
addresses; ``public=True`` to answer anyone), at most ``per_address`` answers per second to one
address (burst of twice that) and ``total`` per second overall; queries
beyond that are dropped and counted (:attr:`DiscoveryResponder.dropped`).
"""

from __future__ import annotations

import ipaddress
import logging
import selectors
import threading
import time
from typing import TYPE_CHECKING, Any

import msgpack

from ..errors import NetworkError
from ..transport import EVENT_READ, Datagram, Reactor
from ..version import PROTOVERSION, RELEASE, VERSION

if TYPE_CHECKING:
    import socket

__all__ = ["DISCOVERY_PORT", "DiscoveryResponder", "discover_servers"]

log = logging.getLogger(__name__)

DISCOVERY_PORT = 8089
"""Default UDP port of the discovery responder."""
QUERY = b"peng3dnet?"
_MAX = 1400
_MAX_TRACKED = 4096  # per-address buckets kept at most (then the oldest go)


class DiscoveryResponder:
    """Answer discovery queries for one server, in a daemon thread.

    Args:
        server: The Server (its ping data and port are announced).
        port: UDP port to listen on (0: any free one; see :attr:`addr`).
        host: Address to bind ("" = all interfaces; tests use 127.0.0.1).
        public: Answer senders outside private, loopback and link-local
            networks too.
        per_address: Answers per second to one sender address (burst:
            twice that).
        total: Answers per second in all (burst: twice that).

    Raises:
        InvalidAddressError: The host cannot be resolved.
        NetworkError: The port cannot be bound.
    """

    def __init__(self, server: Any, port: int = DISCOVERY_PORT, host: str = "", *, public: bool = False,
                 per_address: float = 4.0, total: float = 64.0) -> None:
        if not (per_address > 0 and total > 0):  # (NaN fails too)
            raise ValueError("per_address and total must be positive answers per second")
        self.server = server
        self.public = public
        """Answer senders outside the local networks too (default ``False``)."""
        self.per_address = float(per_address)
        self.total = float(total)
        self.answered = 0
        """Queries answered."""
        self.dropped = 0
        """Queries dropped: a non-local sender, or over a rate limit."""
        self._dgram = Datagram(host, port, reuseaddr=True)
        self.addr = self._dgram.addr
        """The bound (host, port)."""
        self._reactor = Reactor("peng3dnet discovery")
        self._thread: threading.Thread | None = None
        # token buckets: (tokens, last refill); per address and one for all
        self._buckets: dict[str, tuple[float, float]] = {}
        self._all = (2 * self.total, time.monotonic())

    @property
    def sock(self) -> socket.socket:
        """The UDP socket (owned by the responder; for inspection only)."""
        return self._dgram.sock

    def start(self) -> DiscoveryResponder:
        """Start answering in a daemon thread "peng3dnet discovery" (any thread)."""
        self._thread = threading.Thread(target=self._run, name="peng3dnet discovery", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop and close the socket (any thread)."""
        self._reactor.stop()
        if self._thread is not None:
            self._thread.join(5)
        else:
            self._dgram.close()

    def answer(self) -> bytes:
        """The answer datagram (network thread of the responder)."""
        data: dict[str, Any] = {}
        get = getattr(self.server, "getPingData", None)
        if get is not None:
            try:
                data = dict(get({"discovery": True}, None))
            except Exception:
                log.exception("! discovery: getPingData raised")
        data["peng3dnet"] = {"version": VERSION, "release": RELEASE, "protoversion": PROTOVERSION}
        data["port"] = self.server.addr[1]
        out = msgpack.packb(data)
        if len(out) > _MAX:
            out = msgpack.packb({"peng3dnet": data["peng3dnet"], "port": data["port"]})
        return out

    def allowed(self, host: str, now: float) -> bool:
        """Whether a query from ``host`` at ``now`` (monotonic seconds) gets
        an answer; spends a token of its address and of the total
        (responder's thread)."""
        if not self.public and not _is_local(host):
            return False
        buckets = self._buckets
        tokens, last = buckets.pop(host, (2 * self.per_address, now))
        tokens = min(2 * self.per_address, tokens + max(0.0, now - last) * self.per_address)
        all_tokens, all_last = self._all
        all_tokens = min(2 * self.total, all_tokens + max(0.0, now - all_last) * self.total)
        ok = tokens >= 1 and all_tokens >= 1
        if ok:
            tokens -= 1
            all_tokens -= 1
        if len(buckets) >= _MAX_TRACKED:
            del buckets[next(iter(buckets))]  # the least recently seen (a forgotten one starts full)
        buckets[host] = (tokens, now)  # (re)inserted last: the dict is in order of last query
        self._all = (all_tokens, now)
        return ok

    def _run(self) -> None:
        r = self._reactor
        try:
            r.run(selectors.DefaultSelector, lambda: r.register(self._dgram.sock, EVENT_READ, self._on_query))
        finally:
            r.close()
            self._dgram.close()

    def _on_query(self, mask: int) -> None:
        """A datagram is waiting (network thread of the responder)."""
        try:
            got = self._dgram.recv_from(64)
        except NetworkError:
            return
        if got is None:
            return
        data, addr = got
        if data == QUERY:
            if not self.allowed(addr[0], time.monotonic()):
                self.dropped += 1
                log.debug("discovery: query from %s dropped (not local, or over the rate limit)", addr[0])
                return
            try:
                sent = self._dgram.send_to(self.answer(), addr)
            except NetworkError as exc:
                log.debug("discovery: cannot answer %s: %s", addr, exc)
            else:
                if sent:
                    self.answered += 1
                else:
                    log.debug("discovery: cannot answer %s: the socket buffer is full", addr)


_SHARED = ipaddress.ip_network("100.64.0.0/10")
"""Carrier-grade NAT's shared space (RFC 6598; also Tailscale's): a LAN."""


def _is_local(host: str) -> bool:
    """A sender on a local network: private, loopback, link-local or the
    shared address space of RFC 6598 (IPv4-mapped IPv6 as IPv4; a scope id
    is ignored)."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_private or ip.is_loopback or ip.is_link_local or ip in _SHARED


def discover_servers(
    port: int = DISCOVERY_PORT, timeout: float = 1.0, addr: str = "255.255.255.255", *, tries: int = 3
) -> list[dict[str, Any]]:
    """Broadcast a query and return the answers received within ``timeout``.

    The query is sent ``tries`` times, spread over the first half of
    ``timeout`` (a broadcast may be lost; a server answers each copy, and
    each server is listed once, with its newest answer).  Each answer has
    ``host`` (the sender's address) and ``port`` (the game port) plus the
    server's ping data.  Blocks the calling thread for ``timeout`` (less
    only if the socket reports an error).

    Raises:
        InvalidAddressError: ``addr`` cannot be resolved.
        NetworkError: The query cannot be sent (no route, for example).
        ValueError: ``tries`` is below 1.
    """
    if tries < 1:
        raise ValueError(f"tries must be at least 1, not {tries!r}")
    dgram = Datagram(broadcast=True)
    found: dict[tuple[str, int], dict[str, Any]] = {}
    start = time.monotonic()
    deadline = start + timeout
    sends = [start + i * timeout / (2 * tries) for i in range(tries)]
    try:
        while True:
            now = time.monotonic()
            while sends and sends[0] <= now:
                first = len(sends) == tries
                sends.pop(0)
                try:
                    if not dgram.send_to(QUERY, (addr, port)):
                        log.debug("discovery: a query was dropped (socket buffer full)")
                except NetworkError as exc:
                    if first:
                        raise
                    log.debug("discovery: a repeated query failed (%s); keeping the answers so far", exc)
            remaining = min(deadline, sends[0] if sends else deadline) - now
            if deadline - now <= 0:
                break
            try:
                got = dgram.recv_from(_MAX + 200, timeout=max(remaining, 0.001))
            except NetworkError:
                break
            if got is None:
                continue  # the next send, or the deadline
            data, src = got
            try:
                info = msgpack.unpackb(data, raw=False)
            except Exception:
                continue
            if isinstance(info, dict) and isinstance(info.get("port"), int):
                info["host"] = src[0]
                found[(src[0], info["port"])] = info
    finally:
        dgram.close()
    return list(found.values())


if __name__ == "__main__":
    import importlib
    import sys

    # The program entry, not a library import: the CLI is a floor above.
    raise SystemExit(importlib.import_module("peng3dnet.cli").main(["discover", *sys.argv[1:]]))
