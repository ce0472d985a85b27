"""Lobby.matchmake unit by unit, on a LocalPresence (no sockets, no Redis):
which room it picks and in what order, where it places a new room, the
errors it raises and what its ticket says (the rooms area's mutation run
left most of matchmake's branches to whole joins over sockets)."""

from __future__ import annotations

import time

import pytest

from peng3dnet.ext.rooms import Lobby, LocalPresence
from peng3dnet.ext.rooms.lobby import NoServerError
from peng3dnet.ext.rooms.tokens import read_token

SECRET = b"k" * 32


def _server(p: LocalPresence, sid: str, load: float = 0.0, seats: int = 4, kind: str = "arena") -> None:
    p.register_server(sid, {"addr": f"{sid}.example:1", "kinds": {kind: seats}, "load": load}, 60)


def _room(p: LocalPresence, rid: str, sid: str, clients: int, max_clients: int = 4, kind: str = "arena") -> None:
    p.set_room(rid, {"server": sid, "kind": kind, "clients": clients, "max_clients": max_clients}, 60)


def test_no_live_server_of_the_kind_is_refused_with_the_kind():
    p = LocalPresence()
    _server(p, "s1", kind="race")
    with pytest.raises(NoServerError, match="^no live server offers rooms of kind 'arena'$"):
        Lobby(p, SECRET).matchmake("arena")


def test_the_fullest_room_with_a_free_seat_comes_first_then_the_least_loaded_server():
    p = LocalPresence()
    _server(p, "s1", load=0.5)
    _server(p, "s2", load=0.1)
    _room(p, "a", "s1", clients=1)
    _room(p, "b", "s1", clients=3)
    _room(p, "c", "s2", clients=3)  # as full as b, on the less loaded server
    _room(p, "full", "s2", clients=4)  # no free seat: never picked
    _room(p, "gone", "s9", clients=3)  # its server is not live: never picked
    lobby = Lobby(p, SECRET)
    assert lobby.matchmake("arena")["room"] == "c"  # c's last seat now reserved
    assert lobby.matchmake("arena")["room"] == "b"
    assert lobby.matchmake("arena")["room"] == "a"
    assert lobby.matchmake("arena")["room"] == "a"


def test_a_named_room_is_joined_where_it_is_or_refused_when_full():
    p = LocalPresence()
    _server(p, "s1")
    _server(p, "s2")
    _room(p, "red", "s2", clients=3)
    lobby = Lobby(p, SECRET)
    t = lobby.matchmake("arena", room="red")
    assert (t["room"], t["server"], t["addr"]) == ("red", "s2", "s2.example:1")
    with pytest.raises(NoServerError, match="^room 'red' is full$"):
        lobby.matchmake("arena", room="red")


def test_a_new_room_goes_to_the_server_with_the_fewest_seats_taken_then_the_fewest_rooms():
    p = LocalPresence()
    _server(p, "s1")
    _server(p, "s2")
    _server(p, "s3")
    _room(p, "x", "s1", clients=4)  # s1: 4 seats taken
    _room(p, "y", "s2", clients=0)  # s2: none taken, one room
    _room(p, "z", "s2", clients=4, max_clients=4)  # (full) s2: 4 taken too
    lobby = Lobby(p, SECRET)
    t = lobby.matchmake("arena", room="new1")  # s3: nothing taken, no rooms
    assert (t["room"], t["server"]) == ("new1", "s3")
    info = next(r for r in p.rooms("arena") if r["id"] == "new1")
    assert (info["server"], info["kind"], info["clients"], info["max_clients"], info["seats"]) == ("s3", "arena", 0, 4, 3)


def test_new_rooms_placed_while_the_loads_look_equal_take_turns():
    """Lobbies placing rooms at the same moment see the same loads: the
    directory's counter sends them to the tied servers in turn (here the
    directory's room list does not show the new rooms yet)."""

    class Unchanged(LocalPresence):
        def rooms(self, kind=None):
            return []  # (the loads as they were: nothing taken anywhere)

    p = Unchanged()
    for sid in ("s1", "s2", "s3"):
        _server(p, sid)
    lobby = Lobby(p, SECRET)
    servers = [lobby.matchmake("arena", room=f"r{i}")["server"] for i in range(6)]
    assert servers[:3] != [servers[0]] * 3 and sorted(servers[:3]) == ["s1", "s2", "s3"]
    assert servers[3:] == servers[:3]  # and round again, in the same order


