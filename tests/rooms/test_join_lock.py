"""The join's directory work is done outside the rooms lock (a slow or
stalled directory must not stop every room's tick), and what the join checks
again under the lock once its directory call returns: the room disposed,
filled, or joined by the same client meanwhile.  A directory call is held at
a gate the test opens, so the interleavings are exact (no sleeps)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from peng3dnet.errors import CallError, NetworkError
from peng3dnet.ext.rooms import LocalPresence, Room, RoomServer
from peng3dnet.ext.rooms.tokens import Seat, make_token
from tests.rooms import FakeClient, FakeServer

pytestmark = pytest.mark.timeout(60)


class Trio(Room):
    max_clients = 3

    def on_join(self, client: Any, options: dict[str, Any]) -> Any:
        if options.get("refuse"):
            raise CallError("not today")
        return {"seat": len(self.members)}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class GatedPresence(LocalPresence):
    """A LocalPresence whose next call of one method for one room, once
    armed, waits for the test's gate: before the real call, or after it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock)
        self.armed: tuple[str, str, bool] | None = None
        self.entered = threading.Event()
        self.gate = threading.Event()

    def arm(self, method: str, room_id: str, after: bool = False) -> None:
        self.entered.clear()
        self.gate.clear()
        self.armed = (method, room_id, after)

    def _wait(self, method: str, room_id: str, after: bool) -> None:
        if self.armed == (method, room_id, after):
            self.armed = None
            self.entered.set()
            assert self.gate.wait(20), "the test never opened the gate"

    def reserve_seat(self, room_id, seat_id, ttl, info=None):
        self._wait("reserve_seat", room_id, False)
        got = super().reserve_seat(room_id, seat_id, ttl, info)
        self._wait("reserve_seat", room_id, True)
        return got

    def set_room(self, room_id, info, ttl):
        self._wait("set_room", room_id, False)
        super().set_room(room_id, info, ttl)


def _world(presence: LocalPresence, **kw: Any) -> tuple[RoomServer, FakeServer]:
    server = FakeServer()
    rooms = RoomServer(server, presence, server_id="s1", **kw)  # type: ignore[arg-type]
    rooms.define("trio", Trio)
    for cid in range(1, 9):
        server.clients[cid] = FakeClient(cid)
    rooms.refresh()
    return rooms, server


def _join(rooms: RoomServer, cid: int, **msg: Any) -> Any:
    return rooms._join_call(msg, cid)


class Background:
    """A join (or any call) on a thread of its own: its answer or its error."""

    def __init__(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn, args, kw), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[..., Any], args: Any, kw: Any) -> None:
        try:
            self.value = fn(*args, **kw)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc

    def result(self) -> Any:
        self.thread.join(20)
        assert not self.thread.is_alive(), "the call never returned"
        if self.error is not None:
            raise self.error
        return self.value


def _lock_is_free(rooms: RoomServer) -> bool:
    """Whether another thread (ours) gets the rooms lock now (a join that
    held it while it waits for the directory would keep it for 5 s)."""
    got = rooms.lock.acquire(timeout=5)
    if got:
        rooms.lock.release()
    return got


def _listed(presence: LocalPresence, name: str) -> tuple[int, int] | None:
    """(clients, free seats) of a room in the directory, None when not listed."""
    found = [(r["clients"], r["seats"]) for r in presence.rooms() if r["id"] == name]
    return found[0] if found else None


def _reservations(presence: LocalPresence, name: str) -> int:
    """Live reservations of a room (its free seats minus what its count leaves)."""
    (info,) = [r for r in presence.rooms() if r["id"] == name]
    return info["max_clients"] - info["clients"] - info["seats"]


# --- the lock is free while the join waits for the directory --------------------------------------

def test_rooms_tick_while_a_join_waits_for_its_seat_reservation():
    presence = GatedPresence()
    rooms, server = _world(presence)
    _join(rooms, 1, room="red", kind="trio")
    presence.arm("reserve_seat", "red")
    join = Background(_join, rooms, 2, room="red")
    try:
        assert presence.entered.wait(10)  # the join waits for the directory now
        assert _lock_is_free(rooms)
        rooms.step()  # a tick of every room, while the join waits
        assert rooms.stats["ticks"] == 1
        assert list(rooms.rooms["red"].members) == [1]  # not in yet
    finally:
        presence.gate.set()
    assert join.result() == {"room": "red", "kind": "trio", "clients": 2, "data": {"seat": 1}}
    assert list(rooms.rooms["red"].members) == [1, 2] and rooms.stats["joins"] == 2
    assert _listed(presence, "red") == (2, 1)  # its count written, its reservation given back


