"""Views and their delta algebra: pure functions, no I/O, no threads, no msgpack.

Theory of operation
-------------------
A *view* is what one client may see of the game at one tick: a dict from
entity id (str) to a flat dict of msgpack-able values
(``{"p1": {"x": 1.0, "y": 2.0, "name": "p1"}}``).  Views are values: every
function here returns a new dict and never mutates its arguments, and the
state dicts inside a view are replaced, never changed in place.

A *delta* turns one view into another.  It has at most four keys, each left
out when empty::

    "n": {eid: full state}          # new or replaced entities
    "u": {eid: {key: value}}        # changed keys
    "k": {eid: [key, ...]}          # removed keys
    "d": [eid, ...]                 # entities gone from the view

The algebra has one law, which the tests check with hypothesis::

    apply_delta(base, diff_views(base, new)) == new

and more strongly: the result *encodes* exactly as ``new`` does.  Python
says ``1 == 1.0 == True`` and ``0.0 == -0.0``, msgpack does not, and the
desync check (:func:`~peng3dnet.ext.sync.wire.checksum`) is over the encoded
form, so :func:`diff_views` sends a key whenever its value would encode
differently, not only when it compares unequal.

Interpolation (:func:`lerp_view`, :func:`interpolate`) blends two views:
float fields move linearly from the older to the newer value, everything
else takes the newer value.  :func:`distance_interest` builds the server's
interest filter.

Thread safety: every function is pure; call them from any thread.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "View",
    "Delta",
    "canonical",
    "diff_views",
    "apply_delta",
    "differs",
    "lerp_view",
    "interpolate",
    "distance",
    "distance_interest",
]

View = dict[str, dict[str, Any]]
"""entity id -> flat dict of msgpack-able values."""
Delta = dict[str, Any]
"""What :func:`diff_views` returns (keys ``n``, ``u``, ``k``, ``d``)."""


def canonical(view: View) -> list[list[Any]]:
    """``view`` in a canonical order: ``[[eid, [(key, value), ...]], ...]``,
    entity ids and keys sorted.  Two views that are equal as dicts give
    equal canonical forms whatever their insertion order (the input of the
    checksum)."""
    return [[eid, sorted(view[eid].items())] for eid in sorted(view)]


def differs(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` would encode differently: ``1`` vs ``1.0``
    vs ``True`` and ``0.0`` vs ``-0.0`` compare equal in Python but not on
    the wire."""
    if type(a) is not type(b) or a != b:
        return True
    return isinstance(a, float) and math.copysign(1.0, a) != math.copysign(1.0, b)


def diff_views(base: View, new: View) -> Delta:
    """The delta that turns ``base`` into ``new`` (keys ``n``, ``u``, ``k``, ``d``).

    Args:
        base: The view the receiver has.
        new: The view it should get.

    Returns:
        A delta with the empty parts left out (``{}`` when nothing changed).
    """
    n: dict[str, Any] = {}
    u: dict[str, Any] = {}
    k: dict[str, Any] = {}
    for eid, st in new.items():
        old = base.get(eid)
        if old is None:
            n[eid] = st
            continue
        changed = {key: v for key, v in st.items() if key not in old or differs(old[key], v)}
        if changed:
            u[eid] = changed
        gone = [key for key in old if key not in st]
        if gone:
            k[eid] = gone
    d = [eid for eid in base if eid not in new]
    out: Delta = {}
    if n:
        out["n"] = n
    if u:
        out["u"] = u
    if k:
        out["k"] = k
    if d:
        out["d"] = d
    return out


def apply_delta(base: View, delta: Delta) -> View:
    """Apply a delta (see :func:`diff_views`) to a copy of ``base``.

    Keys of ``delta`` other than ``n``, ``u``, ``k`` and ``d`` are ignored,
    so a whole snapshot message may be passed.

    Returns:
        The new view; ``base`` is not changed.
    """
    view = dict(base)
    for eid in delta.get("d", ()):
        view.pop(eid, None)
    for eid, st in delta.get("n", {}).items():
        view[eid] = dict(st)
    for eid, changed in delta.get("u", {}).items():
        st = dict(view.get(eid, {}))
        st.update(changed)
        view[eid] = st
    for eid, gone in delta.get("k", {}).items():
        st = dict(view.get(eid, {}))
        for key in gone:
            st.pop(key, None)
        view[eid] = st
    return view


def lerp_view(v0: View, v1: View, a: float) -> View:
    """``v1`` with its float fields moved back toward ``v0``: ``a = 0`` gives
    ``v0``'s numbers, ``a = 1`` gives ``v1``.  Entities only in ``v1`` and
    non-float fields take ``v1``'s values; entities only in ``v0`` are left out."""
    out: View = {}
    for eid, s1 in v1.items():
        s0 = v0.get(eid)
        if s0 is None:
            out[eid] = dict(s1)
            continue
        st = dict(s1)
        for key, b in s1.items():
            x = s0.get(key)
            if isinstance(b, float) and isinstance(x, (int, float)) and not isinstance(x, bool):
                st[key] = x + (b - x) * a
        out[eid] = st
    return out


def interpolate(buffer: Sequence[tuple[float, View]], t: float) -> View:
    """The view at time ``t`` from ``(time, view)`` pairs in time order.

    Before the first pair it is the first view, after the last the last (no
    extrapolation); in between, :func:`lerp_view` of the two around ``t``.

    Raises:
        IndexError: ``buffer`` is empty.
    """
    if t <= buffer[0][0]:
        return dict(buffer[0][1])
    if t >= buffer[-1][0]:
        return dict(buffer[-1][1])
    for i in range(len(buffer) - 1, 0, -1):
        t0, v0 = buffer[i - 1]
        t1, v1 = buffer[i]
        if t0 <= t <= t1:
            a = (t - t0) / (t1 - t0) if t1 > t0 else 1.0
            return lerp_view(v0, v1, a)
    return {}  # only a NaN time gets here: any other t between the first and the last time has a pair around it


def distance(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Distance of two states in the x/y plane (missing coordinates are 0;
    0 when a coordinate is not a number)."""
    try:
        return math.hypot(float(a.get("x", 0.0)) - float(b.get("x", 0.0)), float(a.get("y", 0.0)) - float(b.get("y", 0.0)))
    except (TypeError, ValueError):
        return 0.0


def distance_interest(radius: float, *, x: str = "x", y: str = "y") -> Callable[..., bool]:
    """An interest filter: a client sees entities within ``radius`` of its own
    entity (and everything when it has none).  Entities without a position
    are always visible.

    Args:
        radius: The view distance.
        x: The key of the first coordinate.
        y: The key of the second coordinate (missing means 0).

    Returns:
        ``interest(cid, eid, state, entities, own) -> bool`` for
        :class:`~peng3dnet.ext.sync.SyncServer`.
    """

    def interest(cid: int, eid: str, state: dict[str, Any], entities: View, own: str | None) -> bool:
        if own is None or eid == own or own not in entities:
            return True
        me = entities[own]
        if x not in state or x not in me:
            return True
        return math.hypot(state[x] - me[x], state.get(y, 0.0) - me.get(y, 0.0)) <= radius

    return interest