def test_a_generated_room_name_is_a_room_name_whatever_the_kind():
    p = LocalPresence()
    _server(p, "s1", kind="capture the flag")
    t = Lobby(p, SECRET).matchmake("capture the flag")
    assert t["room"].startswith("room-") and len(t["room"]) == 13
    _server(p, "s2")
    assert Lobby(p, SECRET).matchmake("arena", room=None)["room"].startswith("arena-")


def test_the_ticket_is_a_signed_seat_for_that_room_server_and_kind_with_the_options():
    p = LocalPresence()
    _server(p, "s1")
    _room(p, "red", "s1", clients=0)
    before = time.time()
    t = Lobby(p, SECRET, seat_ttl=7.0).matchmake("arena", options={"team": "blue"}, room="red")
    assert set(t) == {"addr", "token", "room", "server", "kind"} and t["kind"] == "arena"
    seat = read_token(SECRET, t["token"])
    assert (seat.room, seat.server, seat.kind, seat.options) == ("red", "s1", "arena", {"team": "blue"})
    assert before + 7.0 <= seat.expires <= time.time() + 7.0
    assert next(r for r in p.rooms() if r["id"] == "red")["seats"] == 3  # the seat is held for it


def test_a_named_room_placed_at_once_by_another_lobby_is_joined_on_that_lobbys_server():
    """Two lobbies place room "duel" at the same moment on different
    servers: the second's reservation lands in the room that exists, so its
    ticket names that room's server."""

    class Racing(LocalPresence):
        """rooms() does not show "duel" yet when the lobby looks; it exists
        (placed on s2) by the time the lobby reserves."""

        def __init__(self) -> None:
            super().__init__()
            self.hidden = True

        def rooms(self, kind=None):
            out = super().rooms(kind)
            return [r for r in out if r["id"] != "duel"] if self.hidden else out

        def reserve_seat(self, room_id, seat_id, ttl, info=None):
            self.hidden = False
            return super().reserve_seat(room_id, seat_id, ttl, info)

    p = Racing()
    _server(p, "s1")
    _server(p, "s2", load=0.9)
    _room(p, "other", "s1", clients=3)  # s1 holds more: the lobby would place "duel" on s2 anyway...
    _room(p, "duel", "s1", clients=0)  # ...but "duel" already exists on s1
    t = Lobby(p, SECRET).matchmake("arena", room="duel")
    assert (t["room"], t["server"], t["addr"]) == ("duel", "s1", "s1.example:1")


def test_a_named_room_on_a_server_that_is_gone_is_refused_and_its_seat_released():
    class Stale(LocalPresence):
        """The room "duel" is listed for a server whose registration lapsed."""

        def rooms(self, kind=None):
            out = super().rooms(kind)
            if self.reserved:  # (after the reservation: it names a server not live any more)
                out = [{**r, "server": "s9"} if r["id"] == "duel" else r for r in out]
            return out

        reserved = False

        def reserve_seat(self, room_id, seat_id, ttl, info=None):
            self.reserved = True
            self.last = (room_id, seat_id)
            return super().reserve_seat(room_id, seat_id, ttl, info)

    p = Stale()
    _server(p, "s1")
    with pytest.raises(NoServerError, match="^room 'duel' is on a server that is gone$"):
        Lobby(p, SECRET).matchmake("arena", room="duel")
    room_id, seat_id = p.last
    assert seat_id not in p._seats.get(room_id, {})  # released


def test_a_named_room_of_another_kind_is_refused_and_takes_no_seat():
    p = LocalPresence()
    p.register_server("s1", {"addr": "s1:1", "kinds": {"arena": 4, "duel": 2}}, 60)
    _room(p, "red", "s1", clients=1, kind="arena")
    lobby = Lobby(p, SECRET)
    with pytest.raises(NoServerError, match="^room 'red' is a room of kind 'arena', not 'duel'$"):
        lobby.matchmake("duel", room="red")
    assert [(r["id"], r["seats"]) for r in p.rooms()] == [("red", 3)]


