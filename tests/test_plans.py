"""The per-packet fast paths keep the general behaviour: cached event routes,
cached send/receive lookups (invalidated by registry changes), per-thread
msgpack packers, and the immutable PacketReceived output."""

from __future__ import annotations

import threading

import pytest

from peng3dnet import events
from peng3dnet.errors import LocalProtocolError, RegistryError
from peng3dnet.events.bus import Route
from peng3dnet.net import Client
from peng3dnet.packet import Packet
from peng3dnet.protocol.connection import PacketReceived
from peng3dnet.protocol.handshake import HandshakeState
from peng3dnet.registry import PacketRegistry
from tests.conftest import EchoPacket
from tests.helpers import Sink, active_cids, wait_for

# --- Route ---------------------------------------------------------------------------


class _Sender:
    pass


def test_route_tracks_subscriptions_per_sender():
    name = "peng3dnet:test.fastpath.route"
    a, b = _Sender(), _Sender()
    ra, rb = Route(name), Route(name)
    assert ra.refresh(a) == ()
    got: list = []

    def handler(event, data):
        got.append((event, data["n"]))

    events.subscribe(name, handler, sender=a)
    try:
        assert ra.cache[0] != ra.sig.version  # the cache knows it is stale
        (target,) = ra.refresh(a)
        assert rb.refresh(b) == ()  # another sender's route stays empty
        target(a, event=name, data={"n": 1})
        assert got == [(name, 1)]
        assert ra.cache[0] == ra.sig.version
    finally:
        assert events.unsubscribe(name, handler, sender=a)
    assert ra.cache[0] != ra.sig.version
    assert ra.refresh(a) == ()


def test_route_falls_back_for_receivers_it_cannot_cache():
    name = "peng3dnet:test.fastpath.weak"
    sender = _Sender()
    route = Route(name)
    got: list = []

    def direct(s, *, event, data):  # connected with blinker itself, weakly (its default)
        got.append(data)

    route.sig.connect(direct)
    try:
        assert route.refresh(sender) is None  # use emit(): it honours the weak reference
        events.emit(name, sender, {"n": 2})
        assert got == [{"n": 2}]
    finally:
        route.sig.disconnect(direct)
    assert route.refresh(sender) == ()


def test_events_follow_subscriptions_made_while_packets_flow(net):
    s, _ = net.server(process=False, record=None, **{"net.process.inline": True})
    c = net.client(s, process=False, **{"net.process.inline": True})
    seen: list = []

    def on_recv(event, data):
        if data["pid"] >= 64:
            seen.append(data["msg"])

    echo = c.registry.get_obj("test:echo")
    c.send_message("test:echo", 0)  # warm the caches with nobody listening
    assert echo.wait_count(1) == [0]  # the server handled it
    events.subscribe("peng3dnet:server.connection.recv", on_recv, sender=s)
    try:
        c.send_message("test:echo", 1)
        wait_for(lambda: seen == [1], what="the first event after subscribing")
        direct: list = []

        def blinker_receiver(sender, *, event, data):
            direct.append(data["msg"])

        sig = events.signal("peng3dnet:server.connection.recv")
        sig.connect(blinker_receiver, sender=s)  # not cacheable: the general path
        c.send_message("test:echo", 2)
        wait_for(lambda: seen == [1, 2] and direct == [2], what="both receivers")
        sig.disconnect(blinker_receiver, sender=s)
    finally:
        events.unsubscribe("peng3dnet:server.connection.recv", on_recv, sender=s)
    c.send_message("test:echo", 3)
    assert echo.wait_count(4) == [0, 1, 2, 3]  # the echoes prove 3 was handled
    assert seen == [1, 2]


# --- cached lookups and the registry version ------------------------------------------


def test_registry_version_changes_with_every_change():
    reg = PacketRegistry()
    v0 = reg.version
    reg.register(object(), "a:x")
    assert reg.version > v0
    v1 = reg.version
    reg.remap({"a:x": 70})
    assert reg.version > v1 and reg.get_id("a:x") == 70


