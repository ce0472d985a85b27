"""The Presence contract, checked on both implementations alike:
LocalPresence (on a clock the test moves) and RedisPresence (our own
redis-server).  Exact values: which rooms a kind lists, how many seats a room
shows (its defaults when a key is missing), what a server's removal takes with
it, what a reservation does to an existing room, scores, subscriptions.

The TTL boundaries are checked exactly on LocalPresence's clock (an entry is
gone at its expiry, not a tick later); Redis's own expiry is exercised by
tests/rooms/test_redis.py."""

from __future__ import annotations

import logging
import queue
import threading

import msgpack
import pytest

from peng3dnet import errors
from peng3dnet.ext.rooms.presence import LocalPresence, Presence
from peng3dnet.ext.rooms.redispresence import RedisPresence
from tests.helpers import wait_for


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["local", "redis", "cluster"])
def store(request):
    if request.param == "local":
        yield LocalPresence(clock=Clock())
        return
    yield request.getfixturevalue("rp" if request.param == "redis" else "rp_cluster")


def numsub(p: RedisPresence, channel: str) -> int:
    """Subscribers of ``channel`` at Redis (on a cluster: every node's)."""
    if p.cluster:
        from redis.cluster import RedisCluster

        return int(p.r.pubsub_numsub(p._ch(channel), target_nodes=RedisCluster.ALL_NODES)[0][1])
    return int(p.r.pubsub_numsub(p._ch(channel))[0][1])


def room(server: str, kind: str, clients: int, max_clients: int, **extra) -> dict:
    return {"server": server, "kind": kind, "clients": clients, "max_clients": max_clients, **extra}


def by_id(rooms: list[dict]) -> dict[str, dict]:
    return {r["id"]: r for r in rooms}


# --- rooms and servers ---------------------------------------------------------------------------

def test_rooms_lists_the_kind_asked_on_live_servers_only(store: Presence):
    store.register_server("s1", {"addr": "h:1"}, ttl=60)
    # "a..." sorts (and is inserted) first: a room left out must not end the listing
    store.set_room("a-dead", room("gone", "duel", 0, 2), ttl=60)
    store.set_room("b-other", room("s1", "arena", 1, 8), ttl=60)
    store.set_room("c-duel", room("s1", "duel", 1, 2, title="x"), ttl=60)
    store.set_room("d-duel", room("s1", "duel", 0, 4), ttl=60)
    duels = by_id(store.rooms("duel"))
    assert sorted(duels) == ["c-duel", "d-duel"]
    assert duels["c-duel"] == {**room("s1", "duel", 1, 2, title="x"), "id": "c-duel", "seats": 1}
    assert duels["d-duel"]["seats"] == 4
    assert sorted(by_id(store.rooms("arena"))) == ["b-other"]
    assert sorted(by_id(store.rooms())) == ["b-other", "c-duel", "d-duel"]
    assert store.rooms("none of these") == []


def test_seats_are_max_minus_clients_minus_reservations_never_negative(store: Presence):
    store.register_server("s1", {}, ttl=60)
    store.set_room("r", room("s1", "k", 3, 5), ttl=60)
    assert by_id(store.rooms())["r"]["seats"] == 2
    assert store.reserve_seat("r", "seat-a", ttl=60) is True
    assert by_id(store.rooms())["r"]["seats"] == 1
    store.set_room("r", room("s1", "k", 6, 5), ttl=60)  # over-full (a server's max lowered): 0, not -2
    assert by_id(store.rooms())["r"]["seats"] == 0


def test_a_room_without_counts_has_no_clients_and_no_seats(store: Presence):
    store.register_server("s1", {}, ttl=60)
    store.set_room("no-max", {"server": "s1", "kind": "k", "clients": 0}, ttl=60)
    store.set_room("no-clients", {"server": "s1", "kind": "k", "max_clients": 3}, ttl=60)
    rooms = by_id(store.rooms("k"))
    assert rooms["no-max"]["seats"] == 0
    assert rooms["no-clients"]["seats"] == 3
    assert store.reserve_seat("no-max", "x", ttl=60) is False
    assert store.reserve_seat("no-clients", "x", ttl=60) is True
    assert by_id(store.rooms("k"))["no-clients"]["seats"] == 2
    store.set_room("one-seat", {"server": "s1", "kind": "k", "max_clients": 1}, ttl=60)
    assert store.reserve_seat("one-seat", "x", ttl=60) is True
    assert store.reserve_seat("one-seat", "y", ttl=60) is False


