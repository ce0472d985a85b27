"""poll(): the game loop without threads (server and client on the calling thread)."""

from __future__ import annotations

import os
import select
import socket
import threading
import time

import pytest

from peng3dnet.errors import LocalProtocolError
from peng3dnet.events.dispatch import MainThreadDispatcher
from peng3dnet.net import Client, Server
from peng3dnet.packet import Packet
from peng3dnet.protocol.handshake import HandshakeState
from tests.conftest import EchoPacket, make_client, make_server
from tests.helpers import active_cids


def _poll_both(s: Server, c: Client) -> None:
    """The first polls: the server binds, the client (made before the
    server had its port) connects to it."""
    s.poll()
    c.addr = s.addr
    c.poll()


def _threads() -> set[threading.Thread]:
    return set(threading.enumerate())


def test_server_and_client_polled_from_one_thread_without_any_library_thread():
    before = _threads()
    s = make_server()
    c = make_client(s)
    got = []
    handled_on = []

    class Rec(Packet):
        def receive(self, msg, cid=None):
            handled_on.append(threading.current_thread().name)
            if cid is not None:
                self.peer.send_message("t:r", msg + 1, cid)
            else:
                got.append(msg)

    s.register_packet("t:r", Rec(s.registry, s))
    c.register_packet("t:r", Rec(c.registry, c))
    s.poll()  # binds
    assert s.addr[1] != 0
    c.addr = s.addr
    c.poll()  # connects
    for _ in range(200):
        s.poll(0.005)
        c.poll(0.005)
        if c.remote_state == 64:  # STATE_ACTIVE
            break
    c.wait_for_connection(5)  # on the polling thread it polls while it waits
    for i in range(50):
        c.send_message("t:r", i)
    n = 0
    while len(got) < 50 and n < 2000:
        s.poll(0.001)
        c.poll(0.001)
        n += 1
    assert got == [i + 1 for i in range(50)]  # in order, all of them
    assert set(handled_on) == {threading.current_thread().name}
    # no thread was started (one of an earlier test may have ended meanwhile)
    assert {t.name for t in _threads() - before} == set()
    c.close()
    c.wait_for_close(5)  # polls the client while it waits
    n = 0
    while c.run and n < 1000:  # the documented end: poll until run is False
        c.poll(0.005)
        s.poll(0.005)
        n += 1
    assert not c.run and c.close_reason is None
    s.shutdown(timeout=5)  # on the polling thread: drives the loop until done
    assert not s.run and s.stats.connections_open == 0


def test_a_wait_on_the_polling_thread_polls_the_other_peers_it_polls(monkeypatch):
    """A game polling its own server and a client on one thread: the
    client's waits (wait_for_connection, call) need the server polled too,
    and the two closes that cross at the end (the client's, the server's
    shutdown before it read the client's) end without the linger."""
    from peng3dnet import peer as peer_mod

    monkeypatch.setattr(peer_mod, "CLOSE_LINGER", 60.0)  # (a close that waited for it would hang the test)
    s = make_server()
    c = make_client(s)
    c.register_packet("t:double", Packet(c.registry, c))

    @s.handler("t:double")
    def double(msg, cid):
        return msg * 2

    _poll_both(s, c)
    c.wait_for_connection(10)  # nobody polls the server but this wait
    assert c.call("t:double", 21, timeout=10) == 42  # the handler runs on this thread, in the wait
    (cid,) = active_cids(s)
    c.close("bye")  # closeconn written; the server has not read it ...
    s.shutdown(timeout=0)  # ... when it closes too (no time limit: only the closes end it)
    assert not s.run and s.stats.connections_open == 0 and s._open_channels == 0
    while c.run:
        c.poll(0.01)
    assert c.close_reason == "bye"


