"""Per-packet cost in CPU instructions, counted by valgrind's callgrind:
repeatable on a shared VM where wall-clock rows move by 20-70 % between
runs.  Each scenario runs in-process on one thread (no sockets read by a
second process): the receive path (``Server.receive_data`` of N framed
packets, handlers inline; events off / on without subscribers / one
subscriber) and the send path (``send_message`` of N small messages to one
connection, the kernel buffer drained by the same thread; to a 0.1.x peer,
whose map keys are checked, and to a peer of ours); and the default
config's server echo, one frame at a time (``receive_data``, the handler
queued and run by ``process()``, events on, the handler answering with
``send_message``; not in it: ``select()``, the socket read, the rate
limiter, which ``receive_data`` bypasses, the second thread); and the
same echo with the handler run inline (``net.process.inline``), whose
difference is the process queue's share); and N round trips over
loopback between a default ``Server`` and a default ``Client`` in one
process (both with ``runAsync()`` + ``process_async()``, handlers answering
in ``Packet.receive``): everything of both sides, ``select()`` and the
relay included, the kernel's work not (callgrind counts user-space
instructions; the threads run one at a time under valgrind); and the same
round trips between bench/peers.py's asyncio-streams server and client on
one event loop, the yardstick of issue #13.  Cost per
packet = (Ir(N2) - Ir(N1)) / (N2 - N1), so start-up cancels out.

    python -m bench.instr [--rev REV ...] [--compiled] [--n1 2000 --n2 12000]

``--rev`` measures other commits too (each exported with ``git archive``
into a temporary folder; the same scenario code, bench.events_cost's
``handshaken_server`` from this checkout, runs against each); the
ratios in parentheses are against the last ``--rev`` (give the baseline
last).
``--compiled`` also measures a copy of this checkout whose per-packet
modules (``HOT_MODULES``) are compiled by mypyc, as the optional compiled
build compiles them (it needs mypy and a C compiler).
Needs valgrind (Debian: ``apt-get install valgrind``).  Run by hand.
"""

from __future__ import annotations

import argparse
import os
import re
import runpy
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCENARIO = r'''
import os
import sys


def _done():
    # Leave without the interpreter's teardown (the same for every tree;
    # a mypyc-compiled copy may crash in it: see --compiled).
    sys.stdout.flush()
    os._exit(0)


import msgpack
from bench.events_cost import handshaken_server
from peng3dnet import events
from peng3dnet.protocol.framing import encode_frame

mode, n = sys.argv[1], int(sys.argv[2])
if mode == "round trip over loopback, asyncio streams":
    from bench.roundtrip import asyncio_round_trips

    asyncio_round_trips(n)
    _done()
if mode == "round trip over loopback, default API":
    from bench.roundtrip import default_api_round_trips

    default_api_round_trips(n)
    _done()
if mode.startswith("echo"):
    from peng3dnet.packet import Packet

    class Echo(Packet):
        def receive(self, msg, cid=None):
            self.peer.send_message("b:msg", msg, cid)

    s, cid, pid, a, b = handshaken_server(True, None, default_config=True, packet=Echo)
    if mode == "echo, default config, inline handlers":
        s._h_inline = True
    b.setblocking(False)
    frames = [encode_frame(pid, 0, msgpack.packb([i, "x"])) for i in range(n)]
    for i, frame in enumerate(frames):  # one packet per read and per batch, as in an echo or a round trip
        s.receive_data(frame, cid)
        s.process()
        if i % 64 == 63:  # (a socketpair's buffer counts each small send's overhead: drain often)
            try:
                while b.recv(1 << 20):
                    pass
            except BlockingIOError:
                pass
    _done()
# a peer of ours negotiates mapkeys: str-only map keys need no check
s, cid, pid, a, b = handshaken_server(mode != "recv, events off",
                                      ["mapkeys"] if mode.endswith("(mapkeys)") else None)
b.setblocking(False)
if mode == "recv, one subscriber":
    def handler(event, d):
        pass
    events.subscribe("peng3dnet:server.connection.recv", handler, sender=s)
if mode.startswith("recv"):
    data = b"".join(encode_frame(pid, 0, msgpack.packb([i, "x"])) for i in range(n))
    for i in range(0, len(data), 65536):
        s.receive_data(data[i:i + 65536], cid)
else:
    msg = [1, "x"]
    for i in range(n):
        s.send_message("b:msg", msg, cid)
        if i % 256 == 255:
            try:
                while b.recv(1 << 20):
                    pass
            except BlockingIOError:
                pass
_done()
'''

MODES = ("recv, events off", "recv, events on, no subscriber", "recv, one subscriber", "send_message",
         "send_message to a peer of ours (mapkeys)", "echo, default config",
         "echo, default config, inline handlers", "round trip over loopback, default API",
         "round trip over loopback, asyncio streams")


