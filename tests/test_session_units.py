"""The session's bookkeeping unit by unit (no sockets): the replay buffer's
cap exactly, the counters through sends, acknowledgements and a resume's
"what is still needed", the request validation's bounds and the
redaction of secrets in what events and logs show; the client's reconnect
back-off schedule (a recording reactor)."""

from __future__ import annotations

import pytest

from peng3dnet.session import TOKEN_BYTES, ReplayTotal, Session, redacted, valid_request

TOKEN = b"t" * TOKEN_BYTES


def test_a_new_session_starts_with_nothing_counted_or_pending():
    s = Session(TOKEN, cap=100)
    assert (s.tx, s.rx, s.acked, s.ack_sent, s.replay_bytes, s.peer_rx) == (0, 0, 0, 0, 0, 0)
    assert list(s.replay) == [] and s.unacked_from(0) == b""
    assert s.suspended is False and s.resuming is False and s.waiting is False
    assert s.ended is False and s.overflowed is False and s.established is False
    assert s.link is None and s.owner is None and s.cid is None


def test_the_replay_buffer_takes_frames_up_to_its_cap_exactly():
    s = Session(TOKEN, cap=10)
    assert s.sent(b"a" * 6) and s.sent(b"b" * 4)  # 10 bytes: at the cap
    assert (s.tx, s.replay_bytes) == (2, 10)
    assert s.sent(b"c") is False  # one byte over
    assert s.overflowed is True and (s.tx, s.replay_bytes) == (2, 10)
    s.ack(2)
    assert s.sent(b"d") is False  # an overflowed session stays over


def test_acknowledgements_forget_exactly_what_the_peer_received():
    s = Session(TOKEN, cap=100)
    for frame in (b"1", b"22", b"333"):
        s.sent(frame)
    assert s.ack(0) and (s.acked, s.replay_bytes) == (0, 6)
    assert s.ack(2) and (s.acked, s.replay_bytes, list(s.replay)) == (2, 3, [b"333"])
    assert s.ack(2) and s.acked == 2  # the same count again: nothing more forgotten
    assert s.ack(4) is False and (s.acked, s.replay_bytes) == (2, 3)  # more than was sent
    assert s.ack(3) and (s.acked, s.replay_bytes, list(s.replay)) == (3, 0, [])


def test_the_servers_total_counts_what_every_session_keeps_and_lets_go():
    totals = ReplayTotal(100)
    a = Session(b"a" * TOKEN_BYTES, 1000, totals)
    b = Session(b"b" * TOKEN_BYTES, 1000, totals)
    assert a.sent(b"x" * 40) and a.sent(b"y" * 30) and b.sent(b"z" * 20)
    assert totals.bytes == 90 and not totals.over
    assert b.sent(b"w" * 20) and totals.bytes == 110 and totals.over  # over: the server sheds
    assert a.ack(1) and totals.bytes == 70  # acknowledged: gone from both
    assert a.unacked_from(2) == b"" and totals.bytes == 40
    b.ended = True
    b.release()
    assert totals.bytes == 0 and b.replay_bytes == 0 and not b.replay
    assert b.sent(b"v" * 10) and totals.bytes == 0 and not b.replay  # over: nothing kept any more


def test_an_ack_or_a_resume_after_the_release_changes_nothing():
    """(An ack read in the same read as the close that ended the session.)"""
    totals = ReplayTotal(0)
    s = Session(b"a" * TOKEN_BYTES, 1000, totals)
    assert s.sent(b"x" * 10) and s.sent(b"y" * 10)
    s.ended = True
    s.release()
    assert s.ack(2) is True and s.unacked_from(1) is None
    assert totals.bytes == 0 and s.replay_bytes == 0


def test_a_zero_total_is_no_limit():
    totals = ReplayTotal(0)
    s = Session(b"a" * TOKEN_BYTES, 1000, totals)
    assert s.sent(b"x" * 500) and totals.bytes == 500 and not totals.over