def test_a_send_held_by_flow_control_on_the_polling_thread_lets_the_other_peers_read():
    """A burst from a polled client to the game's own server polled on the
    same thread: the client's send waits for its buffer to drain, and only
    the server reading drains it (its I/O runs in that wait; without it the
    send waited net.timeout.send and failed)."""
    s = make_server()
    c = make_client(s, **{"net.limits.write_buffer_block": 64 * 1024, "net.timeout.send": 30.0})
    got = []

    class Rec(Packet):
        def receive(self, msg, cid=None):
            got.append(msg)

    s.register_packet("t:r", Rec(s.registry, s))
    c.register_packet("t:r", Packet(c.registry, c))
    s.poll()
    s.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # (small kernel buffers: the
    c.addr = s.addr                                               # burst meets the mark)
    c.poll()
    c.wait_for_connection(10)
    chan = c._link_obj.chan
    chan.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    waited = []
    blob = "x" * 1024
    for i in range(2000):  # 2 MiB: far over the 64 KiB mark and what the kernels hold
        if len(chan.out) > 64 * 1024:
            waited.append(i)  # (this send waits for the drain)
        c.send_message("t:r", [i, blob])
    assert waited  # the sends did wait for the drain ...
    while len(got) < 2000:  # ... and the server, polled only in those waits and here, got everything
        s.poll(0.01)
        c.poll(0)
    assert [m[0] for m in got] == list(range(2000))
    c.close()
    s.shutdown(timeout=0)
    assert not s.run


@pytest.mark.timeout(60)
def test_a_send_waiting_on_the_polling_thread_runs_the_other_polled_peers_handlers():
    """The game's own server sends a level to the game's own client, both
    polled on one thread: the client's process queue fills
    (net.limits.recv_queue_bytes), its reading pauses, and only its
    handlers empty it.  The server's send waits for its buffer to drain;
    the wait runs the client's handlers too (it used to run I/O only: the
    send waited net.timeout.send and raised WriteBufferFullError)."""
    s = make_server(**{"net.limits.write_buffer_block": 64 * 1024, "net.timeout.send": 10.0,
                       "net.compress.enabled": False})
    c = make_client(s, **{"net.limits.recv_queue_bytes": 256 * 1024})
    got = []

    class Rec(Packet):
        def receive(self, msg, cid=None):
            got.append(msg[0])

    s.register_packet("t:r", Packet(s.registry, s))
    c.register_packet("t:r", Rec(c.registry, c))
    _poll_both(s, c)
    c.wait_for_connection(10)
    (cid,) = active_cids(s)
    blob = os.urandom(60000)
    n = 200  # 12 MB: far over the client's queue, the server's mark and the kernels' buffers
    for i in range(n):  # one frame of the game loop
        s.send_message("t:r", [i, blob], cid)
    assert 0 < len(got) < n  # the client's handlers ran in the server's waits
    while len(got) < n:
        s.poll(0.01)
        c.poll(0)
    assert got == list(range(n))
    c.close()
    s.shutdown(timeout=0)


@pytest.mark.parametrize("inline", [False, True])
def test_poll_from_inside_a_polls_callbacks_does_not_run_a_nested_round(inline):
    """poll() called from an event handler (or an inline packet handler)
    inside a poll's I/O: a nested round read the socket again and ran the
    later packets' handlers before the rest of the first read (order 100,
    101, 102, 0, 1, 2).  It is a no-op there now: the order is kept."""
    from peng3dnet import events

    s = make_server(**{"net.process.inline": inline})
    order: list = []
    depth = [0, 0]

    class Rec(Packet):
        def receive(self, msg, cid=None):
            depth[0] += 1
            depth[1] = max(depth[1], depth[0])
            try:
                order.append(msg)
                if inline and msg == 0:
                    nested()
            finally:
                depth[0] -= 1

    s.register_packet("t:r", Rec(s.registry, s))
    c = make_client(s)
    c.register_packet("t:r", Packet(c.registry, c))
    _poll_both(s, c)
    c.wait_for_connection(10)
    done: list = []

    def nested():  # (in a handler: an assert here would be reported, not fail the test)
        if not done:
            for i in range(100, 103):
                c.send_message("t:r", i)  # (written at once: poll mode)
            done.append((s.poll(), s._in_poll))

    def on_recv(event, data):
        if data["pid"] >= 64 and data["msg"] == 0:
            nested()

    if not inline:
        events.subscribe("peng3dnet:server.connection.recv", on_recv, sender=s)
    try:
        for i in range(3):
            c.send_message("t:r", i)
        t0 = time.monotonic()
        while len(order) < 6 and time.monotonic() - t0 < 10:
            s.poll(0.01)
            c.poll(0)
        assert order == [0, 1, 2, 100, 101, 102] and depth[1] == 1
        assert done == [(0, True)]  # the nested poll did nothing, inside the outer round still
    finally:
        events.unsubscribe("peng3dnet:server.connection.recv", on_recv, sender=s)
        c.close()
        s.shutdown(timeout=0)