def instructions(tree: str, mode: str, n: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "scenario.py")
        with open(script, "w") as f:
            f.write(SCENARIO)
        out = os.path.join(tmp, "cg.out")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join((tree, ROOT)), PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1")
        p = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, script,
                            mode, str(n)], env=env, capture_output=True, text=True, cwd=tmp)
        if p.returncode != 0:
            raise SystemExit(f"scenario failed in {tree}:\n{p.stderr[-3000:]}")
        m = re.search(r"Collected\s*:\s*(\d+)", p.stderr)
        if m is None:
            raise SystemExit("no callgrind total in:\n" + p.stderr[-2000:])
        return int(m.group(1))


def export(rev: str, into: str) -> str:
    tree = os.path.join(into, rev.replace("/", "_"))
    os.makedirs(tree)
    archive = subprocess.run(["git", "-C", ROOT, "archive", rev, "peng3dnet"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
    return tree


def warm_up(tree: str, mode: str) -> None:
    """Run the scenario once outside callgrind, so that both measured runs
    load the same compiled modules (a first run would count compiling, or
    none would be written: PYTHONDONTWRITEBYTECODE)."""
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "scenario.py")
        with open(script, "w") as f:
            f.write(SCENARIO)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join((tree, ROOT)), PYTHONHASHSEED="0")
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(tree, "peng3dnet"),
                        os.path.join(ROOT, "bench")], env=env, check=True, capture_output=True)
        subprocess.run([sys.executable, script, mode, "10"], env=env, check=True, capture_output=True, cwd=tmp)


# The modules the optional compiled build compiles (peng3dnet/_mypyc.py),
# for --compiled.
HOT_MODULES = runpy.run_path(os.path.join(ROOT, "peng3dnet", "_mypyc.py"))["COMPILED_MODULES"]
MYPY_INI = """[mypy]
python_version = 3.11
[mypy-msgpack.*]
ignore_missing_imports = True
[mypy-msgpack]
ignore_missing_imports = True
[mypy-blinker]
ignore_missing_imports = True
[mypy-pyglet.*]
ignore_missing_imports = True
[mypy-peng3d.*]
ignore_missing_imports = True
"""


def compiled_copy(into: str) -> str:
    """A copy of this checkout's package with :data:`HOT_MODULES` compiled
    by mypyc (as the optional compiled build compiles them).  Needs mypy
    (the test extra) and a C compiler.  ``peng3dnet/loopthread.py`` stays
    interpreted: mypyc's traverse of a compiled ``threading.Thread``
    subclass visits its weak reference list as if it owned it, and
    ``threading`` keeps a weak reference to every thread, so the garbage
    collector freed that reference while still in use (the crash at exit
    seen before; see the README).  The scenarios still leave with
    ``os._exit``."""
    tree = os.path.join(into, "compiled")
    shutil.copytree(os.path.join(ROOT, "peng3dnet"), os.path.join(tree, "peng3dnet"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    with open(os.path.join(tree, "mypy.ini"), "w") as f:
        f.write(MYPY_INI)
    p = subprocess.run([sys.executable, "-m", "mypyc", *HOT_MODULES], cwd=tree, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"mypyc failed:\n{(p.stdout + p.stderr)[-3000:]}")
    return tree


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", action="append", default=[], help="also measure this commit (repeatable)")
    ap.add_argument("--n1", type=int, default=2000)
    ap.add_argument("--n2", type=int, default=12000)
    ap.add_argument("--mode", action="append", choices=MODES, help="only these scenarios")
    ap.add_argument("--compiled", action="store_true",
                    help="also measure this checkout with its per-packet modules compiled by mypyc (the optional compiled build)")
    args = ap.parse_args()
    if not 0 <= args.n1 < args.n2:
        ap.error("need 0 <= --n1 < --n2")
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    tmp = tempfile.mkdtemp(prefix="peng3dnet-instr-")
    try:
        trees = [("working tree", ROOT)]
        if args.compiled:
            trees.append(("working tree, compiled by mypyc", compiled_copy(tmp)))
        trees += [(rev, export(rev, tmp)) for rev in args.rev]
        modes = args.mode or list(MODES)
        print("| scenario | " + " | ".join(name for name, _ in trees) + " |")
        print("| --- |" + " ---: |" * len(trees))
        for mode in modes:
            row = []
            for _, tree in trees:
                warm_up(tree, mode)
                per = (instructions(tree, mode, args.n2) - instructions(tree, mode, args.n1)) / (args.n2 - args.n1)
                row.append(per)
            base = row[-1] if len(row) > 1 else None  # ratios against the last --rev given (the baseline)
            cells = [f"{v:,.0f}" + (f" ({v / base:.3f})" if base else "") for v in row]
            print(f"| {mode}, instructions per packet | " + " | ".join(cells) + " |", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