def test_unregistering_a_server_takes_its_rooms_and_their_seats_only(store: Presence):
    store.register_server("s1", {"n": 1}, ttl=60)
    store.register_server("s2", {"n": 2}, ttl=60)
    store.set_room("r1", room("s1", "k", 0, 2), ttl=60)
    store.set_room("r2", room("s2", "k", 0, 2), ttl=60)
    assert store.reserve_seat("r1", "x", ttl=60) and store.reserve_seat("r2", "y", ttl=60)
    store.unregister_server("s1")
    assert store.servers() == {"s2": {"n": 2}}
    assert [(r["id"], r["seats"]) for r in store.rooms()] == [("r2", 1)]
    # r1 made again by its server comes back empty: its old reservation went with it
    store.register_server("s1", {"n": 1}, ttl=60)
    store.set_room("r1", room("s1", "k", 0, 2), ttl=60)
    assert by_id(store.rooms())["r1"]["seats"] == 2
    store.unregister_server("nobody")  # no such server: nothing happens
    assert sorted(by_id(store.rooms())) == ["r1", "r2"]


def test_remove_room_takes_its_reservations(store: Presence):
    store.register_server("s1", {}, ttl=60)
    store.set_room("r", room("s1", "k", 0, 1), ttl=60)
    store.set_room("keep", room("s1", "k", 0, 1), ttl=60)
    assert store.reserve_seat("r", "x", ttl=60) and store.reserve_seat("keep", "x", ttl=60)
    store.remove_room("r")
    store.remove_room("never there")
    assert sorted(by_id(store.rooms())) == ["keep"]
    assert store.reserve_seat("r", "x", ttl=60) is False  # gone: no info, not made
    store.set_room("r", room("s1", "k", 0, 1), ttl=60)
    assert store.reserve_seat("r", "again", ttl=60) is True  # the old reservation did not survive the removal
    assert by_id(store.rooms())["keep"]["seats"] == 0


def test_reserving_with_info_makes_the_room_once(store: Presence):
    store.register_server("s1", {}, ttl=60)
    info = room("s1", "duel", 0, 2)
    assert store.reserve_seat("new", "a", ttl=60) is False
    assert store.rooms() == []  # no info: nothing made
    assert store.reserve_seat("new", "a", ttl=60, info=info) is True
    (made,) = store.rooms("duel")
    assert (made["id"], made["server"], made["kind"], made["seats"]) == ("new", "s1", "duel", 1)
    # the room exists now: a second info does not replace it (its max stays 2)
    assert store.reserve_seat("new", "b", ttl=60, info=room("s1", "duel", 0, 10)) is True
    assert store.reserve_seat("new", "c", ttl=60, info=room("s1", "duel", 0, 10)) is False
    store.release_seat("new", "a")
    store.release_seat("new", "a")  # twice: nothing more
    store.release_seat("elsewhere", "a")
    assert by_id(store.rooms())["new"]["seats"] == 1


def test_a_full_room_refuses_a_reservation_even_with_info(store: Presence):
    store.register_server("s1", {}, ttl=60)
    store.set_room("r", room("s1", "k", 2, 2), ttl=60)
    assert store.reserve_seat("r", "x", ttl=60, info=room("s1", "k", 0, 2)) is False
    store.set_room("r", room("s1", "k", 1, 2), ttl=60)
    assert store.reserve_seat("r", "x", ttl=60) is True
    assert store.reserve_seat("r", "y", ttl=60) is False


def test_claims(store: Presence):
    assert store.claim("t1", 60) is True
    assert store.claim("t1", 60) is False
    assert store.claim("t2", 60) is True


# --- messages -----------------------------------------------------------------------------------

def test_unsubscribe_leaves_the_other_subscribers(store: Presence):
    got: queue.Queue = queue.Queue()

    def a(ch, data):
        got.put(("a", ch, data))

    def b(ch, data):
        got.put(("b", ch, data))

    store.unsubscribe("chan", a)  # never subscribed: nothing happens
    store.subscribe("chan", a)
    store.subscribe("chan", b)
    store.unsubscribe("chan", a)
    store.unsubscribe("chan", a)
    store.unsubscribe("other", b)
    if isinstance(store, RedisPresence):
        wait_for(lambda: numsub(store, "chan") == 1, what="one subscription")
    assert store.publish("chan", {1: "int keys", "k": [1, 2.5, b"raw"]}) == 1
    assert got.get(timeout=10) == ("b", "chan", {1: "int keys", "k": [1, 2.5, b"raw"]})
    assert store.publish("nobody listens", 1) == 0
    store.unsubscribe("chan", b)
    if isinstance(store, RedisPresence):
        wait_for(lambda: numsub(store, "chan") == 0, what="no subscription")
    assert store.publish("chan", 2) == 0
    assert got.empty()


