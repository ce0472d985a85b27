"""peng3dnet.ext.sync.client, unit by unit on a FakeClient with a fake
clock (no sockets, no sleeps): the documented defaults, registration, acks,
the kept bases, desync counting and its log line, the render buffer and the
clock offset, rendering of the own entity, and reconciliation's stats."""

from __future__ import annotations

import logging
import time

import pytest

import peng3dnet.ext.sync.client as client_mod
from peng3dnet.errors import Peng3dNetError
from peng3dnet.ext.sync import INPUT_PACKET, SNAPSHOT_PACKET, SyncClient
from peng3dnet.packet import Packet
from tests.ext.sync_world import move
from tests.ext.test_sync_client import FakeClient, snapshot

LOGGER = client_mod.__name__


class Clock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def feed(c: FakeClient, sc: SyncClient, clock: Clock, tick: int, view, *args, **kw) -> None:
    """Deliver a snapshot at the local time equal to its server time (offset 0)."""
    clock.now = tick / sc.tick_rate
    c.deliver(snapshot(tick, view, *args, **kw))


def records(caplog, name: str = LOGGER) -> list[tuple[int, str, tuple]]:
    return [(r.levelno, r.msg, r.args) for r in caplog.records if r.name == name]


# --- defaults and registration --------------------------------------------------------------------


def test_documented_defaults_and_initial_state():
    c = FakeClient()
    sc = SyncClient(c)
    assert (sc.tick_rate, sc.interp_delay, sc.history, sc.ack_every) == (20.0, 0.1, 64, 2)
    assert sc.predict is None and sc.clock is time.monotonic
    assert (sc.tick, sc.view, sc.own) == (-1, {}, None)
    assert sc.stats == {
        "snapshots": 0,
        "full_snapshots": 0,
        "desyncs": 0,
        "reconciliations": 0,
        "prediction_error_max": 0.0,
        "prediction_error_last": 0.0,
    }
    assert sc.authoritative() == (-1, {})
    assert sc.predicted_own() is None
    assert sc.render_view() == {} and sc.render_view(5.0) == {}  # nothing received yet
    assert sc._buffer.maxlen == 64


def test_packets_registered_with_the_clients_registry_and_client():
    c = FakeClient()
    c.registry = registry = object()
    sc = SyncClient(c)
    snap, inp = c.packets[SNAPSHOT_PACKET], c.packets[INPUT_PACKET]
    assert isinstance(snap, client_mod._SnapshotPacket) and (snap.reg, snap.peer, snap.sync) == (registry, c, sc)
    assert type(inp) is Packet and (inp.reg, inp.peer) == (registry, c)


def test_default_tick_rate_and_interp_delay_place_the_rendered_time():
    """Server time is tick / 20; other entities are drawn 0.1 s behind it."""
    clock = Clock(10.0)
    c = FakeClient()
    sc = SyncClient(c, clock=clock)
    clock.now = 10.0
    c.deliver(snapshot(20, {"o": {"x": 0.0}}))  # server time 1.0: offset 9.0
    clock.now = 10.1
    c.deliver(snapshot(22, {"o": {"x": 10.0}}))  # server time 1.1
    assert sc._offset == pytest.approx(9.0, abs=1e-12)
    assert sc.render_view(10.15)["o"]["x"] == pytest.approx(5.0, abs=1e-9)  # 1.05: halfway
    assert sc.render_view(10.125)["o"]["x"] == pytest.approx(2.5, abs=1e-9)
    clock.now = 10.2
    assert sc.render_view()["o"]["x"] == pytest.approx(10.0, abs=1e-9)  # the clock, when no time is given


def test_render_view_uses_the_given_time_rather_than_the_clock():
    clock = Clock()
    c = FakeClient()
    sc = SyncClient(c, clock=clock, tick_rate=2.0, interp_delay=0.0)
    feed(c, sc, clock, 1, {"o": {"x": 0.0}})  # server time 0.5
    feed(c, sc, clock, 2, {"o": {"x": 4.0}})  # 1.0
    assert sc._offset == 0.0
    clock.now = 100.0
    assert sc.render_view(0.75) == {"o": {"x": 2.0}}
    assert sc.render_view() == {"o": {"x": 4.0}}


