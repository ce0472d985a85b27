"""RoomServer and Room outside the join call, unit by unit on a stand-in
server (no sockets): the defaults, what a room shows the directory, the
server's entry, the address it advertises, leaving (its answer, hook and
event), a synced room's own SyncServer, the threads' names, and what
stop() takes down (ticks, rooms, subscriptions, the directory entry)."""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
import time
from typing import Any

import pytest

from peng3dnet.errors import NetworkError
from peng3dnet.ext.rooms import LocalPresence, Room, RoomServer
from peng3dnet.ext.rooms.server import JOIN_PACKET, LEAVE_PACKET
from peng3dnet.ext.sync import INPUT_PACKET, SNAPSHOT_PACKET
from tests.rooms import FakeClient, FakeServer


class Pair(Room):
    max_clients = 2
    left: list = []

    def on_leave(self, client: Any) -> None:
        Pair.left.append((self.name, client))


class Kept(Pair):
    auto_dispose = False


class Synced(Room):
    synced = True


def _rooms(**kw: Any) -> tuple[RoomServer, FakeServer]:
    Pair.left = []
    server = FakeServer()
    for cid in range(1, 6):
        server.clients[cid] = FakeClient(cid)
    rooms = RoomServer(server, kw.pop("presence", None) or LocalPresence(), **kw)  # type: ignore[arg-type]
    rooms.define("pair", Pair)
    rooms.define("kept", Kept)
    return rooms, server


def test_defaults():
    rooms, server = _rooms()
    assert (rooms.tick_rate, rooms.ttl, rooms.max_rooms) == (20.0, 5.0, 1024)
    assert re.fullmatch(r"[0-9a-f]{12}", rooms.server_id)
    assert isinstance(rooms.secret, bytes) and len(rooms.secret) == 32
    assert rooms.stats == {"joins": 0, "leaves": 0, "created": 0, "disposed": 0, "refused": 0, "ticks": 0}
    assert set(server.handlers) == {JOIN_PACKET, LEAVE_PACKET}
    assert server.packets == {}  # no sync: no sync packets
    other, _ = _rooms()
    assert other.server_id != rooms.server_id and other.secret != rooms.secret
    given, _ = _rooms(server_id="me", secret=b"k" * 32, tick_rate=30, ttl=9, public_addr="example.org:7")
    assert (given.server_id, given.secret, given.tick_rate, given.ttl, given.public_addr) == \
        ("me", b"k" * 32, 30.0, 9.0, "example.org:7")


def test_a_room_shows_the_directory_its_server_kind_count_seats_address_and_birth():
    rooms, _ = _rooms(server_id="s1")
    before = time.time()
    room = rooms.create("pair", "p", {"x": 1})
    after = time.time()
    assert room.options == {"x": 1} and room.sync is None and room.members == {}
    assert before <= room.created <= after
    assert room.info() == {"server": "s1", "kind": "pair", "clients": 0, "max_clients": 2,
                           "addr": "127.0.0.1:4000", "created": room.created}
    rooms._join_call({"room": "p"}, 1)
    assert room.info()["clients"] == 1
    rooms.refresh()
    (listed,) = rooms.presence.rooms()
    assert listed == {**room.info(), "id": "p", "seats": 1}


def test_a_generated_room_name_needs_no_directory():
    class Down(LocalPresence):
        def rooms(self, kind=None):
            raise NetworkError("down")

    rooms, _ = _rooms(presence=Down())
    room = rooms.create("pair")
    assert re.fullmatch(r"pair-[0-9a-f]{8}", room.name) and rooms.rooms == {room.name: room}
    with pytest.raises(NetworkError):
        rooms.create("pair", "named")  # an explicit name is the cluster's: it must ask


@pytest.mark.parametrize(("bound", "advertised"), [
    (("0.0.0.0", 4000), "127.0.0.1:4000"), (("", 4001), "127.0.0.1:4001"), (("::", 4002), "127.0.0.1:4002"),
    (("10.1.2.3", 4003), "10.1.2.3:4003"), (("::1", 4004, 0, 0), "[::1]:4004"),
])
def test_the_advertised_address(bound, advertised):
    rooms, server = _rooms()
    server.addr = bound
    assert rooms.public_addr == advertised
    assert rooms.server_info()["addr"] == advertised