def test_a_resume_gets_the_frames_the_peer_did_not_receive_in_order():
    s = Session(TOKEN, cap=100)
    for frame in (b"a", b"bb", b"ccc", b"dddd"):
        s.sent(frame)
    s.ack(1)
    assert s.unacked_from(0) is None  # already forgotten: cannot be replayed
    assert s.unacked_from(5) is None  # more than was sent
    assert s.unacked_from(2) == b"cccdddd"
    assert (s.acked, s.replay_bytes) == (2, 7)
    assert s.unacked_from(4) == b"" and (s.acked, s.replay_bytes) == (4, 0)


@pytest.mark.parametrize("received, ok", [(0, True), (2**63 - 1, True), (2**63, False), (-1, False),
                                          (True, False), (1.0, False)])
def test_a_resume_requests_count_must_be_a_non_negative_int64(received, ok):
    got = valid_request({"token": TOKEN, "received": received})
    assert got == ((TOKEN, received) if ok else None)


@pytest.mark.parametrize("value", [None, [], {"token": TOKEN}, {"token": b"x" * (TOKEN_BYTES - 1), "received": 0},
                                   {"token": "t" * TOKEN_BYTES, "received": 0}])
def test_a_malformed_resume_request_is_refused(value):
    assert valid_request(value) is None


def test_secrets_are_redacted_and_nothing_else():
    msg = {"conntype": "classic", "peng3dnet.resume": {"token": TOKEN}, "peng3dnet.credentials": "pw"}
    assert redacted(msg) == {"conntype": "classic", "peng3dnet.resume": "<redacted>",
                             "peng3dnet.credentials": "<redacted>"}
    plain = {"conntype": "classic", "x": 1}
    assert redacted(plain) is plain  # nothing secret: shown as is
    assert redacted(["peng3dnet.session"]) == ["peng3dnet.session"]  # only a dict's keys are secrets
    assert redacted("peng3dnet.session") == "peng3dnet.session"


class _Timers:
    """A reactor stand-in for the client's back-off: records call_later."""

    stopping = False

    def __init__(self):
        self.later = []

    def call_later(self, delay, fn):
        self.later.append(delay)


@pytest.mark.parametrize("jitter", ["low", "high"])
def test_the_reconnect_back_off_doubles_from_its_delay_up_to_max_delay_then_gives_up(monkeypatch, jitter):
    """Attempt n waits net.client.reconnect.delay * 2**(n-1), at most
    net.client.reconnect.max_delay, times a jitter in [0.5, 1.0]; after
    net.client.reconnect attempts the session ends with 'resume:failed'."""
    import peng3dnet.client as client_mod
    from peng3dnet.net import Client

    monkeypatch.setattr(client_mod.random, "uniform", lambda a, b: a if jitter == "low" else b)
    c = Client(addr=("127.0.0.1", 1), cfg={"net.client.reconnect": 6, "net.client.reconnect.delay": 0.1,
                                           "net.client.reconnect.max_delay": 1.0})
    timers = _Timers()
    events, ended = [], []
    monkeypatch.setattr(c, "_reactor", timers)
    monkeypatch.setattr(c, "_emit", lambda name, data: events.append((name, dict(data))))
    monkeypatch.setattr(c, "_session_end", lambda session, reason: ended.append(reason))
    s = Session(TOKEN, cap=100)
    for _ in range(6):
        c._schedule_reconnect(s)
    k = 0.5 if jitter == "low" else 1.0
    want = [round(d * k, 9) for d in (0.1, 0.2, 0.4, 0.8, 1.0, 1.0)]
    assert [round(d, 9) for d in timers.later] == want
    assert [(e[0], e[1]["attempt"], round(e[1]["delay"], 9)) for e in events] == [
        ("peng3dnet:client.reconnecting", i + 1, d) for i, d in enumerate(want)]
    assert ended == [] and s.attempt == 6
    c._schedule_reconnect(s)  # a seventh: no more attempts
    assert ended == ["resume:failed"] and len(timers.later) == 6 and s.attempt == 6
