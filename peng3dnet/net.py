"""Server, ClientOnServer and Client: the public facades of peng3dnet.

Theory of operation
-------------------
Each Server or Client runs one selector loop (:class:`~peng3dnet.transport.Reactor`)
on its *network thread* (``runAsync()`` starts it in a daemon thread,
``runBlocking()`` runs it in the caller's).  Per connection there is one
:class:`~peng3dnet.protocol.ProtocolConnection` (the sans-I/O core) and one
:class:`~peng3dnet.transport.Channel` (socket + write buffer), guarded by the
channel's lock.  The network thread reads, feeds the core, writes what the
core answers (the handshake runs entirely here), then *releases the lock*
and acts on the core's outputs: events, hooks, connection types, and the
hand-off of application packets.

Application packets are decoded on the network thread (so a malformed one
closes its connection at once and its ``recv`` event fires in order), then
queued; ``process()`` runs their :meth:`~peng3dnet.packet.Packet.receive`
handlers on whichever thread calls it: a process thread
(``process_async()``), or the game loop each frame.  A packet class that
does not override ``receive`` is not queued at all.  When a connection has
``net.limits.recv_queue`` packets waiting, reading from it pauses until
``process()`` catches up (back-pressure, nothing dropped).

``send_message()`` may be called from any thread: it encodes in the
caller's thread, then appends to the connection under its lock and tries to
send at once; what the kernel does not take is written by the network thread
when the socket becomes writable.  It never blocks on the network.

Lifecycle events fire on the network thread, ``send`` events on the sending
thread; see :mod:`peng3dnet.events` and the README's catalog.
"""

from __future__ import annotations

import functools
import itertools
import logging
import selectors
import socket
import ssl
import struct
import threading
import time
from collections import deque
from typing import Any, NamedTuple

import msgpack

from . import conntypes, errors, packet, registry, util, version  # noqa: F401  (0.1.x: net.packet, ...)
from . import events as _events
from . import tls as _tls
from .conntypes import ClassicConnectionType, ConnectionType, PingConnectionType
from .constants import *  # noqa: F403  (0.1.x: peng3dnet.net exposes the constants)
from .constants import (
    CONNTYPE_CLASSIC,
    CONNTYPE_NOTSET,
    CONNTYPE_PING,
    MODE_CLOSED,
    MODE_NOTSET,
    PID_CLOSECONN,
    PID_FIRST_FREE,
    PID_HELLO,
    PID_SETTYPE,
    SIDE_CLIENT,
    SIDE_SERVER,
    SSLSEC_NONE,
    SSLSEC_WRAPPED,
    STATE_ACTIVE,
    STATE_CLOSED,
    STATE_HANDSHAKE_WAIT1,
    STATE_HELLOWAIT,
    STATE_INIT,
    STRUCT_FORMAT_HEADER,
    STRUCT_FORMAT_LENGTH32,
)
from .constants import __all__ as _constants_all
from .errors import (
    AlreadyRegisteredError,
    ConnectionClosedError,
    InvalidAddressError,
    LocalProtocolError,
    NetworkError,
    RegistryError,
    TimedOutError,
    TLSError,
    UnknownPacketError,
    WriteBufferFullError,
)
from .events.bus import Route as _Route
from .packet import Packet, SmartPacket, smart_check
from .packet.internal import INTERNAL_PACKETS
from .protocol.codec import frame_body, pack
from .protocol.connection import (
    ConnectionClosed,
    ConnTypeRequested,
    HandshakeCompleted,
    HeartbeatAcked,
    Output,
    PacketReceived,
    PacketSent,
    ProtocolConnection,
)
from .protocol.framing import LENGTH, encode_frame
from .protocol.handshake import HandshakeState
from .registry import PacketRegistry
from .transport import EVENT_READ, EVENT_WRITE, WOULD_BLOCK, Channel, Reactor
from .userlog import report_user_error
from .util import ConfigView, normalize_addr_socketstyle

__all__ = [
    "STRUCT_HEADER",
    "STRUCT_LENGTH32",
    "Server",
    "ClientOnServer",
    "Client",
    "NetworkLoop",
    "ConnectionStats",
    "ServerStats",
    *_constants_all,
]

log = logging.getLogger(__name__)

STRUCT_HEADER = struct.Struct(STRUCT_FORMAT_HEADER)
"""The 6-byte packet header: id and flags (``!IH``)."""
STRUCT_LENGTH32 = struct.Struct(STRUCT_FORMAT_LENGTH32)
"""The 4-byte length prefix (``!I``)."""

_INTERNAL_IDS = frozenset(pid for _, pid, _ in INTERNAL_PACKETS)
_CLOSE_LINGER = 2.0  # seconds to wait for the peer's EOF after our closeconn


class _SendPlan(NamedTuple):
    """What sending one ``ptype`` needs (cached per ptype; see :meth:`_Peer._send_plan`)."""

    regver: int  # the registry version it was made for
    pid: int
    pobj: Any  # the packet object, or None
    hooks: bool  # call pobj._send after queueing (the class overrides _send or send)
    smart: bool  # a SmartPacket (the strict send check applies)
    keytype: type  # type(ptype): 64.0 or True must not find the plan of 64 or 1


class _RecvPlan(NamedTuple):
    """What receiving one pid needs (cached per pid; see :meth:`_Peer._recv_plan`)."""

    regver: int
    pobj: Any
    deliver: bool  # the class overrides _receive or receive (else nothing to call)


_BASE_RECEIVE = (Packet._receive, Packet.receive)  # a class that keeps both is not queued
_BASE_SEND = (Packet._send, Packet.send)
_NO_EVENT = object()  # marks a send the connection type does not announce
_LOCAL = threading.local()  # per thread: .pack, a msgpack Packer's pack method
_PACKER_KEEP = 256 * 1024  # a Packer that encoded more than this is dropped


def _thread_pack(value: Any) -> bytes:
    """msgpack-encode with this thread's Packer (it reuses its buffer; a
    Packer is not thread-safe, so one per thread).  After a body larger than
    ``_PACKER_KEEP`` (measured before any compression) the Packer is
    dropped, so no thread keeps a huge buffer."""
    try:
        pack = _LOCAL.pack
    except AttributeError:
        pack = _LOCAL.pack = msgpack.Packer().pack
    body: bytes = pack(value)
    if len(body) > _PACKER_KEEP:
        del _LOCAL.pack
    return body


class ConnectionStats:
    """Counters of one connection (read them from any thread; they are
    updated on the network and sending threads without a lock, so a read
    may be one packet behind)."""

    __slots__ = ("bytes_in", "bytes_out", "packets_in", "packets_out", "rtt", "_since", "_seen", "_wall0")

    def __init__(self) -> None:
        self.bytes_in = 0
        """Bytes received (as read from the socket, after TLS)."""
        self.bytes_out = 0
        """Bytes queued for sending (frames, internal packets included)."""
        self.packets_in = 0
        """Packets received (internal packets included)."""
        self.packets_out = 0
        """Packets sent with ``send_message`` plus internal packets."""
        self.rtt: float | None = None
        """Last round-trip time in seconds (heartbeat extension), or ``None``."""
        self._since = time.monotonic()
        self._seen = self._since
        self._wall0 = time.time() - self._since

    @property
    def connected_since(self) -> float:
        """Wall-clock time (``time.time()``) the connection was made."""
        return self._wall0 + self._since

    @property
    def last_seen(self) -> float:
        """Wall-clock time bytes were last received."""
        return self._wall0 + self._seen

    def as_dict(self) -> dict[str, Any]:
        """A plain dict of every counter."""
        return {
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "packets_in": self.packets_in,
            "packets_out": self.packets_out,
            "rtt": self.rtt,
            "connected_since": self.connected_since,
            "last_seen": self.last_seen,
        }


class ServerStats:
    """Totals of a server, open and closed connections together (read from
    any thread; see :class:`ConnectionStats`)."""

    def __init__(self, server: Server) -> None:
        self._server = server
        self.connections_total = 0
        """Connections accepted so far."""
        self.connections_refused = 0
        """Connections refused because of ``net.limits.max_clients``."""
        self._closed = {"bytes_in": 0, "bytes_out": 0, "packets_in": 0, "packets_out": 0}

    def _add_closed(self, stats: ConnectionStats) -> None:
        for key in self._closed:
            self._closed[key] += getattr(stats, key)

    def _total(self, key: str) -> int:
        live = sum(getattr(link.stats, key) for link in list(self._server._links.values()))
        return self._closed[key] + live

    @property
    def connections_open(self) -> int:
        """Connections open now."""
        return len(self._server._links)

    @property
    def bytes_in(self) -> int:
        """Bytes received, all connections."""
        return self._total("bytes_in")

    @property
    def bytes_out(self) -> int:
        """Bytes sent, all connections."""
        return self._total("bytes_out")

    @property
    def packets_in(self) -> int:
        """Packets received, all connections."""
        return self._total("packets_in")

    @property
    def packets_out(self) -> int:
        """Packets sent, all connections."""
        return self._total("packets_out")

    def as_dict(self) -> dict[str, Any]:
        """A plain dict of every counter."""
        keys = ("connections_total", "connections_refused", "connections_open", "bytes_in", "bytes_out",
                "packets_in", "packets_out")
        return {k: getattr(self, k) for k in keys}


class _Link:
    """One connection's state: core, channel, connection type and owner."""

    __slots__ = (
        "proto", "chan", "owner", "cid", "ctobj", "queued", "resume_at", "eof", "local_closed",
        "stats", "sslsec", "hb_sent", "rate_p", "rate_b", "rate_t", "plain", "tls_server",
        "lib_state", "on_recv", "on_send", "polite", "app_closed",
    )

    def __init__(self, proto: ProtocolConnection, chan: Channel, owner: Any, cid: int | None) -> None:
        self.proto = proto
        self.chan = chan
        self.owner = owner
        self.cid = cid
        self.ctobj: ConnectionType | None = None
        self.queued = 0  # packets waiting for process() (network thread adds, process subtracts)
        self.resume_at = 0
        self.eof = False
        self.local_closed = False  # we closed it: drop packets still in the batch
        self.stats = ConnectionStats()
        self.sslsec = SSLSEC_NONE
        self.hb_sent = 0.0
        self.rate_p = 0.0  # token buckets (packets, bytes), refilled at rate_t
        self.rate_b = 0.0
        self.rate_t = 0.0
        self.plain = False  # plaintext, first read checked: _read's fast path
        self.tls_server = False
        self.lib_state = STATE_INIT  # the application state the library set last
        self.polite = False  # closed on purpose (application, stop): wait for the peer's EOF
        self.app_closed = False  # the application's side of the close (on_close) was delivered
        # The owner's on_receive/on_send hooks, None when not overridden
        # (the per-packet paths skip them then).
        cls = type(owner)
        self.on_recv = None if getattr(cls, "on_receive", None) in _NOOP_HOOKS else owner.on_receive
        self.on_send = None if getattr(cls, "on_send", None) in _NOOP_HOOKS else owner.on_send


