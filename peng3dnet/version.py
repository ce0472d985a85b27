"""Version information of peng3dnet.

setuptools reads ``__version__`` from this file without importing the package
(``[tool.setuptools.dynamic]`` in ``pyproject.toml``): keep it free of imports
and keep ``__version__`` a string literal.
"""

VERSION = "0.2.0"
"""Short version string, sent to peers in ``hello`` and ``handshake``."""

RELEASE = __version__ = "0.2.0a1"
"""Full release string (PEP 440), also the package's ``__version__``."""

PROTOVERSION = 2
"""Wire protocol version; peers with another value are refused."""

