"""Scale benchmarks: sync broadcast cost per tick, and many connected clients.

    python -m bench.scale broadcast [--clients 10,50,200,1000] [--entities 50] [--seconds 5]
    python -m bench.scale clients [--clients 1000] [--seconds 10]

Server and clients run in two processes on loopback; the clients all share one
NetworkLoop thread.  Reports server CPU (user+sys) per tick and as a share of
one core, and server RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 8192)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def rss_kib(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# --- roles (run in their own processes) --------------------------------------------------


def sync_server(entities: int, seconds: float, expect: int) -> None:
    """Sync server: ``entities`` moving entities, snapshots to everyone at 20 Hz."""
    _raise_nofile()
    from peng3dnet.ext.sync import SyncServer
    from peng3dnet.net import Server

    s = Server(addr=("127.0.0.1", 0), cfg={"net.limits.max_clients": 10000, "net.timeout.handshake": 60,
                                         "net.limits.per_address.connections": 0, "net.limits.per_address.handshakes": 0})
    sync = SyncServer(s, tick_rate=20)
    for i in range(entities):
        sync.entities[f"e{i}"] = {"x": float(i), "y": 0.0, "hp": 100}

    def step(dt: float, tick: int) -> None:
        for i in range(entities):
            e = sync.entities[f"e{i}"]
            sync.entities[f"e{i}"] = {**e, "x": e["x"] + 1.5}

    sync.on_step = step
    s.runAsync()
    s.process_async()  # acks (inputs) reach the SyncServer through a packet handler
    print(s.addr[1], flush=True)
    # wait for the clients, then measure a window of whole ticks
    deadline = time.monotonic() + 120
    while len(sync.clients) < expect and time.monotonic() < deadline:
        sync.step()  # tick while they join (no measurement yet)
        time.sleep(0.05)
    c0, t0, k0 = cpu_s(), time.monotonic(), sync.tick
    sync.start()
    time.sleep(seconds)
    sync.stop()
    c1, t1, k1 = cpu_s(), time.monotonic(), sync.tick
    ticks = k1 - k0
    print(json.dumps({
        "clients": len(sync.clients), "entities": entities, "ticks": ticks,
        "cpu_share": (c1 - c0) / (t1 - t0), "ms_per_tick": 1000 * (c1 - c0) / max(ticks, 1),
        "rss_mib": rss_kib() / 1024, "snapshots": sync.stats["snapshots"],
    }), flush=True)
    sys.stdin.read()
    s.shutdown(timeout=5)


def sync_clients(port: int, n: int, seconds: float) -> None:
    _raise_nofile()
    from peng3dnet.ext.sync import SyncClient
    from peng3dnet.net import Client, NetworkLoop

    loop = NetworkLoop().start()
    syncs = []
    for _ in range(n):
        # snapshots are applied by a packet handler: inline, on the shared
        # network thread, as the event-based SyncClient did before
        c = Client(addr=("127.0.0.1", port), cfg={"net.timeout.handshake": 60, "net.process.inline": True})
        syncs.append(SyncClient(c))
        loop.add(c)
    for sc in syncs:
        sc.client.wait_for_connection(60)
    print("joined", flush=True)
    time.sleep(seconds)
    print(json.dumps({"snapshots": sum(sc.stats["snapshots"] for sc in syncs),
                      "desyncs": sum(sc.stats["desyncs"] for sc in syncs)}), flush=True)
    loop.stop()


def idle_server(seconds: float, expect: int) -> None:
    """Plain server: echo one message per second per client; report memory."""
    _raise_nofile()
    from peng3dnet.net import Server
    from peng3dnet.packet import Packet

    s = Server(addr=("127.0.0.1", 0), cfg={"net.limits.max_clients": 10000, "net.timeout.handshake": 60,
                                         "net.limits.per_address.connections": 0, "net.limits.per_address.handshakes": 0,
                                         "net.process.inline": True})
    served = [0]

    class Echo(Packet):
        def receive(self, msg, cid=None):
            served[0] += 1
            s.send_message("b:msg", msg, cid)

    s.register_packet("b:msg", Echo(s.registry, s))
    s.runAsync()
    import gc

    gc.collect()
    rss0 = rss_kib()
    print(s.addr[1], flush=True)
    deadline = time.monotonic() + 120
    while len(s.clients) < expect and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    gc.collect()
    rss1 = rss_kib()
    c0, t0, n0 = cpu_s(), time.monotonic(), served[0]
    time.sleep(seconds)
    c1, t1, n1 = cpu_s(), time.monotonic(), served[0]
    print(json.dumps({
        "clients": len(s.clients), "idle_rss_mib": rss0 / 1024, "rss_mib": rss1 / 1024,
        "kib_per_connection": (rss1 - rss0) / max(1, len(s.clients)),
        "msgs_per_s": (n1 - n0) / (t1 - t0), "cpu_share": (c1 - c0) / (t1 - t0),
    }), flush=True)
    sys.stdin.read()
    s.shutdown(timeout=10)


def chatty_clients(port: int, n: int, seconds: float) -> None:
    _raise_nofile()
    from peng3dnet.net import Client, NetworkLoop
    from peng3dnet.packet import Packet

    loop = NetworkLoop().start()
    clients = []
    for _ in range(n):
        c = Client(addr=("127.0.0.1", port), cfg={"net.timeout.handshake": 60})
        c.register_packet("b:msg", Packet(c.registry, c))
        loop.add(c)
        clients.append(c)
    for c in clients:
        c.wait_for_connection(60)
    print("joined", flush=True)
    pace = threading.Event()
    t_end = time.monotonic() + seconds + 3
    batch = max(1, n // 50)  # one message per client per second, in 50 slices of the second
    while time.monotonic() < t_end:
        t0 = time.monotonic()
        for start in range(0, n, batch):
            for i in range(start, min(n, start + batch)):
                clients[i].send_message("b:msg", {"i": i})
            pace.wait(max(0.0, t0 + (start // batch + 1) * (1.0 / 50) - time.monotonic()))
    loop.stop()


def run_pair(server_args: list[str], client_args_fn, timeout: float = 300) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT)
    srv = subprocess.Popen([sys.executable, "-m", "bench.scale", *server_args], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        port = int(srv.stdout.readline())
        cli = subprocess.Popen([sys.executable, "-m", "bench.scale", *client_args_fn(port)],
                               stdout=subprocess.DEVNULL, env=env, cwd=ROOT)
        line = srv.stdout.readline()
        cli.wait(timeout)
        return json.loads(line)
    finally:
        srv.stdin.close()
        srv.wait(30)
        srv.stdout.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["broadcast", "clients", "_sync_server", "_sync_clients", "_idle_server", "_chatty"])
    ap.add_argument("--clients", default=None)
    ap.add_argument("--entities", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    if args.what == "_sync_server":
        return sync_server(args.entities, args.seconds, int(args.clients))
    if args.what == "_sync_clients":
        return sync_clients(args.port, int(args.clients), args.seconds + 5)
    if args.what == "_idle_server":
        return idle_server(args.seconds, int(args.clients))
    if args.what == "_chatty":
        return chatty_clients(args.port, int(args.clients), args.seconds)
    if args.what == "broadcast":
        print("| clients | entities | server CPU (share of one core) | ms per tick | RSS MiB |")
        print("| ---: | ---: | ---: | ---: | ---: |")
        for n in [int(x) for x in (args.clients or "10,50,200,1000").split(",")]:
            r = run_pair(["_sync_server", "--clients", str(n), "--entities", str(args.entities), "--seconds", str(args.seconds)],
                         lambda port, n=n: ["_sync_clients", "--port", str(port), "--clients", str(n), "--seconds", str(args.seconds + 10)])
            print(f"| {r['clients']} | {r['entities']} | {100 * r['cpu_share']:.1f} % | {r['ms_per_tick']:.2f} | {r['rss_mib']:.1f} |", flush=True)
    else:
        n = int(args.clients or 1000)
        r = run_pair(["_idle_server", "--clients", str(n), "--seconds", str(args.seconds)],
                     lambda port: ["_chatty", "--port", str(port), "--clients", str(n), "--seconds", str(args.seconds)])
        print(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