def test_while_a_joins_count_is_written_the_lock_is_free_and_its_seat_stays_reserved():
    presence = GatedPresence()
    rooms, server = _world(presence)
    _join(rooms, 1, room="red", kind="trio")
    presence.arm("set_room", "red")
    join = Background(_join, rooms, 2, room="red")
    try:
        assert presence.entered.wait(10)  # in the room now; its count is being written
        assert _lock_is_free(rooms)
        assert list(rooms.rooms["red"].members) == [1, 2]
        assert ("peng3dnet:room.join", {"room": rooms.rooms["red"], "client": server.clients[2]}) in server.events
        # The directory's count is the old one, and the joiner's reservation
        # still holds its seat: one seat free, not two (never double booked)
        assert _listed(presence, "red") == (1, 1)
    finally:
        presence.gate.set()
    assert join.result()["clients"] == 2
    assert _listed(presence, "red") == (2, 1) and _reservations(presence, "red") == 0


def test_a_new_rooms_name_is_looked_up_in_the_directory_outside_the_lock():
    class Slow(GatedPresence):
        def rooms(self, kind=None):
            self._wait("rooms", "", False)
            return super().rooms(kind)

    presence = Slow()
    rooms, _ = _world(presence)
    presence.arm("rooms", "")
    join = Background(_join, rooms, 1, room="red", kind="trio")
    try:
        assert presence.entered.wait(10)
        assert _lock_is_free(rooms) and rooms.rooms == {}
    finally:
        presence.gate.set()
    assert join.result()["clients"] == 1


class Watchful(LocalPresence):
    """Records every directory call made while some thread holds the rooms lock."""

    def __init__(self) -> None:
        super().__init__()
        self.watched: RoomServer | None = None
        self.calls: list[str] = []
        self.under_lock: list[str] = []

    def _held(self) -> bool:
        if self.watched is None:
            return False
        lock = self.watched.lock
        got: list[bool] = []

        def probe() -> None:
            free = lock.acquire(blocking=False)
            if free:
                lock.release()
            got.append(free)

        t = threading.Thread(target=probe)
        t.start()
        t.join(10)
        return not got[0]


def _watch(name: str) -> Any:
    def method(self: Watchful, *args: Any, **kw: Any) -> Any:
        self.calls.append(name)
        if self._held():
            self.under_lock.append(name)
        return getattr(LocalPresence, name)(self, *args, **kw)

    return method


for _name in ("register_server", "servers", "set_room", "remove_room", "rooms", "reserve_seat", "release_seat",
              "claim"):
    setattr(Watchful, _name, _watch(_name))


def test_no_join_leave_create_dispose_or_tick_asks_the_directory_under_the_lock():
    presence = Watchful()
    rooms, server = _world(presence)
    presence.watched = rooms
    rooms.create("trio", "made")
    _join(rooms, 1, room="red", kind="trio")  # a new room by name
    _join(rooms, 2, room="red")  # by name
    assert _join(rooms, 3, kind="trio")["room"] == "red"  # by kind: the fullest
    assert _join(rooms, 4, kind="trio")["room"] == "made"
    assert presence.reserve_seat("made", "S1", 30.0)
    token = make_token(rooms.secret, Seat("made", "s1", "S1", "trio", time.time() + 30, {}))
    assert _join(rooms, 5, seat=token)["clients"] == 2  # with the lobby's seat
    with pytest.raises(CallError, match="^not today$"):
        _join(rooms, 6, room="blue", kind="trio", options={"refuse": True})  # a refused join: its room goes
    with pytest.raises(CallError, match="^room 'red' is full$"):
        _join(rooms, 4, room="red")
    assert _join(rooms, 7, kind="trio")["room"] == "made"
    assert _join(rooms, 8, kind="trio")["room"] not in ("red", "made")  # all full: a new room
    assert rooms._leave_call(None, 8)  # that room goes (empty)
    assert _join(rooms, 2, room="other", kind="trio")["clients"] == 1  # 2 leaves red (which stays) for other
    rooms.dispose(rooms.create("trio", "lonely"))  # no members: disposed by dispose() itself
    del server.clients[3]  # its connection closed: it leaves at the next tick
    rooms.step()
    rooms.dispose(rooms.rooms["made"])
    rooms.refresh()
    assert presence.under_lock == []
    assert {"rooms", "reserve_seat", "set_room", "release_seat", "remove_room", "claim"} <= set(presence.calls)
    assert sorted(r["id"] for r in presence.rooms()) == ["other", "red"]


