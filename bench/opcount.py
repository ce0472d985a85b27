"""Python bytecodes per round trip, per function: the default API against
asyncio streams, counted exactly (run by hand, never in CI).

    python -m bench.opcount [--n 1000] [--top 40] [--lines] [--asyncio]

N round trips over loopback between a default ``Server`` and a default
``Client`` in one process (both with ``runAsync()`` + ``process_async()``,
handlers answering in ``Packet.receive``: the scenario of bench.instr's
"round trip over loopback, default API"), traced with ``sys.settrace``
opcode events after 200 warm-up round trips.  Prints the bytecodes per
round trip (both sides together) and the functions (``--lines``: the
lines) that execute the most of them.  ``--asyncio`` counts bench/peers.py's
asyncio-streams client and server on one event loop instead (issue #13's
yardstick).

Bytecodes are not instructions (a bytecode that calls into C, such as
``sock.send``, counts one), but the count is exact and nearly the same on
every run (a heartbeat or a watchdog look may fall within the counted round
trips: about 10 bytecodes in 3,000): a change to the per-packet path shows
up to a few bytecodes, where wall-clock rows on this VM move by 10-30 %.  bench.instr counts CPU
instructions with callgrind (minutes per scenario).
"""

from __future__ import annotations

import argparse
import collections
import linecache
import sys
import threading

WARM = 200


def _tracer(ops: collections.Counter, active: list[bool], lines: bool):
    def tracer(frame, event, arg):
        if not active[0]:
            return None
        frame.f_trace_opcodes = True
        code = frame.f_code
        name = (code.co_filename, code.co_firstlineno, code.co_name)

        def local(frame, event, arg):
            if event == "opcode":
                ops[(name, frame.f_lineno) if lines else name] += 1
            return local

        return local

    return tracer


def count_default_api(n: int, lines: bool) -> collections.Counter:
    """Bytecodes of N round trips between a default Server and Client."""
    from bench.roundtrip import default_api_round_trips

    ops: collections.Counter = collections.Counter()
    active = [False]
    tracer = _tracer(ops, active, lines)

    def start() -> None:
        active[0] = True

    def end() -> None:
        active[0] = False

    threading.settrace(tracer)
    sys.settrace(tracer)
    try:
        default_api_round_trips(n, WARM, start, end)
    finally:
        sys.settrace(None)
        threading.settrace(None)
    return ops


def count_asyncio(n: int, lines: bool) -> collections.Counter:
    """Bytecodes of N round trips between bench/peers.py's asyncio-streams
    server and client on one event loop."""
    from bench.roundtrip import asyncio_round_trips

    ops: collections.Counter = collections.Counter()
    active = [False]

    def start() -> None:
        active[0] = True

    def end() -> None:
        active[0] = False

    sys.settrace(_tracer(ops, active, lines))
    try:
        asyncio_round_trips(n, WARM, start, end)
    finally:
        sys.settrace(None)
    return ops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="round trips counted (after 200 warm-up ones)")
    ap.add_argument("--top", type=int, default=40, help="functions (or lines) listed")
    ap.add_argument("--lines", action="store_true", help="list lines, not functions")
    ap.add_argument("--asyncio", action="store_true", help="count the asyncio-streams pair instead")
    args = ap.parse_args()
    ops = (count_asyncio if args.asyncio else count_default_api)(args.n, args.lines)
    print(f"bytecodes per round trip: {sum(ops.values()) / args.n:.1f}")
    for key, v in ops.most_common(args.top):
        if args.lines:
            (path, _first, func), line = key
            src = linecache.getline(path, line or 0).strip()[:80]
            print(f"{v / args.n:8.1f}  {path.rsplit('/', 1)[-1]}:{line} {func}: {src}")
        else:
            path, first, func = key
            print(f"{v / args.n:8.1f}  {path.rsplit('/', 1)[-1]}:{first} {func}")


if __name__ == "__main__":
    main()
