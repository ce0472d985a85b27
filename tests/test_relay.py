"""The relay: the runAsync() and process_async() threads take turns at the
network and at the handlers (peng3dnet.relay).  What must hold: handlers
run one at a time, never on the thread that is the network thread at that
moment, in order; a handler that blocks does not stop the network (within
the watchdog's bound, at once when it waits in the library); stop() works
while a handler blocks; programs that process() themselves keep their
handlers on their own thread."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from peng3dnet import relay as relay_mod
from peng3dnet.errors import LocalProtocolError
from peng3dnet.inbox import Inbox
from peng3dnet.net import ClientOnServer, Server
from peng3dnet.packet import Packet
from tests.conftest import EchoPacket, Recorder, make_client, make_server
from tests.helpers import active_cids, handler_thread, wait_for


class Recording(Packet):
    """Records, per message, where its handler ran and how many handlers
    were running at once; ``msg == "block"`` waits for :attr:`release`."""

    def __init__(self, reg, peer, obj=None):
        super().__init__(reg, peer, obj)
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.got: list = []
        self.where: set[str] = set()
        self.names: set[str] = set()
        self.blocked = threading.Event()
        self.blocker: threading.Thread | None = None
        self.release = threading.Event()

    def receive(self, msg, cid=None):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        self.where.add(handler_thread(self.peer))
        self.names.add(threading.current_thread().name)
        try:
            if msg == "block":
                self.blocker = threading.current_thread()
                self.blocked.set()
                assert self.release.wait(20)
            elif msg == "call":
                # waits in the library: hands the network over at once
                self.got.append(("call", self.peer.call("relay:double", 21, cid, timeout=10)))
            self.got.append((cid, msg))
        finally:
            with self.lock:
                self.running -= 1


class Double(Packet):
    answers = True

    def receive(self, msg, cid=None):
        return 2 * msg


def _server(**cfg):
    s = make_server(**cfg)
    rec = Recording(s.registry, s)
    s.register_packet("relay:msg", rec)
    s.register_packet("relay:double", Double(s.registry, s))
    return s, rec


def _client(s, start=True, **cfg):
    c = make_client(s, **cfg)
    c.register_packet("relay:msg", Packet(c.registry, c))
    c.register_packet("relay:double", Double(c.registry, c))
    if start:
        c.runAsync()
        c.process_async()
        c.wait_for_connection(10)
    return c


def _pair(peers, process_first=False):
    """A server started the documented way (runAsync + process_async, in
    either order) and one client of it, both torn down by ``peers``."""
    s, rec = _server()
    peers.append(s)
    if process_first:
        s.process_async()
        s.runAsync()
    else:
        s.runAsync()
        s.process_async()
    c = _client(s)
    peers.append(c)
    return s, rec, c


@pytest.fixture
def fresh_watchdog(monkeypatch):
    """A watchdog of the test's own (the process-wide one is started once,
    by whichever test came first): the test's takeovers are its doing."""
    wd = relay_mod._Watchdog()
    monkeypatch.setattr(relay_mod, "_WATCHDOG", wd)
    return wd


@pytest.fixture
def peers():
    made: list = []
    yield made
    for p in made:
        if callable(p) and not hasattr(p, "close"):
            p()
        elif isinstance(p, Server):
            p.shutdown(join=True, timeout=5)
        else:
            p.close()
            p.join(5)


def test_handlers_run_one_at_a_time_in_order_off_the_network_thread(peers):
    s, rec = _server()
    peers.append(s)
    s.runAsync()
    s.process_async()
    clients = [_client(s) for _ in range(4)]
    peers.extend(clients)
    cids = active_cids(s, 4)
    batches = s._relay.batch
    for i in range(500):
        for c in clients:
            c.send_message("relay:msg", i)
    wait_for(lambda: len(rec.got) == 2000, what="2,000 messages handled")
    assert rec.most == 1
    assert rec.where == {"handlers"}  # on a relay thread, never the network thread of the moment
    for cid in cids:
        assert [m for c, m in rec.got if c == cid] == list(range(500))
    assert s._relay.batch > batches  # the relay ran them (not a fixed process thread)


