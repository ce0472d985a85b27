"""The Redis directory through an outage (a LagProxy in front of
our redis-server stands for the network between them)."""

from __future__ import annotations

import pytest

from peng3dnet.ext.rooms import Room
from peng3dnet.ext.rooms.redispresence import RedisPresence
from peng3dnet.tools.lagproxy import LagProxy
from tests.rooms import room_server


def _proxied(redis_url):
    host_port = redis_url.split("//", 1)[1].rsplit("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    proxy = LagProxy(("127.0.0.1", 0), (host, int(port))).start()
    return proxy, f"redis://127.0.0.1:{proxy.addr[1]}/0"


@pytest.mark.timeout(60)
def test_stop_during_a_redis_outage_with_a_subscribed_channel_completes(redis_ns, net):
    url, ns = redis_ns
    proxy, purl = _proxied(url)
    presence = RedisPresence(purl, ns)
    try:
        rooms = room_server(net, presence, Room)
        rooms.subscribe("chat")
        proxy.stop()  # Redis unreachable from now on
        from tests.helpers import wait_for

        # the outage is noticed (the subscription's connection dropped), as
        # it is in any outage longer than a moment
        wait_for(lambda: presence._conn is None, timeout=10, what="the subscription lost")
        rooms.stop()  # documented: Redis errors are logged; stopping must still finish
        assert rooms._channels == set()
    finally:
        presence.close()


@pytest.mark.timeout(60)
def test_subscribe_retried_after_a_redis_outage_delivers_messages(redis_ns, net):
    import threading

    from peng3dnet import errors, events

    url, ns = redis_ns
    proxy, purl = _proxied(url)
    real_target = proxy.target
    presence = RedisPresence(purl, ns)
    direct = RedisPresence(url, ns)
    got = threading.Event()

    def on_msg(event, data):
        if data["channel"] == "chat" and data["data"] == "hello":
            got.set()

    try:
        rooms = room_server(net, presence, Room)
        events.subscribe("peng3dnet:cluster.message", on_msg, sender=rooms.server)
        port = proxy.addr[1]
        proxy.stop()  # Redis unreachable (connections refused)
        with pytest.raises(errors.NetworkError):
            rooms.subscribe("chat")  # documented: Redis errors raise NetworkError
        proxy = LagProxy(("127.0.0.1", port), real_target).start()  # Redis is back, same address
        rooms.subscribe("chat")  # the program retries
        for _ in range(50):  # Redis pub/sub keeps nothing: publish until heard (5 s)
            direct.publish("chat", "hello")
            if got.wait(0.1):
                break
        assert got.is_set(), "subscribed again after the outage, but no message on the channel arrives"
    finally:
        events.unsubscribe("peng3dnet:cluster.message", on_msg, sender=rooms.server)
        rooms.stop()
        direct.close()
        presence.close()
        proxy.stop()


class Ticker(Room):
    auto_dispose = False
    ticks = 0

    def on_tick(self, dt):
        type(self).ticks += 1


@pytest.mark.timeout(60)
def test_rooms_keep_ticking_while_redis_does_not_answer(redis_ns, net):
    import threading
    import time

    from peng3dnet.ext.rooms import RoomServer
    from peng3dnet.net import Server

    url, ns = redis_ns
    proxy, purl = _proxied(url)
    presence = RedisPresence(purl, ns)
    s = Server(cfg={"net.server.addr": ("127.0.0.1", 0)})
    net.servers.append(s)
    rooms = RoomServer(s, presence, tick_rate=20, ttl=0.6)  # a directory refresh every 0.2 s
    rooms.define("arena", Ticker)
    s.runAsync()
    try:
        rooms.create("arena", "lobby-1")
        rooms.start()
        proxy.stall(4.0)  # Redis stops answering (a partition): nothing refused, nothing answered
        start, t0 = Ticker.ticks, time.monotonic()
        deadline = t0 + 3.0
        idle = threading.Event()
        while time.monotonic() < deadline and Ticker.ticks - start < 20:
            idle.wait(0.05)  # (polling a counter; the bound is the deadline)
        got = Ticker.ticks - start
        # 20 Hz: about 60 ticks in 3 s; the directory being slow must not stop the game
        assert got >= 20, f"only {got} ticks in {time.monotonic() - t0:.1f} s while Redis stalled"
    finally:
        proxy.stop()
        rooms.stop()  # (Redis refused now: each call fails at once, logged)
        presence.close()
