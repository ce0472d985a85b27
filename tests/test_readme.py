"""The README's examples run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def readme_block(heading: str) -> str:
    """The first ```python block after ``heading`` in the README."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    start = text.index(heading)
    m = re.compile(r"```python\n(.*?)```", re.S).search(text, start)
    assert m is not None, f"no python block after {heading!r}"
    return m.group(1)


def test_the_first_usage_example_prints_its_reply():
    """It never printed its reply: nobody processed the client's packets."""
    code = readme_block("## Usage")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout == "echoed: {'hello': 'world'}\n"
    assert out.stderr == ""


def test_the_sync_example_runs_and_moves_the_players_entity():
    """The sync example (with a ``draw`` of ours); its on_input no longer raises before owners are set, and the input moves
    the client's own entity; on_leave removes it."""
    prelude = (
        "drawn = []\n"
        "draw = drawn.append\n"
    )
    check = (
        "import time\n"
        "deadline = time.monotonic() + 10\n"
        "while time.monotonic() < deadline:\n"
        "    with sync.lock:\n"
        "        xs = [e['x'] for e in sync.entities.values()]\n"
        "    if xs and xs[0] > 0: break\n"
        "    time.sleep(0.01)\n"
        "assert xs and abs(xs[0] - 200 / 60) < 1e-9, xs\n"
        "deadline = time.monotonic() + 10\n"  # (the client learns its entity from the next snapshot)
        "while view.own is None and time.monotonic() < deadline: time.sleep(0.01)\n"
        "assert view.own is not None and drawn\n"
        "client.close('bye'); client.wait_for_close(5)\n"
        "deadline = time.monotonic() + 10\n"
        "while sync.entities and time.monotonic() < deadline: time.sleep(0.01)\n"
        "assert not sync.entities and not sync.owners\n"
        "sync.stop(); server.shutdown(join=True, timeout=5)\n"
        "print('ok')\n"
    )
    code = prelude + readme_block("## Game state sync") + check
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout == "ok\n"
