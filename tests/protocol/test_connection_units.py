"""ProtocolConnection value by value (mutation survivors): what the
handshake records of the peer, the exact outputs of handshake packets and
of closes, the messages of protocol errors, the registry's id bounds, the
call id 0, the heartbeat sender, the encoder argument, and the quota and
inflate budget rules for internal packets and a stream broken behind a
held frame."""

from __future__ import annotations

import zlib

import msgpack
import pytest

from peng3dnet.constants import (
    FLAG_COMPRESSED,
    PID_CALL,
    PID_CLOSECONN,
    PID_HANDSHAKE,
    PID_HANDSHAKE_ACCEPT,
    PID_HEARTBEAT,
    PID_HELLO,
    PID_SETTYPE,
    SIDE_CLIENT,
    SIDE_SERVER,
)
from peng3dnet.errors import DecodeError, LocalProtocolError
from peng3dnet.protocol.codec import unpack
from peng3dnet.protocol.connection import (
    ConnectionClosed,
    ConnTypeRequested,
    HandshakeCompleted,
    PacketReceived,
    PacketSent,
    ProtocolConnection,
)
from peng3dnet.protocol.framing import FrameDecoder, encode_frame
from peng3dnet.protocol.handshake import HandshakeState
from peng3dnet.version import PROTOVERSION
from tests.helpers import ConnectionPair

S = HandshakeState


def frames_of(data):
    out: list = []
    FrameDecoder(1 << 24).feed(data, out)
    return [(pid, flags, msgpack.unpackb(body, raw=False, strict_map_key=False)) for pid, flags, body in out]


def _pair(ext=frozenset(), **client_kw):
    p = ConnectionPair()
    p.server = ProtocolConnection(SIDE_SERVER, registry=p.sreg, extensions=ext)
    p.client = ProtocolConnection(SIDE_CLIENT, registry=p.creg, extensions=ext, **client_kw)
    return p


def _closed(conn):
    outs = conn.drain_received()
    closed = [o for o in outs if isinstance(o, ConnectionClosed)]
    assert len(closed) == 1
    return outs, closed[0]


# --- what the handshake records and outputs ------------------------------------------------

def test_the_handshake_packets_are_output_with_their_id_flags_body_and_new_state():
    p = ConnectionPair()
    p.server.version = "srv-1"
    p.client.version = "cli-1"
    p.start()
    hello = {"version": "srv-1", "protoversion": PROTOVERSION}
    handshake = {"version": "srv-1", "protoversion": PROTOVERSION, "registry": p.sreg.mapping()}
    assert p.c_out[0] == PacketReceived(PID_HELLO, 0, hello, S.HELLO)
    assert p.c_out[2] == PacketReceived(PID_HANDSHAKE, 0, handshake, S.HANDSHAKE)
    assert p.s_out[1] == PacketReceived(PID_SETTYPE, 0, {"conntype": "classic"}, S.TYPESET)
    assert p.s_out[4] == PacketReceived(PID_HANDSHAKE_ACCEPT, 0, {"success": True}, S.ACTIVE)
    assert p.s_out[3] == PacketSent(PID_HANDSHAKE, handshake)
    assert p.client.peer_hello == hello
    assert p.client.peer_handshake == {k: v for k, v in handshake.items() if k != "registry"}  # (applied, not kept)
    assert p.client.peer_version == "srv-1" and p.server.conntype == "classic"
    assert p.server.peer_settype == {"conntype": "classic"} and p.server.peer_version is None  # settype has none


@pytest.mark.parametrize("version, seen", [("1.2.3", "1.2.3"), (7, None), (None, None)])
def test_the_peers_version_is_kept_only_when_it_is_a_string(version, seen):
    c = ProtocolConnection(SIDE_CLIENT)
    c.receive_data(encode_frame(PID_HELLO, 0, msgpack.packb({"version": version, "protoversion": PROTOVERSION})))
    assert c.peer_version == seen and c.is_open


def test_the_requested_conntype_is_recorded_by_the_server():
    s = ProtocolConnection(SIDE_SERVER)
    s.initiate()
    s.receive_data(encode_frame(PID_SETTYPE, 0, msgpack.packb({"conntype": "ping", "x": 1})))
    assert s.conntype == "ping" and s.peer_settype == {"conntype": "ping"}  # (the keys it reads: "x" is not kept)
    assert s.drain_received()[-1] == ConnTypeRequested("ping")


