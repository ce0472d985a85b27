"""The directory on a real Redis (our own redis-server, see conftest.py):
presence, atomic seats, tokens, messages, leaderboards, and three server
processes (registration, SIGKILL and TTL expiry, matchmaking into them)."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from peng3dnet import errors
from peng3dnet.ext.rooms import Lobby
from peng3dnet.ext.rooms.redispresence import RedisPresence
from tests.helpers import REPO, wait_for
from tests.rooms import room_client


@pytest.fixture
def presence(rp):
    return rp


def test_servers_register_with_a_ttl(presence):
    presence.register_server("a", {"addr": "127.0.0.1:1", "kinds": {"x": 2}}, ttl=60)
    presence.register_server("b", {"addr": "127.0.0.1:2", "kinds": {"x": 2}}, ttl=0.3)
    assert set(presence.servers()) == {"a", "b"} and presence.servers()["a"]["kinds"] == {"x": 2}
    wait_for(lambda: set(presence.servers()) == {"a"}, timeout=5, what="b expired")
    presence.unregister_server("a")
    assert presence.servers() == {}


def test_two_hundred_concurrent_reservations_for_a_hundred_seats(presence, redis_ns):
    presence.register_server("srv", {"addr": "x:1", "kinds": {"big": 100}}, ttl=60)
    info = {"server": "srv", "kind": "big", "clients": 0, "max_clients": 100}
    url, ns = redis_ns
    others = [RedisPresence(url, ns) for _ in range(4)]  # several clients of Redis, as several processes would be
    try:
        barrier = threading.Barrier(20)

        def reserve(i):
            if i < 20:
                barrier.wait(10)
            return others[i % 4].reserve_seat("room1", f"seat{i}", ttl=30, info=info)

        with ThreadPoolExecutor(20) as pool:
            granted = sum(pool.map(reserve, range(200)))
        assert granted == 100
        (room,) = presence.rooms("big")
        assert room["seats"] == 0 and room["id"] == "room1"
        presence.release_seat("room1", "seat7")
        assert presence.rooms("big")[0]["seats"] == 1
        assert presence.reserve_seat("room1", "again", ttl=30) is True
        assert presence.reserve_seat("room1", "one too many", ttl=30) is False
    finally:
        for o in others:
            o.close()


def test_reservations_expire(presence):
    presence.register_server("srv", {"addr": "x:1", "kinds": {"k": 1}}, ttl=60)
    info = {"server": "srv", "kind": "k", "clients": 0, "max_clients": 1}
    assert presence.reserve_seat("r", "s1", ttl=0.3, info=info)
    assert not presence.reserve_seat("r", "s2", ttl=0.3)
    wait_for(lambda: presence.reserve_seat("r", "s3", ttl=30, info=info), timeout=5, what="the first reservation expired")


def test_claims_are_once(presence):
    assert presence.claim("tok", 30) is True
    assert presence.claim("tok", 30) is False
    assert presence.claim("other", 30) is True


def test_publish_reaches_each_subscriber_once(presence, redis_ns):
    url, ns = redis_ns
    subs = [RedisPresence(url, ns) for _ in range(3)]
    got: queue.Queue = queue.Queue()
    try:
        for i, s in enumerate(subs):
            s.subscribe("news", lambda ch, data, i=i: got.put((i, ch, data)))
        wait_for(lambda: presence.r.pubsub_numsub(f"{ns}:ch:news")[0][1] == 3, what="three subscriptions")
        assert presence.publish("news", {"n": 1}) == 3
        seen = sorted(got.get(timeout=10) for _ in range(3))
        assert seen == [(0, "news", {"n": 1}), (1, "news", {"n": 1}), (2, "news", {"n": 1})]
        assert presence.publish("news", {"n": 2}) == 3
        assert sorted(got.get(timeout=10)[0] for _ in range(3)) == [0, 1, 2]
        with pytest.raises(queue.Empty):
            got.get(timeout=0.3)  # once each: nothing more
    finally:
        for s in subs:
            s.close()


def test_shared_keys_and_leaderboard(presence):
    presence.set("motd", {"text": "hi"})
    assert presence.get("motd") == {"text": "hi"} and presence.get("nothing", 5) == 5
    presence.set("short", 1, ttl=0.2)
    wait_for(lambda: presence.get("short") is None, timeout=5, what="the key expired")
    for name, pts in (("ann", 3), ("bob", 5), ("ann", 4), ("cy", 1)):
        presence.incr_score("board", name, pts)
    assert presence.top("board", 2) == [("ann", 7.0), ("bob", 5.0)]
    presence.delete("board")
    assert presence.top("board") == []


def test_unreachable_redis_is_a_network_error():
    p = RedisPresence("redis://127.0.0.1:1/0")
    try:
        with pytest.raises(errors.NetworkError):
            p.servers()
    finally:
        p.close()


# --- three server processes ------------------------------------------------------------------


class Node:
    def __init__(self, url, ns, secret):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.rooms.node", url, ns, secret.hex()], cwd=REPO,
            env=dict(os.environ, PYTHONPATH=REPO), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        kind, self.id, port = self.lines.get(timeout=20).split()
        assert kind == "READY"
        self.port = int(port)

    def _read(self):
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def stop(self):
        try:
            self.proc.stdin.close()  # its signal to stop
        except BrokenPipeError:
            pass  # (killed)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        for f in (self.proc.stdout, self.proc.stderr):
            if f:
                f.close()


def test_three_processes(redis_ns, net):
    url, ns = redis_ns
    secret = os.urandom(32)
    nodes = [Node(url, ns, secret) for _ in range(3)]
    presence = RedisPresence(url, ns)
    try:
        wait_for(lambda: set(presence.servers()) == {n.id for n in nodes}, what="three servers registered")
        # Cross-process messages: each node gets each one once.
        assert presence.publish("news", {"k": "v"}) == 3
        for n in nodes:
            assert n.lines.get(timeout=10) == 'MSG news {"k": "v"}'
        # Matchmaking into the processes: 4 seats per room.
        lobby = Lobby(presence, secret)
        tickets = [lobby.matchmake("match") for _ in range(6)]
        assert len({t["room"] for t in tickets[:4]}) == 1 and tickets[4]["room"] != tickets[0]["room"]
        t0 = time.monotonic()
        for t in tickets:
            assert room_client(net, t["addr"])[1].join(seat=t["token"])["room"] == t["room"]
        joined_in = time.monotonic() - t0
        rooms = {r["id"]: r for r in presence.rooms("match")}
        assert rooms[tickets[0]["room"]]["clients"] == 4 and rooms[tickets[4]["room"]]["clients"] == 2
        # A used token is refused by its server.
        _, rc = room_client(net, tickets[0]["addr"])
        with pytest.raises(errors.RemoteCallError, match="used already"):
            rc.join(seat=tickets[0]["token"])
        # SIGKILL the node holding the first room: it leaves the directory within its TTL (1 s).
        victim = next(n for n in nodes if n.id == tickets[0]["server"])
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(10)
        wait_for(lambda: victim.id not in presence.servers(), timeout=5, what="the killed server expired")
        assert tickets[0]["room"] not in {r["id"] for r in presence.rooms("match")}
        again = lobby.matchmake("match")  # clients can ask the lobby again
        assert again["server"] != victim.id
        assert joined_in < 10
    finally:
        presence.close()
        for n in nodes:
            n.stop()
