"""Tag: the rules, shared by the server and every client.

Pure functions of plain dicts: no networking, no threads, no clock.  The
server applies them to the real game; a client applies ``move`` too, to
predict its own player before the server's answer arrives.
"""

import math

WIDTH, HEIGHT = 400.0, 300.0  # the arena
SPEED = 150.0  # units per second
IT_SPEED = 200.0  # whoever is "it" is faster: every chase ends
TAG_RADIUS = 16.0  # how close "it" must come
FREEZE = 0.5  # seconds a new "it" stands still: no tagging back at once
MAX_DT = 0.1  # the longest step one input may ask for

PACKETS = ("tag:name", "tag:news")  # the game's packets, registered on both sides


def new_player(n, name, it):
    """The state of a new player (a flat dict of msgpack values)."""
    x = 40.0 if n % 2 else WIDTH - 40.0
    y = 40.0 if n % 4 < 2 else HEIGHT - 40.0
    return {"x": x, "y": y, "name": name, "it": it, "wait": 0.0, "tags": 0}


def valid_input(inp):
    """Whether a message from the network is an input we can apply."""
    return isinstance(inp, dict) and all(
        isinstance(inp.get(k), (int, float)) and not isinstance(inp.get(k), bool) for k in ("dx", "dy", "dt")
    )


def move(state, inp):
    """One input applied to a player: ``{"dx", "dy", "dt"}``, a direction
    (at most length 1) and a duration.  Returns the new state."""
    dx, dy = float(inp["dx"]), float(inp["dy"])
    length = math.hypot(dx, dy)
    if not length <= 1.0:  # also catches nan
        dx, dy = (dx / length, dy / length) if length > 0 and math.isfinite(length) else (0.0, 0.0)
    dt = min(max(float(inp["dt"]), 0.0), MAX_DT)
    if state["wait"] > 0 or not math.isfinite(dt):
        return state
    speed = IT_SPEED if state["it"] else SPEED
    x = min(max(state["x"] + dx * speed * dt, 0.0), WIDTH)
    y = min(max(state["y"] + dy * speed * dt, 0.0), HEIGHT)
    return {**state, "x": x, "y": y}


def step(players, dt):
    """Advance the game by ``dt`` seconds: count down the freeze and let
    "it" tag whoever it touches.  Returns ``(tagger, tagged)`` entity ids,
    or ``None``."""
    for eid, p in players.items():
        if p["wait"] > 0:
            players[eid] = {**p, "wait": max(0.0, p["wait"] - dt)}
    it = next((eid for eid, p in players.items() if p["it"]), None)
    if it is None or players[it]["wait"] > 0:
        return None
    for eid, p in players.items():
        if eid != it and math.dist((p["x"], p["y"]), (players[it]["x"], players[it]["y"])) <= TAG_RADIUS:
            players[it] = {**players[it], "it": False, "tags": players[it]["tags"] + 1}
            players[eid] = {**p, "it": True, "wait": FREEZE}
            return it, eid
    return None


def steer(players, me):
    """A bot's choice of direction: "it" runs at the nearest player, the
    others run away from "it"."""
    mine = players[me]
    if mine["it"]:
        others = [p for eid, p in players.items() if eid != me]
        if not others:
            return 0.0, 0.0
        target = min(others, key=lambda p: math.dist((p["x"], p["y"]), (mine["x"], mine["y"])))
        dx, dy = target["x"] - mine["x"], target["y"] - mine["y"]
    else:
        it = next((p for p in players.values() if p["it"]), None)
        if it is None:
            return 0.0, 0.0
        dx, dy = mine["x"] - it["x"], mine["y"] - it["y"]
    length = math.hypot(dx, dy)
    return (dx / length, dy / length) if length > 0 else (0.0, 0.0)
