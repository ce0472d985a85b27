"""Arena rules: pure functions and data, shared by server, clients and bots.

No networking and no pyglet here: the server applies :func:`apply_input` to
authoritative state, and clients predict their own avatar with the very same
function, so prediction and server agree exactly.
"""

from __future__ import annotations

import colorsys
import math
import random
import unicodedata
import zlib
from typing import Any

ARENA_W = 800.0
ARENA_H = 560.0
RADIUS = 14.0
COIN_RADIUS = 8.0
SPEED = 180.0
TICK_RATE = 20.0
MAX_COINS = 6
MAX_DT = 0.1


MAX_NAME = 24
# Letters of other scripts that look like Latin ones (the common cases of
# Unicode's confusables list): two players must not look alike.
_LOOKALIKE = str.maketrans({
    "а": "a", "в": "b", "е": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c", "т": "t",
    "у": "y", "х": "x", "і": "i", "ј": "j", "ѕ": "s", "ԁ": "d", "ɡ": "g", "α": "a", "β": "b", "ε": "e",
    "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "0": "o", "1": "l",
    "|": "l", "5": "s",
})


def clean_name(name: Any, taken: Any = ()) -> str:
    """A player name fit to show: NFKC-normalised, printable (no control,
    format or bidi characters such as U+202E, no newlines or NULs), spaces
    collapsed, at most ``MAX_NAME`` characters, and unique: a name that
    looks like one in ``taken`` (case, width, and common look-alike letters
    of other scripts ignored) gets a number appended."""
    text = unicodedata.normalize("NFKC", name if isinstance(name, str) else "")
    text = "".join(ch if unicodedata.category(ch)[0] not in "CZ" else " " for ch in text)
    text = " ".join(text.split())[:MAX_NAME].strip() or "player"
    seen = {name_key(t) for t in taken if isinstance(t, str)}
    base, n = text, 2
    while name_key(text) in seen:
        suffix = f" {n}"
        text = base[: MAX_NAME - len(suffix)].rstrip() + suffix
        n += 1
    return text


def name_key(name: str) -> str:
    """What two names are compared by for uniqueness (see :func:`clean_name`)."""
    text = unicodedata.normalize("NFKC", name).casefold().translate(_LOOKALIKE)
    return "".join(ch for ch in text if not ch.isspace())


COIN_HUE = 47.4
"""Hue of the coins (255, 210, 40), in degrees: no player colour comes near it."""

PLAYER_HUES = (0.0, 95.0, 135.0, 180.0, 215.0, 255.0, 290.0, 325.0)
"""Eight player hues, at least 35 degrees apart and 45 from the coins' gold
(a hash of the name gave two players nearly the same cyan, others the coins'
gold)."""


def _rgb(hue: float, value: float = 1.0) -> list[int]:
    r, g, b = colorsys.hsv_to_rgb(hue / 360.0, 0.72, value)
    return [round(r * 255), round(g * 255), round(b * 255)]


def player_color(index: int) -> list[int]:
    """The colour of the ``index``-th player slot: the eight hues of
    :data:`PLAYER_HUES`, then the same hues darker for the next eight and
    the next (24 distinct colours); from the 25th slot on the hues shift by
    a few degrees per round (colours may repeat there)."""
    rounds, slot = divmod(index, len(PLAYER_HUES))
    if rounds < 3:
        return _rgb(PLAYER_HUES[slot], 1.0 - 0.2 * rounds)
    return _rgb((PLAYER_HUES[slot] + 4.0 * (rounds - 2)) % 360.0, 0.7)


def pick_color(taken: list[Any]) -> list[int]:
    """The first slot colour no current player has (the server's choice at
    a join; a player keeps it when renamed).  Looks at most one slot past
    the number taken, so it ends whatever ``taken`` holds."""
    used = {tuple(c) for c in taken if c is not None}
    for i in range(len(used) + 1):
        color = player_color(i)
        if tuple(color) not in used:
            return color
    return player_color(len(used))


