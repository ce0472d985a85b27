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
from peng3dnet.ext.sync import SyncClient, SyncServer
from peng3dnet.net import Client, Server

from .game import TICK_RATE, Rules, apply_input, bot_input, clean_name, color_for, new_player, players_by_name

log = logging.getLogger(__name__)

HISTORY = 200
NET_CFG = {"net.session.resume": True}
"""Both sides resume a session after a dropped socket: a player keeps its
avatar and score through a Wi-Fi hiccup (see the README, "Sessions")."""


class ArenaServer:
    """Authoritative arena server (headless; runs its own threads)."""

    def __init__(self, host: str = "0.0.0.0", port: int = 0, *, lan: bool = False, lan_port: int = DISCOVERY_PORT,
                 peng: Any = None) -> None:
        self.host = host
        self.lan_port = lan_port
        self.server = Server(peng=peng, addr=(host, port), cfg=NET_CFG)
        self.server.getPingData = self._ping_data  # type: ignore[attr-defined]  # ping/LAN status
        self.sync = SyncServer(self.server, tick_rate=TICK_RATE)
        self.sync.on_input = self._on_input
        self.sync.on_step = self._on_step
        self.rules = Rules()
        self.history: collections.OrderedDict[int, dict[str, Any]] = collections.OrderedDict()
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
        cid = data["cid"]
        eid = f"p{cid}"
        self.sync.entities[eid] = new_player(f"player{cid}", seed=cid)
        self.sync.owners[cid] = eid

    def _on_leave(self, event: str, data: dict[str, Any]) -> None:
        if data.get("eid"):
            self.sync.entities.pop(data["eid"], None)

    def _on_input(self, cid: int, eid: str | None, inp: Any) -> None:
        if eid is None or eid not in self.sync.entities or not isinstance(inp, dict):
            return
        name = inp.get("name")
        if isinstance(name, str):
            taken = [e.get("name") for k, e in self.sync.entities.items() if k != eid]
            name = clean_name(name, taken)
            self.sync.entities[eid] = {**self.sync.entities[eid], "name": name, "color": color_for(name)}
            return
        self.sync.entities[eid] = apply_input(self.sync.entities[eid], inp)

    def _on_step(self, dt: float, tick: int) -> None:
        self.rules.step(self.sync.entities, dt, tick)
        self.history[tick] = players_by_name(self.sync.entities)
        while len(self.history) > HISTORY:
            self.history.popitem(last=False)

    def report(self) -> dict[str, Any]:
        with self.sync.lock:
            return {
                "role": "server",
                "tick": self.sync.tick,
                "players": players_by_name(self.sync.entities),
                "stats": {**self.sync.stats, **self.server.stats.as_dict()},
                "history": {str(t): v for t, v in self.history.items()},
            }


class ArenaClient:
    """One player: a Client plus a SyncClient predicting its avatar."""

    def __init__(self, addr: Any, name: str, *, peng: Any = None, interp_delay: float = 0.1) -> None:
        self.name = name
        self.client = Client(peng=peng, addr=addr, cfg=NET_CFG)
        self.sync = SyncClient(self.client, tick_rate=TICK_RATE, predict=apply_input, interp_delay=interp_delay)
        self.rtt: float | None = None
        self.resumes = 0
        self.eids: list[str] = []  # every entity id this player was given (one, unless it rejoined)
        events.subscribe("peng3dnet:client.heartbeat", self._on_heartbeat, sender=self.client)
        events.subscribe("peng3dnet:client.resumed", self._on_resumed, sender=self.client)

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
        self.sync.send_input({"name": self.name})
        return self

    def move(self, dx: float, dy: float, dt: float) -> None:
        self.sync.send_input({"dx": dx, "dy": dy, "dt": dt})

    def stop(self) -> None:
        self.sync.close()
        events.unsubscribe("peng3dnet:client.heartbeat", self._on_heartbeat, sender=self.client)
        events.unsubscribe("peng3dnet:client.resumed", self._on_resumed, sender=self.client)
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
        }


class Bot:
    """An AI player in a daemon thread: 20 inputs a second toward the nearest coin."""

    def __init__(self, addr: Any, name: str) -> None:
        self.player = ArenaClient(addr, name)
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
        if sync.own is not None and sync.own not in self.player.eids:
            self.player.eids.append(sync.own)
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
