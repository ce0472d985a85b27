"""The sans-I/O core imports no I/O, threads, clocks, pyglet, peng3d or blinker;
the core package never imports pyglet or peng3d."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "peng3dnet")
FORBIDDEN_CORE = {"socket", "select", "selectors", "threading", "queue", "time", "pyglet", "peng3d", "blinker", "asyncio", "ssl"}


def imported_modules(path: str) -> set[str]:
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    mods = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            mods.add(node.module.split(".")[0])
    return mods


def core_files():
    for rel in ("protocol", "packet"):
        d = os.path.join(ROOT, rel)
        for name in os.listdir(d):
            if name.endswith(".py"):
                yield os.path.join(d, name)
    yield os.path.join(ROOT, "registry.py")


@pytest.mark.parametrize("path", list(core_files()), ids=os.path.basename)
def test_core_imports_no_io(path):
    bad = imported_modules(path) & FORBIDDEN_CORE
    assert not bad, f"{path} imports {bad}"


def test_game_modules_only_import_pyglet_lazily():
    for dirpath, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                with open(path, encoding="utf-8") as f:
                    tree = ast.parse(f.read())
                for node in tree.body:  # module level only
                    if isinstance(node, (ast.Import, ast.ImportFrom)):
                        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                        assert not any(n.split(".")[0] in ("pyglet", "peng3d") for n in names), path


def test_server_runs_with_pyglet_and_peng3d_unimportable():
    code = r"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('pyglet', 'peng3d'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import peng3dnet, peng3dnet.events, peng3dnet.ext.ping
from peng3dnet.net import Server, Client
s = Server(addr=('127.0.0.1', 0)); s.runAsync()
got = []
peng3dnet.events.subscribe('peng3dnet:client.handshakecomplete', lambda e, d: got.append(e))
c = Client(addr=s.addr); c.runAsync(); c.wait_for_connection(10)
c.stop(); c.join(5); s.shutdown(timeout=5)
assert got == ['peng3dnet:client.handshakecomplete'], got
assert not [m for m in sys.modules if m.split('.')[0] in ('pyglet', 'peng3d')]
print('OK')
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "OK", out.stderr