def test_the_servers_entry_counts_players_rooms_and_load():
    rooms, server = _rooms(public_addr="pub:1")
    rooms._join_call({"room": "a", "kind": "pair"}, 1)
    rooms._join_call({"room": "a"}, 2)
    rooms._join_call({"room": "b", "kind": "kept"}, 3)
    assert rooms.server_info() == {"addr": "pub:1", "kinds": {"pair": 2, "kept": 2}, "players": 3, "rooms": 2,
                                   "load": 3 / 100}
    server.cfg["net.limits.max_clients"] = 0  # no limit: the load is the players
    assert rooms.server_info()["load"] == 3.0
    rooms.refresh()
    assert rooms.presence.servers() == {rooms.server_id: rooms.server_info()}


def test_leaving_answers_whether_one_was_in_a_room_and_tells_the_room_and_the_bus():
    rooms, server = _rooms()
    leave = server.handlers[LEAVE_PACKET]
    assert leave(None, 1) is False
    rooms._join_call({"room": "k", "kind": "kept"}, 1)
    rooms._join_call({"room": "k"}, 2)
    server.events.clear()
    assert leave(None, 1) is True
    assert leave(None, 1) is False
    room = rooms.rooms["k"]
    assert Pair.left == [("k", server.clients[1])]
    assert server.events == [("peng3dnet:room.leave", {"room": room, "client": server.clients[1]})]
    assert rooms.stats["leaves"] == 1 and list(room.members) == [2]
    assert [(r["id"], r["clients"]) for r in rooms.presence.rooms()] == []  # (not refreshed: not listed)
    rooms.refresh()
    assert leave(None, 2) is True
    # auto_dispose False: the empty room stays, and the directory shows it empty
    assert rooms.rooms == {"k": room} and [(r["id"], r["clients"]) for r in rooms.presence.rooms()] == [("k", 0)]
    assert rooms.stats["leaves"] == 2


def test_the_last_member_leaving_disposes_an_auto_disposed_room():
    rooms, server = _rooms()
    rooms.refresh()
    rooms._join_call({"room": "p", "kind": "pair"}, 1)
    room = rooms.rooms["p"]
    server.events.clear()
    assert server.handlers[LEAVE_PACKET](None, 1) is True
    assert rooms.rooms == {} and rooms.presence.rooms() == []
    assert server.events == [("peng3dnet:room.leave", {"room": room, "client": server.clients[1]}),
                             ("peng3dnet:room.dispose", {"room": room})]
    assert (rooms.stats["disposed"], rooms.stats["created"]) == (1, 1)


def test_an_on_leave_that_raises_is_reported_and_the_client_still_leaves(caplog):
    class Raising(Room):
        def on_leave(self, client):
            raise RuntimeError("leave bug")

    rooms, server = _rooms()
    rooms.define("raising", Raising)
    rooms._join_call({"room": "r", "kind": "raising"}, 1)
    with caplog.at_level(logging.ERROR, logger="peng3dnet.user"):
        assert server.handlers[LEAVE_PACKET](None, 1) is True
    assert rooms.room_of(1) is None and rooms.rooms == {}
    assert [r.getMessage() for r in caplog.records if r.name == "peng3dnet.user"] == \
        ["! rooms: on_leave of r raised"]


def test_a_synced_room_has_its_own_sync_for_its_members_at_the_rooms_rate():
    rooms, server = _rooms(sync=True, tick_rate=25)
    assert set(server.packets) == {SNAPSHOT_PACKET, INPUT_PACKET}
    for packet in server.packets.values():
        assert packet.reg is server.registry and packet.peer is server
    rooms.define("synced", Synced)
    room = rooms.create("synced", "s")
    assert room.sync is not None and room.sync.server is server and room.sync.tick_rate == 25.0
    rooms._join_call({"room": "s"}, 3)
    assert room.sync.members is not None and list(room.sync.members()) == [3]