def test_the_offset_is_the_smallest_seen_and_grows_by_at_most_a_millisecond_per_snapshot():
    clock = Clock()
    c = FakeClient()
    sc = SyncClient(c, clock=clock, tick_rate=10.0)
    for now, tick, offset in ((5.0, 10, 4.0), (5.2, 11, 4.001), (5.2, 12, 4.0), (5.0, 13, 3.7)):
        clock.now = now
        c.deliver(snapshot(tick, {"o": {"x": float(tick)}}))
        assert sc._offset == pytest.approx(offset, abs=1e-9)


def test_history_kept_as_delta_bases_is_64_snapshots_by_default():
    v1 = {"me": {"x": 1.0}}
    v2 = {"me": {"x": 2.0}}
    c = FakeClient()
    sc = SyncClient(c)
    c.deliver(snapshot(1, v1))
    c.deliver(snapshot(64, v2, v1, 1))
    assert sc.authoritative() == (64, v2) and sorted(sc._states) == [1, 64]  # 63 ticks old: kept
    c = FakeClient()
    sc = SyncClient(c)
    c.deliver(snapshot(1, v1))
    c.deliver(snapshot(65, v2, v1, 1))
    assert sc.authoritative() == (65, v2) and sorted(sc._states) == [65]  # 64 ticks old: dropped
    c.deliver(snapshot(66, v2, v1, 1))
    assert sc.tick == 65 and sc.stats["desyncs"] == 1
    assert c.events[-1] == ("peng3dnet:sync.desync", {"tick": 66, "reason": "missing base"})


def test_history_also_bounds_the_render_buffer_but_never_below_4():
    c = FakeClient()
    sc = SyncClient(c, clock=Clock(), history=2)
    assert sc._buffer.maxlen == 4
    for tick in range(1, 7):
        c.deliver(snapshot(tick, {"o": {"x": float(tick)}}))
    assert sc.render_view(-1000.0) == {"o": {"x": 3.0}}  # before the oldest kept: ticks 3 to 6
    assert sorted(sc._states) == [5, 6]
    assert SyncClient(FakeClient(), history=10)._buffer.maxlen == 10


# --- acks -------------------------------------------------------------------------------------------


def test_by_default_full_snapshots_and_every_second_snapshot_are_acknowledged():
    c = FakeClient()
    SyncClient(c)
    views = [{"me": {"x": float(i)}} for i in range(6)]
    c.deliver(snapshot(1, views[1]))
    for t in range(2, 6):
        c.deliver(snapshot(t, views[t], views[t - 1], t - 1))
    assert c.sent == [{"ack": 1}, {"ack": 2}, {"ack": 4}]


@pytest.mark.parametrize("ack_every,expected", [(1, 1), (0, 1), (-3, 1), (3, 3), (2.9, 2)])
def test_ack_every_is_at_least_one(ack_every, expected):
    c = FakeClient()
    sc = SyncClient(c, ack_every=ack_every)
    assert sc.ack_every == expected
    views = [{"me": {"x": float(i)}} for i in range(5)]
    c.deliver(snapshot(1, views[1]))
    for t in range(2, 5):
        c.deliver(snapshot(t, views[t], views[t - 1], t - 1))
    # the full snapshot, then every n-th snapshot counted from the first
    assert c.sent == [{"ack": 1}] + [{"ack": t} for t in range(2, 5) if t % expected == 0]


