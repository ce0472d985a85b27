"""Benchmark peers, one role per process: python -m bench.peers ROLE [args]

Roles (IMPL-server, IMPL-client):
  ours       peng3dnet tuned: server with net.process.inline and the rate and
             per-address limits off; clients in recv event handlers, many
             clients on one NetworkLoop
  default    peng3dnet used as its docs and 0.1.x programs do: Server() with the
             default config, runAsync() + process_async(), handlers in
             Packet.receive answering with self.peer.send_message(); one Client
             per connection, each with runAsync() + process_async()
  asyncio    asyncio streams, same framing
  selectors  a bare one-thread selectors loop, same framing: non-blocking sockets,
             recv_into one buffer; the server sends the answers to one read in
             one send; a client sends each frame at once (buffered only while
             the kernel's buffer is full), all its connections on one thread
A server prints its port on the first line, then serves until stdin closes.
A client runs one scenario and prints one JSON line.

Scenarios (client args: SCENARIO PORT [options as JSON]):
  oneway  {"n": N, "size": BYTES}   send N messages back to back; the server
                                     answers once it has all N; msgs/s
  count   {"n": N}                   send N small messages back to back, then ask
                                     the server how many it got; msgs/s,
                                     "received", "complete" (all arrived)
  rtt     {"n": N}                   one message in flight, N round trips; p50/p99 us
  echo    {"clients": C, "seconds": S}  C closed-loop clients; echoes/s
  burst   {"n": N, "rounds": R}      N echo requests back to back, time until all N
                                     echoes are back; R bursts, median echoes/s
With "server_pid" in the options, echo also reports the server process's CPU
time (user + system, /proc/PID/stat) over the measured window per echo:
"server_cpu_us_per_echo".
Message id 64 = data; msg[0] is the mode: 0 echo it; N > 0 count, answer
[0, N] at the Nth; -1 count silently; -2 answer [0, count] and reset.
"""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import socket
import struct
import sys
import threading
import time

import msgpack

FRAME = struct.Struct("!IIH")
LEN = struct.Struct("!I")
HDR = struct.Struct("!IH")


def _percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def _proc_cpu_split(pid: int) -> tuple[float, float]:
    """``(user, system)`` CPU seconds of process ``pid`` (all its threads):
    user is the interpreter's own work, system the kernel's (the socket
    calls and the TCP stack behind them)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()  # fields[0] is field 3 (state)
    tck = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tck, int(fields[12]) / tck


class _Cpu:
    """The server's CPU time over a window, when the runner passed its pid."""

    def __init__(self, opts: dict) -> None:
        self.pid = opts.get("server_pid")
        self.t0 = _proc_cpu_split(self.pid) if self.pid else (0.0, 0.0)

    def result(self, echoes: int) -> dict:
        if not self.pid:
            return {}
        user, system = (b - a for a, b in zip(self.t0, _proc_cpu_split(self.pid)))
        used = user + system
        per = 1e6 / max(echoes, 1)
        return {"server_cpu_us_per_echo": used * per, "server_cpu_s": used,
                "server_user_us_per_echo": user * per, "server_sys_us_per_echo": system * per}


def _timed_oneway(c, scenario: str, opts: dict, answer: list, done: threading.Event, timeout: float) -> dict:
    """Send the one-way messages from this thread and time them until the
    server's answer (which its handler appends to ``answer``, setting ``done``)."""
    t0 = time.perf_counter()
    _oneway_send(c.send_message, scenario, opts)
    ok = done.wait(timeout)
    dt = time.perf_counter() - t0
    c.close()
    return _oneway_result(scenario, opts["n"], dt, answer[0] if ok else None)


def _timed_bursts(c, got: list, done: threading.Event, n: int, rounds: int) -> dict:
    """``rounds`` bursts of ``n`` echo requests sent back to back from this
    thread; the echo handler counts into ``got[0]`` and sets ``done`` at n."""
    times = []
    for _ in range(rounds):
        got[0] = 0
        done.clear()
        t0 = time.perf_counter()
        for i in range(n):
            c.send_message("b:msg", [0, i])
        if not done.wait(60):
            raise SystemExit(f"burst: {got[0]} of {n} echoes after 60 s")
        times.append(time.perf_counter() - t0)
    c.close()
    return _burst_result(times, n)


