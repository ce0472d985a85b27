"""RoomServer's join call unit by unit, on a stand-in server and a
LocalPresence (no sockets): every way a join goes, what it answers, what
it refuses and with which reason, and what a refusal leaves behind (the
rooms area's mutation run left most of ``_join_call``'s branches to whole
joins over sockets)."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from peng3dnet.errors import AuthenticationError, CallError
from peng3dnet.ext.rooms import LocalPresence, Room, RoomServer
from peng3dnet.ext.rooms.tokens import Seat, make_token, read_token
from tests.rooms import FakeClient, FakeServer


class Trio(Room):
    max_clients = 3

    def on_join(self, client: Any, options: dict[str, Any]) -> Any:
        if options.get("refuse"):
            raise CallError("not today")
        if options.get("bug"):
            raise KeyError("bug")
        return {"seat": len(self.members)}


def _world(presence: LocalPresence | None = None, **kw: Any) -> tuple[RoomServer, FakeServer]:
    server = FakeServer()
    rooms = RoomServer(server, presence or LocalPresence(), server_id="s1", **kw)  # type: ignore[arg-type]
    rooms.define("trio", Trio)
    for cid in range(1, 9):
        server.clients[cid] = FakeClient(cid)
    rooms.refresh()  # in the directory (its rooms are listed while it is)
    return rooms, server


def _join(rooms: RoomServer, cid: int, **msg: Any) -> Any:
    return rooms._join_call(msg, cid)


def test_a_malformed_request_an_unknown_client_and_a_bad_name_are_refused_with_the_reason():
    rooms, _ = _world()
    with pytest.raises(CallError, match="^bad join request$"):
        rooms._join_call(["trio"], 1)
    with pytest.raises(CallError, match="^gone$"):
        _join(rooms, 99, kind="trio")
    with pytest.raises(CallError, match="^room names are 1-64 characters"):
        _join(rooms, 1, room="a b", kind="trio")
    with pytest.raises(CallError, match="^join needs a room, a kind or a seat$"):
        _join(rooms, 1)
    with pytest.raises(CallError, match="^no room 'nowhere'$"):
        _join(rooms, 1, room="nowhere")
    assert rooms.rooms == {} and rooms.stats["joins"] == 0


def test_a_join_by_name_makes_the_room_with_a_kind_and_answers_with_its_count_and_data():
    rooms, server = _world()
    assert _join(rooms, 1, room="red", kind="trio") == {"room": "red", "kind": "trio", "clients": 1,
                                                         "data": {"seat": 0}}
    assert _join(rooms, 2, room="red") == {"room": "red", "kind": "trio", "clients": 2, "data": {"seat": 1}}
    assert list(rooms.rooms["red"].members) == [1, 2] and rooms.room_of(2) is rooms.rooms["red"]
    assert rooms.stats["joins"] == 2 and rooms.stats["created"] == 1
    assert [e for e, _ in server.events] == ["peng3dnet:room.create", "peng3dnet:room.join", "peng3dnet:room.join"]
    info = next(r for r in rooms.presence.rooms() if r["id"] == "red")
    assert (info["clients"], info["seats"]) == (2, 1)  # published, the seats given back


def test_joining_the_room_one_is_in_answers_without_a_second_membership():
    rooms, _ = _world()
    _join(rooms, 1, room="red", kind="trio")
    assert _join(rooms, 1, room="red") == {"room": "red", "kind": "trio", "clients": 1, "data": None}
    assert rooms.stats["joins"] == 1 and next(r for r in rooms.presence.rooms())["seats"] == 2


def test_a_full_room_is_refused_and_a_join_by_kind_goes_to_the_fullest_room_with_a_seat():
    rooms, _ = _world()
    for cid in (1, 2, 3):
        _join(rooms, cid, room="full", kind="trio")
    _join(rooms, 4, room="one", kind="trio")
    _join(rooms, 5, room="two", kind="trio")
    _join(rooms, 6, room="two")
    with pytest.raises(CallError, match="^room 'full' is full$"):
        _join(rooms, 7, room="full")
    assert _join(rooms, 7, kind="trio")["room"] == "two"  # two members: the fullest with a free seat
    assert _join(rooms, 8, kind="trio")["room"] == "one"


def test_a_join_by_kind_with_no_free_seat_anywhere_makes_a_room():
    rooms, _ = _world()
    for cid in (1, 2, 3):
        _join(rooms, cid, kind="trio")
    assert len(rooms.rooms) == 1
    got = _join(rooms, 4, kind="trio")
    assert got["clients"] == 1 and got["room"].startswith("trio-") and len(rooms.rooms) == 2


def test_a_seat_reserved_by_the_lobby_is_not_given_to_a_direct_join():
    rooms, _ = _world()
    _join(rooms, 1, room="red", kind="trio")
    _join(rooms, 2, room="red")
    assert rooms.presence.reserve_seat("red", "lobby-seat", 30.0)  # the room's last seat, for someone else
    with pytest.raises(CallError, match=r"^room 'red' is full \(its last seats are reserved\)$"):
        _join(rooms, 3, room="red")
    got = _join(rooms, 3, kind="trio")  # by kind: another room, not red's reserved seat
    assert got["room"] != "red" and len(rooms.rooms["red"].members) == 2


def test_a_refused_join_leaves_no_room_no_seat_and_no_membership_behind():
    rooms, server = _world()
    for opts, exc, text in (({"refuse": True}, CallError, "^not today$"), ({"bug": True}, KeyError, "bug")):
        with pytest.raises(exc, match=text):
            _join(rooms, 1, room="red", kind="trio", options=opts)
        assert rooms.rooms == {} and rooms.room_of(1) is None
    assert rooms.stats["refused"] == 2 and rooms.stats["joins"] == 0
    assert rooms.presence.rooms() == []
    _join(rooms, 2, room="blue", kind="trio")
    with pytest.raises(CallError, match="^not today$"):
        _join(rooms, 3, room="blue", options={"refuse": True})
    assert list(rooms.rooms) == ["blue"] and next(r for r in rooms.presence.rooms())["seats"] == 2  # its seat back


def test_joining_another_room_leaves_the_first_which_goes_when_empty():
    rooms, server = _world()
    _join(rooms, 1, room="a", kind="trio")
    _join(rooms, 1, room="b", kind="trio")
    assert "a" not in rooms.rooms and list(rooms.rooms["b"].members) == [1]
    assert rooms.stats["leaves"] == 1 and rooms.stats["disposed"] == 1
    assert [r["id"] for r in rooms.presence.rooms()] == ["b"]


def test_a_server_at_max_rooms_refuses_a_join_that_would_make_one():
    rooms, _ = _world(max_rooms=1)
    _join(rooms, 1, room="a", kind="trio")
    with pytest.raises(CallError, match="^this server holds 1 rooms, its most"):
        _join(rooms, 2, room="b", kind="trio")
    assert _join(rooms, 2, room="a")["clients"] == 2


class Hooked(Room):
    """Records its hooks; raises from those its options say."""

    auto_dispose = False
    log: list = []

    def on_create(self, options):
        Hooked.log.append(("create", self.name, dict(options)))
        if options.get("create_raises"):
            raise RuntimeError("create")

    def on_tick(self, dt):
        Hooked.log.append(("tick", self.name, dt))
        if self.options.get("tick_raises"):
            raise RuntimeError("tick")

    def on_leave(self, client):
        Hooked.log.append(("leave", self.name, client.cid))

    def on_dispose(self):
        Hooked.log.append(("dispose", self.name))
        if self.options.get("dispose_raises"):
            raise RuntimeError("dispose")


@pytest.fixture
def hooked():
    Hooked.log = []
    rooms, server = _world()
    rooms.define("hooked", Hooked, colour="red")
    return rooms, server


def test_create_merges_the_kinds_defaults_and_refuses_an_unknown_kind_or_a_taken_name(hooked):
    rooms, server = hooked
    with pytest.raises(CallError, match="^no rooms of kind 'nope' here$"):
        rooms.create("nope")
    with pytest.raises(CallError) as info:  # a client's kind of any length is cut short in the answer
        rooms.create("k" * 100_000)
    text = str(info.value)
    assert text.startswith("no rooms of kind 'kkk") and text.endswith("' here") and "..." in text and len(text) < 200
    room = rooms.create("hooked", "h1", {"size": 2})
    assert room.options == {"colour": "red", "size": 2} and (room.name, room.kind) == ("h1", "hooked")
    assert rooms.create("hooked", "h2", {"colour": "blue"}).options == {"colour": "blue"}
    with pytest.raises(CallError, match="^room 'h1' exists$"):
        rooms.create("hooked", "h1")
    assert Hooked.log == [("create", "h1", {"colour": "red", "size": 2}), ("create", "h2", {"colour": "blue"})]
    assert rooms.stats["created"] == 2 and [e for e, _ in server.events] == ["peng3dnet:room.create"] * 2
    assert sorted(r["id"] for r in rooms.presence.rooms()) == ["h1", "h2"]


def test_a_name_taken_by_another_servers_room_is_refused():
    rooms, _ = _world()
    rooms.presence.register_server("s2", {"addr": "s2:1", "kinds": {"trio": 3}}, 60)
    rooms.presence.set_room("shared", {"server": "s2", "kind": "trio", "clients": 1, "max_clients": 3,
                                       "addr": "s2:1"}, 60)
    with pytest.raises(CallError, match=r"^room 'shared' exists on another server \(s2:1\)$"):
        rooms.create("trio", "shared")
    assert rooms.rooms == {}


def test_hooks_that_raise_are_reported_and_the_room_lives_on_or_goes_as_asked(hooked, caplog):
    rooms, server = hooked
    a = rooms.create("hooked", "a", {"create_raises": True, "tick_raises": True, "dispose_raises": True})
    rooms.create("hooked", "b")
    assert "a" in rooms.rooms  # on_create raised: reported, the room made all the same
    rooms.step(0.25)  # a's tick raises: b still ticks
    assert [e for e in Hooked.log if e[0] == "tick"] == [("tick", "a", 0.25), ("tick", "b", 0.25)]
    assert rooms.stats["ticks"] == 1
    rooms.dispose(a)  # on_dispose raises: reported, the room gone all the same
    assert "a" not in rooms.rooms and rooms.stats["disposed"] == 1
    assert ("peng3dnet:room.dispose", {"room": a}) in server.events
    raised = [r.getMessage() for r in caplog.records if "raised" in r.getMessage()]
    assert raised == ["! rooms: on_create of a raised", "! rooms: the tick of a raised", "! rooms: on_dispose of a raised"]


def test_a_tick_lets_the_closed_members_leave_then_ticks_each_room_with_its_dt(hooked):
    rooms, server = hooked
    _join(rooms, 1, room="h", kind="hooked")
    _join(rooms, 2, room="h")
    del server.clients[1]  # its connection closed
    rooms.step()
    room = rooms.rooms["h"]
    assert list(room.members) == [2] and rooms.room_of(1) is None and rooms.stats["leaves"] == 1
    assert Hooked.log[-2:] == [("leave", "h", 1), ("tick", "h", 1.0 / rooms.tick_rate)]


def test_dispose_makes_its_members_leave_first(hooked):
    rooms, server = hooked
    _join(rooms, 1, room="h", kind="hooked")
    _join(rooms, 2, room="h")
    rooms.dispose(rooms.rooms["h"])
    assert [e for e in Hooked.log if e[0] in ("leave", "dispose")] == [("leave", "h", 1), ("leave", "h", 2),
                                                                      ("dispose", "h")]
    assert rooms.room_of(1) is None and rooms.room_of(2) is None and rooms.rooms == {}
    assert rooms.presence.rooms() == []


# --- the seat of a join: which one is used, and given back ----------------------------------------

def _seat(rooms: RoomServer, room: str, kind: str = "trio", seat_id: str = "S1", server: str | None = None,
          options: dict | None = None) -> bytes:
    """A lobby's seat: reserved in the directory, and its signed token."""
    seat = Seat(room, server or rooms.server_id, seat_id, kind, time.time() + 30, options or {})
    return make_token(rooms.secret, seat)


