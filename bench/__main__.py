"""Every benchmark in one command: python -m bench [--quick]

Runs bench.run (throughput, RTT, echo, burst, server CPU per echo: the
library's default API and its tuned inline mode vs an asyncio-streams loop
and a bare selectors loop),
bench.events_cost (per-packet cost of the event bus), and bench.scale
(sync broadcast cost curve; 1,000 connected clients), printing Markdown
tables for the README.

Not included: python -m bench.faults [--quick], a fault-injection campaign
against a live server (checks that each limit holds, not timings; exits 1
when one does not).
"""

from __future__ import annotations

import argparse
import subprocess
import sys


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smoke run: fewer repeats and smaller sizes")
    quick = ap.parse_args().quick
    steps = [
        ["bench.run", "--repeat", "1" if quick else "3"] + (["--quick"] if quick else []),
        ["bench.events_cost", "--n", "50000" if quick else "200000", "--repeat", "3" if quick else "7"],
        ["bench.scale", "broadcast", "--clients", "10,50,200" if quick else "10,50,200,1000", "--seconds", "3" if quick else "5"],
        ["bench.scale", "clients", "--clients", "200" if quick else "1000", "--seconds", "3" if quick else "5"],
    ]
    for step in steps:
        print(f"\n## python -m {' '.join(step)}\n", flush=True)
        rc = subprocess.call([sys.executable, "-m", *step])
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