def test_poll_from_a_handler_of_the_first_polls_own_events_waits_for_it():
    """A bind handler (an initialize or connect one likewise) that polls:
    the nested poll started the loop itself, and the first poll then
    raised RuntimeError ("a reactor runs only once")."""
    from peng3dnet import events

    s = make_server()
    nested: list = []

    def on_bind(event, data):
        nested.append(s.poll())

    events.subscribe("peng3dnet:server.bind", on_bind, sender=s)
    try:
        assert s.poll() == 0
        assert nested == [0] and s._polling and s.addr[1] != 0
        c = make_client(s)
        c.addr = s.addr
        c.poll()
        c.wait_for_connection(10)  # (polls the server too: the loop the first poll started serves)
        c.close()
    finally:
        events.unsubscribe("peng3dnet:server.bind", on_bind, sender=s)
        s.shutdown(timeout=0)


def test_poll_and_runasync_exclude_each_other():
    s = make_server()
    s.runAsync()
    try:
        with pytest.raises(LocalProtocolError):
            s.poll()
    finally:
        s.shutdown(timeout=5)
    p = make_server()
    p.poll()
    with pytest.raises(LocalProtocolError):
        p.runAsync()
    errors = []

    def other():
        try:
            p.poll()
        except LocalProtocolError as exc:
            errors.append(exc)

    t = threading.Thread(target=other)
    t.start()
    t.join(5)
    assert errors, "poll() from a second thread must be refused"
    p.shutdown(timeout=5)


def test_interrupt_from_another_thread_between_polls_ends_the_next_polls_wait():
    p = make_server()
    p.poll()  # binds; this thread is the network thread from now on
    try:
        # The polled server's housekeeping timer (every second) would end a
        # lost interrupt's wait too, so each round allows half of that; five
        # rounds make a lost interrupt all but sure to show.
        for _ in range(5):
            t = threading.Thread(target=p.interrupt)  # nobody is in select(): nothing to wake now
            t.start()
            t.join(5)
            t0 = time.monotonic()
            p.poll(10)
            assert time.monotonic() - t0 < 0.5, "the interrupt was lost: poll() waited for something else"
    finally:
        p.shutdown(timeout=5)
        p.poll()


def test_a_threaded_server_serves_a_polled_client_and_stop_finishes_on_the_next_poll():
    s = make_server()
    s.runAsync()
    s.process_async()
    c = Client(addr=s.addr)
    c.register_packet("test:echo", EchoPacket(c.registry, c))
    try:
        c.poll()
        c.wait_for_connection(5)
        c.send_message("test:echo", "hi")
        echo = c.registry.get_obj("test:echo")
        for _ in range(500):
            c.poll(0.01)
            if echo.got:
                break
        assert echo.got == ["hi"]
        c.stop()
        assert c.run  # the loop ends on the next poll
        c.poll()
        assert not c.run
        c.join(0)
    finally:
        s.shutdown(timeout=5)


def test_dispatcher_polls_peers_so_events_run_on_the_pumping_thread():
    s = Server(addr=("127.0.0.1", 0))
    seen = []
    d = MainThreadDispatcher(peers=[s], poll=True)
    from peng3dnet import events

    def on_bind(event, data):
        seen.append((event, threading.current_thread().name))

    events.subscribe("peng3dnet:server.bind", on_bind, sender=s)
    try:
        d.pump()
        assert seen == [("peng3dnet:server.bind", threading.current_thread().name)]
        assert s.addr[1] != 0
    finally:
        events.unsubscribe("peng3dnet:server.bind", on_bind, sender=s)
        d.close()
        s.shutdown(timeout=5)