# --- shared data --------------------------------------------------------------------------------

def test_scores_add_and_top_orders_best_first(store: Presence):
    assert store.incr_score("board", "ann", 3) == 3.0
    assert store.incr_score("board", "ann", 4) == 7.0
    assert store.incr_score("board", "bob", 5) == 5.0
    assert store.incr_score("board", "bob", -1.5) == 3.5
    assert store.incr_score("other", "ann", 1) == 1.0  # its own set
    assert store.top("board") == [("ann", 7.0), ("bob", 3.5)]
    assert store.top("board", 1) == [("ann", 7.0)]
    assert store.top("nothing") == []
    for i in range(12):
        store.incr_score("many", f"m{i:02d}", i)
    assert [m for m, _ in store.top("many")] == [f"m{i:02d}" for i in range(11, 1, -1)]  # ten by default


def test_delete_takes_keys_and_sorted_sets(store: Presence):
    store.set("k", {1: "one", "two": [2]})
    store.set("keep", "x")
    store.incr_score("k", "m", 1)
    assert store.get("k") == {1: "one", "two": [2]}
    store.delete("k")
    assert store.get("k") is None and store.get("k", "dflt") == "dflt"
    assert store.top("k") == []
    assert store.get("keep") == "x"
    store.delete("never there")  # nothing to delete: nothing happens
    assert store.get("keep") == "x"


# --- LocalPresence's clock: expiry exactly at the TTL ---------------------------------------------

def test_local_entries_expire_exactly_at_their_ttl():
    clock = Clock()  # 1000.0; every time below is exact in binary
    p = LocalPresence(clock=clock)
    p.register_server("s", {"n": 1}, ttl=10)
    p.set_room("r", room("s", "k", 0, 2), ttl=5)
    p.set("key", "v", ttl=3)
    p.set("forever", "v")
    assert p.reserve_seat("r", "seat", ttl=2)
    clock.now = 1001.75
    assert by_id(p.rooms())["r"]["seats"] == 1
    clock.now = 1002.0  # the reservation's expiry
    assert by_id(p.rooms())["r"]["seats"] == 2
    clock.now = 1002.75
    assert p.get("key") == "v"
    clock.now = 1003.0
    assert p.get("key", "gone") == "gone"
    clock.now = 1004.75
    assert [r["id"] for r in p.rooms()] == ["r"]
    clock.now = 1005.0
    assert p.rooms() == [] and "s" in p.servers()
    clock.now = 1009.75
    assert "s" in p.servers()
    clock.now = 1010.0
    assert p.servers() == {}
    assert p.get("forever") == "v"


def test_local_claims_expire_exactly_and_stay_bounded():
    clock = Clock()
    p = LocalPresence(clock=clock)
    assert p.claim("t", 5)
    clock.now = 1004.75
    assert p.claim("t", 5) is False
    clock.now = 1000.0 + 5  # its expiry: usable again (a replay window is the TTL)
    assert p.claim("t", 5) is True
    # 100,000 claims are kept; the claim past that forgets the expired ones
    p2 = LocalPresence(clock=clock)
    start = clock.now
    for i in range(99_999):
        p2.claim(f"c{i}", 1)
    clock.now = start + 1  # all expired, exactly
    p2.claim("x", 60)
    assert len(p2._claims) == 100_000  # at the bound: nothing forgotten yet
    p2.claim("y", 60)
    assert sorted(p2._claims) == ["x", "y"]


def test_local_publish_calls_on_the_publishing_thread_in_order():
    p = LocalPresence()
    calls = []
    p.subscribe("c", lambda ch, d: calls.append(("first", ch, d, threading.current_thread())))
    p.subscribe("c", lambda ch, d: calls.append(("second", ch, d, threading.current_thread())))
    assert p.publish("c", 7) == 2
    me = threading.current_thread()
    assert calls == [("first", "c", 7, me), ("second", "c", 7, me)]


def test_local_ties_in_top_are_by_name():
    p = LocalPresence()
    for m in ("cy", "ann", "bob"):
        p.incr_score("z", m, 2)
    p.incr_score("z", "dee", 3)
    assert p.top("z") == [("dee", 3.0), ("ann", 2.0), ("bob", 2.0), ("cy", 2.0)]


# --- RedisPresence specifics ------------------------------------------------------------------------

