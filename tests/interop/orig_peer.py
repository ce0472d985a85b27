"""Drive the ORIGINAL peng3dnet 0.1.3a0 (installed in its own virtualenv) as
an interop peer for our tests.  Run with that virtualenv's python:

    orig_peer.py server PORT        serve interop:echo + ping data until stdin closes
                                    (its handlers on its network thread: see S.receive_packet)
    orig_peer.py client PORT        classic session: send MESSAGES, expect echoes
    orig_peer.py ping PORT          pingServer, print the reply
    orig_peer.py connect PORT       connect, report whether the handshake completed

Each mode prints one JSON line on stdout (``READY`` first for the server).
This file only uses the original library's documented public API.
"""

import json
import os
import sys
import threading

os.environ.setdefault("PYGLET_SHADOW_WINDOW", "0")
import pyglet  # noqa: E402

pyglet.options["shadow_window"] = False

from peng3dnet import net  # noqa: E402
from peng3dnet.ext.ping import PingableServerMixin, pingServer  # noqa: E402
from peng3dnet.packet import Packet  # noqa: E402

MESSAGES = [
    {"i": 0, "x": 1.5, "name": "p0"},
    [1, "two", 3.25, None, True],
    "s2s2s2",
    {"blob": bytes([0, 1, 255]) * 10, "i": 3},
    {"big": "z" * 20000, "i": 4},
    5000015,
]


def server(port):
    class Echo(Packet):
        def receive(self, msg, cid=None):
            self.peer.send_message("interop:echo", msg, cid)

    class S(PingableServerMixin, net.Server):
        pingdata = {"name": "interop", "players": 3}

        def receive_packet(self, data, cid):
            # The echo race: with process_async(), the original's process
            # thread queues a reply (append, then "add EVENT_WRITE unless it is
            # there") while its network thread may be finishing the previous
            # write ("queue empty, so drop EVENT_WRITE"); neither step is
            # atomic with the other, and a reply queued in between stays
            # unsent until the next send (about one burst of six in a hundred
            # left its last echoes behind: the test waited its 15 s out).
            # Handling each packet here, on the network thread, right after
            # it was queued, leaves that thread the only one touching the
            # write queue and the selector.
            super().receive_packet(data, cid)
            self.process()

    s = S(addr=("127.0.0.1", port))
    s.register_packet("interop:echo", Echo(s.registry, s))
    s.runAsync()  # (no process_async(): see receive_packet)
    # The original binds inside its thread: wait until the port accepts.
    import socket
    import time

    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    print("READY", flush=True)
    sys.stdin.read()
    os._exit(0)


def client(port):
    got = []
    done = threading.Event()

    class Echo(Packet):
        def receive(self, msg, cid=None):
            got.append(msg)
            if len(got) >= len(MESSAGES):
                done.set()

    c = net.Client(addr=("127.0.0.1", port))
    c.register_packet("interop:echo", Echo(c.registry, c))
    c.runAsync()
    c.process_async()
    c.wait_for_connection(10)
    for m in MESSAGES:
        c.send_message("interop:echo", m)
    ok = done.wait(10)
    c.close("done")
    equal = sum(1 for a, b in zip(got, MESSAGES) if a == b)
    print(json.dumps({"handshake": True, "all": ok, "echoed_equal": equal, "n": len(got)}), flush=True)
    os._exit(0)


def connect(port):
    """Connect and report whether the handshake completed (a server that
    refuses us closes the connection instead)."""
    c = net.Client(addr=("127.0.0.1", port))
    c.register_packet("interop:echo", Packet(c.registry, c))
    c.runAsync()
    c.process_async()
    try:
        c.wait_for_connection(3)
        ok = True
    except Exception as exc:  # the original's own error type
        ok = type(exc).__name__
    print(json.dumps({"handshake": ok}), flush=True)
    os._exit(0)


def ping(port):
    r = pingServer(addr=("127.0.0.1", port), timeout=10)
    out = {k: v for k, v in r.items() if k in ("name", "players", "peng3dnet", "delay")}
    print(json.dumps(out), flush=True)
    os._exit(0)


if __name__ == "__main__":
    {"server": server, "client": client, "ping": ping, "connect": connect}[sys.argv[1]](int(sys.argv[2]))
