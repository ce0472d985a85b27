"""LAN discovery: servers answer UDP broadcasts with their ping data.

A server runs a :class:`DiscoveryResponder` on a UDP port (default
``DISCOVERY_PORT``); :func:`discover_servers` broadcasts one query and
collects the answers for ``timeout`` seconds.  Query: the bytes
``b"peng3dnet?"``.  Answer: msgpack ``{"peng3dnet": {...version info},
"port": game port, **ping data}``.  Datagrams are bounded (answers are cut
at 1,400 bytes of ping data) and anything else is ignored.
"""

from __future__ import annotations

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


class DiscoveryResponder:
    """Answer discovery queries for one server, in a daemon thread.

    Args:
        server: The Server (its ping data and port are announced).
        port: UDP port to listen on (0: any free one; see :attr:`addr`).
        host: Address to bind ("" = all interfaces; tests use 127.0.0.1).

    Raises:
        InvalidAddressError: The host cannot be resolved.
        NetworkError: The port cannot be bound.
    """

    def __init__(self, server: Any, port: int = DISCOVERY_PORT, host: str = "") -> None:
        self.server = server
        self._dgram = Datagram(host, port, reuseaddr=True)
        self.addr = self._dgram.addr
        """The bound (host, port)."""
        self._reactor = Reactor("peng3dnet discovery")
        self._thread: threading.Thread | None = None

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
            try:
                sent = self._dgram.send_to(self.answer(), addr)
            except NetworkError as exc:
                log.debug("discovery: cannot answer %s: %s", addr, exc)
            else:
                if not sent:
                    log.debug("discovery: cannot answer %s: the socket buffer is full", addr)


def discover_servers(
    port: int = DISCOVERY_PORT, timeout: float = 1.0, addr: str = "255.255.255.255"
) -> list[dict[str, Any]]:
    """Broadcast one query and return the answers received within ``timeout``.

    Each answer has ``host`` (the sender's address) and ``port`` (the game
    port) plus the server's ping data.  Blocks the calling thread for
    ``timeout`` (less only if the socket reports an error).

    Raises:
        InvalidAddressError: ``addr`` cannot be resolved.
        NetworkError: The query cannot be sent (no route, for example).
    """
    dgram = Datagram(broadcast=True)
    found: list[dict[str, Any]] = []
    try:
        if not dgram.send_to(QUERY, (addr, port)):
            log.debug("discovery: the query was dropped (socket buffer full)")
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                got = dgram.recv_from(_MAX + 200, timeout=remaining)
            except NetworkError:
                break
            if got is None:
                break
            data, src = got
            try:
                info = msgpack.unpackb(data, raw=False)
            except Exception:
                continue
            if isinstance(info, dict) and isinstance(info.get("port"), int):
                info["host"] = src[0]
                found.append(info)
    finally:
        dgram.close()
    return found


if __name__ == "__main__":
    import importlib
    import sys

    # The program entry, not a library import: the CLI is a floor above.
    raise SystemExit(importlib.import_module("peng3dnet.cli").main(["discover", *sys.argv[1:]]))
