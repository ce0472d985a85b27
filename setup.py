"""Build shim for tools that still call ``setup.py``.

All package metadata (name, version, dependencies, extras, the ``peng3dnet``
console script, package data) lives in ``pyproject.toml`` (PEP 621); the
files of the sdist are listed in ``MANIFEST.in``.
"""

from setuptools import setup

setup()
