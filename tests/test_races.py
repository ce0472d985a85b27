"""Races between the network thread and the threads that run handlers,
each made deterministic by holding one thread in the window where the
other must not run (a subclass of the library's Channel with a hook)."""

from __future__ import annotations

import threading

import pytest

from peng3dnet import server as server_module
from peng3dnet.transport import Channel
from tests.conftest import make_client, make_server

RECV_QUEUE = 2


class _PauseHook(Channel):
    """A Channel whose first read of ``paused`` on the network thread once
    its link's queue is full (``RECV_QUEUE`` packets waiting for process())
    waits (bounded) until ``hold`` is set: the moment between the network
    thread's "the queue is full" test and its pausing, widened from a GIL
    switch to a few milliseconds.  It goes by the link's state, not by the
    name of the library function reading the flag."""

    link = None  # set by the test: the server's link to its client
    hold: threading.Event | None = None  # set by the test: released once the handlers caught up
    reached = threading.Event()
    seen: dict = {}  # what the held thread saw: the queue and the flag then; whether the handlers released it

    @property
    def paused(self):
        hold, link = type(self).hold, type(self).link
        flag = self.__dict__.get("_paused", False)
        if (hold is not None and link is not None and link.chan is self and self.reactor.in_loop()
                and link.n_in - link.n_out >= RECV_QUEUE):
            type(self).hold = None
            type(self).seen.update(queued=link.n_in - link.n_out, paused=flag)
            type(self).reached.set()
            type(self).seen["released"] = hold.wait(5)
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
    s = make_server(**{"net.limits.recv_queue": RECV_QUEUE, "net.limits.rate.packets": 0.0})
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
        (link,) = s._links.values()
        assert isinstance(link.chan, _PauseHook)  # the hook is in place
        _PauseHook.reached.clear()
        _PauseHook.seen.clear()
        _PauseHook.link = link
        _PauseHook.hold = caught_up
        loop.start()
        c.send_message("test:echo", 1)
        c.send_message("test:echo", 2)
        assert _PauseHook.reached.wait(10), "the network thread never read the pause flag with the queue full"
        c.send_message("test:echo", 3)  # a well-behaved client's next message
        with handled:
            handled.wait_for(lambda: len(got) >= 3, 5)
        assert got == [1, 2, 3], (f"paused={link.chan.paused} queued={link.n_in - link.n_out} "
                                  f"held frames={link.proto.frames_waiting}")
        # The race was run: the network thread was held with the queue full
        # and reading not yet paused, and let go by the handlers catching up
        # (not by the hold's timeout).
        assert _PauseHook.seen == {"queued": RECV_QUEUE, "paused": False, "released": True}, _PauseHook.seen
    finally:
        _PauseHook.hold = _PauseHook.link = None
        stop.set()
        c.stop()
        c.join(5)
        s.shutdown(timeout=5)
        loop.join(5)
