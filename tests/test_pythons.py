"""The core tests on every other supported Python: the protocol core, the
0.1.x compatibility tests, the peer, the public API, util and the transport,
run by each interpreter's virtualenv (``.venv-py3.X`` in the repository,
made by ``.ci/run``; or ``PENG3DNET_PYTHONS``) on this checkout.

Python 3.10, requires-python's floor, must have one: without it the test
fails.  Another supported Python that is on this machine must have one too;
one that is not on this machine is not run (``test_not_on_this_machine``
names it and checks that it is really absent).  About 30-60 s per
interpreter; two run side by side (PARALLEL).
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import subprocess

import pytest

from tests import pythons

pytestmark = pytest.mark.pythons

SUBSET = ["tests/protocol", "tests/compat", "tests/test_peer.py", "tests/test_public_api.py",
          "tests/test_util.py", "tests/test_transport.py", "tests/test_transport_units.py", "tests/test_relay.py",
          "tests/test_relay_units.py", "tests/test_shared_loop.py"]
# The original-against-original runs of tests/compat run the original on its
# own virtualenv's Python whatever the interpreter here: nothing to re-run.
# The million-message burst (20 s) runs once, on the main Python; its
# 100,000-message default-config case runs on every one.
DESELECT = "not orig-server-orig-client and not 1000000"


def _plan() -> tuple[list[str], list[str]]:
    run, absent = [], []
    for v in pythons.others():
        if v == pythons.FLOOR or os.path.exists(pythons.venv_python(v)) or pythons.find_python(v):
            run.append(v)
        else:
            absent.append(v)
    return run, absent


RUN, ABSENT = _plan()


PARALLEL = 2
"""How many interpreters run their tests at once: each run is mostly
waiting (sockets, the original library's start-up), so two side by side
take about the time of the longest two, not of all three in a row."""


def _run_core_tests(py: str) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str] | None]:
    """The probe and the core tests on ``py`` (a virtualenv's python)."""
    env = pythons.clean_env()
    probe = subprocess.run([py, "-c", "import sys, peng3dnet; print('%d.%d' % sys.version_info[:2]); "
                                      "print(peng3dnet.__file__)"],
                           cwd=pythons.REPO, env=env, capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        return probe, None
    cmd = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", "-k", DESELECT, *SUBSET]
    try:
        proc = subprocess.run(cmd, cwd=pythons.REPO, env=env, capture_output=True, text=True, timeout=270)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        proc = subprocess.CompletedProcess(cmd, -1, out + "\n(did not finish in 270 s)", "")
    return probe, proc


@pytest.fixture(scope="module")
def core_runs():
    """Every interpreter's run, started together (PARALLEL at a time) when
    the first test asks: version -> Future of :func:`_run_core_tests`."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=PARALLEL, thread_name_prefix="test_pythons")
    futures = {v: pool.submit(_run_core_tests, pythons.venv_python(v))
               for v in RUN if os.path.exists(pythons.venv_python(v))}
    yield futures
    pool.shutdown(wait=True)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("version", RUN)
def test_core_tests_pass_on(version, core_runs):
    py = pythons.venv_python(version)
    if not os.path.exists(py):
        if pythons.find_python(version) is None:
            pytest.fail(f"Python {version} (requires-python's floor) is not on this machine: install it "
                        f"(e.g. pyenv install {version}), then run `bash .ci/run` (it makes .venv-py{version})")
        pytest.fail(f"Python {version} is on this machine ({pythons.find_python(version)}) but has no virtualenv "
                    f"for the tests at {py}: run `bash .ci/run` (it makes .venv-py{version}), "
                    f"or name one in {pythons.ENV_PYTHONS}")
    probe, proc = core_runs[version].result(timeout=580)
    assert probe.returncode == 0, f"{py} cannot import peng3dnet (run `bash .ci/run`):\n{probe.stderr[-3000:]}"
    got_version, where = probe.stdout.split()
    assert got_version == version, f"{py} is Python {got_version}, not {version}"
    assert os.path.realpath(where) == os.path.realpath(os.path.join(pythons.REPO, "peng3dnet", "__init__.py")), where
    assert proc is not None
    out = proc.stdout.strip()
    assert proc.returncode == 0, f"the core tests fail on Python {version} ({py}):\n{out[-6000:]}\n{proc.stderr[-2000:]}"
    summary = out.splitlines()[-1]
    m = re.match(r"(\d+) passed", summary)
    assert m and int(m.group(1)) > 0 and "failed" not in summary and "error" not in summary, summary


if ABSENT:
    @pytest.mark.parametrize("version", ABSENT)
    def test_not_on_this_machine(version):
        """A supported Python that is not run here: not the floor, no interpreter, no virtualenv."""
        assert version != pythons.FLOOR
        assert pythons.find_python(version) is None
        assert not os.path.exists(pythons.venv_python(version))
