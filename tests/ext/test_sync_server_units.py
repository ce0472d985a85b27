"""peng3dnet.ext.sync.server, unit by unit on a FakeServer (no sockets, no
sleeps): the documented defaults, registration, the per-client state, the
ack/history window, the hooks' errors and log lines, the room filter,
interest's arguments, and the tick loop's schedule on a fake clock."""

from __future__ import annotations

import logging
import threading
from types import SimpleNamespace
from typing import Any

import pytest

import peng3dnet.ext.sync.server as server_mod
from peng3dnet.errors import Peng3dNetError
from peng3dnet.ext.sync import INPUT_PACKET, SNAPSHOT_PACKET, SyncServer, checksum
from peng3dnet.packet import Packet
from tests.ext.test_sync_server import FakeConn, FakeServer, Log

USER = "peng3dnet.user"


def user_errors(caplog) -> list[tuple[str, tuple, type | None]]:
    return [(r.msg, r.args, r.exc_info[0] if r.exc_info else None) for r in caplog.records if r.name == USER]


def joined(**kw: Any) -> Log:
    """A Log whose client 1 joined at tick 1 (and got its first, full snapshot)."""
    w = Log(**kw)
    w.server.clients[1] = FakeConn(1)
    w.sync.step()
    return w


def last_base(w: Log) -> int:
    return w.server.sent[-1][1]["b"]


# --- defaults, registration, per-client state ---------------------------------------------------


def test_documented_defaults_and_initial_state():
    sync = SyncServer(FakeServer())
    assert (sync.tick_rate, sync.history, sync.max_input_size, sync.tick) == (20.0, 64, 4096, 0)
    assert sync.max_inputs_per_tick == 16
    assert sync.interest is None and sync.members is None
    assert (sync.on_join, sync.on_input, sync.on_leave, sync.on_step) == (None, None, None, None)
    assert sync.stats == {"ticks": 0, "snapshots": 0, "full_snapshots": 0, "resyncs": 0, "inputs": 0, "inputs_dropped": 0}
    assert sync.entities == {} and sync.owners == {} and sync.clients == []
    assert sync.step() == 1  # the first tick is 1


@pytest.mark.parametrize("kw,dt", [({}, 0.05), ({"tick_rate": 4.0}, 0.25)])
def test_step_without_dt_passes_one_over_the_tick_rate_to_on_step(kw, dt):
    sync = SyncServer(FakeServer(), **kw)
    calls = []
    sync.on_step = lambda dt, tick: calls.append((dt, tick))
    assert sync.step() == 1
    assert sync.step(0.3) == 2
    assert sync.step(None) == 3
    assert calls == [(dt, 1), (0.3, 2), (dt, 3)]


def test_without_hooks_a_join_an_input_and_a_leave_report_no_error(caplog):
    server = FakeServer()
    sync = SyncServer(server)
    server.clients[1] = FakeConn(1)
    with caplog.at_level(logging.DEBUG):
        sync.step()
        server.deliver(1, {"ack": 1, "seq": 1, "in": "x"})
        sync.step()
        del server.clients[1]
        sync.step()
    assert user_errors(caplog) == []
    assert sync.stats["inputs"] == 1 and sync.clients == []
    assert [e for e, _ in server.events] == ["peng3dnet:sync.join", "peng3dnet:sync.leave"]


def test_packets_registered_with_the_servers_registry_and_server():
    server = FakeServer()
    server.registry = registry = object()
    sync = SyncServer(server)
    snap, inp = server.packets[SNAPSHOT_PACKET], server.packets[INPUT_PACKET]
    assert type(snap) is Packet and (snap.reg, snap.peer) == (registry, server)
    assert isinstance(inp, server_mod._InputPacket) and (inp.reg, inp.peer, inp.sync) == (registry, server, sync)
    other = FakeServer()
    SyncServer(other, register=False)
    assert other.packets == {}


def test_input_packet_ignores_a_message_without_cid():
    w = joined()
    w.server.packets[INPUT_PACKET]._receive({"seq": 1, "in": "x"}, None)
    w.server.packets[INPUT_PACKET]._receive({"seq": 2, "in": "y"}, 1)
    assert list(w.sync._inputs) == [(1, {"seq": 2, "in": "y"})]


