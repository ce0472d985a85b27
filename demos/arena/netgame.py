"""The arena's networking: a server, a client and bots, built from the public
API and events only (no subclass of Server or Client carries game logic)."""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any

from peng3dnet import events
from peng3dnet.errors import InvalidAddressError, NetworkError
from peng3dnet.ext.discovery import DISCOVERY_PORT, DiscoveryResponder
from peng3dnet.ext.rooms import Lobby, Room, RoomClient, RoomServer
from peng3dnet.ext.sync import SyncClient, SyncServer
from peng3dnet.net import Client, Server
from peng3dnet.packet import Packet

from .game import MAX_DT, TICK_RATE, Rules, apply_input, bot_input, clean_name, new_player, pick_color, players_by_name

log = logging.getLogger(__name__)

HISTORY = 200
NET_CFG = {"net.session.resume": True}
"""Both sides resume a session after a dropped socket: a player keeps its
avatar and score through a Wi-Fi hiccup (see the README, "Sessions")."""


class ArenaLogic:
    """The game on one SyncServer: players join with an avatar, inputs move
    them (or name them), the rules step, the history keeps the last
    ``HISTORY`` ticks.  Shared by the single server and each cluster room
    (tick thread)."""

    MAX_BUDGET = 0.25
    """Seconds of movement a player may have saved up (inputs of a few
    ticks arriving together); each tick adds its duration."""

    def __init__(self, sync: SyncServer, seed: int = 1) -> None:
        self.sync = sync
        self.rules = Rules(seed=seed)
        self.history: collections.OrderedDict[int, dict[str, Any]] = collections.OrderedDict()
        self.budget: dict[str, float] = {}
        """eid -> seconds of movement left: ``apply_input`` clamps one input's
        ``dt``, this clamps their sum (a burst of inputs each claiming the
        longest frame moved a player 50 times faster than anyone, in the
        fault hunt of 2026-12-02)."""

    def join(self, cid: int) -> None:
        eid = f"p{cid}"
        taken = [e.get("color") for e in self.sync.entities.values() if e.get("kind") == "player"]
        self.sync.entities[eid] = new_player(f"player{cid}", seed=cid, color=pick_color(taken))
        self.sync.owners[cid] = eid
        self.budget[eid] = self.MAX_BUDGET

    def leave(self, eid: str | None) -> None:
        if eid:
            self.sync.entities.pop(eid, None)
            self.budget.pop(eid, None)

    def input(self, cid: int, eid: str | None, inp: Any) -> None:
        entities = self.sync.entities
        if eid is None or eid not in entities or not isinstance(inp, dict):
            return
        name = inp.get("name")
        if isinstance(name, str):
            taken = [e.get("name") for k, e in entities.items() if k != eid]
            name = clean_name(name, taken)
            entities[eid] = {**entities[eid], "name": name}  # the colour stays with the player
            return
        try:
            claimed = max(0.0, float(inp.get("dt", 0)))
        except (TypeError, ValueError):
            return
        left = self.budget.get(eid, 0.0)
        dt = min(claimed, left)
        self.budget[eid] = left - min(dt, MAX_DT)  # (apply_input clamps it to MAX_DT too)
        entities[eid] = apply_input(entities[eid], {**inp, "dt": dt})

    def step(self, dt: float, tick: int) -> dict[str, dict[str, Any]]:
        """Run the rules; return (and remember) the players at this tick."""
        for eid, left in self.budget.items():
            self.budget[eid] = min(self.MAX_BUDGET, left + dt)
        self.rules.step(self.sync.entities, dt, tick)
        now = players_by_name(self.sync.entities)
        self.history[tick] = now
        while len(self.history) > HISTORY:
            self.history.popitem(last=False)
        return now

    def report(self) -> dict[str, Any]:
        return {"tick": self.sync.tick, "players": players_by_name(self.sync.entities),
                "history": {str(t): v for t, v in self.history.items()}}


