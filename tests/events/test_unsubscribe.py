"""Unsubscribing: a main-thread dispatcher never runs a handler after its
unsubscribe returned; a weak subscription goes with its object (found by a
bug hunt)."""

from __future__ import annotations

import gc

import pytest

from peng3dnet import events
from peng3dnet.events import MainThreadDispatcher


@pytest.mark.timeout(10)
def test_a_dispatcher_handler_never_runs_after_its_unsubscribe_returned():
    disp = MainThreadDispatcher()
    calls: list = []

    def on_b(event, data):
        calls.append(("b", data["n"]))

    def on_a(event, data):
        calls.append(("a", data["n"]))
        disp.unsubscribe("peng3dnet:test.hunt3", on_b)  # e.g. the scene that owns on_b closes

    disp.subscribe("peng3dnet:test.hunt3", on_a)
    disp.subscribe("peng3dnet:test.hunt3", on_b)
    try:
        for n in (1, 2):
            events.emit("peng3dnet:test.hunt3", None, {"n": n})
        order = [h for h, _ in calls]  # nothing ran yet: queued until pump
        assert order == []
        disp.pump()
        # on_a's first call unsubscribed on_b: on_b may have run before it
        # (same event), but never after the unsubscribe returned.
        first_a = calls.index(("a", 1))
        assert [c for c in calls[first_a + 1:] if c[0] == "b"] == [], calls
    finally:
        disp.close()


@pytest.mark.timeout(10)
def test_a_weak_subscription_goes_when_its_object_dies():
    class Scene:
        def on_event(self, event, data):
            pass

    before = len(events.bus._subs)
    scene = Scene()
    events.subscribe("peng3dnet:test.hunt3weak", scene.on_event, weak=True)
    assert events.has_receivers("peng3dnet:test.hunt3weak")
    del scene
    gc.collect()
    # README/bus doc: "a bound method is then dropped when its object dies,
    # and the subscription with it" (no event of that name was emitted).
    assert not events.has_receivers("peng3dnet:test.hunt3weak")
    assert len(events.bus._subs) == before


def test_pending_does_not_count_the_calls_of_a_handler_unsubscribed_since():
    disp = MainThreadDispatcher()
    got: list = []

    def on_a(event, data):
        got.append(("a", data["n"]))

    def on_b(event, data):
        got.append(("b", data["n"]))

    disp.subscribe("peng3dnet:test.pending", on_a)
    disp.subscribe("peng3dnet:test.pending", on_b)
    try:
        for n in (1, 2):
            events.emit("peng3dnet:test.pending", None, {"n": n})
        assert disp.pending == 4
        assert disp.unsubscribe("peng3dnet:test.pending", on_b)
        assert disp.pending == 2
        assert disp.pump() == 2 and got == [("a", 1), ("a", 2)] and disp.pending == 0
    finally:
        disp.close()


@pytest.mark.timeout(10)
def test_pump_max_events_counts_only_the_calls_it_runs_not_the_unsubscribed_ones_it_skips():
    disp = MainThreadDispatcher()
    calls: list = []

    def on_a(event, data):
        calls.append(("a", data["n"]))

    def on_b(event, data):
        calls.append(("b", data["n"]))

    disp.subscribe("peng3dnet:test.maxev", on_a)
    disp.subscribe("peng3dnet:test.maxev", on_b)
    try:
        events.emit("peng3dnet:test.maxev", None, {"n": 1})
        events.emit("peng3dnet:test.maxev", None, {"n": 2})
        assert calls == []
        assert disp.unsubscribe("peng3dnet:test.maxev", on_a)
        # on_a's two queued calls are skipped; they are not events handled:
        # pump(max_events=1) runs exactly one call, on_b's first.
        assert disp.pump(max_events=1) == 1
        assert calls == [("b", 1)]
        assert disp.pump(max_events=1) == 1
        assert calls == [("b", 1), ("b", 2)]
        assert disp.pump() == 0
        assert calls == [("b", 1), ("b", 2)]
    finally:
        disp.close()
