"""The sans-I/O core imports no I/O, threads, clocks, pyglet, peng3d or blinker;
the core package never imports pyglet or peng3d."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "peng3dnet"))
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


# --- the connection layer (the redesign's rules) ---------------------------------------------

SOCKET_CALLS = {"recv", "recv_into", "recvfrom", "sendall", "sendto", "accept", "listen", "create_connection",
                "wrap_socket", "do_handshake", "setsockopt", "getaddrinfo", "socketpair", "setblocking"}
# Modules that may make socket calls: the transport and TLS policy
# (contexts, certificates).  LAN discovery (UDP) and the lag proxy (a test
# tool) go through the transport's Datagram, Listener, connect and Channel.
SOCKET_MODULES = {"transport.py", "tls.py"}
FACADE_MODULES = {"net.py", "loopthread.py", "peer.py", "server.py", "client.py", "link.py", "plans.py", "inbox.py", "flow.py", "login.py", "calls.py", "relay.py"}


def package_files():
    for dirpath, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                yield os.path.relpath(path, ROOT), path


def runtime_imports(tree: ast.AST) -> set[str]:
    """Top-level module names imported outside ``if TYPE_CHECKING:``."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for n in ast.walk(node)}
    mods = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            mods |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            mods.add(node.module.split(".")[0])
    return mods


@pytest.mark.parametrize("rel,path", [p for p in package_files() if p[0] not in SOCKET_MODULES], ids=lambda v: str(v))
def test_socket_calls_only_in_the_transport(rel, path):
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    assert not runtime_imports(tree) & {"socket", "ssl"}, f"{rel} imports socket/ssl (annotations: TYPE_CHECKING)"
    calls = [f"{node.lineno}: {ast.unparse(node.func)}" for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in SOCKET_CALLS]
    assert not calls, f"{rel} makes socket calls (they belong in transport.py): {calls}"


@pytest.mark.parametrize("rel,path", [p for p in package_files() if p[0] not in FACADE_MODULES], ids=lambda v: str(v))
def test_lower_layers_do_not_reach_into_peers_by_private_name(rel, path):
    """Connection types, extensions, events, the core: they get a peer (or
    any object) and use its public members only; self/cls are their own."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                bad.append(f"{node.lineno}: {ast.unparse(node)}")
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "setattr", "hasattr")
                and len(node.args) > 1 and isinstance(node.args[1], ast.Constant)
                and str(node.args[1].value).startswith("_") and not str(node.args[1].value).startswith("__")):
            bad.append(f"{node.lineno}: {ast.unparse(node)}")
    assert not bad, f"{rel} uses private names of other objects: {bad}"


def test_no_module_holds_more_than_15_percent_of_the_package():
    sizes = {}
    for rel, path in package_files():
        with open(path, encoding="utf-8") as f:
            sizes[rel] = sum(1 for _ in f)
    total = sum(sizes.values())
    big = {rel: n for rel, n in sizes.items() if n > 0.15 * total}
    assert not big, f"over 15 % of {total} lines: {big}"