class ArenaServer:
    """Authoritative arena server (headless; runs its own threads)."""

    def __init__(self, host: str = "0.0.0.0", port: int = 0, *, lan: bool = False, lan_port: int = DISCOVERY_PORT,
                 peng: Any = None) -> None:
        self.host = host
        self.lan_port = lan_port
        self.server = Server(peng=peng, addr=(host, port), cfg=NET_CFG)
        self.server.getPingData = self._ping_data  # type: ignore[attr-defined]  # ping/LAN status
        self.sync = SyncServer(self.server, tick_rate=TICK_RATE)
        self.game = ArenaLogic(self.sync)
        self.sync.on_input = self.game.input
        self.sync.on_step = self.game.step
        self.lan = lan
        self._discovery: DiscoveryResponder | None = None
        # game logic wired through events (they fire on the sync tick thread)
        events.subscribe("peng3dnet:sync.join", self._on_join, sender=self.server)
        events.subscribe("peng3dnet:sync.leave", self._on_leave, sender=self.server)

    def _ping_data(self, msg: Any, cid: Any) -> dict[str, Any]:
        return {"name": "peng3dnet arena", "players": len(self.sync.owners)}

    def start(self, *, threads: bool = True) -> ArenaServer:
        """Start serving.  ``threads=False``: only bind; the caller drives
        everything from one thread (:func:`run_polled`), and LAN discovery
        (which has a thread of its own) is off."""
        if not threads:
            self.server.poll()  # binds; the loop runs inside the caller's poll() calls
            return self
        self.server.runAsync()
        self.server.process_async()  # inputs reach the SyncServer through a packet handler
        self.sync.start()
        if self.lan:
            try:
                host = "" if self.host in ("0.0.0.0", "::") else self.host
                self._discovery = DiscoveryResponder(self.server, self.lan_port, host=host).start()
            except (NetworkError, InvalidAddressError) as exc:
                log.warning("LAN discovery unavailable: %s", exc)
        return self

    @property
    def port(self) -> int:
        return int(self.server.addr[1])

    @property
    def lan_addr(self) -> tuple[str, int] | None:
        """The bound (host, port) of LAN discovery, ``None`` when it is off."""
        return self._discovery.addr if self._discovery is not None else None

    def stop(self) -> None:
        if self._discovery is not None:
            self._discovery.stop()
        self.sync.stop()
        events.unsubscribe("peng3dnet:sync.join", self._on_join, sender=self.server)
        events.unsubscribe("peng3dnet:sync.leave", self._on_leave, sender=self.server)
        self.server.shutdown(timeout=5)

    # tick thread -------------------------------------------------------------------------
    def _on_join(self, event: str, data: dict[str, Any]) -> None:
        self.game.join(data["cid"])

    def _on_leave(self, event: str, data: dict[str, Any]) -> None:
        self.game.leave(data.get("eid"))

    def report(self) -> dict[str, Any]:
        with self.sync.lock:
            return {"role": "server", **self.game.report(), "stats": {**self.sync.stats, **self.server.stats.as_dict()}}


# --- the cluster: rooms on many server processes, a directory on Redis -------------------------

KIND = "arena"
CHAT_PACKET = "arena:chat"
"""Client -> its server: a chat line; server -> its clients: a line from any server of the cluster."""
BOARD_PACKET = "arena:board"
"""Server -> the members of a room, once a second: the cluster's leaderboard ``[[name, score], ...]``."""
BOARD_KEY = "arena:board"
CHAT_CHANNEL = "arena:chat"
DEMO_SECRET = b"peng3dnet arena demo secret: set PENG3DNET_CLUSTER_SECRET"
DISPOSED_KEPT = 16
"""How many disposed rooms' reports a cluster server keeps for its ``--report``."""


def cluster_secret() -> bytes:
    """The seat-token secret every server and lobby of the cluster shares."""
    import os

    env = os.environ.get("PENG3DNET_CLUSTER_SECRET")
    return env.encode() if env else DEMO_SECRET


