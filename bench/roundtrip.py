"""The default-API round trip that bench.instr and bench.opcount measure.

A default ``Server`` and a default ``Client`` in one process, both with
``runAsync()`` + ``process_async()``, each answering from
``Packet.receive``: the client sends ``[1, "x"]``, the server echoes it,
the client sends the next number, until ``warm + n`` round trips are done.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def default_pair(server_packet: Any, client_packet: Any) -> tuple[Any, Any]:
    """A default ``Server`` and a default ``Client`` connected to it, both
    with ``runAsync()`` + ``process_async()``, packet ``b:msg`` handled by
    an instance of ``server_packet`` / ``client_packet`` (Packet classes)."""
    from peng3dnet.net import Client, Server

    srv = Server(addr=("127.0.0.1", 0))
    srv.register_packet("b:msg", server_packet(srv.registry, srv))
    srv.runAsync()
    srv.process_async()
    cl = Client(addr=("127.0.0.1", srv.addr[1]))
    cl.register_packet("b:msg", client_packet(cl.registry, cl))
    cl.runAsync()
    cl.process_async()
    cl.wait_for_connection(60)
    return srv, cl


def default_api_round_trips(n: int, warm: int = 0, at_start: Callable[[], None] | None = None,
                            at_end: Callable[[], None] | None = None) -> None:
    """Run ``warm + n`` round trips; ``at_start()`` runs (on the client's
    handler thread) when the warm-up ones are done, ``at_end()`` after the
    last one.  Raises SystemExit when they do not finish in 600 s."""
    from peng3dnet.packet import Packet

    done = threading.Event()
    last = warm + n

    class Back(Packet):
        def receive(self, msg, cid=None):
            self.peer.send_message("b:msg", msg, cid)

    class Again(Packet):
        def receive(self, msg, cid=None):
            if msg[0] == warm and at_start is not None:
                at_start()
            if msg[0] >= last:
                if at_end is not None:
                    at_end()
                done.set()
                return
            self.peer.send_message("b:msg", [msg[0] + 1, "x"])

    srv, cl = default_pair(Back, Again)
    cl.send_message("b:msg", [1, "x"])
    if not done.wait(600):
        raise SystemExit("the round trips did not finish")
    cl.close()
    srv.shutdown(timeout=5)


async def aio_echo(reader: Any, writer: Any) -> None:
    """The asyncio-streams echo server's connection handler (bench/peers.py's
    framing): every message back as packet 64, until the peer leaves."""
    import asyncio

    from bench.peers import _aio_read, _frame

    try:
        while True:
            _pid, msg = await _aio_read(reader)
            writer.write(_frame(64, msg))
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
        writer.close()  # (cancelled: asyncio.run() ending)


def asyncio_round_trips(n: int, warm: int = 0, at_start: Callable[[], None] | None = None,
                        at_end: Callable[[], None] | None = None) -> None:
    """The same ``warm + n`` round trips between bench/peers.py's
    asyncio-streams server and client on one event loop (the yardstick of
    issue #13); ``at_start()``/``at_end()`` as above."""
    import asyncio
    import socket

    from bench.peers import _aio_read, _frame

    async def rounds() -> None:
        server = await asyncio.start_server(aio_echo, "127.0.0.1", 0)
        r, w = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(warm + n):
            if i == warm and at_start is not None:
                at_start()
            w.write(_frame(64, [i, "x"]))
            await _aio_read(r)
        if at_end is not None:
            at_end()
        w.close()
        server.close()

    asyncio.run(rounds())