def test_a_joined_client_starts_with_its_cid_no_ack_no_input_and_a_full_snapshot_due():
    w = Log()
    w.server.clients[7] = FakeConn(7)
    w.server.clients[3] = FakeConn(3)
    created = []
    w.sync.on_join = lambda cid: created.append((cid, vars_of(w.sync._clients[cid])))
    w.sync.step()
    fresh = {"acked": -1, "history": {}, "resync": True, "last_seq": -1}
    assert created == [(3, {"cid": 3, **fresh}), (7, {"cid": 7, **fresh})]
    cs = w.sync._clients[7]
    assert (cs.cid, cs.acked, cs.resync, cs.last_seq, sorted(cs.history)) == (7, -1, False, -1, [1])
    assert [(cid, msg["b"], msg["ai"], msg["t"]) for cid, msg in w.server.sent] == [(3, -1, -1, 1), (7, -1, -1, 1)]
    assert w.sync.stats["full_snapshots"] == 2


def vars_of(cs: Any) -> dict[str, Any]:
    return {name: dict(v) if isinstance(v := getattr(cs, name), dict) else v for name in type(cs).__slots__}


def test_without_acks_every_snapshot_is_full():
    w = joined()
    w.sync.entities["e"] = {"x": 1.5}
    w.sync.step()
    view = {"p1": {"x": 0.0}, "e": {"x": 1.5}}
    assert w.server.sent[-1] == (1, {"t": 2, "b": -1, "cs": checksum(view), "ai": -1, "you": "p1", "n": view})
    assert w.sync.stats["full_snapshots"] == 2


# --- acks and the history of sent views ----------------------------------------------------------


def test_an_ack_of_a_sent_tick_makes_the_next_snapshot_a_delta_from_it():
    w = joined()
    w.server.deliver(1, {"ack": 1})
    w.sync.step()
    assert last_base(w) == 1 and w.sync._clients[1].acked == 1
    assert w.sync.stats["full_snapshots"] == 1 and w.sync.stats["snapshots"] == 2


def test_acks_of_older_or_unsent_ticks_or_not_ints_are_ignored():
    w = joined()
    w.sync.step()
    w.sync.step()
    w.server.deliver(1, {"ack": 3})
    w.server.deliver(1, {"ack": 2})  # older than the acked one
    w.sync.step()
    assert last_base(w) == 3
    for bad in ({"ack": 99}, {"ack": -1}, {"ack": "4"}, {"ack": None}):  # never sent, or not a tick
        w.server.deliver(1, bad)
        w.sync.step()
        assert last_base(w) == 3
    assert w.sync.stats["full_snapshots"] == 3  # ticks 1 to 3


def test_acking_the_acked_tick_again_keeps_it_as_the_base_when_it_is_old():
    w = joined(history=4)
    w.server.deliver(1, {"ack": 1})
    for _ in range(5):
        w.sync.step()
    assert w.sync.tick == 6 and sorted(w.sync._clients[1].history) == [1, 3, 4, 5, 6]
    w.server.deliver(1, {"ack": 1})  # again: a late duplicate, 5 ticks later
    w.sync.step()
    assert last_base(w) == 1 and w.sync.stats["full_snapshots"] == 1


def test_a_first_ack_arriving_after_history_ticks_is_no_error():
    w = joined(history=2)  # tick 1 sent; the ack is read when tick 1 = history - 1 ticks ago
    w.server.deliver(1, {"ack": 1})
    w.sync.step()
    assert last_base(w) == 1


def test_history_keeps_the_last_ticks_and_the_acked_base_until_a_newer_ack():
    w = joined(history=4)
    w.server.deliver(1, {"ack": 1})
    for _ in range(9):
        w.sync.step()
    cs = w.sync._clients[1]
    assert w.sync.tick == 10 and sorted(cs.history) == [1, 7, 8, 9, 10]
    w.server.deliver(1, {"ack": 2})  # no longer kept: ignored
    w.sync.step()
    assert cs.acked == 1 and last_base(w) == 1 and sorted(cs.history) == [1, 8, 9, 10, 11]