class _Peer:
    """What Server and Client share: config, registry, events, the process
    queue, the send path and the handling of the core's outputs."""

    side = SIDE_SERVER
    is_server = True
    """Whether this peer is a server (0.1.x API)."""
    is_client = False
    """Whether this peer is a client (0.1.x API)."""
    _role = "server"
    _state_attr = "state"  # the owner's application state: ClientOnServer.state / Client.remote_state
    _thread_name = "peng3dnet Thread"

    def __init__(self, peng: Any = None, cfg: dict[str, Any] | None = None) -> None:
        self.peng = peng
        """The ``peng3d.Peng`` instance given, or ``None``."""
        self.cfg = ConfigView(cfg, peng)
        """Layered config: ``cfg`` overrides, then ``peng.cfg``, then defaults."""
        self.registry = PacketRegistry()
        """The packet registry (name <-> id <-> packet object)."""
        self.conntypes: dict[str, ConnectionType] = {}
        """Connection types by name."""
        self._initialized = False
        self._reactor = Reactor(self._thread_name)
        self._pqueue: deque[tuple[_Link, Any, int, Any]] = deque()
        self._pcond = threading.Condition(threading.Lock())
        self._pwaiters = 0
        self._notify_pending = False
        self._qlock = threading.Lock()
        self._process_stop = False
        self._process_thread: threading.Thread | None = None
        self._thread: threading.Thread | None = None
        self._loop_started = False
        self._loop_done = threading.Event()
        self._stop_reason: str | None = None
        self._shared: NetworkLoop | None = None
        prefix = f"peng3dnet:{self._role}."
        self._ev_recv = prefix + ("connection.recv" if self._role == "server" else "recv")
        self._ev_send = prefix + ("connection.send" if self._role == "server" else "send")
        self._send_plans: dict[Any, _SendPlan] = {}
        self._recv_plans: dict[int, _RecvPlan] = {}
        self._route_recv = _Route(self._ev_recv)
        self._route_send = _Route(self._ev_send)
        self._sig_recv = self._route_recv.sig  # for the "anyone listening?" test per packet
        self._sig_send = self._route_send.sig
        self.cfg.on_change = self._refresh_hot
        self._refresh_hot()
        if self.cfg["net.encrypt.enabled"]:
            log.warning("! net.encrypt.enabled: protocol 2 has no AES encryption; use net.ssl.enabled (TLS)")

    @property
    def run(self) -> bool:
        """True until the peer stops (:meth:`stop`, :meth:`shutdown`, or a
        client's connection closing) and no received packet waits for
        :meth:`process` any more: programs of 0.1.x loop
        ``while peer.run: peer.process(wait=True, timeout=...)``, and that
        loop handles every packet that arrived before the stop.  Setting it
        to ``False`` calls :meth:`stop`.

        Thread safety: any thread.
        """
        return self._stop_reason is None or bool(self._pqueue) or self._close_undelivered()

    @run.setter
    def run(self, value: bool) -> None:
        if not value:
            self.stop()

    def _close_undelivered(self) -> bool:
        return False

    def stop(self) -> None:
        raise NotImplementedError

    # --- events ----------------------------------------------------------------------
    def _refresh_hot(self) -> None:
        """Copy the config values the per-packet path needs into attributes.

        Called at start, when ``cfg[key] = value`` is set on this peer, and by
        the housekeeping timer (so a change in a Peng's config is seen within
        a second).
        """
        cfg = self.cfg
        self._h_events = bool(cfg["net.events.enable"])
        self._h_print_recv = bool(cfg["net.debug.print.recv"])
        self._h_print_send = bool(cfg["net.debug.print.send"])
        self._h_recv_queue = int(cfg["net.limits.recv_queue"])
        self._h_write_cap = int(cfg["net.limits.write_buffer"])
        self._h_write_raise = cfg["net.limits.write_buffer_action"] == "raise"
        self._h_rate_p = float(cfg["net.limits.rate.packets"])
        self._h_rate_b = float(cfg["net.limits.rate.bytes"])
        self._h_rate_burst = float(cfg["net.limits.rate.burst"])
        self._h_rate_drop = cfg["net.limits.rate.action"] == "drop"
        self._h_rate = self._h_rate_p > 0 or self._h_rate_b > 0
        self._h_inline = bool(cfg["net.process.inline"])
        self._h_strict_send = bool(cfg["net.smartpacket.strict_send"])
        self._h_compress = (
            bool(cfg["net.compress.enabled"]),
            int(cfg["net.compress.threshold"]),
            int(cfg["net.compress.level"]),
        )

    def _emit_packet(self, route: _Route, link: _Link, pid: int, key: str, msg: Any) -> None:
        """Emit a per-packet event (recv/send) through a cached route: no
        data dict is built when nobody listens (the caller checked
        ``_h_events``)."""
        seen, targets = route.cache
        if seen != route.sig.version:
            targets = route.refresh(self)
        peng = self.peng
        if targets is None:  # receivers the route cannot cache: the general path
            self._emit_conn(route.name, link, {"pid": pid, key: msg})
            return
        if not targets and peng is None:
            return
        data = {"pid": pid, key: msg, "peng": peng, self._role: self}
        if self.side == SIDE_SERVER:
            data["client"] = link.owner
        name = route.name
        for receiver in targets:
            receiver(self, name, data)  # positional: a little cheaper than blinker's keywords
        self._to_peng(name, data)

    def _to_peng(self, event: str, data: dict[str, Any]) -> None:
        if self.peng is not None:
            try:
                self.peng.sendEvent(event, data)
            except Exception:
                log.exception("! peng.sendEvent(%r) raised", event)

    def _emit(self, event: str, data: dict[str, Any]) -> None:
        if not self._h_events:
            return
        data.setdefault("peng", self.peng)
        data.setdefault(self._role, self)
        _events.emit(event, self, data)
        self._to_peng(event, data)

    def _emit_conn(self, event: str, link: _Link, data: dict[str, Any]) -> None:
        """Emit a connection's event: the server's carry its ``client``."""
        if self.side == SIDE_SERVER:
            data["client"] = link.owner
        self._emit(event, data)

    # --- registration ----------------------------------------------------------------
    def register_packet(self, name: str, obj: Any, n: int | None = None) -> int:
        """Register a packet object under ``name`` (id ``n`` or the next free).

        Returns:
            The packet id.

        Raises:
            AlreadyRegisteredError: Name or id taken.
            RegistryError: Invalid name or id.

        Thread safety: any thread, before connections are made.
        """
        return self.registry.register(obj, name, n)

    def _register_internal(self) -> None:
        for name, pid, cls in INTERNAL_PACKETS:
            if name not in self.registry:
                self.registry.register(cls(self.registry, self), name, pid)
        builtin: tuple[tuple[str, type[ConnectionType]], ...] = (
            (CONNTYPE_CLASSIC, ClassicConnectionType),
            (CONNTYPE_PING, PingConnectionType),
        )
        for ctname, ctcls in builtin:
            if ctname not in self.conntypes:
                self.conntypes[ctname] = ctcls(self)

    def _call_hooks(self) -> None:
        names = sorted(dir(self))
        for prefix in ("_reg_packets_", "_reg_conntypes_"):
            for name in names:
                if name.startswith(prefix):
                    getattr(self, name)()

    # --- connections (shared) ------------------------------------------------------------
    def _new_proto(self, conntype: str = CONNTYPE_CLASSIC) -> ProtocolConnection:
        cfg = self.cfg
        return ProtocolConnection(
            self.side,
            registry=self.registry,
            conntype=conntype,
            max_packet_size=int(cfg["net.limits.max_packet_size"]),
            max_decompressed_size=int(cfg["net.limits.max_decompressed_size"]),
            compress=bool(cfg["net.compress.enabled"]),
            compress_threshold=int(cfg["net.compress.threshold"]),
            compress_level=int(cfg["net.compress.level"]),
            autosync=bool(cfg["net.registry.autosync"]),
            missing_packet_action=str(cfg["net.registry.missingpacketaction"]),
            extensions={"heartbeat"} if cfg["net.heartbeat.enabled"] else frozenset(),
        )

    @staticmethod
    def _prepare_socket(sock: socket.socket) -> None:
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def _on_ready(self, link: _Link, mask: int) -> None:
        """Selector callback for one connection (network thread)."""
        chan = link.chan
        if chan.closed:
            return
        if chan.tls_pending:
            self._tls_step(link)
            return
        if mask & EVENT_WRITE or chan.error is not None:
            with chan.lock:
                chan.flush()
            if chan.error is not None:
                self._abort(link, "socketerror")
                return
            if not chan.out:
                if chan.closing:
                    self._closing_flushed(link)
                else:
                    chan.update_interest()
        if mask & EVENT_READ:
            self._read(link)

    def _read(self, link: _Link) -> None:
        """One ``recv()`` and everything it leads to (network thread)."""
        chan = link.chan
        proto = link.proto
        reactor = self._reactor
        total = 0
        eof = False
        with chan.lock:  # TLS objects must not be used by two threads at once
            try:
                n = chan.sock.recv_into(reactor.read_buffer)
                if n and link.plain and not chan.closing:
                    # The common case: plaintext, open, some bytes.
                    total = n
                    proto.receive_data(reactor.read_view[:n])
                elif n == 0:
                    eof = True
                elif chan.closing:
                    # draining while we wait for the peer's EOF: discard
                    while n and isinstance(chan.sock, ssl.SSLSocket) and chan.sock.pending():
                        n = chan.sock.recv_into(reactor.read_buffer)
                    return
                else:
                    view = reactor.read_view
                    if link.sslsec == SSLSEC_NONE and self.side == SIDE_SERVER and n >= 2 and view[:2] == b"\x16\x03":
                        # The first read on a plaintext server (link.plain is
                        # set after it): a TLS ClientHello.
                        log.info("! server cid=%s: client speaks TLS, TLS is not enabled here", link.cid)
                        link.local_closed = True
                        proto.receive_eof("tlsnotenabled")
                        eof = True
                        n = 0
                    link.plain = link.sslsec == SSLSEC_NONE
                    tls = not link.plain
                    while n:
                        total += n
                        proto.receive_data(view[:n])
                        if not (tls and chan.sock.pending()):  # type: ignore[attr-defined]
                            break
                        n = chan.sock.recv_into(reactor.read_buffer)
                        eof = n == 0
            except WOULD_BLOCK:
                if not total:
                    return
            except OSError as exc:
                log.info("! %s cid=%s: recv failed: %s", self._role, link.cid, exc)
                eof = True
                if not chan.closing:
                    proto.receive_eof("tlserror" if isinstance(exc, ssl.SSLError) else "socketerror")
            if eof:
                if not chan.closing:
                    link.eof = True
                    proto.receive_eof()
            outs = proto.drain_received()
            if proto.has_data_to_send:
                self._push(link)
        if eof and chan.closing:  # the peer saw our closeconn and closed: done
            chan.close()
            self._channel_closed(link)
            return
        stats = link.stats
        stats.bytes_in += total
        stats._seen = time.monotonic()
        if outs:
            if self._h_rate and self.side == SIDE_SERVER and not self._rate_ok(link, total, outs):
                return
            self._handle_outputs(link, outs)
        if link.eof and not chan.closed:
            chan.close()
            self._channel_closed(link)

    def _rate_ok(self, link: _Link, nbytes: int, outs: list[Output]) -> bool:
        """Token buckets per connection (server side).  Return whether to go on."""
        rate_p = self._h_rate_p
        rate_b = self._h_rate_b
        burst = self._h_rate_burst
        now = link.stats._seen
        if link.rate_t == 0.0:
            link.rate_p, link.rate_b, link.rate_t = rate_p * burst, rate_b * burst, now
        dt = now - link.rate_t
        link.rate_t = now
        link.rate_p = min(rate_p * burst, link.rate_p + dt * rate_p)
        link.rate_b = min(rate_b * burst, link.rate_b + dt * rate_b)
        npackets = sum(1 for o in outs if isinstance(o, PacketReceived))
        if self._h_rate_drop:
            # Let through what the buckets allow, drop the rest of this read's
            # application packets; dropped packets cost no tokens.
            allowed = int(link.rate_p) if rate_p > 0 else npackets
            if rate_b > 0 and link.rate_b < nbytes:
                allowed = 0
            link.rate_b = max(0.0, link.rate_b - nbytes)
            if allowed >= npackets:
                link.rate_p -= npackets
                return True
            kept: list[Output] = []
            dropped = 0
            for o in outs:
                if isinstance(o, PacketReceived) and o.pid >= PID_FIRST_FREE:
                    if allowed <= 0:
                        dropped += 1
                        continue
                    allowed -= 1
                kept.append(o)
            link.rate_p = max(0.0, link.rate_p - (npackets - dropped))
            log.debug("! server cid=%s: over the rate limit, dropped %d packets", link.cid, dropped)
            self._handle_outputs(link, kept)
            return False
        link.rate_p -= npackets
        link.rate_b -= nbytes
        if (rate_p <= 0 or link.rate_p >= 0) and (rate_b <= 0 or link.rate_b >= 0):
            return True
        log.info("! server cid=%s: over the rate limit, closing", link.cid)
        self._handle_outputs(link, [o for o in outs if not isinstance(o, PacketReceived) or o.pid < PID_FIRST_FREE])
        self._close_link(link, "ratelimit")
        return False

    def _tls_step(self, link: _Link) -> None:
        """Drive a non-blocking server-side TLS handshake (network thread)."""
        chan = link.chan
        sock = chan.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            with chan.lock:
                sock.do_handshake()
        except ssl.SSLWantReadError:
            chan.tls_pending = EVENT_READ
            chan.update_interest()
            return
        except ssl.SSLWantWriteError:
            chan.tls_pending = EVENT_WRITE
            chan.update_interest()
            return
        except (ssl.SSLError, OSError) as exc:
            log.info("! %s cid=%s: TLS handshake failed: %s", self._role, link.cid, exc)
            chan.tls_pending = 0
            link.local_closed = True
            with chan.lock:
                link.proto.receive_eof("tlserror")
                outs = link.proto.drain_received()
            self._handle_outputs(link, outs)
            if not chan.closed:
                chan.close()
                self._channel_closed(link)
            return
        chan.tls_pending = 0
        link.sslsec = _tls.security_level(sock, True)
        log.info("= server cid=%s: TLS established (%s, level %d)", link.cid, sock.version(), link.sslsec)
        chan.update_interest()
        self._start_protocol(link)

    def _start_protocol(self, link: _Link) -> None:
        raise NotImplementedError

    def _abort(self, link: _Link, reason: str) -> None:
        """The socket broke: close without a handshake (network thread)."""
        chan = link.chan
        with chan.lock:
            link.eof = True
            link.proto.receive_eof(reason)
            outs = link.proto.drain_received()
        self._handle_outputs(link, outs)
        if not chan.closed:
            chan.close()
            self._channel_closed(link)

    def _handle_outputs(self, link: _Link, outs: list[Output]) -> None:
        """Act on the core's outputs, in order (network thread, lock released)."""
        queued = False
        # "Anyone listening to recv?" once per read, not per packet: a
        # subscription made while a read's packets are handled applies from
        # the next read.
        listen = self._h_events and (bool(self._sig_recv.receivers) or self.peng is not None)
        for o in outs:
            if isinstance(o, PacketReceived):
                link.stats.packets_in += 1
                if o.pid in _INTERNAL_IDS:
                    if o.pid == PID_HELLO:  # (only a server sends hello)
                        self._lib_state(link, STATE_HANDSHAKE_WAIT1)
                    self._debug_print("recv", link, o.pid, o.msg)
                    if self._h_events:
                        self._emit_packet(self._route_recv, link, o.pid, "msg", o.msg)
                elif not link.local_closed:
                    # Packets that preceded the peer's closeconn are delivered.
                    queued = self._on_app_packet(link, o, listen) or queued
            elif isinstance(o, PacketSent):
                link.stats.packets_out += 1
                self._debug_print("send", link, o.pid, o.msg)
                if self._h_events:
                    self._emit_packet(self._route_send, link, o.pid, "data", o.msg)
                if o.pid == PID_SETTYPE and self.side == SIDE_CLIENT:
                    # The client chose its type: hand the connection to it.
                    ct = self.conntypes.get(link.proto.conntype)
                    link.ctobj = ct
                    if ct is not None:
                        self._type_chosen(link, ct)
                        ct.init(link.cid)
            elif isinstance(o, ConnTypeRequested):
                self._on_conntype(link, o.conntype)
            elif isinstance(o, HandshakeCompleted):
                log.info("= %s cid=%s: handshake complete (%s)", self._role, link.cid, link.proto.conntype)
                try:
                    link.owner.on_handshake_complete()
                except Exception:
                    report_user_error("! %s cid=%s: on_handshake_complete raised", self._role, link.cid)
                self._after_handshake(link)
            elif isinstance(o, HeartbeatAcked):
                self._on_heartbeat_ack(link, o.msg)
            elif isinstance(o, ConnectionClosed):
                self._on_closed(link, o)
        if queued and self._pwaiters and not self._notify_pending:
            reactor = self._reactor
            if reactor.running and reactor.in_loop():
                # One wake-up per select(), after every socket it returned
                # was read: the process thread then gets a batch, and the GIL
                # when the network thread blocks, not at its next recv().
                self._notify_pending = True
                reactor.after_io(self._notify_process)
            else:
                self._notify_process()

    def _notify_process(self) -> None:
        self._notify_pending = False
        with self._pcond:
            self._pcond.notify_all()

    def _on_heartbeat_ack(self, link: _Link, msg: Any) -> None:
        sent = msg.get("t") if isinstance(msg, dict) else None
        if not isinstance(sent, float):
            return
        rtt = max(0.0, time.monotonic() - sent)
        link.stats.rtt = rtt
        event = "peng3dnet:server.connection.heartbeat" if self.side == SIDE_SERVER else "peng3dnet:client.heartbeat"
        if self._h_events:
            self._emit_conn(event, link, {"rtt": rtt, "stats": link.stats.as_dict()})

    def _housekeeping(self) -> None:
        """Timeouts and heartbeats, on a timer (network thread)."""
        self._refresh_hot()
        cfg = self.cfg
        now = time.monotonic()
        hs_timeout = float(cfg["net.timeout.handshake"])
        idle = float(cfg["net.timeout.idle"])
        hb_interval = float(cfg["net.heartbeat.interval"])
        hb_timeout = float(cfg["net.heartbeat.timeout"])
        for link in self._all_links():
            proto = link.proto
            if not proto.is_open or link.local_closed:
                continue
            stats = link.stats
            # Custom connection types (not classic, not ping) run their own
            # protocol after settype: the handshake timeout stops there.
            pending = proto.state != HandshakeState.ACTIVE and (
                proto.state != HandshakeState.TYPESET or proto.conntype in (CONNTYPE_CLASSIC, CONNTYPE_PING)
            )
            if hs_timeout > 0 and pending and now - stats._since > hs_timeout:
                hint = " (a TLS peer on a plaintext port, or the reverse?)" if stats.bytes_in == 0 else ""
                log.info("! %s cid=%s: handshake not complete after %.1f s%s", self._role, link.cid, hs_timeout, hint)
                self._close_link(link, "handshaketimeout")
                continue
            silent = now - stats._seen
            if idle > 0 and silent > idle:
                log.info("! %s cid=%s: nothing received for %.1f s", self._role, link.cid, silent)
                self._close_link(link, "timeout")
                continue
            if "heartbeat" in proto.negotiated and proto.state == HandshakeState.ACTIVE:
                if hb_timeout > 0 and silent > hb_timeout:
                    log.info("! %s cid=%s: peer silent for %.1f s", self._role, link.cid, silent)
                    self._close_link(link, "timeout")
                    continue
                if now - link.hb_sent >= hb_interval:
                    link.hb_sent = now
                    with link.chan.lock:
                        if proto.send_heartbeat({"t": now}):
                            self._push(link)
        self._schedule_housekeeping()

    def _schedule_housekeeping(self) -> None:
        if self._loop_done.is_set():  # a client that left a shared loop
            return
        cfg = self.cfg
        periods = [1.0]
        for key, div in (("net.timeout.handshake", 4), ("net.timeout.idle", 4), ("net.heartbeat.interval", 2)):
            v = float(cfg[key])
            if v > 0:
                periods.append(v / div)
        self._reactor.call_later(max(0.02, min(periods)), self._housekeeping)

    def _all_links(self) -> list[_Link]:
        raise NotImplementedError

    def _debug_print(self, kind: str, link: _Link, pid: int, msg: Any) -> None:
        if self._h_print_recv if kind == "recv" else self._h_print_send:
            log.info("%s %s cid=%s pid=%d %.200r", "<" if kind == "recv" else ">", self._role, link.cid, pid, msg)

    def _on_conntype(self, link: _Link, conntype: str) -> None:
        ct = self.conntypes.get(conntype)
        if ct is None:
            log.info("! server cid=%s: unknown connection type %.64r", link.cid, conntype)
            self._close_link(link, "unknownconntype")
            return
        link.ctobj = ct
        link.owner.conntype = conntype
        self._lib_state(link, STATE_HANDSHAKE_WAIT1)
        self._type_chosen(link, ct)
        ct.init(link.cid)

    def _lib_state(self, link: _Link, value: int) -> None:
        """Move the application state through the handshake, unless the
        application set a state of its own since the library's last move
        (network thread)."""
        owner = link.owner
        attr = self._state_attr
        if getattr(owner, attr, link.lib_state) == link.lib_state:
            setattr(owner, attr, value)
        link.lib_state = value

    def _type_chosen(self, link: _Link, ct: ConnectionType) -> None:
        """A connection type was chosen: its mode, and a ping connection is
        active at once (it has no handshake) (network thread)."""
        owner = link.owner
        if getattr(owner, "mode", MODE_NOTSET) == MODE_NOTSET:
            owner.mode = ct.mode
        if isinstance(ct, PingConnectionType):
            self._lib_state(link, STATE_ACTIVE)

    def _on_app_packet(self, link: _Link, o: PacketReceived, listen: bool) -> bool:
        """Check, announce and queue (or, inline, dispatch) one application
        packet; return whether it was queued for process() (network thread)."""
        pid, flags, msg, state = o
        ct = link.ctobj
        if ct is not None and type(ct).receive is not ConnectionType.receive:
            if not ct.receive(msg, pid, flags, link.cid):
                return False
        if state is not HandshakeState.ACTIVE and (state is not HandshakeState.TYPESET or link.proto.conntype == CONNTYPE_CLASSIC):
            # Application packets come after the handshake (a connection type
            # of its own may exchange them after settype).
            log.info("! %s cid=%s: packet %d before the handshake completed, closing", self._role, link.cid, pid)
            self._close_link(link, "smartpacketinvalid")
            return False
        plan = self._recv_plans.get(pid)
        if plan is None or plan[0] != self.registry.version:
            plan = self._recv_plan(pid)
            if plan is None:
                log.info("! %s cid=%s: unknown packet id %d", self._role, link.cid, pid)
                self._close_link(link, "unknownpacket")
                return False
        pobj = plan[1]
        if self._h_print_recv:
            self._debug_print("recv", link, pid, msg)
        if listen:
            self._emit_packet(self._route_recv, link, pid, "msg", msg)
        if not plan[2] and link.on_recv is None:
            return False  # nobody handles it: not queued
        if self._h_inline:
            self._deliver(link, pobj, pid, msg)
            return False
        self._pqueue.append((link, pobj, pid, msg))
        link.queued += 1
        limit = self._h_recv_queue
        if link.queued >= limit and not link.chan.paused:
            link.chan.paused = True
            link.resume_at = limit // 2
            link.chan.update_interest()
            log.debug("= %s cid=%s: reading paused, %d packets wait for process()", self._role, link.cid, link.queued)
        return True

    def _recv_plan(self, pid: int) -> _RecvPlan | None:
        """What receiving ``pid`` needs, cached until the registry changes:
        ``(registry version, packet object, deliver)``; ``None`` for an
        unknown id.  ``deliver`` is whether the class overrides ``_receive``
        or ``receive`` (network thread)."""
        regver = self.registry.version
        pobj = self.registry.find_obj(pid)
        if pobj is None or pid < PID_FIRST_FREE:
            return None
        cls = type(pobj)
        plan = _RecvPlan(regver, pobj, (cls._receive, cls.receive) != _BASE_RECEIVE)
        if len(self._recv_plans) > 4096:
            self._recv_plans.clear()
        self._recv_plans[pid] = plan
        return plan

    def _deliver(self, link: _Link, pobj: Any, pid: int, msg: Any) -> None:
        """Hand one packet to the application: ``pobj._receive``, then the
        owner's ``on_receive`` hook (the order of 0.1.x).  Errors raised there
        are reported (a traceback on stderr by default), never raised."""
        try:
            pobj._receive(msg, link.cid)
        except Exception:
            report_user_error("! %s cid=%s: packet handler %r raised", self._role, link.cid, pobj)
        if link.on_recv is not None:
            try:
                link.on_recv(pid, msg)
            except Exception:
                report_user_error("! %s cid=%s: on_receive raised", self._role, link.cid)

    def _on_closed(self, link: _Link, o: ConnectionClosed) -> None:
        chan = link.chan
        if o.error is not None:
            log.info("! %s cid=%s: protocol error, closing (%s): %s", self._role, link.cid, o.reason, o.error)
        else:
            log.info(
                "= %s cid=%s: connection closed by %s (%s)",
                self._role,
                link.cid,
                "peer" if o.by_peer else "us",
                o.reason,
            )
        if self.cfg["net.debug.print.close"]:
            log.info("= %s cid=%s closed: %s", self._role, link.cid, o.reason)
        chan.closing = True
        if not chan.closed:
            if link.eof or chan.error is not None:
                chan.close()
                self._channel_closed(link)
            else:
                with chan.lock:
                    flushed = chan.flush()
                if flushed:
                    self._closing_flushed(link)
                else:
                    chan.update_interest()
                chan.linger = self._reactor.call_later(_CLOSE_LINGER, lambda: self._force_close(link))
        self._connection_closed(link, o.reason)
        # The application's side of the close (on_close, STATE_CLOSED, the
        # server forgetting the client) comes after the packets that arrived
        # before it: behind them in the process queue when some wait there.
        if link.queued > 0:
            self._pqueue.append((link, None, -1, o.reason))
            self._notify_process()
        else:
            self._app_closed(link, o.reason)

    def _app_closed(self, link: _Link, reason: str | None) -> None:
        """The application's side of a close: the owner's ``on_close``
        hook, then ``STATE_CLOSED``/``MODE_CLOSED`` (network thread, or the
        thread that runs ``process()`` when packets that came before the
        close were waiting there)."""
        owner = link.owner
        try:
            owner.on_close(reason)
        except Exception:
            report_user_error("! %s cid=%s: on_close raised", self._role, link.cid)
        setattr(owner, self._state_attr, STATE_CLOSED)
        owner.mode = MODE_CLOSED
        self._forget(link)
        link.app_closed = True

    def _forget(self, link: _Link) -> None:
        pass

    def _closing_flushed(self, link: _Link) -> None:
        """Everything up to our ``closeconn`` was written (network thread).

        Answering the peer's close, or closing a peer for what it did, we
        half-close at once.  When the application closed (or stopped) we do not: we wait for the peer to close
        after it handled our ``closeconn`` (bounded by the linger timer), as
        some peers (0.1.x) take a half-close for a dead socket and drop the
        packets still waiting for their ``process()``."""
        chan = link.chan
        if not link.polite:
            chan.shutdown_write()
        chan.update_interest()

    def _force_close(self, link: _Link) -> None:
        if not link.chan.closed:
            link.chan.close()
            self._channel_closed(link)

    def _close_link(self, link: _Link, reason: str | None, polite: bool = False) -> None:
        """Close one connection with ``reason`` (any thread).  ``polite``:
        the application (or a stop) closes a well-behaved peer; see
        :meth:`_closing_flushed`."""
        chan = link.chan
        with chan.lock:
            if not link.proto.is_open:
                return
            link.local_closed = True
            link.polite = polite
            link.proto.close(reason)
            outs = link.proto.drain_received()
            if chan.tls_pending:
                # TLS not up yet: the closeconn cannot be sent; just drop the socket.
                link.proto.data_to_send()
                chan.error = NetworkError("closed during the TLS handshake")
            else:
                self._push(link)
        if self._reactor.in_loop():
            self._handle_outputs(link, outs)
        elif self._loop_active():
            self._reactor.call_soon(self._handle_outputs, link, outs)
        else:
            # No loop: nothing else will run; finish here.
            self._handle_outputs(link, outs)
            self._force_close(link)

    # --- sending ----------------------------------------------------------------------------
    def _lookup(self, ptype: Any) -> _SendPlan:
        """The send plan of ``ptype`` (see :meth:`_send_plan`), cached until
        the registry changes (any thread)."""
        try:
            plan = self._send_plans[ptype]
        except (KeyError, TypeError):  # not cached yet, or an unhashable packet object
            return self._send_plan(ptype)
        if plan[0] != self.registry.version or plan[5] is not type(ptype):
            # (the type test: 64.0 or True must not find the plan of 64 or 1)
            return self._send_plan(ptype)
        return plan

    @staticmethod
    def _check_sendable(link: _Link) -> None:
        """Application packets go out after the handshake (or, on a
        connection type of its own, after settype) (any thread)."""
        proto = link.proto
        state = proto.state
        if state is HandshakeState.ACTIVE or (state is HandshakeState.TYPESET and proto.conntype != CONNTYPE_CLASSIC):
            return
        if not proto.is_open:
            raise ConnectionClosedError("connection is closed", proto.close_reason)
        raise LocalProtocolError(f"cannot send yet (connection state {state.name}); wait for the handshake")

    def _strict_refused(self, link: _Link, pobj: Any, pid: int) -> bool:
        return self._h_strict_send and not smart_check(pobj, link.cid, receiving=False)

    def _send(self, link: _Link, ptype: Any, data: Any) -> None:
        _, pid, pobj, hooks, smart, _ = self._lookup(ptype)
        self._check_sendable(link)
        if smart and self._strict_refused(link, pobj, pid):
            raise LocalProtocolError(
                f"packet {self.registry.get_name(pid)!r} is not valid on this connection now "
                "(net.smartpacket.strict_send is on)"
            )
        ct = link.ctobj
        announce = True
        if ct is not None and type(ct).send is not ConnectionType.send:
            announce = ct.send(data, pid, link.cid)
        frame = link.proto.encode_packet(pid, data, _thread_pack)  # outside the lock
        self._send_frame(link, frame, pid, data if announce else _NO_EVENT)
        if hooks:
            pobj._send(data, link.cid)
        if link.on_send is not None:
            link.on_send(ptype, data)

    def _send_plan(self, ptype: Any) -> _SendPlan:
        """Look up what sending ``ptype`` needs and cache it (any thread).

        Returns ``(registry version, pid, packet object, hooks, smart, type
        of ptype)``: ``hooks`` is whether the packet's ``_send``/``send``
        must be called after queueing (the class overrides one of them),
        ``smart`` whether it is a :class:`~peng3dnet.packet.SmartPacket`.
        """
        reg = self.registry
        regver = reg.version
        try:
            pid = reg.get_id(ptype)
        except RegistryError:
            if isinstance(ptype, int) and not isinstance(ptype, bool):
                raise UnknownPacketError(f"packet id {ptype} is not registered") from None
            raise
        if pid in _INTERNAL_IDS:
            raise LocalProtocolError(f"internal packet {pid} cannot be sent by the application")
        pobj = reg.find_obj(pid)
        cls: Any = type(pobj)
        hooks = pobj is not None and (cls._send, cls.send) != _BASE_SEND
        plan = _SendPlan(regver, pid, pobj, hooks, isinstance(pobj, SmartPacket), type(ptype))
        plans = self._send_plans
        if len(plans) > 1024:  # bounded, whatever the caller passes
            plans.clear()
        try:
            plans[ptype] = plan
        except TypeError:
            pass
        return plan

    def _send_frame(self, link: _Link, frame: bytes, pid: int, data: Any, cork: bool = True) -> None:
        """Queue an encoded frame on one connection (any thread).  Fan-out
        paths pass ``cork=False`` (see :meth:`Channel.write`)."""
        chan = link.chan
        slow = False
        with chan.lock:
            if link.proto.closed:
                raise ConnectionClosedError("connection is closed", link.proto.close_reason)
            if chan.out and len(chan.out) + len(frame) > self._h_write_cap:
                if self._h_write_raise:
                    raise WriteBufferFullError(
                        f"{len(chan.out)} bytes wait for cid={link.cid}; the cap is {self._h_write_cap}"
                    )
                log.info("! %s cid=%s: peer does not read (%d bytes queued), closing", self._role, link.cid, len(chan.out))
                slow = True
            else:
                chan.write(frame, cork)
                stats = link.stats
                stats.packets_out += 1
                stats.bytes_out += len(frame)
                if data is not _NO_EVENT and self._h_events and (self._sig_send.receivers or self.peng is not None):
                    # Emitted under the lock so it cannot come after the close event.
                    self._emit_packet(self._route_send, link, pid, "data", data)
        if slow:
            self._close_slow(link)
            return
        if self._h_print_send:
            self._debug_print("send", link, pid, data)

    def _close_slow(self, link: _Link) -> None:
        # The peer does not read: what is queued cannot be delivered, so the
        # connection is closed at once (closeconn is queued but may never arrive).
        self._close_link(link, "slowconsumer")
        if self._reactor.in_loop():
            self._force_close(link)
        else:
            self._reactor.call_soon(self._force_close, link)



    @staticmethod
    def _push(link: _Link) -> None:
        """Write what the core queued and count it (channel lock held)."""
        data = link.proto.data_to_send()
        if data:
            link.chan.write(data)
            link.stats.bytes_out += len(data)

    def _feed(self, link: _Link, data: bytes) -> None:
        """receive_data() of both facades: bytes in as if read from the socket."""
        with link.chan.lock:
            link.proto.receive_data(data)
            outs = link.proto.drain_received()
            self._push(link)
        if self._loop_active() and not self._reactor.in_loop():
            self._reactor.call_soon(self._handle_outputs, link, outs)
        else:
            self._handle_outputs(link, outs)

    # --- peng3d-style API (names fixed) ---
    def addConnType(self, t: str, obj: ConnectionType) -> None:  # noqa: N802
        """Register a connection type under the name ``t``.

        Raises:
            AlreadyRegisteredError: The name is taken.

        Thread safety: any thread, before connections are made.
        """
        if t in self.conntypes:
            raise AlreadyRegisteredError(f"connection type {t!r} is already registered")
        self.conntypes[t] = obj

    def _send_raw(self, cid: int | None, pid: int, msg: Any) -> None:
        """Send a packet that is not in the registry (connection types)."""
        link = self._link(cid)
        chan = link.chan
        with chan.lock:
            link.proto.send_packet(pid, msg)
            self._push(link)
            link.stats.packets_out += 1

    # --- process queue -----------------------------------------------------------------------
    def _dispatch(self, link: _Link, pobj: Any, pid: int, msg: Any) -> None:
        if pobj is None:  # the close, queued behind the connection's last packets
            self._app_closed(link, msg)
            return
        self._deliver(link, pobj, pid, msg)
        with self._qlock:
            link.queued -= 1
            resume = link.chan.paused and link.queued <= link.resume_at
            if resume:
                link.chan.paused = False
        if resume:
            self._reactor.call_soon(link.chan.update_interest)

    def process(self, wait: bool = False, timeout: float | None = None) -> int:
        """Run the handlers of queued packets.

        Args:
            wait: When nothing is queued, wait for packets first.
            timeout: Longest wait in seconds (``None``: no limit).

        Returns:
            The number of packets processed.

        Thread safety: any thread; handlers run on the calling thread.  Call
        it from one thread only if handlers must not run concurrently.
        """
        q = self._pqueue
        if wait and not q:
            with self._pcond:
                self._pwaiters += 1
                try:
                    if not q and not self._process_stop:
                        self._pcond.wait(timeout)
                finally:
                    self._pwaiters -= 1
        n = 0
        for _ in range(len(q)):
            try:
                link, pobj, pid, msg = q.popleft()
            except IndexError:
                break
            self._dispatch(link, pobj, pid, msg)
            n += 1
        return n

    def _process_single(self, link: _Link) -> bool:
        q = self._pqueue
        for i, item in enumerate(q):
            if item[0] is link:
                try:
                    del q[i]
                except IndexError:
                    return False
                self._dispatch(*item)
                return True
        return False

    def process_forever(self) -> None:
        """Process packets until :meth:`stop`, waiting (not polling) between batches.

        Thread safety: run it on one thread (see :meth:`process_async`).
        """
        self._process_stop = False
        while not self._process_stop:
            self.process(wait=True)
        self.process()

    def process_async(self) -> threading.Thread:
        """Run :meth:`process_forever` in a daemon thread "peng3dnet process Thread".

        Returns:
            The thread.

        Thread safety: any thread.
        """
        t = threading.Thread(target=self.process_forever, name="peng3dnet process Thread", daemon=True)
        self._process_thread = t
        t.start()
        return t

    def _wake_process(self) -> None:
        with self._pcond:
            self._pcond.notify_all()

    # --- loop ----------------------------------------------------------------------------------
    def _run_loop(self, selector: Any) -> None:
        self._loop_started = True
        self._loop_done.clear()
        try:
            self._reactor.run(selector, self._on_loop_start)
        finally:
            try:
                self._on_loop_exit()
            finally:
                self._reactor.close()
                self._loop_done.set()

    def _loop_active(self) -> bool:
        return self._loop_started and not self._loop_done.is_set()

    def join(self, timeout: float | None = None) -> None:
        """Wait until the network loop has ended.

        Raises:
            TimedOutError: It did not end within ``timeout`` seconds.

        Thread safety: any thread but the network thread.
        """
        if not self._loop_started:
            return
        if not self._loop_done.wait(timeout):
            raise TimedOutError(f"{self._role} loop still running after {timeout} s")

    def _request_stop(self, reason: str) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason
        self._process_stop = True
        self._wake_process()
        if self._shared is not None:
            if self._loop_active():
                self._reactor.call_soon(self._leave_shared)
        else:
            self._reactor.stop()

    def _leave_shared(self) -> None:
        if self._loop_done.is_set():
            return
        try:
            self._on_loop_exit()
        finally:
            self._loop_done.set()

    def _after_handshake(self, link: _Link) -> None:
        pass

    def _connection_closed(self, link: _Link, reason: str | None) -> None:
        raise NotImplementedError

    def _channel_closed(self, link: _Link) -> None:
        pass

    def _on_loop_start(self) -> None:
        raise NotImplementedError

    def _on_loop_exit(self) -> None:
        raise NotImplementedError

    def _link(self, cid: int | None) -> _Link:
        raise NotImplementedError