def test_inputs_carry_the_latest_tick_and_their_sequence_number():
    c = FakeClient()
    sc = SyncClient(c, ack_every=100)
    assert sc.send_input("before") == 1
    c.deliver(snapshot(3, {"me": {"x": 0.0}}))
    c.deliver(snapshot(4, {"me": {"x": 0.0}}, {"me": {"x": 0.0}}, 3))
    assert sc.send_input({"k": 1}) == 2
    assert c.sent == [{"ack": -1, "seq": 1, "in": "before"}, {"ack": 3}, {"ack": 4, "seq": 2, "in": {"k": 1}}]


# --- desyncs, failed sends --------------------------------------------------------------------------


def test_every_desync_is_counted_logged_and_asks_for_a_full_snapshot(caplog):
    c = FakeClient()
    sc = SyncClient(c)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        c.deliver({"t": 5, "b": 4, "cs": 0})
        c.deliver({"t": 6, "b": -1, "cs": 1, "n": {"e": {}}})
    assert sc.stats["desyncs"] == 2
    fmt = "! sync: desync at tick %d (%s); asking for a full snapshot"
    assert [r for r in records(caplog) if r[0] == logging.INFO] == [
        (logging.INFO, fmt, (5, "missing base")),
        (logging.INFO, fmt, (6, "checksum")),
    ]
    assert c.sent == [{"resync": True}, {"resync": True}]


def test_a_malformed_snapshot_is_logged_at_debug_with_its_error(caplog):
    c = FakeClient()
    sc = SyncClient(c)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        c.deliver({"t": 9, "b": "x"})
    got = records(caplog)
    assert [(lvl, msg, [str(a) for a in args]) for lvl, msg, args in got[:1]] == [
        (logging.DEBUG, "! sync: %s", ["snapshot: b is not an int"])
    ]
    assert got[1][2] == (9, "malformed delta") and sc.stats["desyncs"] == 1


def test_a_message_that_cannot_be_sent_is_logged_at_debug(caplog):
    c = FakeClient()
    err = Peng3dNetError("not connected")

    def send_message(ptype, data, cid=None):
        raise err

    c.send_message = send_message
    sc = SyncClient(c)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        assert sc.send_input("x") == 1
    assert records(caplog) == [(logging.DEBUG, "sync: not sent: %s", (err,))]


def test_a_stream_of_bad_snapshots_is_logged_ten_lines_a_second_and_all_counted(caplog):
    """A server sending nothing but bad snapshots (20 bytes each) wrote a
    log line per snapshot (the fault hunt of 2026-12-02)."""
    from peng3dnet.ext.sync.client import DESYNC_LINES

    c = FakeClient()
    clock = Clock(100.0)
    sc = SyncClient(c, clock=clock)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        for t in range(25):
            c.deliver({"t": t + 5, "b": 4, "cs": 0})
        clock.now += 1.0
        c.deliver({"t": 40, "b": 4, "cs": 0})
    lines = [r[1] % r[2] for r in records(caplog) if r[0] == logging.INFO]
    assert DESYNC_LINES == 10 and len(lines) == 12 and sc.stats["desyncs"] == 26
    assert lines[:2] == ["! sync: desync at tick 5 (missing base); asking for a full snapshot",
                         "! sync: desync at tick 6 (missing base); asking for a full snapshot"]
    assert lines[10:] == ["! sync: 15 more desyncs before this one were not logged",
                          "! sync: desync at tick 40 (missing base); asking for a full snapshot"]
    assert len(c.sent) == 26  # (each still asks for a full snapshot)


def test_force_desync_corrupts_the_next_view_once_and_an_empty_one_not_at_all():
    c = FakeClient()
    sc = SyncClient(c)
    view = {"e": {"x": 1.0}}
    sc.force_desync()
    c.deliver(snapshot(1, {}))  # nothing to corrupt: applied (the hook is used up)
    c.deliver(snapshot(2, view, {}, 1))
    assert sc.authoritative() == (2, view) and sc.stats["desyncs"] == 0
    sc.force_desync()
    c.deliver(snapshot(3, view, view, 2))
    assert sc.tick == 2 and sc.stats["desyncs"] == 1
    assert c.events[-1] == ("peng3dnet:sync.desync", {"tick": 3, "reason": "checksum"})
    c.deliver(snapshot(4, view))  # once only
    assert sc.authoritative() == (4, view) and sc.stats["desyncs"] == 1
    assert (sc.stats["snapshots"], sc.stats["full_snapshots"]) == (3, 2)