def test_start_names_its_threads_and_stop_takes_everything_down():
    presence = LocalPresence()
    rooms, server = _rooms(presence=presence, tick_rate=200)
    ticked = threading.Event()

    class Ticking(Room):
        def on_tick(self, dt):
            ticks.put(dt)
            ticked.set()

    ticks: queue.Queue = queue.Queue()
    rooms.define("ticking", Ticking)
    before = set(threading.enumerate())
    t = rooms.start()
    started = {th.name: th for th in set(threading.enumerate()) - before}
    assert set(started) == {"peng3dnet rooms", "peng3dnet rooms directory"}
    assert t is started["peng3dnet rooms"] and all(th.daemon for th in started.values())
    assert rooms.server_id in presence.servers()
    try:
        rooms.create("ticking", "t")
        rooms._join_call({"room": "t"}, 1)
        rooms.subscribe("news")
        assert ticked.wait(10)
        assert ticks.get_nowait() == 1 / 200  # each tick's dt is the period
    finally:
        rooms.stop()
    assert not any(th.is_alive() for th in started.values())
    assert rooms.rooms == {} and rooms.room_of(1) is None
    assert presence.servers() == {} and presence.rooms() == []
    assert presence.publish("news", 1) == 0  # unsubscribed


def test_stop_leaves_anyway_when_the_directory_is_down(caplog):
    class Down(LocalPresence):
        def unregister_server(self, server_id):
            raise NetworkError("directory down")

        def unsubscribe(self, channel, callback):
            raise NetworkError("directory down")

    rooms, _ = _rooms(presence=Down())
    rooms.subscribe("c")
    rooms.create("pair", "p")
    with caplog.at_level(logging.WARNING, logger="peng3dnet.ext.rooms.server"):
        rooms.stop()
    assert rooms.rooms == {}
    messages = [r.getMessage() for r in caplog.records if r.name == "peng3dnet.ext.rooms.server"]
    assert "rooms: cannot unsubscribe from c: directory down" in messages
    assert "rooms: cannot leave the directory: directory down" in messages


# --- the room's tools, sync inputs, counts ---------------------------------------------------------

def test_broadcast_goes_to_the_members_and_inputs_to_the_senders_synced_room_only():
    rooms, server = _rooms(sync=True)
    rooms.define("synced", Synced)
    rooms._join_call({"room": "p", "kind": "pair"}, 1)
    rooms._join_call({"room": "p"}, 2)
    assert rooms.rooms["p"].broadcast("chat", {"t": "hi"}) == 2
    assert server.broadcasts == [("chat", {"t": "hi"}, [1, 2])]
    route = server.packets[INPUT_PACKET]
    got = []
    room = rooms.create("synced", "s")
    room.sync.input_received = lambda cid, msg: got.append((cid, msg))  # type: ignore[method-assign]
    rooms._join_call({"room": "s"}, 3)
    route.receive({"in": 1}, None)  # no sender
    route.receive({"in": 2}, 4)  # in no room
    route.receive({"in": 3}, 1)  # in a room without sync
    route.receive({"in": 4}, 3)
    assert got == [(3, {"in": 4})]


def test_counts_and_a_synced_rooms_tick_length():
    rooms, _ = _rooms(sync=True)
    rooms.define("synced", Synced)
    room = rooms.create("synced", "s")
    steps = []
    room.sync.on_step = lambda dt, tick: steps.append((dt, tick))
    rooms.create("pair", "a")
    rooms.step(0.25)
    rooms.step()
    assert steps == [(0.25, 1), (1 / 20, 2)] and rooms.stats["ticks"] == 2
    rooms.dispose(rooms.rooms["a"])
    rooms.dispose(room)
    assert rooms.stats["disposed"] == 2 and rooms.stats["created"] == 2


def test_directory_failures_are_logged_with_the_room_and_the_cause(caplog):
    class Down(LocalPresence):
        down = False

        def set_room(self, room_id, info, ttl):
            if self.down:
                raise NetworkError("down")
            super().set_room(room_id, info, ttl)

        def remove_room(self, room_id):
            if self.down:
                raise NetworkError("down")
            super().remove_room(room_id)

        def release_seat(self, room_id, seat_id):
            if self.down:
                raise NetworkError("down")
            super().release_seat(room_id, seat_id)

    presence = Down()
    rooms, _ = _rooms(presence=presence)
    rooms.refresh()
    rooms._join_call({"room": "p", "kind": "kept"}, 1)
    presence.down = True
    with caplog.at_level(logging.WARNING, logger="peng3dnet.ext.rooms.server"):
        rooms._join_call({"room": "p"}, 2)  # its count cannot be published: its reservation is kept
        rooms._write_entry("p")
        rooms._write_entry("gone")
        rooms._release("p", "x")
    presence.down = False
    assert [r.getMessage() for r in caplog.records if r.name == "peng3dnet.ext.rooms.server"] == [
        "rooms: cannot publish p in the directory: down", "rooms: cannot publish p in the directory: down",
        "rooms: cannot remove gone in the directory: down", "rooms: cannot release a seat of p: down"]
    (listed,) = presence.rooms()
    assert (listed["clients"], listed["seats"]) == (1, 0)  # the directory's count is old; the seat held for 2


