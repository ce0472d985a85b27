"""Clients started with runAsync() share the process's one network thread
(net.client.shared_loop, the default): one thread for every client, the
returned Thread following each client, handlers of one client never held
up for long by another client's stuck handler, reconnects off the shared
thread."""

from __future__ import annotations

import logging
import threading
import time

import pytest

import peng3dnet.client as client_mod
from peng3dnet import relay as relay_mod
from peng3dnet.client import NetworkLoop, SharedLoopThread, default_loop
from peng3dnet.errors import LocalProtocolError, NetworkError
from peng3dnet.net import Client, Server
from peng3dnet.packet import Packet
from peng3dnet.tools.lagproxy import LagProxy
from tests.conftest import EchoPacket, Recorder, make_client, make_server
from tests.helpers import active_cids, handler_thread, wait_for


class Gate(Packet):
    """Records messages; ``"block"`` waits for :attr:`release`."""

    def __init__(self, reg, peer, obj=None):
        super().__init__(reg, peer, obj)
        self.got: list = []
        self.where: set[str] = set()
        self.blocked = threading.Event()
        self.release = threading.Event()

    def receive(self, msg, cid=None):
        self.where.add(handler_thread(self.peer))
        if msg == "block":
            self.blocked.set()
            assert self.release.wait(20)
        self.got.append(msg)


@pytest.fixture
def server():
    s = make_server()
    s.register_packet("t:gate", Packet(s.registry, s))
    s.runAsync()
    s.process_async()
    yield s
    s.shutdown(join=True, timeout=5)


def _client(s, **cfg):
    c = Client(addr=s.addr, cfg=cfg)
    c.register_packet("test:echo", EchoPacket(c.registry, c))
    c.register_packet("t:gate", Gate(c.registry, c))
    return c


@pytest.fixture
def clients():
    made: list[Client] = []
    yield made
    for c in made:
        c.close()
        c.join(5)


def _threads() -> set[threading.Thread]:
    """Threads, without the process-wide watchdog (started with the first relay that runs handlers)."""
    return {t for t in threading.enumerate() if t.name != "peng3dnet watchdog"}


def test_run_async_clients_share_one_network_thread(server, clients):
    loop = default_loop()
    before = _threads()
    handles = []
    for _ in range(5):
        c = _client(server)
        clients.append(c)
        handles.append(c.runAsync())
        c.process_async()
    # A process thread each, no network thread each (a thread of an earlier
    # test ending meanwhile is not counted; the loop's own may be new: it
    # ends when its last client leaves, and starts again with the next).
    new = _threads() - before - {loop._net_thread}
    assert len(new) == 5 and {t.name for t in new} == {"peng3dnet process Thread"}
    assert {c._reactor for c in clients} == {loop.reactor}
    assert all(c._net_thread is loop._net_thread for c in clients)
    for i, c in enumerate(clients):
        c.wait_for_connection(10)
        c.send_message("test:echo", i)
    for i, c in enumerate(clients):
        assert c.registry.get_obj("test:echo").wait_count(1) == [i]
    # runAsync()'s Thread follows its own client
    assert all(isinstance(h, threading.Thread) and isinstance(h, SharedLoopThread) for h in handles)
    assert all(h.is_alive() for h in handles)
    clients[0].close("bye")
    handles[0].join(10)
    assert not handles[0].is_alive()
    assert all(h.is_alive() for h in handles[1:])
    assert loop._net_thread.is_alive()
    clients[1].send_message("test:echo", "again")
    assert clients[1].registry.get_obj("test:echo").wait_count(2)[-1] == "again"
    with pytest.raises(RuntimeError):
        handles[1].start()


def test_shared_loop_off_gives_each_client_its_thread(server, clients):
    for _ in range(2):
        c = _client(server, **{"net.client.shared_loop": False})
        clients.append(c)
        t = c.runAsync()
        assert type(t) is threading.Thread and t.is_alive() and t.name == "peng3dnet Client Thread"
        c.process_async()
    assert clients[0]._reactor is not clients[1]._reactor
    assert default_loop().reactor not in {c._reactor for c in clients}
    for c in clients:
        c.wait_for_connection(10)
        c.send_message("test:echo", "x")
        assert c.registry.get_obj("test:echo").wait_count(1) == ["x"]