def color_for(name: str) -> list[int]:
    """A colour from a name alone (for players made outside a server's
    join, e.g. tests); the server uses :func:`pick_color`."""
    return player_color(zlib.crc32(name.encode()) % len(PLAYER_HUES))


def new_player(name: str, seed: int, color: list[int] | None = None) -> dict[str, Any]:
    rng = random.Random(seed)
    return {
        "kind": "player",
        "name": name,
        "x": rng.uniform(RADIUS, ARENA_W - RADIUS),
        "y": rng.uniform(RADIUS, ARENA_H - RADIUS),
        "score": 0,
        "color": color_for(name) if color is None else list(color),
    }


def apply_input(state: dict[str, Any], inp: Any) -> dict[str, Any]:
    """Move a player by one input ``{"dx": -1..1, "dy": -1..1, "dt": s}``.

    Pure and deterministic; ``dt`` is clamped (a client cannot speed-hack by
    claiming a long frame) and the position is kept in the arena.
    """
    if not isinstance(inp, dict):
        return state
    try:
        dx = max(-1.0, min(1.0, float(inp.get("dx", 0))))
        dy = max(-1.0, min(1.0, float(inp.get("dy", 0))))
        dt = max(0.0, min(MAX_DT, float(inp.get("dt", 0))))
    except (TypeError, ValueError):
        return state
    n = math.hypot(dx, dy)
    if n > 1.0:
        dx, dy = dx / n, dy / n
    x = min(ARENA_W - RADIUS, max(RADIUS, state["x"] + dx * SPEED * dt))
    y = min(ARENA_H - RADIUS, max(RADIUS, state["y"] + dy * SPEED * dt))
    return {**state, "x": x, "y": y}


class Rules:
    """Coins spawn, players pick them up and score.  Runs on the server."""

    def __init__(self, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.next_coin = 0

    def step(self, entities: dict[str, dict[str, Any]], dt: float, tick: int) -> None:
        coins = [eid for eid, e in entities.items() if e.get("kind") == "coin"]
        while len(coins) < MAX_COINS:
            eid = f"c{self.next_coin}"
            self.next_coin += 1
            entities[eid] = {
                "kind": "coin",
                "x": self.rng.uniform(COIN_RADIUS, ARENA_W - COIN_RADIUS),
                "y": self.rng.uniform(COIN_RADIUS, ARENA_H - COIN_RADIUS),
            }
            coins.append(eid)
        for pid, p in list(entities.items()):
            if p.get("kind") != "player":
                continue
            for cid in coins:
                c = entities.get(cid)
                if c is not None and math.hypot(c["x"] - p["x"], c["y"] - p["y"]) <= RADIUS + COIN_RADIUS:
                    del entities[cid]
                    p = {**p, "score": p["score"] + 1}
                    entities[pid] = p


def bot_input(view: dict[str, dict[str, Any]], own: str | None, dt: float) -> dict[str, Any]:
    """A simple AI: head for the nearest coin that no other player is closer to."""
    me = view.get(own) if own else None
    if me is None:
        return {"dx": 0, "dy": 0, "dt": dt}
    others = [e for k, e in view.items() if e.get("kind") == "player" and k != own]
    best = None
    fallback = None
    for e in view.values():
        if e.get("kind") != "coin":
            continue
        d = math.hypot(e["x"] - me["x"], e["y"] - me["y"])
        if fallback is None or d < fallback[0]:
            fallback = (d, e)
        if any(math.hypot(e["x"] - o["x"], e["y"] - o["y"]) < d for o in others):
            continue
        if best is None or d < best[0]:
            best = (d, e)
    best = best or fallback
    if best is None or best[0] < 1.0:
        return {"dx": 0, "dy": 0, "dt": dt}
    d, c = best
    return {"dx": (c["x"] - me["x"]) / d, "dy": (c["y"] - me["y"]) / d, "dt": dt}


def players_by_name(view: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{name: {"x", "y", "score", "color"}}`` of the players in a view."""
    return {
        e["name"]: {"x": e["x"], "y": e["y"], "score": e["score"], "color": e.get("color")}
        for e in view.values()
        if e.get("kind") == "player"
    }
