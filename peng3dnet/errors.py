"""Typed errors of peng3dnet.

Hierarchy::

    Peng3dNetError(Exception)
    +-- ProtocolError
    |   +-- LocalProtocolError      we were asked to do something illegal
    |   +-- RemoteProtocolError     the peer sent something illegal
    |       +-- FrameTooLargeError
    |       +-- DecodeError         bad header / msgpack / compressed data
    |       +-- HandshakeError      version or conntype mismatch, wrong state
    +-- RegistryError(ValueError)
    |   +-- AlreadyRegisteredError
    +-- InvalidAddressError(ValueError)
    +-- ConnectionClosedError
    +-- NetworkError                wraps OSError at the transport boundary
    |   +-- TLSError                TLS handshake failed (bad certificate, no TLS peer)
    +-- TLSConfigError(ValueError)  TLS enabled with missing/unusable files
    +-- WriteBufferFullError        a slow reader's write buffer is at its cap
    +-- TimedOutError(TimeoutError)

Contract: the receive path of the protocol core raises only
:class:`RemoteProtocolError`; encoders raise :class:`LocalProtocolError`.
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
    "HandshakeError",
    "RegistryError",
    "AlreadyRegisteredError",
    "InvalidAddressError",
    "ConnectionClosedError",
    "NetworkError",
    "TLSError",
    "TLSConfigError",
    "WriteBufferFullError",
    "TimedOutError",
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


class HandshakeError(RemoteProtocolError):
    """The handshake failed: version or type mismatch, packet in the wrong state."""

    default_reason = "handshakeerror"


class RegistryError(Peng3dNetError, ValueError):
    """Invalid use of a packet registry (bad name, bad id, unknown packet)."""


class AlreadyRegisteredError(RegistryError):
    """A packet name, id or connection type is already taken."""


class InvalidAddressError(Peng3dNetError, ValueError):
    """An address could not be parsed or resolved."""


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


class NetworkError(Peng3dNetError):
    """An operating-system level network error (wraps :class:`OSError`)."""


class TLSError(NetworkError):
    """The TLS handshake failed: certificate not trusted, wrong hostname,
    certificate required and missing, or the peer does not speak TLS."""


class TLSConfigError(Peng3dNetError, ValueError):
    """TLS is enabled but configured with missing or unusable files."""


class WriteBufferFullError(Peng3dNetError):
    """The connection's write buffer is at ``net.limits.write_buffer`` and
    ``net.limits.write_buffer_action`` is ``"raise"``: the message was not queued."""


class TimedOutError(Peng3dNetError, TimeoutError):
    """A wait with a timeout expired."""
