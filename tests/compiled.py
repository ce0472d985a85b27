"""The optional compiled build (mypyc), for ``tests/test_compiled.py``.

``.ci/run`` builds it once, before the tests (it takes a minute or two)::

    python3 tests/compiled.py build     # .build-compiled/ in the repository

That is the wheel ``PENG3DNET_COMPILE=1 pip wheel .`` builds from this
checkout (the modules named in ``peng3dnet/_mypyc.py`` compiled, the
``.py`` files beside them), unpacked, and a stamp of the sources it was
built from: the test refuses a build older than the sources.  Needs mypy (the test extra),
setuptools >= 77, a C compiler and the Python headers.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
BUILD = os.path.join(REPO, ".build-compiled")
STAMP = os.path.join(BUILD, "sources.sha256")
_BUILD_FILES = ("setup.py", "pyproject.toml", "README.md", "LICENSE", "MANIFEST.in")
_DIGESTED = ("setup.py", "pyproject.toml", "_build_backend/peng3dnet_build.py")  # (the others are copied for setup()'s metadata only)


def sources_digest(root: str = REPO) -> str:
    """One digest of the package's ``.py`` files, ``setup.py``,
    ``pyproject.toml`` (mypy's settings), the interpreter's extension ABI
    and mypy's version: what the compiled build is made of."""
    h = hashlib.sha256()
    try:
        from mypy.version import __version__ as mypy_version
    except ImportError:
        mypy_version = "no mypy"
    h.update(f"{sysconfig.get_config_var('EXT_SUFFIX')}\0{mypy_version}\0".encode())
    paths = list(_DIGESTED)
    for d, dirs, files in os.walk(os.path.join(root, "peng3dnet")):
        dirs[:] = sorted(x for x in dirs if x != "__pycache__")
        paths += [os.path.relpath(os.path.join(d, f), root) for f in sorted(files) if f.endswith(".py")]
    for rel in sorted(paths):
        h.update(rel.encode() + b"\0")
        with open(os.path.join(root, rel), "rb") as f:
            h.update(f.read() + b"\0")
    return h.hexdigest()


def stale() -> str | None:
    """Why ``.build-compiled`` cannot be used for this checkout, or None."""
    if not os.path.exists(STAMP):
        return f"there is no compiled build at {BUILD}"
    with open(STAMP) as f:
        if f.read().strip() != sources_digest():
            return f"the compiled build at {BUILD} was made from other sources than this checkout's"
    return None


def build() -> None:
    """Make ``.build-compiled`` afresh: ``PENG3DNET_COMPILE=1 pip wheel``
    of a copy of the checkout (with ``--no-build-isolation``: the mypy and
    setuptools of the test extra), unpacked."""
    digest = sources_digest()
    shutil.rmtree(BUILD, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="peng3dnet-compiled-") as tmp:
        src, out = os.path.join(tmp, "src"), os.path.join(tmp, "wheel")
        os.makedirs(src)
        for rel in _BUILD_FILES:
            shutil.copy2(os.path.join(REPO, rel), os.path.join(src, rel))
        for d in ("peng3dnet", "_build_backend"):
            shutil.copytree(os.path.join(REPO, d), os.path.join(src, d),
                            ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        env = dict(os.environ, PENG3DNET_COMPILE="1")
        p = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "--disable-pip-version-check", "-w", out, src], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if p.returncode != 0:
            sys.stderr.write(p.stdout[-5000:])
            raise SystemExit(f"tests/compiled.py: the compiled build failed (exit {p.returncode})")
        (wheel,) = [os.path.join(out, f) for f in os.listdir(out) if f.endswith(".whl")]
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(BUILD)
        shutil.copy2(wheel, BUILD)
    with open(STAMP, "w") as f:
        f.write(digest + "\n")


def run_tree(into: str) -> str:
    """A directory to run tests (or ``bench``) from against the compiled
    build: the compiled package and this checkout's tests, demos, bench and
    pytest config (symbolic links).  Returns its path."""
    os.makedirs(into, exist_ok=True)
    names = ["tests", "demos", "bench", "pyproject.toml"]
    for name in names:
        os.symlink(os.path.join(REPO, name), os.path.join(into, name))
    os.symlink(os.path.join(BUILD, "peng3dnet"), os.path.join(into, "peng3dnet"))
    for f in os.listdir(BUILD):
        if "__mypyc" in f and f.endswith(".so"):  # (mypyc's shared runtime of the group)
            os.symlink(os.path.join(BUILD, f), os.path.join(into, f))
    return into


def main(argv: list[str]) -> int:
    if argv == ["build"]:
        build()
        return 0
    if argv == ["check"]:
        why = stale()
        print(why or "up to date")
        return 1 if why else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
