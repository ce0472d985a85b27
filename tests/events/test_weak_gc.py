"""(Found by a review.) The weak subscription's weakref callback (bus._Subscription
``gone``) runs _remove() wherever the object dies, on the same thread too,
under the bus's RLock: when that is inside signal()'s ``for sub in _subs``
(the cyclic GC runs at any allocation, e.g. in blinker's connect), _subs
shrinks under the loop and the NEXT subscription is skipped: a strong
pattern subscription is never connected to that new event."""

from __future__ import annotations

import gc
import sys

from peng3dnet.events import bus


class Game:
    def on_event(self, event, data):
        pass


def _in_signal_loop() -> bool:
    f = sys._getframe(1)
    while f is not None:
        if f.f_code is bus.signal.__code__ and "sub" in f.f_locals:
            return True
        f = f.f_back
    return False


def test_an_object_dying_while_a_new_event_is_wired_does_not_unwire_another_subscription():
    got = []

    def strong(event, data):
        got.append(event)

    holder = [Game()]
    bus.subscribe("review2gc.*", holder[0].on_event, weak=True)  # dies during the wiring below
    bus.subscribe("review2gc.*", strong)  # the subscription after it in bus._subs

    def collect(phase, info):  # stands for the collector freeing a cycle holding the game object
        if phase == "start" and holder and _in_signal_loop():
            holder.clear()

    old = gc.get_threshold()
    gc.callbacks.append(collect)
    gc.set_threshold(1, 1, 1)
    try:
        bus.signal("review2gc.new")
    finally:
        gc.set_threshold(*old)
        gc.callbacks.remove(collect)
    try:
        assert not holder, "the collector did not run inside the loop (test setup)"
        bus.emit("review2gc.new", None, {})
        assert got == ["review2gc.new"], "the strong subscription was skipped when its neighbour died"
    finally:
        bus.unsubscribe("review2gc.*", strong)
