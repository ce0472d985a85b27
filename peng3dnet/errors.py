"""Typed errors of peng3dnet.

Hierarchy::

    Peng3dNetError(Exception)
    +-- ProtocolError
    |   +-- LocalProtocolError      we were asked to do something illegal
    |   +-- RemoteProtocolError     the peer sent something illegal
    |       +-- FrameTooLargeError
    |       +-- DecodeError         bad header / msgpack / compressed data
    |       |   +-- UnhandledPacketError  handling a packet raised something unexpected
    |       +-- HandshakeError      version or conntype mismatch, wrong state
    +-- RegistryError(ValueError)
    |   +-- AlreadyRegisteredError
    |   +-- UnknownPacketError(KeyError)  no packet with that name, id or object
    +-- InvalidAddressError(ValueError)
    |   +-- InvalidHostError
    |   +-- InvalidPortError
    +-- UnsupportedAddressError(NotImplementedError)
    +-- InvalidSmartPacketActionError(ValueError)
    +-- ConnectionClosedError
    +-- NetworkError(OSError)       wraps OSError at the transport boundary
    |   +-- TLSError                TLS handshake failed (bad certificate, no TLS peer)
    +-- TLSConfigError(ValueError)  TLS enabled with missing/unusable files
    +-- WriteBufferFullError        a slow reader's write buffer is at its cap
    +-- TimedOutError(TimeoutError, RuntimeError)
        +-- FailedPingError         no ping reply in time
            +-- PingUnreachableError(NetworkError)     the server cannot be reached
            +-- PingClosedError(ConnectionClosedError)  it closed without a reply

The built-in bases are those of peng3dnet 0.1.x (``except ValueError`` or
``except RuntimeError`` written for it keeps working); ours add
:class:`Peng3dNetError` and, where it helps, a more precise built-in.

Contract: the receive path of the protocol core raises only
:class:`RemoteProtocolError` (anything else raised while handling a packet
fails its connection as :class:`UnhandledPacketError`); encoders raise
:class:`LocalProtocolError`.
Every :class:`RemoteProtocolError` has a :attr:`~RemoteProtocolError.reason`,
the short string sent to the peer in ``closeconn``.
"""

from __future__ import annotations

__all__ = [
    "Peng3dNetError",
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "FrameTooLargeError",
    "DecodeError",
    "UnhandledPacketError",
    "InflateBudgetError",
    "HandshakeError",
    "RegistryError",
    "AlreadyRegisteredError",
    "UnknownPacketError",
    "InvalidAddressError",
    "InvalidHostError",
    "InvalidPortError",
    "UnsupportedAddressError",
    "InvalidSmartPacketActionError",
    "ConnectionClosedError",
    "AuthenticationError",
    "CallError",
    "RemoteCallError",
    "NetworkError",
    "TLSError",
    "TLSConfigError",
    "ConfigError",
    "WriteBufferFullError",
    "TimedOutError",
    "FailedPingError",
    "PingUnreachableError",
    "PingClosedError",
]


class Peng3dNetError(Exception):
    """Base class of every error raised by peng3dnet."""


class ProtocolError(Peng3dNetError):
    """A violation of the wire protocol, by us or by the peer."""


class LocalProtocolError(ProtocolError):
    """We were asked to do something the protocol forbids.

    Examples: sending an application packet before the handshake completed,
    encoding a value msgpack cannot represent, a frame above the size limit.
    """


class RemoteProtocolError(ProtocolError):
    """The peer sent something illegal; the connection must be closed.

    Args:
        message: Human readable description, for logs.
        reason: Short reason code sent to the peer in ``closeconn``.
    """

    default_reason = "protocolerror"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason: str = reason if reason is not None else self.default_reason
        """Close reason sent to the peer and reported in the close event."""


class FrameTooLargeError(RemoteProtocolError):
    """The peer announced or produced a packet above our size limit."""

    default_reason = "packettoolarge"


class DecodeError(RemoteProtocolError):
    """A header, a compressed body or a msgpack body could not be decoded."""

    default_reason = "invalidpacket"


class UnhandledPacketError(DecodeError):
    """A received packet whose handling raised an unexpected exception (its
    ``__cause__``: a value Python cannot handle, such as a msgpack value too
    deep for ``repr()``, or a bug): its connection is closed with
    ``"invalidpacket"`` and the traceback is logged; the network thread,
    the server and the other connections go on."""


class InflateBudgetError(RemoteProtocolError):
    """A peer sent compressed data beyond its decompression budget
    (``net.limits.inflate.*``); close reason ``"ratelimit"``."""

    default_reason = "ratelimit"


class HandshakeError(RemoteProtocolError):
    """The handshake failed: version or type mismatch, packet in the wrong state."""

    default_reason = "handshakeerror"


class RegistryError(Peng3dNetError, ValueError):
    """Invalid use of a packet registry (bad name, bad id, unknown packet)."""


class AlreadyRegisteredError(RegistryError):
    """A packet name, id or connection type is already taken."""