def test_a_named_room_of_another_kind_placed_at_once_by_another_lobby_is_refused_and_its_seat_released():
    class Racing(LocalPresence):
        def reserve_seat(self, room_id, seat_id, ttl, info=None):
            if info is not None and room_id == "red" and "red" not in [r["id"] for r in self.rooms()]:
                # another lobby placed "red" as an arena between our look and our reservation
                self.set_room("red", {"server": "s1", "kind": "arena", "clients": 0, "max_clients": 4}, 60)
            return super().reserve_seat(room_id, seat_id, ttl, info)

    p = Racing()
    p.register_server("s1", {"addr": "s1:1", "kinds": {"arena": 4, "duel": 2}}, 60)
    with pytest.raises(NoServerError, match="^room 'red' is a room of kind 'arena', not 'duel'$"):
        Lobby(p, SECRET).matchmake("duel", room="red")
    assert [(r["id"], r["seats"]) for r in p.rooms()] == [("red", 4)]


def test_a_join_by_kind_looks_at_that_kind_only_and_rooms_of_servers_that_offer_it():
    p = LocalPresence()
    p.register_server("s1", {"addr": "s1:1", "kinds": {"arena": 4, "duel": 2}, "load": 0.0}, 60)
    p.register_server("old", {"addr": "old:1", "kinds": {"duel": 2}, "load": 0.0}, 60)
    _room(p, "big-arena", "s1", clients=3, kind="arena")  # fuller, but another kind
    _room(p, "stale", "old", clients=3, kind="arena")  # an arena on a server that offers no arenas now
    _room(p, "d", "s1", clients=1, max_clients=2, kind="duel")
    assert Lobby(p, SECRET).matchmake("duel")["room"] == "d"
    ticket = Lobby(p, SECRET).matchmake("arena")
    assert ticket["room"] == "big-arena" and ticket["server"] == "s1"


def test_equally_full_rooms_go_to_the_server_whose_load_is_lowest_a_missing_load_being_none():
    p = LocalPresence()
    p.register_server("busy", {"addr": "busy:1", "kinds": {"arena": 4}, "load": 0.5}, 60)
    p.register_server("quiet", {"addr": "quiet:1", "kinds": {"arena": 4}}, 60)  # says no load: 0
    _room(p, "on-busy", "busy", clients=2)
    _room(p, "on-quiet", "quiet", clients=2)
    assert Lobby(p, SECRET).matchmake("arena")["room"] == "on-quiet"


def test_a_listed_room_whose_last_seat_goes_meanwhile_is_passed_over_for_a_new_room():
    class Raced(LocalPresence):
        def reserve_seat(self, room_id, seat_id, ttl, info=None):
            if info is None:
                return False  # another lobby took the listed seats between our look and our reservation
            return super().reserve_seat(room_id, seat_id, ttl, info)

    p = Raced()
    _server(p, "s1")
    _room(p, "a", "s1", clients=1)
    ticket = Lobby(p, SECRET).matchmake("arena")
    assert ticket["room"] not in ("a",) and ticket["room"].startswith("arena-")


def test_the_least_loaded_server_counts_every_room_it_holds():
    p = LocalPresence()
    _server(p, "A")
    _server(p, "B")
    _room(p, "a1", "A", clients=3, max_clients=4)  # A: 3 taken in one room
    _room(p, "b1", "B", clients=2, max_clients=3)  # B: 2 + 2 taken in two rooms
    _room(p, "b2", "B", clients=2, max_clients=3)
    p.reserve_seat("a1", "x", 60)
    p.reserve_seat("b1", "y", 60)
    p.reserve_seat("b2", "z", 60)  # every room full now: a new room is placed
    ticket = Lobby(p, SECRET).matchmake("arena")
    assert ticket["server"] == "A"  # 4 taken on A against 6 on B


