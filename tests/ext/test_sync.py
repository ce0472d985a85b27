"""peng3dnet.ext.sync: deltas, checksums, snapshots, interest, desync repair,
interpolation and prediction under simulated latency."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peng3dnet import events
from peng3dnet.ext.sync import SyncClient, SyncServer, apply_delta, checksum, diff_views, distance_interest
from peng3dnet.net import Client, Server
from peng3dnet.tools.lagproxy import LagProxy
from tests.helpers import wait_for

values = st.one_of(st.integers(-1000, 1000), st.floats(allow_nan=False, width=32), st.text(max_size=5), st.booleans())
views = st.dictionaries(st.text(min_size=1, max_size=4), st.dictionaries(st.text(min_size=1, max_size=3), values, max_size=4), max_size=6)


@settings(max_examples=300, deadline=None)
@given(views, views)
def test_delta_roundtrip(a, b):
    assert apply_delta(a, diff_views(a, b)) == b
    assert checksum(apply_delta(a, diff_views(a, b))) == checksum(b)


def test_checksum_ignores_order_but_not_values():
    a = {"p1": {"x": 1.0, "y": 2.0}, "p2": {"s": 3}}
    b = {"p2": {"s": 3}, "p1": {"y": 2.0, "x": 1.0}}
    assert checksum(a) == checksum(b)
    assert checksum(a) != checksum({**a, "p2": {"s": 4}})


# --- a tiny game ------------------------------------------------------------------------

SPEED = 100.0


def move(state, inp):
    """The shared, pure input function (server applies it, client predicts with it)."""
    dt = min(max(float(inp.get("dt", 0.0)), 0.0), 0.1)
    return {**state, "x": state["x"] + inp.get("dx", 0) * SPEED * dt, "y": state["y"] + inp.get("dy", 0) * SPEED * dt}


class Game:
    def __init__(self, server: Server, **kw):
        self.sync = SyncServer(server, **kw)
        self.sync.on_input = self.on_input
        self.sync.on_step = self.on_step
        self.server = server
        events.subscribe("peng3dnet:sync.join", self.on_join, sender=server)

    def on_join(self, event, data):  # tick thread
        eid = f"p{data['cid']}"
        self.sync.entities[eid] = {"x": float(data["cid"] * 10), "y": 0.0, "name": eid}
        self.sync.owners[data["cid"]] = eid

    def on_input(self, cid, eid, inp):
        if eid in self.sync.entities:
            self.sync.entities[eid] = move(self.sync.entities[eid], inp)

    def on_step(self, dt, tick):
        npc = self.sync.entities.setdefault("npc", {"x": 0.0, "y": 500.0})
        self.sync.entities["npc"] = {**npc, "x": npc["x"] + SPEED * dt}

    def close(self):
        events.unsubscribe("peng3dnet:sync.join", self.on_join, sender=self.server)
        self.sync.stop()


def make_world(tick_rate=50.0, **kw):
    s = Server(addr=("127.0.0.1", 0), cfg={"net.heartbeat.enabled": False})
    game = Game(s, tick_rate=tick_rate, **kw)
    views_by_cid: dict[int, dict[int, dict]] = {}
    orig = game.sync._send_snapshots

    def recording():
        for cid in game.sync.clients:
            views_by_cid.setdefault(cid, {})[game.sync.tick] = game.sync.view_for(cid)
        orig()

    game.sync._send_snapshots = recording
    s.runAsync()
    return s, game, views_by_cid


def join(server, addr=None, **kw):
    c = Client(addr=addr or server.addr)
    sc = SyncClient(c, **kw)
    c.runAsync()
    c.wait_for_connection(10)
    wait_for(lambda: sc.own is not None and sc.own in sc.view, what="own entity")
    return c, sc


class World:
    """Servers, games, clients and proxies of one test, closed in reverse order at its end."""

    def __init__(self) -> None:
        self._cleanups: list = []

    def make(self, tick_rate=50.0, **kw):
        s, game, views_by_cid = make_world(tick_rate, **kw)
        self._cleanups += [lambda: s.shutdown(timeout=5), game.close]
        return s, game, views_by_cid

    def join(self, server, addr=None, **kw):
        c, sc = join(server, addr, **kw)
        self._cleanups += [lambda: (c.stop(), c.join(5)), sc.close]
        return c, sc

    def add(self, cleanup) -> None:
        self._cleanups.append(cleanup)

    def close(self) -> None:
        for cleanup in reversed(self._cleanups):
            cleanup()


@pytest.fixture
def world():
    w = World()
    yield w
    w.close()


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
        assert sc.stats["desyncs"] == 0 and sc.stats["full_snapshots"] == 1
    # every client sees every player
    for _c, sc in clients:
        assert {f"p{int(o.own[1:])}" for _, o in clients} <= set(sc.view)


def test_late_join_gets_full_state_and_leave_disappears(world):
    s, game, _ = world.make()
    game.sync.start()
    a, sa = world.join(s)
    b, sb = world.join(s)
    assert sb.stats["full_snapshots"] == 1
    tick_b, view_b = sb.authoritative()
    assert sa.own in view_b and sb.own in view_b and "npc" in view_b
    b_eid = sb.own
    wait_for(lambda: b_eid in sa.view, what="A sees B")
    b.stop()
    b.join(5)
    game.sync.entities.pop(b_eid, None)  # the game removes the entity of a leaver
    wait_for(lambda: b_eid not in sa.view, what="B gone from A's view")


def test_interest_filter_hides_far_entities(world):
    s, game, _ = world.make(interest=distance_interest(50.0))
    game.sync.start()
    a, sa = world.join(s)
    with game.sync.lock:
        game.sync.entities["near"] = {"x": game.sync.entities[sa.own]["x"] + 10, "y": 0.0}
        game.sync.entities["far"] = {"x": 10_000.0, "y": 0.0}
    wait_for(lambda: "near" in sa.view, what="near entity")
    assert "far" not in sa.view
    with game.sync.lock:  # the far entity walks into view, then out again
        game.sync.entities["far"] = {"x": game.sync.entities[sa.own]["x"] + 20, "y": 0.0}
    wait_for(lambda: "far" in sa.view, what="far entity entering")
    with game.sync.lock:
        game.sync.entities["far"] = {"x": 10_000.0, "y": 0.0}
    wait_for(lambda: "far" not in sa.view, what="far entity leaving")


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


def test_delta_keeps_signed_zero_and_int_float():
    a = {"e": {"v": 0.0, "n": 1}}
    b = {"e": {"v": -0.0, "n": 1.0}}
    d = diff_views(a, b)
    assert d == {"u": {"e": {"v": -0.0, "n": 1.0}}}
    assert checksum(apply_delta(a, d)) == checksum(b)