def test_the_old_acked_base_is_dropped_when_exactly_history_ticks_old():
    w = joined(history=4)
    w.server.deliver(1, {"ack": 1})
    for _ in range(4):
        w.sync.step()
    cs = w.sync._clients[1]
    assert w.sync.tick == 5 and sorted(cs.history) == [1, 2, 3, 4, 5]
    w.server.deliver(1, {"ack": 5})  # read at tick 5: tick 1 is exactly history ticks old
    w.sync.step()
    assert cs.acked == 5 and last_base(w) == 5 and sorted(cs.history) == [3, 4, 5, 6]


def test_a_recent_acked_base_stays_when_a_newer_tick_is_acked():
    w = joined(history=4)
    w.server.deliver(1, {"ack": 1})
    w.sync.step()
    w.server.deliver(1, {"ack": 2})
    w.sync.step()
    cs = w.sync._clients[1]
    assert cs.acked == 2 and last_base(w) == 2 and sorted(cs.history) == [1, 2, 3]


def test_a_resync_request_gets_a_full_snapshot_once():
    w = joined()
    w.server.deliver(1, {"ack": 1})
    w.sync.step()
    w.server.deliver(1, {"resync": True})
    w.sync.step()
    w.sync.step()
    assert [msg["b"] for _, msg in w.server.sent] == [-1, 1, -1, 1]
    assert w.sync.stats["resyncs"] == 1 and w.sync.stats["full_snapshots"] == 2


def test_inputs_count_once_per_new_seq_and_ai_reports_the_last():
    w = joined()
    for msg in (
        {"seq": 2, "in": "a"},
        {"seq": 2, "in": "dup"},
        {"seq": 1, "in": "old"},
        {"seq": 5},  # no input
        {"seq": "6", "in": "not an int seq"},
        {"in": "no seq"},
        {"seq": 3, "in": None},
    ):
        w.server.deliver(1, msg)
    w.sync.step()
    assert [c[3] for c in w.calls if c[0] == "input"] == ["a", None]
    assert w.sync.stats["inputs"] == 2 and w.server.sent[-1][1]["ai"] == 3


def test_a_clients_inputs_beyond_max_inputs_per_tick_wait_for_the_next_ticks_in_order():
    """One client sending faster than the game handles grew the queue
    without bound and stalled every tick (the fault hunt): a tick takes at
    most max_inputs_per_tick inputs of each client; the rest wait for the
    next ticks, in order (a burst after a resume was dropped, and the
    client's prediction stayed ahead of the server); the others' are not
    touched."""
    w = joined(max_inputs_per_tick=3)
    w.server.clients[2] = FakeConn(2)
    w.sync.step()
    for seq in range(1, 6):
        w.server.deliver(1, {"seq": seq, "in": f"one-{seq}"})
    w.server.deliver(2, {"seq": 1, "in": "two-1"})
    w.sync.step()
    assert [(c[1], c[3]) for c in w.calls if c[0] == "input"] == [
        (1, "one-1"), (1, "one-2"), (1, "one-3"), (2, "two-1")]
    assert w.sync.stats["inputs_dropped"] == 0 and w.sync.stats["inputs"] == 4
    for seq in range(6, 9):  # the next tick: the two left over first, then one of these
        w.server.deliver(1, {"seq": seq, "in": f"one-{seq}"})
    w.sync.step()
    assert [c[3] for c in w.calls if c[0] == "input"][-3:] == ["one-4", "one-5", "one-6"]
    w.sync.step()
    assert [c[3] for c in w.calls if c[0] == "input"][-2:] == ["one-7", "one-8"]
    assert w.sync.stats["inputs_dropped"] == 0 and w.sync.stats["inputs"] == 9
    assert [m for c, m in w.server.sent if c == 1][-1]["ai"] == 8


