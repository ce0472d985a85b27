"""Bounded descriptions of values that came from the network, for error
messages and logs (pure; any thread).

``repr()`` of a decoded msgpack value is unsafe: a 1,000-deep array decodes
(msgpack allows 1,024 levels) and makes ``repr()`` raise ``RecursionError``;
a 15 MiB string costs a 60 MiB ``repr()`` before any ``%.64r`` cuts it.
:func:`describe` looks at most a few levels deep and a few items wide,
slices strings and bytes before it represents them, and never raises.

This module stays interpreted in the optional compiled build (it subclasses
:class:`reprlib.Repr`).
"""

from __future__ import annotations

import reprlib
from typing import Any

__all__ = ["describe", "fits"]

MAX_DESCRIBED = 120
"""Characters of a description, at most (an ellipsis marks a cut)."""


class _Bounded(reprlib.Repr):
    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxstring = 48
        self.maxother = 48
        self.maxlong = 48
        self.maxlist = self.maxtuple = self.maxdict = self.maxset = self.maxfrozenset = 6
        self.maxdeque = self.maxarray = 6

    def repr_bytes(self, x: bytes, level: int) -> str:
        cut = self.maxstring
        return repr(x[:cut]) + ("..." if len(x) > cut else "")

    repr_bytearray = repr_bytes

    def repr_ExtType(self, x: Any, level: int) -> str:  # msgpack's ExtType(code, data)  # noqa: N802
        return f"ExtType({x.code}, {self.repr1(x.data, level - 1)})"


_bounded = _Bounded()


def describe(value: Any, width: int = MAX_DESCRIBED) -> str:
    """A short, safe ``repr()`` of ``value``: at most ``width`` characters,
    3 levels deep, 6 items of a container; never raises."""
    try:
        text = _bounded.repr(value)
    except Exception:  # noqa: BLE001 - a value of the peer's that cannot be shown
        return f"<{type(value).__name__}>"
    if len(text) > width:
        text = text[: width - 3] + "..."
    return text


def fits(value: Any, limit: int) -> bool:
    """Whether ``value`` (a decoded msgpack value) is small: one per value,
    containers and their keys included, plus the length of every string and
    bytes, add up to at most ``limit``.  Walks without recursion and stops
    as soon as the sum is over, so a huge or deep value costs no more than
    ``limit`` steps."""
    total = 0
    stack = [value]
    while stack:
        v = stack.pop()
        total += 1
        if isinstance(v, (str, bytes, bytearray)):
            total += len(v)
        elif isinstance(v, dict):
            if total + 2 * len(v) > limit:  # (each key and value costs one at least)
                return False
            for k, x in v.items():
                stack.append(k)
                stack.append(x)
        elif isinstance(v, (list, tuple)):
            if total + len(v) > limit:
                return False
            stack.extend(v)
        if total > limit:
            return False
    return True
