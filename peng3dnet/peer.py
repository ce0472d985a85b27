"""The peer core shared by Server and Client."""

from __future__ import annotations

import logging
import selectors
import sys
import threading
import time
import warnings
from typing import Any, ClassVar

from . import events as _events
from ._mypyc import caused, mypyc_attr
from .calls import CallFuture, Calls, wait_result
from .conntypes import ClassicConnectionType, ConnectionType, PingConnectionType
from .constants import (
    CONNTYPE_CLASSIC,
    CONNTYPE_PING,
    INTERNAL_PACKET_IDS,
    MODE_CLOSED,
    MODE_NOTSET,
    PID_FIRST_FREE,
    PID_HELLO,
    PID_SETTYPE,
    SSLSEC_NONE,
    STATE_ACTIVE,
    STATE_CLOSED,
    STATE_HANDSHAKE_WAIT1,
)
from .errors import (
    AlreadyRegisteredError,
    ConnectionClosedError,
    LocalProtocolError,
    NetworkError,
    RegistryError,
    TimedOutError,
    UnhandledPacketError,
    UnknownPacketError,
    WriteBufferFullError,
)
from .events.bus import Route as _Route
from .flow import Flow
from .inbox import Inbox
from .link import Link
from .packet import FunctionPacket, Packet, SmartPacket, smart_check
from .packet.internal import INTERNAL_PACKETS
from .plans import BASE_RECEIVE, BASE_SEND, NO_EVENT, RecvPlan, SendPlan, hot_settings, quiet_smart, thread_pack
from .protocol.codec import check_keys
from .protocol.connection import (
    NO_QUOTA,
    CallReplied,
    CallRequested,
    ConnectionClosed,
    ConnTypeRequested,
    HandshakeCompleted,
    HeartbeatAcked,
    Output,
    PacketReceived,
    PacketSent,
    ProtocolConnection,
    SessionAcked,
)
from .protocol.describe import describe
from .protocol.handshake import HandshakeState
from .registry import PacketRegistry
from .relay import Flag, Relay
from .session import ACK_DELAY, ACK_EVERY, ReplayTotal, Session, redacted
from .transport import EVENT_READ, EVENT_WRITE, Reactor, wait_any
from .userlog import failure_key, report_user_error
from .util import ConfigView, ConfigWarning, check_config, normalize_addr_socketstyle

__all__ = ['Peer', 'resolve_addr', 'INTERNAL_IDS', 'CLOSE_LINGER']

log = logging.getLogger(__name__)

_polled_on: dict[int, set[Any]] = {}
"""Thread id -> the peers that thread polls: a wait on the polling thread
polls them all (see ``Peer._drive``).  Strong references (compiled classes
take no weak ones): a peer leaves when its loop ends (``_end_loop``)."""


class _RerouteSignal(Exception):  # noqa: N818 (a signal inside _send_frame, not an error)
    """Inside ``Peer._send_frame``: the frame's session moved to a new
    socket while the sender waited; send it again from outside the old
    socket's lock."""

INTERNAL_IDS = frozenset(pid for _, pid, _ in INTERNAL_PACKETS)
_ACTIVE = HandshakeState.ACTIVE  # module constants: one lookup less on the per-packet paths
_TYPESET = HandshakeState.TYPESET


def _ignore(msg: Any, cid: Any) -> None:
    """The packet call of a class with nothing to call (its owner has an
    ``on_receive`` hook)."""


_INFLATE_ACTIONS = {"close": "close", "drop": "drop", "throttle": "hold"}  # net.limits.rate.action -> the core's
CLOSE_LINGER = 2.0  # seconds to wait for the peer's EOF after our closeconn
_DRAIN_WAIT = 10.0  # seconds process_forever() waits for the loop's end before its last drain