def test_snapshot_event_carries_the_tick_and_the_view():
    c = FakeClient()
    SyncClient(c)
    c.deliver(snapshot(4, {"e": {"x": 1.0}}))
    assert c.events == [("peng3dnet:sync.snapshot", {"tick": 4, "view": {"e": {"x": 1.0}}})]


# --- rendering the own entity -----------------------------------------------------------------------


def test_render_view_without_prediction_shows_the_own_entity_as_last_received():
    c = FakeClient()
    clock = Clock()
    sc = SyncClient(c, clock=clock, tick_rate=2.0, interp_delay=0.0)
    feed(c, sc, clock, 1, {"me": {"x": 0.0}, "o": {"x": 0.0}})
    feed(c, sc, clock, 2, {"me": {"x": 8.0}, "o": {"x": 4.0}})
    got = sc.render_view(0.75)  # halfway between the two
    assert got == {"me": {"x": 8.0}, "o": {"x": 2.0}}
    got["me"]["x"] = 0.0
    assert sc.view["me"] == {"x": 8.0}  # a copy


def test_render_view_leaves_out_an_own_entity_gone_from_the_view():
    c = FakeClient()
    sc = SyncClient(c, clock=Clock(), tick_rate=10.0, interp_delay=0.0)
    c.deliver(snapshot(1, {"me": {"x": 0.0}, "o": {"x": 0.0}}))
    c.deliver(snapshot(2, {"o": {"x": 4.0}}))  # still "you": "me", but not in the view
    assert sc.render_view(-5.0) == {"o": {"x": 0.0}}  # the oldest snapshot had it
    assert sc.render_view(5.0) == {"o": {"x": 4.0}}  # the newest did not


def test_render_view_without_an_own_entity_is_the_interpolated_view():
    c = FakeClient()
    clock = Clock()
    sc = SyncClient(c, clock=clock, tick_rate=2.0, interp_delay=0.0)
    feed(c, sc, clock, 1, {"me": {"x": 0.0}}, you=None)
    feed(c, sc, clock, 2, {"me": {"x": 4.0}}, you=None)
    assert sc.render_view(0.75) == {"me": {"x": 2.0}}


def test_render_view_shows_the_predicted_own_entity():
    c = FakeClient()
    sc = SyncClient(c, clock=Clock(), tick_rate=10.0, interp_delay=0.0, predict=move)
    c.deliver(snapshot(1, {"me": {"x": 0.0, "y": 0.0}}))
    sc.send_input({"dx": 1, "dt": 0.1})
    assert sc.render_view(-5.0) == {"me": {"x": 10.0, "y": 0.0}}


# --- reconciliation ---------------------------------------------------------------------------------


def test_reconciliation_records_the_last_and_the_largest_prediction_error():
    c = FakeClient()
    sc = SyncClient(c, predict=move)
    v1 = {"me": {"x": 0.0, "y": 0.0}}
    c.deliver(snapshot(1, v1))
    sc.send_input({"dx": 1, "dt": 0.1})  # predicted x = 10
    v2 = {"me": {"x": 13.0, "y": 4.0}}  # the server disagrees by (3, 4)
    c.deliver(snapshot(2, v2, v1, 1, ai=1))
    assert (sc.stats["prediction_error_last"], sc.stats["prediction_error_max"], sc.stats["reconciliations"]) == (5.0, 5.0, 1)
    sc.send_input({"dx": 0, "dt": 0.1})
    c.deliver(snapshot(3, v2, v2, 2, ai=2))  # exactly as predicted
    assert (sc.stats["prediction_error_last"], sc.stats["prediction_error_max"], sc.stats["reconciliations"]) == (0.0, 5.0, 2)
    assert set(sc.stats) == {"snapshots", "full_snapshots", "desyncs", "reconciliations", "prediction_error_max", "prediction_error_last"}


