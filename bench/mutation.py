"""Mutation testing of the repository with mutmut (out of CI, by hand).

    python -m bench.mutation [--area protocol] [--max-children 2] [--diffs] [--out mutation-report.md]

For one area (or ``all``), on a clean copy of the committed tree (``git
archive HEAD``, so the working tree is never touched): configure mutmut for
the area's sources and tests, run it, and write a Markdown report: per
module the mutants killed, survived, without tests and timed out, the kill
rate, and (``--diffs``) every survivor's diff, to be killed by a test or
explained as equivalent.  Needs ``pip install mutmut`` (3.x).

Areas (sources -> the tests run against their mutants):

    protocol    peng3dnet/protocol/            tests/protocol/            (~5 min on 2 cores)
    sync        peng3dnet/ext/sync/            tests/ext/
    session     peng3dnet/session.py, calls.py, login.py  tests/test_session_units.py, test_session.py, test_calls.py, test_login.py
    relay       peng3dnet/relay.py             tests/test_relay_units.py, test_relay.py, test_shared_loop.py
    events      peng3dnet/events/              tests/events/
    flow        peng3dnet/flow.py, inbox.py, link.py  tests/test_flow_units.py, test_link_units.py, test_peer.py, test_server.py, test_poll.py
    transport   peng3dnet/transport.py         tests/test_transport.py, test_transport_units.py
    ext         peng3dnet/ext/ping/, ext/discovery.py  tests/ext/test_ping_units.py, test_discovery_units.py, test_tools.py, test_peer.py, test_cli.py, compat/test_semantics.py

The connection layer's network tests make one mutant cost seconds: its
areas are ``flow`` (flow control, the process queue, links), ``session``
(sessions, calls, login), ``relay`` and ``transport`` (the reactor and the
channels, against their own tests); the peer, server and client modules
themselves are not run yet.  See the README's Mutation testing for the kill
rates and what is left.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import time

AREAS = {
    "protocol": (["peng3dnet/protocol/"], ["tests/protocol/"]),
    "sync": (["peng3dnet/ext/sync/"], ["tests/ext/"]),
    "session": (["peng3dnet/session.py", "peng3dnet/calls.py", "peng3dnet/login.py"],
                ["tests/test_session_units.py", "tests/test_session.py", "tests/test_calls.py", "tests/test_login.py"]),
    "relay": (["peng3dnet/relay.py"],
              ["tests/test_relay_units.py", "tests/test_relay.py", "tests/test_shared_loop.py"]),
    "events": (["peng3dnet/events/"], ["tests/events/"]),
    "flow": (["peng3dnet/flow.py", "peng3dnet/inbox.py", "peng3dnet/link.py"],
             ["tests/test_flow_units.py", "tests/test_link_units.py", "tests/test_peer.py", "tests/test_server.py",
              "tests/test_poll.py"]),
    "transport": (["peng3dnet/transport.py"], ["tests/test_transport.py", "tests/test_transport_units.py"]),
    "ext": (["peng3dnet/ext/ping/", "peng3dnet/ext/discovery.py"],
            ["tests/ext/test_ping_units.py", "tests/ext/test_discovery_units.py", "tests/ext/test_tools.py",
             "tests/test_peer.py", "tests/test_cli.py",
             "tests/compat/test_semantics.py"]),
}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATUS_ORDER = ("killed", "survived", "no tests", "timeout", "suspicious", "skipped", "segfault")


# Tests that cannot pass on mutmut's copy (they check which modules a module
# imports, and every mutated module imports mutmut's trampolines).
DESELECT = ["tests/ext/test_sync_algebra.py::test_algebra_is_pure"]


def _config(sources: list[str], tests: list[str]) -> str:
    deselect = [arg for test in DESELECT for arg in ("--deselect", test)]
    return (
        "\n[tool.mutmut]\n"
        f"source_paths = {sources!r}\n"
        f"pytest_add_cli_args = {['-p', 'no:randomly', '-q', '-x', *deselect]!r}\n"
        f"pytest_add_cli_args_test_selection = {tests!r}\n"
        # the whole package next to the mutated files (tests/test_layering, imported by
        # the sync tests, lists peng3dnet/protocol/ from the tests' folder)
        "also_copy = ['peng3dnet/']\n"
    ).replace("'", '"')


def run_area(area: str, children: int, diffs: bool) -> tuple[dict[str, collections.Counter], list[tuple[str, str]], float]:
    sources, tests = AREAS[area]
    with tempfile.TemporaryDirectory(prefix=f"mutation-{area}-") as tmp:
        archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        with open(os.path.join(tmp, "pyproject.toml"), "a", encoding="utf-8") as f:
            f.write(_config(sources, tests))
        env = dict(os.environ, PYTHONPATH=tmp)
        t0 = time.monotonic()
        run = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(children)],
                             cwd=tmp, env=env, capture_output=True, text=True)
        elapsed = time.monotonic() - t0
        if run.returncode != 0:
            raise SystemExit(f"mutmut run failed ({run.returncode}):\n{run.stderr[-3000:]}")
        res = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"],
                             cwd=tmp, env=env, capture_output=True, text=True, check=True).stdout
        counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        survivors = []
        for line in res.splitlines():
            m = re.match(r"\s*(\S+): (.+)$", line)
            if not m:
                continue
            name, status = m.groups()
            module = name.split(".x")[0].split(".xǁ")[0]
            counts[module][status] += 1
            if status == "survived":
                survivors.append(name)
        shown = []
        if diffs:
            for name in survivors:
                out = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=tmp, env=env,
                                     capture_output=True, text=True).stdout
                body = "\n".join(ln for ln in out.splitlines() if ln[:1] in "+-@" or ln.startswith("#"))
                shown.append((name, body))
        return counts, shown, elapsed


def report(area: str, counts: dict[str, collections.Counter], shown: list[tuple[str, str]], elapsed: float) -> str:
    lines = [f"## {area} ({elapsed:.0f} s)", "", "| module | mutants | killed | survived | no tests | timeout | kill rate |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    total: collections.Counter = collections.Counter()
    for module in sorted(counts):
        c = counts[module]
        total.update(c)
        n = sum(c.values())
        lines.append(f"| `{module}` | {n} | {c['killed']} | {c['survived']} | {c['no tests']} | {c['timeout']} | "
                     f"{100 * (c['killed'] + c['timeout']) / n:.0f} % |")
    n = sum(total.values())
    lines.append(f"| **all** | {n} | {total['killed']} | {total['survived']} | {total['no tests']} | {total['timeout']} | "
                 f"**{100 * (total['killed'] + total['timeout']) / max(1, n):.0f} %** |")
    lines.append("")
    lines.append("Kill rate: killed (or timed out) / all mutants; \"no tests\": no test runs that code.")
    if shown:
        lines += ["", "### Survivors", ""]
        for name, body in shown:
            lines += [f"`{name}`", "", "```diff", body, "```", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.mutation", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--area", default="protocol", choices=[*AREAS, "all"])
    ap.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--diffs", action="store_true", help="show every surviving mutant in the report")
    ap.add_argument("--out", default="mutation-report.md")
    args = ap.parse_args(argv)
    try:
        import mutmut  # noqa: F401
    except ImportError:
        print("mutmut is not installed: pip install mutmut", file=sys.stderr)
        return 2
    areas = list(AREAS) if args.area == "all" else [args.area]
    parts = [f"# Mutation testing report ({time.strftime('%Y-%m-%d')}, mutmut, {os.cpu_count()} cores)", ""]
    for area in areas:
        counts, shown, elapsed = run_area(area, args.max_children, args.diffs)
        text = report(area, counts, shown, elapsed)
        print(text.split("### Survivors")[0])
        parts.append(text)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))
    print(f"report: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
