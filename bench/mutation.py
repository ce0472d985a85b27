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
    flow        peng3dnet/flow.py, inbox.py, link.py  tests/test_flow_units.py, test_link_units.py  (unit tests only, ~1 min)
    transport   peng3dnet/transport.py         tests/test_transport.py, test_transport_units.py
    ext         peng3dnet/ext/ping/, ext/discovery.py  tests/ext/test_ping_units.py, test_discovery_units.py, test_tools.py, test_peer.py, test_cli.py, compat/test_semantics.py
    peers       peng3dnet/peer.py, server.py, client.py  the network tests of peers, servers, clients, sessions, calls, login, TLS, events (use --sample)

``--sample N`` runs N mutants drawn at random (``--seed``, default 1)
instead of all: mutmut makes every mutant and runs the tests once for its
statistics, then only the drawn ones; the report gives the sample's kill
rate and a 95 % interval for the area's.  mutmut runs a mutant's tests
fastest first and stops at the first failure.

``--again REPORT`` runs again only what an earlier full report of the
area left: its survivors, and every mutant of a module that had mutants
no test reached; the mutants it killed count as killed (the code must be
the same as the report's, with tests added since: a module changed since
goes with ``--whole MODULE``, which runs all its mutants again), and the
report gives the area's counts as they are now.  A run of the survivors
takes a fraction of the whole area's time.

The connection layer's network tests make one mutant cost seconds: its
areas are ``flow`` (flow control, the process queue, links; run against
its unit tests only, which kill all that the network tests killed),
``session`` (sessions, calls, login), ``relay`` and ``transport`` (the
reactor and the channels, against their own tests); the peer, server and
client modules themselves are the ``peers`` area, run by sample.  See the
README's Mutation testing for the kill rates and what is left.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
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
    # Unit tests only: every mutant the network tests (test_peer.py, test_server.py, test_poll.py) killed,
    # these kill too, and each surviving mutant cost those files' whole run (minutes; link.py's constructor
    # runs under every one of them).
    "flow": (["peng3dnet/flow.py", "peng3dnet/inbox.py", "peng3dnet/link.py"],
             ["tests/test_flow_units.py", "tests/test_link_units.py"]),
    "transport": (["peng3dnet/transport.py"], ["tests/test_transport.py", "tests/test_transport_units.py"]),
    # Too big to run whole (about 2,000 mutants, each minutes of network
    # tests when it survives): run with --sample.
    "peers": (["peng3dnet/peer.py", "peng3dnet/server.py", "peng3dnet/client.py"],
              ["tests/test_peers_units.py", "tests/test_peer.py", "tests/test_server.py", "tests/test_client.py",
               "tests/test_poll.py", "tests/test_plans.py", "tests/test_flow_units.py",
               "tests/test_shared_loop.py", "tests/test_session.py", "tests/test_calls.py", "tests/test_login.py",
               "tests/test_tls.py", "tests/test_api_misc.py", "tests/compat/test_semantics.py", "tests/events/"]),
    "rooms": (["peng3dnet/ext/rooms/"], ["tests/rooms/"]),
    "ext": (["peng3dnet/ext/ping/", "peng3dnet/ext/discovery.py"],
            ["tests/ext/test_ping_units.py", "tests/ext/test_discovery_units.py", "tests/ext/test_tools.py",
             "tests/test_peer.py", "tests/test_cli.py",
             "tests/compat/test_semantics.py"]),
}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_MUTANT = "peng3dnet.no_such_mutant_*"  # a filter matching nothing: mutmut makes the mutants and stops
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


def _results(tmp: str, env: dict[str, str]) -> list[tuple[str, str]]:
    """``(mutant name, status)`` of every mutant mutmut knows in ``tmp``."""
    res = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"],
                         cwd=tmp, env=env, capture_output=True, text=True, check=True).stdout
    found = []
    for line in res.splitlines():
        m = re.match(r"\s*(\S+): (.+)$", line)
        if m:
            found.append((m.group(1), m.group(2)))
    return found


def choose_sample(names: list[str], size: int, seed: int) -> list[str]:
    """``size`` of ``names`` drawn at random (the same for the same seed
    and names), in name order."""
    return sorted(random.Random(seed).sample(sorted(names), min(size, len(names))))