def test_a_joins_event_names_the_room_and_the_client():
    rooms, server = _world()
    _join(rooms, 1, room="red", kind="trio", options={"x": 1})
    room = rooms.rooms["red"]
    assert server.events == [("peng3dnet:room.create", {"room": room}),
                             ("peng3dnet:room.join", {"room": room, "client": server.clients[1]})]
    assert room.options == {"x": 1}  # the join's options made the room
    got = _join(rooms, 2, kind="trio", options={"y": 2})
    assert got["room"] == "red" and room.options == {"x": 1}  # joined: nothing made


def test_a_join_by_kind_makes_its_room_with_the_joins_options():
    rooms, _ = _world()
    got = _join(rooms, 1, kind="trio", options={"y": 2})
    assert rooms.rooms[got["room"]].options == {"y": 2}


def test_join_options_over_max_options_size_are_refused_and_nothing_is_made():
    """A room keeps its maker's options while it lives, decoded (up to some
    70 times their bytes): 3 MB of empty maps kept 230 MB (the fault hunt)."""
    rooms, _ = _world(max_options_size=64)
    assert RoomServer(FakeServer()).max_options_size == 4096  # (the default)  # type: ignore[arg-type]
    with pytest.raises(CallError, match=r"^join options of 101 bytes: at most 64 \(max_options_size\)$"):
        _join(rooms, 1, kind="trio", options={"x": "y" * 96})
    with pytest.raises(CallError, match=r"^join options of None bytes"):
        _join(rooms, 1, kind="trio", options={"x": object()})  # (cannot be encoded: never a decoded value)
    assert rooms.rooms == {} and rooms.stats["refused"] == 2 and rooms.stats["joins"] == 0
    got = _join(rooms, 1, kind="trio", options={"x": "y" * 50})  # within: joined
    assert rooms.rooms[got["room"]].options == {"x": "y" * 50}


