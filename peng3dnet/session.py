"""Session resume: a connection that survives a drop of its TCP socket.

Theory of operation
-------------------
With the ``resume`` extension negotiated (``net.session.resume`` on both
sides), the server gives the client a session at the handshake (a random
token in the ``handshake`` packet).  From then on both sides *count* the
packets that carry application data, in each direction: application
packets and calls (``peng3dnet:ext.call``/``.reply``); nothing else is
counted, and nothing is added to those packets on the wire.  The sender
keeps what it sent in a replay buffer; the receiver tells it, now and then,
how many it received (``peng3dnet:ext.session.ack``, at least every
:data:`ACK_EVERY` packets or :data:`ACK_DELAY` seconds), and the sender
forgets what was acknowledged.

When the socket drops without a ``closeconn`` (EOF, reset, heartbeat
time-out), neither side closes the session: the server keeps the client
object (same cid, same state) for ``net.session.grace`` seconds, and the
client reconnects by itself (``net.client.reconnect`` attempts, exponential
back-off with jitter).  The client's ``settype`` presents the token and how
many packets it received; the server's ``handshake`` answers with how many
it received.  Each side then sends again, from its replay buffer, exactly
what the other did not receive, in order, before anything new: every
message is delivered once and in order across the drop.  What is sent
while the session waits for its new socket goes to the replay buffer.  A
replay buffer over ``net.session.replay_buffer`` bytes, an unknown or
expired token, or the end of the grace period closes the session with its
reason (``replayoverflow``, ``resume:unknown``, ``sessionexpired``):
nothing is silently skipped.

Thread safety: a :class:`Session` is shared by the sending threads and the
network thread; its counters and buffer change under :attr:`Session.lock`,
taken after the connection's channel lock.
"""

from __future__ import annotations

import secrets
import threading
from collections import deque
from typing import Any

__all__ = ["Session", "ReplayTotal", "ACK_EVERY", "ACK_DELAY", "new_token", "valid_request", "redacted"]

ACK_EVERY = 128
"""Acknowledge at the latest after this many counted packets received."""
ACK_DELAY = 0.05
"""... or this many seconds after the first one not yet acknowledged."""
TOKEN_BYTES = 16


_SECRET_KEYS = ("peng3dnet.credentials", "peng3dnet.resume", "peng3dnet.session")  # (constants' *_KEY)


def redacted(msg: Any) -> Any:
    """An internal packet's body as it may be shown (events, debug logs):
    credentials and session tokens replaced by ``"<redacted>"``."""
    if isinstance(msg, dict) and any(k in msg for k in _SECRET_KEYS):
        return {k: ("<redacted>" if k in _SECRET_KEYS else v) for k, v in msg.items()}
    return msg


def new_token() -> bytes:
    """A new session token (128 random bits)."""
    return secrets.token_bytes(TOKEN_BYTES)


def valid_request(value: Any) -> tuple[bytes, int] | None:
    """``(token, received)`` of a ``RESUME_KEY``/``SESSION_KEY`` value from
    the network, or ``None`` when it is malformed."""
    if not isinstance(value, dict):
        return None
    token = value.get("token")
    received = value.get("received")
    if not isinstance(token, bytes) or len(token) != TOKEN_BYTES:
        return None
    if type(received) is not int or not 0 <= received < 2**63:
        return None
    return token, received


class ReplayTotal:
    """The replay buffers of all a server's sessions together
    (``net.session.replay_total``): each session's is capped, the sum was
    not (a client that reads and never acknowledges makes the server keep
    everything it sends: 48 MiB a session, 256 connections from one
    address).  Counted by the sessions (their lock held, then this one's);
    over :attr:`cap`, :attr:`over` is set and the server closes the
    largest (``Server._replay_shed``, network thread)."""

    __slots__ = ("lock", "bytes", "cap", "over", "pending")

    def __init__(self, cap: int) -> None:
        self.lock = threading.Lock()
        self.bytes = 0
        """Bytes in all the sessions' replay buffers."""
        self.cap = cap
        """``net.session.replay_total`` (0: no limit)."""
        self.over = False
        """Went over :attr:`cap`; cleared by the shedding."""
        self.pending = False
        """A shedding is scheduled."""

    def add(self, n: int) -> None:
        """Count ``n`` bytes more (negative: fewer); any thread."""
        with self.lock:
            self.bytes += n
            if n > 0 and self.cap and self.bytes > self.cap:
                self.over = True