def wilson(killed: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95 % Wilson score interval of a kill rate measured on a sample."""
    if n == 0:
        return 0.0, 1.0
    p = killed / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def read_report(path: str, area: str) -> tuple[dict[str, collections.Counter], list[str], str | None]:
    """An earlier report's counts per module, survivors and commit (when
    it names one) for ``area`` (a full run of it, not a sample)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    named = re.search(r"^# Mutation testing report \(.*commit (\w+)\)", text, re.M)
    commit = named.group(1) if named and named.group(1) != "unknown" else None
    m = re.search(rf"^## {re.escape(area)} \(.*?(?=^## |\Z)", text, re.M | re.S)
    if m is None or ", a sample of" in m.group(0).splitlines()[0]:
        raise SystemExit(f"{path} has no full run of the area {area!r}")
    section = m.group(0)
    counts: dict[str, collections.Counter] = {}
    for row in re.finditer(r"^\| `([^`]+)` \| (\d+) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \|", section, re.M):
        module, _, killed, survived, no_tests, timeout = row.groups()
        counts[module] = collections.Counter({"killed": int(killed), "survived": int(survived),
                                              "no tests": int(no_tests), "timeout": int(timeout)})
    survivors = re.findall(r"^# (\S+): survived$", section, re.M)
    if sum(c["survived"] for c in counts.values()) != len(survivors):
        raise SystemExit(f"{path}: the survivors' diffs are not all there (made without --diffs?)")
    return counts, survivors, commit


def module_path(module: str, root: str = ROOT) -> str:
    """The source file of a dotted module name (a package's ``__init__.py``)."""
    base = os.path.join(root, *module.split("."))
    return base + ".py" if os.path.exists(base + ".py") else os.path.join(base, "__init__.py")


def changed_since(commit: str, modules: list[str], root: str = ROOT) -> list[str]:
    """The modules whose source differs between ``commit`` and HEAD of
    the repository at ``root``."""
    out = []
    for module in modules:
        rel = os.path.relpath(module_path(module, root), root)
        diff = subprocess.run(["git", "diff", "--quiet", commit, "HEAD", "--", rel], cwd=root,
                              capture_output=True, text=True)
        if diff.returncode not in (0, 1):  # (an unknown commit: a shallow clone, another repository)
            raise SystemExit(f"cannot compare with {commit}: {diff.stderr.strip()}")
        if diff.returncode == 1:
            out.append(module)
    return out


def again_counts(before: dict[str, collections.Counter], found: list[tuple[str, str]],
                 whole: set[str]) -> dict[str, collections.Counter]:
    """The area's counts after a run of an earlier report's leftovers:
    the modules in ``whole`` as ``found`` has them, the others as before
    with their survivors replaced by what ``found`` says of them."""
    counts: dict[str, collections.Counter] = {}
    for module, c in before.items():
        counts[module] = collections.Counter() if module in whole else \
            collections.Counter({k: v for k, v in c.items() if k != "survived"})
    for name, status in found:
        counts.setdefault(_module(name), collections.Counter())[status] += 1
    return counts


def _module(name: str) -> str:
    return name.split(".x")[0].split(".xǁ")[0]


