"""peng3dnet.ext.sync.client: agreement with the server, desync detection
and repair (checksum, missing base, malformed snapshots), interpolation and
prediction under simulated latency."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from peng3dnet import events
from peng3dnet.ext.sync import SNAPSHOT_PACKET, SyncClient, checksum
from peng3dnet.ext.sync.wire import SnapshotBatch
from peng3dnet.tools.lagproxy import LagProxy
from tests.ext.sync_world import SPEED, move
from tests.helpers import handler_thread, wait_for

# --- a client stand-in: the calls SyncClient makes ---------------------------------------------


class FakeClient:
    def __init__(self) -> None:
        self.registry = None
        self.packets: dict[str, Any] = {}
        self.sent: list[dict] = []
        self.events: list[tuple[str, dict]] = []

    def register_packet(self, name, obj, n=None):
        self.packets[name] = obj
        return 63 + len(self.packets)

    def send_message(self, ptype, data, cid=None):
        self.sent.append(data)

    def sendEvent(self, event, data=None):
        self.events.append((event, dict(data or {})))

    def deliver(self, msg: Any) -> None:
        """What process() does with a SNAPSHOT_PACKET."""
        self.packets[SNAPSHOT_PACKET]._receive(msg, None)


def snapshot(tick, view, base=None, base_tick=-1, ai=-1, you="me"):
    import msgpack

    return msgpack.unpackb(SnapshotBatch(tick).encode(view, base, base_tick, ai, you), raw=False)


def test_snapshots_deltas_and_acks():
    c = FakeClient()
    sc = SyncClient(c, ack_every=2)
    v1 = {"me": {"x": 1.0}, "o": {"x": 0.0}}
    v2 = {"me": {"x": 2.0}, "o": {"x": 0.0}}
    v3 = {"me": {"x": 2.0}}
    c.deliver(snapshot(1, v1))
    c.deliver(snapshot(2, v2, v1, 1))
    c.deliver(snapshot(3, v3, v2, 2))
    assert sc.authoritative() == (3, v3) and sc.own == "me"
    assert sc.stats["snapshots"] == 3 and sc.stats["full_snapshots"] == 1 and sc.stats["desyncs"] == 0
    assert c.sent == [{"ack": 1}, {"ack": 2}]  # every full snapshot, then every 2nd
    assert [e for e, _ in c.events] == ["peng3dnet:sync.snapshot"] * 3


@pytest.mark.parametrize(
    "bad,reason",
    [
        ({"t": 5, "b": 4, "cs": 0}, "missing base"),
        ({"t": 5, "b": -1, "cs": 12345, "n": {"me": {"x": 1.0}}}, "checksum"),
        ({"t": 5, "b": -1, "cs": 0, "n": {"me": 1}}, "malformed delta"),
        ({"t": 5, "b": -1, "cs": 0, "d": "me"}, "malformed delta"),
        ({"t": 5, "b": -1, "cs": 0, "you": ["me"]}, "malformed delta"),
        ({"t": 5, "b": "x", "cs": 0}, "malformed delta"),
    ],
)
def test_bad_snapshots_are_desyncs_not_crashes(bad, reason):
    c = FakeClient()
    sc = SyncClient(c)
    c.deliver(bad)
    assert sc.stats["desyncs"] == 1 and sc.stats["snapshots"] == 0 and sc.tick == -1
    assert c.sent == [{"resync": True}]
    assert c.events == [("peng3dnet:sync.desync", {"tick": 5, "reason": reason})]
    view = {"me": {"x": 3.0}}
    c.deliver(snapshot(6, view))  # the full snapshot that follows repairs it
    assert sc.authoritative() == (6, view)


@pytest.mark.parametrize("junk", [None, 3, "x", [], {}, {"t": "1"}])
def test_non_snapshots_are_ignored(junk):
    c = FakeClient()
    sc = SyncClient(c)
    c.deliver(junk)
    assert sc.stats["desyncs"] == 0 and c.sent == [] and c.events == []


def test_closed_client_ignores_snapshots():
    c = FakeClient()
    sc = SyncClient(c)
    sc.close()
    c.deliver(snapshot(1, {"me": {"x": 1.0}}))
    assert sc.tick == -1 and c.sent == []


def test_predicted_own_without_prediction_is_the_authoritative_own_entity_or_none():
    c = FakeClient()
    sc = SyncClient(c)
    assert sc.predicted_own() is None  # nothing received yet
    c.deliver(snapshot(1, {"o": {"x": 5.0}}, you=None))
    assert sc.own is None and sc.predicted_own() is None  # no entity of ours
    c.deliver(snapshot(2, {"o": {"x": 5.0}}, you="me"))
    assert sc.own == "me" and sc.predicted_own() is None  # ours, but not in the view (yet)
    c.deliver(snapshot(3, {"me": {"x": 1.5}, "o": {"x": 5.0}}, you="me"))
    got = sc.predicted_own()
    assert got == {"x": 1.5}
    got["x"] = 99.0  # a copy
    assert sc.predicted_own() == {"x": 1.5}


def test_prediction_replays_unacknowledged_inputs():
    c = FakeClient()
    sc = SyncClient(c, predict=move)
    me = {"x": 0.0, "y": 0.0}
    c.deliver(snapshot(1, {"me": me}))
    for _ in range(3):
        sc.send_input({"dx": 1, "dt": 0.1})
    assert sc.predicted_own()["x"] == pytest.approx(3 * SPEED * 0.1)
    assert [m.get("seq") for m in c.sent[1:]] == [1, 2, 3] and c.sent[1]["ack"] == 1
    # the server applied input 1 (exactly as predicted): inputs 2 and 3 are replayed on top
    moved = {"me": move(me, {"dx": 1, "dt": 0.1})}
    c.deliver(snapshot(2, moved, {"me": me}, 1, ai=1))
    assert sc.predicted_own()["x"] == pytest.approx(3 * SPEED * 0.1)
    assert sc.stats["reconciliations"] == 1 and sc.stats["prediction_error_max"] == 0.0
    # the next snapshot acknowledges the same input again: its guess was used up
    c.deliver(snapshot(3, moved, moved, 2, ai=1))
    assert sc.stats["reconciliations"] == 1
    assert sc.predicted_own()["x"] == pytest.approx(3 * SPEED * 0.1)


# --- live -------------------------------------------------------------------------------------


def test_clients_agree_with_server_at_the_same_tick(world):
    s, game, views_by_cid = world.make()
    game.sync.start()
    clients = [world.join(s, predict=move) for _ in range(3)]
    for step in range(30):
        for _c, sc in clients:
            sc.send_input({"dx": 1, "dy": (step % 3) - 1, "dt": 1 / 60})
    for _c, sc in clients:
        wait_for(lambda sc=sc: sc.stats["snapshots"] > 20, what="snapshots")
    for _c, sc in clients:
        cid = int(sc.own[1:])
        tick, view = sc.authoritative()
        assert view == views_by_cid[cid][tick]  # exact, not just within a tolerance
        assert checksum(view) == checksum(views_by_cid[cid][tick])
        assert sc.stats["desyncs"] == 0 and sc.stats["full_snapshots"] == 1
    # every client sees every player
    for _c, sc in clients:
        assert {f"p{int(o.own[1:])}" for _, o in clients} <= set(sc.view)


def test_forced_desync_is_detected_and_repaired(world):
    s, game, views_by_cid = world.make()
    game.sync.start()
    desyncs = []

    def on_desync(event, data):
        desyncs.append(data)

    a, sa = world.join(s)
    events.subscribe("peng3dnet:sync.desync", on_desync, sender=a)
    world.add(lambda: events.unsubscribe("peng3dnet:sync.desync", on_desync, sender=a))
    wait_for(lambda: sa.stats["snapshots"] > 5, what="snapshots")
    sa.force_desync()
    wait_for(lambda: sa.stats["desyncs"] == 1, what="desync detected")
    wait_for(lambda: sa.stats["full_snapshots"] == 2, what="full snapshot after the desync")
    wait_for(lambda: sa.stats["snapshots"] > 15, what="more snapshots")
    tick, view = sa.authoritative()
    assert view == views_by_cid[int(sa.own[1:])][tick]
    assert desyncs and desyncs[0]["reason"] == "checksum"
    assert game.sync.stats["resyncs"] == 1


@pytest.mark.parametrize("delay,jitter", [(0.0, 0.0), (0.15, 0.03)])
def test_interpolation_and_prediction_under_latency(world, delay, jitter):
    """Prediction error after reconciliation: 0 (same pure function both sides;
    bound asserted: 1e-6).  Interpolation: a remote entity moving at SPEED
    never jumps more than 3x its per-frame distance between two render frames."""
    s, game, _ = world.make(tick_rate=20.0)
    proxy = LagProxy(("127.0.0.1", 0), s.addr, delay=delay, jitter=jitter, seed=7).start()
    world.add(proxy.stop)
    game.sync.start()
    c, sc = world.join(s, addr=proxy.addr, predict=move, interp_delay=0.1 + 2 * jitter)
    clock = threading.Event()
    frame = 1 / 60
    xs = []
    own_xs = []
    for _ in range(120):  # two seconds of a 60 fps game loop
        sc.send_input({"dx": 1, "dy": 0, "dt": frame})
        now = sc.clock()
        view = sc.render_view(now)
        if "npc" in view:
            xs.append((now, view["npc"]["x"]))
        own_xs.append(view[sc.own]["x"])
        clock.wait(frame)  # the game's frame pacing, not synchronisation
    wait_for(lambda: sc.stats["reconciliations"] > 10, what="reconciliations")
    assert sc.stats["prediction_error_max"] <= 1e-6
    # Against the time that really passed between two frames (a loaded
    # machine stretches some): never more than 3x the distance the entity
    # covers in it, i.e. no snapshot-sized jumps.
    over = [(b - a, t1 - t0) for (t0, a), (t1, b) in zip(xs, xs[1:]) if b - a > SPEED * max(t1 - t0, frame) * 3]
    assert not over, over
    jumps = [b - a for (_, a), (_, b) in zip(xs, xs[1:])]
    assert min(jumps) >= -1e-9  # never moves backwards
    assert sum(1 for j in jumps if j > 0) > len(jumps) // 2  # and it does move
    # the local player moves every frame, immediately (prediction), never back
    own_jumps = [b - a for a, b in zip(own_xs, own_xs[1:])]
    assert all(abs(j - SPEED * frame) < 1e-6 for j in own_jumps)


def test_snapshots_are_applied_on_the_thread_that_processes(world):
    s, game, _ = world.make()
    game.sync.start()
    c, sc = world.join(s)
    threads = []

    def on_snapshot(event, data):
        threads.append(handler_thread(c))

    events.subscribe("peng3dnet:sync.snapshot", on_snapshot, sender=c)
    world.add(lambda: events.unsubscribe("peng3dnet:sync.snapshot", on_snapshot, sender=c))
    wait_for(lambda: len(threads) > 3, what="snapshot events")
    assert set(threads) == {"handlers"}
