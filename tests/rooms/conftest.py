"""The redis fixtures (redis_url, redis_ns) live in tests/conftest.py;
``rp`` is a RedisPresence in the test's own namespace.  ``redis_cluster_url``
is a Redis Cluster of our own (three primaries, no replicas, on free
loopback ports; for the session) and ``rp_cluster`` a RedisPresence on it."""

from __future__ import annotations

import shutil
import socket
import subprocess

import pytest

from peng3dnet.ext.rooms.redispresence import RedisPresence
from tests.helpers import wait_for
from tests.rooms import RedisServer


@pytest.fixture
def rp(redis_ns):
    url, ns = redis_ns
    p = RedisPresence(url, ns)
    yield p
    p.close()


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        ports = [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()
    # (a node also listens on port + 10000, its cluster bus)
    if any(p + 10000 > 65535 for p in ports):
        return _free_ports(n)
    return ports


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory):
    import redis

    cli = shutil.which("redis-cli") or shutil.which("valkey-cli")
    if cli is None:
        pytest.fail("redis-cli is not installed: apt-get install redis-server (bash .ci/run does it)")
    nodes = []
    try:
        for port in _free_ports(3):
            d = tmp_path_factory.mktemp(f"cluster-{port}")
            nodes.append(RedisServer(port, d, "--cluster-enabled", "yes", "--cluster-config-file",
                                     f"nodes-{port}.conf", "--cluster-node-timeout", "2000").start())
        addrs = [f"127.0.0.1:{n.port}" for n in nodes]
        made = subprocess.run([cli, "--cluster", "create", *addrs, "--cluster-replicas", "0", "--cluster-yes"],
                              capture_output=True, text=True, timeout=30)
        assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]
        clients = [redis.Redis(host="127.0.0.1", port=n.port, socket_timeout=5) for n in nodes]
        try:  # every node agrees the cluster is up (it gossips the slots for a moment)
            wait_for(lambda: all(c.cluster("INFO").get("cluster_state") == "ok" for c in clients),
                     timeout=20, what="cluster_state:ok on every node")
        finally:
            for c in clients:
                c.close()
        yield f"redis://127.0.0.1:{nodes[0].port}"
    finally:
        for n in nodes:
            n.stop()


@pytest.fixture
def rp_cluster(redis_cluster_url, request):
    p = RedisPresence(redis_cluster_url, "t" + str(abs(hash(request.node.nodeid)))[:10], cluster=True)
    yield p
    p.close()
