"""The codec's and the framing's edges value by value (mutation survivors):
the decompressor's second-chance read (a stream cut after exactly the limit
with output still pending, a stream whose error comes after exactly the
limit), the reasons and messages of each failure, the framing limit at
exactly ``MAX_PACKETLENGTH`` and the handshake machine's message."""

from __future__ import annotations

import zlib

import pytest

from peng3dnet.constants import MAX_PACKETLENGTH
from peng3dnet.errors import DecodeError, FrameTooLargeError, HandshakeError, LocalProtocolError
from peng3dnet.protocol.codec import decompress_body
from peng3dnet.protocol.framing import encode_frame
from peng3dnet.protocol.handshake import HandshakeInput, HandshakeMachine, HandshakeState

# A zlib stream (found by a search) that inflates to 189 bytes and then
# reaches an invalid distance: whatever zlib does with the input, the
# error only shows once the 189 bytes are out.
BROKEN_AFTER_189 = (
    b"x\x01j\xbb\xbc\xc8\xc6f\xdeE\xc7\x1b\x8b\xd2\xa4\xbb\x1e\x8b\x86\xef\xf9\xf6ejV\xa4\x88\x11\xc3\xf4\xf7m"
    b"\x83^\n\xbdNL"
)


def test_a_stream_that_breaks_after_the_limits_bytes_is_malformed_at_any_limit_that_reaches_the_break():
    d = zlib.decompressobj()
    with pytest.raises(zlib.error):
        d.decompress(BROKEN_AFTER_189)
    with pytest.raises(FrameTooLargeError) as ei:
        decompress_body(BROKEN_AFTER_189, 188)
    assert (str(ei.value), ei.value.reason) == ("compressed body expands beyond 188 bytes", "packettoolarge")
    for limit in (189, 190, 1 << 20):  # 189: the first read stops at the limit; the break is found after it
        with pytest.raises(DecodeError) as ei2:
            decompress_body(BROKEN_AFTER_189, limit)
        assert ei2.value.reason == "invalidcompression"
        assert str(ei2.value) == "malformed zlib body: Error -3 while decompressing data: invalid distance too far back"


def test_a_cut_stream_with_output_still_pending_past_the_limit_is_too_large():
    body = zlib.compress(b"a" * 2000, 1)[:-4]  # no checksum: the stream is cut
    assert decompress_body(body + zlib.compress(b"a" * 2000, 1)[-4:], 2000) == b"a" * 2000
    for limit in (1999, 1000):
        with pytest.raises(FrameTooLargeError) as ei:
            decompress_body(body, limit)
        assert (str(ei.value), ei.value.reason) == (f"compressed body expands beyond {limit} bytes", "packettoolarge")
    with pytest.raises(DecodeError) as ei2:
        decompress_body(body, 2000)  # everything it has, and no end
    assert (str(ei2.value), ei2.value.reason) == ("truncated zlib body", "invalidcompression")


@pytest.mark.parametrize("data", [b"x", b"hello" * 100, bytes(range(256))])
def test_a_stream_without_its_checksum_is_truncated_not_malformed(data):
    body = zlib.compress(data)[:-4]
    with pytest.raises(DecodeError) as ei:
        decompress_body(body, 10_000)
    assert (str(ei.value), ei.value.reason) == ("truncated zlib body", "invalidcompression")


class _Huge:
    """A body of ``n`` bytes without the bytes (only its length and the concatenation are used)."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __radd__(self, head):
        return (head, self.n)


def test_a_frame_of_exactly_the_largest_length_is_framed_and_one_byte_more_refused():
    head, n = encode_frame(64, 0, _Huge(MAX_PACKETLENGTH - 6))
    assert head == b"\xff\xff\xff\xff\x00\x00\x00\x40\x00\x00" and n == MAX_PACKETLENGTH - 6
    with pytest.raises(LocalProtocolError) as ei:
        encode_frame(64, 0, _Huge(MAX_PACKETLENGTH - 5))
    assert str(ei.value) == f"frame of {MAX_PACKETLENGTH + 1} bytes cannot be framed"


def test_the_handshake_machine_says_which_input_was_not_allowed_where():
    m = HandshakeMachine()
    with pytest.raises(HandshakeError) as ei:
        m.process(HandshakeInput.SETTYPE)
    assert (str(ei.value), ei.value.reason) == ("settype is not allowed in state INIT", "invalidstate")
    assert m.state is HandshakeState.ERROR


def test_clear_drops_a_partial_frame_and_the_next_frame_decodes_from_scratch():
    from peng3dnet.protocol.framing import FrameDecoder

    d = FrameDecoder(100)
    out: list = []
    d.feed(encode_frame(70, 0, b"\xc0")[:7], out)
    assert d.buffered == 7 and out == []
    d.clear()
    assert d.buffered == 0
    d.feed(encode_frame(71, 0, b"\xc3"), out)
    assert out == [(71, 0, b"\xc3")] and d.buffered == 0