# --- what the join checks again once its reservation is made -------------------------------------

def test_a_room_disposed_while_a_join_reserves_refuses_it_and_leaves_nothing_in_the_directory():
    presence = GatedPresence()
    rooms, server = _world(presence)
    _join(rooms, 1, room="red", kind="trio")
    presence.arm("reserve_seat", "red", after=True)  # reserved, then the room goes
    join = Background(_join, rooms, 2, room="red")
    try:
        assert presence.entered.wait(10) and _lock_is_free(rooms)
        red = rooms.rooms["red"]
        rooms.dispose(red)
        assert _listed(presence, "red") is None
    finally:
        presence.gate.set()
    with pytest.raises(CallError, match="^room 'red' is closed$"):
        join.result()
    assert rooms.room_of(2) is None and red.members == {} and rooms.rooms == {}
    assert rooms.stats["refused"] == 1 and rooms.stats["joins"] == 1
    assert _listed(presence, "red") is None and presence.reserve_seat("red", "after", 30.0) is False
    assert [e for e, d in server.events if d.get("client") is server.clients[2]] == []


def test_a_room_made_by_a_join_and_disposed_while_it_reserves_is_not_left_in_the_directory():
    presence = GatedPresence()
    rooms, _ = _world(presence)
    presence.arm("reserve_seat", "red")
    join = Background(_join, rooms, 1, room="red", kind="trio")
    try:
        assert presence.entered.wait(10) and _lock_is_free(rooms)
        rooms.dispose(rooms.rooms["red"])  # (the program, or stop())
    finally:
        presence.gate.set()
    with pytest.raises(CallError, match="^room 'red' is closed$"):
        join.result()
    assert rooms.rooms == {} and presence.rooms() == []
    assert rooms.stats == {**rooms.stats, "created": 1, "disposed": 1, "refused": 1, "joins": 0}


def test_a_room_filled_while_a_join_waits_refuses_it_with_its_seat_given_back():
    # The directory stalls past the join's reservation (30 s): it expires,
    # another join takes that seat and fills the room meanwhile.
    clock = Clock()
    presence = GatedPresence(clock)
    rooms, _ = _world(presence, ttl=600)  # (only the reservation expires)
    _join(rooms, 1, room="red", kind="trio")
    _join(rooms, 2, room="red")
    presence.arm("reserve_seat", "red", after=True)  # reserved, then stalled
    first = Background(_join, rooms, 3, room="red")
    try:
        assert presence.entered.wait(10) and _lock_is_free(rooms)
        clock.now += 31  # its reservation expired
        second = Background(_join, rooms, 4, room="red")
        assert second.result()["clients"] == 3
    finally:
        presence.gate.set()
    with pytest.raises(CallError, match="^room 'red' is full$"):
        first.result()
    assert list(rooms.rooms["red"].members) == [1, 2, 4] and rooms.room_of(3) is None
    assert rooms.stats["refused"] == 1 and rooms.stats["joins"] == 3
    assert _listed(presence, "red") == (3, 0) and _reservations(presence, "red") == 0


def test_a_client_that_got_into_the_room_meanwhile_is_answered_once_and_its_seat_given_back():
    presence = GatedPresence()
    rooms, server = _world(presence)
    _join(rooms, 1, room="red", kind="trio")
    presence.arm("reserve_seat", "red", after=True)
    first = Background(_join, rooms, 2, room="red")
    try:
        assert presence.entered.wait(10)
        assert _join(rooms, 2, room="red")["clients"] == 2  # the same client, a second join call
    finally:
        presence.gate.set()
    assert first.result() == {"room": "red", "kind": "trio", "clients": 2, "data": None}
    assert rooms.stats["joins"] == 2 and rooms.stats["refused"] == 0
    assert [e for e, d in server.events if d.get("client") is server.clients[2]] == ["peng3dnet:room.join"]
    assert _listed(presence, "red") == (2, 1) and _reservations(presence, "red") == 0


