"""The ``peng3dnet`` command, run as ``python -m peng3dnet`` in subprocesses
(loopback only, port 0, bounded waits on output lines, no sleeps)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from typing import Any

import pytest

from peng3dnet.net import Client
from peng3dnet.packet import Packet
from tests.helpers import LineProcess, default_sigint

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
ENV = dict(os.environ, PYTHONPATH=ROOT)
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "peng3dnet", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


class Proc(LineProcess):
    """A long-running ``peng3dnet`` subcommand (see LineProcess)."""

    def __init__(self, *args: str) -> None:
        super().__init__([sys.executable, "-m", "peng3dnet", *args], cwd=ROOT, env=ENV, name=f"peng3dnet {args[0]}")

    close = LineProcess.kill


@pytest.fixture
def server():
    proc = Proc("serve", "--host", "127.0.0.1", "--port", "0")
    try:
        m = re.fullmatch(r"serving on 127\.0\.0\.1:(\d+)", proc.line())
        assert m, "unexpected first line"
        proc.port = int(m.group(1))  # type: ignore[attr-defined]
        yield proc
    finally:
        proc.close()


class Echo(Packet):
    def __init__(self, reg: Any, peer: Any) -> None:
        super().__init__(reg, peer)
        self.got: list[Any] = []
        self.cond = threading.Condition()

    def receive(self, msg: Any, cid: int | None = None) -> None:
        with self.cond:
            self.got.append(msg)
            self.cond.notify_all()

    def wait(self, n: int, timeout: float = 10) -> list[Any]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.got) >= n, timeout), self.got
            return list(self.got)


def echo_client(port: int) -> tuple[Client, Echo]:
    c = Client(addr=("127.0.0.1", port))
    echo = Echo(c.registry, c)
    c.register_packet("peng3dnet:echo", echo)
    c.runAsync()
    c.process_async()
    c.wait_for_connection(10)
    return c, echo


def one_error_line(out: subprocess.CompletedProcess) -> str:
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("peng3dnet: error: "), out.stderr
    assert "Traceback" not in out.stderr
    return lines[0]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ping_the_echo_server_as_json_and_as_a_table(server):
    out = cli("ping", f"127.0.0.1:{server.port}", "--json", "--timeout", "10")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 1
    info = json.loads(lines[0])
    assert info["address"] == f"127.0.0.1:{server.port}"
    assert info["name"] == "peng3dnet echo server"
    assert info["peng3dnet"]["protoversion"] == 2
    assert isinstance(info["delay"], float) and info["delay"] >= 0
    assert "recvtime" in info

    out = cli("ping", f"127.0.0.1:{server.port}")
    assert out.returncode == 0, out.stderr
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in out.stdout.splitlines())
    assert rows["address"] == f"127.0.0.1:{server.port}" and rows["delay"].endswith(" ms")
    assert rows["name"] == "peng3dnet echo server"
    assert server.stop() == 0


def test_ping_a_closed_port_fails_with_one_line():
    with socket.socket() as s:  # a port nobody listens on (bound, never listening)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        out = cli("ping", f"127.0.0.1:{port}", "--timeout", "5")
    assert out.returncode == 1
    assert f"127.0.0.1:{port}" in one_error_line(out)
    assert out.stdout == ""


def test_a_bad_address_is_a_usage_error():
    out = cli("ping", "host:notaport")
    assert out.returncode == 2
    assert "notaport" in one_error_line(out)
    out = cli("nosuchcommand")
    assert out.returncode == 2
    one_error_line(out)


def test_debug_shows_the_traceback():
    out = cli("--debug", "ping", "host:notaport")
    assert out.returncode != 0 and "Traceback" in out.stderr


def test_serve_sigterm_shuts_down_gracefully(server):
    c, echo = echo_client(server.port)
    try:
        c.send_message("peng3dnet:echo", {"hello": 1})
        assert echo.wait(1) == [{"hello": 1}]
        assert server.stop(signal.SIGTERM) == 0
        c.wait_for_close(10)
        assert c.close_reason == "servershutdown"
    finally:
        c.stop()
        c.join(5)


def test_serve_ctrl_c_exits_0(server):
    assert server.stop(signal.SIGINT) == 0
    assert "Traceback" not in server.stderr()


_OTHER_THREAD_SIGINT = r"""
import signal, sys, threading
from peng3dnet import cli

