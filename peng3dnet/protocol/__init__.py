"""The sans-I/O protocol core: bytes in, outputs out; outputs in, bytes out.

Nothing in this package touches sockets, threads, clocks, pyglet or blinker
(``tests/test_layering.py`` checks the imports).
"""

from __future__ import annotations

from .connection import (
    ConnectionClosed,
    ConnTypeRequested,
    HandshakeCompleted,
    HeartbeatAcked,
    Output,
    PacketReceived,
    PacketSent,
    ProtocolConnection,
)
from .framing import FrameDecoder, encode_frame
from .handshake import HandshakeInput, HandshakeMachine, HandshakeState

__all__ = [
    "ConnectionClosed",
    "ConnTypeRequested",
    "FrameDecoder",
    "HandshakeCompleted",
    "HeartbeatAcked",
    "HandshakeInput",
    "HandshakeMachine",
    "HandshakeState",
    "Output",
    "PacketReceived",
    "PacketSent",
    "ProtocolConnection",
    "encode_frame",
]