def test_two_joins_of_a_new_room_by_name_at_once_both_get_in():
    presence = GatedPresence()
    rooms, _ = _world(presence)
    presence.arm("reserve_seat", "red")  # the join that makes red waits before it reserves (red not listed)
    first = Background(_join, rooms, 1, room="red", kind="trio")
    try:
        assert presence.entered.wait(10)
        assert _listed(presence, "red") is None
        assert _join(rooms, 2, room="red", kind="trio")["clients"] == 1  # its reservation lists red
    finally:
        presence.gate.set()
    assert first.result()["clients"] == 2
    assert rooms.stats["created"] == 1 and _listed(presence, "red") == (2, 1)


def test_a_join_puts_only_a_room_made_here_and_not_yet_listed_in_the_directory():
    # A room whose entry is gone (expired in an outage) is not listed again
    # by a join's reservation (its count there would be wrong): as before,
    # its seats count as reserved until the next write of its entry.
    rooms, _ = _world(LocalPresence())
    rooms.create("trio", "red")
    rooms.presence.remove_room("red")
    with pytest.raises(CallError, match=r"^room 'red' is full \(its last seats are reserved\)$"):
        _join(rooms, 1, room="red")
    assert rooms.presence.rooms() == []
    rooms.refresh()
    assert _join(rooms, 1, room="red")["clients"] == 1
    # A room made here and not listed yet (its maker's write failed, or
    # has not come yet) is listed by a join's reservation, by kind or by name
    _join(rooms, 2, room="red")
    _join(rooms, 3, room="red")  # red is full
    rooms.create("trio", "blue")
    rooms.presence.remove_room("blue")
    rooms._unlisted.add("blue")
    assert _join(rooms, 4, kind="trio")["room"] == "blue"
    rooms.create("trio", "green")
    rooms.presence.remove_room("green")
    rooms._unlisted.add("green")
    assert _join(rooms, 5, room="green")["clients"] == 1
    assert (_listed(rooms.presence, "blue"), _listed(rooms.presence, "green")) == ((1, 2), (1, 2))


def test_a_directory_error_of_the_reservation_is_the_directorys_and_the_made_room_goes():
    class Down(LocalPresence):
        def reserve_seat(self, room_id, seat_id, ttl, info=None):
            raise NetworkError("redis: down")

    rooms, server = _world(Down())
    with pytest.raises(CallError, match="^the directory is unavailable: redis: down$"):
        _join(rooms, 1, room="red", kind="trio")
    assert rooms.rooms == {} and rooms.presence.rooms() == [] and rooms.stats["refused"] == 1
    assert [e for e, _ in server.events] == ["peng3dnet:room.create", "peng3dnet:room.dispose"]


# --- the checks before the directory is asked, and what the directory keeps ------------------------

class NoListing(LocalPresence):
    """A directory whose listing is down (other calls work)."""

    def rooms(self, kind=None):
        raise NetworkError("listing down")


def test_a_bad_name_is_refused_before_the_directory_is_asked():
    rooms, _ = _world(NoListing())
    rule = "^room names are 1-64 characters"
    with pytest.raises(CallError, match=rule):
        rooms.create("trio", "a b")
    token = make_token(rooms.secret, Seat("a b", "s1", "S1", "trio", time.time() + 30, {}))
    with pytest.raises(CallError, match=rule):
        _join(rooms, 1, seat=token)
    with pytest.raises(CallError, match="^no rooms of kind 'nope' here$"):
        _join(rooms, 1, room="red", kind="nope")
    assert rooms.rooms == {}
    with pytest.raises(CallError, match="^the directory is unavailable: listing down$"):
        _join(rooms, 1, room="red", kind="trio")  # a good new name: the directory must be asked
    assert rooms.rooms == {}