def test_send_and_receive_plans_cached_before_the_remap_are_not_used(net):
    # The server numbers t:pad before t:x, the client the other way round:
    # the handshake swaps the client's ids 65 and 66.  Lookups cached before
    # must not survive that.
    s, _ = net.server(process=False, record=None, **{"net.process.inline": True})
    s_pad, s_x = Sink(s.registry, s), Sink(s.registry, s)
    s.register_packet("t:pad", s_pad)
    s.register_packet("t:x", s_x)
    c = Client(addr=s.addr, cfg={"net.process.inline": True})
    net.clients.append(c)
    c.register_packet("test:echo", EchoPacket(c.registry, c))
    c_pad, c_x = Sink(c.registry, c), Sink(c.registry, c)
    c.register_packet("t:x", c_x)
    c.register_packet("t:pad", c_pad)
    assert (c.registry.get_id("t:x"), c.registry.get_id("t:pad")) == (65, 66)
    c.initialize()  # registers the internal packets: no registry change after this but the remap
    c._send_plan("t:x")  # cached with the client's own numbering
    assert c._recv_plan(65)[1] is c_x
    c.runAsync()
    c.wait_for_connection(10)
    assert (c.registry.get_id("t:x"), c.registry.get_id("t:pad")) == (66, 65)
    c.send_message("t:x", "x to the server")
    assert s_x.wait_count(1) == ["x to the server"]
    (cid,) = active_cids(s)
    s.send_message("t:pad", "pad to the client", cid)  # id 65: the client's t:x before the remap
    s.send_message("t:x", "x to the client", cid)
    assert c_x.wait_count(1) == ["x to the client"]
    assert c_pad.wait_count(1) == ["pad to the client"]
    assert s_pad.got == []


# --- per-thread packers ------------------------------------------------------------


def test_concurrent_senders_each_get_their_messages_through_intact(net):
    s, _ = net.server(process=False, record=None, **{"net.process.inline": True, "net.limits.rate.packets": 0,
                                                     "net.limits.rate.bytes": 0})
    got: dict[int, list] = {}
    lock = threading.Lock()

    class Collect(Packet):
        def receive(self, msg, cid=None):
            with lock:
                got.setdefault(msg[0], []).append(msg[1:])

    s.register_packet("t:c", Collect(s.registry, s))
    c = net.client(s, process=False, packets={"t:c": Packet}, **{"net.process.inline": True})
    big = "B" * (300 * 1024)  # above the size after which a thread's packer is dropped
    n = 500

    def sender(t: int) -> None:
        for i in range(n):
            c.send_message("t:c", [t, i, big if i == n // 2 else "s%d" % i])

    threads = [threading.Thread(target=sender, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    wait_for(lambda: sum(len(v) for v in got.values()) == 4 * n, timeout=30, what="all messages")
    for t in range(4):
        assert got[t] == [[i, big if i == n // 2 else "s%d" % i] for i in range(n)]


# --- outputs ---------------------------------------------------------------------------


def test_packet_received_is_immutable_and_compares_by_value():
    o = PacketReceived(64, 0, [1], HandshakeState.ACTIVE)
    with pytest.raises(AttributeError):
        o.pid = 65  # type: ignore[misc]
    assert o == PacketReceived(64, 0, [1], HandshakeState.ACTIVE)
    assert (o.pid, o.flags, o.msg, o.state) == (64, 0, [1], HandshakeState.ACTIVE)


def test_send_plans_do_not_accept_keys_that_only_compare_equal(net):
    s, _ = net.server(process=False, record=None, **{"net.process.inline": True})
    c = net.client(s, process=False, **{"net.process.inline": True})
    pid = c.registry.get_id("test:echo")
    c.send_message(pid, "by id")  # caches the plan of the int id
    with pytest.raises(RegistryError):
        c.send_message(float(pid), "by a float")  # equal and same hash, but not a packet id
    c.send_message(pid, "by id again")
    assert c.registry.get_obj("test:echo").wait_count(2) == ["by id", "by id again"]


def test_an_unencodable_message_leaves_the_threads_packer_clean(net):
    s, _ = net.server(process=False, record=None, **{"net.process.inline": True})
    c = net.client(s, process=False, **{"net.process.inline": True})
    with pytest.raises(LocalProtocolError, match="cannot encode"):
        c.send_message("test:echo", [1, 2, object()])  # fails halfway through the list
    c.send_message("test:echo", [3])
    assert c.registry.get_obj("test:echo").wait_count(1) == [[3]]  # nothing of [1, 2 left behind


def test_a_thread_drops_its_packer_after_a_huge_message(net):
    import peng3dnet.plans as net_module

    s, _ = net.server(process=False, record=None, **{"net.process.inline": True})
    c = net.client(s, process=False, **{"net.process.inline": True})
    c.send_message("test:echo", "small")
    kept = net_module._LOCAL.pack
    c.send_message("test:echo", "small again")
    assert net_module._LOCAL.pack is kept  # reused, not rebuilt per message
    c.send_message("test:echo", "H" * (net_module.PACKER_KEEP + 1))
    assert not hasattr(net_module._LOCAL, "pack")  # its buffer is not kept for this thread
    c.send_message("test:echo", "after")
    echo = c.registry.get_obj("test:echo")
    got = echo.wait_count(4)
    assert got[0] == "small" and got[1] == "small again" and len(got[2]) == net_module.PACKER_KEEP + 1
    assert got[3] == "after"