def test_begin_handshake_sends_the_version_and_the_extra_keys():
    p = ConnectionPair()
    p.server.version = "v9"
    p.auto_handshake = False
    p.start()
    p.server.begin_handshake({"app:a": 64}, {"session": {"token": b"t"}})
    ((pid, flags, msg),) = frames_of(p.server.data_to_send())
    expect = {"version": "v9", "protoversion": PROTOVERSION, "registry": {"app:a": 64}, "session": {"token": b"t"}}
    assert (pid, flags, msg) == (PID_HANDSHAKE, 0, expect)
    assert p.server.drain_received()[-1] == PacketSent(PID_HANDSHAKE, expect)


def test_a_protocol_version_mismatch_says_both_versions():
    c = ProtocolConnection(SIDE_CLIENT)
    c.receive_data(encode_frame(PID_HELLO, 0, msgpack.packb({"version": "x", "protoversion": 3})))
    _, closed = _closed(c)
    assert (closed.reason, str(closed.error)) == (
        "protoversionmismatch", f"peer speaks protocol version 3, we speak {PROTOVERSION}")


def test_a_handshake_packet_from_the_wrong_side_says_who_may_send_it():
    s = ProtocolConnection(SIDE_SERVER)
    s.receive_data(encode_frame(PID_HELLO, 0, msgpack.packb({"version": "x", "protoversion": PROTOVERSION})))
    _, closed = _closed(s)
    assert (closed.reason, str(closed.error)) == ("invalidside", "peer sent hello, which only the server may send")
    c = ProtocolConnection(SIDE_CLIENT)
    c.receive_data(encode_frame(PID_HELLO, 0, msgpack.packb({"version": "x", "protoversion": PROTOVERSION})))
    c.drain_received()
    c.receive_data(encode_frame(PID_HANDSHAKE_ACCEPT, 0, msgpack.packb({"success": True})))
    _, closed = _closed(c)
    assert (closed.reason, str(closed.error)) == (
        "invalidside", "peer sent handshake.accept, which only the client may send")


def test_differing_registries_are_named_in_the_error():
    p = ConnectionPair(server_names=("app:a", "app:s"), client_names=("app:a", "app:c", "app:d"))
    p.start()
    closed = [o for o in p.c_out if isinstance(o, ConnectionClosed)][0]
    assert (closed.reason, str(closed.error)) == (
        "packetregmismatch", "packet registries differ: only ours ['app:c', 'app:d'], only theirs ['app:s']")


def _client_at_handshake():
    c = ProtocolConnection(SIDE_CLIENT, autosync=False)
    c.receive_data(encode_frame(PID_HELLO, 0, msgpack.packb({"version": "x", "protoversion": PROTOVERSION})))
    c.drain_received()
    c.data_to_send()
    return c


@pytest.mark.parametrize("pid", [64, 2**32 - 1])
def test_registry_ids_from_64_to_2_to_the_32_minus_1_are_accepted(pid):
    c = _client_at_handshake()
    c.receive_data(encode_frame(PID_HANDSHAKE, 0, msgpack.packb(
        {"version": "x", "protoversion": PROTOVERSION, "registry": {"app:a": pid}})))
    assert c.drain_received()[-1] == HandshakeCompleted() and c.state is S.ACTIVE


@pytest.mark.parametrize("pid", [-1, 2**32, 2**33 - 1])
def test_registry_ids_outside_32_bits_are_refused(pid):
    c = _client_at_handshake()
    c.receive_data(encode_frame(PID_HANDSHAKE, 0, msgpack.packb(
        {"version": "x", "protoversion": PROTOVERSION, "registry": {"app:a": pid}})))
    _, closed = _closed(c)
    assert (closed.reason, str(closed.error)) == ("invalidpacket", "malformed handshake packet: bad registry")


@pytest.mark.parametrize(("registry", "shown"), [
    ({"app:a": 0}, "'app:a' the id 0"),  # an application packet on a reserved id
    ({"app:a": 63}, "'app:a' the id 63"),
    ({"app:a": 16}, "'app:a' the id 16"),  # on an internal packet's id
    ({"peng3dnet:internal.closeconn": 64}, "'peng3dnet:internal.closeconn' the id 64"),  # an internal one moved
])
def test_registry_ids_below_64_are_the_protocols_own(registry, shown):
    c = _client_at_handshake()
    c.receive_data(encode_frame(PID_HANDSHAKE, 0, msgpack.packb(
        {"version": "x", "protoversion": PROTOVERSION, "registry": registry})))
    _, closed = _closed(c)
    assert closed.reason == "invalidpacket"
    assert str(closed.error) == f"handshake registry gives {shown} (ids below 64 are the protocol's)"