def _burst_result(times: list[float], n: int) -> dict:
    per = sorted(n / t for t in times)
    return {"echoes_per_s": per[len(per) // 2], "bursts": len(per)}


class _Counter:
    """The servers' oneway bookkeeping per connection (see the modes above)."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def answer(self, mode: int):
        """Count one message of a negative or positive mode; the reply or None."""
        if mode == -2:
            c, self.count = self.count, 0
            return [0, c]
        self.count += 1
        if mode == self.count:
            self.count = 0
            return [0, mode]
        return None


# --- ours ---------------------------------------------------------------------------


def _server_packet_class():
    from peng3dnet.errors import ConnectionClosedError
    from peng3dnet.packet import Packet

    class Msg(Packet):
        """Echo or count (modes above), answering with self.peer.send_message."""

        def __init__(self, reg, peer):
            super().__init__(reg, peer)
            self.counters: dict = {}

        def receive(self, msg, cid=None):
            mode = msg[0]
            try:
                if mode == 0:  # echo
                    self.peer.send_message("b:msg", msg, cid)
                    return
                ctr = self.counters.get(cid)
                if ctr is None:
                    ctr = self.counters[cid] = _Counter()
                reply = ctr.answer(mode)
                if reply is not None:
                    self.peer.send_message("b:msg", reply, cid)
            except ConnectionClosedError:  # a client left with echoes in flight (process thread)
                pass

    return Msg


def _oneway_send(send, scenario: str, opts: dict) -> None:
    """The oneway/count burst: ``send("b:msg", msg)`` in a tight loop."""
    n = opts["n"]
    if scenario == "count":
        for i in range(n):
            send("b:msg", [-1, i])
        send("b:msg", [-2])
        return
    size = opts.get("size", 0)
    pad = "x" * size
    for i in range(n):
        send("b:msg", [n, i, pad] if size else [n, i])


def _oneway_result(scenario: str, n: int, dt: float, answer) -> dict:
    """``answer``: the server's reply ([0, count]), None if none came."""
    if scenario == "oneway":
        ok = answer is not None
        return {"msgs_per_s": n / dt if ok else 0.0, "complete": ok}
    received = answer[1] if answer is not None else -1
    return {"msgs_per_s": max(received, 0) / dt, "received": received, "complete": received == n}


def ours_server(opts: dict) -> None:
    from peng3dnet import events
    from peng3dnet.net import Server

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
    server.register_packet("b:msg", _server_packet_class()(server.registry, server))
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

    if scenario in ("oneway", "count"):
        done = threading.Event()
        answer: list = []

        def on_answer(e, d):
            if d["pid"] >= 64:
                answer.append(d["msg"])
                done.set()

        return _timed_oneway(make(on_answer), scenario, opts, answer, done, 120)
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
        cpu = _Cpu(opts)
        t0 = time.perf_counter()
        for c in clients:
            c.send_message("b:msg", [0, 0])
        stop.wait(seconds)
        stop.set()
        dt = time.perf_counter() - t0
        total = sum(counts)
        result = {"echoes_per_s": total / dt, **cpu.result(total)}
        for c in clients:
            c.close()
        return result
    if scenario == "burst":
        n, rounds = opts["n"], opts.get("rounds", 10)
        got = [0]
        done = threading.Event()

        def on_echo(e, d):
            if d["pid"] >= 64:
                got[0] += 1
                if got[0] == n:
                    done.set()

        c = make(on_echo)
        return _timed_bursts(c, got, done, n, rounds)
    raise SystemExit(f"unknown scenario {scenario}")


# --- ours, the default API (docs and 0.1.x programs) ----------------------------------


def default_server(opts: dict) -> None:
    from peng3dnet.net import Server

    server = Server(addr=("127.0.0.1", 0))  # the default config: limits on, handlers on the process thread
    server.register_packet("b:msg", _server_packet_class()(server.registry, server))
    server.runAsync()
    server.process_async()
    print(server.addr[1], flush=True)
    sys.stdin.read()
    server.shutdown(timeout=2)


def default_client(scenario: str, port: int, opts: dict) -> dict:
    from peng3dnet.net import Client
    from peng3dnet.packet import Packet

    def connect(packet_cls, obj=None):
        """One Client per connection, its own network and process threads."""
        c = Client(addr=("127.0.0.1", port))
        c.register_packet("b:msg", packet_cls(c.registry, c, obj))
        c.runAsync()
        c.process_async()
        c.wait_for_connection(10)
        return c

    if scenario in ("oneway", "count"):
        done = threading.Event()
        answer: list = []

        class Answer(Packet):
            def receive(self, msg, cid=None):
                answer.append(msg)
                done.set()

        return _timed_oneway(connect(Answer), scenario, opts, answer, done, 300)  # sent from the main thread
    if scenario == "rtt":
        n = opts["n"]
        lat: list[float] = []
        done = threading.Event()
        state = {"t": 0.0}

        class Rtt(Packet):
            def receive(self, msg, cid=None):
                lat.append(time.perf_counter() - state["t"])
                if len(lat) >= n:
                    done.set()
                    return
                state["t"] = time.perf_counter()
                self.peer.send_message("b:msg", [0, len(lat)])

        c = connect(Rtt)
        state["t"] = time.perf_counter()
        c.send_message("b:msg", [0, 0])
        done.wait(120)
        c.close()
        lat = lat[10:]  # warm-up
        return {"p50_us": _percentile(lat, 50) * 1e6, "p99_us": _percentile(lat, 99) * 1e6}
    if scenario == "echo":
        nclients, seconds = opts["clients"], opts["seconds"]
        counts = [0] * nclients
        stop = threading.Event()

        class Echo(Packet):
            def receive(self, msg, cid=None):
                if not stop.is_set():
                    counts[self.obj] += 1
                    self.peer.send_message("b:msg", msg)

        clients = [connect(Echo, i) for i in range(nclients)]
        cpu = _Cpu(opts)
        t0 = time.perf_counter()
        for i, c in enumerate(clients):
            c.send_message("b:msg", [0, i])
        stop.wait(seconds)
        stop.set()
        dt = time.perf_counter() - t0
        total = sum(counts)
        result = {"echoes_per_s": total / dt, **cpu.result(total)}
        for c in clients:
            c.close()
        return result
    if scenario == "burst":
        n, rounds = opts["n"], opts.get("rounds", 10)
        got = [0]
        done = threading.Event()

        class Burst(Packet):
            def receive(self, msg, cid=None):
                got[0] += 1
                if got[0] == n:
                    done.set()

        c = connect(Burst)
        return _timed_bursts(c, got, done, n, rounds)  # sent from the main thread
    raise SystemExit(f"unknown scenario {scenario}")


# --- asyncio streams, same framing ---------------------------------------------------------


def _frame(pid, msg):
    body = msgpack.packb(msg)
    return FRAME.pack(len(body) + 6, pid, 0) + body


async def _aio_read(reader):
    hdr = await reader.readexactly(4)
    (length,) = LEN.unpack(hdr)
    data = await reader.readexactly(length)
    pid, _flags = HDR.unpack_from(data)
    return pid, msgpack.unpackb(data[6:], raw=False)


def asyncio_server(opts: dict) -> None:
    async def handle(reader, writer):
        counter = _Counter()
        try:
            while True:
                pid, msg = await _aio_read(reader)
                mode = msg[0]
                if mode == 0:
                    writer.write(_frame(64, msg))
                else:
                    reply = counter.answer(mode)
                    if reply is not None:
                        writer.write(_frame(64, reply))
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
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return r, w

    async def oneway():
        n, size = opts["n"], opts.get("size", 0)
        r, w = await conn()
        pad = "x" * size
        t0 = time.perf_counter()
        for i in range(n):
            if scenario == "count":
                w.write(_frame(64, [-1, i]))
            else:
                w.write(_frame(64, [n, i, pad] if size else [n, i]))
            if i % 256 == 0:
                await w.drain()
        if scenario == "count":
            w.write(_frame(64, [-2]))
        await w.drain()
        _, answer = await _aio_read(r)
        dt = time.perf_counter() - t0
        w.close()
        return _oneway_result(scenario, n, dt, answer)

    async def rtt():
        r, w = await conn()
        lat = []
        for i in range(opts["n"]):
            t = time.perf_counter()
            w.write(_frame(64, [0, i]))
            await _aio_read(r)
            lat.append(time.perf_counter() - t)
        w.close()
        lat = lat[10:]
        return {"p50_us": _percentile(lat, 50) * 1e6, "p99_us": _percentile(lat, 99) * 1e6}

    async def echo():
        nclients, seconds = opts["clients"], opts["seconds"]
        conns = [await conn() for _ in range(nclients)]
        counts = [0] * nclients
        cpu = _Cpu(opts)
        deadline = time.perf_counter() + seconds

        async def loop(i, r, w):
            while time.perf_counter() < deadline:
                w.write(_frame(64, [0, i]))
                await _aio_read(r)
                counts[i] += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(loop(i, r, w) for i, (r, w) in enumerate(conns)))
        dt = time.perf_counter() - t0
        total = sum(counts)
        result = {"echoes_per_s": total / dt, **cpu.result(total)}
        for _, w in conns:
            w.close()
        return result

    async def burst():
        n, rounds = opts["n"], opts.get("rounds", 10)
        r, w = await conn()
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            for i in range(n):
                w.write(_frame(64, [0, i]))
            for _ in range(n):
                await _aio_read(r)
            times.append(time.perf_counter() - t0)
        w.close()
        return _burst_result(times, n)

    scenarios = {"oneway": oneway, "count": oneway, "rtt": rtt, "echo": echo, "burst": burst}
    return asyncio.run(scenarios[scenario]())


# --- a bare one-thread selectors loop, same framing ---------------------------------------


class _SelConn:
    """A non-blocking socket on a selector: frames in, bytes out."""

    __slots__ = ("sock", "sel", "inbuf", "out", "tag")

    def __init__(self, sock: socket.socket, sel: selectors.BaseSelector, tag=None) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.sel = sel
        self.inbuf = bytearray()
        self.out = bytearray()
        self.tag = tag
        sel.register(sock, selectors.EVENT_READ, self)

    def write(self, data) -> None:
        if self.out:  # the kernel's buffer is full: wait for EVENT_WRITE
            self.out += data
            return
        try:
            n = self.sock.send(data)
        except BlockingIOError:
            n = 0
        if n < len(data):
            self.out += memoryview(data)[n:]
            self.sel.modify(self.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, self)

    def flush(self) -> None:
        try:
            n = self.sock.send(self.out)
        except BlockingIOError:
            return
        del self.out[:n]
        if not self.out:
            self.sel.modify(self.sock, selectors.EVENT_READ, self)

    def read(self, rbuf: memoryview):
        """The messages of the frames completed by one recv; None at EOF."""
        try:
            n = self.sock.recv_into(rbuf)
        except BlockingIOError:
            return []
        except ConnectionError:
            return None
        if not n:
            return None
        if self.inbuf:
            self.inbuf += rbuf[:n]
            data = self.inbuf
        else:
            data = rbuf[:n]
        msgs = []
        pos, end = 0, len(data)
        unpackb, unpack_len = msgpack.unpackb, LEN.unpack_from
        while end - pos >= 10:
            (length,) = unpack_len(data, pos)
            if end - pos - 4 < length:
                break
            msgs.append(unpackb(data[pos + 10 : pos + 4 + length]))  # skip pid and flags
            pos += 4 + length
        if data is self.inbuf:
            del data[:pos]
        elif pos < end:
            self.inbuf += data[pos:end]
        return msgs

    def close(self) -> None:
        self.sel.unregister(self.sock)
        self.sock.close()


_STDIN = object()


def selectors_server(opts: dict) -> None:
    sel = selectors.DefaultSelector()
    lsock = socket.create_server(("127.0.0.1", 0), backlog=1024)
    lsock.setblocking(False)
    sel.register(lsock, selectors.EVENT_READ, None)
    stdin = sys.stdin.fileno()
    sel.register(stdin, selectors.EVENT_READ, _STDIN)
    print(lsock.getsockname()[1], flush=True)
    rbuf = memoryview(bytearray(1 << 18))
    running = True
    while running:
        for key, ev in sel.select():
            conn = key.data
            if conn is None:
                while True:
                    try:
                        sock, _ = lsock.accept()
                    except BlockingIOError:
                        break
                    _SelConn(sock, sel, _Counter())
            elif conn is _STDIN:
                running = bool(os.read(stdin, 65536))
            else:
                if ev & selectors.EVENT_WRITE:
                    conn.flush()
                if ev & selectors.EVENT_READ:
                    msgs = conn.read(rbuf)
                    if msgs is None:
                        conn.close()
                        continue
                    out = bytearray()  # every answer to one read in one send
                    for msg in msgs:
                        mode = msg[0]
                        if mode == 0:
                            out += _frame(64, msg)
                        else:
                            reply = conn.tag.answer(mode)
                            if reply is not None:
                                out += _frame(64, reply)
                    if out:
                        conn.write(out)


def selectors_client(scenario: str, port: int, opts: dict) -> dict:
    sel = selectors.DefaultSelector()
    rbuf = memoryview(bytearray(1 << 18))
    inbox: list = []  # (conn, msgs) read by pump()

    def connect(tag=None) -> _SelConn:
        return _SelConn(socket.create_connection(("127.0.0.1", port)), sel, tag)

    def pump(timeout=None) -> None:
        for key, ev in sel.select(timeout):
            conn = key.data
            if ev & selectors.EVENT_WRITE:
                conn.flush()
            if ev & selectors.EVENT_READ:
                msgs = conn.read(rbuf)
                if msgs is None:
                    raise ConnectionError("the server closed the connection")
                if msgs:
                    inbox.append((conn, msgs))

    def take() -> list:
        """Wait for messages; all that arrived, on any connection."""
        while not inbox:
            pump()
        got = inbox[:]
        inbox.clear()
        return got

    if scenario in ("oneway", "count"):
        c = connect()
        high = 4 << 20

        def send(_ptype, msg):
            c.write(_frame(64, msg))
            if len(c.out) > high:  # back-pressure: wait until the kernel took half
                while len(c.out) > high // 2:
                    pump()

        t0 = time.perf_counter()
        _oneway_send(send, scenario, opts)
        answer = take()[0][1][0]
        dt = time.perf_counter() - t0
        c.close()
        return _oneway_result(scenario, opts["n"], dt, answer)
    if scenario == "rtt":
        c = connect()
        lat = []
        for i in range(opts["n"]):
            t = time.perf_counter()
            c.write(_frame(64, [0, i]))
            take()
            lat.append(time.perf_counter() - t)
        c.close()
        lat = lat[10:]
        return {"p50_us": _percentile(lat, 50) * 1e6, "p99_us": _percentile(lat, 99) * 1e6}
    if scenario == "echo":
        nclients, seconds = opts["clients"], opts["seconds"]
        conns = [connect(i) for i in range(nclients)]
        counts = [0] * nclients
        cpu = _Cpu(opts)
        t0 = time.perf_counter()
        deadline = t0 + seconds
        for c in conns:
            c.write(_frame(64, [0, c.tag]))
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            pump(left)
            for c, msgs in inbox:  # closed loop: one message in flight per client
                counts[c.tag] += len(msgs)
                c.write(_frame(64, [0, c.tag]))
            inbox.clear()
        dt = time.perf_counter() - t0
        total = sum(counts)
        result = {"echoes_per_s": total / dt, **cpu.result(total)}
        for c in conns:
            c.close()
        return result
    if scenario == "burst":
        n, rounds = opts["n"], opts.get("rounds", 10)
        c = connect()
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            for i in range(n):
                c.write(_frame(64, [0, i]))
            got = 0
            while got < n:
                got += sum(len(msgs) for _, msgs in take())
            times.append(time.perf_counter() - t0)
        c.close()
        return _burst_result(times, n)
    raise SystemExit(f"unknown scenario {scenario}")


SERVERS = {
    "ours-server": ours_server,
    "default-server": default_server,
    "asyncio-server": asyncio_server,
    "selectors-server": selectors_server,
}
CLIENTS = {
    "ours-client": ours_client,
    "default-client": default_client,
    "asyncio-client": asyncio_client,
    "selectors-client": selectors_client,
}


if __name__ == "__main__":
    role = sys.argv[1]
    if role.endswith("server"):
        opts = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
        SERVERS[role](opts)
    else:
        scenario, port = sys.argv[2], int(sys.argv[3])
        opts = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
        print(json.dumps(CLIENTS[role](scenario, port, opts)), flush=True)
        os._exit(0)