def test_a_stuck_handler_of_one_client_does_not_stop_another(server, clients, monkeypatch):
    monkeypatch.setattr(relay_mod, "_WATCHDOG", relay_mod._Watchdog())  # the test's takeovers are its own
    a, b = _client(server), _client(server)
    clients += [a, b]
    for c in (a, b):
        c.runAsync()
        c.process_async()
        c.wait_for_connection(10)
    cid_a, cid_b = active_cids(server, 2)
    ga, gb = a.registry.get_obj("t:gate"), b.registry.get_obj("t:gate")
    server.send_message("t:gate", "block", cid_a)
    server.send_message("t:gate", "a-after", cid_a)
    assert ga.blocked.wait(10)
    for i in range(20):  # b's handlers run while a's waits (another thread took over)
        server.send_message("t:gate", i, cid_b)
    wait_for(lambda: len(gb.got) == 20, what="b's 20 messages handled while a's handler waits")
    assert gb.got == list(range(20))
    assert ga.got == []  # a's next message waits behind its own stuck handler
    ga.release.set()
    wait_for(lambda: ga.got == ["block", "a-after"], what="a's messages, in order")
    assert ga.where == gb.where == {"handlers"}


def test_a_reconnect_does_not_hold_the_shared_thread(server, clients, monkeypatch):
    resume = {"net.session.resume": True}
    s = Server(cfg={"net.server.addr": ("127.0.0.1", 0), **resume})
    s.register_packet("t:gate", Packet(s.registry, s))
    s.runAsync()
    s.process_async()
    proxy = LagProxy(("127.0.0.1", 0), s.addr).start()
    try:
        a = Client(addr=proxy.addr, cfg={**resume, "net.client.reconnect.delay": 0.01})
        a.register_packet("t:gate", Gate(a.registry, a))
        b = _client(server)
        clients += [a, b]
        for c in (a, b):
            c.runAsync()
            c.process_async()
            c.wait_for_connection(10)
        assert a._reactor is b._reactor
        entered = threading.Event()
        leave = threading.Event()
        real = client_mod.transport_connect

        def slow_connect(*args, **kw):  # a reconnect that hangs (a server not answering SYNs)
            entered.set()
            assert leave.wait(20)
            raise NetworkError("connect: timed out")

        monkeypatch.setattr(client_mod, "transport_connect", slow_connect)
        proxy.cut()
        assert entered.wait(10)
        for i in range(5):  # b is served while a's connect hangs
            b.send_message("test:echo", i)
        assert b.registry.get_obj("test:echo").wait_count(5) == list(range(5))
        monkeypatch.setattr(client_mod, "transport_connect", real)
        resumed = Recorder(a, "peng3dnet:client.resumed")
        leave.set()
        resumed.wait_for("peng3dnet:client.resumed")
        resumed.close()
        (cid,) = active_cids(s)
        s.send_message("t:gate", "back", cid)
        wait_for(lambda: a.registry.get_obj("t:gate").got == ["back"], what="a served again")
    finally:
        proxy.stop()
        s.shutdown(join=True, timeout=5)


def test_handlers_of_clients_on_one_loop_take_turns(server, clients, monkeypatch):
    """Handlers of different clients run one batch after the other (side by
    side only when one is stuck, which none is here)."""
    # (The watchdog would call a batch stuck that a loaded machine merely
    # preempted for 0.1 s, and rightly let another thread run: seen once.)
    monkeypatch.setattr(relay_mod, "WATCH_PERIOD", 60.0)
    lock = threading.Lock()
    state = {"now": 0, "most": 0, "n": 0}

    class Busy(Packet):
        def receive(self, msg, cid=None):
            with lock:
                state["now"] += 1
                state["most"] = max(state["most"], state["now"])
            time.sleep(0)  # (let another thread run now if it could)
            with lock:
                state["now"] -= 1
                state["n"] += 1

    cs = []
    for _ in range(3):
        c = _client(server)
        c.register_packet("t:busy", Busy(c.registry, c))
        clients.append(c)
        cs.append(c)
    server.register_packet("t:busy", Packet(server.registry, server))
    for c in cs:
        c.runAsync()
        c.process_async()
        c.wait_for_connection(10)
    cids = active_cids(server, 3)
    for i in range(300):
        for cid in cids:
            server.send_message("t:busy", i, cid)
    wait_for(lambda: state["n"] == 900, what="900 handled")
    assert state["most"] == 1