def _resolve_addr(addr: Any, cfg: ConfigView, prefix: str) -> tuple[Any, ...]:
    port = cfg[f"{prefix}.addr.port"]
    if addr is None:
        addr = cfg[f"{prefix}.addr"]
    if addr is None:
        return normalize_addr_socketstyle((cfg[f"{prefix}.addr.host"], port))
    return normalize_addr_socketstyle(addr, port)


class ClientOnServer:
    """The server's view of one connected client.

    Args:
        server: The :class:`Server`.
        conn: The connected socket.
        addr: The client's address.
        cid: The connection id.

    Subclass it and pass the class as ``Server(clientcls=...)`` to add
    per-client state; the ``on_*`` hooks run on the network thread.
    """

    def __init__(self, server: Server, conn: socket.socket, addr: Any, cid: int) -> None:
        self.server = server
        """The server."""
        self.conn = conn
        """The socket."""
        self.addr = addr
        """The client's address."""
        self.cid = cid
        """The connection id (unique per server, increasing)."""
        self.state = STATE_INIT
        """The application's state of this connection (a ``STATE_*`` or a
        value of the application's own, e.g. ``STATE_LOGGEDIN`` or 100+).
        The library moves it through the handshake (``STATE_HELLOWAIT`` at
        accept, ``STATE_HANDSHAKE_WAIT1`` after ``settype``), the base
        :meth:`on_handshake_complete` sets ``STATE_ACTIVE`` (a ping
        connection is ``STATE_ACTIVE`` at once), and the close sets
        ``STATE_CLOSED``; in between the library never writes it.
        :class:`~peng3dnet.packet.SmartPacket` checks read it."""
        self.mode = MODE_NOTSET
        """The application's mode of this connection (``MODE_*``): the
        library sets ``MODE_PING`` on ping connections and ``MODE_CLOSED`` at
        the close; the rest is the application's."""
        self.conntype = CONNTYPE_NOTSET
        """The connection type name (``CONNTYPE_NOTSET`` before ``settype``)."""
        self._link: _Link | None = None

    @property
    def protocol_state(self) -> HandshakeState:
        """The library's protocol state of the connection (not :attr:`state`)."""
        return self._link.proto.state if self._link is not None else HandshakeState.INIT

    @property
    def close_reason(self) -> str | None:
        """Why the connection was closed (``None`` while open)."""
        return self._link.proto.close_reason if self._link is not None else None

    @property
    def stats(self) -> ConnectionStats:
        """Byte/packet counters, RTT, connected-since and last-seen times."""
        assert self._link is not None
        return self._link.stats

    @property
    def ssl_seclevel(self) -> int:
        """The connection's ``SSLSEC_*`` security level."""
        return self._link.sslsec if self._link is not None else SSLSEC_NONE

    @property
    def write_buffer_size(self) -> int:
        """Bytes queued for this client that the socket did not take yet
        (watch it for back-pressure; the cap is ``net.limits.write_buffer``)."""
        return len(self._link.chan.out) if self._link is not None else 0

    @property
    def extensions(self) -> frozenset[str]:
        """Extensions negotiated on this connection (e.g. ``heartbeat``)."""
        return self._link.proto.negotiated if self._link is not None else frozenset()

    def close(self, reason: str | None = None) -> None:
        """Close this connection (see :meth:`Server.close_connection`).

        Thread safety: any thread.
        """
        self.server.close_connection(self.cid, reason)

    def on_connect(self) -> None:
        """Hook: the TCP connection was accepted (network thread)."""

    def on_handshake_complete(self) -> None:
        """Hook: the handshake is complete (network thread).

        The default sets :attr:`state` to ``STATE_ACTIVE`` and emits
        ``peng3dnet:server.connection.handshakecomplete``.  An override may
        set another state (``STATE_LOGGEDIN``, a value of its own), with or
        without calling ``super()`` (without it, no event is emitted).
        """
        self.state = STATE_ACTIVE
        self.server._emit("peng3dnet:server.connection.handshakecomplete", {"client": self})

    def on_close(self, reason: str | None = None) -> None:
        """Hook: the connection was closed.

        It runs after the handlers of every packet that arrived before the
        close (as 0.1.x handled ``closeconn`` in order): on the network
        thread when none was waiting for ``process()``, else on the thread
        that runs ``process()``, right after the last of them.  Then
        :attr:`state` becomes ``STATE_CLOSED`` and the server forgets the
        client.  The close event (network thread, at once) is emitted
        whatever this does."""

    def on_receive(self, pid: int, msg: Any) -> None:
        """Hook: an application packet from this client was handled (after
        its packet's ``_receive``; the thread that runs ``process()``)."""

    def on_send(self, ptype: Any, data: Any) -> None:
        """Hook: an application packet to this client was queued (after the
        packet's ``_send``; the sending thread).  ``ptype`` as given to
        ``send_message``."""


