"""Test helpers: a socket-free connection pair, vectors, and condition waits."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
from typing import Any, Callable

from peng3dnet.constants import SIDE_CLIENT, SIDE_SERVER
from peng3dnet.packet import Packet
from peng3dnet.packet.internal import INTERNAL_PACKETS
from peng3dnet.protocol.connection import ConnTypeRequested, Output, ProtocolConnection
from peng3dnet.registry import PacketRegistry

HERE = os.path.dirname(os.path.abspath(__file__))
VECTORS = os.path.join(HERE, "..", "..", "shared", "vectors", "original-0.1.3a0-sessions.json")


def load_vectors() -> dict[str, Any]:
    """The recorded sessions of the original library (shared/vectors)."""
    path = os.environ.get("PENG3DNET_VECTORS", VECTORS)
    if not os.path.exists(path):
        # CI lays shared/ beside the clone; a copy is kept in tests/ too.
        path = os.path.join(HERE, "vectors", "original-0.1.3a0-sessions.json")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def make_registry(*app_names: str) -> PacketRegistry:
    reg = PacketRegistry()
    for name, pid, cls in INTERNAL_PACKETS:
        reg.register(cls(reg, None), name, pid)
    for name in app_names:
        reg.register(object(), name)
    return reg


class ConnectionPair:
    """A server and a client ProtocolConnection wired together without sockets (h11 style).

    ``pump()`` moves bytes both ways until nothing moves, collecting each side's
    outputs.  The server side answers ``ConnTypeRequested("classic")`` with the
    handshake, like ClassicConnectionType does.
    """

    def __init__(self, server_names=("app:a",), client_names=("app:a",), **client_kw: Any) -> None:
        self.sreg = make_registry(*server_names)
        self.creg = make_registry(*client_names)
        self.server = ProtocolConnection(SIDE_SERVER, registry=self.sreg)
        self.client = ProtocolConnection(SIDE_CLIENT, registry=self.creg, **client_kw)
        self.s_out: list[Output] = []
        self.c_out: list[Output] = []
        self.auto_handshake = True

    def start(self) -> None:
        self.server.initiate()
        self.pump()

    def pump(self, chunk: int | None = None) -> None:
        for _ in range(100):
            moved = False
            data = self.server.data_to_send()
            if data:
                moved = True
                self._feed(self.client, data, chunk)
            self.c_out += self.client.drain_received()
            data = self.client.data_to_send()
            if data:
                moved = True
                self._feed(self.server, data, chunk)
            outs = self.server.drain_received()
            self.s_out += outs
            for o in outs:
                if isinstance(o, ConnTypeRequested) and o.conntype == "classic" and self.auto_handshake:
                    self.server.begin_handshake(self.sreg.mapping())
                    moved = True
            if not moved:
                return
        raise AssertionError("pump did not settle")

    @staticmethod
    def _feed(conn: ProtocolConnection, data: bytes, chunk: int | None) -> None:
        if chunk is None:
            conn.receive_data(data)
        else:
            for i in range(0, len(data), chunk):
                conn.receive_data(data[i : i + chunk])


def wait_for(pred: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Wait until ``pred()`` is truthy, sleeping on an Event between checks.

    For conditions we cannot subscribe to; prefer threading.Event where possible.
    """
    ev = threading.Event()
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out waiting for {what}")
        ev.wait(min(0.005, remaining))


def handler_thread(peer: Any) -> str:
    """Where a handler of ``peer`` runs now: ``"handlers"`` on a thread of
    its relay (runAsync(), a NetworkLoop, process_async()) while it is not
    the network thread (the relay runs handlers on any of them; see
    peng3dnet.relay), else the thread's name."""
    me = threading.current_thread()
    if me.ident in peer._relay.threads and not peer._reactor.in_loop():
        return "handlers"
    return me.name


def active_cids(server: Any, n: int = 1, timeout: float = 10.0) -> list[int]:
    """Wait until the server has ``n`` handshaken connections; return their cids.

    (A client's handshake completes one packet before the server's does.)
    """
    from peng3dnet.constants import STATE_ACTIVE, STATE_LOGGEDIN

    def ready() -> list[int] | None:
        cids = [cid for cid, c in list(server.clients.items()) if c.state in (STATE_ACTIVE, STATE_LOGGEDIN)]
        return cids if len(cids) >= n else None

    return wait_for(ready, timeout, f"{n} active connections")


REPO = os.path.abspath(os.path.join(HERE, ".."))


def orig_python() -> str:
    """The python of the virtualenv holding the original peng3dnet 0.1.3a0
    (.ci/run builds it); fails the test with a clear message without it."""
    import pytest

    default = os.path.join(REPO, ".venv-orig", "bin", "python")
    py = os.environ.get("PENG3DNET_ORIG_PYTHON") or default
    if not os.path.exists(py):
        pytest.fail(
            "PENG3DNET_ORIG_PYTHON is not set to a python with peng3dnet==0.1.3a0 installed; "
            "run `bash .ci/run` (it builds that virtualenv) or set it by hand"
        )
    return py


