"""LAN discovery value by value, without sending a datagram: the
responder's defaults, argument check, what getPingData is asked, the
answer's size limit and its fallback; discover_servers()' send schedule,
waits, answers kept and failures, on a fake clock and socket."""

from __future__ import annotations

import logging
from typing import Any

import msgpack
import pytest

from peng3dnet.ext import discovery
from peng3dnet.ext.discovery import DiscoveryResponder
from peng3dnet.net import Server
from peng3dnet.version import PROTOVERSION, RELEASE, VERSION

INFO = {"version": VERSION, "release": RELEASE, "protoversion": PROTOVERSION}


class Pingable(Server):
    def __init__(self, data: Any) -> None:
        super().__init__(addr=("127.0.0.1", 0))
        self.data = data
        self.asked: list = []

    def getPingData(self, msg: Any, cid: Any) -> Any:  # noqa: N802 (0.1.x name)
        self.asked.append((msg, cid))
        return self.data


def _responder(server: Server, **kw: Any) -> DiscoveryResponder:
    return DiscoveryResponder(server, port=0, host="127.0.0.1", **kw)


def test_the_defaults_are_four_answers_a_second_per_address_and_64_in_all():
    resp = _responder(Server(addr=("127.0.0.1", 0)))
    try:
        assert (resp.per_address, resp.total, resp.public) == (4.0, 64.0, False)
        t = 1000.0
        assert [resp.allowed("10.0.0.1", t) for _ in range(9)] == [True] * 8 + [False]  # burst: twice the rate
        assert sum(resp.allowed(f"10.0.1.{i}", t) for i in range(200)) == 128 - 8  # the total's burst
    finally:
        resp.stop()


def test_any_positive_rate_is_accepted_and_others_refused_with_a_reason():
    s = Server(addr=("127.0.0.1", 0))
    resp = _responder(s, per_address=0.5, total=0.5)
    resp.stop()
    with pytest.raises(ValueError, match="^per_address and total must be positive answers per second$"):
        _responder(s, total=0)


def test_the_answer_carries_the_ping_data_the_version_and_the_port():
    s = Pingable({"name": "lan game", "players": 3})
    resp = _responder(s)
    try:
        got = msgpack.unpackb(resp.answer())
        assert got == {"name": "lan game", "players": 3, "peng3dnet": INFO, "port": s.addr[1]}
        assert s.asked == [({"discovery": True}, None)]  # what getPingData is asked
    finally:
        resp.stop()


def test_an_answer_of_exactly_the_datagram_limit_is_kept_one_byte_more_falls_back():
    s = Pingable({"name": ""})
    resp = _responder(s)
    port = s.addr[1]

    def size(n: int) -> int:  # the answer's encoding, key order as answer() builds it
        return len(msgpack.packb({"name": "x" * n, "peng3dnet": INFO, "port": port}))

    try:
        n = discovery._MAX - size(0) - 2  # a str16 name (3-byte header) grows one byte per character
        while size(n) < discovery._MAX:
            n += 1
        assert size(n) == discovery._MAX
        s.data = {"name": "x" * n}
        out = resp.answer()
        assert len(out) == discovery._MAX and msgpack.unpackb(out)["name"] == "x" * n
        s.data = {"name": "x" * (n + 1)}
        assert msgpack.unpackb(resp.answer()) == {"peng3dnet": INFO, "port": port}
    finally:
        resp.stop()


# --- discover_servers(): its schedule and what it keeps, on a fake clock and socket -----------------------


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def monotonic(self) -> float:
        return self.t


class FakeDatagram:
    """Answers scripted as ``(at, data, (host, port))``; ``send_to`` results
    scripted per send (True: sent, False: dropped, an exception: raised)."""

    def __init__(self, clock: FakeClock, answers: list, send_results: list, broadcast: bool = False) -> None:
        self.clock = clock
        self.answers = list(answers)
        self.send_results = list(send_results)
        self.broadcast = broadcast
        self.sent: list = []
        self.waits: list = []
        self.closed = False

    def send_to(self, data: bytes, addr: Any) -> bool:
        self.sent.append((round(self.clock.t - 100.0, 6), data, addr))
        result = self.send_results.pop(0) if self.send_results else True
        if isinstance(result, BaseException):
            raise result
        return result

    def recv_from(self, n: int, timeout: float) -> Any:
        self.waits.append((round(self.clock.t - 100.0, 6), n, round(timeout, 6)))
        if self.answers and self.answers[0][0] <= self.clock.t - 100.0 + timeout:
            at, data, src = self.answers.pop(0)
            if isinstance(data, BaseException):
                raise data
            self.clock.t = 100.0 + max(at, self.clock.t - 100.0)
            return data, src
        self.clock.t += timeout
        return None

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_net(monkeypatch):
    clock = FakeClock()
    made: list[FakeDatagram] = []
    script: dict = {"answers": [], "sends": []}

    def make(broadcast: bool = False) -> FakeDatagram:
        d = FakeDatagram(clock, script["answers"], script["sends"], broadcast)
        made.append(d)
        return d

    monkeypatch.setattr(discovery, "Datagram", make)
    monkeypatch.setattr(discovery, "time", clock)
    return clock, made, script


