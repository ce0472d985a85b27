"""Main-thread delivery: MainThreadDispatcher with a real pyglet clock and window."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading

import pyglet
import pytest

pyglet.options["shadow_window"] = False
import pyglet.clock  # noqa: E402

from peng3dnet import events  # noqa: E402
from peng3dnet.events import MainThreadDispatcher  # noqa: E402
from peng3dnet.packet import Packet  # noqa: E402
from tests.conftest import Recorder, make_client, make_server  # noqa: E402
from tests.helpers import active_cids, wait_for  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def test_clock_delivery_in_order_on_main_thread_none_lost_or_doubled():
    clock = pyglet.clock.Clock()
    s = make_server()
    s.runAsync()
    s.process_async()
    c = make_client(s)
    direct = Recorder(c, "peng3dnet:client.*")  # network-thread view, emission order
    disp = MainThreadDispatcher()
    seen: list = []
    main = threading.get_ident()

    def on_event(event, data):
        seen.append((event, threading.get_ident() == main, data.get("msg")))

    disp.subscribe("peng3dnet:client.*", on_event, sender=c)
    disp.attach(clock)
    try:
        c.runAsync()
        c.process_async()
        c.wait_for_connection(10)
        active_cids(s)
        for i in range(200):
            c.send_message("test:echo", i)
        c.registry.get_obj("test:echo").wait_count(200)
        c.close("bye")
        c.join(10)
        n = len(direct.names())
        wait_for(lambda: disp.pending >= n, what="events queued")
        assert seen == []  # nothing ran off the main thread / before the tick
        clock.tick()
        assert [e for e, _, _ in seen] == direct.names()
        assert all(on_main for _, on_main, _ in seen)
        assert [m for e, _, m in seen if e == "peng3dnet:client.recv" and isinstance(m, int)] == list(range(200))
        clock.tick()
        assert len(seen) == n  # not run twice
    finally:
        disp.close()
        direct.close()
        s.shutdown(timeout=5)


def test_pump_processes_peers_and_respects_max_events():
    s = make_server()
    s.runAsync()
    s.process_async()
    got: list = []

    class Main(Packet):
        def receive(self, msg, cid=None):
            got.append((msg, threading.current_thread() is threading.main_thread()))

    from peng3dnet.net import Client

    c = Client(addr=s.addr)
    c.register_packet("test:echo", Main(c.registry, c))
    disp = MainThreadDispatcher(peers=[c])
    calls: list = []
    disp.subscribe("peng3dnet:client.recv", lambda e, d: calls.append(d["pid"]), sender=c)
    try:
        c.runAsync()  # no process_async: the dispatcher's pump runs the handlers
        c.wait_for_connection(10)
        active_cids(s)
        c.send_message("test:echo", "x")
        wait_for(lambda: c._inbox.items, what="packet queued")
        assert disp.pump(max_events=1) == 1
        assert got == [("x", True)]
        rest = disp.pump()
        assert len(calls) == 1 + rest
        assert disp.unsubscribe("peng3dnet:client.recv", disp._subs[0][3], sender=c)
    finally:
        disp.close()
        c.stop()
        c.join(5)
        s.shutdown(timeout=5)


def test_handlers_raising_on_main_thread_are_isolated(caplog):
    disp = MainThreadDispatcher()
    ran = []

    def bad(e, d):
        raise ValueError("nope")

    disp.subscribe("peng3dnet:test.dispatch", bad)
    disp.subscribe("peng3dnet:test.dispatch", lambda e, d: ran.append(e))
    try:
        events.emit("peng3dnet:test.dispatch", None, {})
        assert disp.pump() == 2 and ran == ["peng3dnet:test.dispatch"]
        assert "nope" in caplog.text
    finally:
        disp.close()


WINDOW_SCRIPT = textwrap.dedent(
    """
    import json, sys, threading
    import pyglet
    from peng3dnet.net import Server, Client
    from peng3dnet.packet import Packet
    from peng3dnet.events import attach_to_pyglet

    class Echo(Packet):
        def receive(self, msg, cid=None):
            if cid is not None:
                self.peer.send_message("w:echo", msg, cid)

    s = Server(addr=("127.0.0.1", 0)); s.register_packet("w:echo", Echo(s.registry, s))
    s.runAsync(); s.process_async()
    c = Client(addr=s.addr); c.register_packet("w:echo", Echo(c.registry, c))
    win = pyglet.window.Window(160, 120, caption="peng3dnet test")
    main = threading.get_ident()
    results = []

    def on_hs(event, data):
        results.append([event, threading.get_ident() == main])

    def on_srv_hs(event, data):
        for m in ("a", "b", "last"):
            s.send_message("w:echo", m, data["client"].cid)

    def on_recv(event, data):
        if data["pid"] >= 64:
            results.append([data["msg"], threading.get_ident() == main])
            if data["msg"] == "last":
                pyglet.app.exit()

    import peng3dnet.events as ev
    ev.subscribe("peng3dnet:server.connection.handshakecomplete", on_srv_hs, sender=s)
    net = attach_to_pyglet(c)
    net.subscribe("peng3dnet:client.handshakecomplete", on_hs)
    net.subscribe("peng3dnet:client.recv", on_recv)
    c.runAsync()
    pyglet.clock.schedule_once(lambda dt: pyglet.app.exit(), 30)  # safety net
    pyglet.app.run()
    print(json.dumps(results))
    c.stop(); c.join(5); s.shutdown(timeout=5)
    """
)


def test_window_app_run_delivers_on_main_thread(xvfb_display):
    env = dict(os.environ, DISPLAY=xvfb_display, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", WINDOW_SCRIPT], capture_output=True, text=True, timeout=90, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    assert results == [
        ["peng3dnet:client.handshakecomplete", True],
        ["a", True],
        ["b", True],
        ["last", True],
    ]


PENG_SCRIPT = ("""import json, threading
import pyglet
import peng3d
from peng3dnet.net import Server, Client
from peng3dnet.packet import Packet
from peng3dnet.events import attach_to_pyglet

