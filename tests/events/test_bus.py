"""The event bus: catalog order and keys, patterns, senders, errors, enable flag."""

from __future__ import annotations

import gc
import logging
import threading

import pytest

from peng3dnet import events
from peng3dnet.events.catalog import CATALOG
from peng3dnet.net import Client, Server
from tests.conftest import EchoPacket, Recorder, make_client, make_server
from tests.helpers import active_cids


def run_session(server_rec: Recorder | None = None):
    """One full session: connect, 1 message each way, client closes, server shuts down."""
    s = make_server()
    srec = Recorder(s)
    s.runAsync()
    s.process_async()
    c = make_client(s)
    crec = Recorder(c)
    c.runAsync()
    c.process_async()
    c.wait_for_connection(10)
    (cid,) = active_cids(s)
    c.send_message("test:echo", {"n": 1})
    c.registry.get_obj("test:echo").wait_count(1)
    c.close("bye")
    c.wait_for_close(10)
    c.join(10)
    srec.wait_for("peng3dnet:server.connection.close")
    s.shutdown(join=True, timeout=10)
    s.join(10)
    srec.close()
    crec.close()
    return s, c, srec, crec


def collapse(names: list[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        if not out or out[-1] != n:
            out.append(n)
    return out


def test_server_catalog_order_and_keys():
    s, c, srec, _ = run_session()
    names = srec.names()
    assert names[:3] == ["peng3dnet:server.initialize", "peng3dnet:server.bind", "peng3dnet:server.start"]
    assert names[-2:] == ["peng3dnet:server.stop", "peng3dnet:server.shutdown"]
    conn = [(e, d) for e, d in srec.items if ".connection." in e]
    kinds = [e.rsplit(".", 1)[1] for e, _ in conn]
    hs = kinds.index("handshakecomplete")
    assert kinds[0] == "accept" and kinds[-1] == "close" and kinds.count("close") == 1
    # internal packets before handshakecomplete, application packets between it and close
    for i, (e, d) in enumerate(conn):
        if e.endswith((".send", ".recv")):
            assert (d["pid"] < 64) == (i < hs) or d["pid"] == 16, (i, e, d["pid"])
    assert [d["pid"] for e, d in conn[:hs] if e.endswith((".send", ".recv"))] == [1, 2, 3, 4]
    assert [(e.rsplit(".", 1)[1], d["pid"], d.get("msg", d.get("data"))) for e, d in conn[hs + 1 : -1]] == [
        ("recv", 64, {"n": 1}),
        ("send", 64, {"n": 1}),
        ("recv", 16, {"reason": "bye"}),
    ]
    for e, d in srec.items:
        spec = CATALOG[e]
        assert d["server"] is s and d["peng"] is None
        assert set(spec.keys) <= set(d), (e, set(d))
    assert dict(srec.items)["peng3dnet:server.connection.close"]["reason"] == "bye"
    assert dict(srec.items)["peng3dnet:server.bind"]["addr"] == s.addr
    assert dict(srec.items)["peng3dnet:server.shutdown"] == {
        "reason": "servershutdown", "join": True, "timeout": 10, "peng": None, "server": s
    }


def test_client_catalog_order_and_keys():
    s, c, _, crec = run_session()
    assert collapse(crec.names()) == [
        "peng3dnet:client.initialize",
        "peng3dnet:client.connect",
        "peng3dnet:client.start",
        "peng3dnet:client.recv",  # hello
        "peng3dnet:client.send",  # settype
        "peng3dnet:client.recv",  # handshake
        "peng3dnet:client.send",  # accept
        "peng3dnet:client.handshakecomplete",
        "peng3dnet:client.send",  # app
        "peng3dnet:client.recv",  # echo
        "peng3dnet:client.send",  # closeconn
        "peng3dnet:client.close",
        "peng3dnet:client.stop",
    ]
    for e, d in crec.items:
        assert d["client"] is c and set(CATALOG[e].keys) <= set(d)
    d = dict(crec.items)
    assert d["peng3dnet:client.close"]["reason"] == "bye"
    assert d["peng3dnet:client.stop"]["reason"] == "connectionclosed"
    assert d["peng3dnet:client.connect"]["addr"] == s.addr


def test_pattern_and_sender_filtering_and_unsubscribe():
    s1 = make_server()
    s2 = make_server()
    all_binds: list = []
    only_s1: list = []
    class Exact:
        def __init__(self):
            self.got = []

        def on(self, e, d):
            self.got.append(e)

    ex = Exact()
    exact = ex.got

    def on_any(e, d):
        all_binds.append(d["server"])

    def on_s1(e, d):
        only_s1.append(e)

    events.subscribe("peng3dnet:server.b*", on_any)
    events.subscribe("peng3dnet:server.*", on_s1, sender=s1)
    events.subscribe("peng3dnet:server.bind", ex.on)  # exact name, a bound method
    try:
        s1.bind()
        s2.bind()
        assert all_binds == [s1, s2]
        assert only_s1 == ["peng3dnet:server.initialize", "peng3dnet:server.bind"]
        assert exact == ["peng3dnet:server.bind", "peng3dnet:server.bind"]
        assert events.unsubscribe("peng3dnet:server.b*", on_any)
        assert not events.unsubscribe("peng3dnet:server.b*", on_any)
        s1.sendEvent("peng3dnet:server.bind", {"addr": None})
        assert all_binds == [s1, s2]
        assert only_s1[-1] == "peng3dnet:server.bind"
    finally:
        events.unsubscribe("peng3dnet:server.*", on_s1, sender=s1)
        assert events.unsubscribe("peng3dnet:server.bind", ex.on)
        s1.shutdown()
        s2.shutdown()


def test_decorator_and_custom_events_match_later_patterns():
    got = []

    @events.subscribe("peng3dnet:mygame.*")
    def handler(event, data):
        got.append((event, data["x"]))

    try:
        assert handler.__name__ == "handler"  # decorator returns the function
        s = Server(addr=("127.0.0.1", 0))
        s.sendEvent("peng3dnet:mygame.scored", {"x": 3})  # a signal created after subscribing
        assert got == [("peng3dnet:mygame.scored", 3)]
    finally:
        events.unsubscribe("peng3dnet:mygame.*", handler)


def test_has_receivers_follows_subscriptions_and_patterns():
    name = "peng3dnet:mygame.hasreceivers"
    assert not events.has_receivers(name)  # unknown event: no signal, nobody listens

    def handler(event, data):
        pass

    events.subscribe("peng3dnet:mygame.has*", handler)  # a pattern counts too
    try:
        assert events.has_receivers(name)
    finally:
        events.unsubscribe("peng3dnet:mygame.has*", handler)
    assert not events.has_receivers(name)


def test_lambda_stays_and_weak_handler_vanishes():
    got = []
    strong = lambda e, d: got.append("strong")  # noqa: E731
    events.subscribe("peng3dnet:test.x", strong)
    strong_id = id(strong)
    del strong  # only the bus holds it now

    class Obj:
        def h(self, e, d):
            got.append("weak")

    o = Obj()
    events.subscribe("peng3dnet:test.x", o.h, weak=True)
    gc.collect()
    events.emit("peng3dnet:test.x", None, {})
    assert sorted(got) == ["strong", "weak"]
    del o
    gc.collect()
    got.clear()
    events.emit("peng3dnet:test.x", None, {})
    assert got == ["strong"]
    (sub,) = [x for x in events.bus._subs if x.pattern == "peng3dnet:test.x"]
    assert id(sub.handler) == strong_id
    assert events.unsubscribe("peng3dnet:test.x", sub.handler)


def test_raising_handler_is_logged_and_isolated(server, client_factory, caplog):
    calls = []

    def bad(e, d):
        raise RuntimeError("boom")

    def good(e, d):
        calls.append(e)

    events.subscribe("peng3dnet:client.recv", bad)
    events.subscribe("peng3dnet:client.recv", good)
    try:
        with caplog.at_level(logging.ERROR, logger="peng3dnet"):
            c = client_factory()
            c.wait_for_connection(10)
            c.send_message("test:echo", "x")
            assert c.registry.get_obj("test:echo").wait_count(1) == ["x"]  # connection fine
        assert "peng3dnet:client.recv" in calls
        assert any("boom" in (r.exc_text or "") or "raised" in r.getMessage() for r in caplog.records)
    finally:
        events.unsubscribe("peng3dnet:client.recv", bad)
        events.unsubscribe("peng3dnet:client.recv", good)


def test_events_disabled_emits_nothing():
    s = make_server(**{"net.events.enable": False})
    rec = Recorder(s)
    try:
        s.runAsync()
        c = Client(addr=s.addr)
        c.register_packet("test:echo", EchoPacket(c.registry, c))
        c.runAsync()
        c.wait_for_connection(10)
        c.stop()
        c.join(10)
        s.shutdown(timeout=5)
        assert rec.names() == []
    finally:
        rec.close()


def test_signal_attributes_and_docs():
    for name, spec in CATALOG.items():
        sig = getattr(events, spec.attr)
        assert sig is events.signal(name) and sig.name == name and sig.__doc__


def test_no_subscriber_no_data_dict(monkeypatch, server, client_factory):
    """With nobody listening, the per-packet path builds no event data."""
    c = client_factory()
    c.wait_for_connection(10)
    built = []
    orig = server._emit_conn

    def spy(*a, **k):
        built.append(a[0])
        return orig(*a, **k)

    monkeypatch.setattr(server, "_emit_conn", spy)
    c.send_message("test:echo", 1)
    c.registry.get_obj("test:echo").wait_count(1)
    assert not [b for b in built if b.endswith((".recv", ".send"))]


def test_threads_of_events(server, client_factory):
    threads = {}

    def h(e, d):
        threads.setdefault(e, threading.current_thread().name)

    events.subscribe("peng3dnet:client.*", h)
    try:
        c = client_factory()
        c.wait_for_connection(10)
        c.send_message("test:echo", 1)
        c.registry.get_obj("test:echo").wait_count(1)
    finally:
        events.unsubscribe("peng3dnet:client.*", h)
    main = threading.current_thread().name
    assert threads["peng3dnet:client.connect"] == main
    assert threads["peng3dnet:client.handshakecomplete"] == "peng3dnet Client Thread"
    assert threads["peng3dnet:client.recv"] == "peng3dnet Client Thread"
    assert threads["peng3dnet:client.send"] in ("peng3dnet Client Thread", main)


@pytest.fixture(autouse=True)
def _no_leftover_subscriptions():
    before = len(events.bus._subs)
    yield
    assert len(events.bus._subs) == before