def test_redis_servers_prunes_the_index_of_expired_ones(rp: RedisPresence):
    rp.register_server("live", {"a": 1}, ttl=60)
    rp.register_server("dying", {"a": 2}, ttl=60)
    rp.r.delete(rp._k("server", "dying"))  # as its TTL would
    assert rp.servers() == {"live": {"a": 1}}
    assert rp.r.smembers(rp._k("servers")) == {b"live"}


def test_redis_rooms_prunes_the_index_of_expired_ones(rp: RedisPresence):
    rp.register_server("s", {}, ttl=60)
    rp.set_room("a", room("s", "k", 0, 1), ttl=60)
    rp.set_room("b", room("s", "k", 0, 1), ttl=60)
    rp.r.delete(rp._k("room", "a"))
    assert [r["id"] for r in rp.rooms()] == ["b"]
    assert rp.r.smembers(rp._k("rooms")) == {b"b"}


def test_redis_keys_carry_the_namespace_and_ttls(rp: RedisPresence):
    rp.register_server("s", {}, ttl=30)
    rp.set_room("r", room("s", "k", 0, 2), ttl=20)
    rp.set("v", 1, ttl=10)
    rp.set("w", 1)
    assert rp.reserve_seat("r", "x", ttl=40)
    assert rp.claim("tok", 50)
    ns = rp.ns
    assert 29_000 < rp.r.pttl(f"{{{ns}}}:server:s") <= 30_000
    assert 19_000 < rp.r.pttl(f"{{{ns}}}:room:r") <= 20_000
    assert 9_000 < rp.r.pttl(f"{{{ns}}}:kv:v") <= 10_000
    assert rp.r.pttl(f"{{{ns}}}:kv:w") == -1  # no TTL
    assert 39_000 < rp.r.pttl(f"{{{ns}}}:seats:r") <= 40_000  # the reservations' set lives as long as its longest
    assert 49_000 < rp.r.pttl(f"{{{ns}}}:claim:tok") <= 50_000
    assert rp.r.hgetall(f"{{{ns}}}:room:r") == {b"info": msgpack.packb(room("s", "k", 0, 2)), b"max_clients": b"2",
                                             b"clients": b"0", b"server": b"s", b"kind": b"k"}
    assert rp.reserve_seat("made", "y", ttl=25, info=room("s", "duel", 0, 3))
    assert rp.r.hgetall(f"{{{ns}}}:room:made") == {b"info": msgpack.packb(room("s", "duel", 0, 3)), b"max_clients": b"3",
                                                b"clients": b"0", b"server": b"s", b"kind": b"duel"}
    assert 24_000 < rp.r.pttl(f"{{{ns}}}:room:made") <= 25_000
    assert rp.r.smembers(f"{{{ns}}}:rooms") == {b"r", b"made"}
    rp.remove_room("made")
    assert rp.r.exists(f"{{{ns}}}:room:made", f"{{{ns}}}:seats:made") == 0 and rp.r.smembers(f"{{{ns}}}:rooms") == {b"r"}
    rp.unregister_server("s")
    assert rp.r.exists(f"{{{ns}}}:server:s", f"{{{ns}}}:room:r", f"{{{ns}}}:seats:r") == 0
    assert rp.r.smembers(f"{{{ns}}}:servers") == set() and rp.r.smembers(f"{{{ns}}}:rooms") == set()


def test_redis_errors_name_the_server_and_the_cause():
    p = RedisPresence("redis://127.0.0.1:1/0")
    try:
        with pytest.raises(errors.NetworkError) as ei:
            p.claim("t", 1)
        assert "redis at redis://127.0.0.1:1/0: ConnectionError" in str(ei.value)
        with pytest.raises(errors.NetworkError):
            p.subscribe("c", lambda ch, d: None)
        with pytest.raises(errors.NetworkError):
            p.publish("c", 1)
    finally:
        p.close()


