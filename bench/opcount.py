"""Python bytecodes per round trip, per function: the default API against
asyncio streams, counted exactly (run by hand, never in CI).

    python -m bench.opcount [--n 1000] [--top 40] [--lines] [--asyncio] [--burst]

N round trips over loopback between a default ``Server`` and a default
``Client`` in one process (both with ``runAsync()`` + ``process_async()``,
handlers answering in ``Packet.receive``: the scenario of bench.instr's
"round trip over loopback, default API"), traced with ``sys.settrace``
opcode events after 200 warm-up round trips.  Prints the bytecodes per
round trip (both sides together) and the functions (``--lines``: the
lines) that execute the most of them.  ``--asyncio`` counts bench/peers.py's
asyncio-streams client and server on one event loop instead (issue #13's
yardstick).  ``--burst`` counts bench.run's burst row instead: bursts of
1,000 echo requests sent back to back from the main thread, per echoed
packet (under the tracer a send is slower than the corking gap, so each
message is written on its own: the count is of the uncorked path).

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


BURST = 1000
BURST_WARM = 2


def _burst_ops(run, n: int, lines: bool, threads: bool) -> collections.Counter:
    ops: collections.Counter = collections.Counter()
    active = [False]
    tracer = _tracer(ops, active, lines)
    if threads:
        threading.settrace(tracer)
    sys.settrace(tracer)
    try:
        run(n, active)
    finally:
        sys.settrace(None)
        threading.settrace(None)
    return ops


def default_api_bursts(rounds: int, active: list[bool]) -> None:
    """``BURST_WARM + rounds`` bursts of ``BURST`` echo requests from the
    main thread of a default Client to a default Server (one process);
    ``active[0]`` is true during the counted ones."""
    from bench.roundtrip import default_pair
    from peng3dnet.packet import Packet

    got = [0]
    done = threading.Event()

    class Back(Packet):
        def receive(self, msg, cid=None):
            self.peer.send_message("b:msg", msg, cid)

    class Count(Packet):
        def receive(self, msg, cid=None):
            got[0] += 1
            if got[0] == BURST:
                done.set()

    srv, cl = default_pair(Back, Count)
    for r in range(BURST_WARM + rounds):
        active[0] = r >= BURST_WARM
        got[0] = 0
        done.clear()
        for i in range(BURST):
            cl.send_message("b:msg", [0, i])
        if not done.wait(600):
            raise SystemExit("a burst did not finish")
    active[0] = False
    cl.close()
    srv.shutdown(timeout=5)


def asyncio_bursts(rounds: int, active: list[bool]) -> None:
    """The same bursts between bench/peers.py's asyncio-streams framing on
    one event loop (the echo server is a plain streams handler)."""
    import asyncio

    from bench.peers import _aio_read, _frame
    from bench.roundtrip import aio_echo

    async def run() -> None:
        server = await asyncio.start_server(aio_echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for r in range(BURST_WARM + rounds):
            active[0] = r >= BURST_WARM
            for i in range(BURST):
                writer.write(_frame(64, [0, i]))
            for _ in range(BURST):
                await _aio_read(reader)
        active[0] = False
        writer.close()
        server.close()
        await server.wait_closed()

    asyncio.run(run())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="round trips counted (after 200 warm-up ones)")
    ap.add_argument("--top", type=int, default=40, help="functions (or lines) listed")
    ap.add_argument("--lines", action="store_true", help="list lines, not functions")
    ap.add_argument("--asyncio", action="store_true", help="count the asyncio-streams pair instead")
    ap.add_argument(
        "--burst",
        action="store_true",
        help=f"count bursts of {BURST:,} echo requests (--n: bursts, default 5), per echoed packet",
    )
    args = ap.parse_args()
    if args.burst:
        rounds = 5 if args.n == 1000 else args.n
        run = asyncio_bursts if args.asyncio else default_api_bursts
        ops = _burst_ops(run, rounds, args.lines, threads=not args.asyncio)
        args.n = rounds * BURST
        print(f"bytecodes per echoed packet: {sum(ops.values()) / args.n:.1f}")
    else:
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
