"""Game state sync: authoritative snapshots, acked deltas with a desync check,
interest management, interpolation, and client-side prediction.

Theory of operation
-------------------
The server owns the game state and steps it at a fixed tick; every tick it
sends each joined client a snapshot of what that client may see: full on
join, otherwise a delta against the last tick the client acknowledged, with
a CRC-32 of the whole view so a client that diverged notices and asks for a
full snapshot.  The client rebuilds the views, renders the other entities a
little in the past (interpolated) and its own entity ahead (predicted with
the same pure function the server applies, reconciled when the server says
which input it applied last).

The package has four modules, imports flowing one way
(``algebra`` <- ``wire`` <- ``server``, ``client``):

* :mod:`~peng3dnet.ext.sync.algebra`: views, deltas (:func:`diff_views`,
  :func:`apply_delta`), interpolation and :func:`distance_interest`; pure
  functions, no I/O, threads or msgpack.
* :mod:`~peng3dnet.ext.sync.wire`: the snapshot and input messages and the
  :func:`checksum` (over the encoded form); the only module that imports msgpack.
* :mod:`~peng3dnet.ext.sync.server`: :class:`SyncServer` and its tick thread;
  join and leave come from the server's connection table, never from a
  message.
* :mod:`~peng3dnet.ext.sync.client`: :class:`SyncClient`, interpolation and
  prediction.

Both sides receive through packet handlers, so the Server's and the
Client's packets must be processed (``process_async()``, ``process()`` in a
loop, or ``net.process.inline``); the event bus is not needed
(``net.events.enable`` may be off).  Events, when enabled:
``peng3dnet:sync.join`` ``{cid}`` / ``peng3dnet:sync.leave`` ``{cid, eid}``
(server, tick thread), ``peng3dnet:sync.snapshot`` ``{tick, view}`` /
``peng3dnet:sync.desync`` ``{tick, reason}`` (client, the thread that
processes its packets).  This package never imports pyglet.
"""

from __future__ import annotations

from .algebra import View as View  # importable as before, not in __all__
from .algebra import apply_delta, diff_views, distance_interest
from .client import SyncClient
from .server import SyncServer
from .wire import INPUT_PACKET, SNAPSHOT_PACKET, checksum

__all__ = [
    "SyncServer",
    "SyncClient",
    "SNAPSHOT_PACKET",
    "INPUT_PACKET",
    "checksum",
    "diff_views",
    "apply_delta",
    "distance_interest",
]
