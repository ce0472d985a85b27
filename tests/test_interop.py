"""Interop with the original peng3dnet 0.1.3a0, run in its own virtualenv.

.ci/run installs it and sets PENG3DNET_ORIG_PYTHON.  Without it these tests
fail with a message saying how to get it (nothing is skipped silently).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading

import pytest

from peng3dnet import events
from peng3dnet.errors import ConnectionClosedError, LocalProtocolError
from peng3dnet.ext.ping import PingableServerMixin, pingServer
from peng3dnet.net import Client, Server
from peng3dnet.packet import Packet
from tests.helpers import impl_command, wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
PEER = os.path.join(HERE, "interop", "orig_peer.py")
MESSAGES = [
    {"i": 0, "x": 1.5, "name": "p0"},
    [1, "two", 3.25, None, True],
    "s2s2s2",
    {"blob": bytes([0, 1, 255]) * 10, "i": 3},
    {"big": "z" * 20000, "i": 4},
    5000015,
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_peer(mode: str, port: int) -> dict:
    cmd, env = impl_command("orig", PEER, mode, port)  # no PYTHONPATH of ours leaks into its venv
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"original peer printed nothing; stderr:\n{out.stderr[-2000:]}"
    return json.loads(lines[-1])


class Echo(Packet):
    def receive(self, msg, cid=None):
        self.peer.send_message("interop:echo", msg, cid)


class PingServer(PingableServerMixin, Server):
    pingdata = {"name": "ours", "players": 5}


class _Serving:
    """A running server of ours with interop:echo, recording close reasons."""

    def __init__(self, server: Server) -> None:
        self.s = server
        self.closes: list = []
        server.register_packet("interop:echo", Echo(server.registry, server))
        events.subscribe("peng3dnet:server.connection.close", self._on_close, sender=server)
        server.runAsync()
        server.process_async()

    def _on_close(self, event, data):
        self.closes.append(data["reason"])

    def close(self) -> None:
        events.unsubscribe("peng3dnet:server.connection.close", self._on_close, sender=self.s)
        self.s.shutdown(timeout=5)


def test_original_client_against_our_server():
    srv = _Serving(PingServer(addr=("127.0.0.1", 0)))
    s, closes = srv.s, srv.closes
    try:
        r = run_peer("client", s.addr[1])
        assert r == {"handshake": True, "all": True, "echoed_equal": 6, "n": 6}
        # The client's close first (its process has exited, the server may
        # not have read the end yet): then closes[1] is the ping's.
        wait_for(lambda: len(closes) == 1, what="the client's close")
        r = run_peer("ping", s.addr[1])
        assert r["name"] == "ours" and r["players"] == 5 and r["peng3dnet"]["protoversion"] == 2
        assert r["delay"] >= 0
        wait_for(lambda: len(closes) == 2, what="both closes")
        # the original's ping client sends reason null
        assert closes[1] in (None, "pingcomplete")
    finally:
        srv.close()


def test_our_client_against_original_server():
    port = free_port()
    cmd, env = impl_command("orig", PEER, "server", port)  # no PYTHONPATH of ours leaks into it
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "READY", proc.stderr.read() if proc.stderr else line
        got: list = []
        done = threading.Event()

        class Rec(Packet):
            def receive(self, msg, cid=None):
                got.append(msg)
                if len(got) == len(MESSAGES):
                    done.set()

        # Credentials are never sent to a server that does not ask (the original cannot).
        c = Client(addr=("127.0.0.1", port), credentials={"user": "u", "password": "p"})
        c.register_packet("interop:echo", Rec(c.registry, c))
        c.runAsync()
        c.process_async()
        c.wait_for_connection(15)
        assert c.remote_version == "0.1.3a0" and not c.authenticated and "auth" not in c.extensions
        # An int map key would make the original close the connection: it is
        # refused here, in the sender's thread, and the connection stays.
        with pytest.raises(LocalProtocolError, match="map key 7"):
            c.send_message("interop:echo", {"ok": {7: "entity"}})
        # The original cannot answer calls: refused here, nothing sent.
        with pytest.raises(LocalProtocolError, match="does not support calls"):
            c.call("interop:echo", "question")
        for m in MESSAGES:
            c.send_message("interop:echo", m)
        assert done.wait(15)
        assert got == MESSAGES
        c.close("done")
        c.wait_for_close(10)
        c.join(10)
        r = pingServer(addr=("127.0.0.1", port), timeout=15)
        assert r["name"] == "interop" and r["players"] == 3
        assert r["peng3dnet"]["version"] == "0.1.3a0" and r["delay"] >= 0
    finally:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        for f in (proc.stdout, proc.stderr):
            if f:
                f.close()


def test_registry_mismatch_with_original_server():
    port = free_port()
    cmd, env = impl_command("orig", PEER, "server", port)
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True, env=env,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"
        c = Client(addr=("127.0.0.1", port))
        c.register_packet("something:else", Packet(c.registry, c))
        c.runAsync()
        with pytest.raises(ConnectionClosedError):
            c.wait_for_connection(15)
        assert c.close_reason == "packetregmismatch"
        c.join(10)
    finally:
        if proc.stdin:
            proc.stdin.close()
        proc.wait(10)
        if proc.stdout:
            proc.stdout.close()



def test_original_client_against_our_server_with_a_login_hook():
    """An original client cannot send credentials: refused with a clear reason,
    the hook is not called, the server goes on; the same client joins a
    server of ours without a hook (the feature off changes nothing)."""
    calls: list = []

    def hook(client, credentials):
        calls.append(credentials)
        return True

    srv = _Serving(Server(addr=("127.0.0.1", 0), authenticate=hook))
    s, closes = srv.s, srv.closes
    try:
        r = run_peer("connect", s.addr[1])
        assert r["handshake"] is not True
        wait_for(lambda: closes, what="the refusal")
        assert closes == ["auth:unsupported"] and calls == []
        ours = Client(addr=s.addr, credentials="pw")
        ours.register_packet("interop:echo", Echo(ours.registry, ours))
        ours.runAsync()
        ours.wait_for_connection(10)
        assert ours.authenticated and calls == ["pw"]
        ours.stop()
        ours.join(5)
    finally:
        srv.close()
    plain = Server(addr=("127.0.0.1", 0))
    plain.register_packet("interop:echo", Echo(plain.registry, plain))
    plain.runAsync()
    plain.process_async()
    try:
        assert run_peer("connect", plain.addr[1]) == {"handshake": True}
    finally:
        plain.shutdown(timeout=5)
