"""ProtocolConnection: one end of a peng3dnet connection, without I/O.

Theory of operation
-------------------
The transport feeds received bytes with :meth:`ProtocolConnection.receive_data`
(and :meth:`~ProtocolConnection.receive_eof` when ``recv()`` returned
``b""``), then collects what happened with
:meth:`~ProtocolConnection.drain_received` and writes out
:meth:`~ProtocolConnection.data_to_send`.  The application encodes with
:meth:`~ProtocolConnection.encode_packet` (the transport writes the frame
under the connection's lock), sends raw packets with
:meth:`~ProtocolConnection.send_packet`, and closes with
:meth:`~ProtocolConnection.close`.

The connection owns the handshake: it answers ``hello`` with ``settype``
(client), reports the requested connection type (server, who then calls
:meth:`~ProtocolConnection.begin_handshake` or closes), syncs the registry
and answers ``handshake`` with ``handshake.accept`` (client), and handles
``closeconn`` on both sides.  Every internal packet it receives or sends by
itself is reported (``PacketReceived`` / ``PacketSent``) in the order it
happened, so the events layer can emit them in order.

The receive path never raises for anything the peer sends: a protocol error
becomes a ``closeconn`` with the error's reason plus a
:class:`ConnectionClosed` output carrying the error, after the outputs of the
frames that preceded the bad one.  Anything else escaping is our bug.
"""

from __future__ import annotations

import heapq
import struct
from dataclasses import dataclass
from typing import Any, NamedTuple, Union

from msgpack import packb as _packb
from msgpack import unpackb as _unpackb

from .._mypyc import caused
from ..constants import (
    CONNTYPE_CLASSIC,
    CONNTYPE_NOTSET,
    CONNTYPE_PING,
    CREDENTIALS_KEY,
    EXTENSION_PACKETS,
    EXTENSIONS_KEY,
    FLAG_COMPRESSED,
    INTERNAL_PACKET_IDS,
    MAX_PACKETLENGTH,
    PID_CALL,
    PID_CALL_REPLY,
    PID_CLOSECONN,
    PID_FIRST_FREE,
    PID_HANDSHAKE,
    PID_HANDSHAKE_ACCEPT,
    PID_HEARTBEAT,
    PID_HEARTBEAT_ACK,
    PID_HELLO,
    PID_SESSION_ACK,
    PID_SETTYPE,
    RESUME_KEY,
    SESSION_KEY,
    SIDE_CLIENT,
    SIDE_SERVER,
)
from ..errors import (
    ConnectionClosedError,
    FrameTooLargeError,
    HandshakeError,
    InflateBudgetError,
    LocalProtocolError,
    RemoteProtocolError,
    UnhandledPacketError,
)
from ..registry import PacketRegistry
from ..version import PROTOVERSION, VERSION
from .codec import decompress_body, frame_body, pack, unpack
from .describe import describe, fits
from .framing import _PREFIX_AND_HEADER, HEADER_SIZE, Frame, FrameDecoder
from .handshake import SENDER, HandshakeInput, HandshakeMachine, HandshakeState

__all__ = [
    "ProtocolConnection",
    "NO_QUOTA",
    "Output",
    "PacketReceived",
    "PacketSent",
    "ConnTypeRequested",
    "HandshakeCompleted",
    "HeartbeatAcked",
    "CallRequested",
    "CallReplied",
    "SessionAcked",
    "ConnectionClosed",
]

I = HandshakeInput  # noqa: E741

_INTERNAL_INPUTS: dict[int, HandshakeInput] = {
    PID_HELLO: I.HELLO,
    PID_SETTYPE: I.SETTYPE,
    PID_HANDSHAKE: I.HANDSHAKE,
    PID_HANDSHAKE_ACCEPT: I.HANDSHAKE_ACCEPT,
    PID_CLOSECONN: I.CLOSECONN,
}
_tuple_new = tuple.__new__


_SIDE_NAMES = {SIDE_SERVER: "server", SIDE_CLIENT: "client"}
_MAX_REASON = 256
_MAX_VERSION = 64
"""Characters of the peer's version string kept (:attr:`ProtocolConnection.peer_version`)."""
MAX_EARLY_INFLATE = 1024 * 1024
"""Server side: the most a compressed packet may inflate to before the
client's ``settype`` (which carries 64 KiB of credentials at most), and on
a ``ping`` connection (one small request)."""
MAX_HEARTBEAT_BODY = 1024
"""A heartbeat probe's size at most (strings' and bytes' lengths plus one
per item, see :func:`~peng3dnet.protocol.describe.fits`): it is echoed.
Ours carry a time stamp."""
_SETTYPE_KEPT = ("conntype", EXTENSIONS_KEY, CREDENTIALS_KEY, RESUME_KEY)
"""The keys of the peer's ``settype`` that :attr:`ProtocolConnection.peer_settype` keeps."""
_HELLO_KEPT = ("version", "protoversion", EXTENSIONS_KEY)
"""The keys of the peer's ``hello`` that :attr:`ProtocolConnection.peer_hello` keeps."""
_MAX_RESUME = 1024
"""A session value's size at most (a token and a count; see
:func:`~peng3dnet.protocol.describe.fits`)."""
_HANDSHAKE_KEPT = ("version", "protoversion", SESSION_KEY)
"""The keys of the peer's ``handshake`` that :attr:`ProtocolConnection.peer_handshake` keeps."""


