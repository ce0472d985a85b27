"""What ``Client.runAsync()`` returns for a client served by the shared
network thread.  A module of its own, never compiled: a
:class:`threading.Thread` subclass compiled by mypyc is weakly referenced by
``threading`` (its set of threads) but its compiled traverse visits the weak
reference list as if it owned it, which crashes the garbage collector."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .client import Client

__all__ = ["SharedLoopThread"]


class SharedLoopThread(threading.Thread):
    """What ``Client.runAsync()`` returns for a client on the shared loop:
    a :class:`threading.Thread` whose :meth:`join` and :meth:`is_alive`
    follow that client (the shared thread itself serves others too and
    never ends).  It is never started; ``start()`` raises.

    Thread safety: any thread.
    """

    def __init__(self, client: Client, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._client = client

    def start(self) -> None:
        raise RuntimeError("the client is served by the shared network thread already")

    def is_alive(self) -> bool:
        """Whether the client is still served (has not left the loop)."""
        return not self._client._loop_done.is_set()

    def join(self, timeout: float | None = None) -> None:
        """Wait until the client has left the loop (at most ``timeout`` s;
        like ``Thread.join`` it does not raise when that passes)."""
        client = self._client
        client._wait_event(client._loop_done, timeout)
