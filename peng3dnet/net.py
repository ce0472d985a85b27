"""Server, ClientOnServer and Client: the public face of peng3dnet.

This module only re-exports; the code lives one job per file, composed:

==========================  ====================================================
:mod:`peng3dnet.peer`       the peer core Server and Client share: config,
                            registry, events, handling the core's outputs, the
                            send path, the loop lifecycle
:mod:`peng3dnet.link`       one connection's state (``Link``) and its counters
:mod:`peng3dnet.plans`      what sending/receiving one packet needs, cached
:mod:`peng3dnet.inbox`      the queue of ``process()``: waiting, pause/resume
:mod:`peng3dnet.server`     Server, ClientOnServer, ServerStats, rate limits,
                            accepting (and TLS) connections
:mod:`peng3dnet.client`     Client and NetworkLoop
:mod:`peng3dnet.transport`  every socket call, the selector loop
==========================  ====================================================

As in peng3dnet 0.1.x, it also exposes the modules ``packet``, ``registry``,
``conntypes``, ``errors``, ``util`` and ``version`` and every constant.

Theory of operation
-------------------
Each Server or Client runs one selector loop (:class:`~peng3dnet.transport.Reactor`)
on its *network thread* (``runAsync()`` starts it in a daemon thread,
``runBlocking()`` runs it in the caller's).  Per connection there is one
:class:`~peng3dnet.protocol.ProtocolConnection` (the sans-I/O core) and one
:class:`~peng3dnet.transport.Channel` (socket + write buffer), guarded by the
channel's lock.  The network thread reads, feeds the core, writes what the
core answers (the handshake runs entirely here), then *releases the lock*
and acts on the core's outputs: events, hooks, connection types, and the
hand-off of application packets.

Application packets are decoded on the network thread (so a malformed one
closes its connection at once and its ``recv`` event fires in order), then
queued; ``process()`` runs their handlers (``Packet._receive``) on whichever
thread calls it: a process thread (``process_async()``), or the game loop
each frame.  When a connection has ``net.limits.recv_queue`` packets (or
``net.limits.recv_queue_bytes`` bytes) waiting, reading from it pauses until
``process()`` catches up (back-pressure, nothing dropped).

``send_message()`` may be called from any thread: it encodes in the
caller's thread, then appends to the connection under its lock and tries to
send at once; what the kernel does not take is written by the network thread
when the socket becomes writable.  Called from a program thread (not the
network thread, not a handler's), it blocks while that connection's write
buffer is over ``net.limits.write_buffer_block``, until it drains (at most
``net.timeout.send``, then ``WriteBufferFullError``): lossless flow
control.  Elsewhere it never waits for the network: over
``net.limits.write_buffer`` the slow peer is closed (``slowconsumer``).
"""

from __future__ import annotations

import struct
from typing import Any

from . import client as _client
from . import conntypes, errors, packet, registry, util, version  # noqa: F401  (0.1.x: net.packet, ...)
from . import server as _server
from .client import NetworkLoop
from .constants import *  # noqa: F403  (0.1.x: peng3dnet.net exposes the constants)
from .constants import CONNTYPE_CLASSIC, STRUCT_FORMAT_HEADER, STRUCT_FORMAT_LENGTH32
from .constants import __all__ as _constants_all
from .link import ConnectionStats
from .server import ServerStats

__all__ = [
    "STRUCT_HEADER",
    "STRUCT_LENGTH32",
    "Server",
    "ClientOnServer",
    "Client",
    "NetworkLoop",
    "ConnectionStats",
    "ServerStats",
    *_constants_all,
]

STRUCT_HEADER = struct.Struct(STRUCT_FORMAT_HEADER)
"""The 6-byte packet header: id and flags (``!IH``)."""
STRUCT_LENGTH32 = struct.Struct(STRUCT_FORMAT_LENGTH32)
"""The 4-byte length prefix (``!I``)."""


# The public classes are subclasses of the ones in peng3dnet.server and
# peng3dnet.client, defined here in a module that is never compiled: in the
# optional compiled build (README, "Optional compiled build") the classes
# they extend are native classes, which have no __dict__, take no weak
# references and no instance attributes or methods set from outside; these
# subclasses are ordinary Python classes, so programs see the same objects
# in both builds.  They add only their constructors' parameter lists (read
# by inspect.signature(), which finds none on compiled code; a test keeps
# them equal to the base's) and net.Server's default per-connection class.


class ClientOnServer(_server.ClientOnServer):
    __doc__ = _server.ClientOnServer.__doc__


class Server(_server.Server):
    __doc__ = _server.Server.__doc__

    def __init__(
        self,
        peng: Any = None,
        addr: Any = None,
        clientcls: type[_server.ClientOnServer] | None = None,
        cfg: dict[str, Any] | None = None,
        authenticate: Any = None,
    ) -> None:
        # (the default per-connection class is this module's ClientOnServer)
        super().__init__(peng, addr, clientcls if clientcls is not None else ClientOnServer, cfg, authenticate)


class Client(_client.Client):
    __doc__ = _client.Client.__doc__

    def __init__(
        self,
        peng: Any = None,
        addr: Any = None,
        cfg: dict[str, Any] | None = None,
        conntype: str = CONNTYPE_CLASSIC,
        credentials: Any = _client._FROM_CONFIG,
    ) -> None:
        # (the same parameters: inspect.signature() reads them here in the compiled build too)
        super().__init__(peng, addr, cfg, conntype, credentials)
