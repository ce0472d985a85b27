"""Many clients on one NetworkLoop thread."""

from __future__ import annotations

import threading

from peng3dnet.net import Client, NetworkLoop
from tests.conftest import EchoPacket, Recorder, make_server


def test_many_clients_on_one_thread():
    s = make_server()
    s.runAsync()
    s.process_async()
    loop = NetworkLoop().start()
    before = threading.active_count()
    clients = []
    try:
        for _ in range(30):
            c = Client(addr=s.addr)
            c.register_packet("test:echo", EchoPacket(c.registry, c))
            loop.add(c)
            c.process_async()
            clients.append(c)
        assert threading.active_count() == before + 30  # process threads only, no network thread each
        for i, c in enumerate(clients):
            c.wait_for_connection(10)
            c.send_message("test:echo", i)
        for i, c in enumerate(clients):
            assert c.registry.get_obj("test:echo").wait_count(1) == [i]
        # one client leaves; the others keep working
        rec = Recorder(clients[0], "peng3dnet:client.*")
        clients[0].close("bye")
        clients[0].join(10)
        assert rec.names()[-2:] == ["peng3dnet:client.close", "peng3dnet:client.stop"]
        rec.close()
        clients[1].send_message("test:echo", "again")
        assert clients[1].registry.get_obj("test:echo").wait_count(2)[-1] == "again"
    finally:
        loop.stop()
        for c in clients:
            c.join(5)
            assert c.closed
        s.shutdown(timeout=5)
