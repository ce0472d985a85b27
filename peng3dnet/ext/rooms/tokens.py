"""Seat reservations as signed, expiring tokens.

A token is ``msgpack([room, server, seat, kind, expires, options]) + HMAC-SHA256``
under the cluster's shared secret: the lobby makes it, the server that holds
the room checks it (its ``authenticate`` hook, or the room join call) and
claims it once in the presence (a used token is refused).  Expiry is wall
clock time (``time.time()``): keep the machines' clocks in sync (NTP).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any, NamedTuple

import msgpack

__all__ = ["Seat", "make_token", "read_token", "TokenError"]

_MAC = 32
MAX_TOKEN = 4096
"""Largest token accepted (and made)."""


_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-")


ROOM_NAME_RULE = "room names are 1-64 characters of letters, digits, and _ . : -"
"""What a refused room name is told (``CallError`` or ``ValueError``)."""


def valid_room_name(name: Any) -> bool:
    """Whether ``name`` is a room name: 1-64 characters of letters, digits
    and ``_ . : -``."""
    return isinstance(name, str) and 0 < len(name) <= 64 and all(ch in _NAME_CHARS for ch in name)


class TokenError(ValueError):
    """A token that is malformed, forged or expired (the message says which)."""


class Seat(NamedTuple):
    """A reservation: what a token says."""

    room: str
    server: str
    seat: str
    kind: str
    expires: float
    options: Any


def make_token(secret: bytes, seat: Seat) -> bytes:
    """Sign ``seat``."""
    body: bytes = msgpack.packb(list(seat))
    if len(body) + _MAC > MAX_TOKEN:
        raise ValueError(f"a seat token of {len(body) + _MAC} bytes is over {MAX_TOKEN} (options too large)")
    return body + hmac.new(secret, body, hashlib.sha256).digest()


def read_token(secret: bytes, token: Any, now: float | None = None) -> Seat:
    """Check a token's signature and expiry; return its seat.

    Raises:
        TokenError: Malformed, forged or expired.
    """
    if not isinstance(token, bytes) or len(token) <= _MAC or len(token) > MAX_TOKEN:
        raise TokenError("malformed token")
    body, mac = token[:-_MAC], token[-_MAC:]
    if not hmac.compare_digest(mac, hmac.new(secret, body, hashlib.sha256).digest()):
        raise TokenError("forged token")
    try:
        fields = msgpack.unpackb(body, raw=False, strict_map_key=False)
        seat = Seat(*fields)
    except Exception as exc:  # noqa: BLE001 - signed by us, so only a version skew gets here
        raise TokenError("malformed token") from exc
    if (time.time() if now is None else now) > seat.expires:
        raise TokenError("expired token")
    return seat
