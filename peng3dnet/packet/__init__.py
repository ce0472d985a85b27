"""Packet classes: what an application registers to send and receive messages.

A packet object is registered under a name with
:meth:`~peng3dnet.net.Server.register_packet`; incoming messages with its id
are handed to its :meth:`Packet.receive` by ``process()``.

Which packets may arrive when is decided here (the protocol core only frames
and decodes them): :meth:`Packet.check` compares the connection's state with
the class attributes.  A plain :class:`Packet` is accepted only on an active
(handshaken) connection; a :class:`SmartPacket` can also restrict the sending
side, the connection mode and type and the TLS security level, and chooses
with ``invalid_action`` whether a packet arriving when it must not is
ignored or closes the connection (reason ``smartpacketinvalid``).
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

from ..constants import SIDE_BOTH, SIDE_CLIENT, SIDE_SERVER, SSLSEC_NONE, STATE_ACTIVE

__all__ = ["Packet", "SmartPacket", "PrintPacket", "ConnInfo"]

log = logging.getLogger(__name__)


class ConnInfo(NamedTuple):
    """What :meth:`Packet.check` needs to know about a connection."""

    state: int
    """The connection's ``STATE_*``."""
    side: int
    """Our side: ``SIDE_SERVER`` or ``SIDE_CLIENT``."""
    mode: int
    """The connection's ``MODE_*``."""
    conntype: str
    """The connection type name."""
    sslsec: int
    """The connection's ``SSLSEC_*`` level."""


class Packet:
    """Base class of application packets.

    Args:
        reg: The registry the packet is registered in.
        peer: The :class:`~peng3dnet.net.Server` or :class:`~peng3dnet.net.Client`.
        obj: Any object the packet wants to keep (e.g. a game object).

    Override :meth:`receive` to handle incoming messages and, optionally,
    :meth:`send` to transform outgoing ones.
    """

    state: Any = STATE_ACTIVE
    """State(s) in which the packet is accepted: an int, a collection of ints,
    or ``None`` for any state."""
    invalid_action = "close"
    """What to do with a packet received when it is not allowed: ``"close"``
    (close the connection, reason ``smartpacketinvalid``) or ``"ignore"``."""

    def __init__(self, reg: Any, peer: Any, obj: Any = None) -> None:
        self.reg = reg
        """The registry this packet belongs to."""
        self.peer = peer
        """The Server or Client this packet belongs to."""
        self.obj = obj
        """Free slot for the application."""

    def receive(self, msg: Any, cid: int | None = None) -> None:
        """Handle a received message.

        Args:
            msg: The decoded message.
            cid: Connection id on a server, ``None`` on a client.

        Thread safety: runs on the thread that calls ``process()`` (the
        process thread, or the game loop).
        """

    def send(self, msg: Any, cid: int | None = None) -> Any:
        """Hook called before ``msg`` is sent; return a replacement or ``None``.

        Thread safety: runs on the thread that calls ``send_message()``.
        """
        return None

    @classmethod
    def check(cls, info: ConnInfo, *, sending: bool = False) -> bool:
        """Return whether the packet may be received (or sent) on a connection."""
        return _state_ok(cls.state, info.state)


def _state_ok(allowed: Any, state: int) -> bool:
    if allowed is None:
        return True
    if isinstance(allowed, int):
        return state == allowed
    return state in allowed


class SmartPacket(Packet):
    """A packet that declares where and when it is valid.

    Every attribute is checked on receive; ``state``, ``side``, ``mode``,
    ``conntype`` and ``min_sslsec_level`` are also checked on send (a send
    that fails the check raises :class:`~peng3dnet.errors.LocalProtocolError`).
    """

    side = SIDE_BOTH
    """The side that sends this packet: ``SIDE_SERVER``, ``SIDE_CLIENT`` or
    ``SIDE_BOTH``.  A server receiving a ``SIDE_SERVER`` packet rejects it."""
    min_sslsec_level = SSLSEC_NONE
    """Lowest ``SSLSEC_*`` level of the connection for the packet to be sent
    or accepted."""
    mode: Any = None
    """Required ``MODE_*`` (int or collection), or ``None`` for any."""
    conntype: Any = None
    """Required connection type (str or collection), or ``None`` for any."""
    invalid_action = "ignore"

    @classmethod
    def check(cls, info: ConnInfo, *, sending: bool = False) -> bool:
        if not _state_ok(cls.state, info.state):
            return False
        if cls.side != SIDE_BOTH:
            sender = info.side if sending else (SIDE_CLIENT if info.side == SIDE_SERVER else SIDE_SERVER)
            if cls.side != sender:
                return False
        if info.sslsec < cls.min_sslsec_level:
            return False
        if cls.mode is not None and not _state_ok(cls.mode, info.mode):
            return False
        if cls.conntype is not None:
            allowed = (cls.conntype,) if isinstance(cls.conntype, str) else cls.conntype
            if info.conntype not in allowed:
                return False
        return True


class PrintPacket(Packet):
    """A packet that logs every message it receives (at INFO), for debugging."""

    def receive(self, msg: Any, cid: int | None = None) -> None:
        log.info("< cid=%s %r", cid, msg)
