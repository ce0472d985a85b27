"""``python -m peng3dnet.ext.ping HOST[:PORT]``: the ``peng3dnet ping`` command.

(A package with a ``__main__`` so that ``-m`` works although ``import
peng3dnet`` imports this module, as in 0.1.x: running a plain module that
its package already imported made Python warn and do nothing.)
"""

import importlib
import sys

# The program entry, not a library import: the CLI is a floor above.
raise SystemExit(importlib.import_module("peng3dnet.cli").main(["ping", *sys.argv[1:]]))
