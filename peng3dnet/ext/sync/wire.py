"""The sync wire format: the only module that imports msgpack or knows the
layout of the snapshot and input messages.

Theory of operation
-------------------
Two packets, registered by :class:`~peng3dnet.ext.sync.SyncServer` and
:class:`~peng3dnet.ext.sync.SyncClient` on both sides.

Snapshot message (``peng3dnet:sync.snapshot``, server -> client), one msgpack
map::

    {"t": tick, "b": base tick or -1 (full), "cs": crc32 of the view,
     "ai": last input seq applied for this client, "you": own entity id or None,
     "n": {eid: full state}          # new or replaced entities
     "u": {eid: {key: value}}        # changed keys
     "k": {eid: [key, ...]}          # removed keys
     "d": [eid, ...]}                # entities gone from the view

``n``/``u``/``k``/``d`` are a delta of :mod:`~peng3dnet.ext.sync.algebra`
against the view of tick ``b`` (a full snapshot is ``b = -1`` and the whole
view in ``n``); empty parts are left out.

Input message (``peng3dnet:sync.input``, client -> server)::

    {"ack": last tick applied, "seq": n, "in": {...}}   # or {"ack": t}, {"resync": true}

Only ``ack``, ``seq``, ``in`` and ``resync`` mean anything; every other key is
ignored, and no content of ``in`` means anything to the library (it goes to
the game's ``on_input`` as it is).  Join and leave are never messages: the
server learns them from its connection table.

The checksum is the CRC-32 of the msgpack encoding of the view's canonical
form (:func:`~peng3dnet.ext.sync.algebra.canonical`).  It is over the
*encoded* form on purpose: values the wire makes equal (a tuple and a list,
an ``IntEnum`` and its int) checksum equal on both sides, and values the
wire keeps apart (``1`` and ``1.0``, ``0.0`` and ``-0.0``) checksum apart.
That is why it lives here and not in the algebra.

Encoding on the server is shared between clients (:class:`SnapshotBatch`):
per tick, each distinct view is checksummed once and each distinct
(view, base) delta is encoded once; only the five per-client head fields
are encoded per client.  Decoding on the client (:func:`decode_snapshot`)
checks the types of every field it uses, so a malformed snapshot is
reported as :class:`MalformedSnapshotError`, never as a crash in the
algebra.

Thread safety: the functions are pure (any thread); a :class:`SnapshotBatch`
belongs to one thread.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import msgpack

from ...errors import DecodeError
from .algebra import Delta, View, canonical, diff_views

__all__ = [
    "SNAPSHOT_PACKET",
    "INPUT_PACKET",
    "checksum",
    "SnapshotBatch",
    "SnapshotMessage",
    "MalformedSnapshotError",
    "decode_snapshot",
    "InputMessage",
    "decode_input",
    "encoded_size",
    "input_message",
    "ack_message",
    "resync_message",
]

SNAPSHOT_PACKET = "peng3dnet:sync.snapshot"
"""Packet name of snapshots (server -> client)."""
INPUT_PACKET = "peng3dnet:sync.input"
"""Packet name of inputs, acks and resync requests (client -> server)."""

_packb = msgpack.packb


def checksum(view: View) -> int:
    """CRC-32 of a view in a canonical order (entity ids and keys sorted).

    Args:
        view: entity id -> flat dict of msgpack-able values.

    Returns:
        The checksum sent as ``cs`` in every snapshot.
    """
    return zlib.crc32(_packb(canonical(view)))


# --- snapshots (server side) ------------------------------------------------------------


class SnapshotBatch:
    """Encodes the snapshots of one tick, sharing work between clients.

    Views and bases are recognised by identity: pass the same view object to
    every client that sees the same thing (the server does when there is no
    interest filter).  The batch keeps a reference to every object it keyed
    on, so an id is never reused within one batch.

    Args:
        tick: The tick the snapshots are of.

    Thread safety: one thread (the tick thread).
    """

    def __init__(self, tick: int) -> None:
        self.tick = tick
        """The tick of this batch."""
        self._tick = _packb(tick)
        self._sums: dict[int, tuple[View, bytes]] = {}
        self._parts: dict[tuple[int, int], tuple[View, View | None, bytes, int]] = {}

    def encode(self, view: View, base: View | None, base_tick: int, acked_input: int, you: str | None) -> bytes:
        """One client's snapshot message, msgpack-encoded.

        Args:
            view: What the client sees this tick.
            base: The view of ``base_tick`` the client acknowledged, or
                ``None`` for a full snapshot.
            base_tick: The tick of ``base`` (ignored for a full snapshot).
            acked_input: The last input seq applied for this client (``ai``).
            you: The client's own entity id, or ``None``.

        Returns:
            The body for :meth:`~peng3dnet.net.Server.send_encoded`.
        """
        vid = id(view)
        summed = self._sums.get(vid)
        if summed is None:
            summed = self._sums[vid] = (view, _packb(checksum(view)))
        key = (vid, -1 if base is None else id(base))
        parts = self._parts.get(key)
        if parts is None:
            fields = {"n": view} if base is None else diff_views(base, view)
            enc = b"".join(_packb(k) + _packb(v) for k, v in fields.items())
            parts = self._parts[key] = (view, base, enc, len(fields))
        head = b"".join((
            b"\xa1t", self._tick,
            b"\xa1b", _packb(-1 if base is None else base_tick),
            b"\xa2cs", summed[1],
            b"\xa2ai", _packb(acked_input),
            b"\xa3you", _packb(you),
        ))
        return bytes([0x80 | (5 + parts[3])]) + head + parts[2]  # a fixmap: at most 9 fields


# --- snapshots (client side) ------------------------------------------------------------


class MalformedSnapshotError(DecodeError):
    """A snapshot message has a field of the wrong type (the client counts a
    desync and asks for a full snapshot; the connection stays open)."""


@dataclass(frozen=True)
class SnapshotMessage:
    """A decoded snapshot message (see the module docstring)."""

    tick: int
    """``t``: the tick of the view."""
    base: int
    """``b``: the tick of the delta's base, ``-1`` for a full snapshot."""
    checksum: Any
    """``cs``: the CRC-32 of the whole view (compared, not type-checked)."""
    acked_input: int | None
    """``ai``: the last input seq the server applied; ``None`` when absent."""
    you: str | None
    """``you``: the client's own entity."""
    delta: Delta
    """The ``n``/``u``/``k``/``d`` parts, checked."""