def test_redis_listener_survives_bad_messages_raising_subscribers_and_a_dropped_connection(rp, redis_ns, caplog):
    url, ns = redis_ns
    got: queue.Queue = queue.Queue()

    def bad(ch, data):
        raise RuntimeError("subscriber bug")

    rp.subscribe("c", bad)
    rp.subscribe("c", lambda ch, d: got.put((ch, d)))
    rp.subscribe("other", lambda ch, d: got.put(("other", d)))
    wait_for(lambda: rp.r.pubsub_numsub(f"{ns}:ch:c")[0][1] == 1, what="subscribed")
    caplog.set_level(logging.INFO, logger="peng3dnet.ext.rooms.redispresence")
    rp.r.publish(f"{ns}:ch:c", b"\xc1 not msgpack")  # someone else's bytes on our channel
    assert rp.publish("c", [1]) == 1
    assert got.get(timeout=10) == ("c", [1])
    assert rp.publish("other", "o") == 1
    assert got.get(timeout=10) == ("other", "o")
    messages = [r.getMessage() for r in caplog.records]
    assert "presence: undecodable message on c dropped" in messages
    assert "presence: subscriber of c raised" in messages
    thread = rp._thread
    assert thread is not None and thread.name == "peng3dnet presence" and thread.daemon
    # Redis drops the subscription's connection (this one only: the Redis is shared), the listener
    # says so and subscribes again
    host, port = rp._conn._sock.getsockname()[:2]  # (the listener's connection)
    assert rp.r.client_kill_filter(addr=f"{host}:{port}") == 1
    wait_for(lambda: rp.publish("c", "probe") == 1, timeout=15, what="subscribed again")
    wait_for(lambda: any(d == "probe" for _, d in _drain(got)), timeout=10, what="a message after the drop")
    lost = [r.getMessage() for r in caplog.records if "subscription lost" in r.getMessage()]
    assert lost and all(m.startswith("presence: subscription lost (") and m.endswith("); retrying")
                        and "(None)" not in m and "%s" not in m for m in lost), lost
    assert thread.is_alive()
    rp.close()
    thread.join(5)
    assert not thread.is_alive()


def _drain(q: queue.Queue) -> list:
    out = []
    while True:
        try:
            out.append(q.get_nowait())
        except queue.Empty:
            return out


def test_redis_defaults_namespace_and_time_outs(redis_url):
    p = RedisPresence(redis_url)
    try:
        assert p.ns == "peng3dnet" and p.url == redis_url
        kw = p.r.connection_pool.connection_kwargs
        assert (kw["socket_timeout"], kw["socket_connect_timeout"]) == (10, 5)  # a stalled Redis: 10 s per call at most
    finally:
        p.close()


def test_redis_a_room_made_by_a_reservation_without_counts_has_no_seat(rp: RedisPresence):
    assert rp.reserve_seat("m", "x", ttl=60, info={"note": 1}) is False  # no max_clients: no seat
    assert rp.r.hgetall(rp._k("room", "m")) == {b"info": msgpack.packb({"note": 1}), b"max_clients": b"0",
                                                 b"clients": b"0", b"server": b"", b"kind": b""}
    rp.set_room("n", {"max_clients": 2}, ttl=60)
    assert rp.r.hget(rp._k("room", "n"), "server") == b"" and rp.r.hget(rp._k("room", "n"), "kind") == b""


def test_redis_unsubscribing_one_channel_keeps_the_others_and_close_ends_the_subscriptions(rp, redis_ns):
    url, ns = redis_ns
    got: queue.Queue = queue.Queue()

    def cb(ch, data):
        got.put((ch, data))

    rp.subscribe("a", cb)
    rp.subscribe("b", cb)
    rp.unsubscribe("a", cb)
    wait_for(lambda: rp.r.pubsub_numsub(f"{ns}:ch:a", f"{ns}:ch:b") == [(f"{ns}:ch:a".encode(), 0),
                                                                        (f"{ns}:ch:b".encode(), 1)],
             what="b only")
    assert rp.publish("b", 1) == 1 and got.get(timeout=10) == ("b", 1)
    other = RedisPresence(url, ns)
    try:
        rp.close()  # without unsubscribing: its connection goes, and its subscription with it
        wait_for(lambda: other.r.pubsub_numsub(f"{ns}:ch:b")[0][1] == 0, what="no subscription after close")
    finally:
        other.close()


def test_redis_a_message_for_a_channel_without_callbacks_is_dropped_and_the_listener_lives_on(rp, redis_ns):
    url, ns = redis_ns
    got: queue.Queue = queue.Queue()
    rp.subscribe("gone", lambda ch, d: None)
    rp.subscribe("kept", lambda ch, d: got.put(d))
    wait_for(lambda: rp.r.pubsub_numsub(f"{ns}:ch:gone")[0][1] == 1, what="subscribed")
    forgot = threading.Event()

    def forget(ch, d):  # (on the listener thread, the owner of _subs): callbacks forgotten, Redis not told
        del rp._subs["gone"]
        forgot.set()

    rp.subscribe("ctl", forget)
    assert rp.publish("ctl", 0) == 1 and forgot.wait(10)
    assert rp.publish("gone", 1) == 1  # still subscribed at Redis: delivered to a listener with no callback
    assert rp.publish("kept", 2) == 1
    assert got.get(timeout=10) == 2
    assert rp._thread is not None and rp._thread.is_alive()
