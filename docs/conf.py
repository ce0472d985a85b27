"""Sphinx configuration of the peng3dnet documentation.

Build: ``python -m sphinx -b html docs docs/_build/html`` (from the
repository root; ``-W --keep-going`` as the tests do).  Only what Sphinx
ships is used: autodoc, napoleon, viewcode-free, the alabaster theme, and
the local extension ``_ext/peng3dnet_docs.py`` that generates the event
catalog, the configuration reference and the command line help from the
code.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)  # document this checkout, not an installed copy
sys.path.insert(0, os.path.join(HERE, "_ext"))

from peng3dnet.version import RELEASE, VERSION  # noqa: E402

project = "peng3dnet"
author = "the peng3dnet authors"
copyright = "the peng3dnet authors, MIT license"  # noqa: A001  (Sphinx's name)
version = VERSION
release = RELEASE

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "peng3dnet_docs",
]

exclude_patterns = ["_build"]
templates_path: list[str] = []
root_doc = "index"

# The core never imports these at module level; mocking them keeps the
# build independent of a display (pyglet opens one on import of pyglet.gl)
# and of optional extras.
autodoc_mock_imports = ["pyglet", "peng3d", "redis"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_default_options = {"show-inheritance": True}
autodoc_inherit_docstrings = True
autodoc_preserve_defaults = True  # the default as written ("selectors.DefaultSelector"), not its value here

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True

html_theme = "alabaster"
html_title = f"peng3dnet {release}"
html_theme_options = {
    "description": "TCP networking for Python games on peng3d and pyglet",
    "fixed_sidebar": False,
}
html_static_path: list[str] = []
html_show_sourcelink = False
