"""RedisPresence's subscriptions (our own redis-server): subscribe() and
unsubscribe() from many threads while messages flow, the listener thread
idle on a selector (no polling), close(), an outage and a Redis restart."""

from __future__ import annotations

import queue
import socket
import sys
import threading

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
            returned.wait(0.5)  # (a correct unsubscribe() cannot return while this runs: a bound, not a sync)
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


def _listener_frames(thread):
    frame = sys._current_frames().get(thread.ident)
    out = []
    while frame is not None:
        out.append(frame)
        frame = frame.f_back
    return out


def _idle_on_selector(thread):
    # blocked in its Reactor's run_once() (peng3dnet.transport), in the selector's wait
    # (epoll's, a builtin: no frame of its own), with no time-out (wait=None)
    frames = _listener_frames(thread)  # innermost first
    names = [(f.f_code.co_name, f.f_code.co_filename.rsplit("/", 1)[-1]) for f in frames]
    if ("_run", "redispresence.py") not in names:
        return False
    i = 1 if names[0] == ("select", "selectors.py") else 0
    return names[i] == ("run_once", "transport.py") and frames[i].f_locals.get("wait", "?") is None


@pytest.mark.timeout(30)
def test_the_listener_waits_on_a_selector_without_a_time_out_and_close_ends_it_at_once(rp, redis_ns):
    got: queue.Queue = queue.Queue()
    rp.subscribe("a", lambda ch, d: got.put(d))
    thread = rp._thread
    assert thread is not None and thread.name == "peng3dnet presence" and thread.daemon
    # Idle: blocked in select() with no time-out (woken by Redis or by a request, never by a clock).
    wait_for(lambda: _idle_on_selector(thread), timeout=5, what="the listener idle in select(timeout=None)")
    assert rp.publish("a", 1) == 1 and got.get(timeout=10) == 1
    wait_for(lambda: _idle_on_selector(thread), timeout=5, what="idle again after a message")
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