class Echo(Packet):
    def receive(self, msg, cid=None):
        if cid is not None:
            self.peer.send_message("w:echo", msg, cid)

MODE = __import__("sys").argv[1]
s = Server(addr=("127.0.0.1", 0)); s.register_packet("w:echo", Echo(s.registry, s))
s.runAsync(); s.process_async()
peng = peng3d.Peng()
win = peng.createWindow(width=160, height=120, caption="peng3dnet test")
menu = peng3d.Menu("m", win, peng); win.addMenu(menu); win.changeMenu("m")
c = Client(peng=peng, addr=s.addr); c.register_packet("w:echo", Echo(c.registry, c))
main = threading.get_ident()
results = []

def on_hs(event, data):
    results.append([event, threading.get_ident() == main])
    c.send_message("w:echo", "last")

def on_recv(event, data):
    if data["pid"] >= 64:
        results.append([data["msg"], threading.get_ident() == main])
        pyglet.app.exit()

peng.addEventListener("peng3dnet:client.handshakecomplete", on_hs)
peng.addEventListener("peng3dnet:client.recv", on_recv)
if MODE == "poll":
    net = attach_to_pyglet(c, poll=True)
else:
    net = attach_to_pyglet(c, peng_events=(MODE == "thread"))
    c.runAsync()
pyglet.clock.schedule_once(lambda dt: pyglet.app.exit(), 30)  # safety net
pyglet.app.run()
print(json.dumps(results))
net.close()
c.stop()
if MODE == "poll":
    while c.run:
        c.poll(0.01)
else:
    c.join(5)
s.shutdown(timeout=5)
""")


@pytest.mark.parametrize("mode,on_main", [("thread", True), ("poll", True), ("direct", False)])
def test_peng_event_listeners_run_on_the_main_thread_when_asked(xvfb_display, mode, on_main):
    """A real Peng with a window: peng.addEventListener handlers get the
    peng3dnet events on the main thread with peng_events=True (threads) or
    poll=True (no thread at all); without either, on the network thread."""
    env = dict(os.environ, DISPLAY=xvfb_display, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", PENG_SCRIPT, mode], capture_output=True, text=True, timeout=90, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    assert results == [["peng3dnet:client.handshakecomplete", on_main], ["last", on_main]]
