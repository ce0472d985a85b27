"""Connection types: what a connection does after ``settype``.

A client chooses a connection type by name in ``settype``; the server looks
the name up among the types registered with ``addConnType()`` (``classic``
and ``ping`` always are) and closes with ``unknownconntype`` otherwise.

A connection type object sees every non-internal packet of its connections
before the registry does (:meth:`ConnectionType.receive`), and every
application packet before it is sent (:meth:`ConnectionType.send`).

Thread safety: :meth:`~ConnectionType.init` and
:meth:`~ConnectionType.receive` run on the network thread;
:meth:`~ConnectionType.send` on the thread that calls ``send_message()``.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from .constants import *  # noqa: F403  (0.1.x: peng3dnet.conntypes exposes the constants)
from .constants import (
    MODE_NOTSET,
    MODE_PING,
    PID_PING_REPLY,
    PID_PING_REQUEST,
    SIDE_CLIENT,
    SIDE_SERVER,
)
from .protocol.describe import fits
from .userlog import report_user_error
from .version import PROTOVERSION, RELEASE, VERSION

__all__ = ["ConnectionType", "ClassicConnectionType", "PingConnectionType", "PeerHandle"]

log = logging.getLogger(__name__)


class PeerHandle(Protocol):
    """What a connection type may use of its peer (a Server or Client).

    Connection types sit below the facades: they call the peer only through
    these public members, never by private name.
    """

    side: int
    """``SIDE_SERVER`` or ``SIDE_CLIENT``."""

    def send_raw(self, cid: int | None, pid: int, msg: Any) -> None:
        """Send a packet by raw id (not in the registry)."""

    def close_connection(self, cid: Any = None, reason: str | None = None) -> None:
        """Close one connection."""


class ConnectionType:
    """Base class of connection types.

    Args:
        peer: The Server or Client the type is registered on.
    """

    mode = MODE_NOTSET
    """The ``MODE_*`` a connection of this type starts in (set on the
    ClientOnServer / Client when the type is chosen, unless the application
    already set a mode)."""

    def __init__(self, peer: Any) -> None:
        self.peer = peer
        """The Server or Client (used through :class:`PeerHandle`; a
        server also has ``begin_handshake(cid)``)."""

    def init(self, cid: int | None) -> None:
        """Called once the connection chose this type (server: after
        ``settype`` arrived; client: after ``settype`` was sent)."""

    def receive(self, msg: Any, pid: int, flags: int, cid: int | None) -> bool:
        """See a received application packet first (network thread).

        Returns:
            ``True`` if this type consumed it: nothing more is done with it
            (no ``recv`` event, no packet handler, no ``on_receive``);
            ``False`` (or ``None``) to process it normally.  As in 0.1.x.
        """
        return False

    def send(self, data: Any, pid: Any, cid: int | None) -> bool:
        """See an application packet before it is sent (the sending
        thread); ``pid`` is the packet as the program named it (id, name or
        packet object, as given to ``send_message``).

        Returns:
            ``True`` to send it quietly: it is sent, but no ``send`` event
            is emitted and neither ``on_send`` nor the packet's
            ``_send``/``send`` hook is called; ``False`` (or ``None``) for
            all of them.  As in 0.1.x.
        """
        return False


class ClassicConnectionType(ConnectionType):
    """The default type: the server answers with the registry handshake."""

    mode = MODE_NOTSET

    def init(self, cid: int | None) -> None:
        if self.peer.side == SIDE_SERVER:
            assert cid is not None
            self.peer.begin_handshake(cid)


MAX_PING_REQUEST = 16 * 1024
"""The largest ping request the server echoes whole in its reply's
``oldmsg`` (its strings' and bytes' lengths plus one per value, see
:func:`~peng3dnet.protocol.describe.fits`); of a larger one it echoes
only ``time`` (what 0.1.x and our clients read of it)."""


class PingConnectionType(ConnectionType):
    """Query a server without a handshake: raw request 64, raw reply 65.

    The server's reply holds the request (``oldmsg``), the server's ping data
    (``getPingData(msg, cid)`` when the server defines it, see
    :class:`peng3dnet.ext.ping.PingableServerMixin`) and its ``peng3dnet``
    version info.  The client stores the reply with ``delay`` (seconds) and
    ``recvtime`` in :attr:`result` and closes with reason ``pingcomplete``.
    The request carries ``time`` and the client's ``ping_request_data``
    attribute (a dict, if it has one).
    """

    mode = MODE_PING

    def __init__(self, peer: Any) -> None:
        super().__init__(peer)
        self.result: dict[str, Any] | None = None
        """Client side: the server's reply with ``delay`` and ``recvtime``
        added, once it arrived."""

    def init(self, cid: int | None) -> None:
        if self.peer.side == SIDE_CLIENT:
            msg = dict(getattr(self.peer, "ping_request_data", None) or {})
            msg["time"] = time.time()
            self.peer.send_raw(None, PID_PING_REQUEST, msg)

    def receive(self, msg: Any, pid: int, flags: int, cid: int | None) -> bool:
        peer = self.peer
        if peer.side == SIDE_SERVER:
            if pid != PID_PING_REQUEST or not isinstance(msg, dict):
                peer.close_connection(cid, "invalidpingpacket")
                return True
            if not fits(msg, MAX_PING_REQUEST):
                # Echoed in the reply: encoding (and compressing) it again is
                # work done for the peer.  0.1.x clients read only its time,
                # a number (anything else of any size would be echoed whole).
                log.info("! server cid=%s: ping request larger than %d bytes: echoing its time only", cid,
                         MAX_PING_REQUEST)
                sent = msg.get("time")
                msg = {"time": sent if isinstance(sent, (int, float)) else None}
            reply: dict[str, Any] = {"oldmsg": msg}
            get = getattr(peer, "getPingData", None)
            if get is not None:
                try:
                    reply.update(get(msg, cid))
                except Exception:
                    report_user_error("! getPingData raised; replying without server data")
            reply["peng3dnet"] = {"version": VERSION, "release": RELEASE, "protoversion": PROTOVERSION}
            peer.send_raw(cid, PID_PING_REPLY, reply)
            return True
        if pid != PID_PING_REPLY or not isinstance(msg, dict):
            peer.close_connection(None, "invalidpingpacket")
            return True
        now = time.time()
        result = dict(msg)
        old = msg.get("oldmsg")
        sent = old.get("time") if isinstance(old, dict) else None
        result["recvtime"] = now
        result["delay"] = now - sent if isinstance(sent, (int, float)) else None
        self.result = result
        peer.close_connection(None, "pingcomplete")
        return True
