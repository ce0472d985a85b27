"""Packet classes: what an application registers to send and receive messages.

A packet object is registered under a name with
:meth:`~peng3dnet.net.Server.register_packet`.  The library calls exactly
two of its methods, as peng3dnet 0.1.x did:

* :meth:`Packet._receive` ``(msg, cid)`` for every application packet
  received, on the thread that runs ``process()`` (or on the network thread
  with ``net.process.inline``); the base calls :meth:`Packet.receive`.
* :meth:`Packet._send` ``(msg, cid)`` for every application packet sent,
  on the sending thread, *after* the message was queued; the base calls
  :meth:`Packet.send`.

Programs override ``_receive``/``_send`` to add checks of their own and may
give their packet classes any other method (a ``check()`` of their own, for
example): the library never calls one.

A plain :class:`Packet` checks nothing (the peer refuses application
packets that arrive before the handshake, closing with ``smartpacketinvalid``).  A :class:`SmartPacket` checks
the *application's* view of the connection (``ClientOnServer.state`` /
``Client.remote_state``, ``mode``, ``conntype``, ``ssl_seclevel``) when the
packet is processed, so a handler that moves a connection to
``STATE_LOGGEDIN`` changes how the very next packet is checked.
"""

from __future__ import annotations

import logging
from typing import Any

from ..constants import *  # noqa: F403  (0.1.x: peng3dnet.packet exposes the constants)
from ..constants import MODE_CLOSED, SIDE_CLIENT, SIDE_SERVER, SSLSEC_NONE, STATE_ACTIVE, STATE_CLOSED, STATE_LOGGEDIN
from ..errors import InvalidSmartPacketActionError
from ..userlog import user_log

__all__ = ["Packet", "SmartPacket", "PrintPacket", "FunctionPacket", "smart_check"]

log = logging.getLogger(__name__)
_WARNED: set[type] = set()  # SmartPacket classes warned about STATE_LOGGEDIN (once each)


class Packet:
    """Base class of application packets.

    Args:
        reg: The registry the packet is registered in.
        peer: The :class:`~peng3dnet.net.Server` or :class:`~peng3dnet.net.Client`.
        obj: Any object the packet wants to keep (e.g. a game object).

    Override :meth:`receive` to handle incoming messages and, optionally,
    :meth:`send` to be told of outgoing ones.
    """

    answers = False
    """Whether a call (``peer.call(name, ...)``) of this packet gets what
    :meth:`receive` returns as its answer.  Off by default: a handler
    written for plain messages never sends back what it happens to return
    (a call of it fails with ``RemoteCallError``, ``unanswered``).  Set it
    on a class whose ``receive`` returns answers; ``handler()`` functions
    answer."""

    def __init__(self, reg: Any, peer: Any, obj: Any = None) -> None:
        self.reg = reg
        """The registry this packet belongs to."""
        self.peer = peer
        """The Server or Client this packet belongs to."""
        self.obj = obj
        """Free slot for the application."""

    def _receive(self, msg: Any, cid: int | None = None) -> None:
        """Called by the library for every message received; calls :meth:`receive`.

        Override it to add checks that run before :meth:`receive`.

        Thread safety: the thread that calls ``process()``.
        """
        self.receive(msg, cid)

    def receive(self, msg: Any, cid: int | None = None) -> None:
        """Handle a received message.

        Args:
            msg: The decoded message.
            cid: Connection id on a server, ``None`` on a client.

        Thread safety: runs on the thread that calls ``process()`` (the
        process thread, or the game loop).
        """

    def _send(self, msg: Any, cid: int | None = None) -> None:
        """Called by the library after a message was queued; calls :meth:`send`.

        Thread safety: the thread that called ``send_message()``.
        """
        self.send(msg, cid)

    def send(self, msg: Any, cid: int | None = None) -> None:
        """Hook: ``msg`` was queued for sending to ``cid`` (``None`` on a client).

        Thread safety: the thread that called ``send_message()``.
        """


def _match(want: Any, value: Any) -> bool:
    """``want`` is one value, or a collection of values (an extension of
    0.1.x, where it was always one value)."""
    if isinstance(want, (int, str)):
        return value == want
    return value in want


def _conn_view(peer: Any, cid: int | None) -> tuple[int, int, str, int, int]:
    """``(state, mode, conntype, ssl_seclevel, side)`` of the application's
    view of one connection; a connection that is gone reads as closed."""
    if getattr(peer, "is_server", False):
        client = peer.clients.get(cid)
        if client is None:
            return STATE_CLOSED, MODE_CLOSED, "", SSLSEC_NONE, SIDE_SERVER
        return client.state, client.mode, client.conntype, client.ssl_seclevel, SIDE_SERVER
    return peer.remote_state, peer.mode, peer.conntype, peer.ssl_seclevel, SIDE_CLIENT