def test_registry_with_the_internal_packets_at_their_ids_is_accepted():
    c = _client_at_handshake()
    c.receive_data(encode_frame(PID_HANDSHAKE, 0, msgpack.packb(
        {"version": "x", "protoversion": PROTOVERSION,
         "registry": {"peng3dnet:internal.hello": 1, "peng3dnet:internal.closeconn": 16, "app:a": 64}})))
    assert c.drain_received()[-1] == HandshakeCompleted()


# --- closing ------------------------------------------------------------------------------

def test_our_close_outputs_the_closeconn_it_sent_then_the_close():
    p = ConnectionPair()
    p.start()
    p.client.close("bye")
    assert p.client.drain_received() == [PacketSent(PID_CLOSECONN, {"reason": "bye"}),
                                         ConnectionClosed("bye", by_peer=False)]
    assert frames_of(p.client.data_to_send()) == [(PID_CLOSECONN, 0, {"reason": "bye"})]


def test_a_protocol_error_outputs_the_closeconn_it_sent_and_records_the_reason():
    s = ProtocolConnection(SIDE_SERVER)
    s.initiate()
    s.drain_received()
    s.data_to_send()
    s.receive_data(encode_frame(PID_SETTYPE, 0, msgpack.packb([1])))
    outs = s.drain_received()
    assert outs[0] == PacketSent(PID_CLOSECONN, {"reason": "invalidpacket"})
    assert outs[1] == ConnectionClosed("invalidpacket", by_peer=False, error=outs[1].error)
    assert len(outs) == 2 and s.close_reason == "invalidpacket" and s.closed is True
    assert frames_of(s.data_to_send()) == [(PID_CLOSECONN, 0, {"reason": "invalidpacket"})]


def test_a_malformed_body_on_the_fast_path_fails_with_the_codecs_own_error():
    p = ConnectionPair()
    p.start()
    body = b"\x01\x02"  # two values
    with pytest.raises(DecodeError) as ei:
        unpack(body)
    p.server.receive_data(encode_frame(64, 0, body))
    _, closed = _closed(p.server)
    assert (closed.reason, str(closed.error)) == ("invalidmsgpack", str(ei.value))
    assert str(closed.error).startswith("malformed msgpack body: ExtraData: ")


# --- calls, heartbeats, the encoder ----------------------------------------------------------

def test_a_call_with_id_0_is_a_call():
    from peng3dnet.protocol.connection import CallReplied, CallRequested

    p = _pair({"calls"})
    p.start()
    p.server.receive_data(p.client.encode_call(0, 64, "x"))
    assert p.server.drain_received() == [CallRequested(0, 64, "x", 5)]  # (5: the call body [0, 64, "x"])
    p.client.receive_data(p.server.encode_reply(0, 0, "y"))
    assert p.client.drain_received() == [CallReplied(0, 0, "y")]


def test_send_heartbeat_queues_a_probe_only_when_negotiated_active_and_open():
    p = _pair({"heartbeat"})
    p.auto_handshake = False
    p.start()
    assert p.server.send_heartbeat(1) is False and p.server.data_to_send() == b""  # not active yet
    p.server.begin_handshake(p.sreg.mapping())
    p.pump()
    assert p.server.send_heartbeat({"t": 2.5}) is True
    assert frames_of(p.server.data_to_send()) == [(PID_HEARTBEAT, 0, {"t": 2.5})]
    p.server.close("x")
    p.server.data_to_send()
    assert p.server.send_heartbeat(1) is False and p.server.data_to_send() == b""
    q = _pair()
    q.start()
    assert q.server.state is S.ACTIVE
    assert q.server.send_heartbeat(1) is False and q.server.data_to_send() == b""


def test_the_encoder_given_is_the_one_used():
    p = _pair({"calls"})
    p.start()
    used = []

    def encode(value):
        used.append(value)
        return msgpack.packb(value)

    assert p.client.encode_packet(64, {"a": 1}, encode) == encode_frame(64, 0, msgpack.packb({"a": 1}))
    p.client.encode_call(5, 64, "c", encode)
    p.client.encode_reply(6, 0, "r", encode)
    assert used == [{"a": 1}, [5, 64, "c"], [6, 0, "r"]]