def test_connected_first_then_run_async_keeps_its_own_thread(server, clients):
    c = _client(server)
    clients.append(c)
    c.connect()  # a 0.1.x program may connect first
    t = c.runAsync()
    c.process_async()
    assert type(t) is threading.Thread and t.is_alive()
    assert c._reactor is not default_loop().reactor
    c.wait_for_connection(10)
    c.send_message("test:echo", "x")
    assert c.registry.get_obj("test:echo").wait_count(1) == ["x"]


def test_run_async_can_be_tried_again_after_a_refused_connect(server, clients):
    import socket

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nobody listens there now
    c = Client(addr=("127.0.0.1", port))
    c.register_packet("test:echo", EchoPacket(c.registry, c))
    c.register_packet("t:gate", Gate(c.registry, c))
    for _ in range(2):
        with pytest.raises(NetworkError):
            c.runAsync()
    assert c._shared is None
    c.addr = server.addr  # 0.1.x retry loops: the same object, again
    clients.append(c)
    c.runAsync()
    c.process_async()
    c.wait_for_connection(10)
    assert c._reactor is default_loop().reactor


def test_network_loop_stop_from_a_handler_ends_the_loop_at_once(monkeypatch):
    # With a watchdog that would not look for a minute, only stop()'s own
    # hand-over lets the loop end while a handler on a process thread waits.
    monkeypatch.setattr(relay_mod, "WATCH_PERIOD", 60.0)
    wd = relay_mod._WATCHDOG

    class Double(Packet):
        answers = True

        def receive(self, msg, cid=None):
            return 2 * msg

    s = make_server()
    s.register_packet("t:stop", Packet(s.registry, s))
    s.register_packet("t:double", Double(s.registry, s))
    s.runAsync()
    s.process_async()
    loop = NetworkLoop("t").start()
    took, where = [], []

    class Stopper(Packet):
        def receive(self, msg, cid=None):
            if msg == "call":  # waits in the library: the process thread leads from now on
                where.append(self.peer.call("t:double", 21, timeout=5))
                return
            where.append(threading.current_thread().name)
            t0 = time.monotonic()
            loop.stop(timeout=5)
            took.append(time.monotonic() - t0)

    c = make_client(s)
    c.register_packet("t:stop", Stopper(c.registry, c))
    c.register_packet("t:double", Double(c.registry, c))
    try:
        loop.add(c)
        pt = c.process_async()
        c.wait_for_connection(10)
        (cid,) = active_cids(s)
        s.send_message("t:stop", "call", cid)
        wait_for(lambda: where == [42], what="the handler's call answered")
        s.send_message("t:stop", "stop", cid)
        wait_for(lambda: took, timeout=9, what="stop() returned")
        assert where == [42, pt.name]
        assert took[0] < 2 and loop._done.is_set()
    finally:
        # The period back first, then wake the watchdog: woken with 60 s
        # still set, it would look once and sleep a minute again, and the
        # next tests' stuck handlers would go unwatched (a handler blocked
        # on the leader thread then holds the network for that long).
        monkeypatch.undo()
        with wd.cond:
            wd.cond.notify()
        s.shutdown(join=True, timeout=5)


def test_leaving_the_shared_loop_ends_the_process_thread(server, clients):
    c = _client(server)
    clients.append(c)
    c.runAsync()
    pt = c.process_async()
    c.wait_for_connection(10)
    wait_for(lambda: c._relay.runs_handlers, what="the process thread in the relay")
    c.close()
    c.join(5)
    pt.join(5)
    assert not pt.is_alive()


FORK_CHILD = r"""
import os, sys
import peng3dnet.client as client_mod
from peng3dnet import relay
from peng3dnet.net import Client, Server
from tests.conftest import EchoPacket

def pair():
    s = Server(cfg={"net.server.addr": ("127.0.0.1", 0)})
    s.register_packet("test:echo", EchoPacket(s.registry, s))
    s.runAsync(); s.process_async()
    c = Client(addr=s.addr)
    c.register_packet("test:echo", EchoPacket(c.registry, c))
    c.runAsync(); c.process_async(); c.wait_for_connection(10)
    c.send_message("test:echo", os.getpid())
    assert c.registry.get_obj("test:echo").wait_count(1) == [os.getpid()]
    return s, c

s, c = pair()
parent_loop, parent_wd = client_mod.default_loop(), relay._WATCHDOG
assert parent_wd.relays
pid = os.fork()
if pid == 0:  # the child: none of the parent's threads; a fresh shared loop and watchdog that work
    try:
        assert client_mod._default is None and relay._WATCHDOG is not parent_wd and not relay._WATCHDOG.relays
        s2, c2 = pair()
        assert client_mod.default_loop() is not parent_loop and c2._reactor is client_mod.default_loop().reactor
        os._exit(0)
    except BaseException as exc:
        sys.stderr.write(f"child: {exc!r}\n")
        os._exit(1)
_, status = os.waitpid(pid, 0)
print("child exit", os.waitstatus_to_exitcode(status))
"""