def smart_check(pobj: Any, cid: int | None, *, receiving: bool) -> bool:
    """Whether a :class:`SmartPacket` is valid on connection ``cid`` now.

    Reads only the packet class's attributes and the peer's public view of
    the connection; the library uses it for the opt-in strict send check
    (``net.smartpacket.strict_send``) without calling a method of the packet.

    Args:
        pobj: The packet object (its ``peer`` is asked).
        cid: The connection id (``None`` on a client).
        receiving: ``True`` when the packet was received, ``False`` when sent.
    """
    cls = type(pobj)
    state, mode, conntype, sslsec, side = _conn_view(pobj.peer, cid)
    want_side = cls.side
    if want_side is not None and (want_side == side) != receiving:
        return False  # `side` names the side that receives the packet
    if cls.state is not None and not _match(cls.state, state):
        return False
    if cls.mode is not None and not _match(cls.mode, mode):
        return False
    if cls.conntype is not None and not _match(cls.conntype, conntype):
        return False
    return sslsec >= cls.min_sslsec_level


class SmartPacket(Packet):
    """A packet that declares where and when it is valid.

    On receive, :meth:`receive` runs only when :func:`smart_check` passes;
    otherwise ``invalid_action`` decides.  On send the message is always sent
    (0.1.x semantics; ``net.smartpacket.strict_send`` makes a failed check
    raise before anything is sent) and the check decides whether
    :meth:`send` runs, ``"close"`` closing the connection.
    """

    state: Any = STATE_ACTIVE
    """The connection state (``ClientOnServer.state`` / ``Client.remote_state``)
    the packet needs, exact match; a collection allows several, ``None`` any."""
    side: Any = None
    """The side that *receives* the packet: ``SIDE_SERVER`` (clients send
    it), ``SIDE_CLIENT`` (the server sends it) or ``None`` (both)."""
    mode: Any = None
    """Required ``MODE_*`` (one value or a collection), or ``None`` for any."""
    conntype: Any = None
    """Required connection type (one name or a collection), or ``None`` for any."""
    min_sslsec_level = SSLSEC_NONE
    """Lowest ``SSLSEC_*`` level of the connection."""
    invalid_action = "ignore"
    """What a failed check does: ``"ignore"`` (drop quietly), ``"close"``
    (close the connection, reason ``smartpacketinvalid``); anything else
    raises :class:`~peng3dnet.errors.InvalidSmartPacketActionError`."""

    def _receive(self, msg: Any, cid: int | None = None) -> None:
        if smart_check(self, cid, receiving=True):
            self.receive(msg, cid)
        else:
            self._invalid(cid, "received")

    def _send(self, msg: Any, cid: int | None = None) -> None:
        if smart_check(self, cid, receiving=False):
            self.send(msg, cid)
        else:
            self._invalid(cid, "sent")

    def _invalid(self, cid: int | None, what: str) -> None:
        cls = type(self)
        if what == "received" and cls.state == STATE_ACTIVE and cls not in _WARNED:
            if _conn_view(self.peer, cid)[0] == STATE_LOGGEDIN:
                _WARNED.add(cls)
                log.warning(
                    "%s wants state STATE_ACTIVE but the client is STATE_LOGGEDIN (a login hook accepted it): "
                    "declare state = STATE_LOGGEDIN (or (STATE_ACTIVE, STATE_LOGGEDIN)) on packets for logged-in "
                    "clients; this packet is %s",
                    cls.__name__,
                    "closing the connection" if self.invalid_action == "close" else "ignored",
                )
        action = self.invalid_action
        if action == "ignore":
            log.debug("! cid=%s: %s %s not valid now, ignored", cid, type(self).__name__, what)
        elif action == "close":
            log.info("! cid=%s: %s %s not valid now, closing", cid, type(self).__name__, what)
            self.peer.close_connection(cid, "smartpacketinvalid")
        else:
            raise InvalidSmartPacketActionError(
                f"{type(self).__name__}.invalid_action is {action!r}; use 'ignore' or 'close'"
            )


class FunctionPacket(Packet):
    """A packet whose handler is a function ``fn(msg, cid)`` (the
    ``obj``); what it returns answers a call.  Made by the peers'
    ``handler(name)`` decorator."""

    answers = True

    def receive(self, msg: Any, cid: int | None = None) -> Any:
        return self.obj(msg, cid)


class PrintPacket(Packet):
    """A packet that prints every message it receives (through the
    ``peng3dnet.user`` logger: on stderr when logging is not configured)."""

    def receive(self, msg: Any, cid: int | None = None) -> None:
        user_log.info("PrintPacket: cid=%s %r", cid, msg)
