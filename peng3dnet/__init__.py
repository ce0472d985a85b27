"""peng3dnet: TCP networking for Python games built on peng3d and pyglet.

The core (this package, :mod:`peng3dnet.net`, :mod:`peng3dnet.events`)
needs only ``msgpack`` and ``blinker``; it never imports pyglet or peng3d.

As in peng3dnet 0.1.x, ``import peng3dnet`` makes every public name of
:mod:`~peng3dnet.net`, :mod:`~peng3dnet.registry`,
:mod:`~peng3dnet.constants`, :mod:`~peng3dnet.version`,
:mod:`~peng3dnet.util`, :mod:`~peng3dnet.errors` and
:mod:`~peng3dnet.conntypes` an attribute of the package (``from peng3dnet
import *`` gives the same names), and makes :mod:`peng3dnet.ext.ping`
reachable without a further import.
"""

# ruff: noqa: F401  (re-exports; __all__ is built from the modules' own lists below)
from __future__ import annotations

import logging

from . import conntypes, constants, errors, events, ext, net, packet, registry, util, version
from .conntypes import *  # noqa: F403
from .constants import *  # noqa: F403
from .errors import *  # noqa: F403
from .ext import ping
from .net import *  # noqa: F403
from .packet import Packet, PrintPacket, SmartPacket
from .registry import *  # noqa: F403
from .util import *  # noqa: F403
from .version import PROTOVERSION, RELEASE, VERSION, __version__

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = sorted(
    {
        *conntypes.__all__,
        *constants.__all__,
        *errors.__all__,
        *net.__all__,
        *registry.__all__,
        *util.__all__,
        "PROTOVERSION",
        "RELEASE",
        "VERSION",
        "__version__",
        "Packet",
        "PrintPacket",
        "SmartPacket",
        "conntypes",
        "constants",
        "errors",
        "events",
        "ext",
        "net",
        "packet",
        "ping",
        "registry",
        "util",
        "version",
    }
)