def run_area(area: str, children: int, diffs: bool, sample: int = 0,
             seed: int = 0, again: str | None = None,
             rerun_whole: tuple[str, ...] = ()) -> tuple[dict[str, collections.Counter], list[tuple[str, str]], float, int]:
    """Run an area's mutants (all, ``sample`` of them drawn with ``seed``,
    or what the report ``again`` left); return the counts per module, the
    survivors' diffs, the time taken and the number of mutants the area
    has."""
    sources, tests = AREAS[area]
    with tempfile.TemporaryDirectory(prefix=f"mutation-{area}-") as tmp:
        archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        with open(os.path.join(tmp, "pyproject.toml"), "a", encoding="utf-8") as f:
            f.write(_config(sources, tests))
        env = dict(os.environ, PYTHONPATH=tmp)
        t0 = time.monotonic()
        chosen: list[str] = []
        if sample:
            # Make the mutants and the test statistics only (a filter that
            # matches no mutant: mutmut stops after them), then draw.
            subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(children), NO_MUTANT],
                           cwd=tmp, env=env, capture_output=True, text=True)
            every = [name for name, _ in _results(tmp, env)]
            if not every:
                raise SystemExit("mutmut made no mutants for this area")
            chosen = choose_sample(every, sample, seed)
        before: dict[str, collections.Counter] = {}
        whole: set[str] = set()
        if again:
            before, survivors, commit = read_report(again, area)
            unknown = set(rerun_whole) - set(before)
            if unknown:
                raise SystemExit(f"--whole: {', '.join(sorted(unknown))} not in the report's modules")
            if commit is None:
                print(f"note: {again} names no commit: the code is taken to be unchanged except --whole's",
                      file=sys.stderr)
            else:
                changed = set(changed_since(commit, sorted(before))) - set(rerun_whole)
                if changed:
                    raise SystemExit(f"changed since {commit}, the report's commit: {', '.join(sorted(changed))} "
                                     "(its mutants are not the report's: name it with --whole)")
            whole = {module for module, c in before.items() if c["no tests"]} | set(rerun_whole)
            chosen = sorted(s for s in survivors if _module(s) not in whole) + [f"{m}.*" for m in sorted(whole)]
            if not chosen:  # nothing left: the report's counts stand (an empty list would run every mutant)
                return before, [], 0.0, sum(sum(c.values()) for c in before.values())
        run = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(children), *chosen],
                             cwd=tmp, env=env, capture_output=True, text=True)
        elapsed = time.monotonic() - t0
        if run.returncode != 0:  # (mutmut says why on stdout: "Failed to run clean test" for a flaky test)
            raise SystemExit(f"mutmut run failed ({run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
        found = _results(tmp, env)
        total_mutants = len(found)
        if chosen:
            wanted = set(chosen)
            found = [(name, status) for name, status in found if name in wanted or _module(name) in whole]
        counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        for name, status in found:
            counts[_module(name)][status] += 1
        if again:
            counts = again_counts(before, found, whole)
        survivors = [name for name, status in found if status == "survived"]
        shown = []
        if diffs:
            for name in survivors:
                out = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=tmp, env=env,
                                     capture_output=True, text=True).stdout
                body = "\n".join(ln for ln in out.splitlines() if ln[:1] in "+-@" or ln.startswith("#"))
                shown.append((name, body))
        return counts, shown, elapsed, total_mutants


def report(area: str, counts: dict[str, collections.Counter], shown: list[tuple[str, str]], elapsed: float,
           total_mutants: int = 0, seed: int | None = None) -> str:
    title = f"## {area} ({elapsed:.0f} s)"
    if seed is not None:
        n = sum(sum(c.values()) for c in counts.values())
        title = f"## {area}, a sample of {n} of its {total_mutants} mutants (seed {seed}; {elapsed:.0f} s)"
    lines = [title, "", "| module | mutants | killed | survived | no tests | timeout | kill rate |",
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
    if seed is not None:
        low, high = wilson(total["killed"] + total["timeout"], n)
        lines.append(f"The area's kill rate, estimated from this sample: {100 * low:.0f}-{100 * high:.0f} % "
                     "(95 % Wilson interval).")
    if shown:
        lines += ["", "### Survivors", ""]
        for name, body in shown:
            lines += [f"`{name}`", "", "```diff", body, "```", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.mutation", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--area", default="protocol", choices=[*AREAS, "all"])  # ("all": every area, peers too)
    ap.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--diffs", action="store_true", help="show every surviving mutant in the report")
    ap.add_argument("--out", default="mutation-report.md")
    ap.add_argument("--sample", type=int, default=0, metavar="N",
                    help="run N mutants drawn at random (for areas too big to run whole; default: all)")
    ap.add_argument("--seed", type=int, default=1, help="the draw's seed (with --sample)")
    ap.add_argument("--whole", action="append", default=[], metavar="MODULE",
                    help="with --again: run all of this module's mutants (its code changed since the report)")
    ap.add_argument("--again", metavar="REPORT",
                    help="run only what this earlier full report of the area left (its survivors, and the modules "
                         "with mutants no test reached); its killed mutants count as killed")
    args = ap.parse_args(argv)
    try:
        import mutmut  # noqa: F401
    except ImportError:
        print("mutmut is not installed: pip install mutmut", file=sys.stderr)
        return 2
    areas = list(AREAS) if args.area == "all" else [args.area]
    if args.again and (args.sample or len(areas) != 1):
        ap.error("--again takes one area and no --sample")
    if args.whole and not args.again:
        ap.error("--whole goes with --again")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    parts = [f"# Mutation testing report ({time.strftime('%Y-%m-%d')}, mutmut, {os.cpu_count()} cores, "
             f"commit {head or 'unknown'})", ""]
    for area in areas:
        counts, shown, elapsed, total_mutants = run_area(area, args.max_children, args.diffs, args.sample, args.seed,
                                                         args.again, tuple(args.whole))
        text = report(area, counts, shown, elapsed, total_mutants, args.seed if args.sample else None)
        print(text.split("### Survivors")[0])
        parts.append(text)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))
    print(f"report: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