def test_ties_on_seats_go_to_the_server_with_fewer_rooms():
    p = LocalPresence()
    _server(p, "A")
    _server(p, "B")
    _room(p, "a1", "A", clients=0, max_clients=0)  # (no seats: held, nothing taken)
    for i in range(3):
        _room(p, f"b{i}", "B", clients=0, max_clients=0)
    assert Lobby(p, SECRET).matchmake("arena")["server"] == "A"  # 1 room against 3


def test_placements_count_their_turns_per_kind_and_the_room_is_listed_with_its_address():
    p = LocalPresence()
    _server(p, "s1")
    before = time.time()
    ticket = Lobby(p, SECRET).matchmake("arena")
    assert p.top("peng3dnet:lobby") == [("arena", 1.0)]
    (listed,) = p.rooms()
    assert listed["id"] == ticket["room"] and listed["addr"] == "s1.example:1"
    assert before <= listed["created"] <= time.time()
    assert len(ticket["room"]) == len("arena-") + 8


def test_a_ticket_and_its_reservation_last_seat_ttl():
    clock = [1000.0]
    p = LocalPresence(clock=lambda: clock[0])
    _server(p, "s1")
    _room(p, "a", "s1", clients=0)
    before = time.time()
    ticket = Lobby(p, SECRET).matchmake("arena")
    assert ticket["room"] == "a"
    assert 15 - 1 <= read_token(SECRET, ticket["token"]).expires - before <= 15 + 1
    clock[0] += 14.5
    assert p.rooms()[0]["seats"] == 3
    clock[0] += 0.5
    assert p.rooms()[0]["seats"] == 4  # the reservation lasted 15 s


def test_a_named_room_on_a_live_server_that_no_longer_offers_its_kind_is_refused_as_such():
    p = LocalPresence()
    p.register_server("s1", {"addr": "s1:1", "kinds": {"arena": 4}}, 60)
    p.register_server("s2", {"addr": "s2:1", "kinds": {"duel": 2}}, 60)  # was a duel server once
    _room(p, "red", "s2", clients=1, max_clients=2, kind="duel")
    p.register_server("s3", {"addr": "s3:1", "kinds": {"duel": 2}}, 60)
    p.register_server("s2", {"addr": "s2:1", "kinds": {"arena": 4}}, 60)  # s2 offers arenas only now
    with pytest.raises(NoServerError, match="^room 'red' is on a server that no longer offers rooms of kind 'duel'$"):
        Lobby(p, SECRET).matchmake("duel", room="red")
    assert p.top("peng3dnet:lobby") == [] and [(r["id"], r["seats"]) for r in p.rooms()] == [("red", 1)]


def test_a_new_rooms_server_is_chosen_by_the_seats_taken_in_its_rooms_not_their_size():
    p = LocalPresence()
    p.register_server("A", {"addr": "A:1", "kinds": {"arena": 8}}, 60)
    p.register_server("B", {"addr": "B:1", "kinds": {"arena": 8}}, 60)
    _room(p, "a1", "A", clients=3, max_clients=4)  # A: 3 seats taken of 4
    _room(p, "b1", "B", clients=0, max_clients=8)  # B: a bigger room, none taken
    ticket = Lobby(p, SECRET).matchmake("arena", room="new")  # a named new room: placed, not filled
    assert (ticket["room"], ticket["server"]) == ("new", "B")


def test_a_server_whose_rooms_of_the_kind_have_no_seats_cannot_take_a_new_one():
    p = LocalPresence()
    p.register_server("s1", {"addr": "s1:1", "kinds": {"arena": 0}}, 60)
    with pytest.raises(NoServerError, match=r"^room 'arena-[0-9a-f]{8}' is full$"):
        Lobby(p, SECRET).matchmake("arena")


def test_options_that_are_not_a_map_are_refused_before_a_seat_is_taken():
    p = LocalPresence()
    _server(p, "s1")
    with pytest.raises(TypeError, match="^options must be a dict, not list$"):
        Lobby(p, SECRET).matchmake("arena", options=[1, 2])  # type: ignore[arg-type]
    assert p.rooms() == []