def test_a_clients_inputs_beyond_the_backlog_are_dropped_and_counted():
    from peng3dnet.ext.sync.server import INPUT_BACKLOG_TICKS

    w = joined(max_inputs_per_tick=2)
    w.sync.step()
    bound = 2 * INPUT_BACKLOG_TICKS
    for seq in range(1, bound + 4):  # three over the backlog
        w.server.deliver(1, {"seq": seq, "in": seq})
    assert w.sync.stats["inputs_dropped"] == 3
    for _ in range(INPUT_BACKLOG_TICKS + 1):
        w.sync.step()
    assert [c[3] for c in w.calls if c[0] == "input"] == list(range(1, bound + 1))
    assert w.sync.stats["inputs"] == bound


def test_inputs_after_one_of_an_unjoined_client_or_a_non_map_are_applied():
    w = joined()
    w.server.deliver(9, {"seq": 1, "in": "not joined"})
    w.server.deliver(1, [1, 2])
    w.server.deliver(1, {"seq": 1, "in": "kept"})
    w.sync.step()
    assert [c for c in w.calls if c[0] == "input"] == [("input", 1, "p1", "kept")]


# --- hooks' errors, leaves, log lines ------------------------------------------------------------


def test_on_join_raising_is_reported_with_the_cid_and_the_client_still_joins(caplog):
    w = Log()

    def boom(cid):
        raise ValueError(cid)

    w.sync.on_join = boom
    w.server.clients[5] = FakeConn(5)
    with caplog.at_level(logging.ERROR, logger=USER):
        w.sync.step()
    assert user_errors(caplog) == [("! sync: on_join raised for cid=%d", (5,), ValueError)]
    assert w.sync.clients == [5] and w.events() == [("peng3dnet:sync.join", {"cid": 5})]


def test_on_leave_raising_is_reported_with_the_cid_and_the_client_still_leaves(caplog):
    w = joined()

    def boom(cid, eid):
        raise KeyError(eid)

    w.sync.on_leave = boom
    del w.server.clients[1]
    with caplog.at_level(logging.ERROR, logger=USER):
        w.sync.step()
    assert user_errors(caplog) == [("! sync: on_leave raised for cid=%d", (1,), KeyError)]
    assert w.sync.clients == [] and w.sync.owners == {}
    assert w.events()[-1] == ("peng3dnet:sync.leave", {"cid": 1, "eid": "p1"})


def test_on_input_raising_is_reported_with_the_cid_and_later_inputs_still_apply(caplog):
    w = joined()
    seen = []

    def on_input(cid, eid, inp):
        seen.append(inp)
        if inp == 1:
            raise RuntimeError(inp)

    w.sync.on_input = on_input
    w.server.deliver(1, {"seq": 1, "in": 1})
    w.server.deliver(1, {"seq": 2, "in": 2})
    with caplog.at_level(logging.ERROR, logger=USER):
        w.sync.step()
    assert user_errors(caplog) == [("! sync: on_input raised for cid=%d", (1,), RuntimeError)]
    assert seen == [1, 2] and w.sync.stats["inputs"] == 2


def test_a_client_without_an_entity_leaves_with_eid_none():
    w = Log()
    w.sync.on_join = lambda cid: w.calls.append(("join", cid))  # gives it no entity
    w.server.clients[2] = FakeConn(2)
    w.sync.step()
    del w.server.clients[2]
    w.sync.step()
    assert w.calls == [("join", 2), ("leave", 2, None)]
    assert w.events()[-1] == ("peng3dnet:sync.leave", {"cid": 2, "eid": None})
    assert w.sync.clients == [] and w.sync.owners == {}


def test_an_oversized_or_unencodable_input_is_logged_with_cid_size_and_limit(caplog):
    w = joined(max_input_size=16)
    big = {"seq": 1, "in": "x" * 20}
    with caplog.at_level(logging.DEBUG, logger=server_mod.__name__):
        w.server.deliver(1, big)
        w.server.deliver(1, {"seq": 2, "in": object()})
    records = [(r.levelno, r.msg, r.args) for r in caplog.records if r.name == server_mod.__name__]
    fmt = "! sync: input of cid=%d dropped (%s bytes > %d)"
    assert records == [(logging.DEBUG, fmt, (1, 30, 16)), (logging.DEBUG, fmt, (1, None, 16))]
    assert w.sync.stats["inputs_dropped"] == 2 and list(w.sync._inputs) == []