@pytest.mark.parametrize("error", [TypeError("no type"), ValueError("no value"), OverflowError("too big")])
def test_an_encoder_error_becomes_a_local_protocol_error(error):
    p = _pair()
    p.start()

    def encode(value):
        raise error

    with pytest.raises(LocalProtocolError, match=f"^cannot encode message: {error}$") as info:
        p.client.encode_packet(64, {"a": 1}, encode)
    assert info.value.__cause__ is error
    assert p.client.data_to_send() == b""  # nothing half-queued


def test_encode_packet_compresses_by_the_connection_settings():
    p = _pair()
    p.start()
    big = "x" * 100
    p.client.compress_threshold = 50
    assert p.client.encode_packet(64, big)[8:10] == b"\x00\x01"
    p.client.compress = False
    assert p.client.encode_packet(64, big) == encode_frame(64, 0, msgpack.packb(big))


# --- the quota and the inflate budget for internal packets -------------------------------------

def test_the_handshakes_packets_use_the_quota_too():
    c = ProtocolConnection(SIDE_CLIENT)
    c.packet_quota = 0
    c.receive_data(encode_frame(PID_HELLO, 0, msgpack.packb({"version": "x", "protoversion": PROTOVERSION})))
    assert c.state is S.INIT and c.frames_waiting == 1  # held back, like any packet
    c.packet_quota = 1
    c.receive_data(b"")
    assert c.state is S.TYPESET and c.frames_waiting == 0 and c.packet_quota == 0


def test_without_calls_an_id_1_or_34_frame_is_not_a_call():
    p = _pair()
    p.start()
    p.server.packet_quota = 5
    p.server.receive_data(encode_frame(PID_CALL, 0, msgpack.packb([1, 64, None])))
    assert p.server.drain_received() == [PacketReceived(PID_CALL, 0, [1, 64, None], S.ACTIVE, 4)]
    assert p.server.packet_quota == 4  # (an internal packet: counted as any)
    p.server.receive_data(encode_frame(PID_CALL, 0, msgpack.packb(2)))
    assert p.server.drain_received() == [PacketReceived(PID_CALL, 0, 2, S.ACTIVE, 1)]
    p.server.receive_data(encode_frame(PID_HELLO, 0, msgpack.packb({"version": "x", "protoversion": PROTOVERSION})))
    _, closed = _closed(p.server)  # a hello to the server: refused
    assert closed.reason == "invalidside" and p.server.packet_quota == 2


def _compressed(pid, value):
    return encode_frame(pid, FLAG_COMPRESSED, zlib.compress(msgpack.packb(value)))


def test_a_held_internal_frame_does_not_give_back_quota():
    p = _pair({"heartbeat"})
    p.start()
    p.server.inflate_action = "hold"
    p.server.inflate_budget = 0
    p.server.packet_quota = 5
    p.server.receive_data(_compressed(PID_HEARTBEAT, "x" * 50))
    assert p.server.frames_waiting == 1 and p.server.packet_quota == 5
    p.server.receive_data(_compressed(64, "y"))
    assert p.server.frames_waiting == 2 and p.server.packet_quota == 5
    p.server.inflate_budget = 1000
    p.server.receive_data(b"")
    assert p.server.drain_received() == [PacketReceived(64, FLAG_COMPRESSED, "y", S.ACTIVE, 2)]
    assert p.server.packet_quota == 3 and p.server.frames_waiting == 0  # (the heartbeat counted when handled)


def test_a_broken_stream_behind_a_held_frame_closes_the_connection():
    p = _pair()
    p.start()
    p.server.inflate_action = "hold"
    p.server.inflate_budget = 0
    p.server.receive_data(_compressed(64, "held") + b"\x00\x00\x00\x02garbage")
    outs, closed = _closed(p.server)
    assert closed.reason == "invalidpacket" and closed.by_peer is False
    assert str(closed.error) == "length prefix 2 is smaller than the 6-byte header"
    assert p.server.closed is True and p.server.frames_waiting == 0


def test_an_empty_budget_refuses_even_a_one_byte_body():
    p = _pair()
    p.start()
    p.server.inflate_budget = 0
    p.server.receive_data(_compressed(64, None))  # one byte inflated
    _, closed = _closed(p.server)
    assert (closed.reason, str(closed.error)) == (
        "ratelimit", "compressed packet 64 inflates beyond the 0 bytes left of the decompression budget")