class ArenaRoom(Room):
    """One arena: its own sync, rules and history; scores go to the cluster's leaderboard."""

    max_clients = 8
    synced = True

    def on_create(self, options: dict[str, Any]) -> None:
        assert self.sync is not None
        self.game = ArenaLogic(self.sync, seed=abs(hash(self.name)) % 1000)
        self._board_at = 0.0
        self._scores: dict[str, int] = {}  # each player's score at the last tick, by entity
        self._names: dict[str, str] = {}  # and its name then
        self.sync.on_join = self.game.join
        self.sync.on_input = self.game.input
        self.sync.on_step = self._step

    def on_leave(self, client: Any) -> None:
        assert self.sync is not None
        self.game.leave(self.sync.owners.pop(client.cid, None))

    def _step(self, dt: float, tick: int) -> None:
        assert self.sync is not None
        self.game.step(dt, tick)
        scores, names = {}, {}
        board = self.rooms.presence
        for eid, e in self.sync.entities.items():  # points scored this tick go to the cluster's leaderboard
            if e.get("kind") == "player":
                scores[eid], names[eid] = e["score"], e["name"]
                before = self._scores.get(eid, 0)
                old = self._names.get(eid)
                if old is not None and old != e["name"] and before > 0:
                    # Renamed (a player's name arrives after it joined, and a
                    # coin under its spawn point may score first): its points
                    # go with it, off the old name.
                    board.incr_score(BOARD_KEY, old, -before)
                    board.incr_score(BOARD_KEY, e["name"], before)
                gained = e["score"] - before  # by entity: a rename in this tick loses nothing
                if gained > 0:
                    board.incr_score(BOARD_KEY, e["name"], gained)
        self._scores, self._names = scores, names
        t = time.monotonic()
        if t - self._board_at >= 1.0:
            self._board_at = t
            top = [list(x) for x in board.top(BOARD_KEY, 5) if x[1] > 0]  # (a renamed player's old name keeps 0)
            self.broadcast(BOARD_PACKET, top)

    def report(self) -> dict[str, Any]:
        return self.game.report()


class _ChatIn(Packet):
    """A chat line from one of our clients: to every server of the cluster."""

    def receive(self, msg: Any, cid: int | None = None) -> None:
        if isinstance(msg, str) and msg.strip():
            self.obj.publish(CHAT_CHANNEL, msg.strip()[:120])


class ClusterArenaServer:
    """An arena server process of a cluster: rooms of kind "arena", the
    directory and the chat on Redis (``--server --cluster URL``)."""

    def __init__(self, url: str, host: str = "127.0.0.1", port: int = 0) -> None:
        from peng3dnet.ext.rooms.redispresence import RedisPresence

        self.server = Server(addr=(host, port), cfg=NET_CFG)
        self.presence = RedisPresence(url, "arena")
        self.rooms = RoomServer(self.server, self.presence, secret=cluster_secret(), tick_rate=TICK_RATE, sync=True)
        self.rooms.define(KIND, ArenaRoom)
        self.server.register_packet(CHAT_PACKET, _ChatIn(self.server.registry, self.server, self.rooms))
        self.server.register_packet(BOARD_PACKET, Packet(self.server.registry, self.server))
        self.disposed: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        """The report of each room at its disposal, by name (the last ``DISPOSED_KEPT``;
        the rooms' lock guards it): a room goes when its last player leaves,
        before the server's report is written."""
        events.subscribe("peng3dnet:cluster.message", self._on_cluster, sender=self.server)
        events.subscribe("peng3dnet:room.dispose", self._on_dispose, sender=self.server)

    def _on_cluster(self, event: str, data: dict[str, Any]) -> None:  # the presence's thread
        if data["channel"] == CHAT_CHANNEL:
            self.server.broadcast(CHAT_PACKET, data["data"])

    def _on_dispose(self, event: str, data: dict[str, Any]) -> None:  # under the rooms' lock
        room = data["room"]
        if isinstance(room, ArenaRoom):
            self.disposed.pop(room.name, None)
            self.disposed[room.name] = room.report()
            while len(self.disposed) > DISPOSED_KEPT:
                self.disposed.popitem(last=False)

    def start(self) -> ClusterArenaServer:
        self.server.runAsync()
        self.server.process_async()
        self.rooms.start()
        self.rooms.subscribe(CHAT_CHANNEL)
        return self

    @property
    def port(self) -> int:
        return int(self.server.addr[1])

    def stop(self) -> None:
        events.unsubscribe("peng3dnet:cluster.message", self._on_cluster, sender=self.server)
        events.unsubscribe("peng3dnet:room.dispose", self._on_dispose, sender=self.server)
        self.rooms.stop()
        self.server.shutdown(timeout=5)
        self.presence.close()

    def report(self) -> dict[str, Any]:
        with self.rooms.lock:
            rooms = {name: r.report() for name, r in self.rooms.rooms.items() if isinstance(r, ArenaRoom)}
            disposed = dict(self.disposed)
        return {"role": "server", "addr": self.rooms.public_addr, "rooms": rooms, "disposed": disposed,
                "stats": dict(self.rooms.stats)}