# --- stats, the room filter, interest ------------------------------------------------------------


def test_stats_count_ticks_and_snapshots():
    w = Log()
    w.server.clients[1] = FakeConn(1)
    w.server.clients[2] = FakeConn(2)
    for _ in range(3):
        w.sync.step()
    assert w.sync.stats == {"ticks": 3, "snapshots": 6, "full_snapshots": 6, "resyncs": 0, "inputs": 0, "inputs_dropped": 0}


def test_members_filter_joins_only_room_members_and_a_removed_member_leaves():
    allowed = {1, 3}
    w = Log(members=lambda: allowed)
    assert w.sync.members() is allowed
    for cid in (1, 2, 3):
        w.server.clients[cid] = FakeConn(cid)
    w.sync.step()
    assert w.sync.clients == [1, 3]
    allowed.discard(3)
    w.sync.step()
    assert w.sync.clients == [1]
    assert w.calls == [("join", 1), ("join", 3), ("leave", 3, "p3")]
    assert sorted({cid for cid, _ in w.server.sent}) == [1, 3]


def test_view_for_asks_interest_with_cid_eid_state_entities_and_own():
    w = Log()
    calls = []

    def interest(cid, eid, state, entities, own):
        calls.append((cid, eid, state, entities, own))
        return eid != "hidden"

    w.sync.interest = interest
    w.sync.entities = ents = {"me": {"x": 1.0}, "hidden": {"x": 2.0}}
    w.sync.owners[7] = "me"
    got = w.sync.view_for(7)
    assert got == {"me": {"x": 1.0}}
    assert got["me"] is not ents["me"]  # a copy
    assert calls == [(7, "me", {"x": 1.0}, ents, "me"), (7, "hidden", {"x": 2.0}, ents, "me")]
    calls.clear()
    assert w.sync.view_for(8) == {"me": {"x": 1.0}} and [c[4] for c in calls] == [None, None]


def test_view_for_without_interest_is_a_copy_of_everything():
    w = Log()
    w.sync.entities = ents = {"a": {"x": 1}, "b": {"y": 2}}
    got = w.sync.view_for(1)
    assert got == ents and got["a"] is not ents["a"]


def test_snapshots_ask_interest_with_cid_eid_state_snapshot_and_own():
    w = Log()
    calls = []

    def interest(cid, eid, state, entities, own):
        calls.append((cid, eid, dict(state), dict(entities), own))
        return eid == own

    w.sync.interest = interest
    w.server.clients[1] = FakeConn(1)
    w.sync.step()  # joins 1 (entity p1) and sends it a snapshot
    assert calls == [(1, "p1", {"x": 0.0}, {"p1": {"x": 0.0}}, "p1")]
    assert w.server.sent[-1][1]["n"] == {"p1": {"x": 0.0}}


# --- snapshots to suspended connections, failed sends ---------------------------------------------


def test_a_suspended_connection_gets_no_snapshot_and_then_a_delta(caplog):
    w = joined()
    w.server.deliver(1, {"ack": 1})
    w.server.clients[1].suspended = True
    w.sync.step()
    w.sync.step()
    assert [msg["t"] for _, msg in w.server.sent] == [1]
    w.server.clients[1].suspended = False
    w.sync.step()
    assert [(msg["t"], msg["b"]) for _, msg in w.server.sent] == [(1, -1), (4, 1)]
    assert w.sync.stats["snapshots"] == 2


def test_a_suspended_connection_does_not_hold_up_the_snapshots_of_the_others():
    w = Log()
    w.server.clients[1] = FakeConn(1)
    w.server.clients[2] = FakeConn(2)
    w.sync.step()  # both joined (client 1 first)
    w.server.clients[1].suspended = True
    w.sync.step()
    assert [(cid, msg["t"]) for cid, msg in w.server.sent] == [(1, 1), (2, 1), (2, 2)]


def test_every_resync_request_is_counted():
    w = joined()
    for _ in range(3):
        w.server.deliver(1, {"resync": True})
        w.sync.step()
    assert w.sync.stats["resyncs"] == 3