def test_every_packet_dropped_over_the_budget_is_counted():
    p = _pair()
    p.start()
    p.server.inflate_action = "drop"
    p.server.inflate_budget = 10
    p.server.receive_data(_compressed(64, "z" * 100) * 3)
    assert p.server.inflate_dropped == 3 and p.server.drain_received() == [] and p.server.is_open


def test_the_budget_error_names_the_packet_and_the_bytes_left():
    p = _pair()
    p.start()
    p.server.inflate_budget = 10
    p.server.receive_data(_compressed(70, "z" * 100))
    _, closed = _closed(p.server)
    assert (closed.reason, str(closed.error)) == (
        "ratelimit", "compressed packet 70 inflates beyond the 10 bytes left of the decompression budget")


def test_the_default_missing_packet_action_closes():
    assert ProtocolConnection(SIDE_CLIENT).missing_packet_action == "closeconnection"


def test_internal_packets_follow_the_compression_settings_too():
    """The core's own frames (here the server's hello) are compressed by the
    same rule as application packets: above the threshold, at the level."""
    sreg = ConnectionPair().sreg
    frames = {}
    for level in (1, 9):
        server = ProtocolConnection(SIDE_SERVER, registry=sreg, compress=True, compress_threshold=0, compress_level=level)
        server.initiate()
        frames[level] = server.data_to_send()
    for frame in frames.values():
        flags = int.from_bytes(frame[8:10], "big")
        assert flags == FLAG_COMPRESSED
        assert msgpack.unpackb(zlib.decompress(frame[10:]))["protoversion"] == PROTOVERSION
    off = ProtocolConnection(SIDE_SERVER, registry=sreg, compress=False, compress_threshold=0)
    off.initiate()
    assert off.data_to_send()[8:10] == b"\x00\x00"


@pytest.mark.parametrize("pid", [-1, 2**32])
def test_encode_packet_refuses_an_id_that_does_not_fit_as_encode_frame_does(pid):
    p = _pair()
    p.start()
    with pytest.raises(LocalProtocolError) as mine:
        p.client.encode_packet(pid, "x")
    with pytest.raises(LocalProtocolError) as frame:
        encode_frame(pid, 0, msgpack.packb("x"))
    assert str(mine.value) == str(frame.value) == f"invalid packet id {pid} or flags 0"


def test_encode_packet_frames_a_short_body_uncompressed_while_compression_is_on():
    p = _pair()
    p.start()
    p.client.compress_threshold = 4
    four = msgpack.packb("abc")  # 4 bytes: at the threshold, not above it
    assert len(four) == 4
    assert p.client.encode_packet(70000, "abc") == encode_frame(70000, 0, four)
    assert p.client.encode_packet(64, "abcd")[8:10] == b"\x00\x01"  # 5 bytes: compressed


# --- one read, one packet: the receive path's common case --------------------------------------

def _active():
    p = _pair(frozenset({"heartbeat"}))
    p.start()
    p.server.drain_received()
    return p.server


def test_one_read_of_one_packet_outputs_it_and_takes_one_from_the_quota():
    s = _active()
    s.packet_quota = 5
    s.receive_data(memoryview(bytearray(encode_frame(64, 0, msgpack.packb({1: "x"})))))
    assert s.drain_received() == [PacketReceived(64, 0, {1: "x"}, S.ACTIVE, 4)]
    assert s.packet_quota == 4 and s.frames_waiting == 0
    s.packet_quota = 1
    s.receive_data(encode_frame(2**32 - 1, 0, msgpack.packb(None)))  # the last id, the last of the quota
    assert s.drain_received() == [PacketReceived(2**32 - 1, 0, None, S.ACTIVE, 1)] and s.packet_quota == 0


def test_one_read_of_one_packet_over_the_quota_is_held_until_it_is_raised():
    s = _active()
    s.packet_quota = 0
    s.receive_data(encode_frame(64, 0, msgpack.packb("a")))
    assert s.drain_received() == [] and s.frames_waiting == 1 and s.packet_quota == 0
    s.packet_quota = 1
    s.receive_data(b"")
    assert s.drain_received() == [PacketReceived(64, 0, "a", S.ACTIVE, 2)] and s.frames_waiting == 0