@mypyc_attr(allow_interpreted_subclasses=True)
class Peer:
    """What Server and Client share: config, registry, events, the process
    queue, the send path and the handling of the core's outputs."""

    # What a side sets (Server, Client): the core itself has no side.
    side: ClassVar[int]
    """``SIDE_SERVER`` or ``SIDE_CLIENT`` (0.1.x API)."""
    is_server: ClassVar[bool]
    """Whether this peer is a server (0.1.x API)."""
    is_client: ClassVar[bool]
    """Whether this peer is a client (0.1.x API)."""
    _role: str  # "server" / "client": event prefix and log name
    _state_attr: str  # the owner's application state: ClientOnServer.state / Client.remote_state
    _thread_name: str
    _ev_recv: str
    _ev_send: str
    _ev_heartbeat: str
    _owner_key: str | None  # connection events carry the link's owner under this key (server: "client")
    # Config copies for the per-packet paths (plans.hot_settings; cache 3 of
    # the hot path note in plans.py).
    _h_events: bool
    _h_print_recv: bool
    _h_print_send: bool
    _h_recv_queue: int
    _h_recv_bytes: int
    _h_recv_total: int
    _h_write_cap: int
    _h_write_raise: bool
    _h_rate_p: float
    _h_rate_b: float
    _h_rate_burst: float
    _h_rate_cap_p: float
    _h_rate_cap_b: float
    _h_rate_drop: bool
    _h_rate_throttle: bool
    _h_rate_quota: bool
    _h_rate: bool
    _h_rate_reads: bool
    _h_inline: bool
    _h_strict_send: bool
    _h_compress: tuple[bool, int, int]
    _h_inflate: bool
    _h_write_total: int
    _h_read_total: int
    _h_read_held: bool
    _h_write_block: int
    _h_inflate_rate: float
    _h_inflate_cap: int

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
        self._inbox = Inbox(self)
        self._process_thread: threading.Thread | None = None
        self._net_thread: threading.Thread | None = None
        self._loop_started = False
        self._loop_done = Flag()
        # The roles of the runAsync() and process_async() threads (a client
        # on a NetworkLoop takes the loop's relay instead).
        self._relay = Relay(self._reactor, self._loop_done, self._end_loop)
        self._stop_reason: str | None = None
        self._shared: Any = None  # the NetworkLoop a client was attached to
        self._leaving = False
        self._polling = False  # poll() drives the loop on the program's thread
        self._in_poll = False  # inside poll()'s I/O callbacks or handlers
        self._in_io = False  # inside poll()'s I/O round (its callbacks): a nested round is refused
        self._poll_starting = False  # the first poll() binds or connects now
        self._peng_forwarder: Any = None  # see set_peng_forwarder
        self._flow = Flow(self)  # pausing/resuming reads, blocking senders, the buffered-bytes cap
        self._calls = Calls(self)  # requests that expect an answer (extension "calls")
        self._send_plans: dict[Any, SendPlan] = {}
        self._recv_plans: dict[int, RecvPlan] = {}
        self._route_recv = _Route(self._ev_recv)
        self._route_send = _Route(self._ev_send)
        self._sig_recv = self._route_recv.sig  # for the "anyone listening?" test per packet
        self._sig_send = self._route_send.sig
        check_config(self.cfg, self.is_server)  # a wrong type fails here, naming the key, not at the first connection
        self.cfg.server = self.is_server  # (a later change is checked by the same rules)
        self.cfg.on_change = self._refresh_hot
        self._refresh_hot()
        if self.cfg["net.encrypt.enabled"]:
            warnings.warn("net.encrypt.enabled: protocol 2 has no AES encryption (ignored); use net.ssl.enabled (TLS)",
                          ConfigWarning, stacklevel=3)

    @property
    def run(self) -> bool:
        """True until the peer stops (:meth:`stop`, :meth:`shutdown`, or a
        client's connection closing) and no received packet waits for
        :meth:`process` any more: programs of 0.1.x loop
        ``while peer.run: peer.process(wait=True, timeout=...)``, and that
        loop handles every packet that arrived before the stop (driven by
        :meth:`poll`, it stays True until a last ``poll()`` has ended the
        loop).  Setting it to ``False`` calls :meth:`stop`.

        Thread safety: any thread.
        """
        return (self._stop_reason is None or bool(self._inbox.items) or self._close_undelivered()
                or (self._polling and not self._loop_done.is_set()))

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
        old = getattr(self, "_h_compress", None)
        for name, value in hot_settings(self.cfg, self.is_server).items():
            setattr(self, name, value)  # (not __dict__.update(): a compiled class has no __dict__)
        if old is not None and self._h_compress != old:
            # The open connections send with the new compression settings
            # too (as broadcast does): the receiver goes by each frame's flag.
            enabled, threshold, level = self._h_compress
            try:
                links = self._all_links()
            except AttributeError:  # (a subclass still in its __init__: no connections yet)
                links = []
            for link in links:
                proto = link.proto
                proto.compress, proto.compress_threshold, proto.compress_level = enabled, threshold, level

    def _emit_packet(self, route: _Route, link: Link, pid: int, key: str, msg: Any) -> None:
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
        if self._owner_key is not None:
            data[self._owner_key] = link.owner
        name = route.name
        for receiver in targets:
            receiver(self, name, data)  # positional: a little cheaper than blinker's keywords
        self._to_peng(name, data)

    def _to_peng(self, event: str, data: dict[str, Any]) -> None:
        if self.peng is not None:
            if self._peng_forwarder is not None:
                self._peng_forwarder(event, data)
                return
            try:
                self.peng.sendEvent(event, data)
            except Exception:  # a peng3d event handler of the program
                report_user_error("! peng.sendEvent(%r) raised", event, key=failure_key(self.peng.sendEvent))

    @property
    def peng_forwarder(self) -> Any:
        """What :meth:`set_peng_forwarder` installed (``None``: the direct
        call).  Any thread."""
        return self._peng_forwarder

    def set_peng_forwarder(self, forward: Any) -> None:
        """Hand the events this peer forwards to ``peng.sendEvent`` to
        ``forward(event, data)`` instead (e.g. a main-thread queue:
        ``attach_to_pyglet(..., peng_events=True)``); ``None`` restores the
        direct call.

        Thread safety: any thread; ``forward`` is called on the thread that
        emits (usually the network thread).
        """
        self._peng_forwarder = forward

    def _emit(self, event: str, data: dict[str, Any]) -> None:
        if not self._h_events:
            return
        data.setdefault("peng", self.peng)
        data.setdefault(self._role, self)
        _events.emit(event, self, data)
        self._to_peng(event, data)

    def _emit_conn(self, event: str, link: Link, data: dict[str, Any]) -> None:
        """Emit a connection's event: the server's carry its ``client``."""
        if self._owner_key is not None:
            data[self._owner_key] = link.owner
        self._emit(event, data)

    # --- registration ----------------------------------------------------------------
    def register_packet(self, name: str, obj: Any, n: int | None = None) -> int:
        """Register a packet object under ``name`` (id ``n`` or the next free).

        Returns:
            The packet id.

        Raises:
            AlreadyRegisteredError: Name or id taken.
            RegistryError: Invalid name or id (ids 0-63 are the protocol's:
                a peer of ours refuses a registry that gives one of them to
                anything else).

        Thread safety: any thread, before connections are made.
        """
        if isinstance(n, int) and 0 <= n < PID_FIRST_FREE and INTERNAL_PACKET_IDS.get(name) != n:
            raise RegistryError(f"packet id {n} is reserved for the protocol's own packets (ids 0-63): "
                                f"give {describe(name)} an id of 64 or more, or none")
        return self.registry.register(obj, name, n)

    def handler(self, name: str, n: int | None = None) -> Any:
        """Decorator: register ``fn(msg, cid)`` as the handler of a new
        packet ``name`` (id ``n`` or the next free).  What it returns is the
        answer when the packet is called (:meth:`call`); for a plain
        ``send_message`` it is ignored.  ``cid`` is ``None`` on a client.

        Example::

            @server.handler("game:inventory")
            def inventory(msg, cid):
                return players[cid].items

        Thread safety: as :meth:`register_packet`; ``fn`` runs where
        handlers run (the thread calling ``process()``).
        """

        def register(fn: Any) -> Any:
            self.register_packet(name, FunctionPacket(self.registry, self, fn), n)
            return fn

        return register

    def _call_timeout(self, timeout: float | None) -> float:
        return float(self.cfg["net.timeout.call"]) if timeout is None else float(timeout)

    def _start_call(self, cid: int | None, ptype: Any, data: Any, timeout: float | None, callback: Any) -> CallFuture:
        link = self._link(cid)
        if link.proto.state is not _ACTIVE:
            self._check_sendable(link)
        if self._h_strict_send:  # (as a plain send of that packet: calls skipped the check)
            _, pid, pobj, _, smart, _ = self._lookup(ptype)
            if smart and not smart_check(pobj, link.cid, receiving=False):
                self._refuse_strict(pid)
        return self._calls.start(link, ptype, data, self._call_timeout(timeout), callback)

    def _refuse_strict(self, pid: int) -> None:
        """``net.smartpacket.strict_send``: a SmartPacket not valid now is refused at the sender."""
        raise LocalProtocolError(
            f"packet {self.registry.get_name(pid)!r} is not valid on this connection now "
            "(net.smartpacket.strict_send is on)"
        )

    def _call(self, cid: int | None, ptype: Any, data: Any, timeout: float | None) -> Any:
        timeout = self._call_timeout(timeout)
        fut = self._start_call(cid, ptype, data, timeout, None)
        return wait_result(self, fut, timeout)

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
    def _new_proto(
        self, conntype: str = CONNTYPE_CLASSIC, settype_extra: dict[str, Any] | None = None
    ) -> ProtocolConnection:
        cfg = self.cfg
        proto = ProtocolConnection(
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
            extensions=({"heartbeat", "mapkeys", "calls"} if cfg["net.heartbeat.enabled"] else {"mapkeys", "calls"})
            | self._proto_extensions()
            | ({"resume"} if cfg["net.session.resume"] else set()),
            credentials=self._credentials,
            settype_extra=settype_extra,
        )
        if self._h_inflate:  # the decompression budget starts full
            proto.inflate_budget = self._h_inflate_cap
            proto.inflate_action = _INFLATE_ACTIONS.get(str(cfg["net.limits.rate.action"]), "close")
        return proto

    _credentials: Any = None
    """What a client sends as credentials (see the ``auth`` extension)."""

    def _proto_extensions(self) -> frozenset[str]:
        """Extensions this side supports beyond the shared ones."""
        return frozenset()

    def _on_ready(self, link: Link, mask: int) -> None:
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
                if link.acct:
                    self._flow.account(link)
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

    def _read(self, link: Link) -> None:
        """One read and everything it leads to (network thread).

        The path of received bytes, top to bottom: read (under the channel
        lock: TLS objects must not be used by two threads at once); feed the
        core; drain its outputs; write what it has to send (handshake
        answers); release the lock; count; hand the outputs on
        (:meth:`_handle_outputs`: events, hooks, the inbox).
        """
        chan = link.chan
        proto = link.proto
        buf = self._reactor.read_buffer
        view = self._reactor.read_view
        total = 0
        eof = False
        now = time.monotonic()
        with chan.lock:
            # Room left in the process queue (and, throttling, in the packet
            # bucket): the core decodes no more packets than that and holds
            # the rest of the read back.
            if self._h_rate_quota:
                quota = self._read_quota(link, now)
            else:  # (_read_quota(), inlined)
                quota = NO_QUOTA if self._h_inline else self._h_recv_queue - link.n_in + link.n_out
            proto.packet_quota = quota
            proto.byte_quota = self._h_recv_bytes - link.b_in + link.b_out  # (_byte_quota(), inlined)
            if self._h_inflate and proto.inflate_budget is not None:
                # The decompression budget, refilled before this read is judged.
                if proto.inflate_budget >= self._h_inflate_cap:
                    link.infl_t = now  # full (the common case, inlined): the time until now earns nothing
                else:
                    self._refill_inflate(link, now)
            try:
                n = chan.read_into(buf)
                if n > 0 and link.plain and not chan.closing:
                    total = n  # the common case: plaintext, open, some bytes
                    proto.receive_data(view[:n])
                elif n == 0:
                    eof = True
                elif n < 0:
                    return  # nothing to read after all
                elif chan.closing:
                    # Draining while we wait for the peer's EOF: discard
                    # (TLS may hold more decrypted bytes than one read).
                    while n > 0 and chan.pending():
                        n = chan.read_into(buf)
                    return
                else:
                    if self._refuse_first_read(link, view, n):
                        eof, n = True, 0
                    link.plain = link.sslsec == SSLSEC_NONE
                    while n > 0:
                        total += n
                        proto.receive_data(view[:n])
                        if link.plain or not chan.pending():
                            break
                        n = chan.read_into(buf)
                        eof = n == 0
            except NetworkError as exc:
                log.info("! %s cid=%s: recv failed: %s", self._role, link.cid, exc)
                eof = True
                if not chan.closing:
                    proto.receive_eof(exc.reason, link.session is not None)
            if eof and not chan.closing:
                link.eof = True
                proto.receive_eof("socketclose", link.session is not None)
            outs = proto.drain_received()
            if proto.has_data_to_send:
                self._push(link)
        if eof and chan.closing:  # the peer saw our closeconn and closed: done
            chan.close()
            self._channel_closed(link)
            return
        stats = link.stats
        stats.bytes_in += total
        stats._seen = now
        # Every byte read is charged (the server's byte bucket), whether or
        # not it completed a packet.
        used = quota - proto.packet_quota  # application packets this read decoded
        if used < 0:  # (an EOF lifted the quota to hand on what was held)
            used = sum(1 for o in outs if isinstance(o, (PacketReceived, CallRequested)))
        if self._h_rate_reads and not self._read_allowed(link, total, outs, used, now):
            outs = []
        if outs:
            self._handle_outputs(link, outs)
        if self._h_read_held and (proto._decoder._buf or link.held_in) and not chan.closed:
            # (after the outputs: a connection closed for this read's bytes
            # still gets the packets before them; FrameDecoder.buffered, inlined;
            # the common case, nothing held before or now, costs two looks)
            held = 0 if proto.closed else len(proto._decoder._buf)
            if held != link.held_in or (held and outs):  # (outs: a frame completed, the one held is new)
                self._flow.hold_read(link, held, bool(outs))
        if link.eof and not chan.closed:
            chan.close()
            self._channel_closed(link)
        elif proto.frames_waiting and not chan.paused:
            self._flow.frames_held(link)

    def _byte_quota(self, link: Link) -> int:
        """The decoded bytes the next read may hand on: the room left in
        the process queue in bytes (network thread; inlined in :meth:`_read`;
        inline handlers queue nothing and ``_h_recv_bytes`` is no limit)."""
        return self._h_recv_bytes - link.b_in + link.b_out

    def _read_quota(self, link: Link, now: float) -> int:
        """How many application packets the next read may decode: the room
        left in the process queue (network thread; the server also counts
        its packet bucket when throttling: ``_h_rate_quota``; else
        :meth:`_read` computes this itself)."""
        return NO_QUOTA if self._h_inline else self._h_recv_queue - link.n_in + link.n_out

    def _refill_inflate(self, link: Link, now: float) -> None:
        """Refill a connection's decompression budget (a token bucket; the
        core charges what it inflates) (network thread)."""
        proto = link.proto
        budget = proto.inflate_budget
        if budget is None:
            return
        cap = self._h_inflate_cap
        if budget >= cap:
            link.infl_t = now  # full: the time until now earns nothing
            return
        added = int((now - link.infl_t) * self._h_inflate_rate)
        if added > 0:  # whole bytes only; the fraction stays in infl_t (slow rates, frequent reads)
            proto.inflate_budget = min(cap, budget + added)
            link.infl_t += added / self._h_inflate_rate

    def _throttled_for(self, link: Link) -> float:
        """Seconds until a rate limit lets this connection's held frames go
        on (0: now); the server's packet bucket when throttling."""
        return 0.0

    def _refuse_first_read(self, link: Link, view: memoryview, n: int) -> bool:
        """Look at the first bytes of a connection (and every read of a TLS
        one); return ``True`` to refuse it (the server overrides this)."""
        return False

    def _read_allowed(self, link: Link, nbytes: int, outs: list[Output], npackets: int, now: float) -> bool:
        """Whether the outputs of one read go on to :meth:`_handle_outputs`;
        called only while rate limits are on, on a server (which overrides
        it)."""
        return True

    def _tls_step(self, link: Link) -> None:
        raise NotImplementedError  # only a server's connections do a TLS handshake in the loop

    def _abort(self, link: Link, reason: str) -> None:
        """The socket broke: close without a handshake (network thread)."""
        chan = link.chan
        with chan.lock:
            link.eof = True
            link.proto.receive_eof(reason, link.session is not None)
            outs = link.proto.drain_received()
        self._handle_outputs(link, outs)
        if not chan.closed:
            chan.close()
            self._channel_closed(link)

    def _handle_outputs(self, link: Link, outs: list[Output]) -> None:
        """Act on the core's outputs, in order (network thread, lock released)."""
        queued = False
        # "Anyone listening to recv?" once per read, not per packet: a
        # subscription made while a read's packets are handled applies from
        # the next read.
        listen = self._h_events and (self._sig_recv.receivers or self.peng is not None)  # (truthy or not)
        session = link.session
        while True:  # (once, unless an output fails: then again for the rest)
            try:
                for o in outs:
                    if isinstance(o, PacketReceived):
                        link.stats.packets_in += 1
                        if session is not None and o.pid >= PID_FIRST_FREE:
                            session.rx += 1  # counted even when dropped below: it was received
                        if o.pid in INTERNAL_IDS:
                            if o.pid == PID_HELLO:  # (only a server sends hello)
                                self._lib_state(link, STATE_HANDSHAKE_WAIT1)
                            shown = redacted(o.msg)
                            self._debug_print("recv", link, o.pid, shown)
                            if self._h_events:
                                self._emit_packet(self._route_recv, link, o.pid, "msg", shown)
                        elif not link.local_closed:
                            # Packets that preceded the peer's closeconn are delivered.
                            queued = self._on_app_packet(link, o, listen) or queued
                    elif isinstance(o, PacketSent):
                        link.stats.packets_out += 1
                        shown = redacted(o.msg)
                        self._debug_print("send", link, o.pid, shown)
                        if self._h_events:
                            self._emit_packet(self._route_send, link, o.pid, "data", shown)
                        if o.pid == PID_SETTYPE:
                            # (Only a client sends settype.) It chose its type: hand
                            # the connection to it.  The extensions are known now.
                            link.strict_keys = "mapkeys" not in link.proto.negotiated
                            ct = self.conntypes.get(link.proto.conntype)
                            link.set_type(ct)
                            if ct is not None:
                                self._type_chosen(link, ct)
                                self._ct_call(link, ct.init, link.cid)
                    elif isinstance(o, ConnTypeRequested):
                        link.strict_keys = "mapkeys" not in link.proto.negotiated
                        self._on_conntype(link, o.conntype)
                    elif isinstance(o, HandshakeCompleted):
                        log.info("= %s cid=%s: handshake complete (%s)", self._role, link.cid, link.proto.conntype)
                        if not self._session_handshake(link):
                            try:
                                link.owner.on_handshake_complete()
                            except Exception:
                                report_user_error("! %s cid=%s: on_handshake_complete raised", self._role, link.cid)
                        self._after_handshake(link)
                        session = link.session
                    elif isinstance(o, HeartbeatAcked):
                        self._on_heartbeat_ack(link, o.msg)
                    elif isinstance(o, CallReplied):
                        if session is not None:
                            session.rx += 1
                        self._calls.on_reply(link, o)
                    elif isinstance(o, CallRequested):
                        if session is not None:
                            session.rx += 1
                        if not link.local_closed:
                            queued = self._on_call(link, o) or queued
                    elif isinstance(o, SessionAcked):
                        if session is not None and not session.ack(o.count):
                            log.info("! %s cid=%s: acknowledged %d packets, more than were sent", self._role, link.cid, o.count)
                            self._close_link(link, "invalidpacket")
                    elif isinstance(o, ConnectionClosed):
                        self._on_closed(link, o)
                break
            except Exception as exc:  # noqa: BLE001 - a bug of ours, or a peer's value we did not foresee
                failed = exc
            # The connection goes (invalidpacket), never the loop; the outputs
            # after the failed one are still handled (a close among them), in
            # this loop: outside the except, a failure's traceback does not
            # carry the ones before it, and a read of many is no recursion.
            i = next(k for k, x in enumerate(outs) if x is o)
            if link.local_closed:
                log.debug("! %s cid=%s: handling %s failed again: %s", self._role, link.cid, type(o).__name__,
                          describe(failed))
            else:
                self._output_failed(link, o, failed)
            outs = outs[i + 1:]
        if session is not None:
            dropped = link.proto.inflate_dropped
            if dropped != link.infl_counted:  # received, dropped over the budget: counted all the same
                session.rx += dropped - link.infl_counted
                link.infl_counted = dropped
            if session.rx != session.ack_sent and session.link is link:
                self._maybe_ack(link, session)
        inbox = self._inbox
        if queued and inbox.b_in - inbox.b_out > self._h_recv_total:  # (no limit: NO_LIMIT)
            self._flow.hold_queue(link)
        if queued and inbox.waiters and not inbox.notify_pending:
            reactor = self._reactor
            if reactor.running and reactor.in_loop():
                # One wake-up per select(), after every socket it returned
                # was read: the process thread then gets a batch, and the GIL
                # when the network thread blocks, not at its next recv().
                inbox.notify_pending = True
                reactor.after_io(inbox.notify)
            else:
                inbox.notify()

    def _output_failed(self, link: Link, o: Any, exc: Exception) -> None:
        """Handling one of the core's outputs raised what nothing expected
        (network thread): log it with its traceback as the core's catch-all
        does (:class:`~peng3dnet.errors.UnhandledPacketError`) and close
        that connection with ``invalidpacket``."""
        err = caused(UnhandledPacketError(f"handling {type(o).__name__} raised {type(exc).__name__}: "
                                          f"{describe(exc)}"), exc)
        log.warning("! %s cid=%s: protocol error, closing (invalidpacket): %s", self._role, link.cid, err,
                    exc_info=(type(exc), exc, exc.__traceback__))
        self._close_link(link, "invalidpacket")

    def _on_heartbeat_ack(self, link: Link, msg: Any) -> None:
        sent = msg.get("t") if isinstance(msg, dict) else None
        probes = link.hb_probes
        if not isinstance(sent, float) or sent not in probes:
            # Only the echo of a probe of ours counts, once: the peer chooses
            # what it echoes, and any other time would be an RTT it made up.
            # (A few are kept: behind a large transfer an echo may come back
            # after the next probe went out.)
            return
        probes.remove(sent)
        rtt = max(0.0, time.monotonic() - sent)
        link.stats.rtt = rtt
        if self._h_events:
            self._emit_conn(self._ev_heartbeat, link, {"rtt": rtt, "stats": link.stats.as_dict()})

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
            chan = link.chan
            if chan.paused or chan.throttled or chan.held or proto.frames_waiting:
                # We do not read from it (our own flow control): what it
                # sends waits in the socket, so it is not silent.
                link.held_at = now
            seen = stats._seen
            silent = now - (seen if seen > link.held_at else link.held_at)
            if idle > 0 and silent > idle:
                log.info("! %s cid=%s: nothing received for %.1f s", self._role, link.cid, silent)
                self._close_link(link, "timeout")
                continue
            if "heartbeat" in proto.negotiated and proto.state == HandshakeState.ACTIVE:
                if hb_timeout > 0 and silent > hb_timeout:
                    log.info("! %s cid=%s: peer silent for %.1f s", self._role, link.cid, silent)
                    link.vanished = True  # a session survives it: the peer may come back
                    session = link.session
                    if session is not None and session.established and not session.ended:
                        # A drop on both sides: the socket goes without a
                        # closeconn (the peer, stalled, not gone, would read
                        # it as a close and end its side of the session).
                        self._abort(link, "timeout")
                    else:
                        self._close_link(link, "timeout")
                    continue
                if now - link.hb_sent >= hb_interval:
                    link.hb_sent = now
                    probes = link.hb_probes
                    if len(probes) >= 4:
                        del probes[0]
                    probes.append(now)
                    with link.chan.lock:
                        if proto.send_heartbeat({"t": now}):
                            self._push(link)
        if self._h_write_total:  # recount (corked flushes and closing flushes are not counted)
            self._flow.recount()
        if self._flow.over_total:
            self._flow.check_queue_total()
        min_rate = float(cfg["net.limits.min_read_rate"])
        if min_rate > 0 and self._h_read_held:  # (counted from the next read when just turned on)
            self._flow.close_slow_producers(now, min_rate, float(cfg["net.limits.min_read_grace"]))
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

    def _all_links(self) -> list[Link]:
        raise NotImplementedError

    def _debug_print(self, kind: str, link: Link, pid: int, msg: Any) -> None:
        if self._h_print_recv if kind == "recv" else self._h_print_send:
            log.info("%s %s cid=%s pid=%d %s", "<" if kind == "recv" else ">", self._role, link.cid, pid,
                     describe(msg, 200))

    def _on_conntype(self, link: Link, conntype: str) -> None:
        """A client asked for a connection type (only a server gets this)."""

    def _ct_call(self, link: Link, fn: Any, *args: Any) -> Any:
        """Call a connection type's hook (network thread); an error in it
        (a program's own connection type) is reported and closes that
        connection (``conntypeerror``), never the loop."""
        try:
            return fn(*args)
        except Exception:
            report_user_error("! %s cid=%s: connection type hook %r raised", self._role, link.cid, fn)
            self._close_link(link, "conntypeerror")
            return True  # (for receive(): nothing more is done with the packet)

    def _lib_state(self, link: Link, value: int) -> None:
        """Move the application state through the handshake, unless the
        application set a state of its own since the library's last move
        (network thread)."""
        owner = link.owner
        attr = self._state_attr
        if getattr(owner, attr, link.lib_state) == link.lib_state:
            setattr(owner, attr, value)
        link.lib_state = value

    def _type_chosen(self, link: Link, ct: ConnectionType) -> None:
        """A connection type was chosen: its mode, and a ping connection is
        active at once (it has no handshake) (network thread)."""
        owner = link.owner
        if getattr(owner, "mode", MODE_NOTSET) == MODE_NOTSET:
            owner.mode = ct.mode
        if isinstance(ct, PingConnectionType):
            self._lib_state(link, STATE_ACTIVE)

    def _on_app_packet(self, link: Link, o: PacketReceived, listen: Any) -> bool:
        """Check, announce and queue (or, inline, dispatch) one application
        packet; return whether it was queued for process() (network thread)."""
        pid, flags, msg, state, size = o
        if link.ct_recv:  # (0.1.x: a true result means the type consumed it; an error, too)
            if self._ct_call(link, link.ctobj.receive, msg, pid, flags, link.cid):  # type: ignore[union-attr]
                return False
        if state is not _ACTIVE and (state is not _TYPESET or link.proto.conntype == CONNTYPE_CLASSIC
                                     or (link.auth is not None and link.auth is not True)):
            # Application packets come after the handshake (a connection type
            # of its own may exchange them after settype, but not while the
            # login it asked for by beginning the handshake is pending or
            # refused: its handlers ran for a client not let in).
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
        if self._h_print_recv:
            self._debug_print("recv", link, pid, msg)
        if listen:
            self._emit_packet(self._route_recv, link, pid, "msg", msg)
        fn = plan[2]
        if fn is None:
            if link.on_recv is None:
                return False  # nobody handles it: not queued
            fn = _ignore
        if self._h_inline:  # (as in _dispatch, inlined: this is the per-packet path)
            try:
                fn(msg, link.cid)
                if link.on_recv is not None:
                    link.on_recv(pid, msg)
            except BaseException:
                self._handler_failed(link, fn)
            return False
        # Inbox.put(), inlined (once per packet): keep the two alike.
        link.n_in += 1  # the network thread is its only writer: no lock
        link.b_in += size
        inbox = self._inbox
        inbox.b_in += size
        inbox.items.append((link, fn, pid, msg, size))
        ready = inbox.ready
        if ready is not None:
            ready.append(self)
        limit = self._h_recv_queue
        if link.n_in - link.n_out >= limit or link.b_in - link.b_out >= self._h_recv_bytes:
            chan = link.chan
            if not chan.paused and inbox.pause(link, limit, self._h_recv_bytes):
                chan.update_interest()
                log.debug("= %s cid=%s: reading paused, %d packets (%d bytes) wait for process()",
                          self._role, link.cid, link.queued, link.queued_bytes)
        return True

    def _on_call(self, link: Link, o: CallRequested) -> bool:
        """Queue (or, inline, run) the answer to a call; return whether it
        was queued for process() (network thread)."""
        link.stats.packets_in += 1
        answer = self._calls.on_request(link, o)
        if answer is None:
            return False
        if self._h_inline:
            self._run_inline(link, answer, o.pid, o.msg)
            return False
        if self._inbox.put(link, answer, o.pid, o.msg, self._h_recv_queue, o.size, self._h_recv_bytes):
            link.chan.update_interest()
        return True

    def _queue_call(self, link: Link, callback: Any, fut: CallFuture) -> None:
        """Run a call's ``callback(future)`` where handlers run: queued for
        process(), or at once with inline handlers (network thread)."""

        def run(msg: Any, cid: Any) -> None:
            callback(fut)

        run.__qualname__ = f"callback of call {fut.call_id} ({callback!r})"
        if self._h_inline:
            self._run_inline(link, run, -2, None)
            return

        def put() -> None:
            self._inbox.put(link, run, -2, None, NO_QUOTA)
            self._inbox.notify()

        # (a future cancelled on a program thread settles there: the queue's
        # counts have one writer, the network thread)
        self._on_network_thread(put)

    def _run_inline(self, link: Link, fn: Any, pid: int, msg: Any) -> None:
        """Run a handler at once (network thread, ``net.process.inline``)."""
        try:
            fn(msg, link.cid)
            if link.on_recv is not None and pid >= 0:
                link.on_recv(pid, msg)
        except BaseException:
            self._handler_failed(link, fn)

    def _recv_plan(self, pid: int) -> RecvPlan | None:
        """What receiving ``pid`` needs, cached until the registry changes
        (a :class:`~peng3dnet.plans.RecvPlan`: the packet object and what to
        call), or ``None`` for an unknown id (network thread)."""
        regver = self.registry.version
        pobj = self.registry.find_obj(pid)
        if pobj is None or pid < PID_FIRST_FREE:
            return None
        cls = type(pobj)
        if (cls._receive, cls.receive) == BASE_RECEIVE or quiet_smart(cls, "receive"):
            call = None
        elif cls._receive is Packet._receive:
            call = pobj.receive  # Packet._receive would only call it: one frame less
        else:
            call = pobj._receive
        plan = RecvPlan(regver, pobj, call)
        if len(self._recv_plans) > 4096:
            self._recv_plans.clear()
        self._recv_plans[pid] = plan
        return plan

    def _handler_failed(self, link: Link, fn: Any) -> None:
        """A packet handler (``pobj._receive``/``receive``, or the owner's
        ``on_receive``) raised; call it from the ``except`` block.  An
        exception is reported (a traceback on stderr by default), never
        raised.  A BaseException (``SystemExit``, ``KeyboardInterrupt``) is
        reported too (except Ctrl-C's ``KeyboardInterrupt`` on the main
        thread: not the handler's failure); then, on the main thread
        (``process()`` called by the program) it propagates, and on a library thread (the process thread,
        the network thread with inline handlers) the peer stops cleanly."""
        exc = sys.exc_info()[1]
        main = threading.current_thread() is threading.main_thread()
        if isinstance(exc, KeyboardInterrupt) and main:
            raise  # noqa: PLE0704  (Ctrl-C landed in a handler: the user's, not the handler's failure)
        # (the same Exception again within 10 s, a flood of bad values, is counted, not shown)
        report_user_error("! %s cid=%s: packet handler %r raised", self._role, link.cid, fn,
                          key=failure_key(fn) if isinstance(exc, Exception) else None)
        if isinstance(exc, Exception):
            return
        if main:
            raise  # noqa: PLE0704  (the exception being handled by our caller)
        log.warning("! %s: stopping: a handler on a library thread raised a BaseException", self._role)
        self.stop()

    def _on_closed(self, link: Link, o: ConnectionClosed) -> None:
        chan = link.chan
        if link.held_in:  # (the core emptied its decoder: the bytes are not held any more)
            self._flow.hold_read(link, 0)
        if o.error is not None:
            cause = o.error.__cause__
            if isinstance(o.error, UnhandledPacketError) and cause is not None:
                # Not a refusal of the core's own: show where it came from.
                log.warning("! %s cid=%s: protocol error, closing (%s): %s", self._role, link.cid, o.reason, o.error,
                            exc_info=(type(cause), cause, cause.__traceback__))
            else:
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
        session = link.session
        if session is not None and not session.ended:
            dropped = (o.eof or link.vanished) and session.established and self._loop_active()
            if session.link is not link or dropped:
                # A drop (or an old socket of a resumed session): the session lives on.
                chan.closing = True
                if not chan.closed:
                    chan.close()
                    self._channel_closed(link)
                if session.link is link:
                    self._session_dropped(link, session, o.reason)
                return
            self._session_forget(session)
            if chan.closed:
                # The socket went first: the peer answered a close of ours
                # (made on another thread) before this output was handled,
                # and _channel_closed ran while the session still seemed alive.
                self._closed_before_session_ended(link)
        if chan.drain_waiters:
            # A sender blocked on this connection learns of the close now (a
            # close of ours woke it already; the peer's closeconn or a
            # protocol error did not: it slept until the socket went).
            # After the session's end: it must not keep its frame for a
            # socket that will not come.
            with chan.lock:
                chan.drained.notify_all()
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
                self._linger(link)
        self._connection_closed(link, o.reason)
        if self._calls.pending:
            self._calls.closed(link, o.reason)
        # The application's side of the close (on_close, STATE_CLOSED, the
        # server forgetting the client) comes after the packets that arrived
        # before it: behind them in the process queue when some wait there.
        if self._has_queued(link):
            self._inbox.put_close(link, o.reason)
        else:
            self._app_closed(link, o.reason)

    def _app_closed(self, link: Link, reason: str | None) -> None:
        """The application's side of a close: the owner's ``on_close``
        hook, then ``STATE_CLOSED``/``MODE_CLOSED`` (network thread, or the
        thread that runs ``process()`` when packets that came before the
        close were waiting there)."""
        owner = link.owner
        try:
            owner.on_close(reason)
        except Exception:
            report_user_error("! %s cid=%s: on_close raised", self._role, link.cid)
        except BaseException:  # (SystemExit...: closed all the same, then as a handler's)
            self._closed_for_app(link, owner)
            self._handler_failed(link, owner.on_close)
            return
        self._closed_for_app(link, owner)

    def _closed_for_app(self, link: Link, owner: Any) -> None:
        setattr(owner, self._state_attr, STATE_CLOSED)
        owner.mode = MODE_CLOSED
        self._forget(link)
        link.app_closed = True
        link.on_recv = link.on_send = None  # bound methods: a cycle through the owner
        self._release(link)

    def _release(self, link: Link) -> None:
        """Once a connection is closed on both sides (the socket, and the
        application's on_close), break the cycles through it so reference
        counting frees it (network thread or the process thread)."""

    def _forget(self, link: Link) -> None:
        pass

    def _closing_flushed(self, link: Link) -> None:
        """Everything up to our ``closeconn`` was written (network thread).

        Answering the peer's close, or closing a peer for what it did, we
        half-close at once, and so we do with a peer of ours (one that
        negotiated ``mapkeys``, which every peng3dnet 0.2 peer offers: it
        hands every packet before our ``closeconn`` to its application
        before the close).  When the
        application closed (or stopped) a connection to a 0.1.x peer we do
        not: we wait for it to close after it handled our ``closeconn``
        (bounded by the linger timer), as 0.1.x takes a half-close for a
        dead socket and drops the packets still waiting for its
        ``process()``.  (Waiting with a peer of ours too, two closes that
        crossed, each side waiting for the other's end, took the whole
        linger: 2 s.)"""
        chan = link.chan
        if not link.polite or not link.strict_keys:
            chan.shutdown_write()
        chan.update_interest()

    def _close_at_exit(self, link: Link, reason: str) -> None:
        """The loop is ending: close a connection still open with ``reason``,
        write what the socket takes now, and close the socket (network
        thread; there is no later round to wait for the peer)."""
        if link.proto.is_open:
            self._close_link(link, reason, polite=True)
        if not link.chan.closed:
            with link.chan.lock:
                link.chan.flush()
            self._force_close(link)

    def _linger(self, link: Link) -> None:
        """Close the socket in ``CLOSE_LINGER`` s unless what is queued
        before our ``closeconn`` drains meanwhile at ``net.limits.min_read_rate``
        or faster: then look again in ``CLOSE_LINGER`` s, and once all is
        written give the peer a whole ``CLOSE_LINGER`` for its end (network
        thread).  A close that only waited ``CLOSE_LINGER`` from the moment
        the ``closeconn`` was queued dropped the backlog of a peer that was
        reading it (2.9 MB at 640 KB/s: 23 of 50 messages, no ``closeconn``)."""
        chan = link.chan
        left = len(chan.out)
        chan.linger = self._reactor.call_later(CLOSE_LINGER, lambda: self._linger_due(link, left))

    def _linger_due(self, link: Link, left: int) -> None:
        chan = link.chan
        if chan.out and not chan.closed:
            # A write round first: the socket reports writable only once a
            # good part of its (autotuned, megabytes) send buffer is free, so
            # a peer reading steadily showed no progress for seconds (141 of
            # 200 messages, no closeconn, in the review's run).
            self._on_ready(link, EVENT_WRITE)
        if chan.closed:
            return
        floor = max(1.0, float(self.cfg["net.limits.min_read_rate"]) * CLOSE_LINGER)
        if left and left - len(chan.out) >= floor:
            self._linger(link)  # draining: wait on
            return
        self._force_close(link)

    def _force_close(self, link: Link) -> None:
        if not link.chan.closed:
            link.chan.close()
            self._channel_closed(link)

    def _close_link(self, link: Link, reason: str | None, polite: bool = False) -> bool:
        """Close one connection with ``reason`` (any thread).  ``polite``:
        the application (or a stop) closes a well-behaved peer; see
        :meth:`_closing_flushed`.  Returns ``False`` when it was closed
        already (e.g. its socket dropped a moment ago)."""
        chan = link.chan
        with chan.lock:
            if not link.proto.is_open:
                return False
            link.local_closed = True
            link.polite = polite
            link.proto.close(reason)
            if chan.drain_waiters:  # a sender blocked on this connection: it is closed now
                chan.drained.notify_all()
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
        return True

    # --- sending ----------------------------------------------------------------------------
    def _lookup(self, ptype: Any) -> SendPlan:
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
    def _check_sendable(link: Link) -> None:
        """Application packets go out after the handshake (or, on a
        connection type of its own, after settype) (any thread)."""
        proto = link.proto
        state = proto.state
        if state is HandshakeState.ACTIVE or (state is HandshakeState.TYPESET and proto.conntype != CONNTYPE_CLASSIC):
            return
        if link.session is not None and not link.session.ended:
            return  # a session between sockets: kept for the next one
        if not proto.is_open:
            raise ConnectionClosedError("connection is closed", proto.close_reason)
        raise LocalProtocolError(f"cannot send yet (connection state {state.name}); wait for the handshake")

    def _send(self, link: Link, ptype: Any, data: Any) -> None:
        try:  # (_lookup(), inlined: once per message)
            plan = self._send_plans[ptype]
        except (KeyError, TypeError):
            plan = self._send_plan(ptype)
        else:
            if plan[0] != self.registry.version or plan[5] is not type(ptype):
                plan = self._send_plan(ptype)
        _, pid, pobj, hooks, smart, _ = plan
        if link.proto.state is not _ACTIVE:
            self._check_sendable(link)
        if smart and self._h_strict_send and not smart_check(pobj, link.cid, receiving=False):
            self._refuse_strict(pid)
        if link.strict_keys:  # a 0.1.x peer: refuse here what it would close the connection for
            check_keys(data)
        if link.ct_send and link.ctobj.send(data, ptype, link.cid):  # type: ignore[union-attr]
            # (0.1.x: a true result sends it with no send event, on_send or packet hook)
            self._send_frame(link, link.proto.encode_packet(pid, data, thread_pack), pid, NO_EVENT)
            return
        frame = link.proto.encode_packet(pid, data, thread_pack)  # outside the lock
        self._send_frame(link, frame, pid, data)
        if link.on_send is not None:
            link.on_send(ptype, data)
        if hooks:
            pobj._send(data, link.cid)

    def _send_plan(self, ptype: Any) -> SendPlan:
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
        if pid in INTERNAL_IDS:
            raise LocalProtocolError(f"internal packet {pid} cannot be sent by the application")
        pobj = reg.find_obj(pid)
        cls: Any = type(pobj)
        hooks = pobj is not None and (cls._send, cls.send) != BASE_SEND and not quiet_smart(cls, "send")
        plan = SendPlan(regver, pid, pobj, hooks, isinstance(pobj, SmartPacket), type(ptype))
        plans = self._send_plans
        if len(plans) > 1024:  # bounded, whatever the caller passes
            plans.clear()
        try:
            plans[ptype] = plan
        except TypeError:
            pass
        return plan

    def _send_frame(self, link: Link, frame: bytes, pid: int, data: Any, cork: bool = True) -> None:
        """Queue an encoded frame on one connection (any thread).  Fan-out
        paths pass ``cork=False`` (see :meth:`Channel.write`)."""
        session = link.session
        if session is not None and (session.waiting or session.link is not link or link.proto.closed):
            target = self._session_target(session, frame)
            if target is None:
                return  # kept in the replay buffer for the session's next socket
            link = target
        chan = link.chan
        slow = False
        overflow = False
        try:
            with chan.lock:
                if link.proto.closed:
                    if session is not None and not session.ended:
                        # (a session moves to a new socket under this lock: still
                        # here, its replay has not been taken; else follow it:
                        # the old socket was closed by us ("resumed") then)
                        if session.link is not link:
                            raise _RerouteSignal
                        if not link.local_closed and not session.closing:
                            self._session_keep(link, session, frame)  # dropped just now: for the next socket
                            return
                    reason = link.proto.close_reason
                    if session is not None and session.closing:
                        reason = session.closing
                    raise ConnectionClosedError("connection is closed", reason)
                # (chan.out first: empty, the common case, it decides the three tests)
                if chan.out and link.shed:
                    # To be closed for write_buffer_total, its backlog dropped: a
                    # program thread broadcasting meanwhile would only add to it
                    # (it held 1.7-2.4x the cap until the close, in the fault run).
                    # A session keeps it for its replay all the same: a drop (EOF)
                    # before the close leaves the session alive, and a resume
                    # must miss nothing.
                    if session is not None:
                        if not session.sent(frame):
                            self._reactor.call_soon(self._session_overflow, session)
                        elif session.totals is not None and session.totals.over:
                            self._replay_over(session.totals)
                    return
                if (chan.out and cork and self._h_write_block and len(chan.out) > self._h_write_block
                        and (self._flow.may_block() or self._polled_here())):
                    try:
                        # (on the polling thread nobody else does the I/O we wait for: we do)
                        self._flow.wait_drained(link, self._poll_for_drain if self._polled_here() else None)
                    except ConnectionClosedError:
                        if session is None or session.ended:
                            raise
                        if session.link is not link:  # resumed on a new socket meanwhile (replayed already)
                            raise _RerouteSignal from None
                        if link.local_closed or session.closing:  # closed by us: over
                            raise
                        self._session_keep(link, session, frame)  # dropped while we waited: the next socket has it
                        return
                if (chan.out and len(chan.out) + len(frame) > self._h_write_cap
                        and self._backlog(link) + len(frame) > self._h_write_cap):
                    if self._h_write_raise:
                        raise WriteBufferFullError(
                            f"{len(chan.out)} bytes wait for cid={link.cid}; the cap is {self._h_write_cap}"
                        )
                    log.info("! %s cid=%s: peer does not read (%d bytes queued), closing", self._role, link.cid, len(chan.out))
                    slow = True
                else:
                    chan.write(frame, cork)
                    if session is not None and not session.sent(frame):
                        overflow = True
                    if (chan.out or link.acct) and self._h_write_total:
                        self._flow.account(link)
                    stats = link.stats
                    stats.packets_out += 1
                    stats.bytes_out += len(frame)
                    if data is not NO_EVENT and self._h_events and (self._sig_send.receivers or self.peng is not None):
                        # Emitted under the lock so it cannot come after the close event;
                        # marked as dispatching: a subscriber's own sends must not block here.
                        self._dispatching(self._emit_packet, self._route_send, link, pid, "data", data)
        except _RerouteSignal:
            # Not under the old socket's lock: the session's current socket,
            # or its replay buffer (the resume's replay is taken under that
            # socket's lock, so nothing kept now comes after it).
            target = self._session_target(session, frame)  # type: ignore[arg-type]
            if target is not None:
                self._send_frame(target, frame, pid, data, cork)
            return
        if slow:
            self._flow.close_slow(link)
            return
        if overflow:
            self._session_overflow(session)  # type: ignore[arg-type]
        elif session is not None and session.totals is not None and session.totals.over:
            self._replay_over(session.totals)
        if self._h_print_send:
            self._debug_print("send", link, pid, data)

    # --- sessions (extension "resume"; see peng3dnet.session) -----------------------------------
    def _session_target(self, session: Session, frame: bytes) -> Link | None:
        """Where a frame of ``session`` goes: the link to write it to, or
        ``None`` when it was kept in the replay buffer (no usable socket
        now) (any thread).

        Raises:
            ConnectionClosedError: The session is over.
        """
        while True:
            target: Link = session.link
            with target.chan.lock:
                # (no continue inside the with: mypyc cannot compile that)
                if session.link is target:  # else moved to a new socket meanwhile: look again
                    if session.ended or session.overflowed or target.local_closed or session.closing:
                        # (closed by us, the session ends with it, or a kick of it between
                        # sockets is on its way: not kept for a socket that will not come)
                        raise ConnectionClosedError("connection is closed",
                                                    session.closing or target.proto.close_reason or "replayoverflow")
                    if session.waiting or target.proto.closed:
                        self._session_keep(target, session, frame)
                        return None
                    return target

    def _session_keep(self, link: Link, session: Session, frame: bytes) -> None:
        """Keep a frame for the session's next socket (channel lock held).

        Raises:
            ConnectionClosedError: The replay buffer is full: the session
                closes (``replayoverflow``).
        """
        if not session.sent(frame):
            self._reactor.call_soon(self._session_overflow, session)
            raise ConnectionClosedError(
                f"{session.replay_bytes} bytes wait for the session's next socket; the cap is {session.cap}",
                "replayoverflow",
            )
        link.stats.packets_out += 1
        if session.totals is not None and session.totals.over:
            self._replay_over(session.totals)

    def _replay_over(self, totals: ReplayTotal) -> None:
        """The sessions' replay buffers together went over
        ``net.session.replay_total``: have the largest closed, on the network
        thread, once (any thread; a server's)."""
        with totals.lock:
            if totals.pending:
                return
            totals.pending = True
        self._reactor.call_soon(self._replay_shed)

    def _replay_shed(self) -> None:
        """See :meth:`_replay_over` (network thread; the server's does it)."""

    def _session_overflow(self, session: Session) -> None:
        """The replay buffer went over ``net.session.replay_buffer``: the
        peer does not acknowledge what we send; close the session."""
        if session.ended:
            return
        log.info("! %s cid=%s: replay buffer over %d bytes, closing the session", self._role, session.cid, session.cap)
        link = session.link
        if link.proto.is_open:
            self._close_link(link, "replayoverflow")
        else:
            self._on_network_thread(self._session_end, session, "replayoverflow")

    def _maybe_ack(self, link: Link, session: Session) -> None:
        """Acknowledge what arrived: now after ACK_EVERY packets, else once
        ACK_DELAY passed (network thread)."""
        if session.rx - session.ack_sent >= ACK_EVERY:
            self._send_ack(link, session)
        elif session.ack_timer is None:
            session.ack_timer = self._reactor.call_later(ACK_DELAY, lambda: self._ack_due(session))

    def _ack_due(self, session: Session) -> None:
        session.ack_timer = None
        link = session.link
        if session.rx != session.ack_sent and not link.proto.closed:
            self._send_ack(link, session)

    def _send_ack(self, link: Link, session: Session) -> None:
        with link.chan.lock:
            if link.proto.send_ack(session.rx):
                session.ack_sent = session.rx
                self._push(link)

    def _session_handshake(self, link: Link) -> bool:
        """At the end of a handshake: start a session, or finish resuming
        one (send again what the peer missed).  Returns whether the
        application's handshake hook must be skipped (a resume) (network
        thread)."""
        session = link.session
        if session is None or not session.resuming:
            if session is None and "resume" in link.proto.negotiated:
                self._session_started(link)
            if link.session is not None:
                link.session.established = True
            return False
        if session.ended:
            return True
        with link.chan.lock, session.lock:
            missed = session.unacked_from(session.peer_rx)
            if missed is not None:
                session.resuming = False
                session.ack_sent = session.rx
                if missed:
                    chan = link.chan
                    chan.write(missed, False)
                    link.stats.bytes_out += len(missed)
                    link.replay_end = chan.head + len(chan.out)
                    if self._h_write_total:
                        self._flow.account(link)
        if missed is None:
            log.info("! %s cid=%s: cannot resume: the peer's count %d is outside %d..%d", self._role, link.cid,
                     session.peer_rx, session.acked, session.tx)
            self._close_link(link, "resume:mismatch")
            return True
        log.info("= %s cid=%s: session resumed (%d bytes sent again)", self._role, link.cid, len(missed))
        self._session_resumed(link, session)
        return True

    def _session_started(self, link: Link) -> None:
        """A handshake negotiated ``resume`` (network thread); the server's
        session exists already, a client takes the one the server gave."""

    def _session_resumed(self, link: Link, session: Session) -> None:
        """A session runs on a new socket (network thread)."""

    def _session_end(self, session: Session, reason: str) -> None:
        """Close a session that has no open socket, for good (network thread)."""
        if session.ended:
            return
        session.ended = True
        link = session.link
        self._session_forget(session)
        self._connection_closed(link, reason)
        if self._calls.pending:
            self._calls.closed(link, reason)
        if self._has_queued(link):
            self._inbox.put_close(link, reason)
        else:
            self._app_closed(link, reason)

    def _session_forget(self, session: Session) -> None:
        """The session is over: drop its timers and its replay buffer
        (network thread)."""
        session.ended = True
        for timer in (session.timer, session.ack_timer):
            if timer is not None:
                timer.cancel()
        session.timer = session.ack_timer = None
        session.release()

    def _session_dropped(self, link: Link, session: Session, reason: str | None) -> None:
        """The socket of a session dropped (network thread): wait for the
        next one (the sides override this)."""
        self._session_end(session, reason or "socketclose")

    def _push(self, link: Link) -> None:
        """Write what the core queued and count it (channel lock held).

        What the core answers by itself (heartbeat echoes, pongs, acks) is
        always written, but bounded: while the write buffer is over
        ``net.limits.write_buffer`` (one large frame accepted into an empty
        buffer, or sends that stopped just under the cap, may put it there
        with a peer that reads), such replies may add up to that much again;
        past it the peer, which sends and does not read, is closed with
        ``slowconsumer`` (on the network thread, soon: not under this lock).
        """
        data = link.proto.data_to_send()
        if data:
            chan = link.chan
            over = len(chan.out) > self._h_write_cap and self._backlog(link) > self._h_write_cap
            chan.write(data)
            link.stats.bytes_out += len(data)
            if not over:
                link.core_over = 0
            else:
                link.core_over += len(data)
                if link.core_over > self._h_write_cap and not link.proto.closed:
                    log.info("! %s cid=%s: peer does not read (%d bytes queued, %d of them our own replies), closing",
                             self._role, link.cid, len(chan.out), link.core_over)
                    self._reactor.call_soon(self._flow.close_slow, link)
            if (chan.out or link.acct) and self._h_write_total:
                self._flow.account(link)

    def _feed(self, link: Link, data: bytes) -> None:
        """receive_data() of both facades: bytes in as if read from the socket."""
        with link.chan.lock:
            link.proto.packet_quota = link.proto.byte_quota = NO_QUOTA  # a replay is not flow-controlled
            link.proto.receive_data(data)
            outs = link.proto.drain_received()
            self._push(link)
        self._on_network_thread(self._handle_outputs, link, outs)

    def _on_network_thread(self, fn: Any, *args: Any) -> None:
        """Run ``fn(*args)`` where connection state may change: now when
        called on the network thread or when no loop runs, else queued for
        the network thread (any thread)."""
        if self._loop_active() and not self._reactor.in_loop():
            self._reactor.call_soon(fn, *args)
        else:
            fn(*args)

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

    def send_raw(self, cid: int | None, pid: int, msg: Any) -> None:
        """Send a packet that is not in the registry, by raw id: for
        connection types (a ping connection's request and reply).

        Args:
            cid: The connection id (``None`` on a client).
            pid: The packet id.
            msg: Any msgpack-serializable value.

        Raises:
            ConnectionClosedError: The connection is closed.

        Thread safety: any thread.
        """
        link = self._link(cid)
        if link.session is not None and pid >= PID_FIRST_FREE:  # counted, as the peer counts it
            self._send_frame(link, link.proto.encode_packet(pid, msg, thread_pack), pid, NO_EVENT)
            return
        chan = link.chan
        with chan.lock:
            link.proto.send_packet(pid, msg)
            self._push(link)
            link.stats.packets_out += 1

    # --- process queue -----------------------------------------------------------------------
    def _dispatch(self, link: Link, fn: Any, pid: int, msg: Any, size: int = 0) -> None:
        """Hand one queued packet to the application: the packet's
        ``_receive`` (see :class:`~peng3dnet.plans.RecvPlan`), then the
        owner's ``on_receive`` hook (the order of 0.1.x); errors as in
        :meth:`_handler_failed` (the thread calling ``process()``)."""
        if fn is None:  # the close, queued behind the connection's last packets
            self._app_closed(link, msg)
            return
        try:
            fn(msg, link.cid)
            if link.on_recv is not None and pid >= 0:  # (-2: a call's callback, not a packet)
                link.on_recv(pid, msg)
        except BaseException:
            self._handler_failed(link, fn)
        finally:
            if self._inbox.done(link, size):
                self._reactor.call_soon(self._flow.resume_reading, link)

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
        if wait:
            return self._wait_then_run(timeout)
        if not self._inbox.items:
            return 0
        return self._run_batch()

    def _wait(self, timeout: float | None, seen: int = -1) -> None:
        """Let the relay know we wait, then wait for packets (``seen``: see
        :meth:`Inbox.wait`)."""
        self._relay.before_wait()
        self._inbox.wait(timeout, seen)

    def _wait_then_run(self, timeout: float | None, seen: int = -1) -> int:
        """``process(wait=True)``: :meth:`_wait`, then run what is queued."""
        self._wait(timeout, seen)
        if not self._inbox.items:
            return 0
        return self._run_batch()

    def _run_batch(self) -> int:
        """Dispatch what is queued now (not what arrives meanwhile), marked
        as running handlers (see :meth:`_dispatching`); return how many
        packets (queued closes are dispatched, not counted).  The thread
        calling ``process()``, or the relay's runner (once per batch: the
        marking is inlined)."""
        local = self._flow.dispatching
        outer = getattr(local, "active", False)
        local.active = True
        inbox = self._inbox
        items = inbox.items
        lock = inbox.lock
        n = 0
        fn: Any
        try:
            for _ in range(len(items)):
                try:
                    link, fn, pid, msg, size = items.popleft()
                except IndexError:  # another thread drained concurrently
                    break
                if fn is None:
                    self._dispatch(link, fn, pid, msg)  # the close
                    continue
                # _dispatch() and Inbox.done(), inlined (once per packet): keep them alike.
                try:
                    fn(msg, link.cid)
                    if link.on_recv is not None and pid >= 0:
                        link.on_recv(pid, msg)
                except BaseException:
                    self._handler_failed(link, fn)
                finally:
                    with lock:
                        link.n_out += 1
                        link.b_out += size
                        inbox.b_out += size
                        chan = link.chan
                        resume = (chan.paused and link.n_in - link.n_out <= link.resume_at
                                  and link.b_in - link.b_out <= link.b_resume_at)
                        if resume:
                            chan.paused = False
                    if resume:
                        self._reactor.call_soon(self._flow.resume_reading, link)
                n += 1
        finally:
            local.active = outer
            flow = self._flow
            if flow.over_total and not flow.total_check_pending:  # (over the total: see if it is down now)
                flow.total_check_pending = True
                self._reactor.call_soon(flow.check_queue_total)
        return n

    def _dispatching(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` marked as running handlers: they serve every
        connection, so a send there never blocks (see Flow.may_block)."""
        local = self._flow.dispatching
        outer = getattr(local, "active", False)
        local.active = True
        try:
            return fn(*args)
        finally:
            local.active = outer

    def _process_single(self, link: Link) -> bool:
        take_for = self._inbox.take_for
        item = None
        if link.earlier:  # (a resumed session's earlier sockets first: their packets came first)
            for source in link.earlier:
                item = take_for(source)
                if item is not None:
                    break
        if item is None:
            item = take_for(link)
            if item is None:
                return False
        self._dispatching(self._dispatch, *item)
        return True

    @staticmethod
    def _backlog(link: Link) -> int:
        """What waits in ``link``'s write buffer for the write cap
        (``net.limits.write_buffer``): all of it but a resume's replay still
        unsent (48 MiB may come back at once, over the 32 MiB cap: that is
        not the peer's slowness; the first send after it closed the session
        as slowconsumer).  Channel lock held."""
        chan = link.chan
        return len(chan.out) - max(0, link.replay_end - chan.head)

    @staticmethod
    def _carry_queue(old: Link, new: Link) -> None:
        """A session moves from socket ``old`` to ``new`` (network thread):
        the packets of its earlier sockets that still wait for process()
        stay theirs in the queue, and ``new`` knows of them (see
        :attr:`Link.earlier`)."""
        new.earlier = tuple(lk for lk in (*old.earlier, old) if lk.queued > 0)

    @staticmethod
    def _has_queued(link: Link) -> bool:
        """Whether packets of this connection (or of its session's earlier
        sockets) wait for process(): its close must come after them."""
        return link.queued > 0 or any(lk.queued > 0 for lk in link.earlier)

    def process_forever(self) -> None:
        """Process packets until :meth:`stop` or the end of the network loop,
        waiting (not polling) between batches; then what is left, and return.

        Thread safety: run it on one thread (see :meth:`process_async`).
        """
        inbox = self._inbox
        # (``stopped`` is never cleared: a stop() that came before this
        # thread ran, or the end of the loop, holds.  It used to be cleared
        # here, on the new thread: a process_async() followed at once by
        # stop() could lose the stop, and the thread never ended.)
        # Only the thread of process_async() takes turns with the network
        # thread: a program calling process_forever() itself keeps its handlers.
        ours = threading.current_thread() is self._process_thread
        while not inbox.stopped:
            # (read before looking: runAsync() may start the loop and notify
            # between the look and the wait; then the wait returns at once)
            seen = inbox.wakes
            # (and before the relay's test: packets come only from a loop
            # that has started, so seen here, the test below sees it too)
            queued = bool(inbox.items)
            relay = self._relay
            if ours and relay.enabled and self._loop_active() and not relay.loop_done.is_set():
                relay.run_process_thread(self)
                continue
            if not queued:
                self._wait(None, seen)
                # Look again before running anything: the wake-up may be
                # runAsync()'s, and packets that came meanwhile are then
                # the relay's to run (not this thread's, outside it).
                continue
            self._run_batch()
        # The network loop may still be closing connections: their on_close
        # is queued behind their last packets.  Drain once it has ended.
        if self._loop_started and not self._reactor.in_loop():
            self._loop_done.wait(_DRAIN_WAIT)
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
        self._inbox.notify()

    # --- peng3d-style API (names fixed) ---
    def sendEvent(self, event: str, data: dict[str, Any] | None = None) -> None:  # noqa: N802
        """Emit an event: on the blinker bus and, if a Peng was given, to
        ``peng.sendEvent``.  Adds the ``peng`` and ``server``/``client`` keys.

        Thread safety: any thread; handlers run on it.
        """
        self._emit(event, dict(data) if data else {})

    # --- lifecycle -----------------------------------------------------------------------------
    def initialize(self) -> None:
        """Register the internal packets, the connection types and the mixin
        hooks (``_reg_packets_*``, ``_reg_conntypes_*``); emit ``initialize``.
        Repeated calls do nothing.

        Thread safety: any thread, before the loop runs.
        """
        if self._initialized:
            return
        self._initialized = True
        self._register_internal()
        self._call_hooks()
        self._emit(f"peng3dnet:{self._role}.initialize", {})

    def interrupt(self) -> None:
        """Wake the network loop and the process waiters; emit ``interrupt``.

        Thread safety: any thread.
        """
        self._emit(f"peng3dnet:{self._role}.interrupt", {})
        # Not a bare wake(): it also ends the wait of a round that has not
        # reached select() yet (a poll() loop between calls).
        self._reactor.interrupt()
        self._wake_process()

    def _start_thread(self, selector: Any) -> threading.Thread:
        """Run the loop in a daemon thread named after the role (runAsync)."""
        if self._polling:
            raise LocalProtocolError("this peer is driven by poll(); runAsync() would run its loop a second time")
        self._refuse_second_run()
        relay = self._relay
        reactor = self._reactor
        t = threading.Thread(target=relay.run_loop_thread,
                             args=(lambda: reactor.start(selector, self._on_loop_start),),
                             name=self._thread_name, daemon=True)
        self._net_thread = t
        self._loop_started = True
        self._loop_done.clear()
        relay.starting()
        t.start()
        self._inbox.notify()  # a process thread waiting already joins the relay
        return t

    def poll(self, timeout: float = 0.0) -> int:
        """One round of network I/O, then the handlers of what arrived, on
        the calling thread: the game loop without threads (PodSixNet's
        ``Pump()``).  Call it every frame (e.g. from ``pyglet.clock``:
        ``attach_to_pyglet(peer, poll=True)``).  The first call
        binds (server) or connects (client); from then on the calling thread
        is this peer's network thread, so call it from that thread only.
        Sending from the same thread writes at once when the socket takes it.
        After :meth:`stop` (or a client's close), one more call finishes the
        loop; ``while peer.run: peer.poll(0.01)`` handles everything.

        Args:
            timeout: Longest wait for network activity in seconds (0: do
                not wait; a due timer shortens it).

        Returns:
            The number of packets processed.

        Raises:
            LocalProtocolError: The loop already runs on a thread
                (``runAsync()``, a ``NetworkLoop``), or another thread polls.
            NetworkError: The first call could not bind or connect.

        Thread safety: one thread, the same every time.
        """
        if not self._polling:
            if self._loop_started:
                raise LocalProtocolError("the loop already runs on a thread (runAsync or a NetworkLoop)")
            if self._poll_starting:
                # poll() from a handler of the first poll's own events
                # (initialize, bind, connect): that poll starts the loop
                # (it used to start here too, and the first then raised
                # "a reactor runs only once")
                return 0
            self._poll_starting = True
            try:
                self.initialize()
                self._prepare_loop()
            finally:
                self._poll_starting = False
            self._polling = True
            self._loop_started = True
            self._loop_done.clear()
            self._reactor.start(selectors.DefaultSelector, self._on_loop_start)
            _polled_on.setdefault(threading.get_ident(), set()).add(self)
        self._poll_io(timeout)
        return self._process_polled()

    def _process_polled(self) -> int:
        """process() on the polling thread, marked as inside the poll."""
        if self._in_poll:  # (poll() from a handler of this poll: the I/O was enough)
            return 0
        self._in_poll = True
        try:
            return self.process()
        finally:
            self._in_poll = False

    def _poll_io(self, timeout: float | None) -> None:
        # (not inside a round of ours: poll() from an event handler or an
        # inline packet handler ran a nested round that read and handled
        # the read's later packets before the rest of it: out of order)
        if self._loop_done.is_set() or self._in_io:
            return
        reactor = self._reactor
        if not reactor.in_loop():
            raise LocalProtocolError("poll() must be called from the thread that called it first")
        was = self._in_poll  # (True when a handler of this poll polls: it stays so)
        self._in_poll = self._in_io = True
        try:
            reactor.run_once(timeout)
        finally:
            self._in_io = False
            self._in_poll = was
        if reactor.stopping and not self._loop_done.is_set():
            self._end_loop()

    def _poll_for_drain(self, timeout: float | None) -> bool:
        """One wait of ``Flow.wait_drained()`` on the polling thread: a round
        of network I/O, of this peer and of the others this thread polls,
        and the handlers of those others (not ours: they would run inside
        our send; what arrives for us waits for the next poll()); ``False``
        once the loop ended.

        The others' handlers run because what we wait for may need them: the
        game's own client, polled on this thread, stops reading once its
        process queue is full (``net.limits.recv_queue``), and only its
        handlers empty it (a level sent to it in one frame waited
        ``net.timeout.send`` and failed).  Meanwhile this peer counts as
        inside a poll: a send to it from their handlers does not wait."""
        if self._loop_done.is_set():
            return False
        others = self._polled_with()
        if others:
            self._in_poll = True
            try:
                self._poll_together(others, 0.05 if timeout is None else timeout, True, own_handlers=False)
            finally:
                self._in_poll = False
        else:
            self._poll_io(timeout)
        return not self._loop_done.is_set()

    def _poll_together(self, others: list[Peer], timeout: float, handlers: bool,
                       own_handlers: bool = True) -> None:
        """One round for this peer and ``others`` (the other peers this
        thread polls): one wait on all their selectors, then each one's I/O
        and, with ``handlers``, its handlers (ours too unless
        ``own_handlers`` is false) (polling thread)."""
        peers = [self, *others]
        wait_any([p._reactor for p in peers], timeout)
        for p in peers:
            p._poll_io(0)
            if handlers and (own_handlers or p is not self) and not p._loop_done.is_set():
                p._process_polled()

    def _polled_with(self) -> list[Peer]:
        """The other peers the calling thread polls, running and not inside
        a poll of their own (polling thread)."""
        peers = _polled_on.get(threading.get_ident())
        if peers is None or len(peers) < 2:
            return []
        return [p for p in list(peers)
                if p is not self and not p._in_poll and not p._loop_done.is_set() and p._reactor.in_loop()]

    def _polled_here(self) -> bool:
        """Whether the caller is the thread that polls this peer, outside
        the callbacks and handlers a poll() runs (those must not wait: a
        nested poll would run handlers inside a handler)."""
        return self._polling and not self._in_poll and self._reactor.in_loop()

    def _drive(self, done: Any, timeout: float | None) -> bool:
        """Poll (I/O and handlers) until ``done()`` or the loop ends, at most
        ``timeout`` seconds: what the waiting methods do on the polling
        thread, where nobody else would do the I/O they wait for."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not done() and not self._loop_done.is_set():
            left = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
            if left <= 0:
                break
            others = self._polled_with()
            if others:
                # The thread polls other peers too (a game's own server and
                # client): what we wait for may need them (the handshake
                # with our own server), so they are polled meanwhile.
                self._poll_together(others, left, True)
                continue
            self._poll_io(left)
            self._process_polled()
        if self._reactor.stopping and not self._loop_done.is_set():
            self._poll_io(0)  # the stop came with what we waited for: end the loop now
        return bool(done())

    def _wait_event(self, event: threading.Event, timeout: float | None) -> bool:
        """Wait for ``event``; on the polling thread, poll while waiting
        (nobody else would do the I/O it waits for)."""
        if self._polled_here():
            return self._drive(event.is_set, timeout)
        if self._in_poll and self._reactor.in_loop():
            return event.is_set()  # inside a poll's callbacks: nobody else would do the I/O
        self._relay.before_wait()
        return event.wait(timeout)

    def _prepare_loop(self) -> None:
        """Bind (server) or connect (client) before the loop starts."""

    # --- loop ----------------------------------------------------------------------------------
    def _run_loop(self, selector: Any) -> None:
        """runBlocking(): the calling thread runs the loop until it ends."""
        self._refuse_second_run()
        self._loop_started = True
        self._loop_done.clear()
        try:
            self._reactor.run(selector, self._on_loop_start)
        finally:
            self._end_loop()

    def _refuse_second_run(self) -> None:
        """runBlocking(), runAsync(): a peer runs its loop once.  A second
        run would end the running loop from its own thread (the selector
        closed under the first), or, after the end, never end (the relay's
        end runs once): ``join()`` hung for ever."""
        if self._loop_started:
            raise LocalProtocolError(
                "the loop already runs (runAsync(), poll() or a NetworkLoop)" if not self._loop_done.is_set()
                else "the loop has ended; a peer runs its loop once"
            )

    def _loop_ended(self) -> None:
        """Called right after ``_loop_done`` is set, on the thread that ended
        the loop (or left the shared one): queued calls will not run now."""

    def _end_loop(self) -> None:
        """End the loop on the thread running it when it stops: runBlocking(),
        the last poll(), or whichever thread of runAsync()'s relay leads
        then (see peng3dnet.relay)."""
        reactor = self._reactor
        try:
            self._on_loop_exit()
        finally:
            reactor.running = False
            reactor.close()
            self._loop_done.set()
            self._processing_ends()
            if self._polling:
                peers = _polled_on.get(threading.get_ident())
                if peers is not None:
                    peers.discard(self)
                    if not peers:
                        del _polled_on[threading.get_ident()]
            self._loop_ended()

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
        if not self._wait_event(self._loop_done, timeout):
            raise TimedOutError(f"{self._role} loop still running after {timeout} s")

    def _processing_ends(self) -> None:
        """The loop has ended (set ``_loop_done`` first): process_forever()
        drains what is left and returns, however the loop ended (a stop, or
        a BaseException from a hook on the network thread, which requests
        no stop: the process thread waited for ever, and :attr:`run` stayed
        true)."""
        if self._stop_reason is None:
            self._stop_reason = "loopended"
        self._inbox.stopped = True
        self._inbox.notify()

    def _request_stop(self, reason: str) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason
        self._inbox.stopped = True
        self._inbox.notify()
        if self._shared is not None:
            if self._loop_active():
                self._reactor.call_soon(self._leave_shared)
        else:
            self._reactor.stop()

    def _leave_shared(self) -> None:
        # Once only: _on_loop_exit runs the shared loop's queued calls, which
        # may hold a second _leave_shared of ours (stop and close both ask).
        if self._loop_done.is_set() or self._leaving:
            return
        self._leaving = True
        try:
            self._on_loop_exit()
        finally:
            self._loop_done.set()
            self._processing_ends()
            self._loop_ended()
            self._relay.wake_all()  # our process thread, waiting in the loop's relay, leaves it

    def _after_handshake(self, link: Link) -> None:
        pass

    def _connection_closed(self, link: Link, reason: str | None) -> None:
        raise NotImplementedError

    def _channel_closed(self, link: Link) -> None:
        pass

    def _closed_before_session_ended(self, link: Link) -> None:
        """Finish what :meth:`_channel_closed` left for a session that then
        ended with an application close (network thread)."""

    def _on_loop_start(self) -> None:
        raise NotImplementedError

    def _on_loop_exit(self) -> None:
        raise NotImplementedError

    def _link(self, cid: int | None) -> Link:
        raise NotImplementedError


def resolve_addr(addr: Any, cfg: ConfigView, prefix: str) -> tuple[Any, ...]:
    port = cfg[f"{prefix}.addr.port"]
    if addr is None:
        addr = cfg[f"{prefix}.addr"]
    if addr is None:
        return normalize_addr_socketstyle((cfg[f"{prefix}.addr.host"], port))
    return normalize_addr_socketstyle(addr, port)
