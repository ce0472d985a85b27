"""Rooms under a directory outage, room names from the lobby, rooms disposed
from on_leave (found by a bug hunt)."""

from __future__ import annotations

import threading

import pytest

from peng3dnet import errors
from peng3dnet.ext.rooms import LocalPresence, Room
from tests.helpers import wait_for
from tests.rooms import room_client, room_server


class FlakyPresence(LocalPresence):
    """A LocalPresence whose reserve_seat fails as a Redis outage does."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def reserve_seat(self, room_id, seat_id, ttl, info=None):
        if self.down:
            raise errors.NetworkError("redis at redis://x: ConnectionError: down")
        return super().reserve_seat(room_id, seat_id, ttl, info)


class Big(Room):
    max_clients = 4


@pytest.mark.timeout(30)
def test_a_join_by_kind_during_a_directory_outage_says_the_directory_is_unavailable(net):
    presence = FlakyPresence()
    rooms = room_server(net, presence, Big)
    try:
        _c1, rc1 = room_client(net, rooms.server.addr)
        assert rc1.join(kind="arena")["clients"] == 1  # a room of the kind with free seats
        _c2, rc2 = room_client(net, rooms.server.addr)
        presence.down = True
        with pytest.raises(errors.RemoteCallError) as info:
            rc2.join(kind="arena", timeout=10)
        assert "the directory is unavailable" in str(info.value), str(info.value)
        assert rooms.stats["refused"] == 1
    finally:
        presence.down = False
        rooms.stop()


class Duo(Room):
    max_clients = 2


@pytest.fixture
def lobby_world(net):
    """``(presence, rooms, lobby)``: a room server of Duo rooms (2 seats)
    and a lobby over one LocalPresence, sharing a secret."""
    from peng3dnet.ext.rooms import Lobby

    presence = LocalPresence()
    secret = b"s" * 32
    rooms = room_server(net, presence, Duo, secret=secret)
    try:
        yield presence, rooms, Lobby(presence, secret)
    finally:
        rooms.stop()


@pytest.mark.timeout(30)
def test_a_matchmake_refused_for_oversized_options_keeps_no_seat_reserved(lobby_world):
    _presence, _rooms, lobby = lobby_world
    for _ in range(2):  # a player's request with options too large for a token
        with pytest.raises(ValueError):
            lobby.matchmake("arena", options={"blob": "x" * 5000}, room="red")
    # the two seats of "red" must still be free for real players
    t = lobby.matchmake("arena", room="red")
    assert t["room"] == "red"


@pytest.mark.timeout(30)
def test_room_names_placed_by_the_lobby_are_bounded_like_direct_joins(lobby_world):
    presence, rooms, lobby = lobby_world
    for bad in ("x" * 65, "a b", "x\n", ""):  # README: names are 1-64 letters, digits and _ . : -
        with pytest.raises(ValueError, match="^room names are 1-64 characters"):
            lobby.matchmake("arena", room=bad)
    assert lobby.matchmake("arena", room="x" * 64)["room"] == "x" * 64
    with pytest.raises(errors.CallError, match="^room names are 1-64 characters"):
        rooms.create("arena", "x" * 65)  # the room server refuses it too, whichever way it comes
    assert presence.rooms() == [] or all(r["id"] == "x" * 64 for r in presence.rooms())


class HostedRoom(Room):
    """Closes when its first member (the host) leaves: a common pattern."""

    auto_dispose = False
    max_clients = 4

    def on_leave(self, client):
        if client is not None and client.cid == min([client.cid, *self.members]):
            self.rooms.dispose(self)


@pytest.mark.timeout(30)
def test_a_room_disposed_from_on_leave_does_not_come_back_in_the_directory(net):
    presence = LocalPresence()
    rooms = room_server(net, presence, HostedRoom)
    try:
        _h, host = room_client(net, rooms.server.addr)
        _g, guest = room_client(net, rooms.server.addr)
        assert host.join("party", kind="arena")["clients"] == 1
        assert guest.join("party")["clients"] == 2
        assert host.leave(timeout=10) is True  # the host leaves: on_leave disposes the room
        assert "party" not in rooms.rooms
        wait_for(lambda: presence.rooms() == [], what="the room gone from the directory")
        rooms.refresh()  # (a refresh, and what the directory thread had left, put nothing back)
        assert [r["id"] for r in presence.rooms()] == [], presence.rooms()
    finally:
        rooms.stop()


class Kept(Room):
    """Not disposed when empty."""

    auto_dispose = False


@pytest.mark.timeout(30)
def test_a_server_holds_at_most_max_rooms_and_a_join_that_would_make_one_more_is_refused(net):
    """Clients make rooms by joining (a kind not disposed when empty stays):
    RoomServer(max_rooms=N) bounds them; exactly N are made, the next join
    that would make one is refused with the reason, and joining a room
    that exists still works."""
    presence = LocalPresence()
    rooms = room_server(net, presence, Kept, max_rooms=3)
    try:
        _c, rc = room_client(net, rooms.server.addr)
        for i in range(3):
            assert rc.join(f"r{i}", kind="arena")["room"] == f"r{i}"
        assert sorted(rooms.rooms) == ["r0", "r1", "r2"]
        with pytest.raises(errors.RemoteCallError, match="holds 3 rooms, its most"):
            rc.join("r3", kind="arena")
        assert sorted(rooms.rooms) == ["r0", "r1", "r2"]
        assert rc.join("r1")["room"] == "r1"  # an existing room: fine
    finally:
        rooms.stop()


class GatedPresence(LocalPresence):
    """A LocalPresence whose set_room of one room waits for a gate (a slow
    directory write), once armed."""

    def __init__(self) -> None:
        super().__init__()
        self.armed: str | None = None
        self.entered = threading.Event()
        self.gate = threading.Event()

    def set_room(self, room_id, info, ttl):
        if room_id == self.armed:
            self.armed = None
            self.entered.set()
            assert self.gate.wait(10)
        super().set_room(room_id, info, ttl)


@pytest.mark.timeout(30)
def test_a_room_disposed_while_a_refresh_writes_its_count_does_not_stay_in_the_directory(net):
    """A refresh (here the program's, rooms not started: no directory
    thread) writes a room's count outside the rooms lock; the room is
    disposed (and removed from the directory) while that write waits: the
    refresh must not leave it there (a ghost the lobby places players in)."""
    from peng3dnet.ext.rooms import RoomServer
    from peng3dnet.net import Server

    presence = GatedPresence()
    s = Server(cfg={"net.server.addr": ("127.0.0.1", 0)})
    net.servers.append(s)
    rooms = RoomServer(s, presence, public_addr="127.0.0.1:1")
    rooms.define("arena", Kept)
    rooms.refresh()  # in the directory (its rooms are listed while it is)
    room = rooms.create("arena", "party")
    assert [r["id"] for r in presence.rooms()] == ["party"]
    presence.armed = "party"
    t = threading.Thread(target=rooms.refresh, daemon=True)
    t.start()
    try:
        assert presence.entered.wait(10)  # the refresh is writing party's count now
        rooms.dispose(room)
        assert "party" not in rooms.rooms
        assert presence.rooms() == []  # removed at once
    finally:
        presence.gate.set()
        t.join(10)
    assert not t.is_alive()
    assert presence.rooms() == [], presence.rooms()
    assert rooms.server_id in presence.servers()
