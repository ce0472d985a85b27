"""The internal packets of protocol version 2 (fixed ids 1-4 and 16).

They are registered in every registry so that the handshake's registry
comparison matches a version-2 peer's.  The protocol core
(:mod:`peng3dnet.protocol.connection`) handles them; these objects never
receive anything through ``process()``.
"""

from __future__ import annotations

from ..constants import INTERNAL_PACKET_IDS, PID_CLOSECONN, PID_HANDSHAKE, PID_HANDSHAKE_ACCEPT, PID_HELLO, PID_SETTYPE
from . import Packet

__all__ = [
    "INTERNAL_PACKETS",
    "HelloPacket",
    "SetTypePacket",
    "HandshakePacket",
    "HandshakeAcceptPacket",
    "CloseConnectionPacket",
]


class _InternalPacket(Packet):
    state = None


class HelloPacket(_InternalPacket):
    """``peng3dnet:internal.hello``: server -> client, first packet."""


class SetTypePacket(_InternalPacket):
    """``peng3dnet:internal.settype``: client -> server, the connection type."""


class HandshakePacket(_InternalPacket):
    """``peng3dnet:internal.handshake``: server -> client, the registry."""


class HandshakeAcceptPacket(_InternalPacket):
    """``peng3dnet:internal.handshake.accept``: client -> server, handshake done."""


class CloseConnectionPacket(_InternalPacket):
    """``peng3dnet:internal.closeconn``: either side, with a reason."""


_CLASSES: dict[int, type[Packet]] = {
    PID_HELLO: HelloPacket,
    PID_SETTYPE: SetTypePacket,
    PID_HANDSHAKE: HandshakePacket,
    PID_HANDSHAKE_ACCEPT: HandshakeAcceptPacket,
    PID_CLOSECONN: CloseConnectionPacket,
}
INTERNAL_PACKETS: tuple[tuple[str, int, type[Packet]], ...] = tuple(
    (name, pid, _CLASSES[pid]) for name, pid in INTERNAL_PACKET_IDS.items()
)
"""``(name, id, class)`` of every internal packet, registered by ``initialize()``."""
