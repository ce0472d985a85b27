"""RedisPresence's subscriptions (our own redis-server): subscribe() and
unsubscribe() from many threads while messages flow, the listener thread
idle on a selector (no polling), close(), an outage and a Redis restart."""

from __future__ import annotations

import queue
import select
import selectors
import socket
import threading

import msgpack
import pytest

from peng3dnet import errors
from peng3dnet.ext.rooms.redispresence import RedisPresence
from peng3dnet.tools.lagproxy import LagProxy
from tests.helpers import wait_for
from tests.rooms import RedisServer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(60)
def test_subscribe_and_unsubscribe_from_many_threads_while_messages_flow(rp, redis_ns):
    """Each callback gets every message published after its subscribe()
    returned (until it unsubscribes), and none once unsubscribe() returned."""
    url, ns = redis_ns
    channels = ["c0", "c1", "c2"]
    started = dict.fromkeys(channels, 0)  # per channel, the number whose publish() began last
    stop = threading.Event()
    problems: list[str] = []
    pub = RedisPresence(url, ns)

    def publisher():
        n = 0
        while not stop.is_set():
            n += 1
            for ch in channels:
                started[ch] = n
                pub.publish(ch, n)

    def worker(w):
        for rnd in range(12):
            ch = channels[(w + rnd) % len(channels)]
            got: list[int] = []
            gone = threading.Event()  # set once unsubscribe() returned
            enough = threading.Event()
            target = [None]

            def cb(channel, n, got=got, gone=gone, enough=enough, target=target, rnd=rnd):
                if gone.is_set():
                    problems.append(f"worker {w} round {rnd}: {channel} {n} after unsubscribe() returned")
                got.append(n)
                if target[0] is not None and n >= target[0]:
                    enough.set()

            rp.subscribe(ch, cb)
            first = started[ch] + 1  # published after subscribe() returned (and after Redis confirmed it): must arrive
            target[0] = first + 2
            if got and got[-1] >= target[0]:
                enough.set()
            if not enough.wait(10):
                problems.append(f"worker {w} round {rnd}: no message {target[0]} on {ch}: {got[-5:]}")
            rp.unsubscribe(ch, cb)
            gone.set()
            seen = [n for n in got if n >= first]
            if seen != list(range(first, first + len(seen))):
                problems.append(f"worker {w} round {rnd}: {ch} from {first}: {seen[:10]}...")
            # The listener has gone past anything in flight for cb once a later subscriber hears a later message.
            probe = threading.Event()
            after = started[ch] + 1
            probe_cb = lambda channel, n, after=after, probe=probe: n >= after and probe.set()  # noqa: E731
            rp.subscribe(ch, probe_cb)
            if not probe.wait(10):
                problems.append(f"worker {w} round {rnd}: the probe on {ch} heard nothing")
            rp.unsubscribe(ch, probe_cb)

    pt = threading.Thread(target=publisher, daemon=True)
    pt.start()
    workers = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(4)]
    try:
        for t in workers:
            t.start()
        for t in workers:
            t.join(50)
        assert not any(t.is_alive() for t in workers)
    finally:
        stop.set()
        pt.join(10)
        pub.close()
    assert problems == []
    wait_for(lambda: rp.r.pubsub_numsub(*[f"{ns}:ch:{c}" for c in channels]) == [(f"{ns}:ch:{c}".encode(), 0) for c in channels],
             what="every channel unsubscribed at Redis")


