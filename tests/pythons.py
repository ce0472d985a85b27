"""The Python versions peng3dnet supports, where their interpreters are on
this machine, and the virtualenv of each one for ``tests/test_pythons.py``.

Used by the tests and, as a script, by ``.ci/run`` (one place that knows
how to find an interpreter)::

    python3 tests/pythons.py find 3.10     # print the interpreter's path; exit 1 if none
    python3 tests/pythons.py others        # the supported versions other than this python's
    python3 tests/pythons.py floor         # requires-python's floor (3.10)

Standard library only: ``.ci/run`` runs it before anything is installed.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys

SUPPORTED = ("3.10", "3.11", "3.12", "3.13")
"""Every version the package claims (``requires-python`` and the classifiers)."""

FLOOR = SUPPORTED[0]
"""``requires-python``'s floor: CI fails without it."""

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

ENV_PYTHONS = "PENG3DNET_PYTHONS"
"""Override: interpreters (``os.pathsep``-separated paths) with the test
dependencies and peng3dnet installed, used instead of ``.venv-pyX.Y`` for
the versions they are."""


def version_of(python: str) -> str | None:
    """``"X.Y"`` of an interpreter, or None if it does not run (a pyenv shim
    of a version that is not activated exits 127)."""
    try:
        out = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=30, env=clean_env())
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _key(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", os.path.basename(os.path.dirname(os.path.dirname(path)))))


def find_python(version: str) -> str | None:
    """An interpreter of ``version`` on this machine: ``pythonX.Y`` on PATH
    (if it runs), else pyenv's newest ``X.Y.*``, else the usual prefixes."""
    candidates: list[str] = []
    on_path = shutil.which(f"python{version}")
    if on_path:
        candidates.append(on_path)
    pyenv_root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    pattern = os.path.join(pyenv_root, "versions", f"{version}.*", "bin", f"python{version}")
    candidates += sorted((p for p in glob.glob(pattern) if re.search(rf"/{re.escape(version)}\.\d+/bin/", p)),
                         key=_key, reverse=True)
    candidates += [f"/usr/local/bin/python{version}", f"/usr/bin/python{version}"]
    for c in candidates:
        if os.path.exists(c) and version_of(c) == version:
            return c
    return None


def others(current: str | None = None) -> list[str]:
    """The supported versions other than ``current`` (default: this python)."""
    current = current or "%d.%d" % sys.version_info[:2]
    return [v for v in SUPPORTED if v != current]


def venv_python(version: str) -> str:
    """The python that runs the tests on ``version``: from ``PENG3DNET_PYTHONS``
    if it names one of that version, else ``.venv-pyX.Y/bin/python`` in the
    repository (made by ``.ci/run``; it may not exist)."""
    for p in filter(None, os.environ.get(ENV_PYTHONS, "").split(os.pathsep)):
        if version_of(p) == version:
            return p
    return os.path.join(REPO, f".venv-py{version}", "bin", "python")


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without what would make another interpreter import
    from somewhere else (PYTHONPATH pointing at another tree, a virtualenv's
    or PYTHONHOME's settings)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "__PYVENV_LAUNCHER__")}
    env.update(extra)
    return env


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "find":
        found = find_python(argv[1])
        if found is None:
            return 1
        print(found)
        return 0
    if argv == ["floor"]:
        print(FLOOR)
        return 0
    if argv == ["others"]:
        print(" ".join(others()))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