class PacketReceived(NamedTuple):
    """A packet arrived and was decoded (internal packets included).

    ``state`` is the connection's state when the packet arrived (outputs are
    handled after a whole read, when the state may have moved on).
    ``size`` is the length of the msgpack body that was decoded (after
    inflating, for a compressed packet): what the process queue counts
    against ``net.limits.recv_queue_bytes``.

    The one output made per packet, so it is an immutable NamedTuple rather
    than a frozen dataclass like the others: a frozen dataclass takes about
    0.9 us to build, this 0.2 us (``_new_received``), on every packet.
    """

    pid: int
    flags: int
    msg: Any
    state: HandshakeState
    size: int = 0


@dataclass(frozen=True, slots=True)
class PacketSent:
    """The connection sent an internal packet by itself (or on request)."""

    pid: int
    msg: Any


@dataclass(frozen=True, slots=True)
class ConnTypeRequested:
    """Server side: the client asked for a connection type with ``settype``."""

    conntype: str


@dataclass(frozen=True, slots=True)
class HandshakeCompleted:
    """The handshake is complete; application packets may flow."""


@dataclass(frozen=True, slots=True)
class HeartbeatAcked:
    """Extension ``heartbeat``: the peer answered our probe with ``msg``."""

    msg: Any


@dataclass(frozen=True, slots=True)
class CallRequested:
    """Extension ``calls``: the peer asks application packet ``pid`` to
    answer ``msg``; reply with :meth:`ProtocolConnection.encode_reply` and
    ``call_id``.  Counted against :attr:`ProtocolConnection.packet_quota`
    like an application packet."""

    call_id: int
    pid: int
    msg: Any
    size: int = 0
    """The length of the call packet's decoded body (see :class:`PacketReceived`)."""


@dataclass(frozen=True, slots=True)
class CallReplied:
    """Extension ``calls``: the answer to our call ``call_id`` (``status``:
    see :data:`~peng3dnet.constants.PID_CALL_REPLY`)."""

    call_id: int
    status: int
    value: Any


@dataclass(frozen=True, slots=True)
class SessionAcked:
    """Extension ``resume``: the peer received ``count`` counted packets of
    this session so far."""

    count: int


CALL_OK = 0
"""Reply status: ``value`` is what the handler returned."""
CALL_ERROR = 1
"""Reply status: the handler raised; ``value`` is ``{"type", "message"}``."""
CALL_UNANSWERED = 2
"""Reply status: no handler could answer (unknown or invalid packet)."""

_MAX_CALL_ID = 2**63


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The connection is closed; nothing will be received any more.

    ``by_peer`` is true when the peer sent ``closeconn`` or closed the
    socket; ``error`` is set when we closed because of a protocol error.
    """

    reason: str | None
    by_peer: bool
    error: RemoteProtocolError | None = None
    eof: bool = False
    """The socket ended (EOF or broke) without a ``closeconn``: the peer
    vanished rather than closed."""


Output = Union[
    PacketReceived, PacketSent, ConnTypeRequested, HandshakeCompleted, HeartbeatAcked, CallRequested, CallReplied,
    SessionAcked, ConnectionClosed,
]


NO_QUOTA = 1 << 62
"""``ProtocolConnection.packet_quota`` when nothing limits it."""


def _some(names: set[str], shown: int = 6) -> str:
    """The first names of a set (sorted) for a message, all of them when
    few: a peer's registry may hold a million, each as long as a packet."""
    first = describe(heapq.nsmallest(shown, names), 400)
    return first if len(names) <= shown else f"{first} and {len(names) - shown} more"


