"""Run the benchmarks side by side and print a Markdown table of ratios.

    python -m bench.run [--repeat 3] [--quick] [--only default,asyncio] [--json out.json]

Each scenario runs the server and the client in two processes on loopback
(bench/peers.py), for four implementations with the same framing:

- peng3dnet default API: the library as its docs and 0.1.x programs use it
  (default config, limits on, handlers on the process thread, one Client per
  connection with its own threads);
- peng3dnet inline (tuned): net.process.inline, rate and per-address limits
  off, many clients on one NetworkLoop (the rows measured since issue #6);
- a minimal asyncio-streams loop (the baseline of the ratios);
- a bare one-thread selectors loop;
- with --compiled, the first two again on the optional compiled build
  (mypyc; README "Optional compiled build"), made by
  ``python3 tests/compiled.py build`` (``.build-compiled/``; this command
  refuses one older than the sources).

Values are medians over --repeat runs; the implementations alternate within
each repeat.  Not run in CI.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMPLS = ("default", "ours", "default-compiled", "ours-compiled", "asyncio", "selectors")
BASE = "asyncio"
COMPILED = {"default-compiled": "default", "ours-compiled": "ours"}  # (on the compiled build: as these)
COMPILED_TREE: str | None = None  # (main(): a run tree of the compiled build, with --compiled)
COLUMNS = {
    "default": "peng3dnet default API",
    "ours": "peng3dnet inline (tuned)",
    "default-compiled": "default API, compiled build",
    "ours-compiled": "tuned, compiled build",
    "asyncio": "asyncio streams",
    "selectors": "bare selectors",
}


def run_one(impl: str, scenario: str, opts: dict, server_opts: dict | None = None, cpu: bool = False) -> dict:
    """One server process and one client process; the client's JSON result.

    ``cpu``: the client also measures the server process's CPU time (it is
    given the server's pid).
    """
    root = ROOT
    if impl in COMPILED:
        assert COMPILED_TREE is not None
        impl, root = COMPILED[impl], COMPILED_TREE
    env = dict(os.environ, PYTHONPATH=root)
    srv = subprocess.Popen(
        [sys.executable, "-m", "bench.peers", f"{impl}-server", json.dumps(server_opts or {})],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=root,
    )
    try:
        port = int(srv.stdout.readline())
        if cpu:
            opts = dict(opts, server_pid=srv.pid)
        out = subprocess.run(
            [sys.executable, "-m", "bench.peers", f"{impl}-client", scenario, str(port), json.dumps(opts)],
            capture_output=True, text=True, timeout=300, env=env, cwd=root,
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


@dataclass
class Row:
    label: str
    scenario: str
    opts: dict
    key: str
    higher_is_better: bool = True
    cpu: bool = False
    # impl -> server options; the impls not listed show "-"
    impls: dict = field(default_factory=lambda: {impl: None for impl in IMPLS})
    check: str | None = None  # a boolean key that must hold in every run ("complete")


class Runs:
    """Runs each (impl, scenario, options) --repeat times, once: rows that
    read another key of the same runs (RTT p50/p99, echo rate and server
    CPU) share them."""

    def __init__(self, repeat: int) -> None:
        self.repeat = repeat
        self.cache: dict = {}

    def get(self, row: Row) -> dict:
        keys = {impl: (impl, row.scenario, json.dumps(row.opts, sort_keys=True), json.dumps(srv), row.cpu)
                for impl, srv in row.impls.items()}
        for _ in range(self.repeat):  # alternate the implementations within a repeat
            for impl, srv in row.impls.items():
                runs = self.cache.setdefault(keys[impl], [])
                if len(runs) >= self.repeat:
                    continue
                try:
                    runs.append(run_one(impl, row.scenario, row.opts, srv, row.cpu))
                except Exception as e:  # one failed run does not end the table
                    print(f"  {impl} {row.scenario} {row.opts} failed: {e}", file=sys.stderr, flush=True)
                    runs.append({"error": str(e)[-300:]})
        return {impl: self.cache[k] for impl, k in keys.items()}


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.1f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smaller counts, for a smoke run")
    ap.add_argument("--only", help="comma-separated implementations to run (default: all): " + ",".join(IMPLS))
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--compiled", action="store_true",
                    help="also run the default API and the tuned path on the compiled build (.build-compiled/)")
    args = ap.parse_args()
    global COMPILED_TREE
    if args.compiled:
        sys.path.insert(0, ROOT)
        from tests import compiled

        why = compiled.stale()
        if why:
            ap.error(f"{why}: run `python3 tests/compiled.py build` first")
        tmp = tempfile.mkdtemp(prefix="peng3dnet-bench-")
        atexit.register(shutil.rmtree, tmp, True)  # (symbolic links only: the build stays)
        COMPILED_TREE = compiled.run_tree(os.path.join(tmp, "run"))
    n = 20_000 if args.quick else 100_000
    secs = 1.0 if args.quick else 3.0
    rtt_n = 1000 if args.quick else 5000
    # the default server's rate limit: 20,000 packets/s, a bucket of 5 s (100,000 packets): the
    # one-way rows fit in it (a join-time burst), a sustained stream is held to the rate
    count_n = 50_000 if args.quick else 100_000
    only = set(args.only.split(",")) | {BASE} if args.only else set(IMPLS)
    if only - set(IMPLS):
        ap.error(f"unknown implementations: {', '.join(sorted(only - set(IMPLS)))}")
    if not args.compiled:
        if args.only and only & set(COMPILED):
            ap.error("the compiled columns need --compiled")
        only -= set(COMPILED)
    process_thread = {"ours": {"inline": False}, "ours-compiled": {"inline": False}, "asyncio": None}
    rows = [
        Row("one-way small msgs/s", "oneway", {"n": n}, "msgs_per_s"),
        Row("one-way 1 KiB msgs/s", "oneway", {"n": n, "size": 1024}, "msgs_per_s"),
        Row("RTT p50 us", "rtt", {"n": rtt_n}, "p50_us", False),
        Row("RTT p99 us", "rtt", {"n": rtt_n}, "p99_us", False),
        Row("echo 1 clients /s", "echo", {"clients": 1, "seconds": secs}, "echoes_per_s"),
        Row("echo 10 clients /s", "echo", {"clients": 10, "seconds": secs}, "echoes_per_s"),
        Row("echo 100 clients /s", "echo", {"clients": 100, "seconds": secs}, "echoes_per_s", cpu=True),
        Row("burst: 1,000 echo requests back to back, echoes/s (median of 10 bursts)", "burst",
            {"n": 1000, "rounds": 10}, "echoes_per_s"),
        Row(f"one-way {count_n:,} small msgs from one client, msgs/s; all received?", "count",
            {"n": count_n}, "msgs_per_s", check="complete"),
        Row("server CPU us per echo, 100 clients", "echo", {"clients": 100, "seconds": secs},
            "server_cpu_us_per_echo", False, cpu=True),
        Row("one-way small msgs/s, handlers on the process thread", "oneway", {"n": n}, "msgs_per_s",
            impls=process_thread),
        Row("echo 10 clients /s, handlers on the process thread", "echo", {"clients": 10, "seconds": secs},
            "echoes_per_s", impls=process_thread),
    ]
    runs = Runs(args.repeat)
    results = []
    t_start = time.perf_counter()
    for row in rows:
        row.impls = {impl: srv for impl, srv in row.impls.items() if impl in only}
        t_row = time.perf_counter()
        got = runs.get(row)
        cells = {}
        for impl, rs in got.items():
            vals = [r[row.key] for r in rs if row.key in r]
            cell = {"value": statistics.median(vals) if vals else None, "runs": len(rs), "failed": len(rs) - len(vals)}
            if row.check:
                cell["check"] = all(r.get(row.check) for r in rs)
                cell["received_min"] = min((r.get("received", -1) for r in rs), default=-1)
            cells[impl] = cell
        base = cells.get(BASE, {}).get("value")
        for cell in cells.values():
            v = cell["value"]
            if v and base:
                cell["ratio"] = v / base if row.higher_is_better else base / v
        results.append({"label": row.label, "scenario": row.scenario, "opts": row.opts, "key": row.key,
                        "higher_is_better": row.higher_is_better, "cells": cells})
        summary = " ".join(f"{impl} {_fmt(c['value']) if c['value'] is not None else 'error'}"
                           for impl, c in cells.items())
        print(f"{row.label}: {summary} ({time.perf_counter() - t_row:.0f} s)", file=sys.stderr, flush=True)
    total = time.perf_counter() - t_start

    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{platform.system()} {platform.release()}; medians of {args.repeat} runs; {total:.0f} s.\n")
    impls = [impl for impl in IMPLS if impl in only]
    print("| scenario | " + " | ".join(COLUMNS[impl] for impl in impls) + " |")
    print("| --- |" + " ---: |" * len(impls))
    for res in results:
        label = res["label"] + ("" if res["higher_is_better"] else " (lower is better)")
        out = []
        for impl in impls:
            cell = res["cells"].get(impl)
            if cell is None:
                out.append("-")
                continue
            if cell["value"] is None:
                out.append("error")
                continue
            text = _fmt(cell["value"])
            if impl != BASE and "ratio" in cell:
                text += f" ({cell['ratio']:.2f})"
            if "check" in cell:
                text += ", all" if cell["check"] else f", only {cell['received_min']:,}"
            if cell["failed"]:
                text += f" [{cell['failed']} of {cell['runs']} runs failed]"
            out.append(text)
        print(f"| {label} | " + " | ".join(out) + " |")
    print(f"\nIn parentheses: the ratio to {COLUMNS[BASE]}, >= 1.0 is as good or better (on the rows"
          " where lower is better it is asyncio / this).  The \"process thread\" rows are the tuned server with"
          " net.process.inline off (limits still off), in the tuned column.  Server CPU: user + system time of"
          " the server process over the measured window (/proc/PID/stat, 10 ms ticks) divided by the echoes.")
    print("\n(The event bus's cost per packet: python -m bench.events_cost, in-process;"
          " over loopback it drowns in the run-to-run noise.)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"repeat": args.repeat, "quick": args.quick, "seconds": total, "rows": results}, f, indent=1)


if __name__ == "__main__":
    main()
