"""The server side: Server, ClientOnServer, ServerStats."""

from __future__ import annotations

import contextlib
import functools
import inspect
import ipaddress
import itertools
import logging
import selectors
import threading
import time
from typing import TYPE_CHECKING, Any

from . import tls as _tls
from ._mypyc import mypyc_attr
from .calls import CallFuture
from .constants import (
    CONNTYPE_CLASSIC,
    CONNTYPE_NOTSET,
    CONNTYPE_PING,
    MODE_NOTSET,
    PID_CLOSECONN,
    PID_FIRST_FREE,
    RESUME_KEY,
    SESSION_KEY,
    SIDE_SERVER,
    SSLSEC_NONE,
    SSLSEC_WRAPPED,
    STATE_ACTIVE,
    STATE_HANDSHAKE_WAIT1,
    STATE_HELLOWAIT,
    STATE_INIT,
    STATE_LOGGEDIN,
)
from .errors import (
    ConnectionClosedError,
    LocalProtocolError,
    TLSError,
    WriteBufferFullError,
)
from .link import ConnectionStats, Link, link_hooks, noop_hook
from .login import Login
from .packet import smart_check
from .peer import Peer, resolve_addr
from .plans import NO_EVENT, thread_pack
from .protocol.codec import check_keys, frame_body, pack
from .protocol.connection import NO_QUOTA, CallRequested, Output, PacketReceived
from .protocol.describe import describe
from .protocol.framing import LENGTH, encode_frame
from .protocol.handshake import HandshakeState
from .session import ReplayTotal, Session, new_token, valid_request
from .transport import EVENT_READ, Channel, Listener
from .userlog import report_user_error
from .util import address_group

