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
import socket
import threading
import time
from typing import Any

import msgpack

from ..transport import EVENT_READ, Reactor
from ..version import PROTOVERSION, RELEASE, VERSION

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
    """

    def __init__(self, server: Any, port: int = DISCOVERY_PORT, host: str = "") -> None:
        self.server = server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.setblocking(False)
        self.addr = self.sock.getsockname()
        """The bound (host, port)."""
        self._reactor = Reactor("peng3dnet discovery")
        self._thread: threading.Thread | None = None

    def start(self) -> DiscoveryResponder:
        """Start answering in a daemon thread "peng3dnet discovery"."""
        self._thread = threading.Thread(target=self._run, name="peng3dnet discovery", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop and close the socket (any thread)."""
        self._reactor.stop()
        if self._thread is not None:
            self._thread.join(5)
        else:
            self.sock.close()

    def answer(self) -> bytes:
        """The answer datagram."""
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
            r.run(selectors.DefaultSelector, lambda: r.register(self.sock, EVENT_READ, self._on_query))
        finally:
            r.close()
            self.sock.close()

    def _on_query(self, mask: int) -> None:
        try:
            data, addr = self.sock.recvfrom(64)
        except OSError:
            return
        if data == QUERY:
            try:
                self.sock.sendto(self.answer(), addr)
            except OSError as exc:
                log.debug("discovery: cannot answer %s: %s", addr, exc)


def discover_servers(
    port: int = DISCOVERY_PORT, timeout: float = 1.0, addr: str = "255.255.255.255"
) -> list[dict[str, Any]]:
    """Broadcast one query and return the answers received within ``timeout``.

    Each answer has ``host`` (the sender's address) and ``port`` (the game
    port) plus the server's ping data.  Blocks the caller for ``timeout``.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    found: list[dict[str, Any]] = []
    try:
        sock.sendto(QUERY, (addr, port))
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(remaining)
            try:
                data, src = sock.recvfrom(_MAX + 200)
            except (socket.timeout, OSError):
                break
            try:
                info = msgpack.unpackb(data, raw=False)
            except Exception:
                continue
            if isinstance(info, dict) and isinstance(info.get("port"), int):
                info["host"] = src[0]
                found.append(info)
    finally:
        sock.close()
    return found
