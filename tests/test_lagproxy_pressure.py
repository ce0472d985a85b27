"""The lag proxy pushes back on a fast sender (its memory is bounded) and
holds data already in flight through a stall, in order (found by a bug
hunt)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from peng3dnet.tools.lagproxy import LagProxy


@pytest.mark.timeout(30)
def test_a_bandwidth_capped_proxy_pushes_back_on_a_fast_sender_instead_of_buffering_everything():
    target = socket.create_server(("127.0.0.1", 0))
    proxy = LagProxy(("127.0.0.1", 0), target.getsockname()[:2], bandwidth=16 * 1024).start()
    sender = socket.create_connection(proxy.addr, timeout=5)
    target.settimeout(5)
    receiver, _ = target.accept()  # (reads slowly: the proxy's 16 KiB/s is the bottleneck)
    sent = [0]
    stop = threading.Event()

    def push() -> None:
        sender.settimeout(0.2)
        chunk = b"x" * 65536
        while not stop.is_set() and sent[0] < 256 * 1024 * 1024:
            try:
                sent[0] += sender.send(chunk)
            except (socket.timeout, BlockingIOError):
                continue
            except OSError:
                return

    t = threading.Thread(target=push, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and sent[0] < 64 * 1024 * 1024:
            stop.wait(0.05)
        # At 16 KiB/s the receiver can have had ~48 KiB; TCP's buffers on
        # the way hold a few MiB, the proxy HOLD_MIN (4 MiB) more.  Without
        # back-pressure it took 64 MiB and more into its own memory.
        assert sent[0] < 32 * 1024 * 1024, f"the proxy accepted {sent[0] // (1024 * 1024)} MiB in 3 s at 16 KiB/s"
    finally:
        stop.set()
        t.join(5)
        proxy.stop()
        for s in (sender, receiver, target):
            s.close()


@pytest.mark.timeout(30)
def test_a_stall_holds_data_already_in_flight_too():
    target = socket.create_server(("127.0.0.1", 0))
    proxy = LagProxy(("127.0.0.1", 0), target.getsockname()[:2], delay=2.0).start()  # (time to start the stall)
    sender = socket.create_connection(proxy.addr, timeout=5)
    target.settimeout(5)
    receiver, _ = target.accept()
    try:
        sender.sendall(b"a")  # in flight for 2 s
        from tests.helpers import wait_for

        wait_for(lambda: proxy._reactor._timers, timeout=5, what="the byte read by the proxy, its delivery scheduled")
        stalled_at = time.monotonic()
        proxy.stall(3.0)  # README: stops forwarding both ways for 3 s
        sender.sendall(b"b")  # read during the stall: after "a"
        receiver.settimeout(5)
        assert receiver.recv(1) == b"a"
        arrived = time.monotonic() - stalled_at
        assert arrived >= 2.9, f"delivered {arrived:.2f} s into a 3 s stall"
        assert receiver.recv(1) == b"b"  # in order
    finally:
        proxy.stop()
        for s in (sender, receiver, target):
            s.close()