def test_room_and_kind_that_are_not_strings_count_as_not_given():
    rooms, _ = _world()
    got = _join(rooms, 1, room=5, kind="trio")  # no name: by kind
    assert re.fullmatch(r"trio-[0-9a-f]{8}", got["room"])
    with pytest.raises(CallError, match="^no room 'red'$"):
        _join(rooms, 2, room="red", kind=7)  # no kind: not made


def test_a_join_by_kind_keeps_one_in_its_own_room_and_skips_other_kinds():
    rooms, _ = _world()
    rooms.define("other", Trio)
    _join(rooms, 1, room="mine", kind="trio")
    _join(rooms, 2, room="o", kind="other")
    assert _join(rooms, 1, kind="trio") == {"room": "mine", "kind": "trio", "clients": 1, "data": None}
    got = _join(rooms, 3, kind="trio")
    assert got["room"] == "mine"  # not "o", a room of another kind with the same free seats
    got = _join(rooms, 4, kind="other")
    assert got["room"] == "o"


def _free_seats(rooms: RoomServer, name: str) -> int:
    return next(r["seats"] for r in rooms.presence.rooms() if r["id"] == name)


def test_a_seat_token_is_used_and_given_back_once_its_holder_is_in():
    rooms, _ = _world()
    _join(rooms, 1, room="red", kind="trio")
    assert rooms.presence.reserve_seat("red", "S1", 30.0)
    assert _free_seats(rooms, "red") == 1
    got = _join(rooms, 2, seat=_seat(rooms, "red"))
    assert got["room"] == "red" and got["clients"] == 2
    assert _free_seats(rooms, "red") == 1  # the reservation given back: the count has the holder now
    # A seat for the room one is in already: given back at once
    assert rooms.presence.reserve_seat("red", "S2", 30.0)
    assert _join(rooms, 2, seat=_seat(rooms, "red", seat_id="S2"))["clients"] == 2
    assert _free_seats(rooms, "red") == 1