def impl_command(impl: str, script: str, *args: Any) -> tuple[list[str], dict[str, str]]:
    """Command line and environment to run ``script`` on one implementation:
    ``"ours"`` (this checkout first on the path) or ``"orig"`` (the original
    in its own virtualenv, with no PYTHONPATH of ours leaking into it)."""
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYGLET_SHADOW_WINDOW"] = "0"
    if impl == "ours":
        env["PYTHONPATH"] = REPO
        py = sys.executable
    elif impl == "orig":
        py = orig_python()
    else:
        raise ValueError(impl)
    return [py, script, *map(str, args)], env


class Sink(Packet):
    """Records every message it receives; ``wait_count(n)`` waits for ``n`` of them."""

    def __init__(self, reg: Any, peer: Any, obj: Any = None) -> None:
        super().__init__(reg, peer, obj)
        self.got: list = []
        self.cond = threading.Condition()

    def receive(self, msg: Any, cid: Any = None) -> None:
        with self.cond:
            self.got.append(msg)
            self.cond.notify_all()

    def wait_count(self, n: int, timeout: float = 10.0) -> list:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.got) >= n, timeout), f"got {len(self.got)} of {n}"
            return list(self.got)


def default_sigint() -> None:
    """(In a child before exec) SIGINT back to its default: a test run
    started in the background by a shell without job control ignores it,
    children inherit that, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class LineProcess:
    """A program in a subprocess whose stdout lines are read by a thread,
    so waiting for a line is bounded.  Lines taken are kept in ``lines``."""

    def __init__(self, cmd: list[str], *, cwd: str, env: dict[str, str], name: str | None = None) -> None:
        self.name = name or " ".join(cmd[1:3])
        self.p = subprocess.Popen(cmd, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  preexec_fn=default_sigint)
        self.lines: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self._q.put(line.rstrip("\n"))
        self._q.put(None)

    def line(self, timeout: float = 20) -> str:
        """The next line (without its newline)."""
        try:
            line = self._q.get(timeout=timeout)
        except queue.Empty:
            self.stop(signal.SIGKILL)
            raise AssertionError(f"{self.name}: no output line within {timeout} s; stderr: {self.stderr()}") from None
        if line is None:
            raise AssertionError(f"{self.name} ended; output {self.lines}; stderr: {self.stderr()}")
        self.lines.append(line)
        return line

    def wait_line(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        """The first line (taken already or next) matching ``pattern``."""
        rx = re.compile(pattern)
        for line in self.lines:
            m = rx.search(line)
            if m:
                return m
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.line(max(0.0, deadline - time.monotonic())))
            if m:
                return m

    def finish(self, timeout: float = 30) -> int:
        """Wait for the program to end (bounded); take the rest of its output."""
        try:
            code = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.name} still running after {timeout} s; output {self.lines}") from None
        self._reader.join(10)
        while True:
            try:
                line = self._q.get_nowait()
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
        return code

    def stderr(self) -> str:
        return self.p.stderr.read() if self.p.stderr is not None and self.p.poll() is not None else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        """Send ``sig`` and wait for the exit code (killed after ``timeout``)."""
        if self.p.poll() is None:
            self.p.send_signal(sig)
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            raise

    def kill(self) -> None:
        """Kill it if it still runs and close its pipes."""
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()
        for f in (self.p.stdout, self.p.stderr):
            if f is not None:
                f.close()


class FakeTimer:
    """What a fake reactor's ``call_later`` returns: the delay, the function,
    and whether it was cancelled."""

    def __init__(self, delay: float, fn: Callable[[], Any]) -> None:
        self.delay = delay
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class RedisServer:
    """A redis-server of a test's own on ``port`` (loopback, nothing saved):
    stopped and started again on the same port to stand for a Redis restart,
    or one node of a cluster (``*extra`` arguments)."""

    def __init__(self, port: int, data_dir: Any, *extra: str) -> None:
        import shutil

        exe = shutil.which("redis-server") or shutil.which("valkey-server")
        if exe is None:
            raise AssertionError("redis-server is not installed: apt-get install redis-server (bash .ci/run does it)")
        self.exe, self.port, self.dir, self.extra = exe, port, str(data_dir), extra
        self.proc: Any = None
        self.reader: Any = None
        self.url = f"redis://127.0.0.1:{port}/0"

    def start(self) -> RedisServer:
        import subprocess
        import threading

        self.proc = proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir, "--daemonize", "no", "--loglevel", "notice", *self.extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        ready = threading.Event()
        lines: list[str] = []

        def read() -> None:  # the server says when it accepts connections
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                if "Ready to accept connections" in line:
                    ready.set()

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()
        if not ready.wait(15):
            self.stop()
            raise AssertionError(f"redis-server did not start on port {self.port}: {''.join(lines)[-2000:]}")
        return self

    def stop(self) -> None:
        import subprocess

        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        self.reader.join(5)  # (at the end of its output)
        if proc.stdout is not None:
            proc.stdout.close()
