"""Benchmark peers, one role per process: python -m bench.peers ROLE [args]

Roles: ours-server, ours-client, asyncio-server, asyncio-client.
A server prints its port on the first line, then serves until stdin closes.
A client runs one scenario and prints one JSON line.

Scenarios (client args: SCENARIO PORT [options as JSON]):
  oneway  {"n": N, "size": BYTES}   send N messages back to back; the server
                                     answers once it has all N; msgs/s
  rtt     {"n": N}                   one message in flight, N round trips; p50/p99 us
  echo    {"clients": C, "seconds": S}  C closed-loop clients; echoes/s
Message ids: 64 = data (server counts or echoes, see "mode" in the message).
"""

from __future__ import annotations

import asyncio
import json
import struct
import sys
import threading
import time

import msgpack

FRAME = struct.Struct("!IIH")
LEN = struct.Struct("!I")


def _percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


# --- ours --------------------------------------------------------------------------


def ours_server(opts: dict) -> None:
    from peng3dnet import events
    from peng3dnet.net import Server
    from peng3dnet.packet import Packet

    cfg = {
        "net.server.addr": ("127.0.0.1", 0),
        "net.events.enable": opts.get("events", "auto"),
        "net.process.inline": opts.get("inline", True),
        "net.limits.rate.packets": 0,  # a benchmark floods on purpose
        "net.limits.rate.bytes": 0,
        "net.limits.per_address.connections": 0,  # every client comes from 127.0.0.1
        "net.limits.per_address.handshakes": 0,
    }
    server = Server(cfg=cfg)
    counts: dict = {}

    class Msg(Packet):
        def receive(self, msg, cid=None):
            mode = msg[0]
            if mode == 0:  # echo
                server.send_message("b:msg", msg, cid)
            else:  # oneway: count, answer at n
                c = counts.get(cid, 0) + 1
                counts[cid] = c
                if c == mode:
                    server.send_message("b:msg", [0, c], cid)
                    counts[cid] = 0

    server.register_packet("b:msg", Msg(server.registry, server))
    if opts.get("subscriber"):
        events.subscribe("peng3dnet:server.connection.recv", lambda e, d: None)
    server.runAsync()
    if not cfg["net.process.inline"]:
        server.process_async()
    print(server.addr[1], flush=True)
    sys.stdin.read()
    server.shutdown(timeout=2)


def ours_client(scenario: str, port: int, opts: dict) -> dict:
    from peng3dnet import events
    from peng3dnet.net import Client, NetworkLoop
    from peng3dnet.packet import Packet

    loop = NetworkLoop().start() if opts.get("clients", 1) > 1 else None

    def make(handler):
        c = Client(addr=("127.0.0.1", port))
        c.register_packet("b:msg", Packet(c.registry, c))
        events.subscribe("peng3dnet:client.recv", handler, sender=c)
        if loop is not None:  # many clients: one shared network thread
            loop.add(c)
        else:
            c.runAsync()
        c.wait_for_connection(10)
        return c

    if scenario == "oneway":
        n, size = opts["n"], opts.get("size", 0)
        done = threading.Event()
        c = make(lambda e, d: done.set() if d["pid"] >= 64 else None)
        pad = "x" * size
        t0 = time.perf_counter()
        for i in range(n):
            c.send_message("b:msg", [n, i, pad] if size else [n, i])
        ok = done.wait(120)
        dt = time.perf_counter() - t0
        c.close()
        return {"msgs_per_s": n / dt if ok else 0.0, "complete": ok}
    if scenario == "rtt":
        n = opts["n"]
        lat: list[float] = []
        done = threading.Event()
        state = {"t": 0.0}
        holder: list = []

        def on_recv(e, d):
            if d["pid"] < 64:
                return
            now = time.perf_counter()
            lat.append(now - state["t"])
            if len(lat) >= n:
                done.set()
                return
            state["t"] = time.perf_counter()
            holder[0].send_message("b:msg", [0, len(lat)])

        holder.append(make(on_recv))
        state["t"] = time.perf_counter()
        holder[0].send_message("b:msg", [0, 0])
        done.wait(120)
        holder[0].close()
        lat = lat[10:]  # warm-up
        return {"p50_us": _percentile(lat, 50) * 1e6, "p99_us": _percentile(lat, 99) * 1e6}
    if scenario == "echo":
        nclients, seconds = opts["clients"], opts["seconds"]
        counts = [0] * nclients
        stop = threading.Event()
        clients: list = []

        def mk(i):
            def on_recv(e, d):
                if d["pid"] >= 64 and not stop.is_set():
                    counts[i] += 1
                    clients[i].send_message("b:msg", [0, i])

            return on_recv

        for i in range(nclients):
            clients.append(make(mk(i)))
        t0 = time.perf_counter()
        for c in clients:
            c.send_message("b:msg", [0, 0])
        stop.wait(seconds)
        stop.set()
        dt = time.perf_counter() - t0
        total = sum(counts)
        for c in clients:
            c.close()
        return {"echoes_per_s": total / dt}
    raise SystemExit(f"unknown scenario {scenario}")


