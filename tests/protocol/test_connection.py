"""ProtocolConnection: handshake, registry sync, errors, closing; no sockets."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peng3dnet.constants import SIDE_CLIENT, SIDE_SERVER
from peng3dnet.errors import ConnectionClosedError
from peng3dnet.protocol.connection import (
    NO_QUOTA,
    ConnectionClosed,
    ConnTypeRequested,
    HandshakeCompleted,
    PacketReceived,
    PacketSent,
    ProtocolConnection,
)
from peng3dnet.protocol.framing import FrameDecoder, encode_frame
from peng3dnet.protocol.handshake import HandshakeState
from tests.helpers import ConnectionPair, load_vectors, make_registry


def kinds(outs):
    return [type(o).__name__ for o in outs]


@pytest.mark.parametrize("chunk", [None, 1, 3])
def test_classic_handshake(chunk):
    p = ConnectionPair(server_names=("app:a", "app:b"), client_names=("app:b", "app:a"))
    p.server.initiate()
    p.pump(chunk)
    assert p.server.state is HandshakeState.ACTIVE
    assert p.client.state is HandshakeState.ACTIVE
    assert kinds(p.c_out) == ["PacketReceived", "PacketSent", "PacketReceived", "PacketSent", "HandshakeCompleted"]
    assert kinds(p.s_out) == ["PacketSent", "PacketReceived", "ConnTypeRequested", "PacketSent", "PacketReceived", "HandshakeCompleted"]
    # The client adopted the server's numbering.
    assert p.creg.mapping() == p.sreg.mapping()


def test_application_packets_both_ways():
    p = ConnectionPair()
    p.start()
    pid = p.sreg.get_id("app:a")
    p.client.send_packet(pid, {"x": 1})
    p.server.send_packet(pid, [1, 2])
    p.pump()
    assert p.s_out[-1] == PacketReceived(pid, 0, {"x": 1}, HandshakeState.ACTIVE, 4)
    assert p.c_out[-1] == PacketReceived(pid, 0, [1, 2], HandshakeState.ACTIVE, 3)


def test_registry_mismatch_closes_with_reason():
    p = ConnectionPair(server_names=("app:a",), client_names=("app:other",))
    p.start()
    closed = [o for o in p.c_out if isinstance(o, ConnectionClosed)]
    assert closed and closed[0].reason == "packetregmismatch" and closed[0].error is not None
    assert [o for o in p.s_out if isinstance(o, ConnectionClosed)] == [ConnectionClosed("packetregmismatch", by_peer=True)]
    assert p.client.state is HandshakeState.ERROR


def test_registry_mismatch_ignored_when_configured():
    p = ConnectionPair(server_names=("app:a", "app:s"), client_names=("app:c", "app:a"), missing_packet_action="ignore")
    p.start()
    assert p.client.state is HandshakeState.ACTIVE
    assert p.creg.get_id("app:a") == p.sreg.get_id("app:a")
    assert p.creg.get_id("app:c") not in set(p.sreg.mapping().values())


def test_protoversion_mismatch():
    client = ProtocolConnection(SIDE_CLIENT, registry=make_registry())
    client.receive_data(encode_frame(1, 0, msgpack.packb({"version": "9", "protoversion": 3})))
    outs = client.drain_received()
    assert outs[-1].reason == "protoversionmismatch"
    frames: list = []
    FrameDecoder(1 << 20).feed(client.data_to_send(), frames)
    assert frames == [(16, 0, msgpack.packb({"reason": "protoversionmismatch"}))]


def test_server_reports_conntype_and_unknown_is_left_to_caller():
    server = ProtocolConnection(SIDE_SERVER, registry=make_registry())
    server.initiate()
    server.data_to_send()
    server.receive_data(encode_frame(2, 0, msgpack.packb({"conntype": "weird"})))
    assert [o for o in server.drain_received() if isinstance(o, ConnTypeRequested)] == [ConnTypeRequested("weird")]
    server.close("unknownconntype")
    assert server.drain_received()[-1] == ConnectionClosed("unknownconntype", by_peer=False)


def test_settype_without_conntype_means_classic():
    server = ProtocolConnection(SIDE_SERVER, registry=make_registry())
    server.initiate()
    server.receive_data(encode_frame(2, 0, msgpack.packb({})))
    assert ConnTypeRequested("classic") in server.drain_received()


@pytest.mark.parametrize(
    "frame,reason",
    [
        (encode_frame(1, 0, msgpack.packb({"version": "x", "protoversion": 2})), "invalidside"),  # hello to a server
        (encode_frame(4, 0, msgpack.packb({"success": True})), "invalidstate"),  # accept too early
        (encode_frame(2, 0, msgpack.packb([1, 2])), "invalidpacket"),  # settype not a map
        (encode_frame(2, 0, msgpack.packb({"conntype": 5})), "invalidpacket"),
        (encode_frame(2, 0, b"\xc1"), "invalidmsgpack"),
        (encode_frame(2, 1, b"not zlib"), "invalidcompression"),
        (b"\x00\x00\x00\x02\x00\x00", "invalidpacket"),
    ],
)
def test_malformed_input_closes_with_reason(frame, reason):
    server = ProtocolConnection(SIDE_SERVER, registry=make_registry())
    server.initiate()
    server.drain_received()
    server.data_to_send()
    server.receive_data(frame)
    outs = server.drain_received()
    assert isinstance(outs[-1], ConnectionClosed) and outs[-1].reason == reason
    assert server.state is HandshakeState.ERROR
    # closeconn with the reason went out
    frames: list = []
    FrameDecoder(1 << 20).feed(server.data_to_send(), frames)
    assert frames[-1][0] == 16 and msgpack.unpackb(frames[-1][2]) == {"reason": reason}
    # further data is ignored, nothing more happens
    server.receive_data(frame)
    assert server.drain_received() == [] and server.data_to_send() == b""


def test_handshake_registry_validation():
    client = ProtocolConnection(SIDE_CLIENT, registry=make_registry())
    client.receive_data(encode_frame(1, 0, msgpack.packb({"version": "x", "protoversion": 2})))
    client.receive_data(encode_frame(3, 0, msgpack.packb({"version": "x", "protoversion": 2, "registry": {"a": "b"}})))
    assert client.drain_received()[-1].reason == "invalidpacket"


def test_closeconn_received():
    p = ConnectionPair()
    p.start()
    p.server.close("servershutdown")
    p.pump()
    assert p.c_out[-1] == ConnectionClosed("servershutdown", by_peer=True)
    assert p.client.close_reason == "servershutdown"
    with pytest.raises(ConnectionClosedError):
        p.client.send_packet(64, 1)


def test_close_is_idempotent_and_eof():
    p = ConnectionPair()
    p.start()
    p.client.drain_received()
    p.client.close("bye")
    p.client.close("again")
    assert [o for o in p.client.drain_received() if isinstance(o, ConnectionClosed)] == [
        ConnectionClosed("bye", by_peer=False)
    ]
    p.server.receive_eof()
    assert p.server.drain_received()[-1] == ConnectionClosed("socketclose", by_peer=True, eof=True)
    p.server.receive_eof()
    assert p.server.drain_received() == []


def test_outputs_of_frames_before_a_bad_one_are_kept():
    p = ConnectionPair()
    p.start()
    p.s_out.clear()
    pid = p.sreg.get_id("app:a")
    p.server.receive_data(encode_frame(pid, 0, msgpack.packb(1)) + encode_frame(pid, 8, b""))
    outs = p.server.drain_received()
    assert outs[0] == PacketReceived(pid, 0, 1, HandshakeState.ACTIVE, 1)
    assert outs[-1].reason == "invalidflags"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=10), st.sampled_from([SIDE_SERVER, SIDE_CLIENT]))
def test_any_bytes_in_any_state_never_raise(chunks, side):
    conn = ProtocolConnection(side, registry=make_registry("app:a"), max_packet_size=256)
    if side == SIDE_SERVER:
        conn.initiate()
    for c in chunks:
        conn.receive_data(c)
    outs = conn.drain_received()
    closes = [o for o in outs if isinstance(o, ConnectionClosed)]
    assert len(closes) <= 1
    assert conn.state in HandshakeState
    if closes:
        assert not conn.is_open


packets = st.sampled_from(
    [
        (1, {"version": "x", "protoversion": 2}),
        (2, {"conntype": "classic"}),
        (2, {"conntype": "ping"}),
        (3, {"version": "x", "protoversion": 2, "registry": {}}),
        (4, {"success": True}),
        (16, {"reason": "r"}),
        (64, {"time": 1.0}),
        (65, [1]),
        (7, None),
        (1, "notamap"),
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(packets, max_size=12), st.sampled_from([SIDE_SERVER, SIDE_CLIENT]))
def test_any_packet_sequence_ends_valid_or_cleanly_closed(seq, side):
    """Well-formed frames with any internal/app packet in any order."""
    conn = ProtocolConnection(side, registry=make_registry())
    if side == SIDE_SERVER:
        conn.initiate()
    n_closed = 0
    for pid, msg in seq:
        conn.receive_data(encode_frame(pid, 0, msgpack.packb(msg)))
        for o in conn.drain_received():
            n_closed += isinstance(o, ConnectionClosed)
            if isinstance(o, ConnTypeRequested) and o.conntype == "classic":
                conn.begin_handshake({})
    assert n_closed <= 1
    assert conn.is_open == (n_closed == 0)


# --- the original library's real bytes --------------------------------------------


def test_original_server_stream_drives_our_client():
    v = load_vectors()["classic"]
    reg = make_registry("interop:echo")
    client = ProtocolConnection(SIDE_CLIENT, registry=reg)
    data = bytes.fromhex(v["s2c_hex"])
    for i in range(len(data)):  # byte by byte
        client.receive_data(data[i : i + 1])
    outs = client.drain_received()
    assert HandshakeCompleted() in outs
    apps = [o for o in outs if isinstance(o, PacketReceived) and o.pid == 64]
    assert [o.msg for o in apps][:4] == [
        {"i": 0, "x": 1.5, "name": "p0"},
        [1, "two", 3.25, None, True],
        "s2s2s2",
        {"blob": bytes([0, 1, 255]) * 10, "i": 3},
    ]
    assert apps[4].flags == 1 and apps[4].msg == {"big": "z" * 20000, "i": 4}
    # What we sent back equals the original client's bytes for settype and accept.
    c2s = bytes.fromhex(v["c2s_hex"])
    assert client.data_to_send() == c2s[:48]


def test_original_client_stream_drives_our_server():
    v = load_vectors()["classic"]
    reg = make_registry("interop:echo")
    server = ProtocolConnection(SIDE_SERVER, registry=reg, version="0.1.3a0")
    server.initiate()
    s2c = bytes.fromhex(v["s2c_hex"])
    assert server.data_to_send() == s2c[:41]  # hello is byte-identical
    server.receive_data(bytes.fromhex(v["c2s_hex"]))
    outs = server.drain_received()
    # fed in one go, the client's accept arrives before our handshake was sent:
    assert outs[2] == ConnTypeRequested("classic")
    assert outs[-1].reason == "invalidstate"
    # the handshake must be answered before accept is legal: replay in two steps
    server = ProtocolConnection(SIDE_SERVER, registry=reg, version="0.1.3a0")
    server.initiate()
    c2s = bytes.fromhex(v["c2s_hex"])
    server.receive_data(c2s[:28])
    server.begin_handshake(reg.mapping())
    server.receive_data(c2s[28:])
    outs = server.drain_received()
    apps = [o.msg for o in outs if isinstance(o, PacketReceived) and o.pid == 64]
    assert len(apps) == 6 and apps[-1] == 5000015
    assert outs[-1] == ConnectionClosed("done", by_peer=True)
    # our encoding of the same application messages is byte-identical (compression included)
    sent = b"".join(server.encode_packet(64, m) for m in apps)
    assert sent == s2c[258:]


def test_original_ping_reply_parses():
    v = load_vectors()["ping"]
    client = ProtocolConnection(SIDE_CLIENT, registry=make_registry(), conntype="ping")
    client.receive_data(bytes.fromhex(v["s2c_hex"]))
    outs = client.drain_received()
    reply = [o for o in outs if isinstance(o, PacketReceived) and o.pid == 65][0].msg
    assert reply["name"] == "interop" and reply["peng3dnet"]["protoversion"] == 2
    assert [o for o in outs if isinstance(o, PacketSent)][0].msg == {"conntype": "ping"}


# --- the decompression budget (net.limits.inflate.*) -----------------------------------------

def _compressed_frame(pid, value):
    import zlib

    from peng3dnet.constants import FLAG_COMPRESSED
    body = msgpack.packb(value)
    return encode_frame(pid, FLAG_COMPRESSED, zlib.compress(body)), len(body)


def _active_server():
    p = ConnectionPair()
    p.start()
    p.s_out.clear()
    return p, p.sreg.get_id("app:a")


@pytest.mark.parametrize("body", [b"\xc1", b"\x92\x01", msgpack.packb(1) + b"\x00", b"\x81\x91\x01\x02"])
def test_a_malformed_application_body_closes_after_the_good_packets_before_it(body):
    """The uncompressed application packet fast path: a body that is not
    exactly one valid msgpack value (never used, truncated, trailing bytes,
    an array as a map key) closes with invalidmsgpack, after the packets
    that came before it and with nothing delivered for it."""
    p, pid = _active_server()
    good = encode_frame(pid, 0, msgpack.packb("ok"))
    p.server.receive_data(good + encode_frame(pid, 0, body) + good)
    outs = p.server.drain_received()
    assert [o.msg for o in outs if isinstance(o, PacketReceived)] == ["ok"]
    assert isinstance(outs[-1], ConnectionClosed) and outs[-1].reason == "invalidmsgpack"


def test_inflate_budget_is_charged_exactly_and_refused_one_byte_short():
    p, pid = _active_server()
    frame, size = _compressed_frame(pid, "x" * 5000)
    p.server.inflate_budget = 2 * size  # exactly two bodies
    p.server.receive_data(frame + frame)
    outs = p.server.drain_received()
    assert [o.msg for o in outs if isinstance(o, PacketReceived)] == ["x" * 5000] * 2
    assert p.server.inflate_budget == 0
    p.server.inflate_budget = size - 1  # one byte short of the next body
    p.server.receive_data(frame)
    outs = p.server.drain_received()
    assert not [o for o in outs if isinstance(o, PacketReceived)]
    closed = [o for o in outs if isinstance(o, ConnectionClosed)]
    assert closed[0].reason == "ratelimit" and type(closed[0].error).__name__ == "InflateBudgetError"
    assert p.server.inflate_budget == 0  # what was inflated is charged


def test_inflate_budget_drop_skips_the_packet_and_keeps_the_connection():
    p, pid = _active_server()
    big, size = _compressed_frame(pid, "y" * 9000)
    small = encode_frame(pid, 0, msgpack.packb("ok"))
    p.server.inflate_budget = size - 1
    p.server.inflate_action = "drop"
    p.server.receive_data(big + small)
    outs = p.server.drain_received()
    assert [o.msg for o in outs if isinstance(o, PacketReceived)] == ["ok"]  # uncompressed bodies cost nothing
    assert p.server.inflate_dropped == 1 and p.server.is_open


def test_no_budget_means_only_the_size_limit_applies():
    p, pid = _active_server()
    frame, _ = _compressed_frame(pid, "z" * 100_000)
    assert p.server.inflate_budget is None
    p.server.receive_data(frame * 3)
    assert len([o for o in p.server.drain_received() if isinstance(o, PacketReceived)]) == 3


def test_a_body_over_the_size_limit_is_packettoolarge_even_with_budget_left():
    p, pid = _active_server()
    p.server.max_decompressed_size = 1000
    frame, _ = _compressed_frame(pid, "w" * 2000)
    p.server.inflate_budget = 10**9
    p.server.receive_data(frame)
    closed = [o for o in p.server.drain_received() if isinstance(o, ConnectionClosed)]
    assert closed[0].reason == "packettoolarge"


# --- the packet quota (flow control into the process queue) ------------------------------------

def _received(outs):
    return [o.msg for o in outs if isinstance(o, PacketReceived)]


def test_packet_quota_holds_frames_back_undecoded_and_releases_them_in_order():
    p, pid = _active_server()
    stream = b"".join(encode_frame(pid, 0, msgpack.packb(i)) for i in range(5))
    p.server.packet_quota = 2
    p.server.receive_data(stream)
    assert _received(p.server.drain_received()) == [0, 1]
    assert p.server.frames_waiting == 3 and p.server.packet_quota == 0
    p.server.receive_data(b"")  # no room yet: nothing
    assert _received(p.server.drain_received()) == [] and p.server.frames_waiting == 3
    p.server.packet_quota = 1
    p.server.receive_data(encode_frame(pid, 0, msgpack.packb(5)))  # new bytes queue behind the held ones
    assert _received(p.server.drain_received()) == [2]
    p.server.packet_quota = 100
    p.server.receive_data(b"")
    assert _received(p.server.drain_received()) == [3, 4, 5]
    assert p.server.frames_waiting == 0 and p.server.packet_quota == 97


def test_held_frames_come_before_the_eof_and_before_a_broken_frame():
    p, pid = _active_server()
    p.server.packet_quota = 1
    p.server.receive_data(b"".join(encode_frame(pid, 0, msgpack.packb(i)) for i in range(3)))
    p.server.receive_eof()
    outs = p.server.drain_received()
    assert _received(outs) == [0, 1, 2] and isinstance(outs[-1], ConnectionClosed)
    q, pid = _active_server()
    q.server.packet_quota = 1
    q.server.receive_data(b"".join(encode_frame(pid, 0, msgpack.packb(i)) for i in range(3)) + b"\xff\xff\xff\xff")
    outs = q.server.drain_received()
    assert _received(outs) == [0, 1, 2]  # a broken stream is not held back: what precedes it, then the close
    assert [o.reason for o in outs if isinstance(o, ConnectionClosed)] == ["packettoolarge"]


def test_internal_packets_use_the_quota_too():
    """The protocol's own packets count against the quota (the owner's
    rate bucket: a flood of heartbeats went through it unbounded, each
    decoded and answered on the network thread); held back in order."""
    p, pid = _active_server()
    p.server.packet_quota = 0
    p.server.receive_data(encode_frame(16, 0, msgpack.packb({"reason": "bye"})))  # closeconn
    assert p.server.drain_received() == [] and p.server.frames_waiting == 1 and p.server.is_open
    p.server.packet_quota = 1
    p.server.receive_data(b"")
    assert [o.reason for o in p.server.drain_received() if isinstance(o, ConnectionClosed)] == ["bye"]
    assert p.server.packet_quota == 0


@given(st.lists(st.integers(0, 3), min_size=1, max_size=30), st.integers(1, 40), st.data())
@settings(max_examples=60, deadline=None)
def test_any_quotas_and_splits_deliver_every_packet_once_in_order(quotas, chunk, data):
    p, pid = _active_server()
    stream = b"".join(encode_frame(pid, 0, msgpack.packb(i)) for i in range(20))
    got = []
    pos = 0
    for q in quotas + [100] * 30:
        p.server.packet_quota = q
        piece = stream[pos:pos + data.draw(st.integers(0, chunk))]
        pos += len(piece)
        p.server.receive_data(piece)
        got += _received(p.server.drain_received())
        assert p.server.packet_quota >= 0
        if pos >= len(stream) and not p.server.frames_waiting:
            break
    p.server.packet_quota = 100
    p.server.receive_data(stream[pos:])
    got += _received(p.server.drain_received())
    assert got == list(range(20))


def test_inflate_hold_holds_compressed_frames_until_the_budget_is_refilled():
    p, pid = _active_server()
    big, size = _compressed_frame(pid, "h" * 9000)
    small = encode_frame(pid, 0, msgpack.packb("after"))
    p.server.inflate_action = "hold"
    p.server.inflate_budget = 1  # above 0: one body may take it below
    quota = p.server.packet_quota  # (the handshake's packets counted too)
    p.server.receive_data(big + big + small)
    assert _received(p.server.drain_received()) == ["h" * 9000]
    assert p.server.inflate_budget == 1 - size and p.server.frames_waiting == 2
    p.server.receive_data(b"")  # still <= 0: nothing moves
    assert _received(p.server.drain_received()) == [] and p.server.is_open
    p.server.inflate_budget = 1
    p.server.receive_data(b"")
    assert _received(p.server.drain_received()) == ["h" * 9000, "after"]  # in order, nothing lost
    assert p.server.frames_waiting == 0 and p.server.packet_quota == quota - 3


def test_a_close_drops_held_frames_and_eof_hands_on_what_the_budget_held():
    p, pid = _active_server()
    p.server.packet_quota = 0
    p.server.receive_data(encode_frame(pid, 0, msgpack.packb(1)) * 3)
    assert p.server.frames_waiting == 3
    p.server.close("kick")  # our close: held packets are not delivered after it
    assert p.server.frames_waiting == 0
    q, pid = _active_server()
    big, size = _compressed_frame(pid, "b" * 9000)
    q.server.inflate_action = "hold"
    q.server.inflate_budget = 0
    q.server.receive_data(big + encode_frame(pid, 0, msgpack.packb("after")))
    assert q.server.frames_waiting == 2
    q.server.receive_eof()  # the peer is gone: over-budget compressed packets are dropped, the rest delivered
    outs = q.server.drain_received()
    assert _received(outs) == ["after"] and isinstance(outs[-1], ConnectionClosed)
    assert q.server.inflate_dropped == 1


def test_an_empty_budget_inflates_nothing():
    p, pid = _active_server()
    frame, _ = _compressed_frame(pid, "z" * 5000)
    p.server.inflate_budget = 0  # exactly empty: a max_length of 0 means "unlimited" to zlib
    p.server.inflate_action = "drop"
    p.server.receive_data(frame)
    assert _received(p.server.drain_received()) == [] and p.server.inflate_dropped == 1


# --- the "auth" extension: credentials in settype --------------------------------------


def _auth_pair(server_ext, client_ext, credentials):
    p = ConnectionPair()
    p.server = ProtocolConnection(SIDE_SERVER, registry=p.sreg, extensions=server_ext)
    p.client = ProtocolConnection(SIDE_CLIENT, registry=p.creg, extensions=client_ext, credentials=credentials)
    return p


@pytest.mark.parametrize("chunk", [None, 1])
def test_credentials_ride_in_settype_when_auth_is_negotiated(chunk):
    creds = {"user": "alice", "token": b"\x00\xff", 7: [1, 2]}
    p = _auth_pair({"auth"}, {"auth"}, creds)
    p.server.initiate()
    p.pump(chunk)
    assert p.server.negotiated == frozenset({"auth"}) == p.client.negotiated
    assert p.server.peer_credentials == creds
    assert p.server.peer_settype["peng3dnet.credentials"] == creds
    assert p.server.state is HandshakeState.ACTIVE


@pytest.mark.parametrize(
    ("server_ext", "client_ext"),
    [(set(), {"auth"}), ({"auth"}, set()), (set(), set())],
)
def test_credentials_never_sent_without_both_sides(server_ext, client_ext):
    p = _auth_pair(server_ext, client_ext, "secret")
    p.start()
    assert "auth" not in p.server.negotiated
    assert "peng3dnet.credentials" not in p.server.peer_settype
    assert p.server.peer_credentials is None
    sent = [o.msg for o in p.c_out if isinstance(o, PacketSent) and o.pid == 2]
    assert len(sent) == 1 and sent[0]["conntype"] == "classic"
    assert "peng3dnet.credentials" not in sent[0] and "secret" not in repr(sent)


def test_credentials_none_is_sent_as_nil():
    p = _auth_pair({"auth"}, {"auth"}, None)
    p.start()
    assert "peng3dnet.credentials" in p.server.peer_settype
    assert p.server.peer_credentials is None


def test_server_holds_the_handshake_until_it_begins_it():
    """A server deciding on credentials just does not call begin_handshake yet:
    the client waits in HELLO-after-settype, nothing else moves."""
    p = _auth_pair({"auth"}, {"auth"}, "pw")
    p.auto_handshake = False
    p.start()
    assert p.server.state is HandshakeState.TYPESET and p.client.state is HandshakeState.TYPESET
    assert p.server.peer_credentials == "pw"
    p.server.begin_handshake(p.sreg.mapping())
    p.pump()
    assert p.server.state is HandshakeState.ACTIVE and p.client.state is HandshakeState.ACTIVE


# --- the "calls" extension ---------------------------------------------------------------

from peng3dnet.constants import PID_CALL, PID_CALL_REPLY  # noqa: E402
from peng3dnet.errors import LocalProtocolError  # noqa: E402
from peng3dnet.protocol.connection import CALL_ERROR, CALL_OK, CallReplied, CallRequested  # noqa: E402


def _calls_pair(server_ext=frozenset({"calls"}), client_ext=frozenset({"calls"})):
    p = ConnectionPair()
    p.server = ProtocolConnection(SIDE_SERVER, registry=p.sreg, extensions=server_ext)
    p.client = ProtocolConnection(SIDE_CLIENT, registry=p.creg, extensions=client_ext)
    p.start()
    return p


@pytest.mark.parametrize("chunk", [None, 1])
def test_call_and_reply_round_trip(chunk):
    p = _calls_pair()
    assert p.server.negotiated == frozenset({"calls"}) == p.client.negotiated
    pid = p.sreg.get_id("app:a")
    p.client._out.append(p.client.encode_call(7, pid, {"q": 1}))
    p.pump(chunk)
    assert p.s_out[-1] == CallRequested(7, pid, {"q": 1}, 7)
    p.server._out.append(p.server.encode_reply(7, CALL_OK, [1, 2]))
    p.server._out.append(p.server.encode_reply(8, CALL_ERROR, {"type": "ValueError", "message": "no"}))
    p.pump(chunk)
    assert p.c_out[-2:] == [CallReplied(7, CALL_OK, [1, 2]), CallReplied(8, CALL_ERROR, {"type": "ValueError", "message": "no"})]


def test_calls_need_the_extension():
    p = _calls_pair(client_ext=frozenset())
    assert "calls" not in p.server.negotiated
    with pytest.raises(LocalProtocolError, match="does not support calls"):
        p.server.encode_call(1, 64, None)
    # Without the extension, id 34 is not a call: the peer judges it as an unknown packet.
    p.client._out.append(encode_frame(PID_CALL, 0, msgpack.packb([1, 64, None])))
    p.pump()
    assert p.s_out[-1] == PacketReceived(PID_CALL, 0, [1, 64, None], HandshakeState.ACTIVE, 4)


def test_call_before_the_handshake_is_refused():
    p = ConnectionPair()
    p.server = ProtocolConnection(SIDE_SERVER, registry=p.sreg, extensions={"calls"})
    p.client = ProtocolConnection(SIDE_CLIENT, registry=p.creg, extensions={"calls"})
    p.auto_handshake = False
    p.start()  # TYPESET: calls negotiated, handshake not done
    p.server.receive_data(encode_frame(PID_CALL, 0, msgpack.packb([1, 64, None])))
    closed = [o for o in p.server.drain_received() if isinstance(o, ConnectionClosed)]
    assert closed and closed[0].reason == "invalidstate"


@pytest.mark.parametrize(
    ("pid", "body"),
    [
        (PID_CALL, {"id": 1}),
        (PID_CALL, [1, 64]),
        (PID_CALL, [1, 64, None, 4]),
        (PID_CALL, [-1, 64, None]),
        (PID_CALL, [2**63, 64, None]),
        (PID_CALL, [True, 64, None]),
        (PID_CALL, [1.0, 64, None]),
        (PID_CALL, [1, 63, None]),  # an internal id
        (PID_CALL, [1, 2**32, None]),
        (PID_CALL, [1, "app:a", None]),
        (PID_CALL_REPLY, [1, 3, None]),
        (PID_CALL_REPLY, [1, -1, None]),
        (PID_CALL_REPLY, [1, False, None]),
        (PID_CALL_REPLY, "x"),
    ],
)
def test_malformed_calls_close_with_invalidpacket(pid, body):
    p = _calls_pair()
    p.server.receive_data(encode_frame(pid, 0, msgpack.packb(body)))
    outs = p.server.drain_received()
    assert not [o for o in outs if isinstance(o, (CallRequested, CallReplied))]
    closed = [o for o in outs if isinstance(o, ConnectionClosed)]
    assert closed and closed[0].reason == "invalidpacket"


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([PID_CALL, PID_CALL_REPLY]), st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4), max_leaves=8))
def test_any_call_body_is_an_output_or_a_close(pid, body):
    p = _calls_pair()
    p.server.receive_data(encode_frame(pid, 0, msgpack.packb(body)))
    outs = p.server.drain_received()
    assert len(outs) >= 1
    ok = isinstance(body, list) and len(body) == 3 and type(body[0]) is int and 0 <= body[0] < 2**63
    if pid == PID_CALL:
        ok = ok and type(body[1]) is int and 64 <= body[1] < 2**32
    else:
        ok = ok and type(body[1]) is int and body[1] in (0, 1, 2)
    if ok:
        size = len(msgpack.packb(body))
        assert outs == [CallRequested(*body, size) if pid == PID_CALL else CallReplied(*body)]
        assert p.server.is_open
    else:
        assert isinstance(outs[-1], ConnectionClosed) and outs[-1].reason == "invalidpacket"


def test_call_requests_and_replies_count_against_the_packet_quota():
    p = _calls_pair()
    call = encode_frame(PID_CALL, 0, msgpack.packb([1, 64, None]))
    reply = encode_frame(PID_CALL_REPLY, 0, msgpack.packb([1, 0, None]))
    p.server.packet_quota = 3
    p.server.receive_data(call + reply + call + call + reply)
    outs = p.server.drain_received()
    assert [type(o).__name__ for o in outs] == ["CallRequested", "CallReplied", "CallRequested"]
    assert p.server.frames_waiting == 2 and p.server.packet_quota == 0
    p.server.packet_quota = 5
    p.server.receive_data(b"")
    assert [type(o).__name__ for o in p.server.drain_received()] == ["CallRequested", "CallReplied"]
    assert p.server.frames_waiting == 0 and p.server.packet_quota == 3


def test_eof_can_discard_held_frames_for_a_session():
    """A resumable session's held frames are not delivered at EOF: the peer
    sends them again on the next socket, so delivering them would duplicate."""
    p = ConnectionPair()
    p.start()
    pid = p.sreg.get_id("app:a")
    frames = b"".join(encode_frame(pid, 0, msgpack.packb(i)) for i in range(5))
    for discard, expect in ((False, [0, 1, 2, 3, 4]), (True, [0, 1])):
        q = ConnectionPair()
        q.start()
        q.server.packet_quota = 2
        q.server.receive_data(frames)
        q.server.receive_eof("socketclose", discard_held=discard)
        outs = q.server.drain_received()
        assert [o.msg for o in outs if isinstance(o, PacketReceived)] == expect
        assert outs[-1] == ConnectionClosed("socketclose", by_peer=True, eof=True)
    del p


# --- the core's own handling of heartbeats and session acks; defaults -------------------------

from peng3dnet.constants import CONNTYPE_NOTSET, PID_HEARTBEAT, PID_HEARTBEAT_ACK, PID_SESSION_ACK  # noqa: E402
from peng3dnet.protocol.connection import HeartbeatAcked, SessionAcked  # noqa: E402


def _ext_pair(ext):
    p = ConnectionPair()
    p.server = ProtocolConnection(SIDE_SERVER, registry=p.sreg, extensions=ext)
    p.client = ProtocolConnection(SIDE_CLIENT, registry=p.creg, extensions=ext)
    p.start()
    return p


def test_heartbeat_probe_is_answered_with_its_body_and_the_ack_is_output():
    p = _ext_pair({"heartbeat"})
    p.server.receive_data(encode_frame(PID_HEARTBEAT, 0, msgpack.packb({"t": 1.5})))
    assert p.server.drain_received() == []  # handled in the core, not an application packet
    answer = p.server.data_to_send()
    assert answer == encode_frame(PID_HEARTBEAT_ACK, 0, msgpack.packb({"t": 1.5}))
    p.client.receive_data(answer)
    assert p.client.drain_received() == [HeartbeatAcked({"t": 1.5})]


def test_heartbeats_need_the_extension_and_an_active_connection():
    p = _ext_pair(set())
    p.server.receive_data(encode_frame(PID_HEARTBEAT, 0, msgpack.packb(1)))
    assert p.server.drain_received() == [PacketReceived(PID_HEARTBEAT, 0, 1, HandshakeState.ACTIVE, 1)]
    assert p.server.send_heartbeat({"t": 0.0}) is False
    q = ConnectionPair()
    q.server = ProtocolConnection(SIDE_SERVER, registry=q.sreg, extensions={"heartbeat"})
    q.client = ProtocolConnection(SIDE_CLIENT, registry=q.creg, extensions={"heartbeat"})
    q.auto_handshake = False
    q.start()
    q.server.receive_data(encode_frame(PID_HEARTBEAT_ACK, 0, msgpack.packb(1)))
    closed = [o for o in q.server.drain_received() if isinstance(o, ConnectionClosed)]
    assert closed and closed[0].reason == "invalidstate"


@pytest.mark.parametrize("count", [0, 1, 2**63 - 1])
def test_session_acks_are_output(count):
    p = _ext_pair({"resume"})
    assert p.client.send_ack(count) is True
    p.server.receive_data(p.client.data_to_send())
    assert p.server.drain_received() == [SessionAcked(count)]
    assert p.server.is_open


@pytest.mark.parametrize("body", [-1, 2**63, True, 1.0, "1", None, [1]])
def test_malformed_session_acks_close(body):
    p = _ext_pair({"resume"})
    p.server.receive_data(encode_frame(PID_SESSION_ACK, 0, msgpack.packb(body)))
    outs = p.server.drain_received()
    assert not [o for o in outs if isinstance(o, SessionAcked)]
    assert outs[-1] == ConnectionClosed("invalidpacket", by_peer=False, error=outs[-1].error)


def test_session_acks_need_the_extension_and_an_active_connection():
    p = _ext_pair(set())
    assert p.client.send_ack(1) is False
    p.server.receive_data(encode_frame(PID_SESSION_ACK, 0, msgpack.packb(1)))
    assert p.server.drain_received() == [PacketReceived(PID_SESSION_ACK, 0, 1, HandshakeState.ACTIVE, 1)]
    q = ConnectionPair()
    q.server = ProtocolConnection(SIDE_SERVER, registry=q.sreg, extensions={"resume"})
    q.client = ProtocolConnection(SIDE_CLIENT, registry=q.creg, extensions={"resume"})
    q.auto_handshake = False
    q.start()
    assert q.client.send_ack(1) is False
    q.server.receive_data(encode_frame(PID_SESSION_ACK, 0, msgpack.packb(1)))
    closed = [o for o in q.server.drain_received() if isinstance(o, ConnectionClosed)]
    assert closed and closed[0].reason == "invalidstate" and closed[0].error is not None
    assert "session ack before the handshake completed" in str(closed[0].error)


def test_defaults_of_a_new_connection():
    c = ProtocolConnection(SIDE_SERVER)
    from peng3dnet.registry import PacketRegistry

    assert isinstance(c.registry, PacketRegistry)
    assert c.conntype == CONNTYPE_NOTSET and ProtocolConnection(SIDE_CLIENT).conntype == "classic"
    assert (c.peer_version, c.peer_hello, c.peer_settype, c.peer_handshake) == (None, {}, {}, {})
    assert c.negotiated == frozenset() and c.close_reason is None and c.closed is False
    assert c.inflate_action == "close" and c.inflate_budget is None and c.packet_quota == NO_QUOTA
    assert (c.max_packet_size, c.max_decompressed_size, c.compress_threshold, c.compress_level) == (
        16 * 1024 * 1024, 16 * 1024 * 1024, 8192, 6)


def test_the_default_threshold_compresses_above_8192_bytes_only():
    c = ProtocolConnection(SIDE_SERVER)
    body_8192 = "x" * (8192 - 3)  # msgpack str8/16 header: 3 bytes for this length
    assert len(msgpack.packb(body_8192)) == 8192
    assert c.encode_packet(64, body_8192)[8:10] == b"\x00\x00"  # not compressed
    assert c.encode_packet(64, body_8192 + "x")[8:10] == b"\x00\x01"  # compressed


def test_an_uncompressed_internal_packet_passes_under_an_inflate_budget():
    p = ConnectionPair()
    p.client.inflate_budget = 10  # tiny: only compressed bodies are charged
    p.start()
    assert p.client.state is HandshakeState.ACTIVE and p.client.inflate_budget == 10


def test_closeconn_reasons_are_bounded_and_stringified():
    from peng3dnet.constants import PID_CLOSECONN
    from peng3dnet.protocol.connection import _MAX_REASON

    for sent, expect in (
        ("r" * _MAX_REASON, "r" * _MAX_REASON),  # exactly the limit: kept
        ("r" * (_MAX_REASON + 1), "r" * _MAX_REASON),  # one more: truncated
        (42, "42"),  # not a string: its repr
        (None, None),
    ):
        p = ConnectionPair()
        p.start()
        p.server.receive_data(encode_frame(PID_CLOSECONN, 0, msgpack.packb({"reason": sent})))
        outs = p.server.drain_received()
        assert outs[0] == PacketReceived(PID_CLOSECONN, 0, {"reason": sent}, HandshakeState.ACTIVE)
        assert outs[-1] == ConnectionClosed(expect, by_peer=True) and p.server.close_reason == expect


def test_eof_gives_its_reason():
    p = ConnectionPair()
    p.start()
    p.client.receive_eof("socketerror")
    assert p.client.close_reason == "socketerror"
    assert p.client.drain_received()[-1] == ConnectionClosed("socketerror", by_peer=True, eof=True)


# --- every protocol error says exactly what was wrong (the peer and the logs read it) ----------

from peng3dnet.constants import PID_HANDSHAKE, PID_HELLO, PID_SETTYPE  # noqa: E402


def _refused(receiver, pid, body):
    receiver.receive_data(encode_frame(pid, 0, msgpack.packb(body)))
    closed = [o for o in receiver.drain_received() if isinstance(o, ConnectionClosed)]
    assert closed and closed[0].error is not None
    return closed[0].reason, str(closed[0].error)


@pytest.mark.parametrize(
    ("ext", "pid", "body", "reason", "message"),
    [
        ({"resume"}, PID_SESSION_ACK, -1, "invalidpacket", "malformed session ack -1"),
        ({"calls"}, PID_CALL, [1, 2], "invalidpacket", "malformed call packet: not [id, x, value]"),
        ({"calls"}, PID_CALL, [-1, 64, None], "invalidpacket", "malformed call packet: id -1, 64"),
        ({"calls"}, PID_CALL, [1, 5, None], "invalidpacket", "call of packet id 5, not an application packet"),
        ({"calls"}, PID_CALL_REPLY, [1, 9, None], "invalidpacket", "malformed call reply: status 9"),
    ],
)
def test_messages_of_malformed_extension_packets(ext, pid, body, reason, message):
    assert _refused(_ext_pair(ext).server, pid, body) == (reason, message)


@pytest.mark.parametrize(
    ("ext", "pid", "message"),
    [
        ({"resume"}, PID_SESSION_ACK, "session ack before the handshake completed"),
        ({"heartbeat"}, PID_HEARTBEAT, "heartbeat before the handshake completed"),
        ({"calls"}, PID_CALL, "call before the handshake completed"),
    ],
)
def test_messages_of_extension_packets_before_the_handshake(ext, pid, message):
    q = ConnectionPair()
    q.server = ProtocolConnection(SIDE_SERVER, registry=q.sreg, extensions=ext)
    q.client = ProtocolConnection(SIDE_CLIENT, registry=q.creg, extensions=ext)
    q.auto_handshake = False
    q.start()
    assert _refused(q.server, pid, [1, 64, None] if pid == PID_CALL else 1) == ("invalidstate", message)


def test_messages_of_malformed_handshake_packets():
    s = ProtocolConnection(SIDE_SERVER)
    s.initiate()
    assert _refused(s, PID_SETTYPE, [1]) == ("invalidpacket", "malformed settype packet: body is not a map")
    s = ProtocolConnection(SIDE_SERVER)
    s.initiate()
    assert _refused(s, PID_SETTYPE, {"conntype": 5}) == ("invalidpacket", "malformed settype packet: conntype 5")
    hello = encode_frame(PID_HELLO, 0, msgpack.packb({"version": "x", "protoversion": 2}))
    for registry, message in (
        ({"a": "1"}, "malformed handshake packet: bad registry"),
        ({"a": 64, "b": 64}, "malformed handshake packet: duplicate ids in registry"),
    ):
        c = ProtocolConnection(SIDE_CLIENT)
        c.receive_data(hello)
        c.drain_received()
        body = {"version": "x", "protoversion": 2, "registry": registry}
        assert _refused(c, PID_HANDSHAKE, body) == ("invalidpacket", message)
    c = ProtocolConnection(SIDE_CLIENT, extensions={"heartbeat"})
    c.receive_data(encode_frame(PID_HELLO, 0, msgpack.packb({"version": "x", "protoversion": 2,
                                                             "peng3dnet.extensions": ["heartbeat"]})))
    c.drain_received()
    body = {"version": "x", "protoversion": 2, "registry": {"peng3dnet:internal.hello": 1}}
    assert _refused(c, PID_HANDSHAKE, body) == ("invalidpacket", "handshake registry lacks the negotiated extensions")


def test_messages_of_local_misuse():
    with pytest.raises(ValueError, match="^invalid side 3$"):
        ProtocolConnection(3)
    with pytest.raises(ValueError, match="^only the server initiates$"):
        ProtocolConnection(SIDE_CLIENT).initiate()
    with pytest.raises(LocalProtocolError, match="^cannot begin the handshake in state INIT$"):
        ProtocolConnection(SIDE_SERVER).begin_handshake({})
    p = ConnectionPair()
    p.start()
    p.client.close("bye")
    with pytest.raises(ConnectionClosedError, match="^connection is closed$") as ei:
        p.client.send_packet(64, None)
    assert ei.value.reason == "bye"
    with pytest.raises(LocalProtocolError, match=r"^the peer does not support calls \(a peng3dnet 0\.1\.x peer\?\)$"):
        p.client.encode_reply(1, 0, None)


def test_the_state_stamped_on_packets_after_a_compressed_one_in_the_same_read():
    import zlib

    p = ConnectionPair()
    p.start()
    pid = p.sreg.get_id("app:a")
    compressed = encode_frame(pid, 1, zlib.compress(msgpack.packb("z")))
    plain = encode_frame(pid, 0, msgpack.packb("p"))
    p.server.receive_data(compressed + plain)
    assert p.server.drain_received() == [
        PacketReceived(pid, 1, "z", HandshakeState.ACTIVE, 2),  # (size: the inflated body)
        PacketReceived(pid, 0, "p", HandshakeState.ACTIVE, 2),
    ]