def test_a_failed_send_is_logged_and_not_counted(caplog):
    w = joined()
    err = Peng3dNetError("gone")

    def send_encoded(ptype, body, cid):
        raise err

    w.server.send_encoded = send_encoded
    with caplog.at_level(logging.DEBUG, logger=server_mod.__name__):
        w.sync.step()
    records = [(r.msg, r.args) for r in caplog.records if r.name == server_mod.__name__]
    assert records == [("sync: snapshot to cid=%d not sent: %s", (1, err))]
    # The failed one counts in neither (full snapshots are counted when sent, like all snapshots).
    assert w.sync.stats["snapshots"] == 1 and w.sync.stats["full_snapshots"] == 1


# --- the tick thread -------------------------------------------------------------------------------


def test_start_runs_the_ticks_in_a_daemon_thread_named_peng3dnet_sync_thread():
    sync = SyncServer(FakeServer(), tick_rate=1000.0)
    seen: list[tuple[str, bool]] = []
    ticked = threading.Event()

    def on_step(dt, tick):
        seen.append((threading.current_thread().name, threading.current_thread().daemon))
        ticked.set()

    sync.on_step = on_step
    t = sync.start()
    try:
        assert sync._thread is t
        assert (t.name, t.daemon) == ("peng3dnet sync Thread", True)
        assert ticked.wait(5)
    finally:
        sync.stop()
    assert not t.is_alive()
    assert seen[0] == ("peng3dnet sync Thread", True)


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


class FakeStop:
    """The tick loop's stop event: set after ``ticks`` checks; wait() records
    the delay and lets the fake clock run for it."""

    def __init__(self, clock: FakeClock, ticks: int) -> None:
        self.clock = clock
        self.left = ticks
        self.waits: list[tuple[float, float]] = []

    def is_set(self) -> bool:
        self.left -= 1
        return self.left < 0

    def wait(self, delay: float) -> bool:
        self.waits.append((self.clock.now, delay))
        self.clock.now += delay
        return False


def test_tick_loop_keeps_a_fixed_schedule_and_drops_ticks_when_far_behind(monkeypatch):
    clock = FakeClock(100.0)
    monkeypatch.setattr(server_mod, "time", SimpleNamespace(monotonic=clock.monotonic))
    sync = SyncServer(FakeServer(), tick_rate=4.0)  # period 0.25 s (exact in binary)
    stop = sync._stop = FakeStop(clock, 7)  # type: ignore[assignment]
    durations = iter([0.0, 0.25, 0.5, 0.0, 0.125, 0.75, 0.0])
    steps: list[tuple[float, Any]] = []
    real_step = sync.step

    def step(dt=None):
        steps.append((clock.now, dt))
        clock.now += next(durations)
        return real_step(dt)

    monkeypatch.setattr(sync, "step", step)
    sync._run()
    assert [t for t, _ in steps] == [100.0, 100.25, 100.5, 101.0, 101.0, 101.25, 102.0]
    assert {dt for _, dt in steps} == {0.25}
    # the tick took its period: no wait; a tick exactly one period late: no wait
    # and no reset; 2 periods behind (101.5 due at 102.0): start again from now
    assert stop.waits == [(100.0, 0.25), (101.125, 0.125), (102.0, 0.25)]
    assert sync.tick == 7


def test_tick_loop_reports_a_raising_tick_with_its_number_and_goes_on(monkeypatch, caplog):
    clock = FakeClock(0.0)
    monkeypatch.setattr(server_mod, "time", SimpleNamespace(monotonic=clock.monotonic))
    sync = SyncServer(FakeServer(), tick_rate=2.0)
    stop = sync._stop = FakeStop(clock, 3)  # type: ignore[assignment]

    def on_step(dt, tick):
        if tick == 2:
            raise ZeroDivisionError(tick)

    sync.on_step = on_step
    with caplog.at_level(logging.ERROR, logger=USER):
        sync._run()
    assert user_errors(caplog) == [("! sync: tick %d raised", (2,), ZeroDivisionError)]
    assert sync.tick == 3 and stop.waits == [(0.0, 0.5), (0.5, 0.5), (1.0, 0.5)]


