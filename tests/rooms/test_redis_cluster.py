"""RedisPresence on a Redis Cluster of our own (three primaries; see
conftest.py): the keys of a namespace share one slot, messages reach every
subscribed process (and publish() counts them), concurrent reservations,
and a lobby's matchmaking and a join through it.  The presence contract on
the cluster: tests/rooms/test_presence_contract.py (its "cluster" case)."""

from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from peng3dnet import errors
from peng3dnet.ext.rooms import Lobby, Room
from peng3dnet.ext.rooms.redispresence import RedisPresence
from tests.rooms import room_client, room_server


def test_a_namespace_is_one_slot_and_the_directory_works_across_it(rp_cluster):
    p = rp_cluster
    p.register_server("s", {"addr": "h:1"}, ttl=30)
    p.set_room("r", {"server": "s", "kind": "k", "clients": 0, "max_clients": 2}, ttl=30)
    assert p.reserve_seat("r", "x", ttl=30) and p.claim("tok", 30)
    p.set("v", 1)
    p.incr_score("board", "ann", 1)
    keys = [k.decode() for node in p.r.get_primaries() for k in node.redis_connection.keys(f"{{{p.ns}}}:*")]
    assert sorted(keys) == sorted(f"{{{p.ns}}}:{k}" for k in (
        "server:s", "servers", "room:r", "rooms", "seats:r", "claim:tok", "kv:v", "z:board"))
    assert len({p.r.keyslot(k) for k in keys}) == 1
    # (another namespace most likely lands elsewhere: the directory of each is one slot, not the cluster's)


def test_messages_reach_each_subscribed_process_once_and_are_counted(rp_cluster, redis_cluster_url):
    others = [RedisPresence(redis_cluster_url, rp_cluster.ns, cluster=True) for _ in range(2)]
    got: queue.Queue = queue.Queue()
    try:
        for i, o in enumerate(others):
            o.subscribe("news", lambda ch, d, i=i: got.put((i, d)))
        assert rp_cluster.publish("news", {"n": 1}) == 2
        assert rp_cluster.publish("news", "marker") == 2
        # once each: the marker, published after, comes right after it (one connection, in order)
        seen: dict[int, list] = {0: [], 1: []}
        while len(seen[0]) < 2 or len(seen[1]) < 2:
            i, d = got.get(timeout=10)
            seen[i].append(d)
        assert seen == {0: [{"n": 1}, "marker"], 1: [{"n": 1}, "marker"]}
    finally:
        for o in others:
            o.close()


def test_concurrent_reservations_on_the_cluster_grant_each_seat_once(rp_cluster, redis_cluster_url):
    p = rp_cluster
    p.register_server("srv", {"addr": "x:1"}, ttl=60)
    info = {"server": "srv", "kind": "big", "clients": 0, "max_clients": 20}
    others = [RedisPresence(redis_cluster_url, p.ns, cluster=True) for _ in range(2)]
    try:
        barrier = threading.Barrier(8)

        def reserve(i):
            if i < 8:
                barrier.wait(10)
            return others[i % 2].reserve_seat("room1", f"seat{i}", ttl=30, info=info)

        with ThreadPoolExecutor(8) as pool:
            assert sum(pool.map(reserve, range(40))) == 20
        (room,) = p.rooms("big")
        assert room["seats"] == 0 and room["id"] == "room1"
    finally:
        for o in others:
            o.close()


def test_the_namespace_is_the_keys_hash_tag_and_not_empty():
    with pytest.raises(ValueError, match="namespace"):
        RedisPresence("redis://127.0.0.1:1/0", "")  # ("{}" would not be a hash tag: keys spread over slots)
    p = RedisPresence("redis://127.0.0.1:1/0", "game")  # (no connection made yet)
    try:
        assert p._k("room", "x") == "{game}:room:x" and p._ch("news") == "game:ch:news"
    finally:
        p.close()


def test_an_unreachable_cluster_is_a_network_error():
    with pytest.raises(errors.NetworkError, match="redis at redis://127.0.0.1:1: RedisClusterException"):
        RedisPresence("redis://127.0.0.1:1", cluster=True)  # (asks for the slots at once)


class Match(Room):
    max_clients = 2


@pytest.mark.timeout(60)
def test_lobby_matchmakes_and_clients_join_through_the_cluster(rp_cluster, redis_cluster_url, net):
    secret = os.urandom(32)
    server_presence = RedisPresence(redis_cluster_url, rp_cluster.ns, cluster=True)  # (the server's process)
    try:
        rooms = room_server(net, server_presence, Match, secret=secret)
        lobby = Lobby(rp_cluster, secret)
        tickets = [lobby.matchmake("arena") for _ in range(3)]
        assert tickets[0]["room"] == tickets[1]["room"] != tickets[2]["room"]
        assert all(t["server"] == rooms.server_id for t in tickets)
        for t in tickets:
            assert room_client(net, t["addr"])[1].join(seat=t["token"])["room"] == t["room"]
        listed = {r["id"]: r for r in rp_cluster.rooms("arena")}
        assert listed[tickets[0]["room"]]["clients"] == 2 and listed[tickets[0]["room"]]["seats"] == 0
        assert listed[tickets[2]["room"]]["clients"] == 1
        rooms.stop()
        assert rp_cluster.rooms("arena") == [] and rooms.server_id not in rp_cluster.servers()
    finally:
        server_presence.close()
