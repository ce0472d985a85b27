"""msgpack's ``Timestamp`` with a hash a peer cannot make collide.

msgpack decodes extension type -1 to ``msgpack.Timestamp``, whose hash is
``hash((seconds, nanoseconds))``: a tuple's hash is computed from its
items' hashes without a secret, and a peer chooses both numbers, so it can
send a map whose ``Timestamp`` keys all share one hash.  Building that
dict is quadratic: a 128 KB packet of 8,000 such keys took 5 s to decode,
and the network thread does it before any state or rate check (the fault
hunt of 2026-12-02).  Other map keys are safe: str and bytes hashes are
keyed (``PYTHONHASHSEED``), an int or a float shares its hash with a
handful of 64-bit values at most, and arrays and maps as keys are refused
(see :func:`peng3dnet.protocol.codec.unpack`).

:func:`install` (run when :mod:`peng3dnet.protocol.codec` is imported)
gives the class a hash of its msgpack bytes: keyed, as every bytes hash,
and equal for equal timestamps (their bytes are equal: ``to_bytes()``
picks the format from the value), so ``==`` and ``hash`` still agree.
It changes ``msgpack.Timestamp`` for the whole process, on purpose: the
decoder makes that class and no other, and the program's own timestamps
lose nothing but the predictable hash values.

This module is never compiled (the optional compiled build): the hash
must be a plain Python function to become a method.
"""

from __future__ import annotations

from typing import Any

import msgpack

__all__ = ["install", "keyed_hash", "ORIGINAL_HASH"]

ORIGINAL_HASH = msgpack.Timestamp.__hash__
"""msgpack's own ``Timestamp.__hash__`` (for tests and for values
``to_bytes()`` cannot pack)."""


def keyed_hash(self: Any) -> int:
    """``hash(self.to_bytes())``; for a value ``to_bytes()`` cannot pack (only
    a program makes one: the decoder's always can), msgpack's own hash."""
    try:
        return hash(self.to_bytes())
    except Exception:  # noqa: BLE001 - struct.error, OverflowError: seconds beyond 64 bits
        return ORIGINAL_HASH(self)  # type: ignore[no-any-return]


def install() -> None:
    """Give ``msgpack.Timestamp`` the keyed hash (any thread; idempotent)."""
    if msgpack.Timestamp.__hash__ is not keyed_hash:
        msgpack.Timestamp.__hash__ = keyed_hash


install()