def test_a_blocking_handler_does_not_stop_the_network(fresh_watchdog, peers, caplog):
    s, rec, c1 = _pair(peers)
    caplog.set_level(logging.DEBUG, logger="peng3dnet.relay")
    c1.send_message("relay:msg", "block")
    assert rec.blocked.wait(10)
    t0 = time.monotonic()
    # While the handler waits outside the library, the watchdog hands the
    # network to the other thread: a new client gets through its handshake,
    # within two watchdog periods plus a handshake (slack for a loaded machine).
    c2 = _client(s)
    peers.append(c2)
    assert len(active_cids(s, 2)) == 2
    assert time.monotonic() - t0 < 2 * relay_mod.WATCH_PERIOD + 1.5
    c2.send_message("relay:msg", "after")
    assert f"run for more than {relay_mod.WATCH_PERIOD * 1000:.0f} ms" in caplog.text
    assert not rec.release.is_set() and rec.got == []
    rec.release.set()
    wait_for(lambda: len(rec.got) == 2, what="both handled")
    assert [m for _, m in rec.got] == ["block", "after"]
    assert rec.most == 1


def test_a_handler_waiting_in_the_library_hands_over_at_once(peers, monkeypatch):
    # With a watchdog that would not look for a minute, only the hand-over
    # before the library's wait lets the call's reply be read.
    monkeypatch.setattr(relay_mod, "WATCH_PERIOD", 60.0)
    wd = relay_mod._WATCHDOG

    def wake_watchdog():  # (it may be in a 60 s wait: let it look again with the real period)
        with wd.cond:
            wd.cond.notify()

    peers.append(wake_watchdog)
    s, rec, c = _pair(peers)
    c.send_message("relay:msg", "call")
    wait_for(lambda: len(rec.got) == 2, timeout=9, what="the handler's call answered")
    assert rec.got[0] == ("call", 42)


def test_stop_while_a_handler_blocks(fresh_watchdog, peers):
    s, rec, c = _pair(peers)
    pt = s._process_thread
    c.send_message("relay:msg", "block")
    assert rec.blocked.wait(10)
    blocker = rec.blocker
    assert blocker in (s._net_thread, pt)
    s.stop()
    s.join(10)  # the other thread took the network and ended the loop
    assert blocker.is_alive()  # still in the handler
    rec.release.set()
    for t in (s._net_thread, pt):
        t.join(10)
        assert not t.is_alive()
    assert rec.got == [(rec.got[0][0], "block")]


def test_process_async_first_then_run_async(peers):
    s, rec, c = _pair(peers, process_first=True)
    for i in range(50):
        c.send_message("relay:msg", i)
    wait_for(lambda: len(rec.got) == 50, what="50 handled")
    assert [m for _, m in rec.got] == list(range(50))
    assert rec.where == {"handlers"}
    wait_for(lambda: s._relay.runs_handlers, what="the process thread in the relay")


def _run_async_between_look_and_wait(peer, monkeypatch):
    """process_async(), then runAsync() exactly while the process thread is
    between its look (no loop yet) and its wait: the wake-up's race."""
    looked = threading.Event()
    go_on = threading.Event()
    real_wait = Inbox.wait

    def wait(inbox, *args):  # the process thread, between its look and its wait
        if threading.current_thread() is peer._process_thread and not looked.is_set():
            looked.set()
            assert go_on.wait(10)
        return real_wait(inbox, *args)

    monkeypatch.setattr(Inbox, "wait", wait)
    peer.process_async()
    assert looked.wait(10)
    peer.runAsync()
    go_on.set()


