"""The PEP 517 build backend: setuptools' own, plus mypy among the build's
requirements when ``PENG3DNET_COMPILE=1`` asks for the optional compiled
build (README, "Optional compiled build"), so that
``PENG3DNET_COMPILE=1 pip install .`` fetches it into pip's isolated build
environment.  Everything else is ``setuptools.build_meta``."""

from __future__ import annotations

import os

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403

MYPY = "mypy>=1.18,<3"
"""mypy (and its mypyc) for the compiled build; setup.py names it too."""


def _compiling() -> bool:
    return os.environ.get("PENG3DNET_COMPILE", "") not in ("", "0")


def get_requires_for_build_wheel(config_settings=None):
    """setuptools' requirements; when compiling, mypy (setuptools' own
    answer would run setup.py, which refuses to compile without mypy)."""
    if _compiling():
        return [MYPY]
    return _setuptools.get_requires_for_build_wheel(config_settings)
