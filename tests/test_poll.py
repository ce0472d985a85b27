"""poll(): the game loop without threads (server and client on the calling thread)."""

from __future__ import annotations

import threading
import time

import pytest

from peng3dnet.errors import LocalProtocolError
from peng3dnet.events.dispatch import MainThreadDispatcher
from peng3dnet.net import Client, Server
from peng3dnet.packet import Packet
from tests.conftest import EchoPacket, make_client, make_server


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
    s.poll()
    c.addr = s.addr
    c.poll()
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