def test_a_process_thread_that_looked_before_run_async_still_joins_the_relay(peers, monkeypatch):
    # process_async() then runAsync(): the process thread found no loop yet,
    # and runAsync() started it and notified before that thread waited.  The
    # wake-up must not be lost: the thread joins the relay with no packet
    # arriving (it used to wait for the first packets and run them alone).
    s, rec = _server()
    peers.append(s)
    _run_async_between_look_and_wait(s, monkeypatch)
    wait_for(lambda: s._relay.runs_handlers, what="the process thread in the relay")
    c = _client(s)
    peers.append(c)
    for i in range(20):
        c.send_message("relay:msg", i)
    wait_for(lambda: len(rec.got) == 20, what="20 handled")
    assert rec.where == {"handlers"}


def test_packets_queued_before_the_woken_process_thread_looks_again_are_the_relays(peers, monkeypatch):
    # process_async() then runAsync(): runAsync()'s wake-up reaches the
    # process thread, but packets are queued before it runs again (a loaded
    # machine).  It must look again and join the relay, not run them itself
    # outside it (seen once on Python 3.10 in the full suite).
    woke = threading.Event()
    go_on = threading.Event()
    real_wait = Inbox.wait
    s, rec = _server()
    peers.append(s)

    def wait(inbox, *args):
        real_wait(inbox, *args)
        if threading.current_thread() is s._process_thread and not woke.is_set():
            woke.set()
            assert go_on.wait(10)

    monkeypatch.setattr(Inbox, "wait", wait)
    s.process_async()
    wait_for(lambda: s._inbox.has_waiters, what="the process thread waiting")
    s.runAsync()
    assert woke.wait(10)
    c = _client(s)
    peers.append(c)
    for i in range(20):
        c.send_message("relay:msg", i)
    wait_for(lambda: len(s._inbox.items) == 20, what="20 queued, none run")
    assert rec.got == []
    go_on.set()
    wait_for(lambda: len(rec.got) == 20, what="20 handled")
    assert [m for _, m in rec.got] == list(range(20))
    assert rec.where == {"handlers"}


@pytest.mark.parametrize("shared", [True, False])
def test_a_clients_process_thread_that_looked_before_run_async_joins_the_relay(peers, monkeypatch, shared):
    # The client's way in: runAsync() attaches to the shared NetworkLoop (the
    # default) or starts a thread of its own; either wakes a process thread
    # that waits already, so it joins the relay with no packet arriving.
    s, rec = _server()
    peers.append(s)
    s.runAsync()
    s.process_async()
    c = make_client(s, **{"net.client.shared_loop": shared})
    c.register_packet("relay:msg", Packet(c.registry, c))
    c.register_packet("relay:double", Double(c.registry, c))
    peers.append(c)
    _run_async_between_look_and_wait(c, monkeypatch)
    wait_for(lambda: c in c._relay.members and c._process_thread.ident in c._relay.threads,
             what="the client's process thread in the relay")


def test_a_program_that_processes_keeps_its_handlers(peers):
    s, rec = _server()
    peers.append(s)
    s.runAsync()  # no process_async(): the program's thread runs handlers
    c = _client(s)
    peers.append(c)
    for i in range(20):
        c.send_message("relay:msg", i)
    deadline = time.monotonic() + 10
    while len(rec.got) < 20 and time.monotonic() < deadline:
        s.process(wait=True, timeout=0.5)
    assert [m for _, m in rec.got] == list(range(20))
    assert rec.where == {threading.current_thread().name}
    assert s._relay.batch == 0


def test_run_blocking_with_a_process_thread_keeps_the_split(peers):
    s, rec = _server()
    peers.append(s)
    s.bind()
    loop = threading.Thread(target=s.runBlocking, name="program loop", daemon=True)
    loop.start()
    s.process_async()
    wait_for(lambda: s._reactor.running, what="the loop")
    c = _client(s)
    peers.append(c)
    for i in range(20):
        c.send_message("relay:msg", i)
    wait_for(lambda: len(rec.got) == 20, what="20 handled")
    assert rec.names == {"peng3dnet process Thread"}
    assert s._relay.batch == 0


