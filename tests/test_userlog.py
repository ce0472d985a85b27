"""A failure in user code is shown with its traceback; the same failure
again within ``REPEAT_WINDOW`` is counted, not shown (a handler failing for
every packet of a flood wrote a traceback per packet: 9 MB of them for
200 KB of packets in the fault hunt)."""

from __future__ import annotations

import logging

from peng3dnet import userlog
from peng3dnet.packet import Packet
from peng3dnet.userlog import REPEAT_WINDOW, failure_key, report_user_error
from tests.helpers import wait_for


def _records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "peng3dnet.user"]


def _fail(kind: type[Exception] = ValueError, key_of=None) -> None:
    try:
        raise kind("boom")
    except Exception:
        report_user_error("! handler %s raised", "h", key=failure_key(key_of or _fail))


def test_the_same_failure_within_the_window_is_counted_then_reported(caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="peng3dnet.user")
    now = [1000.0]
    monkeypatch.setattr(userlog, "_monotonic", lambda: now[0])
    _fail()
    for _ in range(5):
        now[0] += 1.0
        _fail()
    (first,) = _records(caplog)
    assert first.getMessage() == "! handler h raised (the same failure again within 10 s is counted, not shown)"
    assert first.exc_info[0] is ValueError
    now[0] = 1000.0 + REPEAT_WINDOW + 0.5
    _fail()
    second = _records(caplog)[1]
    assert second.getMessage() == ("! handler h raised (the same failure 5 times more in the 10 s before, "
                                   "tracebacks not shown)")
    assert second.exc_info[0] is ValueError


def test_another_exception_type_or_handler_is_another_failure(caplog):
    caplog.set_level(logging.INFO, logger="peng3dnet.user")
    _fail(ValueError)
    _fail(KeyError)
    _fail(ValueError, key_of=test_the_same_failure_within_the_window_is_counted_then_reported)
    _fail(ValueError)  # the first again: counted
    assert [r.exc_info[0] for r in _records(caplog)] == [ValueError, KeyError, ValueError]


def test_the_key_is_the_handler_the_type_and_the_line():
    def at(line: int):
        try:
            if line == 1:
                raise ValueError(1)
            raise ValueError(2)
        except ValueError:
            return failure_key(at)

    assert at(1) == at(1) and at(1) != at(2)


def test_without_a_key_every_failure_is_shown(caplog):
    caplog.set_level(logging.INFO, logger="peng3dnet.user")
    for _ in range(3):
        try:
            raise ValueError("x")
        except ValueError:
            report_user_error("! hook raised")
    assert [r.getMessage() for r in _records(caplog)] == ["! hook raised"] * 3


def test_a_handler_failing_for_every_packet_is_shown_once_and_runs_for_each(net, caplog):
    caplog.set_level(logging.INFO, logger="peng3dnet.user")
    calls: list = []

    class Broken(Packet):
        def receive(self, msg, cid=None):
            calls.append(msg)
            raise LookupError(f"no {msg}")

    s, _ = net.server(packets={"t:broken": Broken})
    c = net.client(s, packets={"t:broken": Packet})
    for i in range(500):
        c.send_message("t:broken", i)
    wait_for(lambda: len(calls) == 500, what="every packet handled")
    failures = [r for r in _records(caplog) if "packet handler" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info[0] is LookupError
    assert calls == list(range(500))
    c.send_message("test:echo", "still served")
    assert c.registry.get_obj("test:echo").wait_count(1) == ["still served"]