def test_a_refresh_that_stop_overtakes_takes_the_server_out_again():
    written = []

    class Slow(LocalPresence):
        armed = False

        def set_room(self, room_id, info, ttl):
            super().set_room(room_id, info, ttl)
            if self.armed:
                written.append(room_id)
                rooms._stop.set()  # stop() comes while the refresh writes its rooms

    presence = Slow()
    rooms, _ = _rooms(presence=presence)
    rooms.create("kept", "a")
    rooms.create("kept", "b")
    presence.armed = True
    rooms.refresh()
    assert written == ["a"]  # the rooms after stop() are not written
    assert presence.servers() == {}


# --- the threads' pace -----------------------------------------------------------------------------

def _thread_cpu(thread: threading.Thread) -> float:
    """CPU seconds a thread of this process has used (Linux: /proc)."""
    with open(f"/proc/self/task/{thread.native_id}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def test_the_rooms_and_directory_threads_wait_between_rounds():
    class Counting(LocalPresence):
        def register_server(self, server_id, info, ttl):
            registered.put(time.monotonic())
            super().register_server(server_id, info, ttl)

    registered: queue.Queue = queue.Queue()
    rooms, _ = _rooms(presence=Counting(), tick_rate=50, ttl=0.6)
    ticks: queue.Queue = queue.Queue()

    class Ticking(Room):
        auto_dispose = False

        def on_tick(self, dt):
            ticks.put(time.monotonic())

    rooms.define("ticking", Ticking)
    rooms.create("ticking", "t")
    before = set(threading.enumerate())
    rooms.start()
    ours = [t for t in set(threading.enumerate()) - before if t.name.startswith("peng3dnet rooms")]
    cpu0 = sum(_thread_cpu(t) for t in ours)
    try:
        # ticks every 1/50 s: ten ticks take about nine periods (at least half that: a late tick is
        # caught up at once, which may bunch a few; a loop that does not wait takes next to nothing)
        stamps = [ticks.get(timeout=10) for _ in range(10)]
        assert stamps[-1] - stamps[0] >= 9 / 50 * 0.5
        # a refresh every ttl/3 = 0.2 s (the first at start())
        refreshes = [registered.get(timeout=10) for _ in range(4)]
        gaps = [b - a for a, b in zip(refreshes, refreshes[1:])]
        assert all(0.2 * 0.5 <= g for g in gaps[1:]) and all(g <= 1.5 for g in gaps), gaps
        # neither thread spins: far less CPU than the time that passed
        wall = refreshes[-1] - refreshes[0]
        cpu = sum(_thread_cpu(t) for t in ours) - cpu0
        assert len(ours) == 2 and cpu < 0.3 * wall + 0.05, (cpu, wall)
    finally:
        rooms.stop()


def test_a_tick_that_raises_outside_the_rooms_is_reported_and_ticking_goes_on(caplog):
    class Flaky(FakeServer):
        raised = threading.Event()

        @property
        def clients(self):
            if not Flaky.raised.is_set():
                Flaky.raised.set()
                raise RuntimeError("table gone")
            return {}

        @clients.setter
        def clients(self, value):
            pass

    server = Flaky()
    rooms = RoomServer(server, LocalPresence(), tick_rate=100)  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, logger="peng3dnet.user"):
        rooms.start()
        try:
            from tests.helpers import wait_for

            wait_for(lambda: rooms.stats["ticks"] >= 3, timeout=10, what="ticks after the error")
        finally:
            rooms.stop()
    assert [r.getMessage() for r in caplog.records if r.name == "peng3dnet.user"] == ["! rooms: a tick raised"]


