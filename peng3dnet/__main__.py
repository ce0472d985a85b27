"""``python -m peng3dnet``: the ``peng3dnet`` command (see :mod:`peng3dnet.cli`)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
