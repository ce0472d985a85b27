"""The handshake state machine: every state x input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peng3dnet.errors import HandshakeError
from peng3dnet.protocol.handshake import OPEN_STATES, HandshakeInput, HandshakeMachine, HandshakeState

S, I = HandshakeState, HandshakeInput  # noqa: E741


def test_classic_flow():
    m = HandshakeMachine()
    for inp, st_ in [
        (I.HELLO, S.HELLO),
        (I.SETTYPE, S.TYPESET),
        (I.HANDSHAKE, S.HANDSHAKE),
        (I.HANDSHAKE_ACCEPT, S.ACTIVE),
        (I.APPLICATION, S.ACTIVE),
        (I.CLOSECONN, S.CLOSED),
    ]:
        assert m.process(inp) is st_


def test_out_of_order_is_an_error_and_lands_in_error():
    m = HandshakeMachine()
    with pytest.raises(HandshakeError) as ei:
        m.process(I.HANDSHAKE)
    assert m.state is S.ERROR and ei.value.reason == "invalidstate"


@given(st.sampled_from(list(HandshakeState)), st.sampled_from(list(HandshakeInput)))
def test_every_pair_ends_valid_or_in_error(state, inp):
    m = HandshakeMachine()
    m.state = state
    try:
        new = m.process(inp)
    except HandshakeError:
        assert m.state is S.ERROR
    else:
        assert new in HandshakeState
        if state not in OPEN_STATES:
            pytest.fail("a terminal state accepted an input")


@given(st.lists(st.sampled_from(list(HandshakeInput)), max_size=20))
def test_any_sequence(inputs):
    m = HandshakeMachine()
    for inp in inputs:
        try:
            m.process(inp)
        except HandshakeError:
            assert m.state is S.ERROR
            break
    assert m.state in HandshakeState