class Session:
    """One resumable session: counters, replay buffer, where it is.

    Args:
        token: The session's secret.
        cap: Largest replay buffer in bytes.
        totals: The server's :class:`ReplayTotal` (a client's: none).
    """

    __slots__ = (
        "token", "cap", "lock", "tx", "rx", "acked", "ack_sent", "replay", "replay_bytes",
        "suspended", "resuming", "peer_rx", "link", "timer", "ack_timer", "attempt", "owner", "cid",
        "ended", "overflowed", "established", "totals", "closing", "announced",
    )

    def __init__(self, token: bytes, cap: int, totals: ReplayTotal | None = None) -> None:
        self.token = token
        self.cap = cap
        self.totals = totals
        self.lock = threading.Lock()
        self.tx = 0
        """Counted packets sent (queued) on this session."""
        self.rx = 0
        """Counted packets received (network thread only)."""
        self.acked = 0
        """Counted packets the peer acknowledged: ``replay`` holds ``acked+1 .. tx``."""
        self.ack_sent = 0
        """The last count we acknowledged (network thread)."""
        self.replay: deque[bytes] = deque()
        self.replay_bytes = 0
        self.suspended = False
        """The socket dropped; waiting for the client to come back."""
        self.resuming = False
        """A new socket is doing its handshake; sends wait in the buffer."""
        self.peer_rx = 0
        """While resuming: what the peer said it received."""
        self.link: Any = None
        """The connection the session runs on now."""
        self.timer: Any = None  # server: the grace timer; client: the next reconnect attempt
        self.ack_timer: Any = None
        self.attempt = 0  # client: reconnect attempts since the drop
        self.owner: Any = None  # server: the ClientOnServer kept through the drop
        self.cid: Any = None
        self.ended = False
        """The session is over (closed for good)."""
        self.overflowed = False
        """The replay buffer went over its cap: the session is closing."""
        self.established = False
        """A handshake completed with it once (before that a drop ends it)."""
        self.announced = False
        """Server: a ``suspended`` event went out and no ``resumed`` since
        (the two come in pairs)."""
        self.closing: str | None = None
        """The reason the application closed it with while it had no socket
        (a kick between sockets): its end is on its way to the network
        thread, no resume may take it meanwhile, and sends raise with it."""

    @property
    def waiting(self) -> bool:
        """Whether sends go to the replay buffer only (no usable socket)."""
        return self.suspended or self.resuming

    def sent(self, frame: bytes) -> bool:
        """Count a frame sent or queued; keep it for replay.  Returns
        ``False`` (and keeps nothing) when it would take the replay buffer
        over its cap: the session is over (:attr:`overflowed`; the caller
        closes it).  Any thread, channel lock held."""
        with self.lock:
            if self.ended:
                return True  # (over: nothing is kept any more, see release())
            if self.overflowed or self.replay_bytes + len(frame) > self.cap:
                self.overflowed = True
                return False
            self.tx += 1
            self.replay.append(frame)
            self.replay_bytes += len(frame)
            if self.totals is not None:
                self.totals.add(len(frame))
            return True

    def ack(self, count: int) -> bool:
        """The peer received ``count`` packets; forget them.  Returns
        ``False`` when ``count`` is impossible (more than we sent)."""
        with self.lock:
            if self.ended:
                return True  # (released: nothing to forget; an ack read with the close is harmless)
            if count > self.tx:
                return False
            replay = self.replay
            before = self.replay_bytes
            while self.acked < count:
                self.replay_bytes -= len(replay.popleft())
                self.acked += 1
            if self.totals is not None and before != self.replay_bytes:
                self.totals.add(self.replay_bytes - before)
            return True

    def unacked_from(self, count: int) -> bytes | None:
        """What the peer, having received ``count``, still needs (the
        frames ``count+1 .. tx``, joined), and forget the rest; ``None``
        when the buffer no longer holds them (lock held by the caller)."""
        if self.ended or count < self.acked or count > self.tx:
            return None
        replay = self.replay
        before = self.replay_bytes
        while self.acked < count:
            self.replay_bytes -= len(replay.popleft())
            self.acked += 1
        if self.totals is not None and before != self.replay_bytes:
            self.totals.add(self.replay_bytes - before)
        return b"".join(replay)

    def release(self) -> None:
        """The session is over: forget the replay buffer and take it out of
        the server's total (any thread; :attr:`ended` set before)."""
        with self.lock:
            self.replay.clear()
            if self.totals is not None and self.replay_bytes:
                self.totals.add(-self.replay_bytes)
            self.replay_bytes = 0