def test_a_whole_packet_read_behind_held_ones_waits_its_turn():
    s = _active()
    s.packet_quota = 0
    s.receive_data(encode_frame(64, 0, msgpack.packb("first")))
    s.packet_quota = 1  # room for one: the held one, not the one read now
    s.receive_data(encode_frame(65, 0, msgpack.packb("second")))
    assert s.drain_received() == [PacketReceived(64, 0, "first", S.ACTIVE, 6)] and s.frames_waiting == 1
    s.packet_quota = 1
    s.receive_data(b"")
    assert s.drain_received() == [PacketReceived(65, 0, "second", S.ACTIVE, 7)]


def test_one_read_of_one_compressed_or_internal_packet_takes_the_general_way():
    s = _active()
    s.packet_quota = 5
    s.receive_data(_compressed(64, "z" * 50))
    assert s.drain_received() == [PacketReceived(64, FLAG_COMPRESSED, "z" * 50, S.ACTIVE, 52)] and s.packet_quota == 4
    s.receive_data(encode_frame(PID_HEARTBEAT, 0, msgpack.packb({"t": 1.5})))
    assert s.drain_received() == [] and s.packet_quota == 3  # internal: answered by the core, counted
    assert [pid for pid, _, _ in frames_of(s.data_to_send())] == [PID_HEARTBEAT + 1]  # answered


def test_the_byte_quota_holds_the_frames_after_the_packet_that_spent_it():
    s = _active()
    s.byte_quota = 3  # "first" is 6 bytes: decoded (the quota was above 0), then none
    s.receive_data(encode_frame(64, 0, msgpack.packb("first")) + encode_frame(65, 0, msgpack.packb("second")))
    assert s.drain_received() == [PacketReceived(64, 0, "first", S.ACTIVE, 6)]
    assert s.byte_quota == -3 and s.frames_waiting == 1
    s.receive_data(encode_frame(PID_HEARTBEAT, 0, msgpack.packb({"t": 1.5})))
    assert s.drain_received() == [] and s.frames_waiting == 2  # behind the held one, in order
    s.byte_quota = 1
    s.receive_data(b"")
    assert s.drain_received() == [PacketReceived(65, 0, "second", S.ACTIVE, 7)]
    assert s.byte_quota == -6 and s.frames_waiting == 0  # the heartbeat after it answered, not counted
    assert [pid for pid, _, _ in frames_of(s.data_to_send())] == [PID_HEARTBEAT + 1]


def test_a_compressed_packet_spends_its_inflated_size_and_a_call_its_body():
    p = _pair({"calls"})
    p.start()
    s = p.server
    s.drain_received()
    s.byte_quota = 100
    s.receive_data(_compressed(64, "z" * 50) + p.client.encode_call(3, 64, "y" * 10))
    outs = s.drain_received()
    assert outs[0] == PacketReceived(64, FLAG_COMPRESSED, "z" * 50, S.ACTIVE, 52)
    assert outs[1].call_id == 3 and outs[1].size == len(msgpack.packb([3, 64, "y" * 10]))
    assert s.byte_quota == 100 - 52 - outs[1].size
    s.byte_quota = 0
    s.receive_data(p.client.encode_call(4, 64, "w") + _compressed(64, "v"))
    assert s.drain_received() == [] and s.frames_waiting == 2


def test_one_read_of_one_whole_packet_is_not_counted_in_bytes():
    s = _active()
    s.byte_quota = 0  # the owner counts what it queued from such a read
    s.receive_data(encode_frame(64, 0, msgpack.packb("a")))
    assert s.drain_received() == [PacketReceived(64, 0, "a", S.ACTIVE, 2)] and s.byte_quota == 0


def test_an_eof_hands_on_what_the_byte_quota_held():
    s = _active()
    s.byte_quota = 1
    s.receive_data(encode_frame(64, 0, msgpack.packb("a")) + encode_frame(64, 0, msgpack.packb("b")))
    assert [o.msg for o in s.drain_received()] == ["a"] and s.frames_waiting == 1
    s.receive_eof()
    outs = s.drain_received()
    assert [o.msg for o in outs[:-1]] == ["b"] and outs[-1].eof


def test_one_read_of_one_packet_that_is_not_msgpack_closes_with_invalidmsgpack():
    s = _active()
    s.packet_quota = 5
    s.receive_data(encode_frame(64, 0, b"\xc1"))
    outs, closed = _closed(s)
    assert outs == [PacketSent(PID_CLOSECONN, {"reason": "invalidmsgpack"}), closed]
    assert closed.reason == "invalidmsgpack" and s.closed