def test_a_forked_child_gets_its_own_shared_loop_and_watchdog(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "fork_child.py"
    script.write_text(FORK_CHILD)
    repo = str(__import__("pathlib").Path(__file__).resolve().parents[1])
    proc = subprocess.run([sys.executable, "-W", "ignore::DeprecationWarning", str(script)], capture_output=True,
                          text=True, timeout=60, env={**__import__("os").environ, "PYTHONPATH": repo})
    assert "child exit 0" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.parametrize("side", ["stop during the connect", "stop after the connect"])
def test_an_add_racing_stop_either_is_served_or_gives_up(side):
    # NetworkLoop.add() connects in the caller's thread.  A stop() that
    # ends the loop meanwhile used to miss the client (it was listed only
    # after its connect): add() returned a client whose socket no thread
    # served and whose join() never returned.
    s = make_server()
    s.runAsync()
    loop = NetworkLoop("t-race").start()
    c = make_client(s)
    connecting, go = threading.Event(), threading.Event()
    real_connect = c.connect

    def slow_connect():
        real_connect()
        connecting.set()
        assert go.wait(10)

    c.connect = slow_connect  # type: ignore[method-assign]
    result: list = []
    rec = Recorder(c, "peng3dnet:client.close")

    def add():
        try:
            result.append(loop.add(c))
        except BaseException as exc:  # noqa: BLE001 (recorded, asserted below)
            result.append(exc)

    t = threading.Thread(target=add)
    try:
        if side == "stop during the connect":
            t.start()
            assert connecting.wait(10)
            loop.stop(timeout=10)
            assert loop._done.is_set()
            sock = c.sock
            go.set()
            t.join(10)
            (err,) = result
            assert isinstance(err, LocalProtocolError) and "stopped" in str(err)
            assert sock is not None and sock.fileno() == -1  # closed, not left for the collector
            assert c.sock is None and c._shared is None and not c._loop_started
            assert c not in loop._clients
            # It was connected ("connect" was emitted), so it is closed, once:
            assert [d["reason"] for _, d in rec.items] == ["clientstop"] and c.close_reason == "clientstop"
        else:
            go.set()
            t.start()
            t.join(10)
            assert result == [c]
            loop.stop(timeout=10)
            c.join(5)  # the loop's end ended it
            assert c._loop_done.is_set()
            assert len(rec.wait_for("peng3dnet:client.close")) == 1
    finally:
        go.set()
        t.join(10)
        rec.close()
        loop.stop(timeout=5)
        s.stop()
        s.join(5)


def test_a_system_exit_in_one_clients_hook_stops_that_client_only(server, clients, caplog):
    # A hook on the loop's thread raising SystemExit used to end the shared
    # thread, and with it every client on it; now it ends its own client,
    # as it would end a client's own thread.
    class Quitter(Client):
        def on_handshake_complete(self):
            raise SystemExit(3)

    loop = NetworkLoop("t-exit").start()
    try:
        good = _client(server)
        clients.append(good)
        loop.add(good)
        good.process_async()
        good.wait_for_connection(10)
        bad = Quitter(addr=server.addr)
        bad.register_packet("test:echo", EchoPacket(bad.registry, bad))
        bad.register_packet("t:gate", Gate(bad.registry, bad))
        clients.append(bad)
        with caplog.at_level(logging.WARNING, logger="peng3dnet.client"):
            loop.add(bad)
            bad.join(10)  # its part of the shared loop ended
            assert bad._loop_done.is_set()
        assert loop._net_thread is not None and loop._net_thread.is_alive() and not loop._done.is_set()
        assert not good._loop_done.is_set()
        (rec,) = [r for r in caplog.records if "shared loop" in r.getMessage()]
        assert "SystemExit" in rec.getMessage() and str(bad.addr) in rec.getMessage()
        good.send_message("test:echo", "still served")
        echo = good.registry.find_obj(good.registry.get_id("test:echo"))
        assert echo.wait_count(1) == ["still served"]
    finally:
        loop.stop(timeout=5)