def test_a_join_that_would_make_another_servers_room_is_refused():
    rooms, _ = _world(LocalPresence())
    rooms.presence.register_server("s2", {"addr": "s2:1", "kinds": {"trio": 3}}, 60)
    rooms.presence.set_room("blue", {"server": "s2", "kind": "trio", "clients": 1, "max_clients": 3,
                                     "addr": "s2:1"}, 60)
    with pytest.raises(CallError, match=r"^room 'blue' exists on another server \(s2:1\)$"):
        _join(rooms, 1, room="blue", kind="trio")
    assert rooms.rooms == {} and rooms.stats["refused"] == 1


def test_a_join_by_kind_does_not_list_again_a_listed_room_whose_entry_is_gone():
    rooms, _ = _world(LocalPresence())
    _join(rooms, 1, room="red", kind="trio")
    rooms.presence.remove_room("red")  # (expired in an outage)
    got = _join(rooms, 2, kind="trio")
    assert got["room"] != "red" and list(rooms.rooms["red"].members) == [1]
    assert _listed(rooms.presence, "red") is None


def test_a_join_by_kind_keeps_one_in_its_own_room_whose_last_seat_is_reserved_for_another():
    rooms, _ = _world(LocalPresence())
    _join(rooms, 1, room="red", kind="trio")
    _join(rooms, 2, room="red")
    assert rooms.presence.reserve_seat("red", "lobby-seat", 30.0)  # red's last seat, for someone else
    assert _join(rooms, 1, kind="trio") == {"room": "red", "kind": "trio", "clients": 2, "data": None}
    assert rooms.room_of(1) is rooms.rooms["red"] and len(rooms.rooms) == 1


def test_a_member_of_a_full_room_joining_it_again_is_answered_as_in_it():
    rooms, _ = _world(LocalPresence())
    for cid in (1, 2, 3):
        _join(rooms, cid, room="red", kind="trio")
    assert _join(rooms, 3, room="red") == {"room": "red", "kind": "trio", "clients": 3, "data": None}
    assert rooms.stats["joins"] == 3 and rooms.stats["refused"] == 0


def test_a_room_not_listed_yet_and_disposed_while_a_join_reserves_is_not_left_in_the_directory():
    presence = GatedPresence()
    rooms, _ = _world(presence)
    rooms.create("trio", "red")
    presence.remove_room("red")
    rooms._unlisted.add("red")  # (its maker's write failed: the join's reservation lists it)
    presence.arm("reserve_seat", "red")
    join = Background(_join, rooms, 1, room="red")
    try:
        assert presence.entered.wait(10) and _lock_is_free(rooms)
        rooms.dispose(rooms.rooms["red"])
    finally:
        presence.gate.set()
    with pytest.raises(CallError, match="^room 'red' is closed$"):
        join.result()
    assert presence.rooms() == [] and rooms._unlisted == set()


def test_a_room_whose_entry_was_never_written_is_forgotten_when_disposed():
    class NoWrites(LocalPresence):
        def set_room(self, room_id, info, ttl):
            raise NetworkError("down")

    rooms, _ = _world(NoWrites())
    room = rooms.create("trio", "red")
    assert rooms._unlisted == {"red"}
    rooms.dispose(room)
    assert rooms._unlisted == set()


def test_a_joins_count_that_keeps_changing_is_written_four_times_then_its_seat_given_back():
    class Busy(LocalPresence):
        writes = 0

        def set_room(self, room_id, info, ttl):
            super().set_room(room_id, info, ttl)
            if armed:
                Busy.writes += 1
                room.created += 1  # (another change, every time: the entry is written again)

    armed = False
    presence = Busy()
    rooms, _ = _world(presence)
    _join(rooms, 1, room="red", kind="trio")
    room = rooms.rooms["red"]
    armed = True
    assert _join(rooms, 2, room="red")["clients"] == 2
    assert Busy.writes == 4  # (the next refresh settles the rest)
    assert _listed(presence, "red") == (2, 1) and _reservations(presence, "red") == 0


