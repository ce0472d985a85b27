"""A 0.1.x program with a connection type of its own, run unchanged on
either implementation (``tests/compat/test_conntype_hooks.py`` compares
what it prints): which of the later steps run for a packet, by what the
type's ``receive()`` (server side) and ``send()`` (client side) return.

    python conntype_prog.py PORT

Prints one JSON line: the steps the server and the client saw, in order.
Only the client sends application packets, from its main thread, so the
original's own race on its write queue (a process thread answering while
its network thread writes) is not met.
"""

import json
import sys
import threading

from peng3dnet import conntypes, net
from peng3dnet.packet import Packet

# What the type's hooks return, by packet name: 0.1.x reads True as "stop here".
RECEIVE = {"t:halt": True, "t:pass": False, "t:none": None, "t:one": 1, "t:end": False}
SEND = {"t:quiet": True, "t:loud": False, "t:silent": None}
SENT = ["t:quiet", "t:loud", "t:silent", "t:halt", "t:pass", "t:none", "t:one", "t:end"]

server_seen = []
client_seen = []
done = threading.Event()


def name_of(reg, ptype):
    return ptype if isinstance(ptype, str) else reg.getName(ptype)


class Custom(conntypes.ClassicConnectionType):
    def receive(self, msg, pid, flags, cid):
        name = self.peer.registry.getName(pid)
        server_seen.append(["ct.receive", name, type(pid).__name__, msg])
        return RECEIVE.get(name, False)

    def send(self, data, pid, cid):
        client_seen.append(["ct.send", name_of(self.peer.registry, pid), type(pid).__name__, data])
        return SEND.get(name_of(self.peer.registry, pid), False)


class Recorded(Packet):
    def receive(self, msg, cid=None):
        if cid is not None:
            server_seen.append(["packet.receive", self.peer.registry.getName(self), msg])
            if msg == "end":
                done.set()

    def send(self, msg, cid=None):
        if cid is None:
            client_seen.append(["packet.send", self.peer.registry.getName(self), msg])


class Conn(net.ClientOnServer):
    def on_receive(self, ptype, msg):
        server_seen.append(["on_receive", name_of(self.server.registry, ptype), msg])


class Cli(net.Client):
    def on_send(self, ptype, msg):
        client_seen.append(["on_send", name_of(self.registry, ptype), msg])


def wait_listening(port):
    import socket
    import time

    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def register(peer):
    for name in SENT:
        peer.register_packet(name, Recorded(peer.registry, peer))


def main():
    port = int(sys.argv[1])
    s = net.Server(addr=("127.0.0.1", port), clientcls=Conn)
    register(s)
    s.addConnType("custom", Custom(s))
    s.runAsync()
    s.process_async()
    wait_listening(port)  # (the original binds inside its thread)
    c = Cli(addr=("127.0.0.1", port), conntype="custom")
    register(c)
    c.addConnType("custom", Custom(c))
    c.runAsync()
    c.process_async()
    c.wait_for_connection(20)
    for name in SENT:
        c.send_message(name, name.split(":")[1])
    ok = done.wait(20)
    print(json.dumps({"ended": ok, "server": server_seen, "client": client_seen}), flush=True)
    c.close()
    s.stop()


if __name__ == "__main__":
    main()
