"""One connection's state (Link) and counters (ConnectionStats)."""

from __future__ import annotations

import logging
import time
from typing import Any

from .conntypes import ConnectionType
from .constants import (
    SSLSEC_NONE,
    STATE_INIT,
)
from .protocol.connection import (
    ProtocolConnection,
)
from .transport import Channel

__all__ = ['Link', 'ConnectionStats', 'noop_hook', 'link_hooks']

log = logging.getLogger(__name__)

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




class Link:
    """One connection's state: core, channel, connection type and owner."""

    __slots__ = (
        "proto", "chan", "owner", "cid", "ctobj", "n_in", "n_out", "resume_at", "b_in", "b_out", "b_resume_at",
        "eof", "local_closed",
        "stats", "sslsec", "hb_sent", "rate_p", "rate_b", "rate_t", "plain", "tls_server",
        "lib_state", "on_recv", "on_send", "polite", "app_closed", "infl_t", "acct", "group", "hs_pending", "strict_keys",
        "auth", "auth_timer", "session", "vanished", "infl_counted", "ct_send", "ct_recv", "held_at",
        "provisional", "resumable", "over_max", "core_over", "held_in", "held_since", "shed", "hb_probes",
        "replay_end", "earlier",
    )

    def __init__(self, proto: ProtocolConnection, chan: Channel, owner: Any, cid: int | None) -> None:
        self.proto = proto
        self.chan = chan
        self.owner = owner
        self.cid = cid
        self.ctobj: ConnectionType | None = None
        """The connection type chosen (set with :meth:`set_type`)."""
        self.ct_send = False
        """Whether :attr:`ctobj`'s class overrides ``send`` (then every
        application packet sent is shown to it)."""
        self.ct_recv = False
        """Whether :attr:`ctobj`'s class overrides ``receive``."""
        # Packets handed to the inbox and handled by process(): one writer
        # each (the network thread; the process side under the inbox lock),
        # so neither needs a lock on the per-packet path.
        self.n_in = 0
        self.n_out = 0
        self.resume_at = 0
        # The same in bytes (the decoded bodies' sizes: net.limits.recv_queue_bytes).
        self.b_in = 0
        self.b_out = 0
        self.b_resume_at = 0
        self.eof = False
        self.local_closed = False  # we closed it: drop packets still in the batch
        self.stats = ConnectionStats()
        self.sslsec = SSLSEC_NONE
        self.hb_sent = 0.0
        self.hb_probes: list[float] = []
        """The times of our last few heartbeat probes not echoed yet (network
        thread): an echo counts once, and only of one of these."""
        self.rate_p = 0.0  # token buckets (packets, bytes), refilled at rate_t
        self.rate_b = 0.0
        self.rate_t = 0.0
        self.strict_keys = True  # the peer accepts only str/bytes map keys (no mapkeys extension)
        self.group: str | None = None  # the address group it counts in (server: per-address limits)
        self.hs_pending = False  # counted as a handshake in progress of its group
        # Server, per-address counts: admitted over the group's connection
        # limit because the group has resumable sessions (it may resume one;
        # nothing else); and counted as carrying a resumable session (live
        # or suspended: a suspended one keeps its place in the group).
        self.provisional = False
        self.resumable = False
        # Server: admitted over net.limits.max_clients because sessions are
        # suspended (it may resume one of them at settype; nothing else).
        self.over_max = False
        # Bytes the core queued by itself (heartbeat echoes, pongs, acks)
        # while the write buffer was over net.limits.write_buffer (Peer._push).
        self.core_over = 0
        self.auth: Any = None  # server login: None undecided, AUTH_PENDING, True accepted
        self.auth_timer: Any = None  # the net.timeout.auth timer while pending
        self.session: Any = None  # the resumable Session this connection carries (extension "resume")
        self.vanished = False  # closed because the peer went silent (heartbeat): a drop, not a close
        # Where a resume's replay ends in the stream written to chan (its
        # offset: chan.head + len(chan.out) after the write); what is left of
        # it unsent is not held against net.limits.write_buffer (Peer._send_frame).
        self.replay_end = 0
        # The session's earlier sockets whose packets still waited for
        # process() when it moved to this one (Peer._carry_queue): the
        # close comes after them, process_single_packet() takes them first.
        self.earlier: tuple[Link, ...] = ()
        # Monotonic time our own flow control last held reading from it
        # (process queue full, a rate or inflate throttle): the peer's
        # silence is counted from the later of this and the last read.
        self.held_at = 0.0
        self.infl_counted = 0  # proto.inflate_dropped already counted in the session
        self.acct = 0  # bytes of chan.out counted in the peer's total (Peer._account)
        self.held_in = 0  # bytes of an incomplete frame counted in the server's total (Flow.hold_read)
        self.held_since = 0.0  # monotonic time it began holding them (Flow.shed_reads ranks by it)
        self.shed = False
        """Chosen to be closed for ``net.limits.write_buffer_total``
        (``Flow.shed``; set under no lock, read under the channel's): its
        backlog is dropped when it is closed, so nothing more is queued on it."""
        self.infl_t = self.stats._since  # last refill of the decompression budget (proto.inflate_budget)
        self.plain = False  # plaintext, first read checked: _read's fast path
        self.tls_server = False
        self.lib_state = STATE_INIT  # the application state the library set last
        self.polite = False  # closed on purpose (application, stop): wait for the peer's EOF
        self.app_closed = False  # the application's side of the close (on_close) was delivered
        # The owner's on_receive/on_send hooks, None when not overridden
        # (the per-packet paths skip them then).
        self.on_recv = _hook(owner, "on_receive")
        self.on_send = _hook(owner, "on_send")

    def set_type(self, ct: ConnectionType | None) -> None:
        """The connection type was chosen (network thread): its object, and
        whether its class overrides ``send``/``receive`` (looked at once
        here, not per packet)."""
        self.ctobj = ct
        self.ct_send = ct is not None and type(ct).send is not ConnectionType.send
        self.ct_recv = ct is not None and type(ct).receive is not ConnectionType.receive

    @property
    def queued(self) -> int:
        """Packets of this connection waiting for ``process()``."""
        return self.n_in - self.n_out

    @property
    def queued_bytes(self) -> int:
        """The decoded bodies' bytes of the packets in :attr:`queued`."""
        return self.b_in - self.b_out


_NOOP_HOOKS: set[Any] = set()  # (a set, not a mark on the function: a compiled method takes no attributes)


def noop_hook(fn: Any) -> Any:
    """Mark a base class's empty hook: a :class:`Link` skips calling it
    per packet unless a subclass overrides it."""
    _NOOP_HOOKS.add(fn)
    return fn


def link_hooks(owner: Any) -> tuple[Any, Any]:
    """``(on_receive, on_send)`` of ``owner`` for a :class:`Link` (``None``
    when not overridden)."""
    return _hook(owner, "on_receive"), _hook(owner, "on_send")


def _hook(owner: Any, name: str) -> Any:
    fn = getattr(type(owner), name, None)
    if fn is None:
        return None
    try:
        if fn in _NOOP_HOOKS:
            return None
    except TypeError:  # an unhashable callable of the program's: not ours
        pass
    return getattr(owner, name)
