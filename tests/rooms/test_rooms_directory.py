"""The rooms directory thread (ext/rooms/server.py): stop() from a room hook,
kinds whose names are not room names, a write that raises, counts and
removals written late, two threads subscribing at once (found by a review)."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from peng3dnet.ext.rooms import LocalPresence, Room
from tests.helpers import wait_for
from tests.rooms import room_server


def _dir_thread_in_refresh(rooms) -> bool:
    t = rooms._dir_thread
    if t is None or t.ident is None:
        return False
    f = sys._current_frames().get(t.ident)
    while f is not None:
        if "refresh" in f.f_code.co_name:  # (mutmut renames it: xǁRoomServerǁrefresh__mutmut_orig)
            return True
        f = f.f_back
    return False


class StopsFromItsTick(Room):
    """A room that stops its room server from on_tick (a match that ends the
    server), at a moment the directory thread is in refresh()."""

    go = threading.Event()
    done = threading.Event()

    def on_tick(self, dt):
        if not self.go.is_set() or self.done.is_set():
            return
        self.go.clear()
        deadline = time.monotonic() + 10
        # (we hold RoomServer.lock: on_tick runs under it) wait for a refresh to begin
        while not _dir_thread_in_refresh(self.rooms) and time.monotonic() < deadline:
            threading.Event().wait(0.002)
        assert _dir_thread_in_refresh(self.rooms)
        self.rooms.stop()  # "every method from any thread"; stop() itself expects the rooms thread
        self.done.set()


@pytest.mark.timeout(60)
def test_stop_from_a_room_hook_does_not_deadlock_with_the_directory_threads_refresh(net):
    # refresh() takes _dir_lock then RoomServer.lock; stop() called under
    # RoomServer.lock (any room hook, or a program holding rooms.lock) takes
    # _dir_lock for unregister_server: the two threads wait for each other.
    rooms = room_server(net, LocalPresence(), StopsFromItsTick, ttl=0.3)  # a refresh every 0.1 s
    rooms.create("arena", "r1")
    StopsFromItsTick.done.clear()
    StopsFromItsTick.go.set()
    assert StopsFromItsTick.done.wait(20), "stop() from on_tick never returned (deadlock: _dir_lock vs rooms.lock)"


@pytest.mark.timeout(30)
def test_kinds_whose_names_are_not_room_names_still_make_rooms(net):
    # create() now checks every name, generated ones too: f"{kind}-{hex8}".
    # A kind with a space (or of more than 55 characters) can no longer
    # make a single room, by join(kind=...) or create(kind): it did before.
    rooms = room_server(net, LocalPresence(), Room)
    try:
        rooms.define("capture the flag", Room)
        room = rooms.create("capture the flag")
        assert room.kind == "capture the flag"
        rooms.define("k" * 60, Room)
        assert rooms.create("k" * 60).kind == "k" * 60
    finally:
        rooms.stop()


class UnpackableOnce(LocalPresence):
    """set_room fails once, as RedisPresence's msgpack does on a room info
    it cannot pack (TypeError: not a Peng3dNetError)."""

    def __init__(self) -> None:
        super().__init__()
        self.fail = False
        self.registered = 0

    def set_room(self, room_id, info, ttl):
        if self.fail and threading.current_thread().name == "peng3dnet rooms directory":
            self.fail = False
            raise TypeError("can not serialize 'set' object")
        return super().set_room(room_id, info, ttl)

    def register_server(self, server_id, info, ttl):
        self.registered += 1
        return super().register_server(server_id, info, ttl)


@pytest.mark.timeout(30)
def test_the_directory_thread_outlives_one_write_that_raises(net):
    presence = UnpackableOnce()
    rooms = room_server(net, presence, Room, ttl=0.3)
    try:
        rooms.define("keep", type("Keep", (Room,), {"auto_dispose": False}))
        room = rooms.create("keep", "k1")
        presence.fail = True
        with rooms.lock:  # a leave's count goes to the directory thread
            assert rooms._directory_later(room.name)
        wait_for(lambda: not presence.fail, what="the write")
        before = presence.registered
        # the thread must live on (refreshes every 0.1 s): else the server
        # drops out of the directory after ttl and no count is ever written
        wait_for(lambda: presence.registered > before + 2, timeout=5, what="refreshes after the failed write")
    finally:
        rooms.stop()


class GatedPresence(LocalPresence):
    """set_room on the directory thread waits for ``gate`` while ``hold``."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = False
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.written = threading.Event()

    def set_room(self, room_id, info, ttl):
        if self.hold and threading.current_thread().name == "peng3dnet rooms directory":
            self.hold = False
            self.entered.set()
            self.gate.wait(20)
            super().set_room(room_id, info, ttl)
            self.written.set()
            return
        return super().set_room(room_id, info, ttl)


class Trio(Room):
    max_clients = 3
    auto_dispose = False


