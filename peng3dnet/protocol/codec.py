"""Body codec: msgpack with fixed, safe options and bounded zlib.

Theory of operation
-------------------
Encoding is ``msgpack.packb(value)`` with msgpack 1.x defaults (str as str,
bytes as bin), so our bytes are identical to the original library's for the
same value.  Bodies longer than the compression threshold are compressed
with ``zlib.compress`` at the configured level and flagged.

Decoding never trusts the peer: decompression stops at
``max_decompressed_size`` (a zlib bomb is refused after producing at most
that many bytes), a truncated or trailing-garbage zlib stream is an error,
and msgpack is unpacked with ``raw=False`` (map keys: any hashable scalar;
arrays and maps as keys are refused) and must be exactly one value.  Every failure is a :class:`~peng3dnet.errors.DecodeError`
or :class:`~peng3dnet.errors.FrameTooLargeError`.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import msgpack

from .._mypyc import caused
from ..constants import FLAG_COMPRESSED, MAX_PACKETLENGTH
from ..errors import DecodeError, FrameTooLargeError, LocalProtocolError
from . import timestamp_hash  # noqa: F401 - gives msgpack.Timestamp a keyed hash on import (the decoder relies on it)
from .framing import _PREFIX_AND_HEADER, HEADER_SIZE, encode_frame

__all__ = ["pack", "unpack", "check_keys", "compress_body", "decompress_body", "decode_body", "frame_body"]


def pack(value: Any, encode: Any = msgpack.packb) -> bytes:
    """Serialize one value with msgpack: the library's one encoder (the
    core's frames, broadcasts and sync snapshots come through here;
    ``ProtocolConnection.encode_packet``, once per ``send_message``, does the same
    inline).

    Args:
        value: Any msgpack-serializable value.
        encode: ``msgpack.packb`` (default) or a callable that encodes the
            same way, e.g. a ``msgpack.Packer().pack`` that reuses its
            buffer (the facades pass a per-thread one: a Packer is not
            thread-safe, and this module knows no threads).

    Raises:
        LocalProtocolError: The value cannot be represented in msgpack.
    """
    try:
        return encode(value)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise caused(LocalProtocolError(f"cannot encode message: {exc}"), exc) from exc


def unpack(body: bytes) -> Any:
    """Deserialize exactly one msgpack value.

    Map keys may be any hashable scalar msgpack gives (str, bytes, int,
    float, bool, None, msgpack.Timestamp: entity ids as int keys work).
    Their hashes collide little: str and bytes hashes are randomised, an
    int or a float shares its hash with at most a handful of other 64-bit
    values, and a Timestamp's hash is its bytes' (see
    :mod:`peng3dnet.protocol.timestamp_hash`: msgpack's own is not keyed).  Arrays
    and maps as keys are refused: a tuple's hash is built from its items',
    so arrays of colliding ints would make building the dict quadratic (a
    hash flood).

    Raises:
        DecodeError: The body is not exactly one valid msgpack value, or a
            map key is an array or a map.
    """
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises many types (TypeError: an unhashable key); all mean "malformed"
        raise caused(DecodeError(f"malformed msgpack body: {type(exc).__name__}: {exc}", "invalidmsgpack"), exc) from exc


_LEAVES = frozenset((str, bytes, int, float, bool, type(None), bytearray, memoryview))
"""Types that hold no map (exact types: a subclass takes the full walk)."""


def check_keys(value: Any) -> None:
    """Raise unless every map key in ``value`` is str or bytes: what a peer of protocol version 2 without our
    ``mapkeys`` extension (peng3dnet 0.1.x) accepts (it closes the
    connection on anything else).

    Raises:
        LocalProtocolError: A map with another key type; the message names it.
    """
    t = type(value)
    if t in _LEAVES:
        return
    if t is list or t is tuple:  # the common message shapes: a scalar or a short flat array, checked without a walk
        for v in value:
            if type(v) not in _LEAVES:
                break
        else:
            return
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for k, v in item.items():
                if not isinstance(k, (str, bytes)):
                    raise LocalProtocolError(
                        f"map key {k!r} ({type(k).__name__}): this peer (protocol 2 without the mapkeys extension, "
                        "e.g. peng3dnet 0.1.x) accepts only str or bytes keys and would close the connection"
                    )
                if isinstance(v, (dict, list, tuple)):
                    stack.append(v)
        elif isinstance(item, (list, tuple)):
            stack.extend(v for v in item if isinstance(v, (dict, list, tuple)))


def compress_body(body: bytes, level: int) -> bytes:
    """Compress a body in ``zlib.compress`` format."""
    return zlib.compress(body, level)


def decompress_body(body: bytes, max_size: int) -> bytes:
    """Decompress a zlib body, producing at most ``max_size`` bytes.

    Raises:
        FrameTooLargeError: The decompressed body would exceed ``max_size``.
        DecodeError: The data is not one complete zlib stream.
    """
    if max_size <= 0:  # zlib reads a max_length of 0 as "no limit"
        raise FrameTooLargeError("no room to decompress into (limit 0)", "packettoolarge")
    d = zlib.decompressobj()
    try:
        out = d.decompress(body, max_size)
    except zlib.error as exc:
        raise caused(DecodeError(f"malformed zlib body: {exc}", "invalidcompression"), exc) from exc
    if d.unconsumed_tail:
        raise FrameTooLargeError(f"compressed body expands beyond {max_size} bytes", "packettoolarge")
    if not d.eof:
        # Either truncated, or exactly max_size bytes with more to come.
        try:
            rest = d.decompress(b"", 1)
        except zlib.error as exc:
            raise caused(DecodeError(f"malformed zlib body: {exc}", "invalidcompression"), exc) from exc
        if rest:
            raise FrameTooLargeError(f"compressed body expands beyond {max_size} bytes", "packettoolarge")
        if not d.eof:
            raise DecodeError("truncated zlib body", "invalidcompression")
    if d.unused_data:
        raise DecodeError("trailing data after the zlib stream", "invalidcompression")
    return out


def frame_body(pid: int, body: bytes, *, compress: bool, threshold: int, level: int) -> bytes:
    """Frame an encoded msgpack body, compressing it by the one compression
    rule: bodies longer than ``threshold`` bytes, when ``compress`` is on.

    Raises:
        LocalProtocolError: The id or the length do not fit the format.
    """
    if compress and len(body) > threshold:
        return encode_frame(pid, FLAG_COMPRESSED, compress_body(body, level))
    # The common case, inlined (this runs once per packet sent).
    length = len(body) + HEADER_SIZE
    if length <= MAX_PACKETLENGTH:
        try:
            return _PREFIX_AND_HEADER.pack(length, pid, 0) + body
        except struct.error:
            pass
    return encode_frame(pid, 0, body)  # raises the right error


def decode_body(flags: int, body: bytes, max_decompressed_size: int) -> Any:
    """Decode a body received with the given flags.

    Raises:
        DecodeError: Malformed zlib or msgpack.
        FrameTooLargeError: Decompression would exceed the limit.
    """
    if flags & FLAG_COMPRESSED:
        body = decompress_body(body, max_decompressed_size)
    return unpack(body)