# --- asyncio streams, same framing ---------------------------------------------------------


async def _aio_read(reader):
    hdr = await reader.readexactly(4)
    (length,) = LEN.unpack(hdr)
    data = await reader.readexactly(length)
    pid, _flags = struct.unpack_from("!IH", data)
    return pid, msgpack.unpackb(data[6:], raw=False)


def _aio_frame(pid, msg):
    body = msgpack.packb(msg)
    return FRAME.pack(len(body) + 6, pid, 0) + body


def asyncio_server(opts: dict) -> None:
    async def handle(reader, writer):
        count = 0
        try:
            while True:
                pid, msg = await _aio_read(reader)
                mode = msg[0]
                if mode == 0:
                    writer.write(_aio_frame(64, msg))
                else:
                    count += 1
                    if count == mode:
                        writer.write(_aio_frame(64, [0, count]))
                        count = 0
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)
        server.close()

    asyncio.run(main())


def asyncio_client(scenario: str, port: int, opts: dict) -> dict:
    async def conn():
        r, w = await asyncio.open_connection("127.0.0.1", port)
        sock = w.get_extra_info("socket")
        import socket

        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return r, w

    async def oneway():
        n, size = opts["n"], opts.get("size", 0)
        r, w = await conn()
        pad = "x" * size
        t0 = time.perf_counter()
        for i in range(n):
            w.write(_aio_frame(64, [n, i, pad] if size else [n, i]))
            if i % 256 == 0:
                await w.drain()
        await w.drain()
        await _aio_read(r)
        dt = time.perf_counter() - t0
        w.close()
        return {"msgs_per_s": n / dt, "complete": True}

    async def rtt():
        r, w = await conn()
        lat = []
        for i in range(opts["n"]):
            t = time.perf_counter()
            w.write(_aio_frame(64, [0, i]))
            await _aio_read(r)
            lat.append(time.perf_counter() - t)
        w.close()
        lat = lat[10:]
        return {"p50_us": _percentile(lat, 50) * 1e6, "p99_us": _percentile(lat, 99) * 1e6}

    async def echo():
        nclients, seconds = opts["clients"], opts["seconds"]
        conns = [await conn() for _ in range(nclients)]
        counts = [0] * nclients
        deadline = time.perf_counter() + seconds

        async def loop(i, r, w):
            while time.perf_counter() < deadline:
                w.write(_aio_frame(64, [0, i]))
                await _aio_read(r)
                counts[i] += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(loop(i, r, w) for i, (r, w) in enumerate(conns)))
        dt = time.perf_counter() - t0
        for _, w in conns:
            w.close()
        return {"echoes_per_s": sum(counts) / dt}

    return asyncio.run({"oneway": oneway, "rtt": rtt, "echo": echo}[scenario]())


if __name__ == "__main__":
    role = sys.argv[1]
    if role.endswith("server"):
        opts = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
        {"ours-server": ours_server, "asyncio-server": asyncio_server}[role](opts)
    else:
        scenario, port = sys.argv[2], int(sys.argv[3])
        opts = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
        fn = {"ours-client": ours_client, "asyncio-client": asyncio_client}[role]
        print(json.dumps(fn(scenario, port, opts)), flush=True)
        import os

        os._exit(0)
