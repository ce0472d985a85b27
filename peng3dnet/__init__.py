"""peng3dnet: TCP networking for Python games built on peng3d and pyglet.

The core (this package, :mod:`peng3dnet.net`, :mod:`peng3dnet.events`)
needs only ``msgpack`` and ``blinker``; it never imports pyglet or peng3d.
"""

from __future__ import annotations

import logging

from . import constants, errors, events, util
from .errors import (
    AlreadyRegisteredError,
    ConnectionClosedError,
    InvalidAddressError,
    LocalProtocolError,
    NetworkError,
    Peng3dNetError,
    ProtocolError,
    RegistryError,
    RemoteProtocolError,
    TimedOutError,
)
from .net import Client, ClientOnServer, NetworkLoop, Server
from .packet import Packet, PrintPacket, SmartPacket
from .version import PROTOVERSION, RELEASE, VERSION, __version__

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "AlreadyRegisteredError",
    "Client",
    "ClientOnServer",
    "ConnectionClosedError",
    "InvalidAddressError",
    "LocalProtocolError",
    "NetworkError",
    "NetworkLoop",
    "PROTOVERSION",
    "Packet",
    "Peng3dNetError",
    "PrintPacket",
    "ProtocolError",
    "RELEASE",
    "RegistryError",
    "RemoteProtocolError",
    "Server",
    "SmartPacket",
    "TimedOutError",
    "VERSION",
    "__version__",
    "constants",
    "errors",
    "events",
    "util",
]
