"""Events reach a real peng3d.Peng through peng.sendEvent / addEventListener."""

from __future__ import annotations

import threading

import pyglet

pyglet.options["shadow_window"] = False  # import peng3d without a display
import peng3d  # noqa: E402

from peng3dnet.events.catalog import CATALOG  # noqa: E402
from peng3dnet.net import Client, Server  # noqa: E402
from tests.conftest import EchoPacket, Recorder  # noqa: E402
from tests.helpers import active_cids  # noqa: E402


class PengRecorder:
    def __init__(self, peng):
        self.items: list = []
        self.lock = threading.Lock()
        for name in CATALOG:
            peng.addEventListener(name, self.handler)  # kept alive by self (peng3d holds it strongly here)

    def handler(self, event, data):
        with self.lock:
            self.items.append((event, data))


def test_every_event_reaches_peng_in_the_same_order_as_the_bus():
    speng = peng3d.Peng()
    cpeng = peng3d.Peng()
    srec, crec = PengRecorder(speng), PengRecorder(cpeng)
    s = Server(peng=speng, addr=("127.0.0.1", 0), authenticate=lambda client, credentials: True)  # the auth event too
    s.register_packet("test:echo", EchoPacket(s.registry, s))
    bus_s = Recorder(s)
    s.runAsync()
    s.process_async()
    c = Client(peng=cpeng, addr=s.addr)
    c.register_packet("test:echo", EchoPacket(c.registry, c))
    bus_c = Recorder(c)
    try:
        c.runAsync()
        c.process_async()
        c.wait_for_connection(10)
        active_cids(s)
        c.send_message("test:echo", "hi")
        c.registry.get_obj("test:echo").wait_count(1)
        c.close("bye")
        c.join(10)
        bus_s.wait_for("peng3dnet:server.connection.close")
        s.shutdown(timeout=10)
        s.join(10)
    finally:
        bus_s.close()
        bus_c.close()
    assert [e for e, _ in srec.items] == bus_s.names()
    assert [e for e, _ in crec.items] == bus_c.names()
    assert {e for e, _ in srec.items} >= {n for n in CATALOG if n.startswith("peng3dnet:server.")} - {
        "peng3dnet:server.interrupt",
        "peng3dnet:server.connection.heartbeat",
        "peng3dnet:server.connection.suspended",  # a dropped socket of a resumable session (tests/test_session.py)
        "peng3dnet:server.connection.resumed",
    }
    for _, d in srec.items:
        assert d["peng"] is speng and d["server"] is s
    for _, d in crec.items:
        assert d["peng"] is cpeng and d["client"] is c
    recv = [d for e, d in crec.items if e == "peng3dnet:client.recv" and d["pid"] >= 64]
    assert [d["msg"] for d in recv] == ["hi"]


def test_peng_config_is_consulted_and_live():
    peng = peng3d.Peng()
    peng.cfg["net.compress.threshold"] = 10
    s = Server(peng=peng, addr=("127.0.0.1", 0), cfg={"net.compress.level": 1})
    assert s.cfg["net.compress.threshold"] == 10 and s.cfg["net.compress.level"] == 1
    peng.cfg["net.compress.threshold"] = 20
    assert s.cfg["net.compress.threshold"] == 20
    assert s.cfg["net.compress.enabled"] is True  # from the defaults