def test_the_watchdog_sleeps_when_nothing_runs(fresh_watchdog, peers):
    s, rec, c = _pair(peers)
    c.send_message("relay:msg", 1)
    wait_for(lambda: len(rec.got) == 1, what="handled")
    wait_for(lambda: fresh_watchdog.idle, what="the watchdog asleep")
    assert s._relay in fresh_watchdog.relays
    c2 = _client(s)  # a second relay (the client's own): still one watchdog thread
    peers.append(c2)
    assert fresh_watchdog.relays >= {s._relay, c2._relay}
    assert sum(1 for t in threading.enumerate() if t is fresh_watchdog.thread) == 1
    assert fresh_watchdog.thread.is_alive() and fresh_watchdog.thread.name == "peng3dnet watchdog"
    first = fresh_watchdog.thread
    fresh_watchdog.add(s._relay)
    assert fresh_watchdog.thread is first
    s.shutdown(join=True, timeout=5)
    wait_for(lambda: s._relay not in fresh_watchdog.relays, what="the relay forgotten")


def test_a_client_closing_delivers_every_packet_then_on_close(peers):
    s, rec = _server()
    peers.append(s)
    s.runAsync()
    s.process_async()
    got = []
    closed = threading.Event()

    class Sink(Packet):
        def receive(self, msg, cid=None):
            got.append(msg)

    c = make_client(s)
    c.register_packet("relay:msg", Sink(c.registry, c))
    c.register_packet("relay:double", Double(c.registry, c))
    c.on_close = lambda reason=None: closed.set()  # type: ignore[method-assign]
    c.runAsync()
    c.process_async()
    c.wait_for_connection(10)
    (cid,) = active_cids(s)
    for i in range(300):
        s.send_message("relay:msg", i, cid)
    s.close_connection(cid, "bye")
    assert closed.wait(10)
    assert got == list(range(300))


def test_the_process_thread_never_leads_before_the_loop_started(peers, monkeypatch):
    s, rec = _server()
    peers.append(s)
    stops = Recorder(s, "peng3dnet:server.stop")
    hold = threading.Event()
    real = relay_mod.Relay.run_loop_thread

    def late(self, start):  # the network thread is slow to start
        assert hold.wait(10)
        real(self, start)

    monkeypatch.setattr(relay_mod.Relay, "run_loop_thread", late)
    s.process_async()
    s.runAsync()
    # The process thread was woken to join the relay; the lead is the
    # loop thread's even before it runs.
    wait_for(lambda: s._relay.runs_handlers, what="the process thread in the relay")
    assert s._relay.leader == relay_mod._STARTING
    hold.set()
    c = _client(s)
    peers.append(c)
    c.send_message("relay:msg", 1)
    wait_for(lambda: rec.got == [(rec.got[0][0], 1)] if rec.got else False, what="handled")
    s.shutdown(join=True, timeout=5)
    assert stops.names() == ["peng3dnet:server.stop"]
    stops.close()


def test_a_base_exception_in_a_queued_on_close_stops_the_server_cleanly(peers):
    class Dying(ClientOnServer):
        def on_close(self, reason=None):
            raise SystemExit("bye from on_close")

    s = Server(cfg={"net.server.addr": ("127.0.0.1", 0)}, clientcls=Dying)
    s.register_packet("test:echo", EchoPacket(s.registry, s))
    rec = Recording(s.registry, s)
    s.register_packet("relay:msg", rec)
    s.register_packet("relay:double", Double(s.registry, s))
    peers.append(s)
    s.runAsync()
    pt = s.process_async()
    c = _client(s)
    for i in range(50):  # queued behind these, the close runs on a relay thread
        c.send_message("relay:msg", i)
    c.close("bye")
    c.join(5)
    s.join(10)  # the BaseException stopped the server (as one from a handler does), it did not hang it
    pt.join(10)
    # (join() returns once the loop ended; the thread that ran it may still
    # be leaving the relay then: wait for it, bounded)
    s._net_thread.join(10)
    assert not pt.is_alive() and not s._net_thread.is_alive()
    assert [m for _, m in rec.got] == list(range(50))


# --- the watchdog's look, one step at a time (no threads, no clock) ------------------------


