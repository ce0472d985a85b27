"""Rooms benchmarks: matchmaking, cross-process messages, rooms per process.

    python -m bench.rooms [--quick] [--seconds 5] [--rooms 5,10,25,50]

Everything on loopback; a redis-server of our own (``/usr/bin/redis-server``,
or ``redis-server``/``valkey-server`` on the PATH) on a free port with a
temporary data directory, stopped at the end.

1. Matchmaking: two server processes (``RoomServer`` on a ``RedisPresence``,
   rooms of kind "bench", 8 seats) register in the directory; this process
   times ``Lobby(presence, secret).matchmake("bench")`` N times (500,
   ``--quick`` 100), once releasing each seat right away (the directory
   holds one room) and once keeping them (one more room every 8 calls, as
   when players take the seats: ``RedisPresence.rooms`` reads each room);
   then N=50 times from matchmake to a ``Client`` connected and in the room
   (``RoomClient(client).join(seat=token)``; a fresh Client with its own
   threads each time, as a player's game would).
2. Cross-process messages: a publisher process sends
   ``RedisPresence.publish(channel, {"t": time.time_ns()})`` 1000 times,
   1 ms apart; this process subscribes and records the delay on arrival (the
   subscription's thread).  ``LocalPresence.publish`` (one process, the
   callback runs in the call) for comparison.
3. Rooms per process at 20 Hz: a server process (``Server`` + ``RoomServer``
   with ``sync=True``, ``tick_rate=20``, rooms of the arena demo's
   ``ArenaRoom``: synced, 8 seats, coins and scores, handlers on the
   server's process thread) and one client process holding R rooms x 4
   players on one ``NetworkLoop`` (``RoomClient`` + ``SyncClient``, snapshots
   applied inline), every player sending 20 inputs/s.  Over the window:
   the server's CPU (user + system, /proc/PID/stat, all its threads) as a
   share of one core, the wall time of ``RoomServer.step`` (all rooms' sync
   and rules, timed in a subclass; in parentheses the CPU time of the rooms
   thread in it: the rest is waiting for the GIL or a core), ticks run
   against the 20/s asked for, inputs applied against those asked for.  The client process's CPU is shown
   too: on a small machine it competes with the server for the cores.

Hand-run, for the README; no assertions on times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from bench.scale import _raise_nofile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KIND = "bench"
SECRET = b"bench.rooms seat-token secret"
PLAYERS_PER_ROOM = 4
TICK_RATE = 20
INPUT = {"dx": 1, "dy": 0, "dt": 1.0 / TICK_RATE}


def proc_cpu(pid: int | str = "self") -> float:
    """User + system CPU seconds of process ``pid`` (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()  # fields[0] is field 3 (state)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1), nearest rank."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- processes we start -------------------------------------------------------------------


class Proc:
    """A child process whose stdout lines are read by a thread (so waiting
    for a line has a time-out); stdin stays open: closing it asks the child
    to end."""

    def __init__(self, args: list[str], name: str, module: bool = True) -> None:
        env = dict(os.environ, PYTHONPATH=ROOT)
        argv = [sys.executable, "-m", "bench.rooms", *args] if module else args
        self.name = name
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=None if module else subprocess.STDOUT, text=True, env=env, cwd=ROOT)
        self.pid = self.p.pid
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, name=f"read {name}", daemon=True).start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, prefix: str, timeout: float) -> str:
        """The next line starting with ``prefix`` (others are kept in ``seen``)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no {prefix!r} line in {timeout:.0f} s: {self.seen[-5:]}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"{self.name} ended (exit {self.p.poll()}) before {prefix!r}: {self.seen[-5:]}")
            if line.startswith(prefix):
                return line
            self.seen.append(line)

    def send(self, line: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def stop(self, timeout: float = 15.0) -> None:
        try:
            if self.p.stdin is not None:
                self.p.stdin.close()
        except OSError:
            pass
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait(5)


class RedisServer:
    """Our own redis-server: free loopback port, temporary data directory, no persistence."""

    def __init__(self) -> None:
        exe = next((p for p in ("/usr/bin/redis-server", shutil.which("redis-server") or "",
                                shutil.which("valkey-server") or "") if p and os.path.exists(p)), None)
        if exe is None:
            raise SystemExit("redis-server is not installed (apt-get install redis-server)")
        self.dir = tempfile.mkdtemp(prefix="bench-rooms-redis-")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = Proc([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                          "--dir", self.dir, "--daemonize", "no", "--protected-mode", "yes", "--loglevel", "notice"],
                         "redis-server", module=False)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 15
        while True:
            line = self.proc.expect("", max(0.1, deadline - time.monotonic()))
            if "Ready to accept connections" in line:
                return

    def stop(self) -> None:
        self.proc.p.terminate()
        try:
            self.proc.p.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.p.kill()
            self.proc.p.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


# --- roles (their own processes) -------------------------------------------------------------


def role_room_server(url: str, ns: str) -> None:
    """A server process of the matchmaking cluster."""
    from peng3dnet.ext.rooms import Room, RoomServer
    from peng3dnet.ext.rooms.redispresence import RedisPresence
    from peng3dnet.net import Server

    class BenchRoom(Room):
        max_clients = 8

    server = Server(addr=("127.0.0.1", 0), cfg={"net.limits.per_address.connections": 0,
                                               "net.limits.per_address.handshakes": 0})
    presence = RedisPresence(url, ns)
    rooms = RoomServer(server, presence, secret=SECRET)
    rooms.define(KIND, BenchRoom)
    server.runAsync()
    server.process_async()
    rooms.start()
    print("READY", rooms.server_id, server.addr[1], flush=True)
    sys.stdin.read()
    print("STATS", json.dumps(rooms.stats), flush=True)
    rooms.stop()
    server.shutdown(timeout=5)
    presence.close()


def role_publisher(url: str, ns: str, n: int, gap: float) -> None:
    """Publish ``n`` timestamps ``gap`` s apart, once a subscriber listens."""
    from peng3dnet.ext.rooms.redispresence import RedisPresence

    p = RedisPresence(url, ns)
    deadline = time.monotonic() + 10
    pace = threading.Event()
    while p.publish("lat", {"warmup": 1}) < 1:  # the subscriber's SUBSCRIBE is in: go
        if time.monotonic() > deadline:
            raise SystemExit("publisher: nobody subscribed")
        pace.wait(0.001)
    calls = []
    t0 = time.monotonic()
    for i in range(n):
        a = time.perf_counter_ns()
        p.publish("lat", {"t": time.time_ns(), "i": i})
        calls.append((time.perf_counter_ns() - a) / 1000)
        pace.wait(max(0.0, t0 + (i + 1) * gap - time.monotonic()))
    print("DONE", json.dumps({"p50_us": pct(calls, 0.5), "p99_us": pct(calls, 0.99)}), flush=True)
    p.close()


def role_cap_server() -> None:
    """Server + RoomServer(sync=True, 20 Hz) with ArenaRoom rooms; ``mark`` on stdin
    answers the counters and the step times since the previous mark."""
    _raise_nofile()
    from demos.arena.netgame import BOARD_PACKET, ArenaRoom
    from peng3dnet.ext.rooms import RoomServer
    from peng3dnet.net import Server
    from peng3dnet.packet import Packet

    class TimedRoomServer(RoomServer):
        durations: list[float] = []
        cpu: list[float] = []

        def step(self, dt: float | None = None) -> None:
            t0, c0 = time.perf_counter(), time.thread_time()
            super().step(dt)
            self.durations.append(time.perf_counter() - t0)
            self.cpu.append(time.thread_time() - c0)  # CPU of the rooms thread alone

    s = Server(addr=("127.0.0.1", 0), cfg={
        "net.limits.max_clients": 10000, "net.timeout.handshake": 60,
        "net.limits.per_address.connections": 0, "net.limits.per_address.handshakes": 0})
    rooms = TimedRoomServer(s, tick_rate=TICK_RATE, sync=True)
    rooms.define("arena", ArenaRoom)
    s.register_packet(BOARD_PACKET, Packet(s.registry, s))
    s.runAsync()
    s.process_async()  # join calls and inputs: the server's process thread
    rooms.start()
    print("READY", s.addr[1], flush=True)
    for line in sys.stdin:
        if line.strip() != "mark":
            continue
        durations, rooms.durations = rooms.durations, []
        cpu, rooms.cpu = rooms.cpu, []
        with rooms.lock:
            syncs = [r.sync for r in rooms.rooms.values() if r.sync is not None]
            out = {
                "t": time.monotonic(), "ticks": rooms.stats["ticks"], "rooms": len(rooms.rooms),
                "members": sum(len(r.members) for r in rooms.rooms.values()),
                "inputs": sum(x.stats["inputs"] for x in syncs), "snapshots": sum(x.stats["snapshots"] for x in syncs),
                "steps": len(durations), "step_mean_ms": 1000 * statistics.fmean(durations) if durations else 0.0,
                "step_cpu_ms": 1000 * statistics.fmean(cpu) if cpu else 0.0,
                "step_p99_ms": 1000 * pct(durations, 0.99), "step_max_ms": 1000 * max(durations, default=0.0),
            }
        print("MARK", json.dumps(out), flush=True)
    rooms.stop()
    s.shutdown(timeout=5)


def role_cap_clients(port: int, nrooms: int) -> None:
    """``nrooms`` rooms x 4 players on one NetworkLoop, 20 inputs/s each,
    until stdin closes."""
    _raise_nofile()
    from demos.arena.netgame import BOARD_PACKET
    from peng3dnet.ext.rooms import RoomClient
    from peng3dnet.ext.sync import SyncClient
    from peng3dnet.net import Client, NetworkLoop
    from peng3dnet.packet import Packet

    loop = NetworkLoop().start()
    players = []
    try:
        for r in range(nrooms):
            for _ in range(PLAYERS_PER_ROOM):
                c = Client(addr=("127.0.0.1", port), cfg={"net.timeout.handshake": 60, "net.process.inline": True})
                c.register_packet(BOARD_PACKET, Packet(c.registry, c))
                rc = RoomClient(c)
                sc = SyncClient(c, tick_rate=TICK_RATE)
                loop.add(c)
                players.append((c, rc, sc, f"room{r}"))
        for c, _, _, _ in players:
            c.wait_for_connection(60)
        for _, rc, _, name in players:
            rc.join(name, kind="arena", timeout=30)
        print("JOINED", len(players), flush=True)
        done = threading.Event()

        def stdin_eof() -> None:
            sys.stdin.read()
            done.set()

        threading.Thread(target=stdin_eof, daemon=True).start()
        period = 1.0 / TICK_RATE
        slices = 10  # the players' inputs spread over the tick in 10 slices
        per = max(1, -(-len(players) // slices))
        sent = 0
        next_t = time.monotonic()
        while not done.is_set():
            for k in range(0, len(players), per):
                for _, _, sc, _ in players[k:k + per]:
                    sc.send_input(INPUT)
                    sent += 1
                next_t += period / slices
                delay = next_t - time.monotonic()
                if delay < -period:
                    next_t = time.monotonic()
                elif delay > 0:
                    done.wait(delay)
        print("STATS", json.dumps({"sent": sent, "snapshots": sum(sc.stats["snapshots"] for _, _, sc, _ in players),
                                   "desyncs": sum(sc.stats["desyncs"] for _, _, sc, _ in players)}), flush=True)
    finally:
        loop.stop()


# --- the measurements (this process) ------------------------------------------------------------


def _clear_rooms(r: Any, ns: str) -> None:
    keys = list(r.scan_iter(f"{ns}:room:*")) + list(r.scan_iter(f"{ns}:seats:*")) + [f"{ns}:rooms"]
    r.delete(*keys)


def bench_matchmaking(redis_url: str, n: int, n_join: int) -> list[tuple[str, int, float, float, str]]:
    """Rows: (what, n, p50 ms, p99 ms, note)."""
    import redis

    from peng3dnet.ext.rooms import Lobby, RoomClient
    from peng3dnet.ext.rooms.redispresence import RedisPresence
    from peng3dnet.ext.rooms.tokens import read_token
    from peng3dnet.net import Client

    ns = "mm"
    servers = [Proc(["_room_server", redis_url, ns], f"room server {i}") for i in range(2)]
    presence = RedisPresence(redis_url, ns)
    raw = redis.Redis.from_url(redis_url)
    rows = []
    try:
        for s in servers:
            s.expect("READY", 30)
        lobby = Lobby(presence, SECRET)
        lobby.matchmake(KIND)  # warm up (script load, connections)
        _clear_rooms(raw, ns)

        # 1a: seats released at once: one room in the directory
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            t = lobby.matchmake(KIND)
            times.append(1000 * (time.perf_counter() - t0))
            presence.release_seat(t["room"], read_token(SECRET, t["token"]).seat)
        rooms_now = len(presence.rooms(KIND))
        rows.append(("`Lobby.matchmake`, each seat released at once", n, pct(times, .5), pct(times, .99),
                     f"{rooms_now} room(s) in the directory"))
        _clear_rooms(raw, ns)

        # 1b: seats kept: the directory grows by a room every 8 calls
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            lobby.matchmake(KIND)
            times.append(1000 * (time.perf_counter() - t0))
        rooms_now = len(presence.rooms(KIND))
        tenth = max(1, n // 10)
        rows.append(("`Lobby.matchmake`, seats kept", n, pct(times, .5), pct(times, .99),
                     f"{rooms_now} rooms at the end; p50 of the first / last {tenth}: "
                     f"{pct(times[:tenth], .5):.2f} / {pct(times[-tenth:], .5):.2f} ms"))
        _clear_rooms(raw, ns)

        # 1c: matchmake -> connected -> in the room
        total, mm, conn, join = [], [], [], []
        for _ in range(n_join):
            t0 = time.perf_counter()
            t = lobby.matchmake(KIND)
            t1 = time.perf_counter()
            c = Client(addr=t["addr"], cfg={"net.process.inline": True})
            rc = RoomClient(c)
            try:
                c.runAsync()
                c.wait_for_connection(10)
                t2 = time.perf_counter()
                rc.join(seat=t["token"], timeout=10)
                t3 = time.perf_counter()
            finally:
                c.close("bye")
                c.join(5)
            total.append(1000 * (t3 - t0))
            mm.append(1000 * (t1 - t0))
            conn.append(1000 * (t2 - t1))
            join.append(1000 * (t3 - t2))
        rows.append(("matchmake + connect + `RoomClient.join(seat=token)`", n_join, pct(total, .5), pct(total, .99),
                     f"p50 parts: matchmake {pct(mm, .5):.2f}, connect {pct(conn, .5):.2f}, "
                     f"join {pct(join, .5):.2f} ms (a new Client with its own thread each time)"))
    finally:
        for s in servers:
            s.stop()
        presence.close()
        raw.close()
    return rows


def bench_messages(redis_url: str, n: int) -> list[tuple[str, int, float, float, str]]:
    """Rows: (what, n, p50 us, p99 us, note)."""
    from peng3dnet.ext.rooms import LocalPresence
    from peng3dnet.ext.rooms.redispresence import RedisPresence

    rows = []
    ns = "msg"
    presence = RedisPresence(redis_url, ns)
    delays: list[float] = []
    got_all = threading.Event()

    def on_msg(channel: str, data: Any) -> None:
        if isinstance(data, dict) and "t" in data:
            delays.append((time.time_ns() - data["t"]) / 1000)
            if len(delays) >= n:
                got_all.set()

    pub = None
    try:
        presence.subscribe("lat", on_msg)
        pub = Proc(["_publisher", redis_url, ns, str(n), "0.001"], "publisher")
        done = json.loads(pub.expect("DONE", 60).split(" ", 1)[1])
        got_all.wait(5)
        got = len(delays)
        rows.append(("`RedisPresence.publish` -> subscriber in another process", n, pct(delays, .5),
                     pct(delays, .99), f"{got} of {n} received; 1 ms apart"))
        rows.append(("`RedisPresence.publish` call (publisher side, one round trip)", n, done["p50_us"],
                     done["p99_us"], ""))
    finally:
        if pub is not None:
            pub.stop()
        presence.close()

    local = LocalPresence()
    hits = [0]

    def on_local(channel: str, data: Any) -> None:
        hits[0] += 1

    local.subscribe("lat", on_local)
    m = 100_000
    calls = []
    clock = time.perf_counter_ns
    for i in range(m):
        a = clock()
        local.publish("lat", {"t": i})
        calls.append((clock() - a) / 1000)
    rows.append(("`LocalPresence.publish` (callback runs in the call)", m, pct(calls, .5), pct(calls, .99),
                 f"mean {statistics.fmean(calls):.2f} us, {hits[0]} delivered"))
    return rows


def bench_capacity(r: int, seconds: float) -> dict[str, Any]:
    srv = Proc(["_cap_server"], f"capacity server R={r}")
    cli = None
    try:
        port = int(srv.expect("READY", 30).split()[1])
        cli = Proc(["_cap_clients", "--port", str(port), "--nrooms", str(r)], f"capacity clients R={r}")
        cli.expect("JOINED", 120)
        warm = threading.Event()
        warm.wait(1.0)  # warm-up: inputs and snapshots reach their steady rate (not a synchronisation)
        srv.send("mark")
        m0 = json.loads(srv.expect("MARK", 10).split(" ", 1)[1])
        c0, k0, w0 = proc_cpu(srv.pid), proc_cpu(cli.pid), time.monotonic()
        warm.wait(seconds)  # the measured window
        c1, k1, w1 = proc_cpu(srv.pid), proc_cpu(cli.pid), time.monotonic()
        srv.send("mark")
        m1 = json.loads(srv.expect("MARK", 10).split(" ", 1)[1])
        cli.p.stdin.close()  # type: ignore[union-attr]
        cstats = json.loads(cli.expect("STATS", 30).split(" ", 1)[1])
        span = m1["t"] - m0["t"]
        wall = w1 - w0
        return {
            "rooms": r, "players": m1["members"], "server_rooms": m1["rooms"],
            "cpu_share": (c1 - c0) / wall, "client_cpu_share": (k1 - k0) / wall,
            "step_mean_ms": m1["step_mean_ms"], "step_cpu_ms": m1["step_cpu_ms"],
            "step_p99_ms": m1["step_p99_ms"], "step_max_ms": m1["step_max_ms"],
            "ticks_per_s": (m1["ticks"] - m0["ticks"]) / span,
            "inputs_per_s": (m1["inputs"] - m0["inputs"]) / span,
            "inputs_expected": r * PLAYERS_PER_ROOM * TICK_RATE,
            "snapshots_per_s": (m1["snapshots"] - m0["snapshots"]) / span, "desyncs": cstats["desyncs"],
        }
    finally:
        if cli is not None:
            cli.stop()
        srv.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("role", nargs="?", default="all",
                    choices=["all", "_room_server", "_publisher", "_cap_server", "_cap_clients"])
    ap.add_argument("args", nargs="*")
    ap.add_argument("--quick", action="store_true", help="smaller counts, for a smoke run")
    ap.add_argument("--seconds", type=float, default=None, help="capacity window per R (default 5, --quick 3)")
    ap.add_argument("--rooms", default=None, help="capacity: rooms per process to try (default 5,10,25,50)")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--nrooms", type=int, default=0)
    args = ap.parse_args()
    if args.role == "_room_server":
        return role_room_server(*args.args)
    if args.role == "_publisher":
        return role_publisher(args.args[0], args.args[1], int(args.args[2]), float(args.args[3]))
    if args.role == "_cap_server":
        return role_cap_server()
    if args.role == "_cap_clients":
        return role_cap_clients(args.port, args.nrooms)

    n_mm = 100 if args.quick else 500
    n_join = 50
    n_msg = 1000
    seconds = args.seconds if args.seconds is not None else (3.0 if args.quick else 5.0)
    rs = [int(x) for x in (args.rooms or ("5,10" if args.quick else "5,10,25,50")).split(",")]
    load_before = os.getloadavg()[0]
    t_all = time.perf_counter()
    took = {}
    redis_srv = RedisServer()
    try:
        t = time.perf_counter()
        mm_rows = bench_matchmaking(redis_srv.url, n_mm, n_join)
        took["matchmaking"] = time.perf_counter() - t
        print(f"matchmaking: {took['matchmaking']:.1f} s", file=sys.stderr, flush=True)
        t = time.perf_counter()
        msg_rows = bench_messages(redis_srv.url, n_msg)
        took["messages"] = time.perf_counter() - t
        print(f"messages: {took['messages']:.1f} s", file=sys.stderr, flush=True)
    finally:
        redis_srv.stop()
    t = time.perf_counter()
    cap = []
    for r in rs:
        t_r = time.perf_counter()
        cap.append(bench_capacity(r, seconds))
        print(f"capacity R={r}: {time.perf_counter() - t_r:.1f} s", file=sys.stderr, flush=True)
    took["capacity"] = time.perf_counter() - t
    total = time.perf_counter() - t_all

    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{platform.system()} {platform.release()}; load average {load_before:.2f} before the run; "
          f"{'--quick; ' if args.quick else ''}{total:.0f} s "
          f"(matchmaking {took['matchmaking']:.0f} s, messages {took['messages']:.0f} s, "
          f"capacity {took['capacity']:.0f} s).\n")
    print("Matchmaking (Redis on loopback, 2 server processes):\n")
    print("| measurement | n | p50 ms | p99 ms | note |")
    print("| --- | ---: | ---: | ---: | --- |")
    for what, n, p50, p99, note in mm_rows:
        print(f"| {what} | {n} | {p50:.2f} | {p99:.2f} | {note} |")
    print("\nCross-process messages:\n")
    print("| measurement | n | p50 us | p99 us | note |")
    print("| --- | ---: | ---: | ---: | --- |")
    for what, n, p50, p99, note in msg_rows:
        print(f"| {what} | {n:,} | {p50:,.1f} | {p99:,.1f} | {note} |")
    print(f"\nRooms per process at {TICK_RATE} Hz (ArenaRoom, {PLAYERS_PER_ROOM} players per room, "
          f"{TICK_RATE} inputs/s each; {seconds:g} s window):\n")
    print("| rooms | players | server CPU (share of one core) | step mean ms (of it CPU) | step p99 ms "
          "| step max ms | ticks/s (of 20) | inputs applied/s (of asked) | snapshots/s | client process CPU |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for c in cap:
        print(f"| {c['rooms']} | {c['players']} | {100 * c['cpu_share']:.0f} % "
              f"| {c['step_mean_ms']:.2f} ({c['step_cpu_ms']:.2f}) | {c['step_p99_ms']:.2f} | {c['step_max_ms']:.2f} "
              f"| {c['ticks_per_s']:.1f} "
              f"| {c['inputs_per_s']:,.0f} ({c['inputs_expected']:,}) | {c['snapshots_per_s']:,.0f} "
              f"| {100 * c['client_cpu_share']:.0f} % |")
    ok = [c["rooms"] for c in cap if c["step_p99_ms"] < 1000 / TICK_RATE and c["cpu_share"] < 1.0
          and c["ticks_per_s"] >= 0.95 * TICK_RATE]
    best = max(ok) if ok else None
    print(f"\nLargest R tried with step p99 under {1000 / TICK_RATE:.0f} ms, server CPU under one core and the"
          f" ticks keeping up (>= 95 %): {best if best is not None else 'none'}"
          f"{' (the largest tried)' if best is not None and best == max(rs) else ''}.")


if __name__ == "__main__":
    main()