class UnknownPacketError(RegistryError, KeyError):
    """No packet is registered under that name, id or object.

    Also a :class:`KeyError`, as registry lookups of peng3dnet 0.1.x raised.
    """

    __str__ = Exception.__str__  # KeyError's would quote the message


class InvalidAddressError(Peng3dNetError, ValueError):
    """An address could not be parsed or resolved."""


class InvalidHostError(InvalidAddressError):
    """The host part of an address is empty or cannot be resolved."""


class InvalidPortError(InvalidAddressError):
    """The port of an address is not an int in 0..65535."""


class UnsupportedAddressError(Peng3dNetError, NotImplementedError):
    """An address of a kind this library cannot use (e.g. a socket family
    other than IPv4/IPv6)."""


class InvalidSmartPacketActionError(Peng3dNetError, ValueError):
    """A :class:`~peng3dnet.packet.SmartPacket` has an ``invalid_action``
    other than ``"ignore"`` or ``"close"`` and its check failed."""


class ConnectionClosedError(Peng3dNetError):
    """The operation needs an open connection, and it is closed.

    Args:
        message: Human readable description.
        reason: The close reason of the connection, if known.
    """

    def __init__(self, message: str = "connection closed", reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        """Why the connection was closed (``None`` when unknown)."""


class AuthenticationError(ConnectionClosedError):
    """A login was refused.

    Raised by a server's ``authenticate`` hook to refuse a client: the
    client is closed with the reason ``"auth:<reason>"`` (``reason`` if
    given, else the message; keep it short, the client sees it).  Raised on
    the client by :meth:`~peng3dnet.net.Client.wait_for_connection` when the
    server refused its credentials (:attr:`reason` is then the close reason,
    ``"auth:..."``).  A :class:`ConnectionClosedError`, so code that catches
    that keeps working.
    """


class CallError(Peng3dNetError):
    """Raise it in a handler answering a call to send an error back without
    it being logged as a bug: the caller gets a :class:`RemoteCallError`
    with this message (``remote_type`` ``"CallError"``, or the name of your
    subclass)."""


class RemoteCallError(CallError):
    """The other side could not answer a call: its handler raised (any
    exception: :attr:`remote_type` is its class name, the message its
    text), or no handler could answer (:attr:`unanswered`: an unknown
    packet, a ``SmartPacket`` not valid now).

    Args:
        message: The remote message.
        remote_type: The remote exception's class name.
        unanswered: No handler ran.
    """

    def __init__(self, message: str = "remote error", remote_type: str = "", unanswered: bool = False) -> None:
        super().__init__(f"{remote_type}: {message}" if remote_type else message)
        self.remote_message = message
        """The remote exception's message."""
        self.remote_type = remote_type
        """The remote exception's class name (e.g. ``"KeyError"``)."""
        self.unanswered = unanswered
        """Whether no handler ran at all."""


class NetworkError(Peng3dNetError, OSError):
    """An operating-system level network error (wraps :class:`OSError`,
    the cause, and is one: ``except OSError`` written for 0.1.x, which let
    the socket's error through, keeps working; its ``errno`` is ``None``).

    Args:
        message: Human readable description.
        reason: The close reason a connection gets for it.
    """

    default_reason = "socketerror"

    def __init__(self, message: str = "network error", reason: str | None = None) -> None:
        super().__init__(message)
        self.reason: str = reason if reason is not None else self.default_reason
        """The close reason (``socketerror``, ``tlserror``)."""


class TLSError(NetworkError):
    """The TLS handshake failed: certificate not trusted, wrong hostname,
    certificate required and missing, or the peer does not speak TLS."""

    default_reason = "tlserror"


class TLSConfigError(Peng3dNetError, ValueError):
    """TLS is enabled but configured with missing or unusable files."""


class ConfigError(Peng3dNetError, ValueError):
    """A config value has the wrong type or is not one of the allowed
    values (raised when the Server or Client is created, or when the key is
    set), naming the key, the value and what it must be."""


class WriteBufferFullError(Peng3dNetError):
    """The connection's write buffer is at ``net.limits.write_buffer`` and
    ``net.limits.write_buffer_action`` is ``"raise"``: the message was not queued."""


class TimedOutError(Peng3dNetError, TimeoutError, RuntimeError):
    """A wait with a timeout expired."""


class FailedPingError(TimedOutError):
    """A ping got no reply within its timeout (:func:`peng3dnet.ext.ping.pingServer`,
    :meth:`~peng3dnet.ext.ping.PingableClientMixin.wait_for_pong`)."""


class PingUnreachableError(FailedPingError, NetworkError):
    """:func:`~peng3dnet.ext.ping.pingServer` could not reach the server:
    a :class:`FailedPingError`, as 0.1.x reported every failed ping (``except
    FailedPingError`` in a server browser keeps working), and a
    :class:`NetworkError` (the cause)."""


class PingClosedError(FailedPingError, ConnectionClosedError):
    """The server closed the ping connection without a reply: a
    :class:`FailedPingError` (as in 0.1.x) and a
    :class:`ConnectionClosedError` with the close ``reason``."""
