"""The lag proxy shuts a direction only once its EOF was delivered behind its
data: not while its tail waits in a stall, nor when the other direction ends
(found by a review)."""

from __future__ import annotations

import socket
import time

import pytest

from peng3dnet.tools.lagproxy import LagProxy
from tests.helpers import wait_for


def _pipes(proxy):
    return {ch.on_ready.args[0] for ch in list(proxy._chans)}


def _connected(proxy, target):
    """``(client, server)``: a connection through ``proxy`` to ``target``'s
    listener, both ends with a 10 s time-out, its two pipes made."""
    client = socket.create_connection(proxy.addr, timeout=10)
    target.settimeout(10)
    server, _ = target.accept()
    server.settimeout(10)
    wait_for(lambda: len(_pipes(proxy)) == 2, what="the proxied connection")
    return client, server


@pytest.mark.timeout(30)
def test_the_other_directions_eof_does_not_close_a_direction_with_data_still_in_flight():
    # The server half-closes first; then the client sends a request and
    # half-closes.  Both are read during a stall and come due together: the
    # server's EOF is delivered first, and _shut() closes both sockets
    # because the client's direction has closed_src and an empty out buffer,
    # though its request (and EOF) are still scheduled (pipe.inflight > 0).
    target = socket.create_server(("127.0.0.1", 0))
    proxy = LagProxy(("127.0.0.1", 0), target.getsockname()[:2], delay=0.0).start()
    try:
        client, server = _connected(proxy, target)
        proxy.stall(3.0)
        wait_for(lambda: proxy._stall_until > 0, what="the stall")
        up = next(p for p in _pipes(proxy) if p.src.sock.getpeername() == client.getsockname())
        down = up.peer
        server.shutdown(socket.SHUT_WR)
        wait_for(lambda: down.closed_src, what="the server's EOF read")
        client.sendall(b"hello")
        client.shutdown(socket.SHUT_WR)
        wait_for(lambda: up.closed_src, what="the client's request and EOF read")
        assert time.monotonic() < proxy._stall_until, "too slow: the stall was over before both EOFs were read"
        got = b""
        try:
            while True:
                b = server.recv(4096)
                if not b:
                    break
                got += b
        except ConnectionResetError:
            pass
        assert got == b"hello"
        client.close()
        server.close()
    finally:
        proxy.stop()
        target.close()


@pytest.mark.timeout(60)
def test_a_direction_whose_eof_waits_in_a_stall_is_not_shut_when_its_out_buffer_drains():
    # _flush() shuts a direction once dst.out is empty, closed_src is set
    # and last_due has passed.  With the EOF held in pipe.stalled (due
    # during the stall, delivered when it ends), last_due has passed though
    # the tail and the EOF were not delivered: the receiver draining what
    # it had (a write event) shuts the direction, and the tail is lost.
    target = socket.socket()
    target.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)  # (inherited: a small window)
    target.bind(("127.0.0.1", 0))
    target.listen()
    proxy = LagProxy(("127.0.0.1", 0), target.getsockname()[:2], delay=1.0).start()
    try:
        client, server = _connected(proxy, target)
        up = next(p for p in _pipes(proxy) if p.src.sock.getpeername() == client.getsockname())
        up.dst.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)  # (the proxy's kernel buffer small too)
        blob = b"x" * (1024 * 1024)  # the server does not read yet: most of it waits in up.dst.out
        client.sendall(blob)
        wait_for(lambda: len(up.dst.out) > 0, what="the blob waiting in the proxy's out buffer")
        client.sendall(b"tail")
        client.shutdown(socket.SHUT_WR)
        wait_for(lambda: up.closed_src, what="the tail and the EOF read")
        proxy.stall(5.0)
        wait_for(lambda: up.stalled is not None and len(up.stalled) >= 2 or up.inflight == 0 and up.last_due
                 <= time.monotonic(), what="the tail and the EOF come due")
        assert up.stalled is not None, "too slow: the tail came due before the stall began"
        got = bytearray()
        while True:  # the server reads now: up.dst.out drains during the stall
            b = server.recv(65536)
            if not b:
                break
            got += b
        assert bytes(got[-4:]) == b"tail" and len(got) == len(blob) + 4, (len(got), bytes(got[-8:]))
        client.close()
        server.close()
    finally:
        proxy.stop()
        target.close()
