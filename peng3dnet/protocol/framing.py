"""Framing: the length prefix and the 6-byte header of every packet.

Theory of operation
-------------------
A connection is a byte stream of frames::

    offset  size  field     encoding
    ------  ----  --------  ---------------------------------------------
         0     4  length L  unsigned 32-bit big-endian ("!I"); counts
                            header + body, so L >= 6
         4     4  pid       unsigned 32-bit big-endian   } header, "!IH"
         8     2  flags     unsigned 16-bit big-endian   }
        10  L-6   body      msgpack, zlib-compressed when flags & 1

:class:`FrameDecoder` is incremental: it accepts the stream cut at any byte
(inside the prefix included) and yields the same frames whatever the cuts.
It never trusts the prefix: a length above ``max_frame_size`` is refused as
soon as the 4 prefix bytes are there, before any of the body is buffered, so
the decoder never holds more than one incomplete frame of at most
``max_frame_size + 4`` bytes.  Flags other than the compression bit are
malformed (bit 1, "AES", was reserved by protocol 2 and never implemented).
"""

from __future__ import annotations

import struct

from .._mypyc import caused
from ..constants import KNOWN_FLAGS, MAX_PACKETLENGTH, STRUCT_FORMAT_HEADER, STRUCT_FORMAT_LENGTH32
from ..errors import DecodeError, FrameTooLargeError, LocalProtocolError

__all__ = ["HEADER", "LENGTH", "HEADER_SIZE", "PREFIX_SIZE", "Frame", "FrameDecoder", "encode_frame"]

LENGTH = struct.Struct(STRUCT_FORMAT_LENGTH32)
HEADER = struct.Struct(STRUCT_FORMAT_HEADER)
PREFIX_SIZE = LENGTH.size  # 4
HEADER_SIZE = HEADER.size  # 6
_PREFIX_AND_HEADER = struct.Struct("!IIH")
_FRAME_MIN = PREFIX_SIZE + HEADER_SIZE  # 10: the smallest frame (an empty body)

Frame = tuple[int, int, bytes]
"""A decoded frame: ``(pid, flags, body)``."""


def encode_frame(pid: int, flags: int, body: bytes) -> bytes:
    """Encode one frame: length prefix, header and body.

    Args:
        pid: Packet id, 0 <= pid < 2**32.
        flags: Flag bits, 0 <= flags < 2**16.
        body: The (possibly compressed) msgpack body.

    Returns:
        The bytes to put on the wire.

    Raises:
        LocalProtocolError: The id, the flags or the length do not fit the format.
    """
    length = len(body) + HEADER_SIZE
    if length > MAX_PACKETLENGTH:
        raise LocalProtocolError(f"frame of {length} bytes cannot be framed")
    try:
        return _PREFIX_AND_HEADER.pack(length, pid, flags) + body
    except struct.error as exc:
        raise caused(LocalProtocolError(f"invalid packet id {pid!r} or flags {flags!r}"), exc) from exc


class FrameDecoder:
    """Incremental, size-capped frame decoder.

    Args:
        max_frame_size: Largest accepted value of the length prefix
            (header + body).

    After an error the decoder is poisoned: every later :meth:`feed` raises
    the same error again.
    """

    __slots__ = ("max_frame_size", "_buf", "_error")

    def __init__(self, max_frame_size: int) -> None:
        if max_frame_size < HEADER_SIZE:
            raise ValueError("max_frame_size must be at least 6")
        self.max_frame_size = max_frame_size
        """Largest accepted length prefix."""
        self._buf = bytearray()
        self._error: DecodeError | FrameTooLargeError | None = None

    @property
    def buffered(self) -> int:
        """Number of bytes held for an incomplete frame."""
        return len(self._buf)

    def clear(self) -> None:
        """Drop the bytes held for an incomplete frame."""
        self._buf = bytearray()

    def one_frame(self, data: bytes | bytearray | memoryview) -> Frame | None:
        """The common case of :meth:`feed`, for one read that is one packet:
        when nothing is held and ``data`` is exactly one whole, valid frame,
        return it; else return ``None`` and take nothing (``feed(data)``
        then decodes it, errors included)."""
        if self._buf or self._error is not None or len(data) < _FRAME_MIN:
            return None
        length, pid, flags = _PREFIX_AND_HEADER.unpack_from(data)
        if length + PREFIX_SIZE == len(data) and length <= self.max_frame_size and not flags & ~KNOWN_FLAGS:
            return pid, flags, bytes(data[_FRAME_MIN:])
        return None

    def feed(self, data: bytes | bytearray | memoryview, out: list[Frame]) -> None:
        """Decode as many complete frames as possible.

        Args:
            data: The next bytes of the stream (any length, possibly empty).
            out: Decoded frames are appended here, in stream order.  When an
                error is raised, the frames before the bad one are in ``out``.

        Raises:
            FrameTooLargeError: A length prefix is above ``max_frame_size``.
            DecodeError: A length prefix is below 6, or unknown flag bits are set.
        """
        if self._error is not None:
            raise self._error
        buf: bytes | bytearray | memoryview
        if self._buf:
            self._buf += data
            buf = self._buf
        else:
            buf = data
        n = len(buf)
        pos = 0
        unpack_len = LENGTH.unpack_from
        unpack_hdr = HEADER.unpack_from
        maxsize = self.max_frame_size
        try:
            while n - pos >= PREFIX_SIZE:
                (length,) = unpack_len(buf, pos)
                if length > maxsize:
                    raise FrameTooLargeError(
                        f"peer announced a packet of {length} bytes, the limit is {maxsize}",
                        "packettoolarge",
                    )
                if length < HEADER_SIZE:
                    raise DecodeError(f"length prefix {length} is smaller than the 6-byte header")
                end = pos + PREFIX_SIZE + length
                if end > n:
                    break
                pid, flags = unpack_hdr(buf, pos + PREFIX_SIZE)
                if flags & ~KNOWN_FLAGS:
                    raise DecodeError(f"packet {pid} has unknown flag bits {flags:#06x}", "invalidflags")
                out.append((pid, flags, bytes(buf[pos + PREFIX_SIZE + HEADER_SIZE : end])))
                pos = end
        except (DecodeError, FrameTooLargeError) as exc:
            self._error = exc
            self._buf = bytearray()
            raise
        if buf is self._buf:
            if pos:
                del self._buf[:pos]
        elif pos < n:
            self._buf = bytearray(buf[pos:])
