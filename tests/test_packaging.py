"""Packaging: the sdist and the wheel built from (a clean copy of) this
checkout with ``python -m build`` (the wheel is built from the sdist, as pip
would from PyPI), what each holds, and the wheel installed into a fresh virtualenv
(no system site-packages: msgpack and blinker come from PyPI) where the
``peng3dnet`` command runs and the sdist's protocol tests pass against it.

Needs the ``build`` package (the test extra) and PyPI.  About 30-60 s.
"""

from __future__ import annotations

import ast
import configparser
import email.parser
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from importlib import metadata
from typing import NamedTuple

import pytest

from tests import pythons

pytestmark = [pytest.mark.packaging, pytest.mark.timeout(240)]

REPO = pythons.REPO

CLASSIFIERS = {
    "Development Status :: 3 - Alpha",
    "Intended Audience :: Developers",
    "Operating System :: POSIX :: Linux",
    "Programming Language :: Python :: 3 :: Only",
    *(f"Programming Language :: Python :: {v}" for v in pythons.SUPPORTED),
    "Topic :: Games/Entertainment",
    "Topic :: System :: Networking",
    "Typing :: Typed",
}

# Everything the test suite reads besides the package (the sdist must hold it).
SDIST_TREES = ("tests", "bench", "demos", "docs", "peng3dnet")
SDIST_FILES = ("README.md", "LICENSE", "pyproject.toml", "setup.py", "MANIFEST.in",
               "tests/conftest.py", "tests/helpers.py", "tests/certs.py", "tests/pythons.py",
               "tests/interop/orig_peer.py")