# --- has_data_to_send and state: plain attributes kept in step -----------------------------------

def test_has_data_to_send_is_true_exactly_while_data_to_send_has_bytes():
    p = _pair(frozenset({"heartbeat"}))
    s, c = p.server, p.client
    assert s.has_data_to_send is False and s.data_to_send() == b""
    p.start()
    assert s.has_data_to_send is False and c.has_data_to_send is False  # (the pair moved every byte)
    s.packet_quota = 5
    s.receive_data(encode_frame(64, 0, msgpack.packb("app")))
    assert s.has_data_to_send is False  # an application packet needs no answer
    assert s.send_heartbeat({"t": 1.0}) is True and s.has_data_to_send is True
    assert frames_of(s.data_to_send())[0][0] == PID_HEARTBEAT and s.has_data_to_send is False
    c.receive_data(encode_frame(PID_HEARTBEAT, 0, msgpack.packb({"t": 2.0})))
    assert c.has_data_to_send is True  # the ack
    c.data_to_send()
    c.close("bye")
    assert c.has_data_to_send is True and frames_of(c.data_to_send())[0][0] == PID_CLOSECONN
    assert c.has_data_to_send is False and c.data_to_send() == b""


def test_state_follows_the_handshake_also_into_error():
    p = _pair()
    assert p.client.state is S.INIT and p.server.state is S.INIT
    p.start()
    assert p.client.state is S.ACTIVE and p.server.state is S.ACTIVE
    c = ProtocolConnection(SIDE_CLIENT)
    c.receive_data(encode_frame(PID_HANDSHAKE_ACCEPT, 0, msgpack.packb({})))  # accept before hello: refused
    assert c.state is S.ERROR and c.closed
    s = _active()
    s.close("done")
    assert s.state is S.CLOSED


def test_every_way_of_queueing_bytes_sets_has_data_to_send():
    s = ProtocolConnection(SIDE_SERVER, extensions=frozenset({"resume"}))
    s.initiate()  # hello (an internal send)
    assert s.has_data_to_send is True and frames_of(s.data_to_send())[0][0] == PID_HELLO
    assert s.has_data_to_send is False
    p = _pair(frozenset({"resume"}))
    p.start()
    a = p.server
    a.send_packet(64, "raw")
    assert a.has_data_to_send is True and frames_of(a.data_to_send()) == [(64, 0, "raw")]
    assert a.send_ack(3) is True and a.has_data_to_send is True
    a.data_to_send()
    a.packet_quota = 5
    a.receive_data(encode_frame(64, 0, b"\xc1"))  # not msgpack: the core fails and queues its closeconn
    assert a.closed and a.has_data_to_send is True
    assert frames_of(a.data_to_send())[0][0] == PID_CLOSECONN


def test_a_refused_handshake_input_leaves_state_in_error():
    from peng3dnet.errors import HandshakeError
    from peng3dnet.protocol.handshake import HandshakeInput

    c = ProtocolConnection(SIDE_CLIENT)
    with pytest.raises(HandshakeError):
        c._step(HandshakeInput.HANDSHAKE_ACCEPT)  # (not allowed before hello)
    assert c.state is S.ERROR


def test_frames_waiting_is_0_when_new_and_after_the_held_frames_are_discarded():
    assert ProtocolConnection(SIDE_CLIENT).frames_waiting == 0 and type(ProtocolConnection(SIDE_SERVER).frames_waiting) is int
    s = _active()
    s.packet_quota = 0
    s.receive_data(encode_frame(64, 0, msgpack.packb("a")) + encode_frame(65, 0, msgpack.packb("b")))
    assert s.frames_waiting == 2 and s.drain_received() == []
    s.receive_eof("socketclose", discard_held=True)  # a session's socket broke: the peer sends them again
    assert s.frames_waiting == 0
    assert [type(o).__name__ for o in s.drain_received()] == ["ConnectionClosed"]
    kept = _active()
    kept.packet_quota = 0
    kept.receive_data(encode_frame(64, 0, msgpack.packb("a")))
    kept.receive_eof("socketclose")  # no session: what was held comes first
    assert kept.frames_waiting == 0
    assert [o.msg for o in kept.drain_received() if isinstance(o, PacketReceived)] == ["a"]