ACCEPT_PAUSE = 1.0  # seconds without accepting after accept() ran out of descriptors or memory
_SERVERFULL = encode_frame(PID_CLOSECONN, 0, b"\x81\xa6reason\xaaserverfull")  # the refusal, pre-encoded
def _is_loopback(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool((mapped or ip).is_loopback)


_ADDRESSLIMIT = encode_frame(PID_CLOSECONN, 0, pack({"reason": "addresslimit"}))
MAX_CONNECT_BUCKETS = 65536
"""Addresses whose new-connection rate a server remembers (see ``Server._connect_allowed``)."""

if TYPE_CHECKING:  # annotations only: socket calls live in transport
    import socket
    import ssl

__all__ = ['Server', 'ClientOnServer', 'ServerStats']

log = logging.getLogger(__name__)

def _overrides_authenticate(cls: type) -> bool:
    """Whether a Server subclass overrides :meth:`Server.authenticate` with
    a login hook: a method that takes ``(client, credentials)``.  A method
    of that name that does not (a 0.1.x program's own) is left alone."""
    fn = cls.authenticate  # type: ignore[attr-defined]
    if fn is Server.authenticate:
        return False
    try:
        inspect.signature(fn).bind(None, None, None)
    except (TypeError, ValueError):
        log.warning("%s.authenticate does not take (client, credentials): not used as the login hook", cls.__name__)
        return False
    return True


def _is_app(o: Output) -> bool:
    """Whether a core output counts as an application packet for the rate
    limits: an application packet or a call request."""
    return (isinstance(o, PacketReceived) and o.pid >= PID_FIRST_FREE) or isinstance(o, CallRequested)


class ServerStats:
    """Totals of a server, open and closed connections together (read from
    any thread; see :class:`ConnectionStats`)."""

    def __init__(self, server: Server) -> None:
        self._server = server
        self.connections_total = 0
        """Connections accepted so far."""
        self.connections_refused = 0
        """Connections refused because of ``net.limits.max_clients``."""
        self.accept_pauses = 0
        """Times the server stopped accepting for ``ACCEPT_PAUSE`` s because
        ``accept()`` ran out of descriptors or memory."""
        self.resumed_over_max = 0
        """Connections let in over ``net.limits.max_clients`` that resumed a
        suspended session (its place passed to them)."""
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
    def sessions_suspended(self) -> int:
        """Sessions suspended now, waiting for their clients to resume them
        (``net.session.resume``); each keeps its connection's place."""
        return self._server._suspended_n

    @property
    def waiting_over_max(self) -> int:
        """Connections let in over ``net.limits.max_clients`` now (a full
        server admits as many as it holds suspended sessions), each to be
        closed with ``serverfull`` at its settype unless it resumes one."""
        return self._server._over_max

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
        keys = ("connections_total", "connections_refused", "accept_pauses", "connections_open",
                "sessions_suspended", "waiting_over_max", "resumed_over_max", "bytes_in", "bytes_out", "packets_in",
                "packets_out")
        return {k: getattr(self, k) for k in keys}




@mypyc_attr(allow_interpreted_subclasses=True)
class ClientOnServer:
    """The server's view of one connected client.

    Args:
        server: The :class:`Server`.
        conn: The connected socket.
        addr: The client's address.
        cid: The connection id.

    Subclass it and pass the class as ``Server(clientcls=...)`` to add
    per-client state.  ``on_connect`` and ``on_handshake_complete`` run on
    the network thread, ``on_receive`` where ``process()`` runs, ``on_send``
    on the sending thread, ``on_close`` after the packets that came before
    the close (see its docstring).
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
        self.authenticated = False
        """Whether the server's ``authenticate`` hook accepted this client
        (always ``False`` on a server without a hook).  A plain attribute:
        the library sets it when the hook accepts and never reads it."""
        self.auth_data: Any = None
        """What the server's ``authenticate`` hook returned when it accepted
        this client (e.g. the account name), unless that was ``True``;
        ``None`` without a hook."""
        self._link: Link | None = None

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

    @property
    def suspended(self) -> bool:
        """Whether this client's resumable session lost its socket and waits
        for it to come back (``net.session.resume``); what is sent to it
        meanwhile waits in the replay buffer."""
        link = self._link
        session = link.session if link is not None else None
        return session is not None and not session.ended and session.waiting


    def close(self, reason: str | None = None) -> None:
        """Close this connection (see :meth:`Server.close_connection`).

        Thread safety: any thread.
        """
        self.server.close_connection(self.cid, reason)

    def on_connect(self) -> None:
        """Hook: the TCP connection was accepted (network thread)."""

    def on_handshake_complete(self) -> None:
        """Hook: the handshake is complete (network thread).

        The default sets :attr:`state` to ``STATE_ACTIVE`` (``STATE_LOGGEDIN``
        when the server's ``authenticate`` hook accepted the client) and
        emits ``peng3dnet:server.connection.handshakecomplete``.  An override
        may set another state (a value of its own), with or without calling
        ``super()`` (without it, no event is emitted).
        """
        link = self._link
        self.state = STATE_LOGGEDIN if link is not None and link.auth is True else STATE_ACTIVE
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

    @noop_hook
    def on_receive(self, pid: int, msg: Any) -> None:
        """Hook: an application packet from this client was handled (after
        its packet's ``_receive``; the thread that runs ``process()``)."""

    @noop_hook
    def on_send(self, ptype: Any, data: Any) -> None:
        """Hook: an application packet to this client was queued (after the
        packet's ``_send``; the sending thread).  ``ptype`` as given to
        ``send_message``."""


@mypyc_attr(allow_interpreted_subclasses=True)
class Server(Peer):
    """A peng3dnet server: accepts clients and exchanges packets with them.

    Args:
        peng: A ``peng3d.Peng`` (events are forwarded to it, its config is
            consulted), or ``None``.
        addr: Address to bind (see :func:`~peng3dnet.util.normalize_addr_socketstyle`);
            default from ``net.server.addr`` / ``net.server.addr.host`` + ``.port``.
        clientcls: Class of the per-connection objects (a :class:`ClientOnServer`).
        cfg: Config overrides.
        authenticate: ``fn(client, credentials)``, the login hook (see
            :meth:`authenticate`); ``None``: no login (the 0.1.x behaviour).

    Thread safety: every method may be called from any thread unless its
    docstring says otherwise.
    """

    side = SIDE_SERVER
    is_server = True
    is_client = False
    _role = "server"
    _state_attr = "state"
    _thread_name = "peng3dnet Server Thread"
    _ev_recv = "peng3dnet:server.connection.recv"
    _ev_send = "peng3dnet:server.connection.send"
    _ev_heartbeat = "peng3dnet:server.connection.heartbeat"
    _owner_key: str | None = "client"

    def __init__(
        self,
        peng: Any = None,
        addr: Any = None,
        clientcls: type[ClientOnServer] | None = None,
        cfg: dict[str, Any] | None = None,
        authenticate: Any = None,
    ) -> None:
        self._auth_fn = authenticate
        self._login = Login(self, authenticate is not None or _overrides_authenticate(type(self)))
        super().__init__(peng, cfg)
        self.addr: tuple[Any, ...] = resolve_addr(addr, self.cfg, "net.server")
        """Address to bind; after :meth:`bind`, the address actually bound."""
        self.clientcls = clientcls if clientcls is not None else ClientOnServer
        """Class of the per-connection objects."""
        self.clients: dict[int, ClientOnServer] = {}
        """Open connections: cid -> ClientOnServer."""
        self.sock: socket.socket | None = None
        """The listening socket (after :meth:`bind`)."""
        self._cids = itertools.count(1)
        self._cid_lock = threading.Lock()
        self._links: dict[int, Link] = {}
        # address group -> [connections (suspended sessions included),
        # handshakes in progress, suspended sessions]
        self._groups: dict[str, list[int]] = {}
        # address group -> (tokens, monotonic time): the new-connection rate
        # (net.limits.per_address.connect_rate), least recently used first
        self._connect_buckets: dict[str, tuple[float, float]] = {}
        self._open_channels = 0
        self._chan_cond = threading.Condition()
        self._shutdown_info: dict[str, Any] | None = None
        self.stats = ServerStats(self)
        """Server totals (accepted, refused, open, bytes and packets)."""
        self._listener: Listener | None = None
        self._sessions: dict[bytes, Session] = {}  # token -> session (extension "resume")
        self._replay_total = ReplayTotal(0)  # net.session.replay_total (its cap read at each new session)
        # A full server (max_clients) admits as many connections as it holds
        # suspended sessions, each of which must resume one at settype
        # (network thread): those admitted, and the sessions suspended now.
        self._over_max = 0
        self._suspended_n = 0
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
        return self._start_thread(selector)

    def _prepare_loop(self) -> None:
        self.bind()

    # --- lifecycle ----------------------------------------------------------------------------
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
        listener = Listener(str(self.addr[0]), int(self.addr[1]), dualstack=bool(self.cfg["net.server.dualstack"]))
        self._listener = listener
        self.sock = listener.sock
        self.addr = listener.addr
        log.info("= server listening on %s", self.addr)
        self._emit("peng3dnet:server.bind", {"addr": self.addr})

    def _on_loop_start(self) -> None:
        assert self.sock is not None
        self._reactor.register(self.sock, EVENT_READ, self._on_accept)
        self._schedule_housekeeping()
        self._emit("peng3dnet:server.start", {})

    def _on_accept(self, mask: int) -> None:
        listener = self._listener
        assert listener is not None
        for sock, addr in listener.accept_waiting():
            try:
                self._accepted(sock, addr)
            except Exception:  # (a bug of ours): that connection is lost, the rest of the batch is not
                log.exception("! server: accepting a connection from %s failed; dropped", addr)
                with contextlib.suppress(OSError):
                    sock.close()
        if listener.starved is not None:
            # Out of descriptors (or memory): the connection waits in the
            # backlog and the listener stays readable; listening on would
            # spin.  Stop listening for ACCEPT_PAUSE s (what asyncio does).
            self.stats.accept_pauses += 1
            log.warning("! server: cannot accept (%s); not accepting for %.0f s", listener.starved, ACCEPT_PAUSE)
            self._reactor.unregister(listener.sock)
            self._reactor.call_later(ACCEPT_PAUSE, lambda: self._resume_accepting(listener))

    def _resume_accepting(self, listener: Listener) -> None:
        """Listen again after an accept pause (network thread), unless the
        listener was closed meanwhile."""
        if self._listener is listener and listener.sock.fileno() != -1 and not self._reactor.stopping:
            self._reactor.register(listener.sock, EVENT_READ, self._on_accept)

    def _accepted(self, sock: socket.socket, addr: Any) -> None:
        info = self._shutdown_info
        if info is not None:
            # shutdown() began: a late arrival is refused with its reason (it
            # would keep a joining shutdown() waiting for it to close).
            self.stats.connections_refused += 1
            log.info("! server: refusing %s, shutting down", addr)
            Listener.refuse(sock, encode_frame(PID_CLOSECONN, 0, pack({"reason": info["reason"]})))
            return
        max_clients = int(self.cfg["net.limits.max_clients"])
        over_max = max_clients > 0 and len(self._links) >= max_clients
        if over_max and self._over_max >= self._suspended_n:
            # Refused before it becomes a connection: no events, one closeconn.
            self.stats.connections_refused += 1
            log.info("! server: refusing %s, %d connections is the limit", addr, max_clients)
            Listener.refuse(sock, _SERVERFULL)
            return
        admitted = self._admit(addr)
        if admitted is None:
            self.stats.connections_refused += 1
            Listener.refuse(sock, _ADDRESSLIMIT)
            return
        group, provisional = admitted
        if self._ssl_ctx is not None:
            try:
                sock = Listener.wrap_tls(sock, self._ssl_ctx)
            except TLSError as exc:
                log.info("! server: cannot start TLS with %s: %s", addr, exc)
                self._unadmit(group, provisional)
                return
        try:
            cid = self.genCID()
            proto = self._new_proto()
            try:
                client = self.clientcls(self, sock, addr, cid)
            except Exception:  # the program's ClientOnServer subclass
                report_user_error("! server: %r(...) raised; connection from %s dropped", self.clientcls, addr)
                self._unadmit(group, provisional)
                Listener.refuse(sock, b"")
                return
            link = Link(proto, None, client, cid)  # type: ignore[arg-type]
            link.chan = Channel(sock, self._reactor, functools.partial(self._on_ready, link))  # a C-level call per event
        except Exception:  # (a bug of ours: _on_accept closes the socket) the address's count is given back
            self._unadmit(group, provisional)
            raise
        client._link = link
        link.group, link.hs_pending, link.provisional = group, True, provisional
        if over_max:  # full, but suspended sessions wait: this may be one of their clients (settype tells)
            link.over_max = True
            self._over_max += 1
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
        info = self._shutdown_info
        if info is not None:  # shutdown() began while we accepted: its sweep may have missed us
            self._close_link(link, info["reason"], polite=True)

    def _on_conntype(self, link: Link, conntype: str) -> None:
        if conntype == CONNTYPE_CLASSIC and RESUME_KEY in link.proto.peer_settype and "resume" in link.proto.negotiated:
            if not self._take_over(link, link.proto.peer_settype[RESUME_KEY]):
                return
        if link.provisional:  # admitted over its address's limit to resume a session, and did not
            log.info("! server cid=%s: %s is at its connection limit (suspended sessions held)", link.cid, link.group)
            self._close_link(link, "addresslimit")
            return
        if link.over_max:  # admitted over max_clients to resume a session, and did not
            log.info("! server cid=%s: the server is full (suspended sessions held for their clients)", link.cid)
            self.stats.connections_refused += 1
            self._close_link(link, "serverfull")
            return
        ct = self.conntypes.get(conntype)
        if ct is None:
            log.info("! server cid=%s: unknown connection type %s", link.cid, describe(conntype))
            self._close_link(link, "unknownconntype")
            return
        link.set_type(ct)
        link.owner.conntype = conntype
        self._lib_state(link, STATE_HANDSHAKE_WAIT1)
        self._type_chosen(link, ct)
        if conntype not in (CONNTYPE_CLASSIC, CONNTYPE_PING):
            self._handshake_over(link)  # a type of its own: its protocol is its business
        self._ct_call(link, ct.init, link.cid)

    def _after_handshake(self, link: Link) -> None:
        self._handshake_over(link)

    def _admit(self, addr: Any) -> tuple[str, bool] | None:
        """Count a new connection in its address group: ``(group,
        provisional)``, or ``None`` when the group is at a per-address
        limit (network thread).  A group at its connection limit that holds
        resumable sessions (live or suspended) still admits as many
        connections provisionally (counted as handshakes, not connections):
        each may be a client coming back to one of them, and must present
        a session at ``settype`` (else ``addresslimit``)."""
        cfg = self.cfg
        host = str(addr[0])
        if cfg["net.limits.per_address.exempt_loopback"] and _is_loopback(host):
            return "", False  # local bots and load tests: not limited (the group "" is never counted)
        group = address_group(host, int(cfg["net.limits.per_address.ipv6_prefix"]))
        if not self._connect_allowed(group):
            log.info("! server: refusing %s, more than %g new connections a second from %s", addr,
                     float(cfg["net.limits.per_address.connect_rate"]), group)
            return None
        counts = self._groups.get(group)
        if counts is None:
            counts = self._groups[group] = [0, 0, 0, 0]
        max_conns = int(cfg["net.limits.per_address.connections"])
        max_hs = int(cfg["net.limits.per_address.handshakes"])
        provisional = max_conns > 0 and counts[0] >= max_conns
        if provisional and counts[3] >= counts[2]:
            log.info("! server: refusing %s, %d connections from %s is the limit", addr, max_conns, group)
            self._forget_group(group, counts)
            return None
        if max_hs > 0 and counts[1] >= max_hs:
            log.info("! server: refusing %s, %d handshakes in progress from %s is the limit", addr, max_hs, group)
            self._forget_group(group, counts)
            return None
        counts[3 if provisional else 0] += 1
        counts[1] += 1
        return group, provisional

    def _connect_allowed(self, group: str) -> bool:
        """Take a token from ``group``'s new-connection bucket
        (``net.limits.per_address.connect_rate``/``connect_burst``); False
        when it is empty (network thread).  A reconnect loop is held to the
        rate whatever it does on each connection (each costs an accept, a
        ``hello``, a ``settype`` and a fresh decompression budget).  At most
        :data:`MAX_CONNECT_BUCKETS` addresses are remembered, the least
        recently seen forgotten first (a forgotten one starts full again)."""
        rate = float(self.cfg["net.limits.per_address.connect_rate"])
        if rate <= 0:
            return True
        burst = max(float(self.cfg["net.limits.per_address.connect_burst"]), 1.0)
        now = time.monotonic()
        buckets = self._connect_buckets
        bucket = buckets.pop(group, None)  # (put back last: the order is the use)
        tokens = burst if bucket is None else min(burst, bucket[0] + (now - bucket[1]) * rate)
        allowed = tokens >= 1.0
        buckets[group] = (tokens - 1.0 if allowed else tokens, now)
        if len(buckets) > MAX_CONNECT_BUCKETS:
            del buckets[next(iter(buckets))]
        return allowed

    def _forget_group(self, group: str, counts: list[int]) -> None:
        if counts[0] <= 0 and counts[1] <= 0:
            del self._groups[group]

    def _unadmit(self, group: str, provisional: bool = False) -> None:
        """Give back what :meth:`_admit` counted, for a connection that
        never became a Link (network thread)."""
        counts = self._groups.get(group) if group else None
        if counts is None:
            return
        counts[3 if provisional else 0] -= 1
        counts[1] -= 1
        self._forget_group(group, counts)

    def _handshake_over(self, link: Link, closed: bool = False) -> None:
        """A connection stops counting as a handshake in progress (and, when
        ``closed``, as a connection, a resumable one, or a provisional one)
        of its address group (network thread)."""
        group = link.group
        if not group:  # None, or "" (exempt)
            return
        counts = self._groups[group]
        if link.hs_pending:
            link.hs_pending = False
            counts[1] -= 1
        if closed:
            link.group = None
            if link.provisional:
                link.provisional = False
                counts[3] -= 1
            else:
                counts[0] -= 1
            if link.resumable:
                link.resumable = False
                counts[2] -= 1
            self._forget_group(group, counts)

    def _resumable(self, link: Link, yes: bool) -> None:
        """Count ``link`` as carrying a resumable session of its address
        group, or no longer (network thread): a client may come back to it
        from a full address (see :meth:`_admit`)."""
        group = link.group
        if group and link.resumable != yes and not link.provisional:
            link.resumable = yes
            self._groups[group][2] += 1 if yes else -1

    def _refill(self, link: Link, now: float) -> None:
        """Refill a connection's token buckets (network thread)."""
        if link.rate_t == 0.0:
            link.rate_p, link.rate_b, link.rate_t = self._h_rate_cap_p, self._h_rate_cap_b, now
        dt = now - link.rate_t
        if dt <= 0:  # (refilled later already)
            return
        link.rate_t = now
        cap = self._h_rate_cap_p
        tokens = link.rate_p + dt * self._h_rate_p
        link.rate_p = tokens if tokens < cap else cap
        cap = self._h_rate_cap_b
        tokens = link.rate_b + dt * self._h_rate_b
        link.rate_b = tokens if tokens < cap else cap

    def _read_quota(self, link: Link, now: float) -> int:
        room = NO_QUOTA if self._h_inline else self._h_recv_queue - link.n_in + link.n_out  # (Peer's, inlined)
        if self._h_rate_quota:
            # Throttling is exact for packets: the core decodes no more
            # than the bucket holds; the rest waits undecoded.
            last = link.rate_t
            if last == 0.0 or now <= last:
                self._refill(link, now)
            else:  # (_refill()'s common case, inlined: once per read)
                link.rate_t = now
                dt = now - last
                cap = self._h_rate_cap_p
                tokens = link.rate_p + dt * self._h_rate_p
                link.rate_p = tokens if tokens < cap else cap
                cap = self._h_rate_cap_b
                tokens = link.rate_b + dt * self._h_rate_b
                link.rate_b = tokens if tokens < cap else cap
            tokens = link.rate_p
            if tokens < room:
                return int(tokens) if tokens > 0 else 0
        return room

    def _throttled_for(self, link: Link) -> float:
        if self._h_rate_throttle and self._h_rate_p > 0 and link.rate_p < 1:
            return (1 - link.rate_p) / self._h_rate_p
        return 0.0

    def _read_allowed(self, link: Link, nbytes: int, outs: list[Output], npackets: int, now: float) -> bool:
        """Token buckets per connection (server side).  Return whether to go on."""
        if link.rate_t != now:  # (else _read_quota refilled at this same time)
            self._refill(link, now)
        rate_b = self._h_rate_b
        if self._h_rate_throttle:
            # Lossless: the packets of this read are within the packet
            # bucket (see _read_quota); bytes already read go on, and
            # reading pauses until the byte bucket is back above zero.
            link.rate_p -= npackets
            tokens = link.rate_b = link.rate_b - nbytes
            if tokens < 0 and rate_b > 0:
                self._flow.throttle(link, -tokens / rate_b)
            return True
        rate_p = self._h_rate_p
        burst = self._h_rate_burst
        # ("close" and "drop" charge the application's packets and calls only:
        # the protocol's own, counted in npackets as the core decodes them,
        # cannot be dropped, and must not close a peer sending just under the
        # rate; only "throttle" holds those to the bucket too)
        npackets = sum(1 for o in outs if _is_app(o))
        if self._h_rate_drop:
            # Let through what the buckets allow, drop the rest of this read's
            # application packets; dropped packets cost no tokens.
            # Bytes read are charged whatever happens to the packets (a debt
            # of at most one burst is kept): a packet completed by a small
            # last read after a pause cannot slip through.
            link.rate_b = max(-rate_b * burst, link.rate_b - nbytes)
            allowed = int(link.rate_p) if rate_p > 0 else npackets
            if rate_b > 0 and link.rate_b < 0:
                allowed = 0
            if allowed >= npackets:
                link.rate_p -= npackets
                return True
            kept: list[Output] = []
            dropped = 0
            for o in outs:
                if _is_app(o):
                    if allowed <= 0:
                        dropped += 1
                        continue
                    allowed -= 1
                kept.append(o)
            link.rate_p = max(0.0, link.rate_p - (npackets - dropped))
            if link.session is not None:
                link.session.rx += dropped  # received (and dropped): not to be sent again
            log.debug("! server cid=%s: over the rate limit, dropped %d packets", link.cid, dropped)
            self._handle_outputs(link, kept)
            return False
        link.rate_p -= npackets
        link.rate_b -= nbytes
        if (rate_p <= 0 or link.rate_p >= 0) and (rate_b <= 0 or link.rate_b >= 0):
            return True
        log.info("! server cid=%s: over the rate limit, closing", link.cid)
        self._handle_outputs(link, [o for o in outs if not _is_app(o)])
        self._close_link(link, "ratelimit")
        return False

    def _tls_step(self, link: Link) -> None:
        """Drive a connection's non-blocking TLS handshake (network thread)."""
        chan = link.chan
        try:
            chan.tls_step()
        except TLSError as exc:
            log.info("! server cid=%s: TLS handshake failed: %s", link.cid, exc)
            link.local_closed = True
            with chan.lock:
                link.proto.receive_eof(exc.reason)
                outs = link.proto.drain_received()
            self._handle_outputs(link, outs)
            if not chan.closed:
                chan.close()
                self._channel_closed(link)
            return
        chan.update_interest()
        if chan.tls_pending:
            return
        if not link.proto.is_open or link.local_closed or chan.error is not None:
            # Closed from another thread during the handshake (its close is
            # queued for this thread): the protocol does not start on it
            # (initiate() on a closed connection raised here).
            return
        link.sslsec = _tls.security_level(chan.sock, True)
        log.info("= server cid=%s: TLS established (%s, level %d)", link.cid, chan.tls_version(), link.sslsec)
        self._start_protocol(link)

    def _refuse_first_read(self, link: Link, view: memoryview, n: int) -> bool:
        # A TLS ClientHello as the first bytes on a plaintext server.
        if link.sslsec == SSLSEC_NONE and not link.plain and n >= 2 and view[:2] == b"\x16\x03":
            log.info("! server cid=%s: client speaks TLS, TLS is not enabled here", link.cid)
            link.local_closed = True
            link.proto.receive_eof("tlsnotenabled")
            return True
        return False

    def _start_protocol(self, link: Link) -> None:
        proto = link.proto
        with link.chan.lock:
            proto.initiate()
            outs = proto.drain_received()
            self._push(link)
        link.chan.update_interest()
        self._handle_outputs(link, outs)

    def _all_links(self) -> list[Link]:
        return list(self._links.values())

    def begin_handshake(self, cid: int) -> None:
        """Send a connection the registry handshake: what the ``classic``
        connection type does after ``settype`` (a connection type of your
        own may too).  With a login hook, the hook decides first: the
        handshake goes out once it accepted the client.

        Raises:
            ConnectionClosedError: No open connection with that cid.
            LocalProtocolError: The connection is not waiting for it.

        Thread safety: the network thread (connection types run there).
        """
        link = self._link(cid)
        if self._login.enabled and not self._login.gate(link):
            return
        self._send_handshake(link)

    def _send_handshake(self, link: Link) -> None:
        extra = None
        if "resume" in link.proto.negotiated and link.proto.conntype == CONNTYPE_CLASSIC:
            session = link.session
            if session is None:
                self._replay_total.cap = int(self.cfg["net.session.replay_total"])
                session = link.session = Session(new_token(), int(self.cfg["net.session.replay_buffer"]),
                                                 self._replay_total)
                session.link, session.owner, session.cid = link, link.owner, link.cid
                self._sessions[session.token] = session
                self._resumable(link, True)
            extra = {SESSION_KEY: {"token": session.token, "received": session.rx}}
        with link.chan.lock:
            link.proto.begin_handshake(self.registry.mapping(), extra)
            outs = link.proto.drain_received()
            self._push(link)
        self._handle_outputs(link, outs)

    def authenticate(self, client: ClientOnServer, credentials: Any) -> Any:
        """The login hook: decide whether ``client`` may join.

        Called once per ``classic`` connection, after ``settype`` and
        before the registry handshake, when the server has a hook: the
        ``authenticate=`` argument, or an override of this method in a
        subclass (this default calls the argument).  ``credentials`` is
        what the client sent (``Client(credentials=...)``; ``None`` when it
        gave none).

        Return ``False`` or ``None`` to refuse (close reason
        ``"auth:refused"``), raise :class:`~peng3dnet.errors.AuthenticationError`
        to refuse with a reason of your own (``"auth:<reason>"``), or return
        anything else to accept: ``True``, or data that is stored as
        ``client.auth_data`` (an account name, a player record).  An
        accepted client's ``state`` becomes ``STATE_LOGGEDIN`` at the end of
        the handshake.  Any other exception refuses with ``"auth:error"`` and
        is logged with its traceback.  A decision that takes longer than
        ``net.timeout.auth`` seconds refuses with ``"auth:timeout"``.  A
        client that cannot send credentials (peng3dnet 0.1.x) is refused
        with ``"auth:unsupported"`` without calling the hook.

        Thread safety: runs on a login worker thread (``net.auth.workers``
        of them; it may block, e.g. on a database), or on the network thread
        with ``net.auth.workers = 0``.  Guard shared state accordingly.
        """
        fn = self._auth_fn
        return True if fn is None else fn(client, credentials)

    def _proto_extensions(self) -> frozenset[str]:
        return frozenset({"auth"}) if self._login.enabled else frozenset()

    # --- sessions (see peng3dnet.session) ---------------------------------------------------------
    def _take_over(self, link: Link, request: Any) -> bool:
        """A client presents a session at ``settype``: move the session (its
        cid, its ClientOnServer) onto this new connection (network thread).
        Returns ``False`` when refused (the connection is closed)."""
        parsed = valid_request(request)
        session = self._sessions.get(parsed[0]) if parsed is not None else None
        if parsed is None or session is None or session.ended or session.closing:
            reason = "resume:invalid" if parsed is None else "resume:unknown"
            log.info("! server cid=%s: cannot resume (%s)", link.cid, reason)
            self._close_link(link, reason)
            return False
        old = session.link
        if session.timer is not None:
            session.timer.cancel()
            session.timer = None
        # The connection made for it at accept gives way to the session's.
        temp, temp_cid = link.owner, link.cid
        assert temp_cid is not None
        self._links.pop(temp_cid, None)
        self.clients.pop(temp_cid, None)
        self._emit("peng3dnet:server.connection.close", {"client": temp, "reason": "resumed"})
        try:
            temp.on_close("resumed")  # it had its on_connect
        except Exception:
            report_user_error("! server cid=%s: on_close raised", temp_cid)
        owner = session.owner
        link.cid = session.cid
        link.owner = owner
        link.on_recv, link.on_send = link_hooks(owner)
        link.lib_state = -1  # the application's state is kept as it is
        owner._link = link
        owner.conn, owner.addr = temp.conn, temp.addr
        self._links[session.cid] = link
        self._carry_queue(old, link)
        # The old socket leaves the table here, so its counts go to the
        # totals of the closed (they were lost with every resume).
        self.stats._add_closed(old.stats)
        link.session = session
        if session.suspended:
            self._suspended_n -= 1
        with old.chan.lock, session.lock:
            session.link = link
            session.suspended = False
            session.resuming = True
            session.peer_rx = parsed[1]
        if not old.chan.closed:  # the old socket is not known dead yet: it is now
            log.info("= server cid=%s: the client resumed on a new socket; closing the old one", session.cid)
            self._announce_suspended(session, "resumed")  # (its resumed event comes: they go in pairs)
            self._close_link(old, "resumed")
        else:  # suspended: its place for the address passes to the new socket
            self._handshake_over(old, closed=True)
        if link.over_max:  # admitted over max_clients to resume: it has the session's place now
            link.over_max = False
            self._over_max -= 1
            self.stats.resumed_over_max += 1
        if link.provisional and link.group:  # admitted to resume: a connection of its group now
            link.provisional = False
            counts = self._groups[link.group]
            counts[3] -= 1
            counts[0] += 1
        self._resumable(link, True)
        return True

    def _session_dropped(self, link: Link, session: Session, reason: str | None) -> None:
        grace = float(self.cfg["net.session.grace"])
        if grace <= 0:
            self._session_end(session, reason or "socketclose")
            return
        with link.chan.lock, session.lock:
            session.suspended = True
        self._suspended_n += 1
        log.info("= server cid=%s: socket dropped (%s), session kept for %.1f s", link.cid, reason, grace)
        session.timer = self._reactor.call_later(grace, lambda: self._session_expired(session))
        self._announce_suspended(session, reason)

    def _announce_suspended(self, session: Session, reason: str | None) -> None:
        """Emit ``suspended`` unless it went out already with no ``resumed``
        since (a new socket that dropped during its resume's handshake)
        (network thread)."""
        if not session.announced:
            session.announced = True
            self._emit("peng3dnet:server.connection.suspended", {"client": session.owner, "reason": reason})

    def _session_expired(self, session: Session) -> None:
        session.timer = None
        if session.suspended and not session.ended:
            log.info("! server cid=%s: the client did not come back, session closed", session.cid)
            self._session_end(session, "sessionexpired")

    def _session_resumed(self, link: Link, session: Session) -> None:
        session.announced = False
        self._emit("peng3dnet:server.connection.resumed", {"client": session.owner})

    def _session_forget(self, session: Session) -> None:
        super()._session_forget(session)
        self._sessions.pop(session.token, None)

    def _replay_shed(self) -> None:
        """Over ``net.session.replay_total``: close the sessions with the
        largest replay buffers (``replayoverflow``) until the rest fit
        (network thread)."""
        totals = self._replay_total
        with totals.lock:
            totals.pending = False
            totals.over = False
            cap = totals.cap
        # (counted again without the sessions closing already: their bytes
        # leave the running total when they end, a moment later)
        ranked = sorted((s for s in self._sessions.values() if not s.ended and not s.overflowed),
                        key=lambda s: s.replay_bytes, reverse=True)
        total = sum(s.replay_bytes for s in ranked)
        if not cap or total <= cap:
            return
        for session in ranked:
            if total <= cap:
                break
            size = session.replay_bytes
            log.info("! server cid=%s: %d bytes kept for its session's replay while all sessions keep %d "
                     "(net.session.replay_total %d): closing the largest", session.cid, size, total, cap)
            total -= size
            with session.lock:
                session.overflowed = True
            self._session_overflow(session)  # (its buffer leaves the total when the session ends)

    def _session_end(self, session: Session, reason: str) -> None:
        if session.suspended and not session.ended:
            self._suspended_n -= 1
        link: Link = session.link
        cid = link.cid
        super()._session_end(session, reason)
        if cid is not None and self._links.get(cid) is link:  # kept while it waited
            del self._links[cid]
            self.stats._add_closed(link.stats)
        if link.chan.closed:  # (a link still open is released by its _channel_closed)
            self._handshake_over(link, closed=True)
        else:  # nothing to come back to any more
            self._resumable(link, False)

    def _connection_closed(self, link: Link, reason: str | None) -> None:
        self._emit("peng3dnet:server.connection.close", {"client": link.owner, "reason": reason})

    def _forget(self, link: Link) -> None:
        self.clients.pop(link.cid, None)  # type: ignore[arg-type]

    def _channel_closed(self, link: Link) -> None:
        session = link.session
        keep = session is not None and not session.ended and session.link is link  # suspended: sends find it
        if not keep and self._links.get(link.cid) is link:  # type: ignore[arg-type]
            del self._links[link.cid]  # type: ignore[arg-type]
            self.stats._add_closed(link.stats)
        # A suspended session still takes a place (max_clients): it counts
        # for its address until it ends or is taken over, so one address
        # cannot fill the server with dropped sessions.
        self._handshake_over(link, closed=not keep)
        if link.over_max:
            link.over_max = False
            self._over_max -= 1
        self._flow.released(link)  # its buffer was released with the channel
        with self._chan_cond:
            self._open_channels -= 1
            self._chan_cond.notify_all()
        self._release(link)

    def _closed_before_session_ended(self, link: Link) -> None:
        # _channel_closed kept the link for a session that has ended since.
        if self._links.get(link.cid) is link:  # type: ignore[arg-type]
            del self._links[link.cid]  # type: ignore[arg-type]
            self.stats._add_closed(link.stats)
        self._handshake_over(link, closed=True)
        self._release(link)

    def _release(self, link: Link) -> None:
        # The ClientOnServer keeps its link (close_reason, stats); the link
        # lets go of it, so the pair is freed by reference counting.
        if link.app_closed and link.chan.closed:
            link.owner = None

    def _link(self, cid: int | None) -> Link:
        link = self._links.get(cid) if cid is not None else None
        if link is None or link.proto.closed:  # a plain attribute (is_open is two property calls)
            if link is not None and link.session is not None and not link.session.ended:
                return link  # between sockets: sends wait in the session's replay buffer
            raise ConnectionClosedError(f"no open connection with cid {cid!r}")
        return link

    def _on_loop_exit(self) -> None:
        # Whatever is still open is closed now, so every connection gets its
        # close event before stop (and shutdown).
        self._login.stop()
        info = self._shutdown_info
        reason = info["reason"] if info is not None else "servershutdown"  # (shutdown()'s, or a stop's)
        for session in list(self._sessions.values()):
            if session.suspended:
                self._session_end(session, reason)
        for link in list(self._links.values()):
            self._close_at_exit(link, reason)
        self._reactor.run_calls()
        self._close_listener()
        self._emit("peng3dnet:server.stop", {"reason": self._stop_reason or "method"})
        info = self._shutdown_info
        if info is not None:
            self._emit("peng3dnet:server.shutdown", info)

    def _close_listener(self) -> None:
        if self._listener is not None:
            self._reactor.unregister(self._listener.sock)
            self._listener.close()

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

            WriteBufferFullError: A program thread waited ``net.timeout.send``
                for the connection's write buffer to drain (or the buffer is
                full with ``net.limits.write_buffer_action = "raise"``).

        Thread safety: any thread, including packet handlers.  A program
        thread blocks while the connection's write buffer is over
        ``net.limits.write_buffer_block`` (flow control); the network thread
        and handlers never wait for the network.
        """
        link = self._links.get(cid)  # (_link()'s test, inlined: once per message)
        if link is None or link.proto.closed:
            link = self._link(cid)
        self._send(link, ptype, data)

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

        Thread safety: any thread.  A connection type's ``send()`` hook
        runs once per connection before queueing (a true result sends it
        quietly there, as ``send_message`` does); each client's
        ``on_send`` and the packet's ``_send`` (and so a SmartPacket's
        check and ``send`` hook) once per connection it was queued on,
        after queueing; an error raised in any of them is reported (see
        Logging in the README), not raised, so it cannot cut the broadcast
        short.

        .. versionadded:: 0.2
        """
        _, pid, pobj, hooks, smart, _ = self._lookup(ptype)
        targets = list(self._links) if cids is None else list(cids)
        frame = self._frame_for_body(pid, pack(data, thread_pack))
        sent = 0
        keys_ok: bool | None = None  # checked once, for the first 0.1.x peer
        for cid in targets:
            link = self._links.get(cid)
            if link is None:
                continue
            if link.proto.state is not HandshakeState.ACTIVE and (link.session is None or not link.session.waiting):
                continue  # (a session between sockets keeps it for the next one)
            if link.strict_keys:
                if keys_ok is None:
                    try:
                        check_keys(data)
                        keys_ok = True
                    except LocalProtocolError:
                        log.warning("! server: broadcast of %r skips 0.1.x peers: a map key they refuse", ptype)
                        keys_ok = False
                if not keys_ok:
                    continue
            if smart and self._h_strict_send and not smart_check(pobj, cid, receiving=False):
                continue
            quiet = False
            if link.ct_send:
                try:  # a raising hook must not cut the broadcast short
                    quiet = bool(link.ctobj.send(data, ptype, cid))  # type: ignore[union-attr]
                except Exception:
                    report_user_error("! server cid=%s: a connection type's send hook raised during broadcast", cid)
            try:
                self._send_frame(link, frame, pid, NO_EVENT if quiet else data, False)
            except (ConnectionClosedError, WriteBufferFullError):
                continue
            sent += 1
            if quiet:  # (0.1.x: sent with no send event, on_send or packet hook)
                continue
            try:  # a raising hook must not cut the broadcast short
                if link.on_send is not None:
                    link.on_send(ptype, data)
                if hooks:
                    pobj._send(data, cid)
            except Exception:
                report_user_error("! server cid=%s: a send hook raised during broadcast", cid)
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
        self._send_frame(link, self._frame_for_body(pid, body), pid, NO_EVENT, False)

    def call(self, ptype: Any, data: Any, cid: int, timeout: float | None = None) -> Any:
        """Send a message to client ``cid`` and return its handler's answer:
        :meth:`Client.call` from the other side (same errors, same threads).
        """
        return self._call(cid, ptype, data, timeout)

    def call_async(
        self, ptype: Any, data: Any, cid: int, timeout: float | None = None, callback: Any = None
    ) -> CallFuture:
        """:meth:`call` without waiting (see :meth:`Client.call_async`).

        Thread safety: any thread, the network thread included.
        """
        return self._start_call(cid, ptype, data, timeout, callback)

    def _end_suspended(self, session: Session, reason: str | None) -> None:
        """close_connection() of a session that had no socket (network
        thread): it ends, whatever came meanwhile.  A resume that took it
        before the close was seen (the close queued behind the client's
        settype) is closed too: a kicked client must not come back."""
        if session.ended:
            return
        link = session.link
        if link.proto.is_open:
            self._close_link(link, reason, polite=True)
        else:
            self._session_end(session, reason or "closed")

    def close_connection(self, cid: int, reason: str | None = None) -> None:
        """Send ``closeconn`` with ``reason`` after what is queued, then close.

        Unknown or already closed cids are ignored.

        Thread safety: any thread.
        """
        link = self._links.get(cid)
        if link is None:
            return
        session = link.session
        if not self._close_link(link, reason, polite=True) and session is not None and not session.ended:
            # Closed already (between sockets, or dropped a moment ago): the
            # suspended session ends here (a kicked client must not resume:
            # no resume takes it from now on, and one that did already is
            # closed by _end_suspended).
            with session.lock:
                session.closing = reason or "closed"
            self._on_network_thread(self._end_suspended, session, reason)

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

    def stop(self) -> None:
        """Stop the network loop and :meth:`process_forever`.

        Open connections are closed (reason ``servershutdown``), then the
        loop emits ``stop`` (reason ``"method"``) and returns.  For a
        graceful stop that delivers everything queued, use :meth:`shutdown`.
        """
        started = self._loop_started
        self._request_stop("method")
        if not started:  # no loop to emit it (one that ended did: not again)
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
        if self._loop_started and self._loop_done.is_set():
            return  # ended: its stop and shutdown went out (a second ones made handlers run twice)
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
        polled = self._polled_here()  # poll() mode, on its thread: drive the loop ourselves
        wait = join and (polled or not self._reactor.in_loop())
        limit = timeout or None
        if wait:
            if polled:
                self._drive(lambda: self._open_channels <= 0, limit)
            else:
                self._relay.before_wait()
                with self._chan_cond:
                    self._chan_cond.wait_for(lambda: self._open_channels <= 0, limit)
        self._request_stop("method")  # the loop emits stop, then shutdown
        if wait:
            if polled:
                self._drive(self._loop_done.is_set, limit)
            else:
                self._loop_done.wait(limit)