@pytest.mark.timeout(30)
def test_subscribe_returns_once_redis_subscribed_a_message_right_after_arrives(redis_ns):
    """The subscriber's link to Redis is slow (0.1 s each way): subscribe()
    returns once Redis confirmed, so a message published (directly) right
    after it returns is delivered."""
    url, ns = redis_ns
    host_port = url.split("//", 1)[1].rsplit("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    proxy = LagProxy(("127.0.0.1", 0), (host, int(port)), delay=0.1).start()
    slow = RedisPresence(f"redis://127.0.0.1:{proxy.addr[1]}/0", ns)
    direct = RedisPresence(url, ns)
    got: queue.Queue = queue.Queue()
    try:
        slow.subscribe("a", lambda ch, d: got.put(d))
        assert direct.publish("a", "right after") == 1
        assert got.get(timeout=10) == "right after"
    finally:
        slow.close()
        direct.close()
        proxy.stop()


@pytest.mark.timeout(30)
def test_a_callback_is_not_called_once_unsubscribe_returned_even_for_a_message_being_delivered(rp, redis_ns):
    """A message is being delivered (the first callback of the channel is
    running) when another thread unsubscribes the second callback: either
    the second is called before unsubscribe() returns, or never."""
    in_gate = threading.Event()
    returned = threading.Event()  # unsubscribe() returned
    late: list[int] = []
    gate_got: queue.Queue = queue.Queue()

    def gate(ch, n):
        if n == 1:
            in_gate.set()
            # until the unsubscribe() is queued for the listener (it cannot return while this runs)
            wait_for(rp._reactor.has_pending, timeout=10, what="the unsubscribe request queued")
        gate_got.put(n)

    def victim(ch, n):
        if returned.is_set():
            late.append(n)

    rp.subscribe("c", gate)
    rp.subscribe("c", victim)
    assert rp.publish("c", 1) == 1
    assert in_gate.wait(10)
    rp.unsubscribe("c", victim)
    returned.set()
    assert rp.publish("c", 2) == 1
    assert [gate_got.get(timeout=10), gate_got.get(timeout=10)] == [1, 2]  # the listener went past both
    assert late == []


class _CountingSelector(selectors.DefaultSelector):
    """The listener's selector, counting its waits (and their time-outs)."""

    waits: list = []
    inside = threading.Event()  # a thread is in select() now

    def select(self, timeout=None):
        type(self).waits.append(timeout)
        type(self).inside.set()
        try:
            return super().select(timeout)
        finally:
            type(self).inside.clear()


@pytest.fixture
def counting_selector(monkeypatch):
    class Counting(_CountingSelector):
        waits: list = []
        inside = threading.Event()

    monkeypatch.setattr(RedisPresence, "_selector", Counting)
    return Counting


def _idle(sel, period=0.3):
    # In select() with no time-out, and no further wait over an idle period
    # (an observation window, not a synchronisation).
    wait_for(lambda: sel.inside.is_set() and sel.waits and sel.waits[-1] is None, timeout=5,
             what="the listener in select(timeout=None)")
    n = len(sel.waits)
    threading.Event().wait(period)
    return len(sel.waits) == n and sel.inside.is_set()


@pytest.mark.timeout(30)
def test_the_listener_waits_on_a_selector_without_a_time_out_and_close_ends_it_at_once(counting_selector, redis_ns):
    url, ns = redis_ns
    rp = RedisPresence(url, ns)
    got: queue.Queue = queue.Queue()
    rp.subscribe("a", lambda ch, d: got.put(d))
    thread = rp._thread
    assert thread is not None and thread.name == "peng3dnet presence" and thread.daemon
    # Idle: blocked in select() with no time-out (woken by Redis or by a request, never by a clock).
    assert _idle(counting_selector)
    assert rp.publish("a", 1) == 1 and got.get(timeout=10) == 1
    assert _idle(counting_selector)  # idle again after a message
    rp.close()
    assert not thread.is_alive()  # close() woke it and joined it: ended, not left to notice later
    with pytest.raises(errors.NetworkError, match="closed"):
        rp.subscribe("b", lambda ch, d: None)


@pytest.mark.timeout(30)
def test_close_from_a_callback_ends_the_listener(redis_ns):
    url, ns = redis_ns
    p = RedisPresence(url, ns)
    raised: list[BaseException] = []
    closed = threading.Event()

    def cb(ch, d):
        try:
            p.close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            raised.append(exc)
        closed.set()

    other = RedisPresence(url, ns)  # (publishing on p itself would race its close())
    try:
        p.subscribe("a", cb)
        thread = p._thread
        assert other.publish("a", 1) == 1 and closed.wait(10)
        thread.join(10)
        assert raised == [] and not thread.is_alive()
    finally:
        p.close()
        other.close()


@pytest.mark.timeout(60)
def test_subscribe_in_an_outage_raises_is_not_recorded_and_a_restart_resubscribes(tmp_path, caplog):
    server = RedisServer(_free_port(), tmp_path).start()
    p = RedisPresence(server.url, "ns")
    direct = None
    got: queue.Queue = queue.Queue()
    try:
        p.subscribe("a", lambda ch, d: got.put((ch, d)))
        p.subscribe("c", lambda ch, d: got.put((ch, d)))
        server.stop()  # Redis restarts: down...
        with pytest.raises(errors.NetworkError):
            p.subscribe("b", lambda ch, d: got.put((ch, d)))
        server.start()  # ... and back, on the same port, empty
        direct = RedisPresence(server.url, "ns")
        for _ in range(100):  # Redis pub/sub keeps nothing: publish until heard (the listener retries each second)
            direct.publish("a", "again")
            try:
                if got.get(timeout=0.1) == ("a", "again"):
                    break
            except queue.Empty:
                pass
        else:
            raise AssertionError("no message after the restart")
        while not got.empty():
            got.get_nowait()
        assert direct.publish("b", "not recorded") == 0  # nobody subscribed to b
        assert direct.publish("c", "c too") == 1
        assert got.get(timeout=10) == ("c", "c too")  # (b's would have come first: one connection, in order)
        assert got.empty()
        assert any(r.getMessage().startswith("presence: subscription lost (") for r in caplog.records)
    finally:
        p.close()
        if direct is not None:
            direct.close()
        server.stop()


def _flood(url, ns, channel, stop):
    """Publish on ``channel`` until ``stop``, faster than a slow callback takes them."""
    pub = RedisPresence(url, ns)

    def run():
        pipe = pub.r.pipeline(transaction=False)
        n = 0
        while not stop.is_set():
            for _ in range(100):
                n += 1
                pipe.publish(f"{ns}:ch:{channel}", msgpack.packb(n))
            pipe.execute()
            stop.wait(0.02)  # (pacing: ~5000 messages a second; the callbacks take ~300)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, pub


@pytest.mark.timeout(60)
def test_a_message_flood_holds_up_neither_unsubscribe_nor_close(redis_ns):
    """Slow callbacks (3 ms) under a flood: the listener always has something
    to read, and still serves unsubscribe() and close() promptly (they raised
    "no answer" after 10 s, and close() left the thread running); no callback
    is called after its unsubscribe(), nor any after close(), returned."""
    url, ns = redis_ns
    p = RedisPresence(url, ns)
    late: list[str] = []
    unsubscribed = threading.Event()
    closed = threading.Event()
    busy = threading.Event()
    count = [0]

    def slow(ch, n):
        if unsubscribed.is_set():
            late.append(f"slow {n}")
        count[0] += 1
        if count[0] >= 50:
            busy.set()
        threading.Event().wait(0.003)  # (a slow callback: this is the load, not a synchronisation)

    def other(ch, n):
        if closed.is_set():
            late.append(f"other {n}")
        threading.Event().wait(0.003)

    stop = threading.Event()
    p.subscribe("a", slow)
    p.subscribe("a", other)
    thread = p._thread
    flood, pub = _flood(url, ns, "a", stop)
    try:
        assert busy.wait(20)  # a backlog builds up: the listener has always more to read
        p.unsubscribe("a", slow)  # (raised NetworkError "no answer" after 10 s)
        unsubscribed.set()
        p.close()
        closed.set()
        assert not thread.is_alive()  # (alive after close()'s 5 s: the stop was never seen)
        with pytest.raises(errors.NetworkError, match="closed"):
            p.subscribe("b", lambda ch, d: None)
    finally:
        stop.set()
        flood.join(10)
        pub.close()
        p.close()
    assert late == []


@pytest.mark.timeout(30)
def test_a_callback_unsubscribed_by_a_sibling_is_not_called_for_the_same_message(rp):
    order: list[str] = []
    done = threading.Event()

    def first(ch, d):
        order.append("first")
        rp.unsubscribe("a", second)  # (on the listener thread: done when this returns)

    def second(ch, d):
        order.append("second")

    def last(ch, d):
        order.append("last")
        done.set()

    rp.subscribe("a", first)
    rp.subscribe("a", second)
    rp.subscribe("a", last)
    assert rp.publish("a", 1) == 1
    assert done.wait(10)
    assert order == ["first", "last"]


@pytest.mark.timeout(30)
def test_close_from_a_callback_stops_the_delivery_of_that_message_and_the_next_ones(redis_ns):
    url, ns = redis_ns
    p = RedisPresence(url, ns)
    other = RedisPresence(url, ns)
    called: list[str] = []

    def closer(ch, n):
        called.append(f"closer {n}")
        p.close()
        try:
            p.subscribe("b", lambda ch, d: None)  # (from a callback too: the presence is closed)
        except errors.NetworkError as exc:
            called.append(f"raised {exc}")

    def after(ch, n):
        called.append(f"after {n}")

    try:
        p.subscribe("x", closer)
        p.subscribe("x", after)
        thread = p._thread
        pipe = other.r.pipeline(transaction=False)
        for i in range(20):  # (one round trip: they arrive together, read in one drain)
            pipe.publish(f"{ns}:ch:x", msgpack.packb(i))
        assert pipe.execute()[0] == 1
        thread.join(10)
        assert not thread.is_alive()
        assert len(called) == 2 and called[0] == "closer 0" and called[1].endswith("the presence is closed")
    finally:
        p.close()
        other.close()


@pytest.mark.timeout(30)
def test_a_later_subscribe_does_not_complete_on_the_confirmation_of_an_earlier_subscribe(redis_ns):
    """A callback subscribes to x (sent, not confirmed: a slow link), and
    unsubscribes again; another thread subscribes to x while that first
    confirmation is on its way back.  Its subscribe() returns on the
    confirmation of a SUBSCRIBE Redis still has: a message published right
    after it returned arrives.  (Before, an UNSUBSCRIBE was sent in between,
    the second SUBSCRIBE only after it, and the first confirmation completed
    the later subscribe(): the message came before Redis had it, lost.)"""
    url, ns = redis_ns
    host, port = url.split("//", 1)[1].rsplit("/", 1)[0].rsplit(":", 1)
    proxy = LagProxy(("127.0.0.1", 0), (host, int(port)), delay=0.05).start()
    slow = RedisPresence(f"redis://127.0.0.1:{proxy.addr[1]}/0", ns)
    direct = RedisPresence(url, ns)
    want_subscribe = threading.Event()
    got: queue.Queue = queue.Queue()
    problems: list[str] = []
    fd = [-1]

    def first(ch, d):
        pass

    def readable():
        r, _, _ = select.select([fd[0]], [], [], 0)
        return bool(r)

    def trigger(ch, d):
        try:
            slow.subscribe("x", first)  # inline: SUBSCRIBE sent, its confirmation 0.4 s away
            slow.unsubscribe("x", first)
            fd[0] = slow._conn.fileno()
            # Hold the listener until the confirmation is back, with another
            # subscribe("x") queued for it.
            wait_for(readable, timeout=10, what="the confirmation back on the socket")
            want_subscribe.set()
            wait_for(slow._reactor.has_pending, timeout=10, what="the subscribe request queued")
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            problems.append(repr(exc))
            want_subscribe.set()

    try:
        slow.subscribe("t", trigger)
        assert direct.publish("t", 0) == 1
        assert want_subscribe.wait(10)
        slow.subscribe("x", lambda ch, d: got.put(d))
        direct.publish("x", "right after")
        assert got.get(timeout=5) == "right after"
        assert problems == []
    finally:
        slow.close()
        direct.close()
        proxy.stop()


@pytest.mark.timeout(30)
def test_when_the_listener_thread_dies_requests_fail_at_once(rp):
    """SystemExit from a callback ends the listener thread: later requests
    raise NetworkError saying so (they waited 10 s for an answer before)."""
    rp.subscribe("a", lambda ch, d: (_ for _ in ()).throw(SystemExit("callback quit")))
    thread = rp._thread
    assert rp.publish("a", 1) == 1
    thread.join(10)
    assert not thread.is_alive()
    for op in (rp.subscribe, rp.unsubscribe):
        with pytest.raises(errors.NetworkError, match="listener thread ended .*SystemExit"):
            op("b", lambda ch, d: None)


@pytest.mark.timeout(30)
def test_a_connection_redis_py_replaced_by_itself_is_taken_as_lost_and_subscribed_again(redis_ns, caplog):
    """redis-py connects again by itself when a command is sent on a
    connection that went: the new socket (often with the old descriptor's
    number) is subscribed to nothing and not watched.  The listener takes
    it as a lost connection and subscribes again."""
    url, ns = redis_ns
    p = RedisPresence(url, ns)
    other = RedisPresence(url, ns)
    got: queue.Queue = queue.Queue()

    def replace(ch, d):
        p._conn.disconnect()  # (on the listener thread, as redis-py would do it inside a command)
        p._conn.connect()

    try:
        p.subscribe("a", lambda ch, d: got.put(d))
        p.subscribe("replace", replace)
        assert other.publish("replace", 1) == 1
        for _ in range(100):  # publish until heard (subscribed again after _RETRY_DELAY)
            other.publish("a", "again")
            try:
                if got.get(timeout=0.1) == "again":
                    break
            except queue.Empty:
                pass
        else:
            raise AssertionError("never subscribed again")
        assert any("the connection was replaced" in r.getMessage() for r in caplog.records)
    finally:
        p.close()
        other.close()


def test_close_says_the_listener_is_connecting_when_it_is(caplog, monkeypatch):
    """The listener is held in its connect (a "Redis" that accepts and
    never answers): close() gives up after its wait and its warning says
    what the thread is doing (it said "still in a callback"); once the
    connect fails the thread ends and the subscriber gets a NetworkError."""
    from peng3dnet.ext.rooms import redispresence as rp_mod

    monkeypatch.setattr(rp_mod, "_CLOSE_JOIN", 0.1)
    hole = socket.create_server(("127.0.0.1", 0))
    accepted: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: accepted.put(hole.accept()[0]), daemon=True).start()
    p = RedisPresence(f"redis://127.0.0.1:{hole.getsockname()[1]}/0", "ns")
    outcome: queue.Queue = queue.Queue()

    def subscriber():
        try:
            p.subscribe("a", lambda ch, d: None)
            outcome.put("subscribed")
        except errors.NetworkError as exc:
            outcome.put(str(exc))

    t = threading.Thread(target=subscriber, daemon=True)
    conn = None
    try:
        t.start()
        conn = accepted.get(timeout=10)
        wait_for(lambda: p._doing.startswith("connecting"), timeout=10, what="the listener connecting")
        thread = p._thread
        p.close()
        assert any(r.getMessage().startswith("presence: the listener thread is still busy (connecting to ")
                   for r in caplog.records)
        conn.close()  # its connect fails now
        thread.join(10)
        assert not thread.is_alive()
        assert outcome.get(timeout=10).startswith("redis at ")  # (a NetworkError: closed, or no answer)
    finally:
        if conn is not None:
            conn.close()
        hole.close()
        p.close()
