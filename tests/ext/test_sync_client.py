"""peng3dnet.ext.sync.client: agreement with the server, desync detection
and repair, interpolation and prediction under simulated latency."""

from __future__ import annotations

import threading

import pytest

from peng3dnet import events
from peng3dnet.ext.sync import checksum
from peng3dnet.tools.lagproxy import LagProxy
from tests.ext.sync_world import SPEED, move
from tests.helpers import wait_for


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
        view = sc.render_view()
        if "npc" in view:
            xs.append(view["npc"]["x"])
        own_xs.append(view[sc.own]["x"])
        clock.wait(frame)  # the game's frame pacing, not synchronisation
    wait_for(lambda: sc.stats["reconciliations"] > 10, what="reconciliations")
    assert sc.stats["prediction_error_max"] <= 1e-6
    jumps = [b - a for a, b in zip(xs, xs[1:])]
    assert max(jumps) <= SPEED * frame * 3, max(jumps)
    assert min(jumps) >= -1e-9  # never moves backwards
    assert sum(1 for j in jumps if j > 0) > len(jumps) // 2  # and it does move
    # the local player moves every frame, immediately (prediction), never back
    own_jumps = [b - a for a, b in zip(own_xs, own_xs[1:])]
    assert all(abs(j - SPEED * frame) < 1e-6 for j in own_jumps)
