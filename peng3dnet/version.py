"""Version information of peng3dnet.

This module is exec()'d by ``setup.py``: keep it free of imports.
"""

VERSION = "0.2.0"
"""Short version string, sent to peers in ``hello`` and ``handshake``."""

RELEASE = "0.2.0a1"
"""Full release string (PEP 440), also the package's ``__version__``."""

PROTOVERSION = 2
"""Wire protocol version; peers with another value are refused."""

__version__ = RELEASE
