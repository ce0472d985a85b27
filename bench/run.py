"""Run the benchmarks side by side and print a Markdown table of ratios.

    python -m bench.run [--repeat 3] [--quick] [--json out.json]

Each scenario runs the server and the client in two processes on loopback,
for our library and for a minimal asyncio-streams loop with the same framing
(bench/peers.py).  Values are medians over --repeat runs.  Not run in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_one(impl: str, scenario: str, opts: dict, server_opts: dict | None = None) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT)
    srv = subprocess.Popen(
        [sys.executable, "-m", "bench.peers", f"{impl}-server", json.dumps(server_opts or {})],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )
    try:
        port = int(srv.stdout.readline())
        out = subprocess.run(
            [sys.executable, "-m", "bench.peers", f"{impl}-client", scenario, str(port), json.dumps(opts)],
            capture_output=True, text=True, timeout=300, env=env, cwd=ROOT,
        )
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-2000:])
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        srv.stdin.close()
        try:
            srv.wait(10)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()
        srv.stdout.close()


def median(impl, scenario, opts, key, repeat, server_opts=None):
    vals = [run_one(impl, scenario, opts, server_opts)[key] for _ in range(repeat)]
    return statistics.median(vals)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smaller counts, for a smoke run")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    n = 20_000 if args.quick else 100_000
    secs = 1.0 if args.quick else 3.0
    rows = []

    def add(label, scenario, opts, key, higher_is_better=True, ours_server=None):
        ours = median("ours", scenario, opts, key, args.repeat, ours_server)
        base = median("asyncio", scenario, opts, key, args.repeat)
        ratio = ours / base if higher_is_better else base / ours
        rows.append((label, ours, base, ratio, key))
        print(f"{label}: ours {ours:,.1f} asyncio {base:,.1f} ratio {ratio:.2f}", file=sys.stderr, flush=True)

    add("one-way small msgs/s", "oneway", {"n": n}, "msgs_per_s")
    add("one-way 1 KiB msgs/s", "oneway", {"n": n, "size": 1024}, "msgs_per_s")
    add("RTT p50 us", "rtt", {"n": 5000 if not args.quick else 1000}, "p50_us", False)
    add("RTT p99 us", "rtt", {"n": 5000 if not args.quick else 1000}, "p99_us", False)
    for c in (1, 10, 100):
        add(f"echo {c} clients /s", "echo", {"clients": c, "seconds": secs}, "echoes_per_s")
    add("one-way small msgs/s, handlers on the process thread", "oneway", {"n": n}, "msgs_per_s",
        ours_server={"inline": False})
    add("echo 10 clients /s, handlers on the process thread", "echo", {"clients": 10, "seconds": secs},
        "echoes_per_s", ours_server={"inline": False})
    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{platform.system()} {platform.release()}; medians of {args.repeat} runs.\n")
    print("| scenario | peng3dnet | asyncio streams | ratio (>= 1.0 is as good or better) |")
    print("| --- | ---: | ---: | ---: |")
    for label, ours, base, ratio, _ in rows:
        print(f"| {label} | {ours:,.0f} | {base:,.0f} | {ratio:.2f} |")
    print("\n(The event bus's cost per packet: python -m bench.events_cost, in-process;"
          " over loopback it drowns in the run-to-run noise.)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