def worker():
    sys.stdin.readline()  # the test read the ready line
    signal.pthread_kill(threading.get_ident(), signal.SIGINT)  # delivered to this thread, not the main one

threading.Thread(target=worker, daemon=True).start()
cli._until_stopped("ready")
print("stopped", flush=True)
"""


def test_a_signal_taken_by_another_thread_still_stops_the_wait():
    """The kernel may deliver Ctrl-C to any thread of the process (the
    server's network thread, say): the main thread's wait must end all the
    same (it slept on in a lock wait, and `serve` hung now and then)."""
    p = subprocess.Popen([sys.executable, "-c", _OTHER_THREAD_SIGINT], cwd=ROOT, env=ENV, text=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=default_sigint)
    try:
        assert p.stdout.readline() == "ready\n"
        p.stdin.write("go\n")
        p.stdin.flush()
        out, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert (p.returncode, out, err) == (0, "stopped\n", "")


def test_serve_on_a_port_in_use_fails_with_one_line(server):
    out = cli("serve", "--host", "127.0.0.1", "--port", str(server.port))
    assert out.returncode == 1
    one_error_line(out)


def test_discover_with_nothing_there_exits_1():
    port = free_udp_port()
    out = cli("discover", "--addr", "127.0.0.1", "--port", str(port), "--timeout", "0.5")
    assert out.returncode == 1
    assert out.stdout == ""
    one_error_line(out)


def test_lagproxy_forwards_an_echo(server):
    proxy = None
    try:
        proxy = Proc("lagproxy", "127.0.0.1:0", f"127.0.0.1:{server.port}", "--delay", "10", "--seed", "1")
        m = re.match(r"lagproxy listening on 127\.0\.0\.1:(\d+) -> 127\.0\.0\.1:(\d+)", proxy.line())
        assert m and int(m.group(2)) == server.port
        c, echo = echo_client(int(m.group(1)))
        try:
            c.send_message("peng3dnet:echo", "through the proxy")
            assert echo.wait(1) == ["through the proxy"]
        finally:
            c.stop()
            c.join(5)
        assert proxy.stop(signal.SIGTERM) == 0
    finally:
        if proxy is not None:
            proxy.close()


def test_discover_finds_a_responder_on_loopback():
    from peng3dnet.ext.discovery import DiscoveryResponder
    from peng3dnet.ext.ping import PingableServerMixin
    from peng3dnet.net import Server

    class S(PingableServerMixin, Server):
        pingdata = {"name": "lan test"}

    s = S(addr=("127.0.0.1", 0))
    s.runAsync()
    resp = DiscoveryResponder(s, port=0, host="127.0.0.1").start()
    try:
        out = cli("discover", "--addr", "127.0.0.1", "--port", str(resp.addr[1]), "--timeout", "2", "--json")
        assert out.returncode == 0, out.stderr
        info = json.loads(out.stdout.splitlines()[0])
        assert info["port"] == s.addr[1] and info["name"] == "lan test" and info["host"] == "127.0.0.1"
        out = cli("discover", "--addr", "127.0.0.1", "--port", str(resp.addr[1]), "--timeout", "2")
        assert out.stdout.startswith(f"127.0.0.1:{s.addr[1]}  peng3dnet "), out.stdout
    finally:
        resp.stop()
        s.shutdown(timeout=5)


def test_python_dash_m_of_the_ping_module_pings():
    """``python -m peng3dnet.ext.ping`` warned (RuntimeWarning: the package
    had imported it) and exited 0 doing nothing; now it is the ping command."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        out = subprocess.run([sys.executable, "-W", "error", "-m", "peng3dnet.ext.ping", f"127.0.0.1:{port}",
                              "--timeout", "5"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "RuntimeWarning" not in out.stderr
    assert f"cannot ping 127.0.0.1:{port}" in one_error_line(out)


def test_python_dash_m_of_the_ping_module_with_a_server(server):
    out = subprocess.run([sys.executable, "-W", "error", "-m", "peng3dnet.ext.ping", f"127.0.0.1:{server.port}",
                          "--json"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["name"] == "peng3dnet echo server"
    assert server.stop() == 0