def _answer(port: int, **extra: Any) -> bytes:
    return msgpack.packb({"port": port, **extra})


def test_the_query_is_sent_tries_times_over_the_first_half_of_the_timeout(fake_net):
    clock, made, script = fake_net
    assert discovery.discover_servers(port=4321, timeout=1.2, addr="10.0.0.255", tries=3) == []
    (d,) = made
    assert d.broadcast is True and d.closed
    assert d.sent == [(0.0, b"peng3dnet?", ("10.0.0.255", 4321)), (0.2, b"peng3dnet?", ("10.0.0.255", 4321)),
                      (0.4, b"peng3dnet?", ("10.0.0.255", 4321))]
    # Each wait lasts until the next send, then until the deadline; datagrams up to 1,600 bytes are read.
    assert d.waits == [(0.0, 1600, 0.2), (0.2, 1600, 0.2), (0.4, 1600, 0.8)]
    assert clock.t == 101.2


def test_one_try_waits_the_whole_timeout_and_the_default_is_three(fake_net):
    clock, made, script = fake_net
    discovery.discover_servers(port=1, timeout=0.5, addr="127.0.0.1", tries=1)
    discovery.discover_servers(port=1, timeout=0.6, addr="127.0.0.1")
    one, three = made
    assert [s[0] for s in one.sent] == [0.0] and one.waits == [(0.0, 1600, 0.5)]
    assert [round(s[0] - 0.5, 6) for s in three.sent] == [0.0, 0.1, 0.2]


def test_each_server_is_listed_once_with_its_newest_answer_and_the_senders_host(fake_net):
    clock, made, script = fake_net
    script["answers"] += [
        (0.05, _answer(7000, name="old"), ("192.168.1.5", 50000)),
        (0.10, _answer(7000, name="other"), ("192.168.1.6", 50000)),
        (0.15, _answer(7001, name="second game"), ("192.168.1.5", 50001)),
        (0.30, _answer(7000, name="new"), ("192.168.1.5", 50002)),
    ]
    found = discovery.discover_servers(port=1, timeout=1.0, addr="127.0.0.1", tries=2)
    by_key = {(f["host"], f["port"]): f["name"] for f in found}
    assert by_key == {("192.168.1.5", 7000): "new", ("192.168.1.6", 7000): "other",
                      ("192.168.1.5", 7001): "second game"}
    assert len(found) == 3


@pytest.mark.parametrize("data", [b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"port": "7000"}),
                                  msgpack.packb({"name": "no port"}), msgpack.packb({"port": 7.0})])
def test_answers_that_are_not_a_map_with_an_int_port_are_ignored(fake_net, data):
    clock, made, script = fake_net
    script["answers"] += [(0.01, data, ("10.0.0.2", 1)), (0.02, _answer(9), ("10.0.0.3", 1))]
    assert discovery.discover_servers(port=1, timeout=0.4, addr="127.0.0.1", tries=1) == [
        {"port": 9, "host": "10.0.0.3"}]


def test_a_failing_first_query_raises_and_closes_the_socket(fake_net):
    clock, made, script = fake_net
    script["sends"] += [discovery.NetworkError("no route")]
    with pytest.raises(discovery.NetworkError, match="no route"):
        discovery.discover_servers(port=1, timeout=0.4, addr="127.0.0.1", tries=2)
    assert made[0].closed and made[0].waits == []


def test_a_failing_repeat_keeps_the_answers_and_is_logged(fake_net, caplog):
    clock, made, script = fake_net
    script["sends"] += [True, discovery.NetworkError("gone"), False]
    script["answers"] += [(0.05, _answer(5), ("10.0.0.9", 1))]
    with caplog.at_level(logging.DEBUG, logger="peng3dnet.ext.discovery"):
        found = discovery.discover_servers(port=1, timeout=0.6, addr="127.0.0.1", tries=3)
    assert found == [{"port": 5, "host": "10.0.0.9"}]
    assert [s[0] for s in made[0].sent] == [0.0, 0.1, 0.2]  # the third is still sent (and dropped)
    msgs = [r.getMessage() for r in caplog.records]
    assert "discovery: a repeated query failed (gone); keeping the answers so far" in msgs
    assert "discovery: a query was dropped (socket buffer full)" in msgs


def test_a_socket_error_while_waiting_ends_the_search_with_what_was_found(fake_net):
    clock, made, script = fake_net
    script["answers"] += [(0.01, _answer(5), ("10.0.0.9", 1)), (0.02, discovery.NetworkError("reset"), None)]
    found = discovery.discover_servers(port=1, timeout=1.0, addr="127.0.0.1", tries=1)
    assert found == [{"port": 5, "host": "10.0.0.9"}] and made[0].closed
    assert clock.t < 100.5  # it did not wait out the timeout