def test_prediction_skips_an_own_entity_not_in_the_view():
    c = FakeClient()
    sc = SyncClient(c, predict=move)
    c.deliver(snapshot(1, {"o": {"x": 0.0}}, you="me"))
    assert sc.send_input({"dx": 1, "dt": 0.1}) == 1
    c.deliver(snapshot(2, {"o": {"x": 0.0}}, {"o": {"x": 0.0}}, 1, ai=1, you="me"))
    assert sc.predicted_own() is None and sc.stats["reconciliations"] == 0


def test_without_predict_inputs_are_sent_but_never_replayed():
    c = FakeClient()
    sc = SyncClient(c)
    c.deliver(snapshot(1, {"me": {"x": 1.0}}))
    sc.send_input({"dx": 1, "dt": 0.1})
    c.deliver(snapshot(2, {"me": {"x": 2.0}}, {"me": {"x": 1.0}}, 1, ai=None))
    assert sc.predicted_own() == {"x": 2.0} and sc._predicted is None
    assert sc.stats["reconciliations"] == 0


def test_inputs_not_yet_applied_are_replayed_on_each_snapshot():
    c = FakeClient()
    sc = SyncClient(c, predict=move)
    v = {"me": {"x": 0.0, "y": 0.0}}
    c.deliver(snapshot(1, v))
    for _ in range(3):
        sc.send_input({"dx": 1, "dt": 0.1})
    c.deliver(snapshot(2, v, v, 1, ai=None))  # no ai: nothing applied yet, all three replayed
    assert sc.predicted_own() == {"x": 30.0, "y": 0.0}
    c.deliver(snapshot(3, v, v, 2, ai=2))  # 1 and 2 applied (and the server ignored them): 3 replayed
    assert sc.predicted_own() == {"x": 10.0, "y": 0.0}
    assert [s for s, _ in sc._pending] == [3] and sorted(sc._pred_by_seq) == [3]


def test_render_view_interpolates_again_right_after_switching_to_a_newer_synced_room():
    """Rooms (``ext.rooms``): each synced room has a SyncServer of its own,
    its ticks counted from 1, and a client that joins another room keeps
    its SyncClient.  The clock offset is "the smallest seen" and may grow
    by only 1 ms per snapshot, so after moving from a room at tick 200 to
    a fresh one, the new room's server times look 10 s old: the rendered
    time lies past every buffered snapshot and ``render_view()`` shows the
    newest snapshot as it is (no interpolation: other players jump a
    whole tick at a time) until the offset has crept up, here 10 s at 1 ms
    per snapshot: some 8 minutes at 20 Hz."""
    clock = Clock()
    c = FakeClient()
    sc = SyncClient(c, clock=clock)  # 20 Hz, 0.1 s behind
    for tick in range(1, 201):  # room one, up to tick 200 (server time 10 s)
        feed(c, sc, clock, tick, {"a": {"x": float(tick)}})
    start = clock.now
    for tick in range(1, 21):  # joined room two, made just now: its ticks start at 1
        clock.now = start + tick / 20
        c.deliver(snapshot(tick, {"b": {"x": float(tick)}}))
    # drawn at server time 0.925 - 0.1 = 0.825: halfway between ticks 16 and 17, as a fresh SyncClient draws it
    fresh_c, fresh_clock = FakeClient(), Clock(start)
    fresh = SyncClient(fresh_c, clock=fresh_clock)
    for tick in range(1, 21):
        fresh_clock.now = start + tick / 20
        fresh_c.deliver(snapshot(tick, {"b": {"x": float(tick)}}))
    assert fresh.render_view(start + 0.925) == {"b": {"x": pytest.approx(16.5)}}
    assert sc.render_view(start + 0.925) == {"b": {"x": pytest.approx(16.5)}}