class ProtocolConnection:
    """One end of a connection: handshake, framing and codec, no I/O.

    Args:
        side: ``SIDE_SERVER`` or ``SIDE_CLIENT``.
        registry: Packet registry; a client's is renumbered at the handshake.
        conntype: Client side: the connection type to request.
        version: Version string sent in ``hello``/``handshake``.
        max_packet_size: Largest accepted frame (length prefix value).
        max_decompressed_size: Largest accepted decompressed body.
        compress: Compress bodies above ``compress_threshold``.
        compress_threshold: Size in bytes above which bodies are compressed.
        compress_level: zlib level.
        autosync: Client side: check and adopt the server's registry.
        missing_packet_action: Client side: ``"closeconnection"`` or
            ``"ignore"`` when the two registries name different packets.
        hello_extra: Server side: extra keys for ``hello``.
        settype_extra: Client side: extra keys for ``settype``.
        extensions: Extensions we support (see ``EXTENSION_PACKETS``); the
            server offers them in ``hello``, the client picks the common ones
            in ``settype``.  A version-2 peer offers/picks none.
        credentials: Client side: what to send as credentials when the
            ``auth`` extension is negotiated (any msgpack value; ``None``
            is sent as nil).  Never sent otherwise.

    Not thread safe: one thread at a time (the transport holds a lock).
    """

    def __init__(
        self,
        side: int,
        *,
        registry: PacketRegistry | None = None,
        conntype: str = CONNTYPE_CLASSIC,
        version: str = VERSION,
        max_packet_size: int = 16 * 1024 * 1024,
        max_decompressed_size: int = 16 * 1024 * 1024,
        compress: bool = True,
        compress_threshold: int = 8192,
        compress_level: int = 6,
        autosync: bool = True,
        missing_packet_action: str = "closeconnection",
        hello_extra: dict[str, Any] | None = None,
        settype_extra: dict[str, Any] | None = None,
        extensions: frozenset[str] | set[str] = frozenset(),
        credentials: Any = None,
    ) -> None:
        if side not in (SIDE_SERVER, SIDE_CLIENT):
            raise ValueError(f"invalid side {side!r}")
        self.side = side
        """``SIDE_SERVER`` or ``SIDE_CLIENT``."""
        self.registry = registry if registry is not None else PacketRegistry()
        """The packet registry used for the handshake."""
        self.conntype: str = conntype if side == SIDE_CLIENT else CONNTYPE_NOTSET
        """Connection type: requested (client) or chosen by the peer (server)."""
        self.version = version
        self.max_packet_size = max_packet_size
        self.max_decompressed_size = max_decompressed_size
        self.compress = compress
        self.compress_threshold = compress_threshold
        self.compress_level = compress_level
        self.autosync = autosync
        self.missing_packet_action = missing_packet_action
        self.hello_extra = dict(hello_extra or {})
        self.settype_extra = dict(settype_extra or {})
        self.peer_version: str | None = None
        """Version string the peer announced."""
        self.peer_hello: dict[str, Any] = {}
        """Client side: the server's ``hello`` message (its ``version``,
        ``protoversion`` and extensions keys only)."""
        self.peer_settype: dict[str, Any] = {}
        """Server side: the client's ``settype`` message (its conntype,
        extensions, credentials and resume keys only)."""
        self.peer_handshake: dict[str, Any] = {}
        """Client side: the server's ``handshake`` message (its ``version``,
        ``protoversion`` and session keys only: the registry is applied, not kept)."""
        self.extensions = frozenset(e for e in extensions if e in EXTENSION_PACKETS)
        """Extensions we support."""
        self.negotiated: frozenset[str] = frozenset()
        """Extensions both sides announced (known after ``settype``)."""
        self._call_pid = -1  # PID_CALL once "calls" is negotiated: counted like application packets
        self.credentials = credentials
        self.packet_quota = NO_QUOTA
        """How many more packets :meth:`receive_data` may decode (the
        application's, calls, and the protocol's own: heartbeats, replies,
        the handshake's); the owner sets it (the room left in its process
        queue, a rate limit's bucket) and the core counts it down.  At 0,
        further frames are held back undecoded (see :attr:`frames_waiting`)."""
        self.byte_quota = NO_QUOTA
        """The same in bytes: the decoded bodies (``PacketReceived.size``)
        of application packets and calls :meth:`receive_data` may still
        output.  A packet is decoded while it is above 0 (so it may go
        below 0 by one body); at 0 or below the frames from there on are
        held back.  A read that is one whole packet (the common case) is
        not counted here: its owner counts what it queued."""
        self.inflate_budget: int | None = None
        """Bytes this connection may still produce by decompressing, or
        ``None`` (no budget; the default).  The owner refills it (a token
        bucket: ``net.limits.inflate.*``); each compressed body is inflated
        to at most ``min(max_decompressed_size, inflate_budget)`` bytes, so
        a peer can never make us inflate more than its budget, and what it
        inflates is charged."""
        self.inflate_action = "close"
        """Over the budget: ``"close"`` with ``"ratelimit"``; ``"drop"`` the
        application packet; ``"hold"``: a compressed body is inflated while
        the budget is above 0 (so it may go below 0 by one body) and, at 0 or
        below, the frames from there on are held back undecoded (as with
        :attr:`packet_quota`) until the owner refills the budget and calls
        :meth:`receive_data` again: nothing is lost."""
        self.inflate_dropped = 0
        """Application packets dropped over the budget."""
        self.close_reason: str | None = None
        """Why the connection closed (``None`` while open, or if the peer gave none)."""
        self._machine = HandshakeMachine()
        self.state: HandshakeState = self._machine.state
        """Current :class:`HandshakeState` (a plain attribute: read for every
        packet sent; it follows the handshake machine, see :meth:`_step`)."""
        self.has_data_to_send = False
        """Whether :meth:`data_to_send` would return bytes (a plain
        attribute: read after every read)."""
        self.frames_waiting = 0
        """Frames received but held back (by :attr:`packet_quota` or the
        inflate budget); 0 once the connection is closed (a plain
        attribute: read after every read)."""
        self._done = False  # ConnectionClosed was output (exactly once)
        self.closed = False
        """Whether the connection is closed (a plain attribute: cheap to test)."""
        self._decoder = FrameDecoder(max_packet_size)
        self._frames: list[Frame] = []
        self._outputs: list[Output] = []
        self._out: list[bytes] = []

    # --- state ------------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        """Whether the connection is open (not closed, not failed)."""
        return self._machine.is_open

    # --- receiving ---------------------------------------------------------------------
    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes received from the peer.  Data after the close is ignored.

        At most :attr:`packet_quota` packets are decoded (application
        packets and calls while :attr:`byte_quota` is above 0); the frames after them wait
        here, undecoded (at most what was fed), until the quota is raised
        and this is called again (``b""`` will do).
        """
        if self._done:
            return
        frames = self._frames
        error: RemoteProtocolError | None = None
        if data:
            frame = None if frames else self._decoder.one_frame(data)
            if frame is None:
                try:
                    self._decoder.feed(data, frames)
                except RemoteProtocolError as exc:
                    error = exc
            else:
                # The common case, the loop below's first branch inlined: one
                # read, one uncompressed application packet within the quota.
                pid, flags, body = frame
                if pid >= PID_FIRST_FREE and not flags and self.packet_quota > 0:
                    try:
                        msg = _unpackb(body, raw=False, strict_map_key=False)
                    except Exception:
                        pass  # (the loop below raises its DecodeError)
                    else:
                        self.packet_quota -= 1
                        self._outputs.append(_tuple_new(PacketReceived, (pid, 0, msg, self.state, len(body))))
                        return
                frames.append(frame)
        # A broken stream ends here: what came before it is delivered first.
        quota = self.packet_quota if error is None else NO_QUOTA
        call_pid = self._call_pid
        taken = 0
        try:
            outputs = self._outputs
            state = self.state
            for pid, flags, body in frames:
                if self._done:
                    break
                if pid >= PID_FIRST_FREE:
                    if quota <= 0 or self.byte_quota <= 0:
                        break
                    if not flags:
                        # The common case, inlined: an uncompressed application packet,
                        # msgpack called directly (codec.unpack's options; on any
                        # error codec.unpack runs again to raise its DecodeError).
                        quota -= 1
                        taken += 1
                        try:
                            msg = _unpackb(body, raw=False, strict_map_key=False)
                        except Exception:
                            msg = unpack(body)
                        size = len(body)
                        self.byte_quota -= size
                        outputs.append(_tuple_new(PacketReceived, (pid, 0, msg, state, size)))
                        continue
                    quota -= 1
                elif pid == call_pid:  # a call request waits for a handler like a packet
                    if quota <= 0 or self.byte_quota <= 0:
                        break
                    quota -= 1
                else:
                    # The protocol's own packets (heartbeats and their echoes,
                    # call replies, acks, the handshake's) count as packets too:
                    # a rate limit that let them through unbounded let a peer
                    # keep the network thread decoding and answering them.
                    if quota <= 0:
                        break
                    quota -= 1
                if flags and self.inflate_action == "hold" and self.inflate_budget is not None and self.inflate_budget <= 0:
                    quota += 1
                    break  # held until the budget is refilled
                taken += 1
                self._handle_frame(pid, flags, body)
                outputs = self._outputs
                state = self.state
        except RemoteProtocolError as exc:
            error = exc
        except Exception as exc:  # noqa: BLE001 - a frame we could not handle closes its connection, not the thread
            # (a value Python cannot handle, say a RecursionError, or a bug of
            # ours: the connection fails with the cause kept for the log)
            error = UnhandledPacketError(f"a packet could not be handled: {type(exc).__name__}{describe(exc.args)}")
            error.__cause__ = exc
        finally:
            self.packet_quota = quota
            if taken >= len(frames) or error is not None or self._done:
                frames.clear()
            else:
                del frames[:taken]
            self.frames_waiting = len(frames)
        if error is not None and not self._done:
            self._fail(error)

    def receive_eof(self, reason: str = "socketclose", discard_held: bool = False) -> None:
        """The socket ended without ``closeconn`` (EOF, or broke: give the
        reason).  Frames still held back by the quota are delivered first,
        or, with ``discard_held`` (a resumable session: the peer sends them
        again on the next socket), forgotten."""
        if self._done:
            return
        if discard_held:
            self._forget_held()
        if self._frames:
            # What was held back comes first.  Over the inflate budget a
            # compressed packet is dropped now (the peer is gone; inflating
            # past the budget is what the budget forbids).
            self.packet_quota = self.byte_quota = NO_QUOTA
            if self.inflate_action == "hold":
                self.inflate_action = "drop"
            self.receive_data(b"")
            if self._done:
                return
        self._step(I.EOF)
        self._done = self.closed = True
        self.close_reason = reason
        self._outputs.append(ConnectionClosed(reason, by_peer=True, eof=True))

    def drain_received(self) -> list[Output]:
        """Return and forget what happened since the last call, in order."""
        out = self._outputs
        self._outputs = []
        if self._done and self._decoder.buffered:
            self._decoder.clear()  # closed: a partial frame will never complete
        return out

    def _handle_frame(self, pid: int, flags: int, body: bytes) -> None:
        inp = _INTERNAL_INPUTS.get(pid)
        cap = self.max_decompressed_size
        if self.side == SIDE_SERVER and (
            self.state is HandshakeState.HELLO
            or (self.state is HandshakeState.TYPESET and self.conntype == CONNTYPE_PING)
        ):
            # Before settype a client sends settype (credentials of 64 KiB
            # at most), and a ping connection one small request: nothing
            # large.  A new connection's decompression budget is full, so
            # reconnecting would buy a fresh one per bomb.
            cap = min(cap, MAX_EARLY_INFLATE)
        if flags & FLAG_COMPRESSED:
            if self.inflate_budget is not None:
                raw = self._inflate_budgeted(pid, body, cap)
                if raw is None:
                    return  # dropped over the budget
            else:
                raw = decompress_body(body, cap)
            size = len(raw)
            msg = unpack(raw)
        else:
            size = len(body)
            msg = unpack(body)
        if inp is None and (pid >= PID_FIRST_FREE or pid == self._call_pid):
            self.byte_quota -= size  # (counted as receive_data() held it: application packets and calls)
        if inp is None:
            if (pid == PID_HEARTBEAT or pid == PID_HEARTBEAT_ACK) and "heartbeat" in self.negotiated:
                self._on_heartbeat(pid, msg)
                return
            if (pid == PID_CALL or pid == PID_CALL_REPLY) and "calls" in self.negotiated:
                self._on_call(pid, msg, size)
                return
            if pid == PID_SESSION_ACK and "resume" in self.negotiated:
                if self.state is not HandshakeState.ACTIVE:
                    raise HandshakeError("session ack before the handshake completed", "invalidstate")
                if type(msg) is not int or not 0 <= msg < _MAX_CALL_ID:
                    raise HandshakeError(f"malformed session ack {describe(msg)}", "invalidpacket")
                self._step(I.APPLICATION)
                self._outputs.append(SessionAcked(msg))
                return
            # Rule 3: application packets are judged by their packet class.
            self._outputs.append(PacketReceived(pid, flags, msg, self.state, size))
            return
        if not isinstance(msg, dict):
            raise HandshakeError(f"malformed {inp.value} packet: body is not a map", "invalidpacket")
        if inp is I.CLOSECONN:
            reason = msg.get("reason")
            if reason is not None and not isinstance(reason, str):
                reason = describe(reason)
            if reason is not None and len(reason) > _MAX_REASON:
                reason = reason[:_MAX_REASON]
            self._outputs.append(PacketReceived(pid, flags, msg, self.state))
            self._step(I.CLOSECONN)
            self._done = self.closed = True
            self.close_reason = reason
            self._outputs.append(ConnectionClosed(reason, by_peer=True))
            return
        if SENDER[inp] == self.side:
            raise HandshakeError(
                f"peer sent {inp.value}, which only the {_SIDE_NAMES[self.side]} may send", "invalidside"
            )
        self._step(inp)
        self._outputs.append(PacketReceived(pid, flags, msg, self.state))
        if inp is I.HELLO:
            self._on_hello(msg)
        elif inp is I.SETTYPE:
            self._on_settype(msg)
        elif inp is I.HANDSHAKE:
            self._on_handshake(msg)
        else:  # HANDSHAKE_ACCEPT
            self._outputs.append(HandshakeCompleted())

    def _versioned(self, msg: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
        """The peer's ``hello`` or ``handshake``: check its protocol version,
        note its version string (:attr:`peer_version`) and return what is
        kept of it (:meth:`_kept`)."""
        if msg.get("protoversion") != PROTOVERSION:
            raise HandshakeError(
                f"peer speaks protocol version {describe(msg.get('protoversion'))}, we speak {PROTOVERSION}",
                "protoversionmismatch",
            )
        kept = self._kept(msg, keys)
        self.peer_version = kept.get("version")
        return kept

    def _on_heartbeat(self, pid: int, msg: Any) -> None:
        if self.state is not HandshakeState.ACTIVE:
            raise HandshakeError("heartbeat before the handshake completed", "invalidstate")
        self._step(I.APPLICATION)
        if pid == PID_HEARTBEAT:
            # Echoed: encoding (and compressing) it again is work done for
            # the peer that no budget charges, so it must be small.
            if not fits(msg, MAX_HEARTBEAT_BODY):
                raise HandshakeError(f"heartbeat probe larger than {MAX_HEARTBEAT_BODY} bytes", "invalidpacket")
            self._queue_out(self._encode(PID_HEARTBEAT_ACK, msg))
        else:
            self._outputs.append(HeartbeatAcked(msg))

    def _on_call(self, pid: int, msg: Any, size: int = 0) -> None:
        if self.state is not HandshakeState.ACTIVE:
            raise HandshakeError("call before the handshake completed", "invalidstate")
        if not isinstance(msg, (list, tuple)) or len(msg) != 3:
            raise HandshakeError("malformed call packet: not [id, x, value]", "invalidpacket")
        call_id, what, value = msg
        if type(call_id) is not int or not 0 <= call_id < _MAX_CALL_ID or type(what) is not int:
            raise HandshakeError(f"malformed call packet: id {describe(call_id)}, {describe(what)}", "invalidpacket")
        self._step(I.APPLICATION)
        if pid == PID_CALL:
            if not PID_FIRST_FREE <= what < 2**32:
                raise HandshakeError(f"call of packet id {what}, not an application packet", "invalidpacket")
            self._outputs.append(CallRequested(call_id, what, value, size))
        else:
            if what not in (CALL_OK, CALL_ERROR, CALL_UNANSWERED):
                raise HandshakeError(f"malformed call reply: status {describe(what)}", "invalidpacket")
            self._outputs.append(CallReplied(call_id, what, value))

    def assume_negotiated(self, extensions: frozenset[str]) -> None:
        """Before the peer's ``hello``: encode as if ``extensions`` were
        negotiated (a resumed session's new connection: what is sent
        meanwhile waits in the replay buffer and goes out once the session
        runs on it; the ``hello`` decides again, and a resume that does not
        negotiate ``resume`` again is refused)."""
        self.negotiated = frozenset(extensions)
        self._negotiated_now()

    def _negotiated_now(self) -> None:
        """The extensions are known (both sides, at ``settype``)."""
        self._call_pid = PID_CALL if "calls" in self.negotiated else -1

    @staticmethod
    def _ext_list(msg: dict[str, Any]) -> frozenset[str]:
        offered = msg.get(EXTENSIONS_KEY, ())
        if not isinstance(offered, (list, tuple)):
            return frozenset()
        return frozenset(e for e in offered if isinstance(e, str))

    def _kept(self, msg: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
        """What a connection keeps of the peer's hello, settype or
        handshake (it lives as long as the connection): only ``keys``, the
        version cut to 64 characters, the extensions offered that we know
        of, a session (resume request, new session) only if small (a
        large one is no session: kept as ``None``, refused as invalid)."""
        kept = {k: msg[k] for k in keys if k in msg}
        version = kept.get("version")
        if version is not None:
            kept["version"] = version[:_MAX_VERSION] if isinstance(version, str) else None
        if EXTENSIONS_KEY in kept:
            kept[EXTENSIONS_KEY] = sorted(e for e in self._ext_list(msg) if e in EXTENSION_PACKETS)
        for key in (RESUME_KEY, SESSION_KEY):
            if key in kept and not fits(kept[key], _MAX_RESUME):
                kept[key] = None
        return kept

    def _ext_names(self) -> dict[str, int]:
        names: dict[str, int] = {}
        for ext in sorted(self.negotiated):
            names.update(EXTENSION_PACKETS[ext])
        return names

    def _on_hello(self, msg: dict[str, Any]) -> None:
        self.peer_hello = self._versioned(msg, _HELLO_KEPT)
        self.negotiated = self.extensions & self._ext_list(msg)
        self._negotiated_now()
        settype: dict[str, Any] = {"conntype": self.conntype}
        if self.negotiated:
            settype[EXTENSIONS_KEY] = sorted(self.negotiated)
        if "auth" in self.negotiated:
            settype[CREDENTIALS_KEY] = self.credentials
        settype.update(self.settype_extra)
        self._send_internal(I.SETTYPE, PID_SETTYPE, settype)

    def _on_settype(self, msg: dict[str, Any]) -> None:
        conntype = msg.get("conntype", CONNTYPE_CLASSIC)
        if not isinstance(conntype, str):
            raise HandshakeError(f"malformed settype packet: conntype {describe(conntype)}", "invalidpacket")
        self.conntype = conntype
        # Only what is read later is kept: a settype may carry any number of
        # keys of any size, and this lives as long as the connection.
        self.peer_settype = self._kept(msg, _SETTYPE_KEPT)
        self.negotiated = self.extensions & self._ext_list(msg)
        self._negotiated_now()
        self._outputs.append(ConnTypeRequested(conntype))

    @property
    def peer_credentials(self) -> Any:
        """Server side: the credentials the client sent in ``settype``
        (``None`` if it sent none, or before ``settype``).  Only
        meaningful when ``auth`` is in :attr:`negotiated`."""
        return self.peer_settype.get(CREDENTIALS_KEY) if "auth" in self.negotiated else None

    def _on_handshake(self, msg: dict[str, Any]) -> None:
        self.peer_handshake = self._versioned(msg, _HANDSHAKE_KEPT)
        reg = msg.get("registry")
        if not isinstance(reg, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32
            for k, v in reg.items()
        ):
            raise HandshakeError("malformed handshake packet: bad registry", "invalidpacket")
        if len(set(reg.values())) != len(reg):
            raise HandshakeError("malformed handshake packet: duplicate ids in registry", "invalidpacket")
        ext = self._ext_names()
        if any(reg.get(name) != pid for name, pid in ext.items()):
            raise HandshakeError("handshake registry lacks the negotiated extensions", "invalidpacket")
        # Ids 0-63 are the protocol's: only its own names, at their fixed ids.
        fixed = {**INTERNAL_PACKET_IDS, **ext}
        for name, pid in reg.items():
            if (pid < PID_FIRST_FREE or name in fixed) and fixed.get(name) != pid:
                raise HandshakeError(f"handshake registry gives {describe(name)} the id {pid} "
                                     f"(ids below {PID_FIRST_FREE} are the protocol's)", "invalidpacket")
        if self.autosync:
            ours = self.registry.names() | set(ext)
            theirs = set(reg)
            if ours != theirs and self.missing_packet_action != "ignore":
                raise HandshakeError(
                    f"packet registries differ: only ours {_some(ours - theirs)}, only theirs {_some(theirs - ours)}",
                    "packetregmismatch",
                )
            self.registry.remap({k: v for k, v in reg.items() if k not in ext})
        self._send_internal(I.HANDSHAKE_ACCEPT, PID_HANDSHAKE_ACCEPT, {"success": True})
        self._outputs.append(HandshakeCompleted())

    # --- sending -----------------------------------------------------------------------
    def initiate(self) -> None:
        """Server side: start the conversation by sending ``hello``."""
        if self.side != SIDE_SERVER:
            raise ValueError("only the server initiates")
        hello: dict[str, Any] = {"version": self.version, "protoversion": PROTOVERSION}
        if self.extensions:
            hello[EXTENSIONS_KEY] = sorted(self.extensions)
        hello.update(self.hello_extra)
        self._send_internal(I.HELLO, PID_HELLO, hello)

    def begin_handshake(self, registry: dict[str, int], extra: dict[str, Any] | None = None) -> None:
        """Server side: send ``handshake`` with the given name -> id map
        (and ``extra`` keys, for extensions: e.g. the session of ``resume``).

        Raises:
            LocalProtocolError: Not in the ``TYPESET`` state.
        """
        if self.side != SIDE_SERVER or self.state is not HandshakeState.TYPESET:
            raise LocalProtocolError(f"cannot begin the handshake in state {self.state.name}")
        if self.negotiated:
            registry = {**registry, **self._ext_names()}
        msg = {"version": self.version, "protoversion": PROTOVERSION, "registry": registry}
        if extra:
            msg.update(extra)
        self._send_internal(I.HANDSHAKE, PID_HANDSHAKE, msg)

    def _send_internal(self, inp: HandshakeInput, pid: int, msg: dict[str, Any]) -> None:
        self._step(inp)
        self._queue_out(self._encode(pid, msg))
        self._outputs.append(PacketSent(pid, msg))

    def _encode(self, pid: int, msg: Any, encode: Any = _packb) -> bytes:
        body = pack(msg, encode)
        return frame_body(
            pid, body, compress=self.compress, threshold=self.compress_threshold, level=self.compress_level
        )

    def encode_packet(self, pid: int, msg: Any, encode: Any = _packb) -> bytes:
        """Encode a packet with this connection's compression settings.

        Args:
            pid: The packet id.
            msg: Any msgpack-serializable value.
            encode: The msgpack encoder: ``msgpack.packb`` (default) or any
                callable that encodes the same way, e.g. a per-thread
                ``msgpack.Packer().pack`` (it reuses its buffer: about a third
                of the cost; the facades pass one).

        Raises:
            LocalProtocolError: The message cannot be encoded.
        """
        # _encode() with codec.pack() inlined (once per packet sent), and
        # frame_body()'s uncompressed case too.
        try:
            body: bytes = encode(msg)
        except (TypeError, ValueError, OverflowError) as exc:
            raise caused(LocalProtocolError(f"cannot encode message: {exc}"), exc) from exc
        if not self.compress or len(body) <= self.compress_threshold:
            length = len(body) + HEADER_SIZE
            if length <= MAX_PACKETLENGTH:
                try:
                    return _PREFIX_AND_HEADER.pack(length, pid, 0) + body
                except struct.error:
                    pass  # (a pid out of range: frame_body raises the right error)
        return frame_body(pid, body, compress=self.compress, threshold=self.compress_threshold, level=self.compress_level)

    def send_packet(self, pid: int, msg: Any) -> None:
        """Queue an application packet (or a raw one, e.g. for ``ping``).

        Raises:
            ConnectionClosedError: The connection is closed.
            LocalProtocolError: The message cannot be encoded.
        """
        if not self._machine.is_open:
            raise ConnectionClosedError("connection is closed", self.close_reason)
        self._queue_out(self._encode(pid, msg))

    def send_ack(self, count: int) -> bool:
        """Send a session ack (extension ``resume``) if it was negotiated
        and the connection is active.  Returns whether one was queued."""
        if "resume" not in self.negotiated or self.state is not HandshakeState.ACTIVE or self._done:
            return False
        self._queue_out(self._encode(PID_SESSION_ACK, count))
        return True

    def send_heartbeat(self, msg: Any) -> bool:
        """Send a heartbeat probe if the extension was negotiated and the
        connection is active.

        Returns:
            Whether a probe was queued.
        """
        if "heartbeat" not in self.negotiated or self.state is not HandshakeState.ACTIVE or self._done:
            return False
        self._queue_out(self._encode(PID_HEARTBEAT, msg))
        return True

    def encode_call(self, call_id: int, pid: int, msg: Any, encode: Any = _packb) -> bytes:
        """Encode a call request (extension ``calls``) of application
        packet ``pid``; see :meth:`encode_packet`.

        Only encodes: whether the connection can carry it now (active, or
        a resumable session between sockets) is the caller's business.

        Raises:
            LocalProtocolError: ``calls`` was not negotiated, or ``msg``
                cannot be encoded.
        """
        self._check_calls()
        return self._encode(PID_CALL, [call_id, pid, msg], encode)

    def encode_reply(self, call_id: int, status: int, value: Any, encode: Any = _packb) -> bytes:
        """Encode the answer to a :class:`CallRequested`; see :meth:`encode_call`."""
        self._check_calls()
        return self._encode(PID_CALL_REPLY, [call_id, status, value], encode)

    def _check_calls(self) -> None:
        if "calls" not in self.negotiated:
            raise LocalProtocolError("the peer does not support calls (a peng3dnet 0.1.x peer?)")

    def data_to_send(self) -> bytes:
        """Return and forget the bytes to write to the peer."""
        out = self._out
        if not out:
            return b""
        self._out = []
        self.has_data_to_send = False
        return out[0] if len(out) == 1 else b"".join(out)

    def _queue_out(self, frame: bytes) -> None:
        """Queue an encoded frame for :meth:`data_to_send` (the one place
        that sets :attr:`has_data_to_send`)."""
        self._out.append(frame)
        self.has_data_to_send = True

    def _forget_held(self) -> None:
        """Drop the frames held back by the quota (the one place, with the
        end of :meth:`receive_data`, that sets :attr:`frames_waiting`)."""
        self._frames.clear()
        self.frames_waiting = 0

    def _step(self, inp: HandshakeInput) -> None:
        """Feed the handshake machine one input; :attr:`state` follows it
        (also when the input is refused: the machine is in ``ERROR`` then)."""
        try:
            self.state = self._machine.process(inp)
        except HandshakeError:
            self.state = self._machine.state
            raise

    def close(self, reason: str | None = None) -> None:
        """Send ``closeconn`` with ``reason`` and close.  Idempotent."""
        if self._done:
            return
        self._forget_held()  # held back, not yet delivered: they come after our close
        self._done = self.closed = True
        msg = {"reason": reason}
        self._queue_out(self._encode(PID_CLOSECONN, msg))
        self._outputs.append(PacketSent(PID_CLOSECONN, msg))
        self._step(I.CLOSECONN)
        self.close_reason = reason
        self._outputs.append(ConnectionClosed(reason, by_peer=False))

    def _inflate_budgeted(self, pid: int, body: bytes, cap: int) -> bytes | None:
        """Inflate a body within the budget (charged) and ``cap``; ``None``: dropped."""
        budget = self.inflate_budget or 0
        if self.inflate_action == "hold":  # (receive_data held it back at <= 0)
            raw = decompress_body(body, cap)
            self.inflate_budget = budget - len(raw)
            return raw
        limit = min(cap, budget)
        try:
            raw = decompress_body(body, limit)
        except FrameTooLargeError:
            if limit >= cap:
                raise  # too large whatever the budget
            self.inflate_budget = 0  # what was inflated is charged
            if self.inflate_action == "drop" and pid >= PID_FIRST_FREE:
                self.inflate_dropped += 1
                return None
            raise InflateBudgetError(
                f"compressed packet {pid} inflates beyond the {budget} bytes left of the decompression budget"
            ) from None
        self.inflate_budget = budget - len(raw)
        return raw

    def _fail(self, error: RemoteProtocolError) -> None:
        self._done = self.closed = True
        self._forget_held()
        msg = {"reason": error.reason}
        self._queue_out(self._encode(PID_CLOSECONN, msg))
        self._outputs.append(PacketSent(PID_CLOSECONN, msg))
        self._machine.fail()
        self.state = self._machine.state
        self.close_reason = error.reason
        self._outputs.append(ConnectionClosed(error.reason, by_peer=False, error=error))
