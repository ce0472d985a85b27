"""The arena's window: peng3d (Peng, window, menu, 2D layer) and pyglet drawing.

Everything here runs on the main thread.  Network events reach it through
:func:`peng3dnet.events.attach_to_pyglet` (main-thread delivery); the
snapshot views come from the SyncClient (interpolated, own avatar predicted).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pyglet

pyglet.options["shadow_window"] = False  # before peng3d: no window until we ask
import peng3d  # noqa: E402
from pyglet.window import key  # noqa: E402

from peng3dnet.events import attach_to_pyglet  # noqa: E402

from .game import ARENA_H, ARENA_W, COIN_RADIUS, RADIUS  # noqa: E402
from .netgame import ArenaClient  # noqa: E402

log = logging.getLogger(__name__)

HUD_H = 40
PANEL_W = 220
"""The scoreboard's column right of the arena (on the arena it hid the
players near the top right corner)."""
BG = (18, 20, 28)
LABEL_H = 12
"""Height of a name label, for stacking the labels of players that overlap."""


def stack_labels(labels: list[Any]) -> None:
    """Move name labels up until none overlaps another (two players on the
    same spot had their names drawn over each other).  Labels are
    centre-anchored at x; ``content_width`` is their drawn width."""
    placed: list[tuple[float, float, float]] = []  # (x, y, half width)
    for label in sorted(labels, key=lambda lb: (lb.y, lb.x)):
        half = label.content_width / 2 + 2
        y = label.y
        # Each move puts the label just above one placed label, strictly
        # higher each time, so it moves at most len(placed) times (the
        # bound also ends it for absurd coordinates where py + 12 == py).
        for _ in range(len(placed)):
            moved = False
            for px, py, ph in placed:
                if abs(label.x - px) < half + ph and abs(y - py) < LABEL_H - 0.01:
                    y = py + LABEL_H  # strictly up (the tolerance: (py + 12) - py can be 11.99999)
                    moved = True
            if not moved:
                break
        label.y = y
        placed.append((label.x, y, half))


class ArenaLayer(peng3d.Layer2D):
    """Draws the arena, the avatars with names, the scoreboard and the HUD."""

    def __init__(self, menu: Any, window: Any, peng: Any, game: ArenaGame) -> None:
        super().__init__(menu, window, peng)
        self.game = game
        self.batch = pyglet.graphics.Batch()
        # explicit draw order: floor, then coins and avatars, then text
        self.g_floor = pyglet.graphics.OrderedGroup(0)
        self.g_items = pyglet.graphics.OrderedGroup(1)
        self.g_text = pyglet.graphics.OrderedGroup(2)
        self.shapes: dict[str, Any] = {}
        self.labels: dict[str, Any] = {}
        self.border = pyglet.shapes.Rectangle(0, 0, ARENA_W, ARENA_H, color=(30, 34, 46), batch=self.batch,
                                              group=self.g_floor)
        self.hud = pyglet.text.Label("", x=10, y=ARENA_H + HUD_H // 2, anchor_y="center", font_size=12,
                                     color=(230, 230, 230, 255), batch=self.batch, group=self.g_text)
        self.board = pyglet.text.Label("", x=ARENA_W + 12, y=ARENA_H - 10, anchor_x="left", anchor_y="top",
                                       multiline=True, width=PANEL_W - 20, align="left", font_size=11,
                                       color=(255, 255, 255, 200), batch=self.batch, group=self.g_text)

    def draw(self) -> None:
        pyglet.gl.glClearColor(BG[0] / 255, BG[1] / 255, BG[2] / 255, 1)
        self.window.clear()
        view = self.game.player.sync.render_view()
        seen = set()
        for eid, e in view.items():
            seen.add(eid)
            shape = self.shapes.get(eid)
            if e.get("kind") == "coin":
                if shape is None:
                    shape = self.shapes[eid] = pyglet.shapes.Circle(
                        0, 0, COIN_RADIUS, color=(255, 210, 40), batch=self.batch, group=self.g_items
                    )
                shape.x, shape.y = e["x"], e["y"]
            elif e.get("kind") == "player":
                color = tuple(e.get("color", (200, 200, 200)))
                if shape is None:
                    shape = self.shapes[eid] = pyglet.shapes.Circle(
                        0, 0, RADIUS, color=color, batch=self.batch, group=self.g_items
                    )
                    self.labels[eid] = pyglet.text.Label(
                        "", font_size=9, anchor_x="center", batch=self.batch, group=self.g_text
                    )
                shape.color = color
                shape.x, shape.y = e["x"], e["y"]
                label = self.labels[eid]
                me = eid == self.game.player.sync.own
                label.text = ("> " if me else "") + str(e.get("name", eid))
                label.x, label.y = e["x"], e["y"] + RADIUS + 4
        stack_labels([self.labels[eid] for eid in sorted(self.labels) if eid in seen])
        for eid in [k for k in self.shapes if k not in seen]:
            self.shapes.pop(eid).delete()
            if eid in self.labels:
                self.labels.pop(eid).delete()
        players = sorted((e for e in view.values() if e.get("kind") == "player"), key=lambda e: -e["score"])
        lines = [f"{p['name']}  {p['score']}" for p in players]
        me = self.game.player
        if me.seat is not None:  # a cluster: its leaderboard and chat, from every server
            lines += ["", f"cluster top ({me.rooms.room if me.rooms else '-'})"]
            lines += [f"{name}  {int(score)}" for name, score in me.board]
            lines += [me.chat[-1][:40]] if me.chat else []
        self.board.text = "\n".join(lines)
        rtt = self.game.player.rtt
        self.hud.text = (
            (f"RTT {rtt * 1000:.1f} ms" if rtt < 0.01 else f"RTT {rtt * 1000:.0f} ms") if rtt is not None else "RTT -"
        ) + f"   tick {self.game.tick}   players {len(players)}   {self.game.status}"
        self.batch.draw()

    def postdraw(self) -> None:
        super().postdraw()
        self.game.after_draw()


class ArenaGame:
    """The windowed client: a peng3d window driving one ArenaClient."""

    def __init__(self, player: ArenaClient, *, duration: float | None = None, screenshot: str | None = None,
                 test_keys: list[tuple[float, float, str]] | None = None) -> None:
        self.player = player
        self.duration = duration
        self.screenshot = screenshot
        self.test_keys = test_keys or []
        self.tick = -1
        self.status = "connected"
        self.start_time = time.monotonic()
        self._shot_pending = False
        self.quit_requested = False  # (request_quit(): Ctrl-C in the terminal)
        self.peng = peng3d.Peng()
        self.window = self.peng.createWindow(caption="peng3dnet arena", width=int(ARENA_W) + PANEL_W, height=int(ARENA_H) + HUD_H,
                                             resizable=False, vsync=False)
        self.menu = peng3d.Menu("arena", self.window, self.peng)
        self.window.addMenu(self.menu)
        self.layer = ArenaLayer(self.menu, self.window, self.peng, self)
        self.menu.addLayer(self.layer)
        self.window.changeMenu("arena")
        self.keys = key.KeyStateHandler()
        self.window.push_handlers(self.keys)
        # peng3d swallows Escape (it stops pyglet's exit-on-Escape); the game
        # quits on it.  A bound method of self: pyglet holds it weakly.
        self.window.push_handlers(on_key_press=self.on_key_press)
        # Every peng3dnet event of our client (core and sync), on the main
        # thread; the handler is a bound method of self, kept alive by self.
        self.net = attach_to_pyglet(player.client)
        self.net.subscribe("peng3dnet:*", self.on_net_event, sender=player.client)

    def on_net_event(self, event: str, data: dict[str, Any]) -> None:
        if event == "peng3dnet:sync.snapshot":
            self.tick = data["tick"]
        elif event == "peng3dnet:client.close":
            self.status = f"disconnected ({data['reason']})"
        elif event == "peng3dnet:sync.desync":
            self.status = f"resyncing (tick {data['tick']})"
        elif event == "peng3dnet:client.heartbeat":
            self.status = "connected"

    def on_key_press(self, symbol: int, modifiers: int) -> Any:
        if symbol == key.ESCAPE:
            log.info("Escape: leaving the game")
            pyglet.app.exit()
            return pyglet.event.EVENT_HANDLED
        return None

    def request_quit(self) -> None:
        """Leave the game as Escape does, between frames (main thread: a
        signal handler's; also before the loop runs, which would clear
        pyglet's exit flag: update() asks again)."""
        self.quit_requested = True
        pyglet.app.exit()

    def update(self, dt: float) -> None:
        if self.quit_requested:
            pyglet.app.exit()
            return
        k = self.keys
        dx = (k[key.RIGHT] or k[key.D]) - (k[key.LEFT] or k[key.A])
        dy = (k[key.UP] or k[key.W]) - (k[key.DOWN] or k[key.S])
        if not self.player.client.closed:
            self.player.move(dx, dy, min(dt, 0.1))

    def _press(self, symbol: int, down: bool) -> None:
        self.window.dispatch_event("on_key_press" if down else "on_key_release", symbol, 0)

    def after_draw(self) -> None:
        if self._shot_pending and self.screenshot:
            self._shot_pending = False
            with open(self.screenshot, "wb") as f:
                pyglet.image.get_buffer_manager().get_color_buffer().save(self.screenshot, file=f)
            log.info("screenshot saved to %s", self.screenshot)
            pyglet.app.exit()

    def _finish(self, dt: float) -> None:
        if self.screenshot:
            self._shot_pending = True  # taken after the next draw, then exit
        else:
            pyglet.app.exit()

    def run(self) -> None:
        pyglet.clock.tick()
        pyglet.clock.schedule_interval(self.update, 1 / 60)
        for start, end, name in self.test_keys:  # scripted key presses (tests, demos)
            sym = getattr(key, name.upper())
            pyglet.clock.schedule_once(lambda dt, s=sym: self._press(s, True), start)
            pyglet.clock.schedule_once(lambda dt, s=sym: self._press(s, False), end)
        if self.duration is not None:
            pyglet.clock.schedule_once(self._finish, self.duration)
        self.peng.run()
        self.net.close()
        pyglet.clock.unschedule(self.update)