def _is_state_map(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(eid, str) and isinstance(st, dict) and all(isinstance(k, str) for k in st)
        for eid, st in value.items()
    )


def decode_snapshot(msg: Any) -> SnapshotMessage | None:
    """Check and unpack a received snapshot message.

    Args:
        msg: The decoded msgpack value.

    Returns:
        The snapshot, or ``None`` when ``msg`` is not a snapshot at all (not
        a map, or no int ``t``): such messages are ignored.

    Raises:
        MalformedSnapshotError: A field has the wrong type.
    """
    if not isinstance(msg, dict) or not isinstance(msg.get("t"), int):
        return None
    base = msg.get("b", -1)
    if not isinstance(base, int):
        raise MalformedSnapshotError("snapshot: b is not an int")
    you = msg.get("you")
    if you is not None and not isinstance(you, str):
        raise MalformedSnapshotError("snapshot: you is not a str")
    ai = msg.get("ai")
    delta: Delta = {}
    for key in ("n", "u"):
        if key in msg:
            if not _is_state_map(msg[key]):
                raise MalformedSnapshotError(f"snapshot: {key} is not a map of entity states")
            delta[key] = msg[key]
    if "k" in msg:
        k = msg["k"]
        if not isinstance(k, dict) or not all(
            isinstance(eid, str) and isinstance(keys, list) and all(isinstance(x, str) for x in keys)
            for eid, keys in k.items()
        ):
            raise MalformedSnapshotError("snapshot: k is not a map of key lists")
        delta["k"] = k
    if "d" in msg:
        d = msg["d"]
        if not isinstance(d, list) or not all(isinstance(eid, str) for eid in d):
            raise MalformedSnapshotError("snapshot: d is not a list of entity ids")
        delta["d"] = d
    return SnapshotMessage(
        tick=msg["t"],
        base=base,
        checksum=msg.get("cs"),
        acked_input=ai if isinstance(ai, int) else None,
        you=you,
        delta=delta,
    )


# --- inputs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputMessage:
    """A decoded input message (see the module docstring)."""

    ack: int | None
    """``ack``: the last tick the client applied; ``None`` when absent or not an int."""
    seq: int | None
    """``seq``: the input's sequence number; ``None`` when absent or not an int."""
    has_input: bool
    """Whether the message carries ``in``."""
    inp: Any
    """``in``: the game's input, as sent (``None`` when absent)."""
    resync: bool
    """``resync``: the client asks for a full snapshot."""


def decode_input(msg: Any) -> InputMessage | None:
    """Unpack a received input message.

    Returns:
        The input, or ``None`` when ``msg`` is not a map (ignored).
    """
    if not isinstance(msg, dict):
        return None
    ack = msg.get("ack")
    seq = msg.get("seq")
    return InputMessage(
        ack=ack if isinstance(ack, int) else None,
        seq=seq if isinstance(seq, int) else None,
        has_input="in" in msg,
        inp=msg.get("in"),
        resync=bool(msg.get("resync")),
    )


def encoded_size(msg: Any) -> int | None:
    """Size of ``msg`` in bytes of msgpack, ``None`` if it cannot be encoded."""
    try:
        return len(_packb(msg))
    except (TypeError, ValueError, OverflowError):
        return None


def input_message(ack: int, seq: int, inp: Any) -> dict[str, Any]:
    """The message of one input (with the latest ack)."""
    return {"ack": ack, "seq": seq, "in": inp}


def ack_message(tick: int) -> dict[str, Any]:
    """The message acknowledging snapshot ``tick``."""
    return {"ack": tick}


def resync_message() -> dict[str, Any]:
    """The message asking for a full snapshot."""
    return {"resync": True}
