"""The client side: Client and NetworkLoop."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import selectors
import threading
from typing import TYPE_CHECKING, Any

from . import tls as _tls
from ._mypyc import mypyc_attr
from .calls import CallFuture
from .constants import (
    CONNTYPE_CLASSIC,
    MODE_NOTSET,
    RESUME_KEY,
    SESSION_KEY,
    SIDE_CLIENT,
    SSLSEC_NONE,
    STATE_ACTIVE,
    STATE_INIT,
)
from .errors import (
    AuthenticationError,
    ConnectionClosedError,
    InvalidAddressError,
    LocalProtocolError,
    NetworkError,
    TimedOutError,
)
from .link import ConnectionStats, Link, noop_hook
from .loopthread import SharedLoopThread
from .peer import CLOSE_LINGER, Peer, resolve_addr
from .protocol.codec import pack
from .protocol.framing import LENGTH
from .protocol.handshake import HandshakeState
from .relay import Flag, Relay
from .session import Session, valid_request
from .transport import Channel, Reactor, frame_selves
from .transport import connect as transport_connect
from .userlog import report_user_error

if TYPE_CHECKING:  # annotations only: socket calls live in transport
    import socket

__all__ = ['Client', 'NetworkLoop', 'SharedLoopThread', 'default_loop']

log = logging.getLogger(__name__)

_FROM_CONFIG: Any = object()  # Client(credentials=...) not given: net.auth.credentials

@mypyc_attr(allow_interpreted_subclasses=True)
class Client(Peer):
    """A peng3dnet client: one connection to a server.

    Args:
        peng: A ``peng3d.Peng`` (events are forwarded to it, its config is
            consulted), or ``None``.
        addr: Server address; default from ``net.client.addr`` /
            ``net.client.addr.host`` + ``.port``.
        cfg: Config overrides.
        conntype: Connection type to request (``"classic"`` or ``"ping"``).
        credentials: What to log in with when the server asks (any msgpack
            value: a token, ``{"user": ..., "password": ...}``); default the
            config key ``net.auth.credentials``.  Sent only to a server that
            has a login hook (see :meth:`Server.authenticate`), in the
            clear unless TLS is on.

    Thread safety: every method may be called from any thread unless its
    docstring says otherwise.
    """

    side = SIDE_CLIENT
    is_server = False
    is_client = True
    _role = "client"
    _state_attr = "remote_state"
    _thread_name = "peng3dnet Client Thread"
    _ev_recv = "peng3dnet:client.recv"
    _ev_send = "peng3dnet:client.send"
    _ev_heartbeat = "peng3dnet:client.heartbeat"
    _owner_key: str | None = None

    def __init__(
        self,
        peng: Any = None,
        addr: Any = None,
        cfg: dict[str, Any] | None = None,
        conntype: str = CONNTYPE_CLASSIC,
        credentials: Any = _FROM_CONFIG,
    ) -> None:
        super().__init__(peng, cfg)
        if credentials is _FROM_CONFIG:
            credentials = self.cfg["net.auth.credentials"]
        try:
            pack(credentials)
        except LocalProtocolError as exc:
            raise LocalProtocolError(f"credentials cannot be sent: {exc}") from None
        self._credentials = credentials
        self.addr: tuple[Any, ...] = resolve_addr(addr, self.cfg, "net.client")
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
        self._link_obj: Link | None = None
        self._handshake_done = threading.Event()
        self._closed = threading.Event()
        self._reconnect_lock = threading.Lock()
        self._reconnect_sock: Any = None
        """The socket of a reconnect attempt on its way to the network thread
        (guarded by ``_reconnect_lock``): :meth:`_reconnected` takes it, or
        whoever sees the loop's end first closes it."""
        self._flush_cond = threading.Condition()  # close_connection() waits on it for the flush
        self.close_reason: str | None = None
        """Why the connection closed (``None`` while open)."""
        self.authenticated = False
        """Whether the server checked our credentials and let us in (its
        login hook accepted them; set when the handshake completes).  A
        plain attribute: the library sets it and never reads it."""

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
        """Connect (if needed) and serve the client from a network thread;
        returns at once.  By default (``net.client.shared_loop``) that is
        the process's one shared "peng3dnet Client Thread" (see
        :func:`default_loop`), and the returned object stands for this
        client's part of it: ``join()`` waits until the client has left the
        loop, ``is_alive()`` tells whether it is still on it.  With
        ``net.client.shared_loop = False`` or another ``selector``, a daemon
        thread of its own.

        Raises:
            NetworkError: The connection cannot be made.
            LocalProtocolError: The client already runs on a NetworkLoop.
        """
        if self._shared is not None:
            raise LocalProtocolError("this client runs on a NetworkLoop")
        # (A client connected already, by connect(), has its socket on its own reactor: it keeps its thread.)
        if (self.cfg["net.client.shared_loop"] and selector is selectors.DefaultSelector and not self._loop_started
                and self.sock is None):
            loop = default_loop()
            loop.add(self)
            self._net_thread = loop._net_thread
            return SharedLoopThread(self, loop.name)
        self.initialize()
        self.connect()
        return self._start_thread(selector)

    def attach(self, loop: NetworkLoop) -> None:
        """Connect (in the caller's thread) and be served by ``loop``'s
        network thread instead of a thread of our own: what
        :meth:`NetworkLoop.add` does (use that).

        Raises:
            LocalProtocolError: The client already runs a loop.
            NetworkError: The connection cannot be made.

        Thread safety: any thread but the loop's.
        """
        if self._loop_started:
            raise LocalProtocolError("the client already runs a loop")
        if self.sock is not None:
            raise LocalProtocolError("the client is connected already (on a reactor of its own)")
        own = self._reactor, self._relay
        self._reactor = loop.reactor
        self._relay = loop.relay
        self._shared = loop
        try:
            self.initialize()
            self.connect()
            with loop._lock:
                # The loop may have ended while we connected (its stop() ran
                # meanwhile): it will never serve this socket.
                if loop._ending:
                    raise LocalProtocolError("this NetworkLoop has stopped")
                self._loop_started = True
                self._loop_done.clear()
                loop.reactor.call_soon(self._on_loop_start)
        except BaseException:
            self._detach_unserved()
            self._reactor, self._relay = own  # not attached: runAsync() or add() may be tried again
            self._shared = None
            raise
        self._inbox.notify()  # a process thread waiting already (process_async() first) joins the relay

    def _detach_unserved(self) -> None:
        """Forget a socket that no loop serves (attach() failed after the
        connect): close it, so that it does not linger until collected, and
        emit ``close`` (reason ``clientstop``): ``connect`` was emitted, and
        every connection that was connected is closed exactly once
        (caller's thread: no loop runs for this client)."""
        sock, self.sock = self.sock, None
        link, self._link_obj = self._link_obj, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
            if link is not None:
                self._connection_closed(link, "clientstop")

    def _prepare_loop(self) -> None:
        if self._shared is not None:
            raise LocalProtocolError("this client runs on a NetworkLoop")
        self.connect()

    # --- lifecycle ----------------------------------------------------------------------------
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
        sock = transport_connect(self.addr, float(self.cfg["net.client.connect_timeout"]), ctx)
        sslsec = SSLSEC_NONE
        if ctx is not None:
            sslsec = _tls.security_level(sock, False, bool(self.cfg["net.ssl.client.certfile"]))

        self.sock = sock
        proto = self._new_proto(self.conntype)
        link = Link(proto, None, self, None)  # type: ignore[arg-type]
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

    def _loop_ended(self) -> None:
        self._drop_reconnect_sock(None)  # (after _loop_done: see _reconnect_connect)

    def _on_loop_exit(self) -> None:
        link = self._link_obj
        if link is not None:
            self._close_at_exit(link, "clientstop")
            self._reactor.run_calls()
            session = link.session
            if session is not None and not session.ended:  # between sockets: over now
                self._session_end(session, "clientstop")
        self._emit("peng3dnet:client.stop", {"reason": self._stop_reason or "method"})

    def _after_handshake(self, link: Link) -> None:
        if "auth" in link.proto.negotiated:
            self.authenticated = True
        self._handshake_done.set()

    def _connection_closed(self, link: Link, reason: str | None) -> None:
        self.close_reason = reason
        self._emit("peng3dnet:client.close", {"reason": reason})
        self._closed.set()
        self._handshake_done.set()  # wake wait_for_connection()

    def _channel_closed(self, link: Link) -> None:
        # A client has one connection: when its socket is gone, the loop ends
        # (unless its session waits for the next socket).
        self._flow.released(link)  # its buffers went with the channel (and no hold waits for it)
        session = link.session
        if session is not None and not session.ended:
            self._notify_flushed()
            return
        self._request_stop("connectionclosed")
        self._notify_flushed()

    def _closed_before_session_ended(self, link: Link) -> None:
        self._request_stop("connectionclosed")
        self._notify_flushed()

    def _closing_flushed(self, link: Link) -> None:
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

    def _link(self, cid: int | None) -> Link:
        link = self._link_obj
        if link is None or link.proto.closed:  # a plain attribute (is_open is two property calls)
            if link is not None and link.session is not None and not link.session.ended:
                return link  # reconnecting: sends wait in the session's replay buffer
            raise ConnectionClosedError("client is not connected", self.close_reason)
        return link

    # --- sessions (see peng3dnet.session) ---------------------------------------------------------
    @property
    def reconnecting(self) -> bool:
        """Whether the session lost its socket and the client is getting a
        new one (``net.session.resume``); sends wait meanwhile."""
        link = self._link_obj
        session = link.session if link is not None else None
        return session is not None and not session.ended and session.waiting

    def _session_started(self, link: Link) -> None:
        parsed = valid_request(link.proto.peer_handshake.get(SESSION_KEY))
        if parsed is None:
            log.info("! client: the server negotiated resume but gave no valid session")
            return
        session = link.session = Session(parsed[0], int(self.cfg["net.session.replay_buffer"]))
        session.link = link

    def _session_dropped(self, link: Link, session: Session, reason: str | None) -> None:
        with link.chan.lock, session.lock:
            session.suspended = True
        log.info("= client: socket dropped (%s), reconnecting", reason)
        self._schedule_reconnect(session)

    def _schedule_reconnect(self, session: Session) -> None:
        """The next attempt, with exponential back-off and jitter (network thread)."""
        cfg = self.cfg
        attempts = int(cfg["net.client.reconnect"])
        if session.attempt >= attempts or self._reactor.stopping:
            log.info("! client: could not reconnect after %d attempts", session.attempt)
            self._session_end(session, "resume:failed")
            return
        session.attempt += 1
        base = float(cfg["net.client.reconnect.delay"]) * 2 ** (session.attempt - 1)
        delay = min(float(cfg["net.client.reconnect.max_delay"]), base) * random.uniform(0.5, 1.0)
        self._emit("peng3dnet:client.reconnecting", {"attempt": session.attempt, "delay": delay})
        session.timer = self._reactor.call_later(delay, lambda: self._reconnect(session))

    def _reconnect(self, session: Session) -> None:
        """One attempt (network thread): connect on a thread of its own
        (blocking, up to ``net.client.connect_timeout``: the network thread
        may serve other clients meanwhile), then present the session."""
        session.timer = None
        if session.ended:
            return
        threading.Thread(target=self._reconnect_connect, args=(session,), name="peng3dnet reconnect",
                         daemon=True).start()

    def _reconnect_connect(self, session: Session) -> None:
        """Connect for :meth:`_reconnect` (its own short-lived thread)."""
        try:
            sock = transport_connect(
                self.addr, float(self.cfg["net.client.connect_timeout"]),
                _tls.client_context(self.cfg) if self.cfg["net.ssl.enabled"] else None,
            )
        except (NetworkError, InvalidAddressError) as exc:
            log.info("! client: reconnect attempt %d failed: %s", session.attempt, exc)
            self._on_network_thread(self._reconnect_failed, session)
            return
        except Exception as exc:  # noqa: BLE001 - a TLSConfigError (a file being rotated), a UnicodeError...
            # An attempt failed all the same: the next one is scheduled.  This
            # thread used to die with it, nothing scheduled: the client stayed
            # reconnecting for ever, its sends piling up in the replay buffer.
            log.warning("! client: reconnect attempt %d failed: %s: %s", session.attempt, type(exc).__name__, exc)
            self._on_network_thread(self._reconnect_failed, session)
            return
        with self._reconnect_lock:
            self._reconnect_sock = sock
        self._on_network_thread(self._reconnected, session, sock)
        # A loop that ended after the call was queued never runs it: then
        # one of us closes the socket (the loop's end looks after setting
        # _loop_done, we look after queueing: one of the two sees the other).
        if self._loop_done.is_set():
            self._drop_reconnect_sock(sock)

    def _drop_reconnect_sock(self, sock: Any) -> None:
        """Close the reconnect attempt's socket unless :meth:`_reconnected`
        took it (``None``: whichever is in flight; any thread)."""
        with self._reconnect_lock:
            pending = self._reconnect_sock
            if pending is None or (sock is not None and pending is not sock):
                return
            self._reconnect_sock = None
        log.debug("= client: the loop ended before the reconnected socket was handed over; closing it")
        pending.close()

    def _reconnect_failed(self, session: Session) -> None:
        if not session.ended:
            self._schedule_reconnect(session)

    def _reconnected(self, session: Session, sock: Any) -> None:
        """The socket of a reconnect attempt (network thread)."""
        with self._reconnect_lock:
            if self._reconnect_sock is not sock:
                return  # the loop's end closed it
            self._reconnect_sock = None
        if session.ended or not self._loop_active() or self._reactor.stopping:
            sock.close()
            return
        old = session.link
        proto = self._new_proto(self.conntype, {RESUME_KEY: {"token": session.token, "received": session.rx}})
        # Until the server's hello, sends and calls are encoded as on the
        # session's earlier socket (they wait in the replay buffer): calls
        # raised "the peer does not support calls", int map keys the 0.1.x
        # peer's refusal, from the connect until that hello.
        proto.assume_negotiated(old.proto.negotiated)
        link = Link(proto, None, self, None)  # type: ignore[arg-type]
        link.sslsec = old.sslsec
        link.strict_keys = old.strict_keys
        link.chan = Channel(sock, self._reactor, functools.partial(self._on_ready, link))
        link.session = session
        self._carry_queue(old, link)
        with old.chan.lock, session.lock:
            session.link = link
            session.suspended = False
            session.resuming = True
        self.sock = sock
        self._link_obj = link
        log.info("= client: reconnected to %s (attempt %d), resuming", self.addr, session.attempt)
        link.chan.update_interest()

    def _session_handshake(self, link: Link) -> bool:
        session = link.session
        if session is not None and session.resuming:
            parsed = valid_request(link.proto.peer_handshake.get(SESSION_KEY))
            # (and "resume" negotiated again: without it no ack can come on
            # this socket, and everything sent would wait in the replay buffer)
            if parsed is None or parsed[0] != session.token or "resume" not in link.proto.negotiated:
                self._close_link(link, "resume:mismatch")
                return True
            session.peer_rx = parsed[1]
        return super()._session_handshake(link)

    def _session_resumed(self, link: Link, session: Session) -> None:
        session.attempt = 0
        self._emit("peng3dnet:client.resumed", {})

    def _all_links(self) -> list[Link]:
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

    @noop_hook
    def on_receive(self, pid: int, msg: Any) -> None:
        """Hook: an application packet was handled (after its packet's
        ``_receive``; the thread that runs ``process()``)."""

    @noop_hook
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


    def _proto_extensions(self) -> frozenset[str]:
        return frozenset({"auth"})

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

        Thread safety: any thread.  A program thread blocks while the write
        buffer is over ``net.limits.write_buffer_block`` (flow control, at most
        ``net.timeout.send``: then ``WriteBufferFullError``); the network
        thread and handlers never wait for the network.
        """
        link = self._link_obj
        if link is None or link.proto.closed:  # (_link()'s test, inlined: once per message)
            link = self._link(None)
        self._send(link, ptype, data)

    def call(self, ptype: Any, data: Any, timeout: float | None = None) -> Any:
        """Send a message to the server and return its handler's answer.

        The server runs the handler of ``ptype`` as for any message of that
        type, and what it returns (``@server.handler`` or a ``Packet``'s
        ``receive``) comes back here.

        Raises:
            TimedOutError: No reply within ``timeout`` seconds (default
                ``net.timeout.call``, 10 s; 0 or less: no limit).
            RemoteCallError: The handler on the other side raised (its
                ``remote_type`` and message), or nothing could answer.
            ConnectionClosedError: The connection closed before the reply.
            LocalProtocolError: The other side cannot answer calls
                (peng3dnet 0.1.x), the handshake is not complete, the data
                cannot be encoded, or this is the network thread (which the
                reply needs: use :meth:`call_async` there).
            RegistryError: Unknown packet.

        Thread safety: any thread but the network thread; blocks until the
        reply (in poll mode, polling meanwhile).
        """
        return self._call(None, ptype, data, timeout)

    def call_async(
        self, ptype: Any, data: Any, timeout: float | None = None, callback: Any = None
    ) -> CallFuture:
        """:meth:`call` without waiting: returns a
        :class:`concurrent.futures.Future` of the answer (its ``result()``
        raises what :meth:`call` would).  ``callback(future)``, if given,
        runs once it is done, where handlers run (``process()``: the
        process thread, or your game loop), so a game can react to the
        answer on its main thread.

        Thread safety: any thread, the network thread included.
        """
        return self._start_call(None, ptype, data, timeout, callback)

    def close(self, reason: str | None = None) -> None:
        """Close the connection with ``reason`` (see :meth:`close_connection`)."""
        self.close_connection(None, reason)

    def close_connection(self, cid: None = None, reason: str | None = None) -> None:
        """Send ``closeconn`` with ``reason`` after what is queued, then close.

        Called from a thread other than the network thread while the loop
        runs, or on the polling thread (it polls meanwhile), it waits until
        what was queued and the ``closeconn`` were handed to the kernel, so a
        program may exit right after it without losing its last messages
        (as 0.1.x programs do): 2 s at a time, on while the backlog drains
        at ``net.limits.min_read_rate`` or faster.

        Thread safety: any thread.
        """
        link = self._link_obj
        if link is None:
            return
        if not self._close_link(link, reason, polite=True):
            # Closed already (its socket dropped, even a moment ago): a
            # session waiting for the next socket ends here, nothing to flush.
            session = link.session
            if session is not None and not session.ended:
                self._on_network_thread(self._end_waiting_session, session, reason)
            return
        chan = link.chan
        polled = self._polled_here()
        if not polled and not (self._loop_active() and not self._reactor.in_loop()):
            return
        if chan.out and not polled:
            self._relay.before_wait()  # (from a handler: another thread writes meanwhile)
        # Until all is written or the socket is gone: the network thread's
        # close linger (Peer._linger) decides how long a draining backlog
        # may take; CLOSE_LINGER at a time, while the loop runs.
        while chan.out and not chan.closed and self._loop_active():
            if polled:  # the polling thread: nobody else would flush
                self._drive(lambda: not chan.out or chan.closed, CLOSE_LINGER)
            else:
                with self._flush_cond:
                    self._flush_cond.wait_for(lambda: not chan.out or chan.closed, CLOSE_LINGER)

    def _end_waiting_session(self, session: Session, reason: str | None) -> None:
        if session.ended:
            return
        link = session.link
        if link.proto.is_open:  # a new socket came meanwhile: close it, the session with it
            # (resuming stays set: sends meanwhile go to the replay buffer, not
            # onto a socket still in its handshake; after the close they raise)
            self._close_link(link, reason, polite=True)
        else:
            self._session_end(session, reason or "clientclose")

    def _session_end(self, session: Session, reason: str) -> None:
        super()._session_end(session, reason)
        self._request_stop("connectionclosed")

    def wait_for_connection(self, timeout: float | None = None) -> None:
        """Block until the handshake is complete.

        Raises:
            TimedOutError: Not complete within ``timeout`` seconds.
            AuthenticationError: The server refused our credentials (its
                ``reason`` is the close reason, ``"auth:..."``).
            ConnectionClosedError: The connection closed first.

        Thread safety: any thread but the network thread; in poll mode, the
        polling thread too (it polls while it waits).
        """
        if not self._wait_event(self._handshake_done, timeout):
            raise TimedOutError(f"handshake not complete after {timeout} s")
        if self._closed.is_set():
            reason = self.close_reason
            if isinstance(reason, str) and reason.startswith("auth:"):
                raise AuthenticationError(f"the server refused the login: {reason}", reason)
            raise ConnectionClosedError(f"connection closed: {reason}", reason)

    def wait_for_close(self, timeout: float | None = None) -> None:
        """Block until the connection is closed.

        Raises:
            TimedOutError: Still open after ``timeout`` seconds.

        Thread safety: any thread but the network thread; in poll mode, the
        polling thread too (it polls while it waits).
        """
        if not self._wait_event(self._closed, timeout):
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

    def stop(self) -> None:
        """Close the connection if open (reason ``clientstop``), stop the loop
        and :meth:`process_forever`; the loop emits ``stop`` (reason ``"method"``)."""
        started = self._loop_started
        self._request_stop("method")
        if not started:  # no loop to emit it (one that ended did: not again)
            link = self._link_obj
            if link is not None and link.proto.is_open:
                self._close_link(link, "clientstop", polite=True)
            self._emit("peng3dnet:client.stop", {"reason": "method"})


@mypyc_attr(allow_interpreted_subclasses=True)
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
        self.reactor = Reactor(name)
        """The reactor whose thread serves the clients."""
        self._net_thread: threading.Thread | None = None
        self._started = threading.Event()
        self._done = Flag()
        self._clients: list[Client] = []
        self._lock = threading.Lock()  # guards _clients and _ending (add() and the loop's end)
        self._ending = False
        self.reactor.contain = self._contain
        self.relay = Relay(self.reactor, self._done, self._end)
        """The loop's thread and the clients' ``process_async()`` threads
        take turns at the network and the handlers (see peng3dnet.relay)."""

    def start(self, selector: Any = selectors.DefaultSelector) -> NetworkLoop:
        """Start the shared thread (daemon); returns ``self`` once it serves.

        Raises:
            NetworkError: The thread could not start its loop (e.g. the
                selector could not be made), or did not within 10 s.
        """
        reactor = self.reactor
        t = threading.Thread(target=self.relay.run_loop_thread,
                             args=(lambda: reactor.start(selector, self._started.set),), name=self.name, daemon=True)
        self._net_thread = t
        self.relay.starting()
        t.start()
        # (_end() sets _started too: a loop that failed to start ends at once)
        if not self._started.wait(10) or self._done.is_set():
            raise NetworkError(f"the NetworkLoop {self.name!r} could not start its thread's loop")
        return self

    def _end(self) -> None:
        """The loop stopped: end the clients still on it (the leading thread)."""
        with self._lock:
            self._ending = True  # an add() still connecting gives up (see Client.attach)
            clients = [c for c in self._clients if c._loop_started]
        try:
            for client in clients:  # those still here end with the loop
                try:
                    client._leave_shared()
                except Exception:
                    log.exception("! shared loop: closing a client failed")
        finally:
            self.reactor.running = False
            self.reactor.close()
            self._done.set()
            self._started.set()  # (start() waits for it: a loop that could not start ends here)

    def _contain(self, exc: BaseException) -> bool:
        """A BaseException (``SystemExit``...) escaped a hook or an event
        handler on the loop's thread: stop only the client it came from
        (the innermost frame of the traceback whose ``self`` is one of our
        clients), as with a thread of its own; others stay served.  Not
        found (or Ctrl-C on the main thread): the loop ends (network thread)."""
        if isinstance(exc, KeyboardInterrupt) and threading.current_thread() is threading.main_thread():
            return False
        with self._lock:
            ours = {id(c): c for c in self._clients if c._loop_started and not c._loop_done.is_set()}
        found = None
        for obj in frame_selves(exc):  # the innermost of our clients wins
            found = ours.get(id(obj), found)
        if found is None:
            return False
        log.warning("! shared loop: %s escaped a hook or event handler of the client of %s; stopping that client",
                    type(exc).__name__, found.addr)
        found._request_stop("method")
        return True

    def add(self, client: Client) -> Client:
        """Connect ``client`` (in the caller's thread) and serve it on this loop.

        Returns:
            The client.

        Raises:
            NetworkError: The connection cannot be made.
            LocalProtocolError: The loop has stopped, or the client runs a
                loop or is connected already (its socket would belong to
                another reactor).
        """
        with self._lock:
            if self._ending or self._done.is_set() or self.reactor.stopping:
                raise LocalProtocolError("this NetworkLoop has stopped")
            # Listed before it connects: a stop() meanwhile either finds it
            # attached (and ends it) or makes its attach() give up.
            self._clients = [c for c in self._clients if not c._loop_done.is_set()]
            self._clients.append(client)
        try:
            client.attach(self)
        except BaseException:
            with self._lock:
                if client in self._clients:
                    self._clients.remove(client)
            raise
        return client

    def stop(self, timeout: float | None = 10.0) -> None:
        """Close every client still on the loop and end the thread."""
        self.reactor.stop()
        if self._net_thread is not None and self._net_thread is not threading.current_thread():
            self.relay.before_wait()
            self._done.wait(timeout)  # (the loop may end on a process thread that leads)


_default: NetworkLoop | None = None
_default_lock = threading.Lock()


def default_loop() -> NetworkLoop:
    """The process's shared :class:`NetworkLoop`, started on first use:
    where ``Client.runAsync()`` puts clients (``net.client.shared_loop``).
    It runs as long as the process (a daemon thread asleep in ``select()``
    when no client is on it).

    Thread safety: any thread.
    """
    global _default
    with _default_lock:
        loop = _default
        if loop is None or loop._done.is_set():
            loop = _default = NetworkLoop().start()
        return loop


def _forget_default_loop() -> None:
    """In a forked child the shared loop's thread does not exist."""
    global _default, _default_lock
    _default = None
    _default_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_default_loop)
