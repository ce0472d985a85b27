"""Seat tokens unit by unit: what make_token() refuses, and read_token()'s
every refusal with its reason, at the exact size and time limits."""

from __future__ import annotations

import hashlib
import hmac

import msgpack
import pytest

from peng3dnet.ext.rooms.tokens import MAX_TOKEN, Seat, TokenError, make_token, read_token, valid_room_name

SECRET = b"k" * 32
SEAT = Seat("red", "s1", "seat-1", "arena", 1000.0, {"team": "blue"})


def _signed(body: bytes) -> bytes:
    return body + hmac.new(SECRET, body, hashlib.sha256).digest()


def test_a_token_reads_back_as_its_seat_until_it_expires_exactly():
    token = make_token(SECRET, SEAT)
    assert read_token(SECRET, token, now=999.0) == SEAT
    assert read_token(SECRET, token, now=1000.0) == SEAT  # at its expiry: still good
    with pytest.raises(TokenError, match="^expired token$"):
        read_token(SECRET, token, now=1000.001)


@pytest.mark.parametrize("token", [None, "text", b"", b"x" * 32, b"x" * (MAX_TOKEN + 1)])
def test_what_is_not_a_token_is_malformed(token):
    with pytest.raises(TokenError, match="^malformed token$"):
        read_token(SECRET, token, now=0.0)


def test_another_secret_or_a_changed_byte_is_forged():
    token = make_token(SECRET, SEAT)
    with pytest.raises(TokenError, match="^forged token$"):
        read_token(b"j" * 32, token, now=0.0)
    changed = bytes([token[0] ^ 1]) + token[1:]
    with pytest.raises(TokenError, match="^forged token$"):
        read_token(SECRET, changed, now=0.0)


def test_a_signed_body_that_is_not_a_seat_is_malformed():
    for body in (b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"room": "red"})):
        with pytest.raises(TokenError, match="^malformed token$"):
            read_token(SECRET, _signed(body), now=0.0)


def test_make_token_refuses_a_seat_over_the_size_limit_exactly():
    base = len(msgpack.packb(list(SEAT._replace(options="")))) + 32  # the MAC
    fits = SEAT._replace(options="x" * (MAX_TOKEN - base - 2))  # (a str8/str16 header grows by 2 past 255)
    token = make_token(SECRET, fits)
    assert len(token) == MAX_TOKEN and read_token(SECRET, token, now=0.0) == fits  # exactly at the limit
    over = SEAT._replace(options="x" * (MAX_TOKEN - base - 1))  # one byte more
    with pytest.raises(ValueError, match=r"^a seat token of 4097 bytes is over 4096 \(options too large\)$"):
        make_token(SECRET, over)


@pytest.mark.parametrize("name, ok", [("a", True), ("x" * 64, True), ("x" * 65, False), ("", False),
                                      ("A-z_0.9:", True), ("a b", False), ("é", False), (None, False), (5, False)])
def test_room_names(name, ok):
    assert valid_room_name(name) is ok


def test_options_with_int_keys_and_bytes_read_back_as_they_were():
    seat = Seat("red", "s1", "seat-1", "arena", 1000.0, {1: "one", "raw": b"\x00\xff", "s": "text"})
    assert read_token(SECRET, make_token(SECRET, seat), now=0.0) == seat
