"""Static checks run with the suite: ruff (incl. pep8-naming) and mypy."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff():
    out = run("ruff", "check", "peng3dnet", "tests", "demos", "bench")
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_package():
    out = run("mypy", "peng3dnet")
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_strict_protocol_core():
    out = run("mypy", "--strict", "--follow-imports=silent", "peng3dnet/protocol", "peng3dnet/registry.py")
    assert out.returncode == 0, out.stdout + out.stderr
