"""Server, Client and their shared Peer core method by method, without a
running loop: a real ProtocolConnection (a socket-free pair) or fakes for
the channel and the collaborators, so each step's outputs, arguments and
log lines are checked value by value (the ``peers`` mutation area)."""

from __future__ import annotations

import logging
import socket
import threading

import msgpack
import pytest

from peng3dnet.client import Client, NetworkLoop
from peng3dnet.constants import PID_FIRST_FREE
from peng3dnet.link import Link
from peng3dnet.protocol.connection import ConnectionClosed
from peng3dnet.protocol.connection import PacketReceived as PacketReceived_
from peng3dnet.protocol.framing import FrameDecoder
from peng3dnet.protocol.handshake import HandshakeState
from peng3dnet.server import Server
from peng3dnet.session import TOKEN_BYTES, Session
from tests.helpers import ConnectionPair

TOKEN = b"t" * TOKEN_BYTES


class FakeChan:
    """What the peer core uses of a Channel, recording the writes."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.written: list[bytes] = []
        self.closed = False
        self.out = b""
        self.head = 0  # bytes written so far (the stream's offset of out[0])
        self.drain_waiters = 0
        self.tls_pending = 0
        self.paused = False
        self.throttled = False
        self.held = False
        self.interest_updates = 0

    error = None
    closing = True  # (the linger's channels are closing)
    takes = 0
    """How many bytes of ``out`` the next flush() hands to the kernel."""
    shut = False

    def write(self, data: bytes, cork: bool = True) -> None:
        self.written.append(bytes(data))

    def flush(self) -> bool:
        self.out, self.takes = self.out[self.takes:], 0
        return not self.out

    def shutdown_write(self) -> None:
        self.shut = True

    def update_interest(self) -> None:
        self.interest_updates += 1

    def close(self) -> None:
        self.closed = True


class Owner:
    pass


def _server(**cfg) -> Server:
    return Server(cfg={"net.server.addr": ("127.0.0.1", 0), **cfg})


def _active_link(cid: int = 7) -> tuple[Link, FakeChan, ConnectionPair]:
    """A Link on the server side of a handshaken socket-free pair."""
    pair = ConnectionPair()
    pair.start()
    pair.server.drain_received()
    pair.server.data_to_send()
    chan = FakeChan()
    return Link(pair.server, chan, Owner(), cid), chan, pair  # type: ignore[arg-type]


def _frames(data: bytes) -> list[tuple[int, object]]:
    out: list = []
    FrameDecoder(1 << 20).feed(data, out)
    return [(pid, msgpack.unpackb(body, raw=False, strict_map_key=False)) for pid, _flags, body in out]


# --- Peer._abort: a socket error closes the connection with its reason --------------------------

def test_abort_closes_with_the_reason_given_and_closes_the_channel_once():
    s = _server()
    link, chan, _ = _active_link()
    outs: list = []
    closed: list = []
    s._handle_outputs = lambda lk, o: outs.append((lk, o))  # type: ignore[method-assign]
    s._channel_closed = closed.append  # type: ignore[method-assign]
    s._abort(link, "socketerror")
    assert link.eof is True
    assert link.proto.close_reason == "socketerror"
    assert outs == [(link, [ConnectionClosed("socketerror", by_peer=True, eof=True)])]
    assert chan.closed is True and closed == [link]


# --- Peer.send_raw: counted in a session only for application packet ids ------------------------

@pytest.mark.parametrize("with_session", [False, True])
@pytest.mark.parametrize("pid", [PID_FIRST_FREE - 1, PID_FIRST_FREE, PID_FIRST_FREE + 5])
def test_send_raw_goes_through_the_session_only_for_application_ids(with_session, pid):
    s = _server()
    link, chan, _ = _active_link()
    if with_session:
        link.session = Session(TOKEN, cap=1000)
    s._link = lambda cid: link  # type: ignore[method-assign]
    framed: list = []
    s._send_frame = lambda lk, frame, p, data, cork=True: framed.append((lk, frame, p, data))  # type: ignore[method-assign]
    s.send_raw(7, pid, {"x": 1})
    if with_session and pid >= PID_FIRST_FREE:
        # counted as the peer counts it: through the session's send path, no event
        ((lk, frame, p, data),) = framed
        assert lk is link and p == pid and _frames(frame) == [(pid, {"x": 1})]
        from peng3dnet.peer import NO_EVENT
        assert data is NO_EVENT
        assert chan.written == [] and link.stats.packets_out == 0
    else:
        # straight to the socket, outside the session's count
        assert framed == []
        assert _frames(b"".join(chan.written)) == [(pid, {"x": 1})]
        assert link.stats.packets_out == 1 and link.stats.bytes_out == len(b"".join(chan.written))


# --- Peer._handler_failed: what a failing handler leads to ---------------------------------------

def _fail_on_thread(s: Server, link: Link, exc: BaseException) -> None:
    def run():
        try:
            raise exc
        except BaseException:
            s._handler_failed(link, "the-handler")

    t = threading.Thread(target=run, name="not-main")
    t.start()
    t.join(10)
    assert not t.is_alive()


def test_a_base_exception_of_a_handler_on_a_library_thread_is_reported_and_stops_the_peer(caplog):
    s = _server()
    link = Link(None, None, Owner(), 9)  # type: ignore[arg-type]
    stops: list = []
    s.stop = lambda: stops.append(True)  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO):
        _fail_on_thread(s, link, SystemExit(3))
    assert stops == [True]
    msgs = [(r.name, r.levelname, r.getMessage()) for r in caplog.records]
    assert ("peng3dnet.user", "ERROR", "! server cid=9: packet handler 'the-handler' raised") in msgs
    assert ("peng3dnet.peer", "WARNING",
            "! server: stopping: a handler on a library thread raised a BaseException") in msgs


def test_an_exception_of_a_handler_on_a_library_thread_is_reported_only(caplog):
    s = _server()
    link = Link(None, None, Owner(), 9)  # type: ignore[arg-type]
    stops: list = []
    s.stop = lambda: stops.append(True)  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO):
        _fail_on_thread(s, link, ValueError("x"))
    assert stops == []
    assert [(r.name, r.getMessage()) for r in caplog.records] == [
        ("peng3dnet.user", "! server cid=9: packet handler 'the-handler' raised "
                           "(the same failure again within 10 s is counted, not shown)")]


# --- Server._session_dropped without a grace period ------------------------------------------

@pytest.mark.parametrize(("reason", "ended_with"), [(None, "socketclose"), ("socketerror", "socketerror")])
def test_without_a_grace_period_a_dropped_session_ends_at_once(reason, ended_with):
    s = _server(**{"net.session.grace": 0})
    session = Session(TOKEN, cap=100)
    link = Link(None, FakeChan(), Owner(), 4)  # type: ignore[arg-type]
    ended: list = []
    s._session_end = lambda sess, why: ended.append((sess, why))  # type: ignore[method-assign]
    s._session_dropped(link, session, reason)
    assert ended == [(session, ended_with)]
    assert session.suspended is False and session.timer is None


# --- Client: reconnect attempts and their log lines ----------------------------------------------

def test_a_client_out_of_reconnect_attempts_ends_its_session(caplog):
    c = Client(addr=("127.0.0.1", 1), cfg={"net.client.reconnect": 2})
    session = Session(TOKEN, cap=100)
    session.attempt = 2
    ended: list = []
    c._session_end = lambda sess, why: ended.append((sess, why))  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="peng3dnet.client"):
        c._schedule_reconnect(session)
    assert ended == [(session, "resume:failed")]
    assert session.attempt == 2 and session.timer is None
    assert [r.getMessage() for r in caplog.records] == ["! client: could not reconnect after 2 attempts"]


def test_a_failed_reconnect_attempt_is_logged_and_handed_to_the_network_thread(caplog):
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    c = Client(addr=("127.0.0.1", port), cfg={"net.client.connect_timeout": 5})
    session = Session(TOKEN, cap=100)
    session.attempt = 3
    handed: list = []
    c._on_network_thread = lambda fn, *args: handed.append((fn, args))  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="peng3dnet.client"):
        c._reconnect_connect(session)
    assert handed == [(c._reconnect_failed, (session,))]
    (msg,) = [r.getMessage() for r in caplog.records]
    assert msg.startswith("! client: reconnect attempt 3 failed: ") and len(msg) > len(
        "! client: reconnect attempt 3 failed: ")


def test_a_client_without_a_connection_has_no_links():
    c = Client(addr=("127.0.0.1", 1))
    assert c._all_links() == []
    link = Link(None, FakeChan(), c, None)  # type: ignore[arg-type]
    c._link_obj = link
    assert c._all_links() == [link]


# --- NetworkLoop._contain: which client a BaseException stops --------------------------------------

class _Hooked(Client):
    def hook(self, exc: BaseException) -> None:
        raise exc


def _caught(c: _Hooked, exc: BaseException) -> BaseException:
    try:
        c.hook(exc)
    except BaseException as e:  # noqa: BLE001
        return e
    raise AssertionError("not raised")


def test_ctrl_c_on_the_main_thread_ends_the_shared_loop_while_elsewhere_it_stops_its_client():
    loop = NetworkLoop()
    c = _Hooked(addr=("127.0.0.1", 1))
    c._loop_started = True
    loop._clients.append(c)
    stops: list = []
    c._request_stop = stops.append  # type: ignore[method-assign]
    # Ctrl-C on the main thread: not the client's failure, the loop ends
    assert loop._contain(_caught(c, KeyboardInterrupt())) is False
    assert stops == []
    # the same on another thread: only the client it came from stops
    got: list = []
    t = threading.Thread(target=lambda: got.append(loop._contain(_caught(c, KeyboardInterrupt()))))
    t.start()
    t.join(10)
    assert got == [True] and stops == ["method"]
    # a SystemExit on the main thread stops the client too
    assert loop._contain(_caught(c, SystemExit(1))) is True
    assert stops == ["method", "method"]


# --- Server.send_encoded and broadcast on a handshaken link ---------------------------------------

def _recording_closes(s: Server) -> list:
    """For driving ``_housekeeping()`` by hand: the closes it asks for,
    recorded as ``(link, reason)`` (not done), and no timer rescheduled."""
    closes: list = []
    s._close_link = lambda lk, why, polite=False: closes.append((lk, why))  # type: ignore[method-assign]
    s._schedule_housekeeping = lambda: None  # type: ignore[method-assign]
    return closes


def _server_with_link(**cfg) -> tuple[Server, Link, FakeChan]:
    from peng3dnet.packet import Packet

    s = _server(**cfg)
    s.register_packet("t:x", Packet(s.registry, s))
    s._register_internal()
    link, chan, _ = _active_link(7)
    s._links[7] = link
    return s, link, chan


def test_send_encoded_emits_no_send_event_while_send_message_does():
    from tests.conftest import Recorder

    s, link, chan = _server_with_link()
    rec = Recorder(s, "peng3dnet:server.connection.send")
    try:
        s.send_encoded("t:x", msgpack.packb({"a": 1}), 7)
        assert rec.items == []
        assert _frames(b"".join(chan.written)) == [(s.registry.get_id("t:x"), {"a": 1})]
        s.send_message("t:x", {"b": 2}, 7)
        assert [(e, d["data"]) for e, d in rec.items] == [("peng3dnet:server.connection.send", {"b": 2})]
    finally:
        rec.close()


def test_broadcast_with_map_keys_a_0_1_peer_refuses_skips_it_and_says_so(caplog):
    s, link, chan = _server_with_link()
    assert link.strict_keys is True  # a peer without the mapkeys extension (0.1.x)
    with caplog.at_level(logging.WARNING, logger="peng3dnet.server"):
        assert s.broadcast("t:x", {1: "a"}) == 0
    assert chan.written == []
    assert [r.getMessage() for r in caplog.records] == [
        "! server: broadcast of 't:x' skips 0.1.x peers: a map key they refuse"]
    link.strict_keys = False  # a peer that takes them
    assert s.broadcast("t:x", {1: "a"}) == 1
    assert _frames(b"".join(chan.written)) == [(s.registry.get_id("t:x"), {1: "a"})]


# --- Peer._on_app_packet: packets that close the connection -------------------------------------

@pytest.mark.parametrize(("state", "pid", "reason", "message"), [
    ("HELLO", 70, "smartpacketinvalid", "! server cid=7: packet 70 before the handshake completed, closing"),
    ("ACTIVE", 99, "unknownpacket", "! server cid=7: unknown packet id 99"),
])
def test_an_application_packet_too_early_or_unknown_closes_and_says_why(caplog, state, pid, reason, message):
    from peng3dnet.protocol.connection import PacketReceived
    from peng3dnet.protocol.handshake import HandshakeState

    s, link, chan = _server_with_link()
    closes: list = []
    s._close_link = lambda lk, why, polite=False: closes.append((lk, why))  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="peng3dnet.peer"):
        queued = s._on_app_packet(link, PacketReceived(pid, 0, {"m": 1}, HandshakeState[state]), None)
    assert queued is False and closes == [(link, reason)]
    assert [r.getMessage() for r in caplog.records] == [message]


def test_an_application_packet_is_queued_put_on_the_relays_ready_queue_and_pauses_reading_at_the_limit(caplog):
    from collections import deque

    from peng3dnet.packet import Packet
    from peng3dnet.protocol.connection import PacketReceived
    from peng3dnet.protocol.handshake import HandshakeState

    class Handled(Packet):
        def receive(self, msg, cid=None):
            pass

    s, link, chan = _server_with_link(**{"net.limits.recv_queue": 3})
    s.register_packet("t:h", Handled(s.registry, s))
    pid = s.registry.get_id("t:h")
    fn = s._recv_plan(pid)[2]
    link.n_in = link.n_out = 0
    assert s._on_app_packet(link, PacketReceived(pid, 0, "a", HandshakeState.ACTIVE), None) is True
    assert list(s._inbox.items) == [(link, fn, pid, "a", 0)] and s._inbox.ready is None  # not a relay's member
    s._inbox.ready = ready = deque()
    with caplog.at_level(logging.DEBUG, logger="peng3dnet.peer"):
        assert s._on_app_packet(link, PacketReceived(pid, 0, "b", HandshakeState.ACTIVE), None) is True
        assert list(ready) == [s] and link.n_in == 2 and chan.paused is False and caplog.records == []
        assert s._on_app_packet(link, PacketReceived(pid, 0, "c", HandshakeState.ACTIVE), None) is True
    assert list(ready) == [s, s] and link.n_in == 3
    assert chan.paused is True and link.resume_at == 1 and chan.interest_updates == 1  # 3 waiting: the limit
    assert [r.getMessage() for r in caplog.records] == ["= server cid=7: reading paused, 3 packets (0 bytes) wait for process()"]


def _handled_link(**cfg):
    """A server with a link and a registered packet "t:h" whose handler does nothing: (server, link, channel, pid)."""
    from peng3dnet.packet import Packet

    class Handled(Packet):
        def receive(self, msg, cid=None):
            pass

    s, link, chan = _server_with_link(**cfg)
    s.register_packet("t:h", Handled(s.registry, s))
    link.n_in = link.n_out = 0
    return s, link, chan, s.registry.get_id("t:h")


def test_an_application_packet_pauses_reading_when_the_queued_bytes_reach_the_byte_limit(caplog):
    from peng3dnet.protocol.connection import PacketReceived
    from peng3dnet.protocol.handshake import HandshakeState

    s, link, chan, pid = _handled_link(**{"net.limits.recv_queue": 100, "net.limits.recv_queue_bytes": 1000})
    assert s._on_app_packet(link, PacketReceived(pid, 0, "a", HandshakeState.ACTIVE, 600), None) is True
    assert chan.paused is False and link.b_in == 600 and link.queued_bytes == 600
    with caplog.at_level(logging.DEBUG, logger="peng3dnet.peer"):
        assert s._on_app_packet(link, PacketReceived(pid, 0, "b", HandshakeState.ACTIVE, 400), None) is True
    # 1,000 bytes of 2 packets wait: the byte limit, not the packet limit, pauses; resume at half of each
    assert chan.paused is True and link.resume_at == 50 and link.b_resume_at == 500
    assert [item[4] for item in s._inbox.items] == [600, 400]
    assert [r.getMessage() for r in caplog.records] == ["= server cid=7: reading paused, 2 packets (1000 bytes) wait for process()"]
    assert s._run_batch() == 2 and link.b_out == 1000 and chan.paused is False


def test_a_byte_limit_of_0_is_no_limit():
    from peng3dnet.protocol.connection import PacketReceived
    from peng3dnet.protocol.handshake import HandshakeState

    s, link, chan, pid = _handled_link(**{"net.limits.recv_queue_bytes": 0})
    assert s._on_app_packet(link, PacketReceived(pid, 0, "a", HandshakeState.ACTIVE, 2**40), None) is True
    assert chan.paused is False and link.queued_bytes == 2**40


def test_a_clients_closed_channel_is_released_from_the_flows_counts_and_holds():
    c = Client(addr=("127.0.0.1", 1))
    link, chan, _ = _active_link(None)  # type: ignore[arg-type]
    link.acct = 40
    c._flow.buffered = 40
    c._flow.queue_held.add(link)
    c._channel_closed(link)
    assert c._flow.buffered == 0 and link.acct == 0 and link not in c._flow.queue_held


# --- Peer._housekeeping: the handshake time-out and its hint -------------------------------------

@pytest.mark.parametrize(("bytes_in", "hint"), [(0, " (a TLS peer on a plaintext port, or the reverse?)"), (5, "")])
def test_a_handshake_time_out_closes_and_hints_at_tls_when_nothing_was_received(caplog, bytes_in, hint):
    from peng3dnet.constants import SIDE_SERVER
    from peng3dnet.protocol.connection import ProtocolConnection
    from tests.helpers import make_registry

    s = _server(**{"net.timeout.handshake": 2.5})
    link = Link(ProtocolConnection(SIDE_SERVER, registry=make_registry()), FakeChan(), Owner(), 3)  # type: ignore[arg-type]
    link.stats._since -= 10  # made 10 s ago, still not handshaken
    link.stats.bytes_in = bytes_in
    s._links[3] = link
    closes = _recording_closes(s)
    with caplog.at_level(logging.INFO, logger="peng3dnet.peer"):
        s._housekeeping()
    assert closes == [(link, "handshaketimeout")]
    assert [r.getMessage() for r in caplog.records] == [f"! server cid=3: handshake not complete after 2.5 s{hint}"]


def test_a_handshake_time_out_of_0_is_off():
    from peng3dnet.constants import SIDE_SERVER
    from peng3dnet.protocol.connection import ProtocolConnection
    from tests.helpers import make_registry

    s = _server(**{"net.timeout.handshake": 0})
    link = Link(ProtocolConnection(SIDE_SERVER, registry=make_registry()), FakeChan(), Owner(), 3)  # type: ignore[arg-type]
    link.stats._since -= 1000  # made long ago, still not handshaken
    s._links[3] = link
    closes = _recording_closes(s)
    s._housekeeping()
    assert closes == []


@pytest.mark.parametrize("enabled", [True, False])
def test_the_recv_event_follows_net_events_enable_whoever_listens(enabled):
    from tests.conftest import Recorder

    s, link, chan = _server_with_link(**{"net.events.enable": enabled})
    pid = s.registry.get_id("t:x")
    rec = Recorder(s, "peng3dnet:server.connection.recv")
    try:
        s._handle_outputs(link, [PacketReceived_(pid, 0, {"m": 1}, HandshakeState.ACTIVE)])
        assert [d["msg"] for _, d in rec.items] == ([{"m": 1}] if enabled else [])
    finally:
        rec.close()


# --- Peer._new_proto: the connection core is made from the config --------------------------------

@pytest.mark.parametrize("compress", [True, False])
def test_a_new_connection_core_takes_its_limits_and_compression_from_the_config(compress):
    s = _server(**{"net.compress.enabled": compress, "net.compress.threshold": 1234, "net.compress.level": 3,
                   "net.limits.max_packet_size": 5000, "net.limits.max_decompressed_size": 7000})
    proto = s._new_proto()
    assert proto.compress is compress
    assert (proto.compress_threshold, proto.compress_level) == (1234, 3)
    assert (proto.max_packet_size, proto.max_decompressed_size) == (5000, 7000)


# --- the server's admission and rate limits, a local close ----------------------------------------

def test_the_per_address_limits_refuse_with_the_limit_and_the_group_in_the_log(caplog):
    from peng3dnet.util import address_group

    s = _server(**{"net.limits.per_address.exempt_loopback": False, "net.limits.per_address.connections": 2,
                   "net.limits.per_address.handshakes": 0})
    group = address_group("10.1.2.3", int(s.cfg["net.limits.per_address.ipv6_prefix"]))
    assert s._admit(("10.1.2.3", 1)) == (group, False) and s._admit(("10.1.2.3", 2)) == (group, False)
    with caplog.at_level(logging.INFO, logger="peng3dnet.server"):
        assert s._admit(("10.1.2.3", 3)) is None
    assert [r.getMessage() for r in caplog.records] == [
        f"! server: refusing ('10.1.2.3', 3), 2 connections from {group} is the limit"]


def test_a_clientcls_that_raises_drops_the_connection_and_names_the_class(caplog):
    class Boom:
        def __init__(self, *args):
            raise RuntimeError("no")

    s = _server()
    s.clientcls = Boom
    with socket.socket() as lst:
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        with socket.create_connection(lst.getsockname(), timeout=10) as peer:
            sock, _ = lst.accept()
            with caplog.at_level(logging.ERROR, logger="peng3dnet.user"):
                s._accepted(sock, ("127.0.0.1", 4242))
            peer.settimeout(10)
            assert peer.recv(10) == b""  # dropped: closed without a word
    assert s._links == {} and s.clients == {}
    assert [r.getMessage() for r in caplog.records] == [
        f"! server: {Boom!r}(...) raised; connection from ('127.0.0.1', 4242) dropped"]


def test_over_the_packet_rate_with_close_the_reads_application_packets_are_not_handed_on():
    from peng3dnet.protocol.connection import PacketReceived
    from peng3dnet.protocol.handshake import HandshakeState

    s, link, _ = _server_with_link(**{"net.limits.rate.packets": 1, "net.limits.rate.burst": 1.0,
                                      "net.limits.rate.action": "close"})
    handed: list = []
    closes: list = []
    s._handle_outputs = lambda lk, outs: handed.append(list(outs))  # type: ignore[method-assign]
    s._close_link = lambda lk, why, polite=False: closes.append(why)  # type: ignore[method-assign]
    app = [PacketReceived(PID_FIRST_FREE + 1, 0, i, HandshakeState.ACTIVE) for i in range(5)]
    internal = PacketReceived(PID_FIRST_FREE - 1, 0, "x", HandshakeState.ACTIVE)
    assert s._read_allowed(link, 100, [*app, internal], 5, link.rate_t + 0.001) is False
    assert handed == [[internal]] and closes == ["ratelimit"]


def test_packets_read_after_a_local_close_are_not_handed_to_the_application():
    from peng3dnet.protocol.connection import PacketReceived
    from peng3dnet.protocol.handshake import HandshakeState

    s, link, _ = _server_with_link()
    s.handler("t:y")(lambda msg, cid: None)
    pid = s.registry.get_id("t:y")
    s._handle_outputs(link, [PacketReceived(pid, 0, 1, HandshakeState.ACTIVE)])
    assert link.queued == 1  # open: queued for process()
    forced: list = []
    closing: list = []
    s._force_close = forced.append  # type: ignore[method-assign]
    s._handle_outputs = lambda lk, outs: closing.append(outs)  # type: ignore[method-assign]
    assert s._close_link(link, "kicked") is True
    del s._handle_outputs  # the real one again
    assert link.proto.close_reason == "kicked" and forced == [link] and len(closing) == 1
    s._handle_outputs(link, [PacketReceived(pid, 0, 2, HandshakeState.ACTIVE)])
    assert link.queued == 1  # what was still in the read after our close: dropped


# --- Peer._on_ready: a closing connection whose last bytes are written ----------------------------

class _FlushChan(FakeChan):
    """A channel whose buffer is empty after flush(), closing after our closeconn."""

    def __init__(self) -> None:
        super().__init__()
        self.error = None
        self.closing = True
        self.calls: list[str] = []

    def flush(self) -> None:
        self.calls.append("flush")

    def update_interest(self) -> None:
        self.calls.append("update_interest")

    def shutdown_write(self) -> None:
        self.calls.append("shutdown_write")


@pytest.mark.parametrize(("polite", "calls"), [(False, ["flush", "shutdown_write", "update_interest"]),
                                               (True, ["flush", "update_interest"])])
def test_a_closing_connection_flushed_to_the_end_half_closes_unless_polite(polite, calls):
    from peng3dnet.transport import EVENT_WRITE

    s = _server()
    link, _, _ = _active_link()
    chan = _FlushChan()
    link.chan = chan  # type: ignore[assignment]
    link.polite = polite
    s._on_ready(link, EVENT_WRITE)
    assert chan.calls == calls


# --- Peer._housekeeping: the idle time-out's log line ---------------------------------------------

def test_an_idle_connection_is_closed_and_the_log_says_how_long_it_was_silent(caplog, monkeypatch):
    import types

    import peng3dnet.peer

    s, link, _ = _server_with_link(**{"net.timeout.idle": 5.0})
    monkeypatch.setattr(peng3dnet.peer, "time", types.SimpleNamespace(monotonic=lambda: 1000.0))
    link.stats._seen = 1000.0 - 12.5
    closes = _recording_closes(s)
    with caplog.at_level(logging.INFO, logger="peng3dnet.peer"):
        s._housekeeping()
    assert closes == [(link, "timeout")]
    assert [r.getMessage() for r in caplog.records] == ["! server cid=7: nothing received for 12.5 s"]


@pytest.mark.parametrize("held", ["paused", "throttled", "held for the total", "frames waiting", None])
@pytest.mark.parametrize("key", ["net.timeout.idle", "net.heartbeat.timeout"])
def test_a_connection_whose_reading_we_hold_is_not_silent_and_its_silence_counts_from_the_hold(held, key, monkeypatch):
    """Heartbeat and idle time-outs: while our own flow control holds the
    connection's reading (a full process queue, a rate or inflate throttle,
    frames held undecoded), it is not silent (held_at is now); afterwards
    its silence counts from the later of the last read and the hold."""
    import types

    import peng3dnet.peer

    cfg = {key: 5.0}
    if key == "net.heartbeat.timeout":
        cfg["net.heartbeat.interval"] = 100.0  # (no heartbeat sent: only the silence check)
    s, link, chan = _server_with_link(**cfg)
    if key == "net.heartbeat.timeout":
        link.proto.negotiated = frozenset(link.proto.negotiated | {"heartbeat"})
        link.hb_sent = 1000.0
    clock = types.SimpleNamespace(monotonic=lambda: 1000.0)
    monkeypatch.setattr(peng3dnet.peer, "time", clock)
    link.stats._seen = 1000.0 - 12.5  # silent for longer than the time-out
    if held == "paused":
        chan.paused = True
    elif held == "throttled":
        chan.throttled = True
    elif held == "held for the total":
        chan.held = True
    elif held == "frames waiting":
        link.proto.frames_waiting = 3
    closes = _recording_closes(s)
    s._housekeeping()
    if held is None:
        assert closes == [(link, "timeout")] and link.held_at == 0.0
        return
    assert closes == [] and link.held_at == 1000.0
    # Reading goes on; 4 s later it is still within the time-out (counted
    # from the hold, not from the read 12.5 s before it), 6 s later not.
    chan.paused = chan.throttled = chan.held = False
    link.proto.frames_waiting = 0
    clock.monotonic = lambda: 1004.0
    s._housekeeping()
    assert closes == []
    clock.monotonic = lambda: 1006.0
    s._housekeeping()
    assert closes == [(link, "timeout")]


# --- Peer._on_app_packet with net.debug.print.recv -----------------------------------------------

def test_print_recv_logs_a_received_packet_with_the_receive_arrow(caplog):
    from peng3dnet.protocol.connection import PacketReceived
    from peng3dnet.protocol.handshake import HandshakeState

    s, link, _ = _server_with_link(**{"net.debug.print.recv": True})
    s.handler("t:y")(lambda msg, cid: None)
    pid = s.registry.get_id("t:y")
    with caplog.at_level(logging.INFO, logger="peng3dnet.peer"):
        assert s._on_app_packet(link, PacketReceived(pid, 0, {"a": 1}, HandshakeState.ACTIVE), None) is True
    assert [r.getMessage() for r in caplog.records] == [f"< server cid=7 pid={pid} {{'a': 1}}"]


# --- Peer._app_closed: an on_close that raises ------------------------------------------------------

def test_an_on_close_that_raises_is_reported_with_the_cid_and_the_close_goes_on(caplog):
    from peng3dnet.constants import MODE_CLOSED, STATE_CLOSED

    class Raising:
        def on_close(self, reason):
            raise ValueError(reason)

    s = _server()
    owner = Raising()
    link = Link(None, FakeChan(), owner, 7)  # type: ignore[arg-type]
    s.clients[7] = owner  # type: ignore[assignment]
    with caplog.at_level(logging.INFO, logger="peng3dnet.user"):
        s._app_closed(link, "kicked")
    assert [(r.getMessage(), r.exc_info[0]) for r in caplog.records] == [  # type: ignore[index]
        ("! server cid=7: on_close raised", ValueError)]
    assert getattr(owner, s._state_attr) == STATE_CLOSED and owner.mode == MODE_CLOSED  # type: ignore[attr-defined]
    assert link.app_closed is True and s.clients == {}


# --- Server._take_over: a resume refused ---------------------------------------------------------

@pytest.mark.parametrize(("request_", "reason"), [
    ({"token": b"short", "received": 0}, "resume:invalid"),
    ({"token": TOKEN, "received": 0}, "resume:unknown"),
])
def test_a_resume_that_cannot_be_taken_over_closes_and_says_why(caplog, request_, reason):
    s, link, _ = _server_with_link()
    closes: list = []
    s._close_link = lambda lk, why, polite=False: closes.append((lk, why))  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="peng3dnet.server"):
        assert s._take_over(link, request_) is False
    assert closes == [(link, reason)]
    assert [r.getMessage() for r in caplog.records] == [f"! server cid=7: cannot resume ({reason})"]


# --- Server.broadcast: which connections it skips, and that it goes on after one -----------------

def test_broadcast_skips_links_not_handshaken_unless_their_session_waits_for_a_socket():
    from peng3dnet.constants import SIDE_SERVER
    from peng3dnet.protocol.connection import ProtocolConnection
    from tests.helpers import make_registry

    s, _, _ = _server_with_link()
    for cid in (8, 9, 10):  # handshake not complete
        s._links[cid] = Link(ProtocolConnection(SIDE_SERVER, registry=make_registry()), FakeChan(), Owner(), cid)  # type: ignore[arg-type]
    s._links[9].session = Session(TOKEN, cap=100)  # a session on its socket: skipped too
    s._links[10].session = Session(TOKEN, cap=100)
    s._links[10].session.suspended = True  # between sockets: kept for the next one
    sent: list = []
    s._send_frame = lambda lk, frame, pid, data, cork=True: sent.append((lk.cid, data, cork))  # type: ignore[method-assign]
    assert s.broadcast("t:x", {"a": 1}) == 2
    assert sent == [(7, {"a": 1}, False), (10, {"a": 1}, False)]


def test_broadcast_skipping_a_0_1_peer_goes_on_to_the_next():
    s, link, chan = _server_with_link()
    other, other_chan, _ = _active_link(8)
    other.strict_keys = False
    s._links[8] = other
    assert link.strict_keys is True
    assert s.broadcast("t:x", {1: "a"}) == 1
    assert chan.written == [] and _frames(b"".join(other_chan.written)) == [(s.registry.get_id("t:x"), {1: "a"})]


# --- NetworkLoop._contain: the client a BaseException came through ---------------------------------

def _free_function_raises(exc: BaseException) -> None:
    raise exc


def test_contain_stops_the_client_whose_frame_the_exception_passed_and_no_other():
    loop = NetworkLoop()
    a = _Hooked(addr=("127.0.0.1", 1))
    b = _Hooked(addr=("127.0.0.1", 2))
    stops: list = []
    for c in (a, b):
        c._loop_started = True
        c._request_stop = lambda why, c=c: stops.append((c, why))  # type: ignore[method-assign]
        loop._clients.append(c)
    got: list = []

    def run():
        got.append(loop._contain(_caught(a, SystemExit(1))))  # through a's hook, b joined after it
        try:
            _free_function_raises(SystemExit(2))  # through no client's frame
        except SystemExit as e:
            got.append(loop._contain(e))

    t = threading.Thread(target=run)
    t.start()
    t.join(10)
    assert got == [True, False]
    assert stops == [(a, "method")]


# --- poll() and the waits it drives -------------------------------------------------------------

def test_poll_on_a_peer_whose_loop_runs_on_a_thread_is_refused_with_why():
    from peng3dnet.errors import LocalProtocolError

    c = Client(addr=("127.0.0.1", 1))
    c._loop_started = True  # runAsync() or a NetworkLoop has it
    with pytest.raises(LocalProtocolError) as ei:
        c.poll(0)
    assert str(ei.value) == "the loop already runs on a thread (runAsync or a NetworkLoop)"


@pytest.mark.parametrize(("timeout", "polls"), [(None, [0.05, 0.05, 0.05]), (60.0, [0.05, 0.05, 0.05])])
def test_a_wait_on_the_polling_thread_polls_in_steps_until_done(timeout, polls):
    c = Client(addr=("127.0.0.1", 1))
    seen: list = []
    processed: list = []
    c._poll_io = seen.append  # type: ignore[method-assign]
    c._process_polled = lambda: processed.append(True) or 0  # type: ignore[method-assign]
    assert c._drive(lambda: len(seen) == 3, timeout) is True
    assert seen == polls and len(processed) == 3


def test_a_wait_on_the_polling_thread_gives_up_at_its_timeout():
    c = Client(addr=("127.0.0.1", 1))
    seen: list = []
    c._poll_io = seen.append  # type: ignore[method-assign]
    c._process_polled = lambda: 0  # type: ignore[method-assign]
    assert c._drive(lambda: False, 0) is False
    assert seen == []


# --- Client._reconnected: a socket that comes when the loop is not running -----------------------

def test_a_reconnected_socket_is_closed_when_the_loop_does_not_run():
    c = Client(addr=("127.0.0.1", 1))
    session = Session(TOKEN, cap=100)
    old = Link(None, FakeChan(), c, None)  # type: ignore[arg-type]
    session.link = old
    a, b = socket.socketpair()
    try:
        c._reconnect_sock = a
        assert not c._loop_active() and not c._reactor.stopping
        c._reconnected(session, a)
        assert a.fileno() == -1  # closed
        assert c._reconnect_sock is None and c._link_obj is None and session.link is old
    finally:
        a.close()
        b.close()


# --- Server._tls_step: a failed TLS handshake ------------------------------------------------------

def test_a_failed_tls_handshake_closes_with_its_reason_and_logs_it(caplog):
    from peng3dnet.errors import TLSError

    class TLSChan(FakeChan):
        def tls_step(self):
            raise TLSError("TLS handshake failed: no shared cipher")

    s = _server()
    link, _, _ = _active_link()
    chan = TLSChan()
    link.chan = chan  # type: ignore[assignment]
    outs: list = []
    closed: list = []
    s._handle_outputs = lambda lk, o: outs.append(list(o))  # type: ignore[method-assign]
    s._channel_closed = closed.append  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="peng3dnet.server"):
        s._tls_step(link)
    assert [r.getMessage() for r in caplog.records] == [
        "! server cid=7: TLS handshake failed: TLS handshake failed: no shared cipher"]
    assert link.local_closed is True and chan.closed is True and closed == [link]
    assert link.proto.close_reason == "tlserror"
    assert outs == [[ConnectionClosed("tlserror", by_peer=True, eof=True)]]


# --- Client: sends after the close, a session left between sockets at the loop's end ---------------

def test_a_send_on_a_closed_client_says_why_it_was_closed():
    from peng3dnet.errors import ConnectionClosedError

    c = Client(addr=("127.0.0.1", 1))
    c.close_reason = "kicked"
    with pytest.raises(ConnectionClosedError) as ei:
        c._link(None)
    assert str(ei.value) == "client is not connected" and ei.value.reason == "kicked"


def test_the_loop_ending_between_sockets_ends_the_session_with_clientstop():
    c = Client(addr=("127.0.0.1", 1))
    session = Session(TOKEN, cap=100)
    link = Link(None, FakeChan(), c, None)  # type: ignore[arg-type]
    link.session = session
    c._link_obj = link
    at_exit: list = []
    ended: list = []
    c._close_at_exit = lambda lk, why: at_exit.append((lk, why))  # type: ignore[method-assign]
    c._session_end = lambda sess, why: ended.append((sess, why))  # type: ignore[method-assign]
    c._on_loop_exit()
    assert at_exit == [(link, "clientstop")] and ended == [(session, "clientstop")]


def test_print_connect_logs_the_connection_made_after_the_library_line(caplog):
    with socket.socket() as lst:
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        addr = lst.getsockname()
        c = Client(addr=addr, cfg={"net.debug.print.connect": True})
        with caplog.at_level(logging.INFO, logger="peng3dnet.client"):
            c.connect()
        try:
            assert [r.getMessage() for r in caplog.records] == [
                f"= client: connected to {addr!r}", f"= client connected to {addr!r}"]
        finally:
            c.sock.close()


# --- Server: the log lines of bind and accept ------------------------------------------------------

def test_bind_and_accept_log_the_address_and_the_cid(caplog):
    s = _server()
    try:
        with caplog.at_level(logging.INFO, logger="peng3dnet.server"):
            s.bind()
            with socket.create_connection(s.addr, timeout=10) as peer:
                s.sock.settimeout(10)
                sock, addr = s.sock.accept()
                s._accepted(sock, addr)
                cid = next(iter(s._links))
                msgs = [r.getMessage() for r in caplog.records]
                assert msgs[0] == f"= server listening on {s.addr!r}"
                assert f"= server cid={cid}: connection from {peer.getsockname()!r}" in msgs
                s._links[cid].chan.close()
    finally:
        if s.sock is not None:
            s.sock.close()


# --- Peer._read: an EOF with packets held back by the quota ---------------------------------------

class _ReadChan(_FlushChan):
    def __init__(self, data: bytes) -> None:
        super().__init__()
        self.closing = False
        self.paused = True  # (reading paused: the held frames wait for room)
        self.reads = [data, b""]

    def read_into(self, buf) -> int:
        data = self.reads.pop(0)
        buf[:len(data)] = data
        return len(data)

    def pending(self) -> int:
        return 0


@pytest.mark.parametrize("with_session", [False, True])
def test_an_eof_forgets_packets_held_back_only_when_a_session_resends_them(with_session):
    from peng3dnet.protocol.connection import PacketReceived
    from peng3dnet.protocol.framing import encode_frame

    s, link, _ = _server_with_link()
    pid = s.registry.get_id("t:x")
    chan = _ReadChan(b"".join(encode_frame(pid, 0, msgpack.packb(i)) for i in range(3)))
    link.chan = chan  # type: ignore[assignment]
    if with_session:
        link.session = Session(TOKEN, cap=1000)
    handed: list = []
    s._read_quota = lambda lk, now: 0  # type: ignore[method-assign]
    s._handle_outputs = lambda lk, outs: handed.append(list(outs))  # type: ignore[method-assign]
    s._channel_closed = lambda lk: None  # type: ignore[method-assign]
    s._read(link)
    assert handed == []  # all three held back
    s._read(link)
    closed = ConnectionClosed("socketclose", by_peer=True, eof=True)
    if with_session:
        assert handed == [[closed]]  # the peer sends them again on its next socket
    else:
        assert handed == [[*(PacketReceived(pid, 0, i, HandshakeState.ACTIVE, 1) for i in range(3)), closed]]


def test_a_server_shut_down_before_it_ran_stops_with_the_reason_method_each_time():
    from tests.conftest import Recorder

    s = _server()
    rec = Recorder(s, "peng3dnet:server.stop")
    try:
        s.shutdown()  # no loop yet
        s.runAsync()  # the stop asked for holds: the loop ends at once
        s.join(10)
        assert [d["reason"] for d in rec.wait_for("peng3dnet:server.stop", 2)] == ["method", "method"]
    finally:
        rec.close()


def test_an_ack_of_more_packets_than_were_sent_closes_and_says_how_many(caplog):
    from peng3dnet.protocol.connection import SessionAcked

    s, link, _ = _server_with_link()
    link.session = Session(TOKEN, cap=1000)  # nothing sent on it yet
    closes: list = []
    s._close_link = lambda lk, why, polite=False: closes.append((lk, why))  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="peng3dnet.peer"):
        s._handle_outputs(link, [SessionAcked(5)])
    assert closes == [(link, "invalidpacket")]
    assert [r.getMessage() for r in caplog.records] == ["! server cid=7: acknowledged 5 packets, more than were sent"]


def test_the_internal_packets_belong_to_the_peers_registry_and_the_peer():
    from peng3dnet.peer import INTERNAL_PACKETS

    s = _server()
    s._register_internal()
    for name, pid, cls in INTERNAL_PACKETS:
        obj = s.registry.get_obj(name)
        assert type(obj) is cls and s.registry.get_id(name) == pid
        assert obj.reg is s.registry and obj.peer is s


# --- Peer._read: a socket that fails closes with the failure's reason ------------------------------

@pytest.mark.parametrize("reason", ["socketerror", "tlserror"])
def test_a_read_that_fails_closes_with_the_errors_reason_and_logs_it(caplog, reason):
    from peng3dnet.errors import NetworkError

    s, link, chan = _server_with_link()
    chan.closing = False
    chan.paused = False
    chan.error = None
    chan.pending = lambda: 0

    def read_into(buf):
        raise NetworkError("recv: [Errno 104] Connection reset by peer", reason)

    chan.read_into = read_into
    closed: list = []
    s._channel_closed = lambda lk: closed.append(lk)  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="peng3dnet.peer"):
        s._read(link)
    assert link.proto.closed and link.proto.close_reason == reason and link.eof is True
    assert chan.closed is True and closed == [link]
    assert "! server cid=7: recv failed: recv: [Errno 104] Connection reset by peer" in [r.getMessage() for r in caplog.records]


# --- Peer._abort: packets held back by the quota when the socket breaks -------------------------

@pytest.mark.parametrize("with_session", [False, True])
def test_a_broken_socket_forgets_packets_held_back_only_when_a_session_resends_them(with_session):
    from peng3dnet.protocol.framing import encode_frame

    s, link, chan = _server_with_link()
    pid = s.registry.get_id("t:x")
    if with_session:
        link.session = Session(TOKEN, cap=1000)
    link.proto.packet_quota = 0  # the process queue is full: all three held back
    link.proto.receive_data(b"".join(encode_frame(pid, 0, msgpack.packb(i)) for i in range(3)))
    assert link.proto.drain_received() == [] and link.proto.frames_waiting == 3
    handed: list = []
    s._handle_outputs = lambda lk, outs: handed.append(list(outs))  # type: ignore[method-assign]
    s._channel_closed = lambda lk: None  # type: ignore[method-assign]
    s._abort(link, "socketerror")
    closed = ConnectionClosed("socketerror", by_peer=True, eof=True)
    if with_session:
        assert handed == [[closed]]  # the peer sends them again on its next socket
    else:
        assert handed == [[*(PacketReceived_(pid, 0, i, HandshakeState.ACTIVE, 1) for i in range(3)), closed]]
    assert link.eof is True and chan.closed is True


# --- Peer._handle_outputs: packets dropped over the decompression budget count as received ----------

def test_packets_dropped_over_the_inflate_budget_are_added_to_the_sessions_received_count():
    import zlib

    from peng3dnet.constants import FLAG_COMPRESSED
    from peng3dnet.protocol.framing import encode_frame

    s, link, _ = _server_with_link()
    pid = s.registry.get_id("t:x")
    session = Session(TOKEN, cap=1000)
    session.rx = 5  # received on this session before
    link.session = session
    session.link = link
    acks: list = []
    s._maybe_ack = lambda lk, sess: acks.append(sess.rx)  # type: ignore[method-assign]
    s._on_app_packet = lambda lk, o, listen: False  # type: ignore[method-assign]
    proto = link.proto
    proto.inflate_action, proto.inflate_budget = "drop", 10
    big = encode_frame(pid, FLAG_COMPRESSED, zlib.compress(msgpack.packb("z" * 100)))
    proto.receive_data(encode_frame(pid, 0, msgpack.packb(1)) + big + big)
    outs = proto.drain_received()
    assert [type(o) for o in outs] == [PacketReceived_] and proto.inflate_dropped == 2
    s._handle_outputs(link, outs)
    assert session.rx == 5 + 1 + 2 and link.infl_counted == 2 and acks == [8]
    s._handle_outputs(link, [])  # counted once
    assert session.rx == 8 and acks == [8, 8]


# --- Peer._send_frame: a peer that does not read, past the write buffer's cap ---------------------

def test_a_frame_past_the_write_buffer_cap_closes_the_slow_peer_and_says_how_much_waits(caplog):
    from peng3dnet.peer import NO_EVENT

    s, link, chan = _server_with_link(**{"net.limits.write_buffer": 100, "net.limits.write_buffer_block": 0,
                                         "net.limits.write_buffer_action": "close"})
    chan.out = b"q" * 90  # what the peer has not read
    slow: list = []
    s._flow.close_slow = slow.append  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="peng3dnet.peer"):
        s._send_frame(link, b"f" * 20, s.registry.get_id("t:x"), NO_EVENT)
    assert slow == [link] and chan.written == [] and link.stats.packets_out == 0
    assert [r.getMessage() for r in caplog.records] == ["! server cid=7: peer does not read (90 bytes queued), closing"]


# --- Peer._start_thread: runAsync() on a peer driven by poll() ------------------------------------

def test_run_async_on_a_polled_peer_is_refused_with_why():
    from peng3dnet.errors import LocalProtocolError

    s = _server()
    s.poll(0)  # binds; this thread drives it from now on
    try:
        before = set(threading.enumerate())
        with pytest.raises(LocalProtocolError) as ei:
            s.runAsync()
        assert str(ei.value) == "this peer is driven by poll(); runAsync() would run its loop a second time"
        assert set(threading.enumerate()) - before == set()  # no thread started
    finally:
        s.shutdown(timeout=5)
    assert not s.run


@pytest.mark.parametrize("how", ["runAsync", "poll"])
def test_run_blocking_on_a_peer_whose_loop_runs_is_refused_and_leaves_the_loop_alone(how):
    """runBlocking() once the loop runs raised the reactor's bare
    RuntimeError, and its clean-up then ended the running loop from the
    wrong thread (closed the reactor, set the loop done, ran the exit
    hooks)."""
    from peng3dnet.errors import LocalProtocolError

    s = _server()
    if how == "runAsync":
        s.runAsync()
    else:
        s.poll(0)
    try:
        with pytest.raises(LocalProtocolError, match=r"^the loop already runs \(runAsync\(\), poll\(\) or a NetworkLoop\)$"):
            s.runBlocking()
        assert s.run and not s._loop_done.is_set() and not s._reactor.closed
    finally:
        s.shutdown(timeout=5)
    assert not s.run
    with pytest.raises(LocalProtocolError, match="^the loop has ended; a peer runs its loop once$"):
        s.runBlocking()


# --- Server._handshake_over: the per-address counts ---------------------------------------------

def test_a_connection_stops_counting_as_a_handshake_then_as_a_connection_of_its_address_group():
    s = _server(**{"net.limits.per_address.exempt_loopback": False, "net.limits.per_address.connections": 5,
                   "net.limits.per_address.handshakes": 5})
    group, provisional = s._admit(("10.1.2.3", 1))
    assert group and not provisional and s._admit(("10.1.2.3", 2)) == (group, False)
    links = []
    for cid in (1, 2):
        link = Link(None, FakeChan(), Owner(), cid)  # type: ignore[arg-type]
        link.group, link.hs_pending = group, True
        links.append(link)
    assert s._groups[group] == [2, 2, 0, 0]
    s._handshake_over(links[0])  # handshaken
    assert s._groups[group] == [2, 1, 0, 0] and links[0].hs_pending is False and links[0].group == group
    s._handshake_over(links[0])  # (again: counted once)
    assert s._groups[group] == [2, 1, 0, 0]
    s._handshake_over(links[0], closed=True)
    assert s._groups[group] == [1, 1, 0, 0] and links[0].group is None
    s._handshake_over(links[1], closed=True)  # closed during its handshake: both counts
    assert group not in s._groups and links[1].group is None and links[1].hs_pending is False


def test_a_full_group_admits_provisionally_only_as_many_as_its_resumable_sessions():
    """A group at its connection limit admits a connection provisionally
    (a handshake, not a connection: it may be a client coming back) only
    while it has fewer provisional connections than resumable sessions
    (live or suspended), whatever the handshake limit (here off); a
    session that ends stops counting as resumable, and its closed link
    gives its place back."""
    s = _server(**{"net.limits.per_address.exempt_loopback": False, "net.limits.per_address.connections": 2,
                   "net.limits.per_address.handshakes": 0})
    links = []
    for cid in (1, 2):
        group, provisional = s._admit(("10.1.2.3", cid))
        assert not provisional
        link = Link(None, FakeChan(), Owner(), cid)  # type: ignore[arg-type]
        link.group, link.hs_pending = group, True
        s._handshake_over(link)
        links.append(link)
    assert s._groups[group] == [2, 0, 0, 0]
    assert s._admit(("10.1.2.3", 3)) is None  # full, nothing to come back to
    s._resumable(links[0], True)  # a session was made on it
    s._resumable(links[0], True)  # (again: counted once)
    assert s._groups[group] == [2, 0, 1, 0] and links[0].resumable
    assert s._admit(("10.1.2.3", 4)) == (group, True)  # may be its client coming back
    assert s._groups[group] == [2, 1, 1, 1]
    assert [s._admit(("10.1.2.3", 10 + i)) for i in range(50)] == [None] * 50  # one per resumable session
    s._unadmit(group, True)  # (it never became a connection)
    assert s._groups[group] == [2, 0, 1, 0]
    s._handshake_over(links[0])  # suspended: it keeps its place and stays resumable
    assert s._groups[group] == [2, 0, 1, 0]
    s._resumable(links[0], False)  # its session ended, the socket still open
    assert s._groups[group] == [2, 0, 0, 0] and not links[0].resumable
    assert s._admit(("10.1.2.3", 5)) is None
    s._resumable(links[1], True)
    s._handshake_over(links[1], closed=True)  # closed: its place and its resumable count given back
    assert s._groups[group] == [1, 0, 0, 0] and not links[1].resumable and links[1].group is None
    assert s._admit(("10.1.2.3", 6)) == (group, False)


# --- Server.broadcast: each connection's on_send hook ----------------------------------------------

def test_broadcast_calls_each_connections_on_send_with_the_packet_and_the_data(caplog):
    s, link, _ = _server_with_link()
    other, _, _ = _active_link(8)
    other.strict_keys = False
    s._links[8] = other
    calls: list = []
    link.on_send = lambda ptype, data: calls.append((7, ptype, data))
    other.on_send = lambda ptype, data: calls.append((8, ptype, data))
    with caplog.at_level(logging.INFO, logger="peng3dnet.user"):
        assert s.broadcast("t:x", {"a": 1}) == 2
    assert calls == [(7, "t:x", {"a": 1}), (8, "t:x", {"a": 1})]
    assert caplog.records == []


# --- NetworkLoop: its thread ---------------------------------------------------------------------

def test_a_network_loop_serves_on_a_daemon_thread_named_after_it():
    assert NetworkLoop().name == "peng3dnet Client Thread"
    before = set(threading.enumerate())
    loop = NetworkLoop("t-named").start()
    try:
        (t,) = [t for t in set(threading.enumerate()) - before if t.name == "t-named"]  # the loop's thread
        assert t.daemon is True
        assert loop.reactor.running is True
    finally:
        loop.stop(10)
    t.join(10)
    assert not t.is_alive() and loop._done.is_set() and loop.reactor.running is False


def test_a_network_loop_whose_thread_cannot_start_its_loop_says_so_at_once(monkeypatch):
    import selectors
    import time

    from peng3dnet.errors import NetworkError

    raised: list = []  # (the thread ends with the error: threading's excepthook reports it)
    monkeypatch.setattr(threading, "excepthook", lambda args: raised.append((args.exc_type, str(args.exc_value))))

    class Broken(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
        def __init__(self):
            raise OSError("no more file descriptors")

    t0 = time.monotonic()
    loop = NetworkLoop("t-broken")
    with pytest.raises(NetworkError, match="^the NetworkLoop 't-broken' could not start its thread's loop$"):
        loop.start(Broken)
    assert time.monotonic() - t0 < 5  # not after start()'s 10 s wait
    assert loop._done.is_set()
    loop._net_thread.join(10)
    assert raised == [(OSError, "no more file descriptors")]


# --- Client.process_single_packet: the oldest queued packet of its connection ----------------------

def test_a_clients_process_single_packet_runs_the_oldest_queued_handler_once():
    c = Client(addr=("127.0.0.1", 1))
    got: list = []
    c.handler("t:y")(lambda msg, cid: got.append((msg, cid)))
    c._register_internal()
    pid = c.registry.get_id("t:y")
    assert c.process_single_packet() is False  # no connection
    pair = ConnectionPair()
    pair.start()
    link = Link(pair.client, FakeChan(), c, None)  # type: ignore[arg-type]
    c._link_obj = link
    assert c.process_single_packet() is False  # nothing queued
    c._handle_outputs(link, [PacketReceived_(pid, 0, i, HandshakeState.ACTIVE) for i in ("a", "b")])
    assert c.process_single_packet() is True and got == [("a", None)]
    assert c.process_single_packet() is True and got == [("a", None), ("b", None)]
    assert c.process_single_packet() is False


# --- Server._on_conntype and _take_over: a client resuming its session on a new socket ------------

class _Temp:
    """The ClientOnServer a new connection gets at accept, recording its close."""

    def __init__(self, addr) -> None:
        self.conn, self.addr, self.closes = object(), addr, []

    def on_close(self, reason=None) -> None:
        self.closes.append(reason)


class _Timer:
    cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


@pytest.mark.parametrize("old_open", [False, True])
def test_a_resume_moves_the_session_and_its_cid_onto_the_new_connection(old_open):
    from peng3dnet.server import ClientOnServer

    s = _server()
    kept = ClientOnServer(s, None, ("10.0.0.1", 5), 3)  # type: ignore[arg-type]
    session = Session(TOKEN, cap=1000)
    session.cid, session.owner, session.suspended = 3, kept, True
    session.timer = timer = _Timer()
    old = Link(None, FakeChan(), kept, 3)  # type: ignore[arg-type]
    old.chan.closed = not old_open
    old.session, session.link = session, old
    temp = _Temp(("10.0.0.1", 6))
    new = Link(None, FakeChan(), temp, 9)  # type: ignore[arg-type]
    s._sessions[TOKEN] = session
    s._links.update({3: old, 9: new})
    s.clients[9] = temp  # type: ignore[assignment]
    events: list = []
    closes: list = []
    s._emit = lambda event, data: events.append((event, data))  # type: ignore[method-assign]
    s._close_link = lambda lk, why, polite=False: closes.append((lk, why))  # type: ignore[method-assign]
    assert s._take_over(new, {"token": TOKEN, "received": 4}) is True
    assert new.cid == 3 and new.owner is kept and new.session is session and s._links == {3: new}
    assert 9 not in s.clients and temp.closes == ["resumed"]
    assert events == [("peng3dnet:server.connection.close", {"client": temp, "reason": "resumed"})] + (
        # (the old socket still open: its loss is announced now, the resumed event comes)
        [("peng3dnet:server.connection.suspended", {"client": kept, "reason": "resumed"})] if old_open else [])
    assert kept._link is new and (kept.conn, kept.addr) == (temp.conn, ("10.0.0.1", 6))
    assert session.link is new and session.suspended is False and session.resuming is True
    assert session.peer_rx == 4 and timer.cancelled and session.timer is None
    assert closes == ([(old, "resumed")] if old_open else [])


@pytest.mark.parametrize(("negotiated", "taken_over"), [(frozenset({"resume"}), True), (frozenset(), False)])
def test_a_classic_settype_with_a_resume_request_is_a_take_over_only_when_resume_was_negotiated(negotiated,
                                                                                                taken_over):
    import types

    from peng3dnet.constants import CONNTYPE_CLASSIC, RESUME_KEY

    s = _server()
    s.initialize()  # the connection types
    request = {"token": TOKEN, "received": 0}
    link = Link(types.SimpleNamespace(peer_settype={RESUME_KEY: request}, negotiated=negotiated),  # type: ignore[arg-type]
                FakeChan(), Owner(), 9)
    asked: list = []
    s._take_over = lambda lk, req: asked.append((lk, req)) or False  # type: ignore[method-assign]
    steps: list = []
    s._lib_state = lambda lk, value: steps.append("state")  # type: ignore[method-assign]
    s._type_chosen = lambda lk, ct: steps.append("chosen")  # type: ignore[method-assign]
    s._ct_call = lambda lk, fn, *args: steps.append("init")  # type: ignore[method-assign]
    s._on_conntype(link, CONNTYPE_CLASSIC)
    if taken_over:  # refused here: the connection is closed, nothing more
        assert asked == [(link, request)] and steps == [] and not hasattr(link.owner, "conntype")
    else:  # not a resume: a classic connection of its own
        assert asked == [] and steps == ["state", "chosen", "init"] and link.owner.conntype == CONNTYPE_CLASSIC


# --- Server._session_dropped with a grace period -------------------------------------------------

def test_a_dropped_session_is_kept_for_the_grace_period_then_expires(caplog):
    s = _server(**{"net.session.grace": 2.5})
    session = Session(TOKEN, cap=100)
    session.owner = owner = object()
    session.cid = 4
    link = Link(None, FakeChan(), Owner(), 4)  # type: ignore[arg-type]
    timers: list = []
    s._reactor.call_later = lambda delay, fn: timers.append((delay, fn)) or "the-timer"  # type: ignore[method-assign]
    events: list = []
    s._emit = lambda event, data: events.append((event, data))  # type: ignore[method-assign]
    ended: list = []
    s._session_end = lambda sess, why: ended.append((sess, why))  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="peng3dnet.server"):
        s._session_dropped(link, session, "socketerror")
        assert session.suspended is True and session.timer == "the-timer" and [d for d, _ in timers] == [2.5]
        assert events == [("peng3dnet:server.connection.suspended", {"client": owner, "reason": "socketerror"})]
        assert ended == []
        timers[0][1]()  # the grace period is over
    assert ended == [(session, "sessionexpired")] and session.timer is None
    assert [r.getMessage() for r in caplog.records] == [
        "= server cid=4: socket dropped (socketerror), session kept for 2.5 s",
        "! server cid=4: the client did not come back, session closed"]


# --- Peer._handle_outputs: the handshake's end and its log line ------------------------------------

def test_a_completed_handshake_is_logged_with_the_connection_type_and_tells_the_owner(caplog):
    from peng3dnet.protocol.connection import HandshakeCompleted

    s, link, _ = _server_with_link()
    assert link.proto.conntype == "classic"
    done: list = []
    link.owner.on_handshake_complete = lambda: done.append("owner")  # type: ignore[attr-defined]
    s._session_handshake = lambda lk: False  # type: ignore[method-assign]
    s._after_handshake = lambda lk: done.append("after")  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="peng3dnet.peer"):
        s._handle_outputs(link, [HandshakeCompleted()])
    assert done == ["owner", "after"]
    assert [r.getMessage() for r in caplog.records] == ["= server cid=7: handshake complete (classic)"]


# --- Peer._send_plan: an unknown packet id ------------------------------------------------------------

def test_an_unknown_packet_id_is_refused_as_an_id_and_a_bool_as_a_name():
    from peng3dnet.errors import UnknownPacketError

    s, _, _ = _server_with_link()
    with pytest.raises(UnknownPacketError) as ei:
        s.broadcast(999, {})
    assert str(ei.value) == "packet id 999 is not registered"
    with pytest.raises(UnknownPacketError) as ei:
        s.broadcast(True, {})  # not the id 1
    assert str(ei.value) == "unknown packet True"


# --- Peer._send_frame: a session's frame when its socket drops while the sender waits for room ------

def test_a_frame_of_a_session_whose_socket_dropped_during_the_wait_for_room_is_kept_for_the_next():
    from peng3dnet.errors import ConnectionClosedError
    from peng3dnet.peer import NO_EVENT

    s, link, chan = _server_with_link(**{"net.limits.write_buffer_block": 10})
    session = Session(TOKEN, cap=1000)
    link.session, session.link = session, link
    chan.out = b"q" * 50  # over the mark: a program thread waits for it to drain
    waits: list = []

    def dropped_meanwhile(lk, poll=None):
        waits.append((lk, poll))
        raise ConnectionClosedError("connection is closed", "socketclose")

    s._flow.may_block = lambda: True  # type: ignore[method-assign]
    s._flow.wait_drained = dropped_meanwhile  # type: ignore[method-assign]
    s._send_frame(link, b"frame", s.registry.get_id("t:x"), NO_EVENT)  # not raised: kept
    assert waits == [(link, None)] and chan.written == []  # (None: not the polling thread)
    assert list(session.replay) == [b"frame"] and session.tx == 1 and link.stats.packets_out == 1


# --- Peer._session_end: the close waits behind the packets still queued ---------------------------

def test_a_session_ended_with_packets_queued_closes_for_the_application_after_them():
    from peng3dnet.server import ClientOnServer

    got: list = []

    class Closing(ClientOnServer):
        def on_close(self, reason=None):
            got.append(("close", reason, self.cid))

    s, link, _ = _server_with_link()
    s.handler("t:y")(lambda msg, cid: got.append(("packet", msg, cid)))
    pid = s.registry.get_id("t:y")
    owner = Closing(s, None, ("10.0.0.1", 5), 7)  # type: ignore[arg-type]
    link.owner = owner
    s.clients[7] = owner
    session = Session(TOKEN, cap=1000)
    session.cid, session.owner, session.link, link.session = 7, owner, link, session
    s._maybe_ack = lambda lk, sess: None  # type: ignore[method-assign]
    s._handle_outputs(link, [PacketReceived_(pid, 0, "last", HandshakeState.ACTIVE)])
    assert link.queued == 1
    s._session_end(session, "sessionexpired")
    assert session.ended and 7 not in s._links and got == []  # the close waits for the packet
    s.process()
    assert got == [("packet", "last", 7), ("close", "sessionexpired", 7)] and 7 not in s.clients


# --- Server._read_allowed with "close": a bucket down to exactly 0 ----------------------------------

def test_the_packet_rate_with_close_lets_a_read_empty_the_bucket_and_closes_past_it():
    s, link, _ = _server_with_link(**{"net.limits.rate.packets": 2, "net.limits.rate.bytes": 0,
                                      "net.limits.rate.burst": 1.0, "net.limits.rate.action": "close"})
    closes: list = []
    s._close_link = lambda lk, why, polite=False: closes.append(why)  # type: ignore[method-assign]
    app = [PacketReceived_(PID_FIRST_FREE + 1, 0, i, HandshakeState.ACTIVE) for i in range(2)]
    now = link.rate_t + 5.0
    assert s._read_allowed(link, 100, app, 2, now) is True  # the whole burst: the bucket is at 0
    assert link.rate_p == 0.0 and closes == []
    assert s._read_allowed(link, 50, app[:1], 1, now) is False  # one more at the same time
    assert closes == ["ratelimit"]


def test_with_close_the_protocols_own_packets_are_not_charged():
    """Only "throttle" holds the protocol's own packets (heartbeats, replies)
    to the packet bucket; "close" charges the application's only, as it
    did: a peer sending just under the rate is not closed for its heartbeats."""
    s, link, _ = _server_with_link(**{"net.limits.rate.packets": 2, "net.limits.rate.bytes": 0,
                                      "net.limits.rate.burst": 1.0, "net.limits.rate.action": "close"})
    closes: list = []
    s._close_link = lambda lk, why, polite=False: closes.append(why)  # type: ignore[method-assign]
    app = [PacketReceived_(PID_FIRST_FREE + 1, 0, i, HandshakeState.ACTIVE) for i in range(2)]
    beat = PacketReceived_(PID_FIRST_FREE - 1, 0, "x", HandshakeState.ACTIVE)
    now = link.rate_t + 5.0
    assert s._read_allowed(link, 100, [*app, beat], 5, now) is True  # (5: what the core decoded, 3 heartbeats)
    assert link.rate_p == 0.0 and closes == []


def test_a_connection_chosen_for_the_buffer_cap_still_keeps_its_sessions_frames_for_a_resume():
    """Nothing more is written to a connection chosen to be closed for
    write_buffer_total, but a session keeps the frame for its replay: if the
    socket drops before the close, the session lives on and a resume must
    miss nothing."""
    from peng3dnet.session import Session

    s, link, chan = _server_with_link()
    session = link.session = Session(b"t" * 16, 1 << 20)
    session.link = link
    link.shed = True
    chan.out = b"backlog"
    s._send_frame(link, b"frame-1", PID_FIRST_FREE, "x")
    assert chan.written == [] and list(session.replay) == [b"frame-1"] and session.tx == 1
    link.session = None
    s._send_frame(link, b"frame-2", PID_FIRST_FREE, "x")  # no session: dropped, as its backlog is
    assert chan.written == [] and list(session.replay) == [b"frame-1"]


# --- Client.connect: an on_connect that raises -----------------------------------------------------

def test_an_on_connect_that_raises_is_reported_and_the_connection_stays(caplog):
    class Raising(Client):
        def on_connect(self):
            raise ValueError("no")

    with socket.socket() as lst:
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        c = Raising(addr=lst.getsockname())
        with caplog.at_level(logging.INFO, logger="peng3dnet.user"):
            c.connect()
        try:
            assert c._link_obj is not None
            assert [(r.getMessage(), r.exc_info[0]) for r in caplog.records] == [  # type: ignore[index]
                ("! client: on_connect raised", ValueError)]
        finally:
            c.sock.close()


# --- Client.runBlocking ------------------------------------------------------------------------------

def test_run_blocking_refuses_a_client_on_a_network_loop_and_else_runs_until_the_connection_closes():
    from peng3dnet.errors import LocalProtocolError

    c = Client(addr=("127.0.0.1", 1))
    c._shared = NetworkLoop()  # (attached: its loop is the shared one)
    with pytest.raises(LocalProtocolError) as ei:
        c.runBlocking()
    assert str(ei.value) == "this client runs on a NetworkLoop" and c.sock is None  # nothing done
    with socket.socket() as lst:
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        c = Client(addr=lst.getsockname())
        t = threading.Thread(target=c.runBlocking, daemon=True)
        t.start()
        lst.settimeout(10)
        peer, _ = lst.accept()
        peer.close()  # the server goes away: the connection closes, and the loop ends
        t.join(10)
    assert not t.is_alive() and c._loop_done.is_set() and c.close_reason == "socketclose"


# --- Peer._dispatch (process_single_packet): the on_receive hook after the handler ----------------

def test_process_single_packet_calls_the_on_receive_hook_with_the_packet_id_after_the_handler():
    from peng3dnet.server import ClientOnServer

    got: list = []

    class Hooked(ClientOnServer):
        def on_receive(self, pid, msg):
            got.append(("on_receive", pid, msg))

    s, link, _ = _server_with_link()
    s.handler("t:y")(lambda msg, cid: got.append(("handler", msg, cid)))
    pid = s.registry.get_id("t:y")
    owner = Hooked(s, None, ("10.0.0.1", 5), 7)  # type: ignore[arg-type]
    owner._link = link
    link.owner = owner
    link.on_recv = owner.on_receive
    s._handle_outputs(link, [PacketReceived_(pid, 0, {"a": 1}, HandshakeState.ACTIVE)])
    assert s.process_single_packet(owner) is True
    assert got == [("handler", {"a": 1}, 7), ("on_receive", pid, {"a": 1})]
    assert s.process_single_packet(owner) is False and link.queued == 0


class _Replies:
    """A core with one reply of its own queued (a heartbeat echo, a pong)."""

    def __init__(self, data: bytes, closed: bool = False) -> None:
        self.data = data
        self.closed = closed

    def data_to_send(self) -> bytes:
        data, self.data = self.data, b""
        return data


@pytest.mark.parametrize("queued, before, closed, after, closes", [
    (1000, 997, False, 0, False),  # not over the cap: the count starts afresh
    (1001, 0, False, 4, False),  # over it: our replies counted, well within their allowance
    (1001, 996, False, 1000, False),  # exactly the allowance (as much again as the cap)
    (1001, 997, False, 1001, True),  # one byte more: the peer sends and does not read
    (1001, 997, True, 1001, False),  # closed already: its closeconn waits
])
def test_what_the_core_answers_by_itself_is_bounded_while_over_the_write_buffer_cap(queued, before, closed, after,
                                                                                    closes):
    """_push: the core's own replies are always written; while the buffer is
    over net.limits.write_buffer (a large frame accepted into an empty
    buffer, sends stopped just under the cap) they may add as much again;
    one byte past that the connection is closed as a slow consumer (on the
    network thread, soon)."""
    s, link, chan = _server_with_link(**{"net.limits.write_buffer": 1000, "net.limits.write_buffer_total": 0})
    chan.out = b"x" * queued  # (what is queued before the write: FakeChan.write does not grow it)
    link.core_over = before
    link.proto = _Replies(b"pong", closed)  # type: ignore[assignment]
    soon: list = []
    s._reactor.call_soon = lambda fn, *a: soon.append((fn, a))  # type: ignore[method-assign]
    s._push(link)
    assert chan.written == [b"pong"] and link.stats.bytes_out == 4 and link.core_over == after
    assert soon == ([(s._flow.close_slow, (link,))] if closes else [])


def test_a_frame_over_the_cap_accepted_into_an_empty_buffer_is_not_closed_by_a_core_reply():
    """(The review's case) one frame larger than net.limits.write_buffer is
    accepted into an empty buffer; a heartbeat echo behind it does not make
    a reading peer a slow consumer."""
    import os

    s, link, chan = _server_with_link(**{"net.limits.write_buffer": 1000, "net.limits.write_buffer_total": 0})
    soon: list = []
    s._reactor.call_soon = lambda fn, *a: soon.append((fn, a))  # type: ignore[method-assign]
    s.send_message("t:x", {"blob": os.urandom(5000)}, 7)  # accepted: the buffer was empty
    assert chan.written and not link.proto.closed
    chan.out = b"".join(chan.written)  # what waits while the peer reads it
    link.proto = _Replies(b"pong")  # type: ignore[assignment]
    s._push(link)
    assert soon == [] and link.core_over == 4


# --- Peer._linger: a close waits on while the backlog drains ------------------------------------

class _Timers:
    """Stands in for the reactor's call_later: records (delay, fn)."""

    def __init__(self) -> None:
        self.armed: list = []

    def call_later(self, delay, fn):
        self.armed.append((delay, fn))
        return ("timer", len(self.armed))


@pytest.mark.parametrize("rate", [1024.0, 0.0])
def test_the_close_linger_waits_on_while_the_backlog_drains_at_the_floor_then_closes(monkeypatch, rate):
    from peng3dnet import peer as peer_mod

    s = _server(**{"net.limits.min_read_rate": rate})
    link, chan, _ = _active_link()
    timers = _Timers()
    s._reactor = timers  # type: ignore[assignment]
    closed: list = []
    s._channel_closed = closed.append  # type: ignore[method-assign]
    floor = max(1, int(rate * peer_mod.CLOSE_LINGER))  # bytes per linger: 2,048 (the default rate), or 1
    chan.out = b"x" * 100_000
    s._linger(link)
    ((delay, due),) = timers.armed
    assert delay == peer_mod.CLOSE_LINGER and chan.linger == ("timer", 1)
    chan.out = b"x" * (100_000 - floor)  # drained exactly at the floor: wait on
    due()
    assert len(timers.armed) == 2 and not chan.closed
    chan.out = b""  # all written (the closeconn too): a whole linger more for the peer's end
    timers.armed[-1][1]()
    assert len(timers.armed) == 3 and not chan.closed
    timers.armed[-1][1]()  # no end from the peer within it
    assert chan.closed and closed == [link] and len(timers.armed) == 3


def _lingering() -> tuple[Link, FakeChan, _Timers]:
    """A default server's connection closing with 100,000 bytes queued, its
    close linger armed on a fake reactor's timers."""
    s = _server()
    link, chan, _ = _active_link()
    timers = _Timers()
    s._reactor = timers  # type: ignore[assignment]
    s._channel_closed = lambda lk: None  # type: ignore[method-assign]
    chan.out = b"x" * 100_000
    s._linger(link)
    return link, chan, timers


def test_the_close_linger_flushes_before_it_looks_a_peer_reading_steadily_keeps_its_socket():
    """The socket reports writable only once much of its (megabytes) send
    buffer is free: a peer reading steadily showed no progress between two
    looks, and was cut (141 of 200 messages).  The look flushes first."""
    link, chan, timers = _lingering()  # 2,048 bytes per linger at the default min_read_rate
    chan.takes = 5000  # what the kernel takes now: no writable event came
    timers.armed[-1][1]()
    assert not chan.closed and len(chan.out) == 95_000 and len(timers.armed) == 2
    chan.takes = 95_000  # all of it, the closeconn last: half-closed, a linger for the peer's end
    timers.armed[-1][1]()
    assert not chan.closed and chan.out == b"" and chan.shut and len(timers.armed) == 3


def test_the_close_linger_closes_a_backlog_that_drains_below_the_floor():
    link, chan, timers = _lingering()  # min_read_rate 1 KiB/s: 2,048 bytes per linger
    chan.out = b"x" * (100_000 - 2047)
    timers.armed[-1][1]()
    assert chan.closed and len(timers.armed) == 1


def test_stop_and_shutdown_after_the_loop_ended_emit_nothing_more():
    """Cleanup code calls stop() (or sets run = False) routinely: after the
    loop's end it emitted a second stop (and shutdown() a second stop and
    shutdown), so on-stop handlers ran twice, the second time with reason
    "method" after the first's "connectionclosed"."""
    from tests.conftest import Recorder, make_client, make_server

    s = make_server()
    srec = Recorder(s, "peng3dnet:server.*")
    s.runAsync()
    c = make_client(s, **{"net.client.reconnect": 0})
    crec = Recorder(c, "peng3dnet:client.*")
    try:
        c.runAsync()
        c.wait_for_connection(10)
        s.shutdown(timeout=10)
        c.join(10)
        assert [d["reason"] for d in crec.wait_for("peng3dnet:client.stop")] == ["connectionclosed"]
        c.stop()
        c.run = False
        s.stop()
        s.shutdown(timeout=5)
        s.run = False
        assert [e for e in srec.names() if e in ("peng3dnet:server.stop", "peng3dnet:server.shutdown")] == [
            "peng3dnet:server.stop", "peng3dnet:server.shutdown"]
        assert crec.names().count("peng3dnet:client.stop") == 1
    finally:
        srec.close()
        crec.close()


def test_a_send_on_a_socket_its_session_just_left_follows_the_session():
    """The take-over of a resume closes the old socket itself ("resumed",
    a close of ours) and moves the session: a send that looked at the old
    socket before must follow the session to the new one, not raise
    "resumed" (the checks for a close of ours came before the move's)."""
    s = _server(**{"net.session.resume": True})
    old, ochan, _ = _active_link(7)
    new, nchan, _ = _active_link(7)
    session = Session(TOKEN, cap=1 << 20)
    session.established = True
    session.link = old
    old.session = new.session = session

    class MovingLock:
        """The network thread's take-over runs between the sender's look and its lock."""

        def __init__(self) -> None:
            self.real = threading.RLock()
            self.done = False

        def __enter__(self):
            if not self.done:
                self.done = True
                session.link = new  # the session moves ...
                old.local_closed = True  # ... and _close_link(old, "resumed")
                old.proto.close("resumed")
            return self.real.__enter__()

        def __exit__(self, *exc):
            return self.real.__exit__(*exc)

    ochan.lock = MovingLock()  # type: ignore[assignment]
    s._send_frame(old, b"frame", 64, None)
    assert nchan.written == [b"frame"] and session.tx == 1