def matchmake(url: str, room: str | None) -> dict[str, Any]:
    """Ask the cluster's lobby for a seat (``--lobby URL --room NAME``)."""
    from peng3dnet.ext.rooms.redispresence import RedisPresence

    presence = RedisPresence(url, "arena")
    try:
        return Lobby(presence, cluster_secret()).matchmake(KIND, room=room)
    finally:
        presence.close()


class _ChatOut(Packet):
    def receive(self, msg: Any, cid: int | None = None) -> None:
        self.obj.chat.append(str(msg))
        del self.obj.chat[:-20]


class _Board(Packet):
    def receive(self, msg: Any, cid: int | None = None) -> None:
        if isinstance(msg, list):
            self.obj.board = [(str(n), s) for n, s in msg if isinstance(n, str)][:5]


class ArenaClient:
    """One player: a Client plus a SyncClient predicting its avatar."""

    def __init__(self, addr: Any, name: str, *, peng: Any = None, interp_delay: float = 0.1,
                 seat: dict[str, Any] | None = None) -> None:
        self.name = name
        self.seat = seat
        """A lobby's ticket (cluster mode): ``addr`` is its server, its token our seat."""
        self.client = Client(peng=peng, addr=addr, cfg=NET_CFG)
        self.sync = SyncClient(self.client, tick_rate=TICK_RATE, predict=apply_input, interp_delay=interp_delay)
        self.chat: list[str] = []
        """Chat lines from the whole cluster, newest last (cluster mode)."""
        self.board: list[tuple[str, Any]] = []
        """The cluster's leaderboard, best first (cluster mode)."""
        self.rooms: RoomClient | None = None
        if seat is not None:
            self.rooms = RoomClient(self.client)
            self.client.register_packet(CHAT_PACKET, _ChatOut(self.client.registry, self.client, self))
            self.client.register_packet(BOARD_PACKET, _Board(self.client.registry, self.client, self))
        self.rtt: float | None = None
        self.resumes = 0
        self.eids: list[str] = []  # every entity id this player was given (one, unless it rejoined)
        events.subscribe("peng3dnet:client.heartbeat", self._on_heartbeat, sender=self.client)
        events.subscribe("peng3dnet:client.resumed", self._on_resumed, sender=self.client)
        events.subscribe("peng3dnet:sync.snapshot", self._on_snapshot, sender=self.client)

    def _on_snapshot(self, event: str, data: dict[str, Any]) -> None:
        """Note the entity id we were given (the thread that processes our
        packets: a bot's process thread, a window's main thread)."""
        own = self.sync.own
        if own is not None and own not in self.eids:
            self.eids.append(own)

    def _on_resumed(self, event: str, data: dict[str, Any]) -> None:
        self.resumes += 1
        log.info("%s: connection resumed (%d)", self.name, self.resumes)

    def _on_heartbeat(self, event: str, data: dict[str, Any]) -> None:
        self.rtt = data["rtt"]

    def start(self, timeout: float = 10.0, *, process: bool = True) -> ArenaClient:
        """Connect.  Snapshots reach the SyncClient through a packet handler,
        so the client's packets must be processed by exactly one thread:
        ``process=True`` starts a process thread (headless players, bots);
        a window passes ``False`` and processes them on the main thread
        (``attach_to_pyglet`` calls ``process()`` every clock tick)."""
        self.client.runAsync()
        if process:
            self.client.process_async()
        self.client.wait_for_connection(timeout)
        if self.rooms is not None and self.seat is not None:
            self.rooms.join(seat=self.seat["token"], timeout=timeout)
            self.client.send_message(CHAT_PACKET, f"{self.name} joined {self.rooms.room}")
        self.sync.send_input({"name": self.name})
        return self

    def move(self, dx: float, dy: float, dt: float) -> None:
        self.sync.send_input({"dx": dx, "dy": dy, "dt": dt})

    def stop(self) -> None:
        self.sync.close()
        events.unsubscribe("peng3dnet:client.heartbeat", self._on_heartbeat, sender=self.client)
        events.unsubscribe("peng3dnet:client.resumed", self._on_resumed, sender=self.client)
        events.unsubscribe("peng3dnet:sync.snapshot", self._on_snapshot, sender=self.client)
        self.client.close("bye")
        try:
            self.client.join(5)
        except Exception as exc:  # noqa: BLE001 - best effort at exit
            log.debug("client join: %s", exc)

    def report(self) -> dict[str, Any]:
        tick, view = self.sync.authoritative()
        return {
            "role": "client",
            "name": self.name,
            "tick": tick,
            "players": players_by_name(view),
            "stats": {**self.sync.stats, "rtt": self.rtt, "resumes": self.resumes,
                      **(self.client.stats.as_dict() if self.client.stats else {})},
            "eids": list(self.eids),
            **({"server": self.seat["addr"], "room": self.rooms.room if self.rooms else None,
                "chat": list(self.chat), "board": [list(b) for b in self.board]} if self.seat else {}),
        }


