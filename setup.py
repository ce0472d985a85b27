"""Build script: the metadata lives in ``pyproject.toml`` (PEP 621).

All package metadata (name, version, dependencies, extras, the ``peng3dnet``
console script, package data) lives in ``pyproject.toml``; the files of the
sdist are listed in ``MANIFEST.in``.  This file only adds the optional
compiled build: with ``PENG3DNET_COMPILE=1`` in the environment the modules
named in ``peng3dnet/_mypyc.py`` are compiled by mypyc (it needs mypy, a C
compiler and the Python headers; see the README's "Optional compiled
build")::

    PENG3DNET_COMPILE=1 pip install .

(pip installs mypy into its isolated build environment: the build backend,
``_build_backend/peng3dnet_build.py``, asks for it; with
``--no-build-isolation`` mypy must be installed already.)  Without it (the
default) the package is pure Python.  Editable installs are never compiled.
"""

import os
import runpy
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
MYPY = "mypy>=1.18,<3"  # (as _build_backend/peng3dnet_build.py asks for it)


def main():
    flag = os.environ.get("PENG3DNET_COMPILE", "")
    if flag in ("", "0"):
        setup()
        return
    if flag != "1":
        raise SystemExit(f"PENG3DNET_COMPILE={flag!r}: set it to 1 (compile) or 0 (pure Python)")
    if any(cmd in sys.argv for cmd in ("editable_wheel", "develop")):
        raise SystemExit("PENG3DNET_COMPILE=1 is for `pip install .`, not for an editable install: compiled "
                         "modules beside the checkout's .py files would be imported instead of them")
    try:
        from mypyc.build import mypycify
    except ImportError:
        raise SystemExit(f"PENG3DNET_COMPILE=1 needs {MYPY} in the build environment: pip install '{MYPY}' "
                         "(pip install . without --no-build-isolation fetches it itself)") from None
    os.chdir(HERE)  # (mypyc takes the paths and pyproject.toml's [tool.mypy] from here)
    modules = runpy.run_path(os.path.join(HERE, "peng3dnet", "_mypyc.py"))["COMPILED_MODULES"]
    setup(ext_modules=mypycify(modules, opt_level="3", group_name="peng3dnet_compiled"))


main()