def _watched():
    wd = relay_mod._Watchdog()
    r = relay_mod.Relay(None, relay_mod.Flag(), lambda: None)
    wd.relays.add(r)
    wd.idle = False
    return wd, r


def test_a_runner_on_the_same_batch_at_two_looks_is_stuck():
    wd, r = _watched()
    seen: dict = {}
    r.batch = 7
    r.runners = {101: 7}
    wd._look(seen)  # first sight: not stuck yet
    assert r.stuck == set() and seen[r] == (7, {101: 7}) and not wd.idle
    wd._look(seen)
    assert r.stuck == {101}
    assert not wd.idle


def test_a_runner_on_a_new_batch_is_not_stuck():
    wd, r = _watched()
    seen: dict = {}
    r.batch = 7
    r.runners = {101: 7}
    wd._look(seen)
    r.batch = 8
    r.runners = {101: 8, 102: 6}
    wd._look(seen)
    assert r.stuck == set()
    r.runners = {101: 8}  # 102 left; 101 still on batch 8
    wd._look(seen)
    assert r.stuck == {101}


def test_the_watchdog_idles_only_after_a_quiet_look():
    wd, r = _watched()
    seen: dict = {}
    r.batch = 3
    wd._look(seen)  # a batch ran since the last look (none was seen): stays awake
    assert not wd.idle
    r.batch = 4
    wd._look(seen)
    assert not wd.idle
    wd._look(seen)  # nothing ran since: asleep
    assert wd.idle


def test_a_forgotten_relay_leaves_the_looks():
    wd, r = _watched()
    seen: dict = {}
    r.runners = {101: 1}
    r.batch = 1
    wd._look(seen)
    wd.relays.discard(r)
    wd._look(seen)
    assert r not in seen and r.stuck == set() and wd.idle


# --- the relay's roles, without threads ------------------------------------------------------


class _FakePeer:
    def __init__(self, items=()):
        self._inbox = type("Inbox", (), {})()
        self._inbox.items = list(items)
        self._inbox.ready = None
        self._loop_done = relay_mod.Flag()


def _members(r, *peers):
    """Make ``peers`` members, as run_process_thread() does (without a thread)."""
    for p in peers:
        r.members.append(p)
        p._inbox.ready = r.ready
        if p._inbox.items:
            r.ready.append(p)


def _bare():
    ended = []
    r = relay_mod.Relay(None, relay_mod.Flag(), lambda: ended.append(1))
    return r, ended


def test_runnable_takes_the_first_ready_member_with_packets_and_no_runner_dropping_stale_entries():
    r, _ = _bare()
    a, b, c = _FakePeer(), _FakePeer([1]), _FakePeer([2])
    _members(r, a, b, c)
    r.ready.appendleft(a)  # a stale entry: packets a had were taken by a program's process()
    assert r._runnable() is b and list(r.ready) == [c]  # a dropped, b taken
    r.busy.add(c)
    assert r._runnable() is None and not r.ready  # c runs elsewhere: dropped (its runner puts it back)
    assert r._start_batch(5) is None and r.runners == {} and r.batch == 0
    r.busy.clear()
    r.ready.extend([b, c])
    assert r._start_batch(5) is b
    assert r.busy == {b} and r.runners == {5: 1} and r.batch == 1
    assert r._start_batch(6) is c
    assert r.runners == {5: 1, 6: 2} and r.batch == 2


def test_runnable_skips_a_peer_that_left_the_relay():
    r, _ = _bare()
    gone, stays = _FakePeer([1]), _FakePeer([2])
    _members(r, gone, stays)
    gone._inbox.ready = None  # its process thread left (packets wait for the program's process())
    assert r._runnable() is stays and not r.ready


def test_free_means_no_runner_or_every_runner_stuck():
    r, _ = _bare()
    assert r._free()
    r.runners = {1: 1}
    assert not r._free()
    r.stuck = {1}
    assert r._free()
    r.runners = {1: 1, 2: 2}
    assert not r._free()


