"""COMPAT.md section 8: a program that never configures logging sees a
traceback on stderr when its handler, hook or event handler raises (the
library's own chatter stays silent); once the program configures logging the
same record takes that road, once."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import REPO

PROGRAM = r'''
import logging, sys
if sys.argv[1] == "configured":
    logging.basicConfig(stream=sys.stdout, level=logging.WARNING)
from peng3dnet import *
from peng3dnet import events
from peng3dnet.packet import Packet, PrintPacket

class Boom(Packet):
    def receive(self, msg, cid=None):
        raise ValueError("boom from a handler")

class Cos(ClientOnServer):
    def on_connect(self):
        raise KeyError("boom from a hook")

def on_accept(event, data):
    raise RuntimeError("boom from an event handler")

class FakePeng:  # what the library uses of a peng3d.Peng: cfg and sendEvent
    cfg = {}
    def sendEvent(self, event, data):
        if event == "peng3dnet:server.connection.accept":
            raise LookupError("boom from a peng3d event handler")

events.subscribe("peng3dnet:server.connection.accept", on_accept)
s = Server(FakePeng(), addr=("127.0.0.1", 0), clientcls=Cos)
for name, cls in (("t:boom", Boom), ("t:print", PrintPacket)):
    s.register_packet(name, cls(s.registry, s))
s.runAsync()
c = Client(addr=s.addr)
for name in ("t:boom", "t:print"):
    c.register_packet(name, Packet(c.registry, c))
c.runAsync()
c.wait_for_connection(10)
c.send_message("t:print", {"hello": 1})
c.send_message("t:boom", 1)
n = 0
while n < 2:
    n += s.process(wait=True, timeout=10)
c.close("bye")
s.stop()
s.join(10)
print("served", n)
'''


def run(mode: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": REPO, "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert "served 2" in out.stdout
    return out


BOOMS = ("ValueError: boom from a handler", "KeyError: 'boom from a hook'", "RuntimeError: boom from an event handler",
         "LookupError: boom from a peng3d event handler")


def test_without_logging_config_tracebacks_reach_stderr_and_nothing_else():
    out = run("bare")
    for boom in BOOMS:
        assert out.stderr.count(boom) == 1, out.stderr
    assert out.stderr.count("Traceback (most recent call last)") == 4
    assert "PrintPacket: cid=1 {'hello': 1}" in out.stderr  # PrintPacket prints
    # nothing of the library's own INFO chatter (connect, handshake, close)
    assert "handshake complete" not in out.stderr and "connection from" not in out.stderr


def test_with_logging_configured_each_traceback_appears_once_through_it():
    out = run("configured")
    for boom in BOOMS:
        assert out.stdout.count(boom) == 1, out.stdout
        assert boom not in out.stderr