def test_reset_forgets_the_timeline_so_a_room_whose_ticks_are_ahead_interpolates_at_once():
    """reset() (a room change the ticks cannot show: the new room's ticks
    are ahead of the old one's): the view, the states, the render buffer,
    the clock estimate and the inputs sent to the old server are
    forgotten; the new room's snapshots are drawn as a fresh SyncClient
    draws them."""
    clock = Clock()
    c = FakeClient()
    sc = SyncClient(c, clock=clock, predict=move)
    for tick in range(1, 21):  # room one, ticks 1..20
        feed(c, sc, clock, tick, {"a": {"x": float(tick)}})
    sc.send_input({"dx": 1, "dt": 0.1})  # sent to room one's server, never applied
    sc.reset()
    assert (sc.tick, sc.view, sc.own, sc.authoritative()) == (-1, {}, None, (-1, {}))
    assert not sc._states and not sc._buffer and sc._offset is None and not sc._pending and not sc._pred_by_seq
    assert sc.render_view(clock.now) == {}
    start = clock.now
    fresh_c = FakeClient()
    fresh = SyncClient(fresh_c, clock=Clock(start), predict=move)
    for tick in range(500, 520):  # room two, its ticks ahead of room one's
        clock.now = fresh.clock.now = start + (tick - 499) / 20
        c.deliver(snapshot(tick, {"b": {"x": float(tick)}}))
        fresh_c.deliver(snapshot(tick, {"b": {"x": float(tick)}}))
    at = start + 0.925
    assert fresh.render_view(at) == {"b": {"x": pytest.approx(515.5)}}
    assert sc.render_view(at) == fresh.render_view(at)


def test_a_tick_that_goes_back_also_forgets_the_inputs_sent_to_the_old_server():
    c = FakeClient()
    sc = SyncClient(c, predict=move)
    v = {"me": {"x": 0.0, "y": 0.0}}
    for tick in (7, 8):
        c.deliver(snapshot(tick, v, ai=None))
    sc.send_input({"dx": 1, "dt": 0.1})
    assert [s for s, _ in sc._pending] == [1] and sc.predicted_own() == {"x": 10.0, "y": 0.0}
    c.deliver(snapshot(1, v, ai=None))  # another server's timeline
    assert sc.tick == 1 and not sc._pending and not sc._pred_by_seq
    assert sc.predicted_own() == {"x": 0.0, "y": 0.0}  # not replayed on the new room's state


def test_without_predict_or_an_own_entity_the_inputs_kept_are_trimmed_by_the_servers_ack():
    """Inputs kept for replay were trimmed only when predicting an own
    entity in view: a client without prediction (the default) or a
    spectator kept every input it ever sent (6,000 after 2,000 ticks)."""
    for predict, you in ((None, "me"), (move, None)):
        c = FakeClient()
        sc = SyncClient(c, predict=predict)
        v = {"me": {"x": 0.0, "y": 0.0}}
        c.deliver(snapshot(1, v, you=you))
        for tick in range(2, 200):
            for _ in range(3):
                sc.send_input({"dx": 1, "dt": 0.1})
            c.deliver(snapshot(tick, v, v, tick - 1, ai=sc._seq, you=you))
        assert len(sc._pending) == 0


def test_the_own_entity_deleted_by_the_server_is_not_drawn_from_an_old_prediction():
    c = FakeClient()
    sc = SyncClient(c, predict=move)
    v = {"me": {"x": 10.0, "y": 0.0}}
    c.deliver(snapshot(1, v))
    sc.send_input({"dx": 1, "dt": 0.1})
    assert sc.predicted_own() == {"x": 20.0, "y": 0.0}
    c.deliver(snapshot(2, {}, v, 1, ai=None))  # the server removed it (the player died); the owner entry stays
    assert sc.authoritative() == (2, {})
    assert sc.predicted_own() is None and "me" not in sc.render_view()