def test_before_wait_marks_only_the_calling_runner():
    r, _ = _bare()
    me = threading.get_ident()
    r.before_wait()  # not a runner: nothing
    assert r.stuck == set()
    r.runners = {me: 3, 42: 4}
    r.before_wait()
    assert r.stuck == {me}


def test_the_starting_lead_and_a_loop_that_ends_once():
    r, ended = _bare()
    r.starting()
    assert r.enabled and r.leader == relay_mod._STARTING
    r.leader = 99
    r.starting()  # a loop thread leads already: kept
    assert r.leader == 99
    r._end()
    r._end()
    assert ended == [1] and r.leader is None and r.ended


def test_a_done_loop_or_peer_sends_the_thread_home():
    r, _ = _bare()
    home = _FakePeer()
    assert not r._done_for(None) and not r._done_for(home)
    home._loop_done.set()
    assert r._done_for(home) and not r._done_for(None)
    r.loop_done.set()
    assert r._done_for(None)


def test_a_runner_that_waited_is_not_stuck_after_its_batch():
    r, _ = _bare()
    me = threading.get_ident()
    p = _FakePeer([1])

    def run_batch():
        p._inbox.items.clear()
        r.before_wait()  # the handler waited in the library

    p._run_batch = run_batch
    _members(r, p)
    r.leader = 7  # another thread leads
    assert r._start_batch(me) is p
    assert r._run(me, p) is False
    assert r.runners == {} and r.busy == set() and r.stuck == set()


def test_a_leader_whose_peer_left_wakes_the_followers():
    r, _ = _bare()
    r.reactor = type("FakeReactor", (), {"stopping": False, "thread_id": 1})()
    me = threading.get_ident()
    home = _FakePeer()
    home._loop_done.set()
    r.leader = me
    ready, woke = threading.Event(), []

    def follower():
        with r.cond:
            ready.set()
            woke.append(r.cond.wait(5))

    t = threading.Thread(target=follower)
    t.start()
    assert ready.wait(5)
    with r.cond:
        pass  # the follower waits now (it held the lock until then)
    assert r._lead(me, home) is None
    t.join(6)
    assert woke == [True] and r.leader is None and r.reactor.thread_id is None


def test_the_thread_that_takes_the_lead_back_is_the_network_thread(peers):
    """After a batch the runner leads again, and is the network thread for
    everything that asks (events, sends, queued calls)."""
    from peng3dnet import events

    s, rec, c = _pair(peers)
    seen = []
    pid = s.registry.get_id("relay:msg")

    def on_recv(event, data):  # runs on the network thread of the moment
        if data["pid"] == pid:  # (not the client's last handshake packet, which may come after the subscription)
            seen.append(s._reactor.in_loop() and threading.get_ident() == s._relay.leader)

    events.subscribe("peng3dnet:server.connection.recv", on_recv, sender=s)
    try:
        for i in range(20):
            c.send_message("relay:msg", i)
            wait_for(lambda i=i: len(rec.got) == i + 1, what=f"message {i} handled")
    finally:
        events.unsubscribe("peng3dnet:server.connection.recv", on_recv, sender=s)
    assert seen == [True] * 20


def test_packets_seen_by_the_process_threads_first_look_are_the_relays(peers):
    # process_async() then runAsync(): the process thread reads whether
    # packets wait before it looks for the loop.  Had it looked for the
    # loop first (none yet) and then found packets, it ran them itself,
    # outside the relay.  Here its read of the queue is held until 20 wait.
    from collections import deque

    looked = threading.Event()
    go_on = threading.Event()
    s, rec = _server()
    peers.append(s)

    class Held(deque):
        def __bool__(self):
            if threading.current_thread() is s._process_thread and not looked.is_set():
                looked.set()
                assert go_on.wait(10)
            return len(self) > 0

    s._inbox.items = Held()
    s.process_async()
    assert looked.wait(10)
    s.runAsync()
    c = _client(s)
    peers.append(c)
    for i in range(20):
        c.send_message("relay:msg", i)
    wait_for(lambda: len(s._inbox.items) == 20, what="20 queued, none run")
    go_on.set()
    wait_for(lambda: len(rec.got) == 20, what="20 handled")
    assert [m for _, m in rec.got] == list(range(20))
    assert rec.where == {"handlers"}


