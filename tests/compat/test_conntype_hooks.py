"""A connection type of the program's own keeps 0.1.x's semantics: its
``receive()`` returning a true value consumes the packet (no handler, no
``on_receive``), its ``send()`` returning a true value sends the packet
without ``on_send`` or the packet's send hook; ``send()`` sees the packet as
the program named it.  ``conntype_prog.py`` (a 0.1.x program) runs on ours and
on the original 0.1.3a0, and both must see the same steps."""

from __future__ import annotations

import json
import os
import socket
import subprocess

from tests.helpers import impl_command

HERE = os.path.dirname(os.path.abspath(__file__))
PROG = os.path.join(HERE, "conntype_prog.py")

SERVER_SEES = {  # per packet, in order: what the server ran for it
    **{name: ["ct.receive", "packet.receive", "on_receive"]
       for name in ("t:quiet", "t:loud", "t:silent", "t:pass", "t:none", "t:end")},
    "t:halt": ["ct.receive"],  # receive() -> True: consumed
    "t:one": ["ct.receive"],  # -> 1: true, consumed
}
CLIENT_SEES = [  # in order (all on the sending thread)
    ["ct.send", "t:quiet", "str"],  # send() -> True: sent quietly
    *[step for name in ("t:loud", "t:silent", "t:halt", "t:pass", "t:none", "t:one", "t:end")
      for step in (["ct.send", name, "str"], ["on_send", name], ["packet.send", name])],
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(impl: str) -> subprocess.Popen:
    cmd, env = impl_command(impl, PROG, _free_port())
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _result(proc: subprocess.Popen, impl: str) -> tuple[dict, list]:
    out, err = proc.communicate(timeout=60)
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    assert lines, f"{impl}: the program printed nothing; stderr:\n{err[-3000:]}"
    got = json.loads(lines[-1])
    assert got["ended"], f"{impl}: the last packet never reached the server: {got}"
    per_packet: dict[str, list] = {}
    for step in got["server"]:
        if step[1].startswith("t:"):  # (0.1.x also passes its internal packets to on_receive: documented)
            per_packet.setdefault(step[1], []).append(step[0])
            if step[0] == "ct.receive":
                assert step[2] == "int", step  # the id, as in 0.1.x
    client = [step[:3] if step[0] == "ct.send" else step[:2] for step in got["client"] if step[1].startswith("t:")]
    return per_packet, client


def test_a_connection_types_hooks_decide_as_in_0_1():
    procs: dict[str, subprocess.Popen] = {}
    try:
        for impl in ("ours", "orig"):
            procs[impl] = _start(impl)
        got = {impl: _result(proc, impl) for impl, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
    assert got["ours"] == (SERVER_SEES, CLIENT_SEES)
    assert got["orig"] == got["ours"]


def test_broadcast_asks_each_connections_type_too(net):
    """(Server.broadcast is ours: it follows send_message's rules per connection.)"""
    from peng3dnet.conntypes import ClassicConnectionType
    from peng3dnet.net import Client, ClientOnServer
    from peng3dnet.packet import Packet
    from tests.helpers import active_cids

    steps: list = []

    class Chooser(ClassicConnectionType):
        def send(self, data, pid, cid):
            steps.append(("ct.send", cid, pid))
            if cid == quiet_cid:
                return True
            if cid == broken_cid:
                raise ZeroDivisionError("a bug in the program's type")
            return False

    class Hooked(Packet):
        def send(self, msg, cid=None):
            steps.append(("packet.send", cid))

    class Cos(ClientOnServer):
        def on_send(self, ptype, data):
            steps.append(("on_send", self.cid))

    s, _ = net.server(record=None, clientcls=Cos, packets={"t:b": Hooked})
    s.addConnType("chooser", Chooser(s))
    for _ in range(3):
        c = Client(addr=s.addr, conntype="chooser")
        c.register_packet("test:echo", Packet(c.registry, c))
        c.register_packet("t:b", Packet(c.registry, c))
        c.addConnType("chooser", ClassicConnectionType(c))
        net.clients.append(c)
        c.runAsync()
        c.wait_for_connection(10)
    cids = sorted(active_cids(s, 3))
    quiet_cid, broken_cid, loud_cid = cids
    assert s.broadcast("t:b", "hi") == 3  # sent to all three
    per = {cid: [st[0] for st in steps if st[1] == cid] for cid in cids}
    assert per == {quiet_cid: ["ct.send"], broken_cid: ["ct.send", "on_send", "packet.send"],
                   loud_cid: ["ct.send", "on_send", "packet.send"]}
    assert {st[2] for st in steps if st[0] == "ct.send"} == {"t:b"}  # as the program named it