class Bot:
    """An AI player in a daemon thread: 20 inputs a second toward the nearest coin."""

    def __init__(self, addr: Any, name: str, seat: dict[str, Any] | None = None) -> None:
        self.player = ArenaClient(addr, name, seat=seat)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"arena bot {name}", daemon=True)

    def start(self) -> Bot:
        self.player.start()
        self._thread.start()
        return self

    def _run(self) -> None:
        dt = 1.0 / TICK_RATE
        while not self._stop.wait(dt):  # the bot's own pace
            if not self.think(dt):
                return

    def think(self, dt: float) -> bool:
        """Send one input toward the nearest coin; ``False`` once the
        connection is closed."""
        sync = self.player.sync
        own = sync.predicted_own()
        _, view = sync.authoritative()
        if own is not None and sync.own is not None:
            view[sync.own] = own
        inp = bot_input(view, sync.own, dt)
        if self.player.client.closed:
            return False
        self.player.sync.send_input(inp)
        return True

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self.player.stop()


def run_polled(server: ArenaServer | None, bots: list[Bot], duration: float | None, stop: Any = None) -> None:
    """The whole game on the calling thread, without any thread of the
    library's: ``poll()`` the server and every client, step the sync server
    at its tick rate, let the bots think (``--no-threads``).  Ends after
    ``duration`` seconds, or when ``stop()`` returns True."""
    dt = 1.0 / TICK_RATE
    clients = [b.player.client for b in bots]
    for c in clients:
        c.poll()  # connects (the server's listener already accepts)
    named: set[int] = set()
    start = next_tick = time.monotonic()
    while (duration is None or time.monotonic() - start < duration) and not (stop is not None and stop()):
        if server is not None:
            server.server.poll(0)
        for i, (b, c) in enumerate(zip(bots, clients)):
            c.poll(0)
            if i not in named and c.protocol_state.name == "ACTIVE":
                b.player.sync.send_input({"name": b.player.name})
                named.add(i)
        now = time.monotonic()
        if now >= next_tick:
            if server is not None:
                server.sync.step(dt)
            for i, b in enumerate(bots):
                if i in named:
                    b.think(dt)
            next_tick += dt
            if next_tick < now:  # fell behind: do not try to catch up
                next_tick = now + dt
        # Wait for the network (or the next tick) on the server's selector.
        wait = max(0.0, min(0.005, next_tick - time.monotonic()))
        if server is not None:
            server.server.poll(wait)
        elif clients:
            clients[0].poll(wait)
    for b, c in zip(bots, clients):
        b.player.sync.close()
        c.close("bye")
    end = time.monotonic() + 5
    while time.monotonic() < end and any(c.run for c in clients):
        if server is not None:
            server.server.poll(0.005)
        for c in clients:
            c.poll(0)