def test_a_directory_write_that_raises_is_logged_and_a_disposed_room_leaves_the_directory(caplog):
    rooms, _ = _rooms(ttl=600)  # (entries do not expire meanwhile: only the removal takes one away)
    rooms.start()
    try:
        from tests.helpers import wait_for

        room = rooms.create("kept", "k")
        wait_for(lambda: [r["id"] for r in rooms.presence.rooms()] == ["k"], what="k listed")
        rooms.dispose(room)  # the directory thread removes it
        wait_for(lambda: rooms.presence.rooms() == [], what="k removed")

        class Bad(Kept):
            def info(self):
                raise TypeError("cannot pack")

        rooms.define("bad", Bad)
        with caplog.at_level(logging.ERROR, logger="peng3dnet.ext.rooms.server"):
            bad = rooms.rooms.setdefault("b", Bad(rooms, "b", "bad", {}))
            rooms._directory_later("b")
            wait_for(lambda: "! rooms: writing b to the directory failed" in [r.getMessage() for r in caplog.records],
                     what="the failure logged")
        del rooms.rooms["b"]
        assert bad.name == "b"
        rooms.create("kept", "after")  # the thread lives on
        wait_for(lambda: [r["id"] for r in rooms.presence.rooms()] == ["after"], what="after listed")
    finally:
        rooms.stop()


def test_a_failing_refresh_is_logged_and_the_directory_thread_goes_on(caplog):
    class Down(LocalPresence):
        calls = 0

        def register_server(self, server_id, info, ttl):
            Down.calls += 1
            if Down.calls == 2:  # the directory thread's first refresh (the first is start()'s)
                raise NetworkError("down")
            super().register_server(server_id, info, ttl)

    from tests.helpers import wait_for

    rooms, _ = _rooms(presence=Down(), ttl=0.3)
    with caplog.at_level(logging.WARNING, logger="peng3dnet.ext.rooms.server"):
        rooms.start()
        try:
            wait_for(lambda: Down.calls >= 3, what="a refresh after the failing one")
        finally:
            rooms.stop()
    assert [r.getMessage() for r in caplog.records if r.name == "peng3dnet.ext.rooms.server"] == \
        ["rooms: directory refresh failed: down"]


def test_after_a_slow_tick_the_ticks_go_on_at_once_not_a_second_later():
    done: queue.Queue = queue.Queue()

    class Slow(Room):
        auto_dispose = False
        n = 0

        def on_tick(self, dt):
            Slow.n += 1
            if Slow.n == 3:
                time.sleep(0.2)  # (a tick that takes ten periods: simulated load, not a synchronisation)
            done.put(time.monotonic())

    rooms, _ = _rooms(tick_rate=50)
    rooms.define("slow", Slow)
    rooms.create("slow", "s")
    rooms.start()
    try:
        stamps = [done.get(timeout=10) for _ in range(5)]
    finally:
        rooms.stop()
    assert stamps[3] - stamps[2] < 0.5  # far behind: the schedule starts again now, it does not wait


def test_a_client_that_leaves_its_synced_room_and_is_back_before_the_tick_leaves_and_joins_its_sync():
    """Leave and join again (or a hop to another room and back) between two
    ticks: the room's SyncServer, which compares its members tick to tick,
    saw neither; the arena demo's player was left with no entity."""

    class Tracked(Room):
        synced = True
        auto_dispose = False

    from peng3dnet.protocol.handshake import HandshakeState

    rooms, server = _rooms(sync=True)
    server.clients[1].conntype = "classic"  # (what the sync joins: a classic connection, handshaken)
    server.clients[1].protocol_state = HandshakeState.ACTIVE
    rooms.define("tracked", Tracked)
    room = rooms.create("tracked", "s")
    calls: list = []
    room.sync.on_join = lambda cid: calls.append(("join", cid))
    room.sync.on_leave = lambda cid, eid: calls.append(("leave", cid))
    rooms._join_call({"room": "s"}, 1)
    rooms.step()
    rooms._leave_call(None, 1)
    rooms._join_call({"room": "s"}, 1)
    rooms.step()
    assert calls == [("join", 1), ("leave", 1), ("join", 1)]
