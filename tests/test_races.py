"""Races between the network thread and the threads that run handlers,
each made deterministic by holding one thread in the window where the
other must not run (a subclass of the library's Channel with a hook)."""

from __future__ import annotations

import sys
import threading

import pytest

from peng3dnet import server as server_module
from peng3dnet.transport import Channel
from tests.conftest import make_client, make_server


class _PauseHook(Channel):
    """A Channel whose first read of ``paused`` on the network thread (the
    test "is reading paused already?" that follows "the queue is full")
    waits (bounded) until ``hold`` is set: the moment between the network
    thread's "the queue is full" test and its pausing, widened from a GIL
    switch to a few milliseconds."""

    hold: threading.Event | None = None  # set by the test: released once the handlers caught up
    reached = threading.Event()

    @property
    def paused(self):
        hold = type(self).hold
        # (only where a full queue pauses: _on_app_packet, Inbox.put)
        if hold is not None and self.reactor.in_loop() and sys._getframe(1).f_code.co_name in ("_on_app_packet", "put"):
            type(self).hold = None
            type(self).reached.set()
            hold.wait(5)
        return self.__dict__.get("_paused", False)

    @paused.setter
    def paused(self, value):
        self.__dict__["_paused"] = value


@pytest.mark.timeout(30)
def test_reading_never_stays_paused_when_the_handlers_caught_up_in_the_pause_window(monkeypatch):
    """``Peer._on_app_packet`` tests ``n_in - n_out >= recv_queue`` and
    then sets ``chan.paused`` without the inbox lock; ``process()`` on
    another thread (a game loop) resumes reading only when it finishes a
    packet while ``paused`` is already set.  When the handlers catch up
    in between (here: held there until they did), the flag is set after
    the last handler ran: nothing is queued, nothing will ever resume the
    reading, and every later message of that client is never read (the
    connection hangs; the heartbeat does not notice: held reading counts
    as not silent).  Now the pause is tested again and set under the
    inbox lock, under which the handlers' side counts and resumes."""
    monkeypatch.setattr(server_module, "Channel", _PauseHook)
    s = make_server(**{"net.limits.recv_queue": 2, "net.limits.rate.packets": 0.0})
    got: list = []
    caught_up = threading.Event()
    handled = threading.Condition()
    echo = s.registry.find_obj(s.registry.get_id("test:echo"))

    def receive(msg, cid=None):
        with handled:
            got.append(msg)
            handled.notify_all()
        if len(got) == 2:
            caught_up.set()

    echo.receive = receive
    s.runAsync()
    stop = threading.Event()

    def game_loop():  # the program's own loop: process() every frame (from when the queue is full)
        _PauseHook.reached.wait(10)
        while not stop.is_set():
            s.process(wait=True, timeout=0.01)

    loop = threading.Thread(target=game_loop, daemon=True)
    c = make_client(s)
    try:
        c.runAsync()
        c.process_async()
        c.wait_for_connection(10)
        _PauseHook.reached.clear()
        _PauseHook.hold = caught_up
        loop.start()
        c.send_message("test:echo", 1)
        c.send_message("test:echo", 2)
        assert _PauseHook.reached.wait(10), "the queue never filled"
        c.send_message("test:echo", 3)  # a well-behaved client's next message
        with handled:
            handled.wait_for(lambda: len(got) >= 3, 5)
        link = next(iter(s._links.values()))
        assert got == [1, 2, 3], (f"paused={link.chan.paused} queued={link.n_in - link.n_out} "
                                  f"held frames={link.proto.frames_waiting}")
    finally:
        _PauseHook.hold = None
        stop.set()
        c.stop()
        c.join(5)
        s.shutdown(timeout=5)
        loop.join(5)
