"""peng3dnet's event bus (blinker), its catalog and main-thread delivery.

Quick use::

    from peng3dnet import events

    @events.subscribe("peng3dnet:server.connection.*")
    def on_conn(event, data):       # runs on the network thread
        print(event, data["client"].cid)

    disp = events.attach_to_pyglet(client)          # main-thread delivery
    disp.subscribe("peng3dnet:client.recv", on_recv)

Every catalog event also exists as a module attribute holding its blinker
signal (e.g. :data:`client_received` for ``peng3dnet:client.recv``).
Importing this package does not import pyglet or peng3d.
"""

from __future__ import annotations

from typing import Any

from .bus import ANY, emit, has_receivers, namespace, signal, subscribe, unsubscribe
from .catalog import CATALOG, EventSpec
from .dispatch import MainThreadDispatcher, attach_to_pyglet

__all__ = [
    "ANY",
    "CATALOG",
    "EventSpec",
    "MainThreadDispatcher",
    "attach_to_pyglet",
    "emit",
    "has_receivers",
    "namespace",
    "signal",
    "subscribe",
    "unsubscribe",
]

_g: dict[str, Any] = globals()
for _name, _spec in CATALOG.items():
    _g[_spec.attr] = signal(_name)
    __all__.append(_spec.attr)
del _g, _name, _spec