def test_a_refused_seat_join_gives_the_seat_back():
    rooms, _ = _world()
    _join(rooms, 1, room="red", kind="trio")
    assert rooms.presence.reserve_seat("red", "S1", 30.0)
    with pytest.raises(CallError, match="^not today$"):
        _join(rooms, 2, seat=_seat(rooms, "red", options={"refuse": True}), options={"refuse": True})
    assert _free_seats(rooms, "red") == 2


def test_the_seat_of_the_request_comes_before_the_one_checked_at_login():
    rooms, server = _world()
    _join(rooms, 1, room="a", kind="trio")
    _join(rooms, 2, room="b", kind="trio")
    login_seat = Seat("a", rooms.server_id, "LOGIN", "trio", time.time() + 30, {})
    server.clients[3].auth_data = {"seat": login_seat}
    assert _join(rooms, 3, seat=_seat(rooms, "b", seat_id="REQ"))["room"] == "b"
    assert server.clients[3].auth_data == {"seat": login_seat}  # not used: still there
    with pytest.raises(CallError, match="^join needs a room, a kind or a seat$"):
        _join(rooms, 4)
    server.clients[4].auth_data = {"seat": Seat("a", rooms.server_id, "L4", "trio", time.time() + 30, {})}
    assert _join(rooms, 4, kind="trio")["room"] == "a"  # the login's seat, used by a join without one
    assert server.clients[4].auth_data == {}


