"""The client side: Client objects sharing one NetworkLoop thread."""

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


def test_the_loop_survives_a_server_closing_many_of_its_clients_at_once(net):
    """Clients leaving a shared loop from inside its queued calls must not
    kill the loop thread; each gets exactly one close and one stop event."""
    s, _ = net.server(record=None)
    loop = NetworkLoop().start()
    clients = []
    recs = []
    try:
        for _ in range(6):
            c = Client(addr=s.addr)
            c.register_packet("test:echo", EchoPacket(c.registry, c))
            recs.append(Recorder(c, "peng3dnet:client.*"))
            loop.add(c)
            c.process_async()
            clients.append(c)
        for c in clients:
            c.wait_for_connection(10)
        cids = list(s.clients)
        keep = cids[-1]
        for cid in cids[:-1]:  # the server kicks five at once
            s.close_connection(cid, "kick")
        for c in clients[:-1]:
            c.join(10)
        survivor = [c for c in clients if not c.closed]
        assert len(survivor) == 1 and loop._net_thread.is_alive()
        survivor[0].send_message("test:echo", "still served")
        assert survivor[0].registry.get_obj("test:echo").wait_count(1) == ["still served"]
        for c, rec in zip(clients, recs):
            if c is survivor[0]:
                continue
            names = rec.names()
            assert names.count("peng3dnet:client.close") == 1 and names.count("peng3dnet:client.stop") == 1, names
        assert keep in s.clients
    finally:
        for rec in recs:
            rec.close()
        loop.stop()


def test_stop_on_a_running_client_ends_its_loop_with_the_reason_method(net):
    s, _ = net.server(record=None)
    c = net.client(s)
    rec = net.recorder(c, "peng3dnet:client.*")
    c.stop()
    c.join(10)
    assert [d["reason"] for d in rec.wait_for("peng3dnet:client.stop")] == ["method"]
    assert [d["reason"] for d in rec.wait_for("peng3dnet:client.close")] == ["clientstop"]
