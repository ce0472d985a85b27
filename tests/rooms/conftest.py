"""A real redis-server for the rooms tests: our own instance on a free
loopback port with its own data directory, stopped after the session.  No
redis-server: the tests that need it fail with a message saying how to get
it (.ci/run installs the apt package), they are not skipped."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    exe = shutil.which("redis-server") or shutil.which("valkey-server")
    if exe is None:
        pytest.fail("redis-server is not installed: apt-get install redis-server (bash .ci/run does it)")
    try:
        import redis
    except ImportError:
        pytest.fail("redis-py is not installed: pip install -e '.[test]' (bash .ci/run does it)")
    port = _free_port()
    data = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(data), "--daemonize", "no", "--protected-mode", "yes", "--loglevel", "notice"],
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

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if not ready.wait(15):
        proc.kill()
        proc.wait(5)
        pytest.fail(f"redis-server did not start on port {port}: {''.join(lines)[-2000:]}")
    url = f"redis://127.0.0.1:{port}/0"
    r = redis.Redis.from_url(url, socket_connect_timeout=1)
    assert r.ping()
    r.close()
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    reader.join(5)
    if proc.stdout is not None:
        proc.stdout.close()


@pytest.fixture
def redis_ns(redis_url, request):
    """A fresh key namespace per test on the shared instance."""
    return redis_url, "t" + str(abs(hash(request.node.nodeid)))[:10]