def test_waiting_inside_a_polled_handler_does_not_nest_polls():
    s = make_server()
    depth = []
    active = [0]

    class Rude(Packet):
        def receive(self, msg, cid=None):
            active[0] += 1
            depth.append(active[0])
            if cid is not None:
                s.shutdown(timeout=1)  # from a handler of a poll: must not poll (and run handlers) in here
            active[0] -= 1

    s.register_packet("t:rude", Rude(s.registry, s))
    c = make_client(s)
    c.register_packet("t:rude", Packet(c.registry, c))
    _poll_both(s, c)
    for _ in range(400):
        s.poll(0.005)
        c.poll(0.005)
        if c.protocol_state.name == "ACTIVE":
            break
    c.send_message("t:rude", 1)
    c.send_message("t:rude", 2)
    for _ in range(400):
        s.poll(0.005)
        c.poll(0.005)
        if not s.run:
            break
    assert depth and max(depth) == 1  # never a handler inside a handler
    assert not s.run  # the shutdown asked for in the handler finished on the next polls
    while c.run:
        c.poll(0.005)


class _Sink(Packet):
    """Counts what it receives; ``all`` is set at ``want``."""

    def __init__(self, reg, peer, obj=None):
        super().__init__(reg, peer, obj)
        self.n = 0
        self.all = threading.Event()
        self.want = 0

    def receive(self, msg, cid=None):
        self.n += 1
        if self.n >= self.want:
            self.all.set()


class _GatedSink(_Sink):
    """A _Sink whose first receive waits (at most 20 s) for ``gate``: the
    server stops taking, its inbox fills (a server with a small
    net.limits.recv_queue) and its reading pauses, so the sender's buffer
    must grow (on a fast machine it may never have)."""

    def __init__(self, reg, peer, obj=None):
        super().__init__(reg, peer, obj)
        self.gate = threading.Event()

    def receive(self, msg, cid=None):
        if self.n == 0:
            self.gate.wait(20)
        super().receive(msg, cid)


def _polled_client(s, **cfg) -> Client:
    c = Client(addr=s.addr, cfg={"net.compress.enabled": False, **cfg})
    c.register_packet("test:echo", EchoPacket(c.registry, c))
    c.register_packet("test:sink", _Sink(c.registry, c))
    c.poll()
    c.wait_for_connection(10)  # (polls while it waits)
    return c


@pytest.mark.timeout(60)
@pytest.mark.parametrize("send_timeout", [30.0, 0.0])  # (0: no limit)
def test_a_burst_sent_from_the_polling_thread_is_slowed_not_cut_off(net, send_timeout):
    """send_message from the game loop waits (polling the network, no
    handlers) while the connection's buffer is over
    net.limits.write_buffer_block, as from a program thread: 40 MiB sent in
    one frame of the loop went over net.limits.write_buffer and the client
    closed its own connection with 'slowconsumer'."""
    n, size = 40, 1 << 20
    s, rec = net.server(packets={"test:sink": _GatedSink}, **{"net.limits.recv_queue": 4})
    sink = s.registry.get_obj("test:sink")
    sink.want = n
    c = _polled_client(s, **{"net.timeout.send": send_timeout})
    net.clients.append(c)
    got_here = c.registry.get_obj("test:echo")
    (cid,) = active_cids(s)
    s.send_message("test:echo", "hello", cid)  # waits in the client's socket: read by the first wait's I/O
    assert select.select([c.sock], [], [], 10)[0], "the hello did not reach the client's socket"
    waits = []
    poll_for_drain = c._poll_for_drain

    def counted(timeout):
        waits.append(timeout)
        sink.gate.set()  # the client waits: the server may take again
        return poll_for_drain(timeout)

    c._poll_for_drain = counted
    blob = b"\x00" * size
    for _ in range(n):  # one frame of the game loop: a level streamed at once
        c.send_message("test:sink", blob)
    assert waits, "no send waited: the server's gated handler should have filled the buffers"
    # (net.limits.write_buffer_block, 4 MiB: a send waits while the buffer is
    # over it, then adds its frame)
    assert c.write_buffer_size <= (4 << 20) + size + 64
    # The waits ran the network I/O (the hello was read and queued) but no
    # handler: that is the next poll()'s work.
    assert len(c._inbox.items) == 1 and got_here.got == []
    while not sink.all.is_set() and c.run:  # the next frames: the game loop polls
        c.poll(0.01)
    assert got_here.got == ["hello"]
    assert c.close_reason is None
    assert sink.n == n
    assert "peng3dnet:server.connection.close" not in rec.names()


