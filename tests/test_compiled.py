"""The optional compiled build (``PENG3DNET_COMPILE=1 pip install .``,
README "Optional compiled build"): the modules named in
``peng3dnet/_mypyc.py`` compiled by mypyc.

``.ci/run`` builds it into ``.build-compiled/`` (``python3
tests/compiled.py build``, a minute or two); without that build, or with
one older than the sources, the tests here fail and say how to make it.
They run the 0.1.x compatibility tests (against the original library too),
the protocol core's tests (hypothesis included), the interop tests and a
demo game against the compiled package, about 50 s.  The rest of the suite
runs on the pure-Python package only: many unit tests patch module
functions or pass stand-in objects, which compiled code does not see or
refuses (see the README).
"""

from __future__ import annotations

import ast
import json
import os
import re
import runpy
import subprocess
import sys
import textwrap

import pytest

from tests import compiled, pythons

REPO = compiled.REPO
COMPILED_MODULES: list[str] = runpy.run_path(os.path.join(REPO, "peng3dnet", "_mypyc.py"))["COMPILED_MODULES"]

SUBSET = ["tests/compat", "tests/protocol", "tests/test_interop.py",
          "tests/demos/test_arena.py::test_headless_server_and_three_bots_agree"]
# A stand-in for bytes with a huge len() (compiled code takes real bytes
# only); two tests that patch a method of the core to raise (a compiled
# class's methods cannot be patched); and the original-against-original
# runs, which do not run our code.
DESELECT = ("not test_a_frame_of_exactly_the_largest_length_is_framed_and_one_byte_more_refused"
            " and not test_an_exception_handling_a_frame_closes_that_connection_with_its_cause"
            " and not test_frames_before_the_unhandled_one_are_delivered_first"
            " and not orig-server-orig-client")
DESELECTED = 8


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    why = compiled.stale()
    if why is not None:
        pytest.fail(f"{why}: build it with `python3 tests/compiled.py build` (needs mypy, setuptools>=77 and "
                    f"a C compiler; `bash .ci/run` does it)")
    return compiled.run_tree(str(tmp_path_factory.mktemp("compiled") / "run"))


def run_in(tree: str, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tree, capture_output=True, text=True,
                          timeout=60, env=pythons.clean_env())


def test_the_run_tree_imports_the_compiled_modules_and_the_interpreted_rest(tree):
    mods = [m[:-3].replace("/", ".") for m in COMPILED_MODULES]
    p = run_in(tree, f"""
        import importlib, json
        out = {{}}
        for m in {mods!r} + ["peng3dnet.net", "peng3dnet._mypyc", "peng3dnet.loopthread"]:
            out[m] = importlib.import_module(m).__file__
        print(json.dumps(out))
    """)
    assert p.returncode == 0, p.stderr
    files = json.loads(p.stdout)
    for m in mods:
        assert files[m].startswith(tree) and files[m].endswith(".so"), (m, files[m])
    for m in ("peng3dnet.net", "peng3dnet._mypyc", "peng3dnet.loopthread"):
        assert files[m].endswith(".py"), (m, files[m])


def test_programs_see_the_same_objects_as_in_the_pure_build(tree):
    p = run_in(tree, """
        import weakref
        from peng3dnet import net
        from peng3dnet.errors import LocalProtocolError
        from peng3dnet.protocol.codec import pack
        s = net.Server(cfg={"net.server.addr": ("127.0.0.1", 0)})
        c = net.Client(cfg={"net.client.addr": ("127.0.0.1", 1)})
        s.my_state = {"round": 1}           # attributes of a program's own
        c.on_my_event = lambda: None        # and methods set from outside
        weakref.ref(s), weakref.ref(c)      # weak references (peng3d keeps them)
        assert s.clientcls is net.ClientOnServer and net.Server.__module__ == "peng3dnet.net"
        class MyServer(net.Server):
            def __init__(self, *a, **kw):
                super().__init__(*a, **kw)
                self.extra = 1
        assert MyServer(cfg={"net.server.addr": ("127.0.0.1", 0)}).extra == 1
        class MyLoop(net.NetworkLoop):
            pass
        MyLoop().stop()
        assert (net.Server.side, net.Client.side, net.Server.is_server, net.Client.is_server) == (1, 0, True, False)
        import inspect
        params = list(inspect.signature(net.Client).parameters)
        assert params == ["peng", "addr", "cfg", "conntype", "credentials"], params
        assert list(inspect.signature(net.Server).parameters) == ["peng", "addr", "clientcls", "cfg", "authenticate"]
        try:
            pack(object())
        except LocalProtocolError as exc:   # the cause survives `raise ... from` in compiled code
            assert isinstance(exc.__cause__, TypeError), repr(exc.__cause__)
        else:
            raise AssertionError("pack(object()) did not raise")
        import peng3dnet.server
        assert peng3dnet.server.__file__.endswith(".so")
        print("ok")
    """)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stdout + p.stderr


@pytest.mark.timeout(300)
def test_compat_protocol_interop_and_a_demo_game_pass_on_the_compiled_build(tree):
    # (tests/conftest.py refuses to start unless the package is this tree's compiled one)
    env = pythons.clean_env(PENG3DNET_TEST_COMPILED=tree)
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", DESELECT, *SUBSET],
                       cwd=tree, capture_output=True, text=True, timeout=280, env=env)
    tail = p.stdout[-4000:] + p.stderr[-2000:]
    assert p.returncode == 0, tail
    summary = p.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"(\d+) passed, (\d+) deselected in .*", summary)
    assert m and int(m.group(1)) >= 450 and int(m.group(2)) == DESELECTED, tail  # (all of it ran, nothing skipped)


def test_compiled_modules_raise_with_caused():
    """mypyc drops the cause of ``raise X from exc``: the compiled modules
    write ``raise caused(X, exc) from exc`` (peng3dnet/_mypyc.py)."""
    bad, good = [], 0
    for rel in COMPILED_MODULES:
        with open(os.path.join(REPO, rel)) as f:
            tree = ast.parse(f.read(), rel)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Raise) or node.cause is None:
                continue
            if isinstance(node.cause, ast.Constant) and node.cause.value is None:
                continue  # (from None: nothing to keep)
            exc = node.exc
            if (isinstance(exc, ast.Call) and isinstance(exc.func, ast.Name) and exc.func.id == "caused"
                    and len(exc.args) == 2 and ast.dump(exc.args[1]) == ast.dump(node.cause)):
                good += 1
            else:
                bad.append(f"{rel}:{node.lineno}")
    assert bad == [] and good >= 18


def test_setup_py_refuses_an_unknown_compile_flag():
    env = dict(pythons.clean_env(), PENG3DNET_COMPILE="yes")
    p = subprocess.run([sys.executable, "setup.py", "--version"], cwd=REPO, capture_output=True, text=True,
                       timeout=60, env=env)
    assert p.returncode != 0 and "PENG3DNET_COMPILE='yes'" in p.stderr, p.stderr
