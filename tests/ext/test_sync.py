"""peng3dnet.ext.sync as a whole: the public names, and sync without the
event bus (net.events.enable off on both sides)."""

from __future__ import annotations

import inspect
import time

import peng3dnet.ext.sync as sync
from tests.ext.sync_world import move
from tests.helpers import wait_for


def test_public_names():
    assert sorted(sync.__all__) == sorted(
        ["SyncServer", "SyncClient", "SNAPSHOT_PACKET", "INPUT_PACKET", "checksum", "diff_views", "apply_delta", "distance_interest"]
    )
    assert (sync.SNAPSHOT_PACKET, sync.INPUT_PACKET) == ("peng3dnet:sync.snapshot", "peng3dnet:sync.input")
    for name in sync.__all__:
        obj = getattr(sync, name)
        assert isinstance(obj, str) or obj.__module__.startswith("peng3dnet.ext.sync.")


def test_signatures_kept():
    def params(fn):
        return [(p.name, p.kind.name, p.default) for p in inspect.signature(fn).parameters.values()]

    kw = "KEYWORD_ONLY"
    assert params(sync.SyncServer)[:4] == [
        ("server", "POSITIONAL_OR_KEYWORD", inspect.Parameter.empty),
        ("tick_rate", kw, 20.0),
        ("history", kw, 64),
        ("interest", kw, None),
    ]
    assert params(sync.SyncClient) == [
        ("client", "POSITIONAL_OR_KEYWORD", inspect.Parameter.empty),
        ("tick_rate", kw, 20.0),
        ("interp_delay", kw, 0.1),
        ("history", kw, 64),
        ("predict", kw, None),
        ("clock", kw, time.monotonic),
        ("ack_every", kw, 2),
    ]
    assert [p[0] for p in params(sync.distance_interest)] == ["radius", "x", "y"]
    assert [p[0] for p in params(sync.diff_views)] == ["base", "new"]
    assert [p[0] for p in params(sync.apply_delta)] == ["base", "delta"]
    assert [p[0] for p in params(sync.checksum)] == ["view"]


def test_sync_works_with_events_disabled_on_both_sides(world, net):
    off = {"net.events.enable": False}
    s, game, views_by_cid = world.make(cfg=off, hooks=True)  # the game joins players with on_join
    server_events = net.recorder(s, "peng3dnet:*")
    game.sync.start()
    c, sc = world.join(s, cfg=off, predict=move)  # returns once its own entity arrived in a snapshot
    client_events = net.recorder(c, "peng3dnet:*")
    x0 = game.sync.entities[sc.own]["x"]
    for _ in range(5):
        sc.send_input({"dx": 1, "dy": 0, "dt": 0.1})
    wait_for(lambda: game.sync.stats["inputs"] == 5, what="inputs applied on the server")
    assert game.sync.entities[sc.own]["x"] == x0 + 5 * 10.0
    wait_for(lambda: sc.view[sc.own]["x"] == x0 + 5 * 10.0, what="the moved entity in a snapshot")
    wait_for(lambda: sc.stats["snapshots"] > 10, what="more snapshots")
    tick, view = sc.authoritative()
    assert view == views_by_cid[int(sc.own[1:])][tick]
    assert sc.stats["full_snapshots"] == 1 and sc.stats["desyncs"] == 0
    assert sc.stats["prediction_error_max"] <= 1e-6
    assert game.sync.stats["full_snapshots"] == 1  # acks arrived: deltas after the first
    c.stop()
    c.join(5)
    wait_for(lambda: game.sync.clients == [], what="the leave, without events")
    assert server_events.items == [] and client_events.items == []


def test_sync_resumes_a_dropped_client_with_a_delta(world, net):
    """A resumable client's socket is cut: it stays joined (same entity), the
    server queues no snapshots for it while it has no socket, and the first
    one after the resume is a delta from the tick it acknowledged last."""
    from peng3dnet.tools.lagproxy import LagProxy

    resume = {"net.session.resume": True}
    s, game, _ = world.make(cfg=resume, tick_rate=50.0)
    srec = net.recorder(s, "peng3dnet:*")
    game.sync.start()
    proxy = LagProxy(("127.0.0.1", 0), s.addr).start()
    world.add(proxy.stop)
    c, sc = world.join(s, proxy.addr, cfg={**resume, "net.client.reconnect.delay": 0.3})
    crec = net.recorder(c, "peng3dnet:client.*")
    own = sc.own
    wait_for(lambda: game.sync.stats["snapshots"] >= 10, what="snapshots")
    proxy.cut()
    srec.wait_for("peng3dnet:server.connection.suspended")
    sent_at_drop = game.sync.stats["snapshots"]
    full_at_drop = game.sync.stats["full_snapshots"]
    tick_at_drop = game.sync.tick
    wait_for(lambda: game.sync.tick >= tick_at_drop + 5, what="ticks while it is away")
    assert game.sync.stats["snapshots"] <= sent_at_drop + 1  # (one may have been on its way)
    crec.wait_for("peng3dnet:client.resumed")
    wait_for(lambda: sc.tick > tick_at_drop + 5, what="a snapshot after the resume")
    assert game.sync.stats["full_snapshots"] == full_at_drop  # a delta, not a full snapshot
    assert sc.own == own and own in game.sync.entities  # the same entity, never left
    assert "peng3dnet:sync.leave" not in srec.names()
    assert sc.stats["desyncs"] == 0
    x0 = game.sync.entities[own]["x"]
    sc.send_input({"dx": 1, "dy": 0, "dt": 0.1})  # inputs go on after the resume
    wait_for(lambda: game.sync.entities[own]["x"] == x0 + 10.0, what="the input applied")
