"""A tiny synced game for the ext.sync tests: live servers, clients and
proxies of one test (the ``world`` fixture in conftest.py)."""

from __future__ import annotations

from typing import Any

from peng3dnet import events
from peng3dnet.ext.sync import SyncClient, SyncServer
from peng3dnet.net import Client, Server
from tests.helpers import wait_for

SPEED = 100.0


def move(state, inp):
    """The shared, pure input function (server applies it, client predicts with it)."""
    dt = min(max(float(inp.get("dt", 0.0)), 0.0), 0.1)
    return {**state, "x": state["x"] + inp.get("dx", 0) * SPEED * dt, "y": state["y"] + inp.get("dy", 0) * SPEED * dt}


class Game:
    """Players get an entity ``p<cid>`` on join (through the sync.join event,
    or the on_join hook with ``hooks=True``); an NPC walks right."""

    def __init__(self, server: Server, *, hooks: bool = False, **kw: Any) -> None:
        self.sync = SyncServer(server, **kw)
        self.sync.on_input = self.on_input
        self.sync.on_step = self.on_step
        self.server = server
        self.hooks = hooks
        if hooks:
            self.sync.on_join = lambda cid: self.on_join("hook", {"cid": cid})
        else:
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
        if not self.hooks:
            events.unsubscribe("peng3dnet:sync.join", self.on_join, sender=self.server)
        self.sync.stop()


def make_world(tick_rate=50.0, *, cfg=None, hooks=False, **kw):
    s = Server(addr=("127.0.0.1", 0), cfg={"net.heartbeat.enabled": False, **(cfg or {})})
    game = Game(s, tick_rate=tick_rate, hooks=hooks, **kw)
    views_by_cid: dict[int, dict[int, dict]] = {}
    orig = game.sync._send_snapshots

    def recording():
        for cid in game.sync.clients:
            views_by_cid.setdefault(cid, {})[game.sync.tick] = game.sync.view_for(cid)
        orig()

    game.sync._send_snapshots = recording
    s.runAsync()
    s.process_async()  # inputs reach the SyncServer through a packet handler
    return s, game, views_by_cid


def join(server, addr=None, *, cfg=None, **kw):
    c = Client(addr=addr or server.addr, cfg=cfg)
    sc = SyncClient(c, **kw)
    c.runAsync()
    c.process_async()  # snapshots reach the SyncClient through a packet handler
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
