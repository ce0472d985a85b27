"""peng3dnet.ext.sync.server: membership from the connection table (no
message can fake a join or a leave), inputs, the input size bound, interest,
and snapshots to late joiners."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from peng3dnet import events
from peng3dnet.ext.sync import INPUT_PACKET, SyncServer, distance_interest
from peng3dnet.protocol.handshake import HandshakeState
from tests.helpers import wait_for

# --- a server stand-in: the connection table and the calls SyncServer makes -----------------


class FakeConn:
    """What SyncServer reads of a ClientOnServer."""

    def __init__(self, cid: int, conntype: str = "classic", state: HandshakeState = HandshakeState.ACTIVE) -> None:
        self.cid = cid
        self.conntype = conntype
        self.protocol_state = state
        self.suspended = False  # a resumable session between sockets (ClientOnServer.suspended)


class FakeServer:
    def __init__(self) -> None:
        self.registry = None
        self.clients: dict[int, FakeConn] = {}
        self.packets: dict[str, Any] = {}
        self.sent: list[tuple[int, dict]] = []
        self.events: list[tuple[str, dict]] = []

    def register_packet(self, name, obj, n=None):
        self.packets[name] = obj
        return 63 + len(self.packets)

    def send_encoded(self, ptype, body, cid):
        self.sent.append((cid, msgpack.unpackb(body, raw=False)))

    def sendEvent(self, event, data=None):
        self.events.append((event, dict(data or {})))

    def deliver(self, cid: int, msg: Any) -> None:
        """What process() does with an INPUT_PACKET from ``cid``."""
        self.packets[INPUT_PACKET]._receive(msg, cid)


class Log:
    """A SyncServer on a FakeServer whose hooks record what happens, in order."""

    def __init__(self, **kw: Any) -> None:
        self.server = FakeServer()
        self.sync = SyncServer(self.server, **kw)
        self.calls: list[tuple] = []
        self.sync.on_join = self.on_join
        self.sync.on_leave = lambda cid, eid: self.calls.append(("leave", cid, eid))
        self.sync.on_input = lambda cid, eid, inp: self.calls.append(("input", cid, eid, inp))

    def on_join(self, cid: int) -> None:
        self.calls.append(("join", cid))
        self.sync.entities[f"p{cid}"] = {"x": 0.0}
        self.sync.owners[cid] = f"p{cid}"

    def events(self) -> list[tuple[str, dict]]:
        return [(e, d) for e, d in self.server.events if e.startswith("peng3dnet:sync.")]


def test_membership_follows_the_connection_table():
    w = Log()
    table = w.server.clients
    table[1] = FakeConn(1)
    table[2] = FakeConn(2, conntype="ping")
    table[3] = FakeConn(3, state=HandshakeState.HANDSHAKE)
    table[4] = FakeConn(4, conntype="custom")
    w.sync.step()
    assert w.sync.clients == [1] and w.calls == [("join", 1)]
    table[3].protocol_state = HandshakeState.ACTIVE
    w.sync.step()
    assert sorted(w.sync.clients) == [1, 3]
    # closed but not forgotten yet (its last packets wait for process()): still joined
    table[1].protocol_state = HandshakeState.CLOSED
    w.sync.step()
    assert sorted(w.sync.clients) == [1, 3]
    del table[1]
    w.sync.step()
    assert w.sync.clients == [3] and 1 not in w.sync.owners
    assert w.calls == [("join", 1), ("join", 3), ("leave", 1, "p1")]
    assert w.events() == [
        ("peng3dnet:sync.join", {"cid": 1}),
        ("peng3dnet:sync.join", {"cid": 3}),
        ("peng3dnet:sync.leave", {"cid": 1, "eid": "p1"}),
    ]
    assert "p1" in w.sync.entities  # removing the entity is the game's business


def test_a_connection_that_closes_before_its_first_tick_never_joins():
    w = Log()
    w.server.clients[1] = FakeConn(1, state=HandshakeState.CLOSED)
    w.server.deliver(1, {"ack": -1, "seq": 1, "in": {"dx": 1}})
    w.sync.step()
    del w.server.clients[1]
    w.sync.step()
    assert w.calls == [] and w.events() == [] and w.sync.stats["inputs"] == 0


@pytest.mark.parametrize(
    "fake",
    [
        {"_leave": True},
        {"_join": True},
        {"_join": True, "_leave": True, "_anything": 1},
        {"ack": 1, "seq": 1, "in": {"_leave": True}},
        {"ack": 1, "seq": 2, "in": {"_join": True}},
        {"_leave": True, "seq": 3, "in": {"dx": 1}},
    ],
)
def test_messages_cannot_fake_a_join_or_a_leave(fake):
    w = Log()
    w.server.clients[1] = FakeConn(1)
    w.server.clients[2] = FakeConn(2)
    w.sync.step()
    w.server.sent.clear()
    w.server.deliver(1, fake)
    w.sync.step()
    w.sync.step()
    assert sorted(w.sync.clients) == [1, 2] and w.sync.owners == {1: "p1", 2: "p2"}
    assert [e for e, _ in w.events()] == ["peng3dnet:sync.join"] * 2
    assert [c for c in w.calls if c[0] != "input"] == [("join", 1), ("join", 2)]
    inputs = [c for c in w.calls if c[0] == "input"]
    if "in" in fake:  # an ordinary input of client 1, handed to the game as it is
        assert inputs == [("input", 1, "p1", fake["in"])]
    else:
        assert inputs == []
    assert sorted(cid for cid, _ in w.server.sent) == [1, 1, 2, 2]  # both still get snapshots


def test_inputs_sent_before_a_leave_are_applied_before_it():
    w = Log()
    w.server.clients[1] = FakeConn(1)
    w.sync.step()
    w.server.deliver(1, {"ack": 1, "seq": 1, "in": "last words"})
    del w.server.clients[1]
    w.sync.step()
    assert w.calls == [("join", 1), ("input", 1, "p1", "last words"), ("leave", 1, "p1")]


def test_input_size_bound():
    w = Log(max_input_size=64)
    w.server.clients[1] = FakeConn(1)
    w.sync.step()
    small = {"ack": 1, "seq": 1, "in": "x" * 10}
    big = {"ack": 1, "seq": 2, "in": "x" * 64}
    assert len(msgpack.packb(small)) <= 64 < len(msgpack.packb(big))
    w.server.deliver(1, big)
    w.server.deliver(1, small)
    w.sync.step()
    assert [c[3] for c in w.calls if c[0] == "input"] == ["x" * 10]
    assert w.sync.stats["inputs_dropped"] == 1 and w.sync.stats["inputs"] == 1
    # the limit is on the whole message, whatever its keys
    w.server.deliver(1, {"seq": 3, "in": 1, "padding": "y" * 100})
    w.sync.step()
    assert w.sync.stats["inputs_dropped"] == 2 and w.sync.stats["inputs"] == 1


def test_default_input_size_bound_is_4_kib():
    w = Log()
    assert w.sync.max_input_size == 4096
    w.server.clients[1] = FakeConn(1)
    w.sync.step()
    head = len(msgpack.packb({"ack": 1, "seq": 1, "in": ""}))
    exact = {"ack": 1, "seq": 1, "in": "x" * (4096 - head - 2)}  # str8/16 headers: +2 from 32 bytes up
    size = len(msgpack.packb(exact))
    exact["in"] += "x" * (4096 - size)
    assert len(msgpack.packb(exact)) == 4096
    w.server.deliver(1, exact)
    w.server.deliver(1, {**exact, "seq": 2, "in": exact["in"] + "x"})
    w.sync.step()
    assert w.sync.stats["inputs"] == 1 and w.sync.stats["inputs_dropped"] == 1


def test_stopped_server_drops_inputs_until_started():
    w = Log(tick_rate=200.0)
    w.server.clients[1] = FakeConn(1)
    w.sync.step()
    w.sync.stop()
    w.server.deliver(1, {"seq": 1, "in": "while stopped"})
    w.sync.step()
    assert w.sync.stats["inputs"] == 0
    w.sync.start()
    try:
        w.server.deliver(1, {"seq": 2, "in": "after start"})
        wait_for(lambda: ("input", 1, "p1", "after start") in w.calls, what="input applied by the tick thread")
    finally:
        w.sync.stop()
    assert [c[3] for c in w.calls if c[0] == "input"] == ["after start"]


# --- live -------------------------------------------------------------------------------------


def test_late_join_gets_full_state_and_leave_disappears(world):
    s, game, _ = world.make()
    game.sync.start()
    a, sa = world.join(s)
    b, sb = world.join(s)
    assert sb.stats["full_snapshots"] == 1
    tick_b, view_b = sb.authoritative()
    assert sa.own in view_b and sb.own in view_b and "npc" in view_b
    b_eid = sb.own
    wait_for(lambda: b_eid in sa.view, what="A sees B")
    b.stop()
    b.join(5)
    game.sync.entities.pop(b_eid, None)  # the game removes the entity of a leaver
    wait_for(lambda: b_eid not in sa.view, what="B gone from A's view")


def test_interest_filter_hides_far_entities(world):
    s, game, _ = world.make(interest=distance_interest(50.0))
    game.sync.start()
    a, sa = world.join(s)
    with game.sync.lock:
        game.sync.entities["near"] = {"x": game.sync.entities[sa.own]["x"] + 10, "y": 0.0}
        game.sync.entities["far"] = {"x": 10_000.0, "y": 0.0}
    wait_for(lambda: "near" in sa.view, what="near entity")
    assert "far" not in sa.view
    with game.sync.lock:  # the far entity walks into view, then out again
        game.sync.entities["far"] = {"x": game.sync.entities[sa.own]["x"] + 20, "y": 0.0}
    wait_for(lambda: "far" in sa.view, what="far entity entering")
    with game.sync.lock:
        game.sync.entities["far"] = {"x": 10_000.0, "y": 0.0}
    wait_for(lambda: "far" not in sa.view, what="far entity leaving")


def test_a_connected_client_cannot_fake_join_or_leave(world, net):
    s, game, _ = world.make()
    joins = net.recorder(s, "peng3dnet:sync.join")
    leaves = net.recorder(s, "peng3dnet:sync.leave")
    seen: list[tuple[int, Any]] = []
    on_input = game.sync.on_input

    def recording_input(cid, eid, inp):
        seen.append((cid, inp))
        on_input(cid, eid, inp)

    game.sync.on_input = recording_input
    game.sync.start()
    a, sa = world.join(s)
    b, sb = world.join(s)
    joins.wait_for("peng3dnet:sync.join", 2)
    a_cid, b_cid = int(sa.own[1:]), int(sb.own[1:])
    b_before = sb.stats["snapshots"]
    # as the game's input, and as the whole message (bypassing SyncClient)
    sa.send_input({"_leave": True})
    sa.send_input({"_join": True})
    sa.send_input({"_leave": True, "_join": True, "_resync": True, "_anything": 1})
    for fake in ({"_leave": True}, {"_join": True}, {"_join": True, "_leave": True, "_x": [1]}):
        a.send_message(INPUT_PACKET, fake)
    marker = sa.send_input({"dx": 1, "dy": 0, "dt": 0.05})  # after all of them, on the same connection
    wait_for(lambda: (a_cid, {"dx": 1, "dy": 0, "dt": 0.05}) in seen, what="the marker input applied")
    assert marker == 4
    assert [inp for cid, inp in seen if cid == a_cid][:3] == [
        {"_leave": True},
        {"_join": True},
        {"_leave": True, "_join": True, "_resync": True, "_anything": 1},
    ]
    tick_now = game.sync.tick
    wait_for(lambda: sa.tick > tick_now + 2 and sb.stats["snapshots"] > b_before + 2, what="snapshots go on")
    assert sorted(game.sync.clients) == sorted([a_cid, b_cid])
    assert game.sync.owners == {a_cid: sa.own, b_cid: sb.own}
    assert sa.own in game.sync.entities and sa.own in sa.view and sa.own in sb.view
    assert [d["cid"] for d in joins.wait_for("peng3dnet:sync.join", 2)] == [a_cid, b_cid]
    assert len(joins.items) == 2 and leaves.items == []
    assert sa.stats["full_snapshots"] == 1 and sa.stats["desyncs"] == 0  # not re-joined


def test_oversized_input_is_dropped_live(world):
    s, game, _ = world.make(max_input_size=256)
    game.sync.start()
    a, sa = world.join(s)
    x0 = game.sync.entities[sa.own]["x"]
    sa.send_input({"dx": 1, "dt": 0.1, "pad": "z" * 300})  # would move 10 units
    sa.send_input({"dx": 0, "dt": 0.0})
    wait_for(lambda: game.sync.stats["inputs"] >= 1, what="the small input applied")
    assert game.sync.stats["inputs_dropped"] == 1
    assert game.sync.entities[sa.own]["x"] == x0
    assert sa.own in game.sync.entities and len(game.sync.clients) == 1


def test_leave_event_comes_once_with_the_owned_entity(world, net):
    s, game, _ = world.make()
    leaves = net.recorder(s, "peng3dnet:sync.leave")
    game.sync.start()
    a, sa = world.join(s)
    eid, cid = sa.own, int(sa.own[1:])
    a.stop()
    a.join(5)
    got = leaves.wait_for("peng3dnet:sync.leave")
    assert got == [{"cid": cid, "eid": eid, "peng": None, "server": s}]
    wait_for(lambda: game.sync.clients == [], what="no client left")
    assert cid not in game.sync.owners
    tick = game.sync.tick
    wait_for(lambda: game.sync.tick > tick + 3, what="more ticks")
    assert len(leaves.items) == 1


def test_sync_events_name_their_sender(world):
    s, game, _ = world.make()
    got = []

    def on_join(event, data):
        got.append(data["server"])

    events.subscribe("peng3dnet:sync.join", on_join, sender=s)
    world.add(lambda: events.unsubscribe("peng3dnet:sync.join", on_join, sender=s))
    game.sync.start()
    world.join(s)
    wait_for(lambda: got, what="join event")
    assert got == [s]