def _polled_server_and_raw_peer(net):
    """A polled server (packet test:sink) and a RawPeer handshaken with it
    (on a thread: this thread polls the server meanwhile); ``(server,
    peer, cid)``."""
    from tests.conftest import RawPeer

    s = make_server()
    s.register_packet("test:sink", Packet(s.registry, s))
    net.servers.append(s)
    s.poll()
    peer = RawPeer(s.addr)
    shaken = threading.Thread(target=peer.handshake, daemon=True)
    shaken.start()
    t0 = time.monotonic()
    while shaken.is_alive() and time.monotonic() - t0 < 10:
        s.poll(0.01)
    (cid,) = s.clients
    while s.clients[cid].protocol_state is not HandshakeState.ACTIVE and time.monotonic() - t0 < 10:
        s.poll(0.01)
    assert s.clients[cid].protocol_state is HandshakeState.ACTIVE
    return s, peer, cid


@pytest.mark.timeout(30)
def test_a_send_from_the_polling_thread_to_a_peer_that_does_not_read_times_out(net):
    from peng3dnet.errors import WriteBufferFullError

    s, peer, cid = _polled_server_and_raw_peer(net)  # the peer never reads after its handshake
    t0 = time.monotonic()
    s.cfg["net.timeout.send"] = 0.5
    blob = os.urandom(1 << 20)  # (incompressible: the server compresses by default)
    with pytest.raises(WriteBufferFullError, match=r"after 0\.5 s \(net\.timeout\.send\)"):
        for _ in range(100):
            s.send_message("test:sink", blob, cid)
    assert time.monotonic() - t0 < 10
    peer.close()


@pytest.mark.timeout(30)
def test_close_on_the_polling_thread_flushes_what_was_queued(net):
    """client.close() on the polling thread polls while it waits (up to 2 s)
    for what was queued and the closeconn to reach the kernel: it returned
    at once, and a program ending its loop there lost its last messages and
    the server never learned why."""
    n, size = 8, 1 << 20
    gate = threading.Event()

    class GatedSink(_Sink):
        def receive(self, msg, cid=None):
            gate.wait(10)  # the server is busy a moment: reading pauses, the client's buffer fills
            super().receive(msg, cid)

    s, rec = net.server(packets={"test:sink": GatedSink}, **{"net.limits.recv_queue": 1})
    sink = s.registry.get_obj("test:sink")
    sink.want = n
    c = _polled_client(s)
    net.clients.append(c)
    for _ in range(n):
        c.send_message("test:sink", b"\x00" * size)
    assert c.write_buffer_size > 0  # a backlog the kernels did not take
    threading.Timer(0.3, gate.set).start()  # the server catches up soon
    try:
        c.close("bye")  # the game ends: no poll() after this
        assert sink.all.wait(10), f"{sink.n} of {n} delivered"
        (closed,) = rec.wait_for("peng3dnet:server.connection.close", timeout=10)
        assert closed["reason"] == "bye"
    finally:
        gate.set()


@pytest.mark.timeout(60)
def test_a_program_thread_sending_to_a_polled_server_waits_for_the_polls(net):
    """Over net.limits.write_buffer_block, a send from a thread other than
    the polling one waits for the polls to drain the buffer (it must not
    run the polling thread's I/O itself)."""
    s, peer, cid = _polled_server_and_raw_peer(net)
    t0 = time.monotonic()
    n = 64  # MiB: more than the kernel's buffers on loopback take, and the mark on top
    failed: list = []
    sent = threading.Event()

    def sender() -> None:
        try:
            for _ in range(n):
                s.send_message("test:sink", os.urandom(1 << 20), cid)  # (incompressible)
        except Exception as exc:  # noqa: BLE001 - reported below
            failed.append(exc)
        sent.set()

    got: list = []
    reader = threading.Thread(target=lambda: got.extend(peer.recv_packet() for _ in range(n)), daemon=True)
    threading.Thread(target=sender, daemon=True).start()
    chan = s._links[cid].chan
    while not chan.drain_waiters and not sent.is_set() and time.monotonic() - t0 < 20:
        s.poll(0.01)  # (the peer does not read yet: the buffer fills over the mark, the sender waits)
    assert chan.drain_waiters == 1 and not sent.is_set() and failed == []
    reader.start()
    while (not sent.is_set() or reader.is_alive()) and time.monotonic() - t0 < 40:
        s.poll(0.01)
    assert failed == [] and sent.is_set()
    reader.join(10)
    assert len(got) == n and {len(m) for _, m in got} == {1 << 20}
    peer.close()