@pytest.mark.timeout(60)
def test_a_leaves_count_written_late_does_not_overwrite_a_later_joins_count(net):
    # A leave's count is queued; the directory thread takes it and writes
    # it while a join writes its (newer) count directly: the old count
    # lands last.  The directory shows more free seats than the room has
    # until the next refresh (ttl/3; 20 s here, 1.7 s by default): the
    # lobby reserves them and their players are refused ("full").
    from tests.rooms import room_client

    presence = GatedPresence()
    rooms = room_server(net, presence, Trio, ttl=60.0)
    try:
        rcs = [room_client(net, rooms.server.addr)[1] for _ in range(4)]
        for rc in rcs[:3]:
            rc.join("t1", kind="arena")
        count = lambda: [r for r in presence.rooms("arena") if r["id"] == "t1"][0]["clients"]  # noqa: E731
        assert rcs[0].leave(timeout=10)
        wait_for(lambda: count() == 2, what="the first leave's count")
        presence.hold = True
        assert rcs[1].leave(timeout=10)  # count 1 -> the directory thread, which waits in set_room
        assert presence.entered.wait(10)
        assert rcs[3].join("t1", kind="arena")["clients"] == 2  # count 2, written by the join itself
        presence.gate.set()
        assert presence.written.wait(10)
        wait_for(lambda: not rooms._dir_queue, what="the directory queue")
        assert count() == len(rooms.rooms["t1"].members) == 2
    finally:
        presence.gate.set()
        rooms.stop()


class GatedRemove(LocalPresence):
    """remove_room on the directory thread waits for ``gate`` while ``hold``."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = False
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.done = threading.Event()

    def remove_room(self, room_id):
        if self.hold and threading.current_thread().name == "peng3dnet rooms directory":
            self.hold = False
            self.entered.set()
            self.gate.wait(20)
            super().remove_room(room_id)
            self.done.set()
            return
        return super().remove_room(room_id)


@pytest.mark.timeout(60)
def test_a_room_made_again_under_its_name_is_not_removed_by_the_old_rooms_late_removal(net):
    # README's own pattern: rc.join("lobby-chat", kind="chat"), a room
    # disposed when its last member leaves and made again by the next join.
    # The directory thread took the old room's removal; the new room is
    # published by its join; then the removal lands: the live room (and its
    # seat reservations) is gone from the directory until the next refresh.
    from tests.rooms import room_client

    presence = GatedRemove()
    rooms = room_server(net, presence, Room, ttl=60.0)
    try:
        _a, ra = room_client(net, rooms.server.addr)
        _b, rb = room_client(net, rooms.server.addr)
        ra.join("chat1", kind="arena")
        presence.hold = True
        assert ra.leave(timeout=10)  # disposed: its removal -> the directory thread
        assert presence.entered.wait(10)
        assert rb.join("chat1", kind="arena")["clients"] == 1  # made again, published by the join
        presence.gate.set()
        assert presence.done.wait(10)
        wait_for(lambda: not rooms._dir_queue, what="the directory queue")
        assert "chat1" in rooms.rooms
        assert [r["id"] for r in presence.rooms("arena")] == ["chat1"], "a live room missing from the directory"
    finally:
        presence.gate.set()
        rooms.stop()


class SlowSubscribe(LocalPresence):
    """The first subscribe waits for ``gate`` (a Redis round trip)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.entered = threading.Event()
        self.gate = threading.Event()

    def subscribe(self, channel, callback):
        self.calls += 1
        if self.calls == 1:
            self.entered.set()
            self.gate.wait(20)
        super().subscribe(channel, callback)


@pytest.mark.timeout(30)
def test_two_threads_subscribing_to_one_channel_get_each_message_once(net):
    # RoomServer.subscribe records the channel only after presence.subscribe
    # returned (a620d1b: so a failure is retried): a second subscribe()
    # meanwhile ("every method from any thread") subscribes again, and each
    # message of the channel is delivered twice, forever (stop() removes one).
    from peng3dnet import events

    presence = SlowSubscribe()
    rooms = room_server(net, presence, Room)
    got = []
    handler = lambda event, data: got.append(data["data"])  # noqa: E731
    events.subscribe("peng3dnet:cluster.message", handler, sender=rooms.server)
    try:
        t = threading.Thread(target=rooms.subscribe, args=("chat",), daemon=True)
        t.start()
        assert presence.entered.wait(10)
        # another thread, while the first one's SUBSCRIBE is under way: it
        # waits for the first (with the old code it subscribed again at once)
        t2 = threading.Thread(target=rooms.subscribe, args=("chat",), daemon=True)
        t2.start()
        t2.join(0.5)
        assert t2.is_alive(), "the second subscribe() did not wait for the first one's"
        presence.gate.set()
        t.join(10)
        t2.join(10)
        assert not t.is_alive() and not t2.is_alive()
        assert presence.calls == 1
        rooms.publish("chat", "hello")  # (LocalPresence delivers on the publishing thread)
        assert got == ["hello"], got
    finally:
        presence.gate.set()
        events.unsubscribe("peng3dnet:cluster.message", handler, sender=rooms.server)
        rooms.stop()