def repo_version() -> str:
    """``__version__`` of this checkout, read from the file (not imported:
    the imported peng3dnet may be another tree's)."""
    with open(os.path.join(REPO, "peng3dnet", "version.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__version__"
                                                for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("peng3dnet/version.py assigns no literal __version__ (setuptools reads it statically)")


class Dists(NamedTuple):
    sdist: str
    wheel: str
    version: str


def run(cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("env", pythons.clean_env(PIP_DISABLE_PIP_VERSION_CHECK="1"))
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{cmd} did not finish within {timeout} s:\n{exc.stdout}\n{exc.stderr}") from None


def ok(proc: subprocess.CompletedProcess, what: str) -> str:
    assert proc.returncode == 0, f"{what} exited {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> Dists:
    try:
        import build  # noqa: F401
    except ImportError:
        pytest.fail("the `build` package is not installed in this environment: "
                    "pip install -e '.[test]' (bash .ci/run does) or pip install build")
    out = tmp_path_factory.mktemp("dist")
    # From a copy of the checkout without what earlier builds and installs left:
    # setuptools adds the files of an existing peng3dnet.egg-info/SOURCES.txt
    # (pip install -e writes one) to the sdist, which would hide a MANIFEST.in
    # that lost something, and a stale build/lib/ can leak into a wheel.
    src = tmp_path_factory.mktemp("src") / "peng3dnet"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", "*.egg-info", "build", "dist", ".venv*", ".build-compiled", "__pycache__", "*.py[co]", ".hypothesis",
        ".pytest_cache"))
    # No --sdist/--wheel: the sdist first, then the wheel from the unpacked sdist
    # (as pip builds one from PyPI), so the sdist is proven to build.
    ok(run([sys.executable, "-m", "build", "--outdir", str(out), str(src)], 180, cwd=src), "python -m build")
    sdists = sorted(str(p) for p in out.glob("*.tar.gz"))
    wheels = sorted(str(p) for p in out.glob("*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, os.listdir(out)
    version = repo_version()
    assert os.path.basename(sdists[0]) == f"peng3dnet-{version}.tar.gz"
    assert os.path.basename(wheels[0]) == f"peng3dnet-{version}-py3-none-any.whl"
    return Dists(sdists[0], wheels[0], version)


def sdist_names(d: Dists) -> set[str]:
    top = f"peng3dnet-{d.version}/"
    with tarfile.open(d.sdist) as tf:
        names = [m.name for m in tf.getmembers() if m.isfile()]
    assert all(n.startswith(top) for n in names), [n for n in names if not n.startswith(top)]
    return {n[len(top):] for n in names}


def tracked_files(tree: str) -> list[str]:
    """Files of ``tree`` that git tracks (outside a git checkout, e.g. in an
    unpacked sdist: the files on disk less bytecode)."""
    proc = subprocess.run(["git", "-C", REPO, "ls-files", "-z", "--", tree], capture_output=True, text=True)
    if proc.returncode == 0 and proc.stdout:
        return [f for f in proc.stdout.split("\0") if f and os.path.isfile(os.path.join(REPO, f))]
    found = []
    for root, dirs, files in os.walk(os.path.join(REPO, tree)):
        dirs[:] = [x for x in dirs if x not in ("__pycache__", ".hypothesis")]
        found += [os.path.relpath(os.path.join(root, f), REPO) for f in files if not f.endswith((".pyc", ".pyo"))]
    return found


def test_sdist_holds_everything_the_tests_need(dists):
    names = sdist_names(dists)
    missing = [f for f in SDIST_FILES if f not in names]
    for tree in SDIST_TREES:
        missing += [f for f in tracked_files(tree) if f not in names]
    vectors = [n for n in names if re.fullmatch(r"tests/vectors/[^/]+\.json", n)]
    assert vectors, "no tests/vectors/*.json in the sdist"
    if os.path.exists(os.path.join(REPO, "CHANGELOG.md")):
        missing += [] if "CHANGELOG.md" in names else ["CHANGELOG.md"]
    assert not missing, f"not in the sdist: {missing}"
    junk = sorted(n for n in names if "__pycache__" in n or n.endswith((".pyc", ".pyo"))
                  or n.startswith((".venv", "docs/_build/", "build/", "dist/")))
    assert not junk, junk


def test_wheel_holds_only_the_package_and_tells_the_truth(dists):
    with zipfile.ZipFile(dists.wheel) as zf:
        names = set(zf.namelist())
        info = f"peng3dnet-{dists.version}.dist-info/"
        entry_points = zf.read(info + "entry_points.txt").decode()
        meta = email.parser.Parser().parsestr(zf.read(info + "METADATA").decode())

    stray = sorted(n for n in names if not n.startswith(("peng3dnet/", info)))
    assert not stray, f"the wheel holds more than the package: {stray}"
    package = {f.replace(os.sep, "/") for f in tracked_files("peng3dnet")}
    assert package <= names, f"package files missing from the wheel: {sorted(package - names)}"
    assert "peng3dnet/py.typed" in names
    assert not [n for n in names if n.endswith((".pyc", ".pyo"))]
    assert info + "licenses/LICENSE" in names

    eps = configparser.ConfigParser()
    eps.read_string(entry_points)
    assert dict(eps["console_scripts"]) == {"peng3dnet": "peng3dnet.cli:main"}

    assert meta["Name"] == "peng3dnet"
    assert meta["Version"] == dists.version
    assert meta["Requires-Python"] == f">={pythons.FLOOR}"
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert meta["Description-Content-Type"] == "text/markdown"
    classifiers = set(meta.get_all("Classifier"))
    assert classifiers == CLASSIFIERS
    assert not [c for c in classifiers if c.startswith("License ::")]  # the SPDX expression says it
    requires = meta.get_all("Requires-Dist")
    assert sorted(r for r in requires if "extra ==" not in r) == ["blinker>=1.6", "msgpack<2,>=1.0"]
    assert set(meta.get_all("Provides-Extra")) == {"game", "redis", "test"}
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert set(urls) == {"Homepage", "Source", "Issues", "Changelog", "Documentation"}


def test_wheel_installs_in_a_fresh_venv_and_passes_the_sdists_protocol_tests(dists, tmp_path):
    venv = tmp_path / "venv"
    ok(run([sys.executable, "-m", "venv", str(venv)], 60), "python -m venv")
    with open(venv / "pyvenv.cfg", encoding="utf-8") as f:
        assert re.search(r"^include-system-site-packages\s*=\s*false", f.read(), re.M)
    vpy, vbin = str(venv / "bin" / "python"), venv / "bin"

    # The wheel alone: its dependencies come from PyPI.
    ok(run([vpy, "-m", "pip", "install", "-q", dists.wheel], 120), "pip install the wheel")
    out = ok(run([vpy, "-c", "import peng3dnet, msgpack, blinker; print(peng3dnet.__file__); print(peng3dnet.__version__)"],
                 60, cwd=tmp_path), "import peng3dnet")
    where, version = out.split()
    assert os.path.realpath(where).startswith(os.path.realpath(venv) + os.sep), where
    assert version == dists.version

    helptext = ok(run([str(vbin / "peng3dnet"), "--help"], 60, cwd=tmp_path), "peng3dnet --help")
    assert all(cmd in helptext for cmd in ("serve", "ping", "discover", "lagproxy")), helptext
    assert ok(run([str(vbin / "peng3dnet"), "--version"], 60, cwd=tmp_path), "peng3dnet --version").split()[:2] == [
        "peng3dnet", dists.version]

    # The sdist's tests against the installed wheel: tests/ and pyproject.toml
    # (the pytest settings) without the sdist's peng3dnet/, which would shadow it.
    tools = [f"{name}=={metadata.version(name)}" for name in ("pytest", "pytest-timeout", "hypothesis")]
    ok(run([vpy, "-m", "pip", "install", "-q", *tools], 120), "pip install the test tools")
    unpacked, work = tmp_path / "sdist", tmp_path / "work"
    with tarfile.open(dists.sdist) as tf:
        if hasattr(tarfile, "data_filter"):
            tf.extractall(unpacked, filter="data")
        else:  # pragma: no cover - Pythons before the tarfile filters
            tf.extractall(unpacked)
    top = unpacked / f"peng3dnet-{dists.version}"
    shutil.copytree(top / "tests", work / "tests")
    shutil.copy(top / "pyproject.toml", work / "pyproject.toml")
    (work / "tests" / "test_installed_wheel.py").write_text(
        "import os, sys\n\nimport peng3dnet\n\n\n"
        "def test_peng3dnet_is_the_installed_wheel():\n"
        "    where = os.path.realpath(peng3dnet.__file__)\n"
        "    assert where.startswith(os.path.realpath(sys.prefix) + os.sep), where\n"
    )
    proc = run([vpy, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/protocol", "tests/test_installed_wheel.py"],
               150, cwd=work)
    summary = ok(proc, "the sdist's protocol tests on the installed wheel").strip().splitlines()[-1]
    m = re.match(r"(\d+) passed", summary)
    assert m and int(m.group(1)) > 1 and "failed" not in summary and "error" not in summary, summary