class Server(_Peer):
    """A peng3dnet server: accepts clients and exchanges packets with them.

    Args:
        peng: A ``peng3d.Peng`` (events are forwarded to it, its config is
            consulted), or ``None``.
        addr: Address to bind (see :func:`~peng3dnet.util.normalize_addr_socketstyle`);
            default from ``net.server.addr`` / ``net.server.addr.host`` + ``.port``.
        clientcls: Class of the per-connection objects (a :class:`ClientOnServer`).
        cfg: Config overrides.

    Thread safety: every method may be called from any thread unless its
    docstring says otherwise.
    """

    side = SIDE_SERVER
    _role = "server"
    _thread_name = "peng3dnet Server Thread"

    def __init__(
        self,
        peng: Any = None,
        addr: Any = None,
        clientcls: type[ClientOnServer] | None = None,
        cfg: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(peng, cfg)
        self.addr: tuple[Any, ...] = _resolve_addr(addr, self.cfg, "net.server")
        """Address to bind; after :meth:`bind`, the address actually bound."""
        self.clientcls = clientcls if clientcls is not None else ClientOnServer
        """Class of the per-connection objects."""
        self.clients: dict[int, ClientOnServer] = {}
        """Open connections: cid -> ClientOnServer."""
        self.sock: socket.socket | None = None
        """The listening socket (after :meth:`bind`)."""
        self._cids = itertools.count(1)
        self._cid_lock = threading.Lock()
        self._links: dict[int, _Link] = {}
        self._open_channels = 0
        self._chan_cond = threading.Condition()
        self._shutdown_info: dict[str, Any] | None = None
        self.stats = ServerStats(self)
        """Server totals (accepted, refused, open, bytes and packets)."""
        self._ssl_ctx: ssl.SSLContext | None = None
        if self.cfg["net.ssl.enabled"]:
            self._ssl_ctx = _tls.server_context(self.cfg)

    # --- peng3d-style API (names fixed) ---
    def genCID(self) -> int:  # noqa: N802
        """Return a new connection id: unique, increasing ints from 1.

        Thread safety: any thread.
        """
        with self._cid_lock:
            return next(self._cids)

    def runBlocking(self, selector: Any = selectors.DefaultSelector) -> None:  # noqa: N802
        """Run the network loop in the calling thread until :meth:`stop`.

        Calls :meth:`initialize` and :meth:`bind` first if needed.

        Args:
            selector: The selector class to use.

        Thread safety: the calling thread becomes the network thread.
        """
        self.initialize()
        self.bind()
        self._run_loop(selector)

    def runAsync(self, selector: Any = selectors.DefaultSelector) -> threading.Thread:  # noqa: N802
        """Start the network loop in a daemon thread "peng3dnet Server Thread".

        Returns at once, after :meth:`initialize` and :meth:`bind` ran (so
        :attr:`addr` holds the bound address).

        Returns:
            The thread.
        """
        self.initialize()
        self.bind()
        t = threading.Thread(target=self._run_loop, args=(selector,), name=self._thread_name, daemon=True)
        self._thread = t
        self._loop_started = True
        self._loop_done.clear()
        t.start()
        return t

    def sendEvent(self, event: str, data: dict[str, Any] | None = None) -> None:  # noqa: N802
        """Emit an event: on the blinker bus and, if a Peng was given, to
        ``peng.sendEvent``.  Adds the ``peng`` and ``server`` keys.

        Thread safety: any thread; handlers run on it.
        """
        self._emit(event, dict(data) if data else {})

    # --- lifecycle ----------------------------------------------------------------------------
    def initialize(self) -> None:
        """Register the internal packets, the connection types and the mixin
        hooks (``_reg_packets_*``, ``_reg_conntypes_*``); emit ``initialize``.
        Repeated calls do nothing."""
        if self._initialized:
            return
        self._initialized = True
        self._register_internal()
        self._call_hooks()
        self._emit("peng3dnet:server.initialize", {})

    def bind(self) -> None:
        """Create the listening socket and bind it (backlog 128); emit ``bind``
        with the bound address.  Repeated calls do nothing.

        Raises:
            NetworkError: The address cannot be bound.
            InvalidAddressError: The address cannot be resolved.
        """
        if self.sock is not None:
            return
        self.initialize()
        host, port = self.addr[0], self.addr[1]
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise InvalidAddressError(f"cannot resolve {host!r}: {exc}") from exc
        family, socktype, proto, _, sockaddr = infos[0]
        sock = socket.socket(family, socktype, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPV6_V6ONLY"):
                # net.server.dualstack: one IPv6 socket that also takes IPv4 clients
                dual = bool(self.cfg["net.server.dualstack"])
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual else 1)
            sock.bind(sockaddr)
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise NetworkError(f"cannot bind {host!r}:{port}: {exc}") from exc
        sock.setblocking(False)
        self.sock = sock
        self.addr = sock.getsockname()[:2]
        log.info("= server listening on %s", self.addr)
        self._emit("peng3dnet:server.bind", {"addr": self.addr})

    def _on_loop_start(self) -> None:
        assert self.sock is not None
        self._reactor.register(self.sock, EVENT_READ, self._on_accept)
        self._schedule_housekeeping()
        self._emit("peng3dnet:server.start", {})

    def _on_accept(self, mask: int) -> None:
        assert self.sock is not None
        for _ in range(64):
            try:
                sock, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. EMFILE: try again on the next wake-up
                log.warning("! server: accept failed: %s", exc)
                return
            self._prepare_socket(sock)
            self._accepted(sock, addr)

    def _accepted(self, sock: socket.socket, addr: Any) -> None:
        max_clients = int(self.cfg["net.limits.max_clients"])
        if max_clients > 0 and len(self._links) >= max_clients:
            # Refused before it becomes a connection: no events, one closeconn.
            self.stats.connections_refused += 1
            log.info("! server: refusing %s, %d connections is the limit", addr, max_clients)
            try:
                sock.send(encode_frame(PID_CLOSECONN, 0, b"\x81\xa6reason\xaaserverfull"))
            except OSError:
                pass
            sock.close()
            return
        if self._ssl_ctx is not None:
            try:
                sock = self._ssl_ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            except (ssl.SSLError, OSError) as exc:
                log.info("! server: cannot start TLS with %s: %s", addr, exc)
                sock.close()
                return
        cid = self.genCID()
        proto = self._new_proto()
        client = self.clientcls(self, sock, addr, cid)
        link = _Link(proto, None, client, cid)  # type: ignore[arg-type]
        link.chan = Channel(sock, self._reactor, functools.partial(self._on_ready, link))  # a C-level call per event
        client._link = link
        self._lib_state(link, STATE_HELLOWAIT)
        self.clients[cid] = client
        self._links[cid] = link
        self.stats.connections_total += 1
        with self._chan_cond:
            self._open_channels += 1
        log.info("= server cid=%d: connection from %s", cid, addr)
        if self.cfg["net.debug.print.connect"]:
            log.info("= server cid=%d connected from %s", cid, addr)
        self._emit("peng3dnet:server.connection.accept", {"sock": sock, "addr": addr, "client": client, "cid": cid})
        try:
            client.on_connect()
        except Exception:
            report_user_error("! server cid=%d: on_connect raised", cid)
        if self._ssl_ctx is not None:
            link.sslsec = SSLSEC_WRAPPED
            link.chan.tls_pending = EVENT_READ
            self._tls_step(link)
        else:
            link.chan.update_interest()
            self._start_protocol(link)

    def _start_protocol(self, link: _Link) -> None:
        proto = link.proto
        with link.chan.lock:
            proto.initiate()
            outs = proto.drain_received()
            self._push(link)
        link.chan.update_interest()
        self._handle_outputs(link, outs)

    def _all_links(self) -> list[_Link]:
        return list(self._links.values())

    def _begin_handshake(self, cid: int) -> None:
        link = self._links[cid]
        with link.chan.lock:
            link.proto.begin_handshake(self.registry.mapping())
            outs = link.proto.drain_received()
            self._push(link)
        self._handle_outputs(link, outs)

    def _connection_closed(self, link: _Link, reason: str | None) -> None:
        self._emit("peng3dnet:server.connection.close", {"client": link.owner, "reason": reason})

    def _forget(self, link: _Link) -> None:
        self.clients.pop(link.cid, None)  # type: ignore[arg-type]

    def _channel_closed(self, link: _Link) -> None:
        if self._links.pop(link.cid, None) is not None:  # type: ignore[arg-type]
            self.stats._add_closed(link.stats)
        with self._chan_cond:
            self._open_channels -= 1
            self._chan_cond.notify_all()

    def _link(self, cid: int | None) -> _Link:
        link = self._links.get(cid) if cid is not None else None
        if link is None or link.proto.closed:  # a plain attribute (is_open is two property calls)
            raise ConnectionClosedError(f"no open connection with cid {cid!r}")
        return link

    def _on_loop_exit(self) -> None:
        # Whatever is still open is closed now, so every connection gets its
        # close event before stop (and shutdown).
        for link in list(self._links.values()):
            if link.proto.is_open:
                self._close_link(link, "servershutdown", polite=True)
            if not link.chan.closed:
                with link.chan.lock:
                    link.chan.flush()
                self._force_close(link)
        self._reactor.run_calls()
        self._close_listener()
        self._emit("peng3dnet:server.stop", {"reason": self._stop_reason or "method"})
        info = self._shutdown_info
        if info is not None:
            self._emit("peng3dnet:server.shutdown", info)

    def _close_listener(self) -> None:
        if self.sock is not None:
            self._reactor.unregister(self.sock)
            self.sock.close()

    # --- public API ------------------------------------------------------------------------------
    def send_message(self, ptype: Any, data: Any, cid: int) -> None:
        """Send a message to one client.

        Args:
            ptype: Packet id, name or registered packet object.
            data: Any msgpack-serializable value.
            cid: The connection id.

        Raises:
            ConnectionClosedError: No open connection with that cid.
            RegistryError: Unknown packet.
            LocalProtocolError: The packet cannot be sent now (e.g. before the
                handshake) or the message cannot be encoded.

        Thread safety: any thread, including packet handlers; never blocks on
        the network.
        """
        self._send(self._link(cid), ptype, data)

    def broadcast(self, ptype: Any, data: Any, cids: Any = None) -> int:
        """Send one message to many clients, encoding it once.

        Args:
            ptype: Packet id, name or registered packet object.
            data: Any msgpack-serializable value.
            cids: The connection ids (default: every handshaken client).

        Returns:
            How many connections it was queued on.  Connections that are
            closed, not handshaken, whose write buffer is full (with
            ``"raise"``), or (with ``net.smartpacket.strict_send``) on which
            a SmartPacket's check fails are skipped, not raised for.

        Raises:
            RegistryError: Unknown packet.
            LocalProtocolError: The message cannot be encoded.

        Thread safety: any thread.  The packet's ``_send`` (and so a
        SmartPacket's check and ``send`` hook) and each client's ``on_send``
        run once per connection it was queued on, after queueing.

        .. versionadded:: 0.2
        """
        _, pid, pobj, hooks, smart, _ = self._lookup(ptype)
        targets = list(self._links) if cids is None else list(cids)
        frame = self._frame_for_body(pid, pack(data))
        sent = 0
        for cid in targets:
            link = self._links.get(cid)
            if link is None or link.proto.state is not HandshakeState.ACTIVE:
                continue
            if smart and self._strict_refused(link, pobj, pid):
                continue
            try:
                self._send_frame(link, frame, pid, data, False)
            except (ConnectionClosedError, WriteBufferFullError):
                continue
            sent += 1
            if hooks:
                pobj._send(data, cid)
            if link.on_send is not None:
                link.on_send(ptype, data)
        return sent

    def _frame_for_body(self, pid: int, body: bytes) -> bytes:
        compress, threshold, level = self._h_compress
        return frame_body(pid, body, compress=compress, threshold=threshold, level=level)

    def send_encoded(self, ptype: Any, body: bytes, cid: int) -> None:
        """Send a message that is already msgpack-encoded to one client.

        For fan-out code that encodes once and sends to many clients with
        per-client parts (``ext.sync`` does): framing and compression are
        applied as for :meth:`send_message`.  No ``send`` event is emitted
        and no packet hook (``_send``, ``on_send``) runs.

        Args:
            ptype: Packet id, name or registered packet object.
            body: Exactly one msgpack value, as ``msgpack.packb`` makes it
                (not checked: a malformed body makes the client close).
            cid: The connection id.

        Raises:
            ConnectionClosedError: No open connection with that cid.
            RegistryError: Unknown packet.
            LocalProtocolError: The handshake is not complete.

        Thread safety: any thread.

        .. versionadded:: 0.2
        """
        pid = self._lookup(ptype)[1]
        link = self._link(cid)
        self._check_sendable(link)
        self._send_frame(link, self._frame_for_body(pid, body), pid, _NO_EVENT, False)

    def close_connection(self, cid: int, reason: str | None = None) -> None:
        """Send ``closeconn`` with ``reason`` after what is queued, then close.

        Unknown or already closed cids are ignored.

        Thread safety: any thread.
        """
        link = self._links.get(cid)
        if link is not None:
            self._close_link(link, reason, polite=True)

    def process_single_packet(self, client: ClientOnServer) -> bool:
        """Run the handler of the oldest queued packet of ``client``.

        Returns:
            Whether a packet was processed.
        """
        link = client._link
        return link is not None and self._process_single(link)

    def receive_data(self, data: bytes, cid: int) -> None:
        """Feed bytes to a connection as if they came from its socket.

        Thread safety: any thread; outputs are handled on the network thread
        when the loop runs.
        """
        link = self._links.get(cid)
        if link is None:
            raise ConnectionClosedError(f"no connection with cid {cid!r}")
        self._feed(link, data)

    def receive_packet(self, data: bytes, cid: int) -> None:
        """Feed one packet (header + body, without the length prefix).

        Thread safety: as :meth:`receive_data`.
        """
        self.receive_data(LENGTH.pack(len(data)) + data, cid)

    def interrupt(self) -> None:
        """Wake the network loop and the process waiters; emit ``interrupt``."""
        self._emit("peng3dnet:server.interrupt", {})
        self._reactor.wake()
        self._wake_process()

    def stop(self) -> None:
        """Stop the network loop and :meth:`process_forever`.

        Open connections are closed (reason ``servershutdown``), then the
        loop emits ``stop`` (reason ``"method"``) and returns.  For a
        graceful stop that delivers everything queued, use :meth:`shutdown`.
        """
        active = self._loop_active()
        self._request_stop("method")
        if not active:
            self._close_listener()
            self._emit("peng3dnet:server.stop", {"reason": "method"})

    def shutdown(self, join: bool = True, timeout: float = 0, reason: str = "servershutdown") -> None:
        """Close every client with ``reason`` (flushing what is queued), stop.

        Args:
            join: Wait for the clients to be closed and the loop to end.
            timeout: Longest wait in seconds; 0 means no limit.
            reason: The close reason sent to every client.

        Emits ``shutdown`` (with ``reason``, ``join``, ``timeout``) after
        ``stop``.  Thread safety: any thread; from the network thread (e.g.
        a handler) it does not wait.
        """
        self._shutdown_info = {"reason": reason, "join": join, "timeout": timeout}
        for link in list(self._links.values()):
            self._close_link(link, reason, polite=True)
        if not self._loop_active():
            # No loop: nothing can flush; _close_link already closed the sockets.
            self._request_stop("method")
            self._close_listener()
            self._emit("peng3dnet:server.stop", {"reason": "method"})
            self._emit("peng3dnet:server.shutdown", self._shutdown_info)
            return
        wait = join and not self._reactor.in_loop()
        limit = timeout or None
        if wait:
            with self._chan_cond:
                self._chan_cond.wait_for(lambda: self._open_channels <= 0, limit)
        self._request_stop("method")  # the loop emits stop, then shutdown
        if wait:
            self._loop_done.wait(limit)


class Client(_Peer):
    """A peng3dnet client: one connection to a server.

    Args:
        peng: A ``peng3d.Peng`` (events are forwarded to it, its config is
            consulted), or ``None``.
        addr: Server address; default from ``net.client.addr`` /
            ``net.client.addr.host`` + ``.port``.
        cfg: Config overrides.
        conntype: Connection type to request (``"classic"`` or ``"ping"``).

    Thread safety: every method may be called from any thread unless its
    docstring says otherwise.
    """

    side = SIDE_CLIENT
    is_server = False
    is_client = True
    _role = "client"
    _state_attr = "remote_state"
    _thread_name = "peng3dnet Client Thread"

    def __init__(
        self, peng: Any = None, addr: Any = None, cfg: dict[str, Any] | None = None, conntype: str = CONNTYPE_CLASSIC
    ) -> None:
        super().__init__(peng, cfg)
        self.addr: tuple[Any, ...] = _resolve_addr(addr, self.cfg, "net.client")
        """The server's address."""
        self.conntype = conntype
        """The connection type requested."""
        self.remote_state = STATE_INIT
        """The application's state of the connection (see
        :attr:`ClientOnServer.state`): ``STATE_HANDSHAKE_WAIT1`` once
        ``hello`` arrived, ``STATE_ACTIVE`` from the base
        :meth:`on_handshake_complete`, ``STATE_CLOSED`` after the close;
        the application may set it in between."""
        self.mode = MODE_NOTSET
        """The application's mode of the connection (see :attr:`ClientOnServer.mode`)."""
        self.sock: socket.socket | None = None
        """The socket (after :meth:`connect`)."""
        self.cid = None
        """Always ``None`` on a client (API symmetry with the server)."""
        self._link_obj: _Link | None = None
        self._handshake_done = threading.Event()
        self._closed = threading.Event()
        self._flush_cond = threading.Condition()  # close_connection() waits on it for the flush
        self._ping_result: dict[str, Any] | None = None
        self.close_reason: str | None = None
        """Why the connection closed (``None`` while open)."""

    # --- peng3d-style API (names fixed) ---
    def runBlocking(self, selector: Any = selectors.DefaultSelector) -> None:  # noqa: N802
        """Run the network loop in the calling thread until the connection
        closes or :meth:`stop` is called.  Calls :meth:`initialize` and
        :meth:`connect` first if needed.

        Thread safety: the calling thread becomes the network thread.
        """
        if self._shared is not None:
            raise LocalProtocolError("this client runs on a NetworkLoop")
        self.initialize()
        self.connect()
        self._run_loop(selector)

    def runAsync(self, selector: Any = selectors.DefaultSelector) -> threading.Thread:  # noqa: N802
        """Connect (if needed) and start the loop in a daemon thread
        "peng3dnet Client Thread"; returns at once.

        Raises:
            NetworkError: The connection cannot be made.
            LocalProtocolError: The client already runs on a NetworkLoop.
        """
        if self._shared is not None:
            raise LocalProtocolError("this client runs on a NetworkLoop")
        self.initialize()
        self.connect()
        t = threading.Thread(target=self._run_loop, args=(selector,), name=self._thread_name, daemon=True)
        self._thread = t
        self._loop_started = True
        self._loop_done.clear()
        t.start()
        return t

    def sendEvent(self, event: str, data: dict[str, Any] | None = None) -> None:  # noqa: N802
        """Emit an event: on the blinker bus and, if a Peng was given, to
        ``peng.sendEvent``.  Adds the ``peng`` and ``client`` keys.

        Thread safety: any thread; handlers run on it.
        """
        self._emit(event, dict(data) if data else {})

    # --- lifecycle ----------------------------------------------------------------------------
    def initialize(self) -> None:
        """Register internal packets, connection types and mixin hooks; emit
        ``initialize``.  Repeated calls do nothing."""
        if self._initialized:
            return
        self._initialized = True
        self._register_internal()
        self._call_hooks()
        self._emit("peng3dnet:client.initialize", {})

    def connect(self) -> None:
        """Open the TCP connection (blocking, up to ``net.client.connect_timeout``);
        emit ``connect``.  Repeated calls do nothing.

        With ``net.ssl.enabled`` the TLS handshake is done here too (within
        the same timeout); it verifies the server as configured.

        Raises:
            NetworkError: The connection cannot be made.
            TLSError: The TLS handshake failed (untrusted certificate, wrong
                hostname, client certificate refused, server without TLS).
            TLSConfigError: TLS is enabled with missing/unusable files.
            InvalidAddressError: The address cannot be resolved.
        """
        if self.sock is not None:
            return
        self.initialize()
        if self.conntype not in self.conntypes:
            raise LocalProtocolError(f"unknown connection type {self.conntype!r}")
        ctx = _tls.client_context(self.cfg) if self.cfg["net.ssl.enabled"] else None
        timeout = float(self.cfg["net.client.connect_timeout"])
        try:
            sock = socket.create_connection(self.addr[:2], timeout=timeout)
        except socket.gaierror as exc:
            raise InvalidAddressError(f"cannot resolve {self.addr[0]!r}: {exc}") from exc
        except OSError as exc:
            raise NetworkError(f"cannot connect to {self.addr}: {exc}") from exc
        sslsec = SSLSEC_NONE
        if ctx is not None:
            try:
                sock = ctx.wrap_socket(sock, server_hostname=str(self.addr[0]))
            except ssl.SSLCertVerificationError as exc:
                sock.close()
                raise TLSError(f"TLS: the server's certificate was not accepted: {exc.verify_message}") from exc
            except (ssl.SSLError, OSError) as exc:
                sock.close()
                hint = ""
                if "WRONG_VERSION_NUMBER" in str(exc) or "record layer" in str(exc):
                    hint = " (does the server have TLS enabled?)"
                elif isinstance(exc, ssl.SSLError) and "CERTIFICATE_REQUIRED" in str(exc).upper():
                    hint = " (the server requires a client certificate)"
                raise TLSError(f"TLS handshake with {self.addr} failed: {exc}{hint}") from exc
            sslsec = _tls.security_level(sock, False, bool(self.cfg["net.ssl.client.certfile"]))
        self._prepare_socket(sock)
        self.sock = sock
        proto = self._new_proto(self.conntype)
        link = _Link(proto, None, self, None)  # type: ignore[arg-type]
        link.sslsec = sslsec
        link.chan = Channel(sock, self._reactor, functools.partial(self._on_ready, link))  # a C-level call per event
        self._link_obj = link
        log.info("= client: connected to %s", self.addr)
        if self.cfg["net.debug.print.connect"]:
            log.info("= client connected to %s", self.addr)
        self._emit("peng3dnet:client.connect", {"addr": self.addr, "sock": sock})
        try:
            self.on_connect()
        except Exception:
            report_user_error("! client: on_connect raised")

    def _on_loop_start(self) -> None:
        link = self._link_obj
        assert link is not None
        self._schedule_housekeeping()
        self._emit("peng3dnet:client.start", {})
        if link.chan.closed:
            self._reactor.stop()
            return
        link.chan.update_interest()

    def _on_loop_exit(self) -> None:
        link = self._link_obj
        if link is not None:
            if link.proto.is_open:
                self._close_link(link, "clientstop", polite=True)
            if not link.chan.closed:
                with link.chan.lock:
                    link.chan.flush()
                self._force_close(link)
            self._reactor.run_calls()
        self._emit("peng3dnet:client.stop", {"reason": self._stop_reason or "method"})

    def _after_handshake(self, link: _Link) -> None:
        self._handshake_done.set()

    def _connection_closed(self, link: _Link, reason: str | None) -> None:
        self.close_reason = reason
        self._emit("peng3dnet:client.close", {"reason": reason})
        self._closed.set()
        self._handshake_done.set()  # wake wait_for_connection()

    def _channel_closed(self, link: _Link) -> None:
        # A client has one connection: when its socket is gone, the loop ends.
        self._request_stop("connectionclosed")
        self._notify_flushed()

    def _closing_flushed(self, link: _Link) -> None:
        super()._closing_flushed(link)
        self._notify_flushed()

    def _close_undelivered(self) -> bool:
        # The connection closed and its on_close is still on its way (queued
        # on the network thread or behind packets): run stays true for it.
        link = self._link_obj
        return link is not None and link.proto.closed and not link.app_closed

    def _notify_flushed(self) -> None:
        with self._flush_cond:
            self._flush_cond.notify_all()

    def _link(self, cid: int | None) -> _Link:
        link = self._link_obj
        if link is None or link.proto.closed:  # a plain attribute (is_open is two property calls)
            raise ConnectionClosedError("client is not connected", self.close_reason)
        return link

    def _all_links(self) -> list[_Link]:
        return [self._link_obj] if self._link_obj is not None else []

    # --- hooks ---------------------------------------------------------------------------------
    def on_connect(self) -> None:
        """Hook: the TCP connection was made (thread of :meth:`connect`)."""

    def on_handshake_complete(self) -> None:
        """Hook: the handshake is complete (network thread).  The default
        sets :attr:`remote_state` to ``STATE_ACTIVE`` and emits
        ``peng3dnet:client.handshakecomplete``; an override may set another
        state, with or without calling ``super()``."""
        self.remote_state = STATE_ACTIVE
        self._emit("peng3dnet:client.handshakecomplete", {})

    def on_close(self, reason: str | None = None) -> None:
        """Hook: the connection closed; like :meth:`ClientOnServer.on_close`,
        after the handlers of the packets that arrived before the close.
        Then :attr:`remote_state` becomes ``STATE_CLOSED``."""

    def on_receive(self, pid: int, msg: Any) -> None:
        """Hook: an application packet was handled (after its packet's
        ``_receive``; the thread that runs ``process()``)."""

    def on_send(self, ptype: Any, data: Any) -> None:
        """Hook: an application packet was queued (after the packet's
        ``_send``; the sending thread)."""

    # --- public API ------------------------------------------------------------------------------
    @property
    def protocol_state(self) -> HandshakeState:
        """The library's protocol state of the connection (not :attr:`remote_state`)."""
        return self._link_obj.proto.state if self._link_obj is not None else HandshakeState.INIT

    @property
    def closed(self) -> bool:
        """Whether the connection has closed (see :attr:`close_reason`)."""
        return self._closed.is_set()

    @property
    def stats(self) -> ConnectionStats | None:
        """Counters of the connection (``None`` before :meth:`connect`)."""
        return self._link_obj.stats if self._link_obj is not None else None

    @property
    def ssl_seclevel(self) -> int:
        """The connection's ``SSLSEC_*`` security level."""
        return self._link_obj.sslsec if self._link_obj is not None else SSLSEC_NONE

    @property
    def write_buffer_size(self) -> int:
        """Bytes queued that the socket did not take yet."""
        return len(self._link_obj.chan.out) if self._link_obj is not None else 0

    @property
    def extensions(self) -> frozenset[str]:
        """Extensions negotiated with the server (e.g. ``heartbeat``)."""
        return self._link_obj.proto.negotiated if self._link_obj is not None else frozenset()

    @property
    def remote_version(self) -> str | None:
        """The server's version string, once ``hello`` arrived."""
        return self._link_obj.proto.peer_version if self._link_obj is not None else None

    def send_message(self, ptype: Any, data: Any, cid: None = None) -> None:
        """Send a message to the server.

        Args:
            ptype: Packet id, name or registered packet object.
            data: Any msgpack-serializable value.
            cid: Ignored (API symmetry with the server).

        Raises:
            ConnectionClosedError: Not connected.
            RegistryError: Unknown packet.
            LocalProtocolError: The packet cannot be sent now (e.g. before the
                handshake; see :meth:`wait_for_connection`).

        Thread safety: any thread; never blocks on the network.
        """
        self._send(self._link(None), ptype, data)

    def close(self, reason: str | None = None) -> None:
        """Close the connection with ``reason`` (see :meth:`close_connection`)."""
        self.close_connection(None, reason)

    def close_connection(self, cid: None = None, reason: str | None = None) -> None:
        """Send ``closeconn`` with ``reason`` after what is queued, then close.

        Called from a thread other than the network thread while the loop
        runs, it waits (up to 2 s) until what was queued and the
        ``closeconn`` were handed to the kernel, so a program may exit right
        after it without losing its last messages (as 0.1.x programs do).

        Thread safety: any thread.
        """
        link = self._link_obj
        if link is None:
            return
        self._close_link(link, reason, polite=True)
        if self._loop_active() and not self._reactor.in_loop():
            chan = link.chan
            with self._flush_cond:
                self._flush_cond.wait_for(lambda: not chan.out or chan.closed, _CLOSE_LINGER)

    def wait_for_connection(self, timeout: float | None = None) -> None:
        """Block until the handshake is complete.

        Raises:
            TimedOutError: Not complete within ``timeout`` seconds.
            ConnectionClosedError: The connection closed first.

        Thread safety: any thread but the network thread.
        """
        if not self._handshake_done.wait(timeout):
            raise TimedOutError(f"handshake not complete after {timeout} s")
        if self._closed.is_set():
            raise ConnectionClosedError(f"connection closed: {self.close_reason}", self.close_reason)

    def wait_for_close(self, timeout: float | None = None) -> None:
        """Block until the connection is closed.

        Raises:
            TimedOutError: Still open after ``timeout`` seconds.

        Thread safety: any thread but the network thread.
        """
        if not self._closed.wait(timeout):
            raise TimedOutError(f"connection still open after {timeout} s")

    def process_single_packet(self, client: Any = None) -> bool:
        """Run the handler of the oldest queued packet.

        Returns:
            Whether a packet was processed.
        """
        link = self._link_obj
        return link is not None and self._process_single(link)

    def pump_write_buffer(self) -> None:
        """Write buffered outgoing data now, as far as the socket takes it.

        Thread safety: any thread.
        """
        link = self._link_obj
        if link is None or link.chan.closed:
            return
        with link.chan.lock:
            link.chan.flush()
        if self._loop_active():
            self._reactor.call_soon(link.chan.update_interest)

    def receive_data(self, data: bytes, cid: None = None) -> None:
        """Feed bytes as if they came from the socket (testing, replays)."""
        link = self._link_obj
        if link is None:
            raise ConnectionClosedError("client is not connected")
        self._feed(link, data)

    def receive_packet(self, data: bytes, cid: None = None) -> None:
        """Feed one packet (header + body, without the length prefix)."""
        self.receive_data(LENGTH.pack(len(data)) + data)

    def interrupt(self) -> None:
        """Wake the network loop and the process waiters; emit ``interrupt``."""
        self._emit("peng3dnet:client.interrupt", {})
        self._reactor.wake()
        self._wake_process()

    def stop(self) -> None:
        """Close the connection if open (reason ``clientstop``), stop the loop
        and :meth:`process_forever`; the loop emits ``stop`` (reason ``"method"``)."""
        active = self._loop_active()
        self._request_stop("method")
        if not active:
            link = self._link_obj
            if link is not None and link.proto.is_open:
                self._close_link(link, "clientstop", polite=True)
            self._emit("peng3dnet:client.stop", {"reason": "method"})


class NetworkLoop:
    """One network thread serving many :class:`Client` objects.

    A Client normally runs its own loop thread (``runAsync()``).  Bots, load
    tests and tools that hold many connections in one process can put them
    all on one thread instead, which is much cheaper::

        loop = NetworkLoop().start()
        clients = [loop.add(Client(addr=...)) for _ in range(100)]
        ...
        loop.stop()

    Each client behaves as with ``runAsync()``: ``wait_for_connection()``,
    ``send_message()``, ``close()``, ``stop()`` and ``join()`` work the same
    (``stop()``/``join()`` end that client only), its events and hooks run on
    the shared thread.

    Args:
        name: The thread's name.

    Thread safety: :meth:`add` and :meth:`stop` from any thread.
    """

    def __init__(self, name: str = "peng3dnet Client Thread") -> None:
        self.name = name
        self._reactor = Reactor(name)
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._clients: list[Client] = []

    def start(self, selector: Any = selectors.DefaultSelector) -> NetworkLoop:
        """Start the shared thread (daemon); returns ``self``."""
        t = threading.Thread(target=self._run, args=(selector,), name=self.name, daemon=True)
        self._thread = t
        t.start()
        self._started.wait(10)
        return self

    def _run(self, selector: Any) -> None:
        try:
            self._reactor.run(selector, self._started.set)
        finally:
            for client in self._clients:  # those still here end with the loop
                try:
                    client._leave_shared()
                except Exception:
                    log.exception("! shared loop: closing a client failed")
            self._reactor.close()

    def add(self, client: Client) -> Client:
        """Connect ``client`` (in the caller's thread) and serve it on this loop.

        Returns:
            The client.

        Raises:
            NetworkError: The connection cannot be made.
        """
        if client._loop_started:
            raise LocalProtocolError("the client already runs a loop")
        client._reactor = self._reactor
        client._shared = self
        client.initialize()
        client.connect()
        client._loop_started = True
        client._loop_done.clear()
        self._clients = [c for c in self._clients if not c._loop_done.is_set()]
        self._clients.append(client)
        self._reactor.call_soon(client._on_loop_start)
        return client

    def stop(self, timeout: float | None = 10.0) -> None:
        """Close every client still on the loop and end the thread."""
        self._reactor.stop()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)


_NOOP_HOOKS = frozenset({ClientOnServer.on_receive, ClientOnServer.on_send, Client.on_receive, Client.on_send})