def test_stop_from_the_tick_thread_does_not_wait_for_itself():
    sync = SyncServer(FakeServer(), tick_rate=1000.0)
    done = threading.Event()

    def on_step(dt, tick):
        sync.stop()
        done.set()

    sync.on_step = on_step
    t = sync.start()
    assert done.wait(5)
    t.join(5)
    assert not t.is_alive() and sync.tick == 1


@pytest.mark.parametrize("tick_rate", [20.0, 50.0])
def test_tick_rate_is_a_float(tick_rate):
    sync = SyncServer(FakeServer(), tick_rate=int(tick_rate), history=8.0)  # type: ignore[arg-type]
    assert type(sync.tick_rate) is float and sync.tick_rate == tick_rate
    assert type(sync.history) is int and sync.history == 8


def test_the_history_of_a_client_stays_bounded_across_suspensions():
    """The server keeps ``history`` ticks of sent views per client (plus
    the acknowledged base).  Pruning happens only in ``_send_snapshots``
    and only for the one tick ``tick - history``; a suspended client is
    skipped before it, so every tick of a suspension skips that tick's
    pruning and the views from before the drop are never dropped.  A
    client that drops and resumes again and again (a bad link, or a peer
    doing it on purpose) grows the server's memory by up to ``history``
    views per drop, without bound."""
    w = joined(history=4)
    cs = w.sync._clients[1]
    for _cycle in range(5):
        for _ in range(6):  # connected: acknowledges every tick
            w.server.deliver(1, {"ack": w.sync.tick})
            w.sync.step()
        w.server.clients[1].suspended = True
        for _ in range(6):  # its socket dropped: no snapshots
            w.sync.step()
        w.server.clients[1].suspended = False
    for _ in range(6):
        w.server.deliver(1, {"ack": w.sync.tick})
        w.sync.step()
    # at most the last `history` ticks and the acknowledged base
    assert len(cs.history) <= 4 + 1, sorted(cs.history)


def test_an_interest_filter_that_raises_for_one_client_costs_only_that_clients_snapshot(caplog):
    """It had no guard: one entity the filter could not read (x None)
    stopped every client's snapshots (0 in 5 ticks)."""

    def interest(cid, eid, st, ents, own):
        if cid == 2:
            return st["x"] < 10.0  # p2's x is None below
        return True

    w = joined(interest=interest)
    w.server.clients[2] = FakeConn(2)
    w.sync.step()
    w.sync.entities["p2"]["x"] = None
    before = len(w.server.sent)
    with caplog.at_level(logging.ERROR, logger="peng3dnet.user"):
        for _ in range(3):
            w.sync.step()
    sent = [cid for cid, _ in w.server.sent[before:]]
    assert sent == [1, 1, 1]  # client 1 every tick, client 2 none
    errors = [r for r in caplog.records if "interest raised for cid=2" in r.getMessage()]
    assert len(errors) == 1  # (the same failure again is counted)


def test_a_member_that_left_and_came_back_between_two_ticks_leaves_and_joins_again():
    """members() at two ticks cannot tell a client that left its room and
    joined again (or hopped to another room and back) in between: the sync
    saw neither, and a game that removes the player's entity on the room's
    leave (the arena demo) left it with none.  member_left() (what
    ext.rooms calls) makes the next tick run both."""
    members = {1}
    w = joined(members=lambda: members)
    w.server.deliver(1, {"seq": 1, "in": "before"})  # queued before it left: dropped with it
    members.discard(1)
    w.sync.member_left(1)
    del w.sync.entities["p1"]  # what the game's own leave did (Room.on_leave)
    members.add(1)  # back before the tick
    w.sync.step()
    assert [c for c in w.calls if c[0] != "input"] == [("join", 1), ("leave", 1, "p1"), ("join", 1)]
    assert [c for c in w.calls if c[0] == "input"] == []
    assert "p1" in w.sync.entities and w.sync.owners == {1: "p1"}
    assert [m for c, m in w.server.sent if c == 1][-1].get("b", -1) in (-1, None)  # a full snapshot: a new member