def test_a_stop_before_the_process_thread_runs_still_ends_it(peers, monkeypatch):
    # process_async(), then stop() before the new thread has run a line:
    # the thread used to clear the stop as it began, and waited for ever.
    s, rec = _server()
    peers.append(s)
    s.runAsync()
    go_on = threading.Event()
    real = Server.process_forever

    def late(self):
        assert go_on.wait(10)
        real(self)

    monkeypatch.setattr(Server, "process_forever", late)
    pt = s.process_async()
    s.stop()
    s.join(5)
    go_on.set()
    pt.join(5)
    assert not pt.is_alive()


def test_process_async_after_the_clients_loop_ended_drains_and_ends(peers):
    # The connection closed before the program called process_async(): the
    # thread handles what is left (the close) and ends, as a stop() would.
    s, rec = _server()
    peers.append(s)
    s.runAsync()
    s.process_async()
    c = _client(s, start=False, **{"net.client.reconnect": 0})
    closes: list = []
    c.on_close = lambda reason=None: closes.append(reason)
    peers.append(c)
    c.runAsync()
    c.wait_for_connection(10)
    (cid,) = active_cids(s)
    s.close_connection(cid, "bye")
    c.join(10)
    pt = c.process_async()
    pt.join(5)
    assert not pt.is_alive()
    assert closes == ["bye"] and not c.run


def test_run_async_twice_is_refused_and_the_first_loop_serves_on(peers):
    s, rec = _server()
    peers.append(s)
    net_thread = s.runAsync()
    with pytest.raises(LocalProtocolError, match="already runs"):
        s.runAsync()
    s.process_async()
    c = _client(s)  # the first loop still accepts and serves
    peers.append(c)
    c.send_message("relay:msg", 1)
    wait_for(lambda: len(rec.got) == 1, what="handled")
    s.stop()
    s.join(5)
    net_thread.join(5)
    assert not net_thread.is_alive()
    with pytest.raises(LocalProtocolError, match="has ended"):
        s.runAsync()
    s.join(1)  # (ended: a second runAsync() no longer reopens it for ever)
    # a client's own thread, likewise
    s2, _ = _server()
    peers.append(s2)
    s2.runAsync()
    s2.process_async()
    c2 = _client(s2, start=False, **{"net.client.shared_loop": False})
    peers.append(c2)
    c2.runAsync()
    c2.wait_for_connection(10)
    with pytest.raises(LocalProtocolError, match="already runs"):
        c2.runAsync()
    c2.send_message("relay:msg", 2)  # still served by its first thread
    wait_for(lambda: len(s2.registry.get_obj("relay:msg").got) == 1, what="c2's message handled")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_base_exception_that_ends_the_loop_ends_the_process_thread_too(peers):
    # A hook on the network thread raising SystemExit ends the server's
    # loop on whichever relay thread leads; the process thread then
    # handles what is left and ends (it waited for ever: nobody asked it
    # to stop).
    class Fatal(ClientOnServer):
        def on_handshake_complete(self):
            super().on_handshake_complete()
            if fatal.is_set():
                raise SystemExit("a hook gave up")

    fatal = threading.Event()
    s, rec = _server()
    s.clientcls = Fatal
    peers.append(s)
    s.runAsync()
    pt = s.process_async()
    c = _client(s)
    peers.append(c)
    c.send_message("relay:msg", 1)
    wait_for(lambda: len(rec.got) == 1, what="handled")
    fatal.set()
    c2 = _client(s, start=False)
    peers.append(c2)
    c2.runAsync()
    s.join(10)  # the loop ended
    s._net_thread.join(5)  # (on it, the SystemExit ends the thread, as it would without a relay)
    pt.join(5)
    assert not pt.is_alive() and not s._net_thread.is_alive()
    assert not s.run