def test_a_name_made_here_while_create_asked_the_directory_about_it_is_refused():
    class Racing(LocalPresence):
        race = False

        def rooms(self, kind=None):
            if Racing.race:  # (the lookup runs outside the lock: another thread makes that room meanwhile)
                Racing.race = False
                Background(rooms.create, "trio", "red").result()
            return super().rooms(kind)

    rooms, _ = _world(Racing())
    Racing.race = True
    with pytest.raises(CallError, match="^room 'red' exists$"):
        rooms.create("trio", "red")
    assert list(rooms.rooms) == ["red"] and rooms.stats["created"] == 1


# --- a join by kind whose room closed or filled while it reserved chooses again ------------------

def test_a_join_by_kind_whose_room_is_disposed_while_it_reserves_lands_in_another_room_of_the_kind():
    presence = GatedPresence()
    rooms, server = _world(presence)
    _join(rooms, 1, room="red", kind="trio")
    _join(rooms, 2, room="red")  # red: the fullest, chosen first
    _join(rooms, 3, room="blue", kind="trio")
    presence.arm("reserve_seat", "red", after=True)  # reserved, then red goes
    join = Background(_join, rooms, 4, kind="trio")
    try:
        assert presence.entered.wait(10) and _lock_is_free(rooms)
        rooms.dispose(rooms.rooms["red"])
    finally:
        presence.gate.set()
    assert join.result() == {"room": "blue", "kind": "trio", "clients": 2, "data": {"seat": 1}}
    assert sorted(rooms.rooms) == ["blue"] and rooms.room_of(4) is rooms.rooms["blue"]
    assert rooms.stats["refused"] == 0 and rooms.stats["created"] == 2 and rooms.stats["joins"] == 4
    assert _listed(presence, "red") is None and presence.reserve_seat("red", "after", 30.0) is False
    assert _listed(presence, "blue") == (2, 1) and _reservations(presence, "blue") == 0


def test_a_join_by_kind_whose_room_fills_while_it_reserves_makes_a_new_room():
    clock = Clock()
    presence = GatedPresence(clock)
    rooms, _ = _world(presence, ttl=600)  # (only the reservation expires)
    _join(rooms, 1, room="red", kind="trio")
    _join(rooms, 2, room="red")
    presence.arm("reserve_seat", "red", after=True)  # reserved, then stalled
    first = Background(_join, rooms, 3, kind="trio")
    try:
        assert presence.entered.wait(10) and _lock_is_free(rooms)
        clock.now += 31  # its reservation expired: another join takes red's last seat
        assert Background(_join, rooms, 4, room="red").result()["clients"] == 3
    finally:
        presence.gate.set()
    got = first.result()
    assert got["room"] != "red" and got["clients"] == 1 and rooms.room_of(3) is rooms.rooms[got["room"]]
    assert list(rooms.rooms["red"].members) == [1, 2, 4] and len(rooms.rooms) == 2
    assert rooms.stats["refused"] == 0 and rooms.stats["created"] == 2
    assert _listed(presence, "red") == (3, 0) and _reservations(presence, "red") == 0
    assert _listed(presence, got["room"]) == (1, 2) and _reservations(presence, got["room"]) == 0


class Racing(LocalPresence):
    """A directory whose next ``races`` reservations each see their room
    disposed right after it (another thread's dispose, while the join is
    outside the lock)."""

    def __init__(self, races: int) -> None:
        super().__init__()
        self.races = races
        self.rooms_server: RoomServer | None = None
        self.reserved: list[str] = []

    def reserve_seat(self, room_id, seat_id, ttl, info=None):
        got = super().reserve_seat(room_id, seat_id, ttl, info)
        if self.rooms_server is None:
            return got  # (not armed yet)
        self.reserved.append(room_id)
        if self.races > 0:
            self.races -= 1
            Background(self.rooms_server.dispose, self.rooms_server.rooms[room_id]).result()
        return got