def test_seat_checks_name_their_reason_and_claim_for_the_tokens_life_and_a_minute():
    class Recording(LocalPresence):
        claims: list = []

        def claim(self, token_id, ttl):
            Recording.claims.append((token_id, ttl))
            return super().claim(token_id, ttl)

    rooms, _ = _world(presence=Recording())
    with pytest.raises(CallError, match="^the seat is on another server$"):
        _join(rooms, 1, seat=_seat(rooms, "red", server="elsewhere"))
    expires = time.time() + 30
    token = make_token(rooms.secret, Seat("red", rooms.server_id, "S9", "trio", expires, {}))
    _join(rooms, 1, seat=token)
    ((seat_id, ttl),) = Recording.claims
    assert seat_id == "S9" and abs(ttl - (expires - time.time() + 60)) < 0.5
    with pytest.raises(CallError, match="^the seat token was used already$"):
        _join(rooms, 2, seat=token)


def test_authenticate_refuses_credentials_that_are_not_a_seat():
    rooms, server = _world()
    for credentials in (None, ["seat"], {"seat": b"forged"}, {}):
        with pytest.raises(AuthenticationError):
            rooms.authenticate(server.clients[1], credentials)
    token = _seat(rooms, "red")
    assert rooms.authenticate(server.clients[1], {"seat": token}) == {"seat": read_token(rooms.secret, token)}


def test_a_seat_whose_options_are_not_a_map_makes_its_room_with_none():
    """(A game that passed a client's options to Lobby.matchmake unchecked
    got a TypeError in the join handler, logged at ERROR.)"""
    rooms, _ = _world()
    token = make_token(rooms.secret, Seat("fresh", rooms.server_id, "S9", "trio", time.time() + 30, [1, 2]))
    got = _join(rooms, 1, seat=token)
    assert got["room"] == "fresh" and rooms.rooms["fresh"].options == {}
