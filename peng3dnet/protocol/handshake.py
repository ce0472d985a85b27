"""The connection state machine of protocol version 2.

Theory of operation
-------------------
Both ends of a connection walk the same states, each from its own point of
view; the table below does not depend on which side we are.

Rule 1 (transitions): a state changes only through ``_TRANSITIONS``.  An
input is an *internal packet observed on the connection*, whether we sent it
or received it: sending ``hello`` and receiving ``hello`` are the same input.
A pair that is not in the table is a protocol violation: the machine moves to
``ERROR`` and :class:`~peng3dnet.errors.HandshakeError` is raised.

Rule 2 (direction): each handshake packet has one side that may send it
(``SENDER``).  Receiving a packet that only our own side may send is a
violation; :class:`~peng3dnet.protocol.connection.ProtocolConnection`
checks it before feeding the input here.

Rule 3 (application packets): ``APPLICATION`` (any id the core does not own)
loops on every open state.  Whether an application packet is acceptable in
the current state is decided by its packet class
(:class:`~peng3dnet.packet.SmartPacket`) and the connection type, not here:
a ``ping`` connection exchanges raw packets in ``TYPESET``.

Rule 4 (ending): ``CLOSECONN`` and ``EOF`` end every open state in
``CLOSED``; ``CLOSED`` and ``ERROR`` are terminal.

The flow of a classic connection::

    INIT --hello--> HELLO --settype--> TYPESET --handshake--> HANDSHAKE
         --handshake.accept--> ACTIVE --closeconn/eof--> CLOSED
"""

from __future__ import annotations

import enum

from ..constants import SIDE_CLIENT, SIDE_SERVER
from ..errors import HandshakeError

__all__ = ["HandshakeState", "HandshakeInput", "HandshakeMachine", "SENDER", "OPEN_STATES"]


class HandshakeState(enum.Enum):
    """The library's protocol state of a connection.

    Not the application-visible ``STATE_*`` of :mod:`peng3dnet.constants`
    (``ClientOnServer.state``, ``Client.remote_state``), which the
    application may set; this one only the protocol moves (exposed as
    ``protocol_state``).  A plain :class:`enum.Enum`, so it never compares
    equal to one of those ints.
    """

    INIT = 0
    HELLO = 1
    TYPESET = 2
    HANDSHAKE = 3
    ACTIVE = 4
    CLOSED = 5
    ERROR = 6


class HandshakeInput(enum.Enum):
    """What can happen on a connection."""

    HELLO = "hello"
    SETTYPE = "settype"
    HANDSHAKE = "handshake"
    HANDSHAKE_ACCEPT = "handshake.accept"
    CLOSECONN = "closeconn"
    APPLICATION = "application"
    EOF = "eof"


S = HandshakeState
I = HandshakeInput  # noqa: E741

OPEN_STATES = frozenset({S.INIT, S.HELLO, S.TYPESET, S.HANDSHAKE, S.ACTIVE})
"""States in which the connection is open."""

_TRANSITIONS: dict[tuple[HandshakeState, HandshakeInput], HandshakeState] = {
    (S.INIT, I.HELLO): S.HELLO,
    (S.HELLO, I.SETTYPE): S.TYPESET,
    (S.TYPESET, I.HANDSHAKE): S.HANDSHAKE,
    (S.HANDSHAKE, I.HANDSHAKE_ACCEPT): S.ACTIVE,
}
for _s in OPEN_STATES:
    _TRANSITIONS[(_s, I.APPLICATION)] = _s
    _TRANSITIONS[(_s, I.CLOSECONN)] = S.CLOSED
    _TRANSITIONS[(_s, I.EOF)] = S.CLOSED
del _s

SENDER: dict[HandshakeInput, int] = {
    I.HELLO: SIDE_SERVER,
    I.SETTYPE: SIDE_CLIENT,
    I.HANDSHAKE: SIDE_SERVER,
    I.HANDSHAKE_ACCEPT: SIDE_CLIENT,
}
"""Rule 2: the only side allowed to send each handshake packet."""


class HandshakeMachine:
    """Tracks the state of one connection.

    Pure: no I/O, no clock.  Every transition goes through :meth:`process`.
    """

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state: HandshakeState = S.INIT
        """Current state."""

    def process(self, inp: HandshakeInput) -> HandshakeState:
        """Apply one input.

        Returns:
            The new state.

        Raises:
            HandshakeError: ``inp`` is not allowed in the current state; the
                machine is now in ``ERROR``.
        """
        try:
            self.state = _TRANSITIONS[(self.state, inp)]
        except KeyError:
            old = self.state
            self.state = S.ERROR
            raise HandshakeError(f"{inp.value} is not allowed in state {old.name}", "invalidstate") from None
        return self.state

    def fail(self) -> None:
        """Move to ``ERROR`` (after a protocol error found elsewhere)."""
        self.state = S.ERROR

    @property
    def is_open(self) -> bool:
        """Whether the connection is neither closed nor failed."""
        return self.state in OPEN_STATES