@pytest.mark.parametrize("races", [2, 3, 10])
def test_a_join_by_kind_chooses_again_at_most_three_times_then_is_refused(races):
    presence = Racing(races)
    rooms, server = _world(presence)
    _join(rooms, 1, room="red", kind="trio")
    presence.rooms_server = rooms
    if races < 3:  # the third choice (a room it makes: red went) holds
        got = _join(rooms, 2, kind="trio")
        assert got["clients"] == 1 and rooms.room_of(2) is rooms.rooms[got["room"]]
        assert len(presence.reserved) == 3 and presence.reserved[0] == "red"
        assert list(rooms.rooms) == [got["room"]] and rooms.stats["refused"] == 0
        assert sorted(r["id"] for r in presence.rooms()) == [got["room"]]
        assert _reservations(presence, got["room"]) == 0
    else:
        with pytest.raises(CallError, match="^the rooms of kind 'trio' closed or filled while the join reserved "
                                            "its seat, 3 times: try again$"):
            _join(rooms, 2, kind="trio")
        assert len(presence.reserved) == 3 and presence.races == races - 3  # bounded: no fourth try
        assert rooms.rooms == {} and presence.rooms() == [] and rooms.room_of(2) is None
        assert rooms.stats["refused"] == 1 and rooms.stats["created"] == 3 and rooms.stats["disposed"] == 3
    # the rooms it made and nobody joined are gone, their entries too; no join event of a failed try
    assert [e for e, d in server.events if d.get("client") is server.clients[2]] == (
        ["peng3dnet:room.join"] if races < 3 else [])


def test_a_join_naming_its_room_is_still_refused_when_the_room_goes_while_it_reserves():
    presence = Racing(1)
    rooms, _ = _world(presence)
    _join(rooms, 1, room="red", kind="trio")
    _join(rooms, 3, room="blue", kind="trio")
    presence.rooms_server = rooms
    with pytest.raises(CallError, match="^room 'red' is closed$"):
        _join(rooms, 2, room="red", kind="trio")
    assert presence.reserved == ["red"] and rooms.stats["refused"] == 1 and sorted(rooms.rooms) == ["blue"]


# --- a join's seat while an older write of its room's entry is in flight ---------------------------

class Recording(GatedPresence):
    """Records what the directory shows of red, (clients, free seats), after
    each write of its entry; ``fail``: the held write fails once let go."""

    def __init__(self) -> None:
        super().__init__()
        self.shown: list[tuple[int, int] | None] = []
        self.fail = False

    def set_room(self, room_id, info, ttl):
        held = self.armed == ("set_room", room_id, False)
        self._wait("set_room", room_id, False)
        if held and self.fail:
            self.fail = False
            raise NetworkError("redis: down")
        LocalPresence.set_room(self, room_id, info, ttl)
        if room_id == "red":
            self.shown.append(_listed(self, "red"))


def _full_while_an_older_write_is_held(presence: Recording) -> tuple[RoomServer, Background]:
    """red with 2 members; a refresh read that count and its write is held;
    a join then fills red and writes its count (3) before that write lands."""
    rooms, _ = _world(presence)
    _join(rooms, 1, room="red", kind="trio")
    _join(rooms, 2, room="red")
    presence.arm("set_room", "red")
    refresh = Background(rooms.refresh)
    assert presence.entered.wait(10) and _lock_is_free(rooms)
    presence.shown.clear()
    try:
        assert _join(rooms, 3, room="red")["clients"] == 3
    except BaseException:
        presence.gate.set()
        raise
    return rooms, refresh


def test_a_joins_seat_stays_reserved_until_an_older_write_of_its_rooms_count_is_over():
    presence = Recording()
    rooms, refresh = _full_while_an_older_write_is_held(presence)
    # The join's count is written; its seat stays reserved: the refresh's
    # older count (2) may land after it
    assert presence.shown == [(3, 0)]
    presence.gate.set()
    refresh.result()
    # The older count landed, then the refresh saw the change and wrote the
    # room again: the join's reservation kept its seat counted meanwhile
    # (never a free seat shown in the full room: never double booked), and
    # the directory keeps the room's real count
    assert presence.shown == [(3, 0), (2, 0), (3, 0)]
    assert _listed(presence, "red") == (len(rooms.rooms["red"].members), 0) == (3, 0)
    assert _reservations(presence, "red") == 0  # given back by the refresh's write, once over


def test_a_joins_seat_held_for_an_older_write_that_fails_is_given_back_when_it_ends():
    presence = Recording()
    presence.fail = True  # (the held write only)
    rooms, refresh = _full_while_an_older_write_is_held(presence)
    presence.gate.set()
    refresh.result()  # (its write failed: logged, the next refresh retries)
    assert presence.shown == [(3, 0)] and _listed(presence, "red") == (3, 0)
    assert _reservations(presence, "red") == 0
