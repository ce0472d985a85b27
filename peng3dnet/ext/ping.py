"""Ping: query a server's status and latency without a full handshake.

Every :class:`~peng3dnet.net.Server` answers ``ping`` connections; mix in
:class:`PingableServerMixin` to add status data (name, player count, ...) to
the reply.  :func:`pingServer` does one query from a client.
"""

from __future__ import annotations

import logging
from typing import Any

from ..constants import CONNTYPE_PING
from ..errors import ConnectionClosedError
from ..net import Client

__all__ = ["pingServer", "PingableServerMixin", "PingableClientMixin"]

log = logging.getLogger(__name__)


class PingableServerMixin:
    """Server mixin: add :attr:`pingdata` to every ping reply.

    Put it before :class:`~peng3dnet.net.Server` in the bases::

        class GameServer(PingableServerMixin, Server):
            pass
    """

    pingdata: dict[str, Any] = {}
    """Static data merged into every ping reply (e.g. ``{"name": "My server"}``)."""

    def getPingData(self, msg: dict[str, Any], cid: int) -> dict[str, Any]:  # noqa: N802
        """Return the data for one ping reply; override for live data.

        Args:
            msg: The ping request.
            cid: The connection id of the pinging client.

        Thread safety: runs on the network thread.
        """
        return dict(self.pingdata)


class PingableClientMixin:
    """Client mixin: gives access to the last ping result."""

    @property
    def ping_result(self) -> dict[str, Any] | None:
        """The server's reply with ``delay`` and ``recvtime`` added, or ``None``."""
        return getattr(self, "_ping_result", None)


class _PingClient(PingableClientMixin, Client):
    pass


def pingServer(  # noqa: N802
    peng: Any = None,
    addr: Any = None,
    cfg: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    clientcls: type[Client] = _PingClient,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """Ping a server and return its reply.

    Args:
        peng: Optional ``peng3d.Peng`` (events are forwarded to it).
        addr: The server's address.
        cfg: Config overrides.
        data: Extra keys for the request (``time`` is always set).
        clientcls: The client class to use.
        timeout: Seconds to wait for the reply.

    Returns:
        The server's reply: ``oldmsg``, ``peng3dnet`` (version info), the
        server's ping data, plus ``delay`` (round trip, seconds) and
        ``recvtime``.

    Raises:
        TimedOutError: No reply within ``timeout``.
        ConnectionClosedError: The server closed without replying.
        NetworkError: The server could not be reached.

    Thread safety: any thread; blocks the caller.
    """
    client = clientcls(peng, addr, cfg, conntype=CONNTYPE_PING)
    client._ping_extra = dict(data or {})  # type: ignore[attr-defined]
    client.runAsync()
    try:
        client.wait_for_close(timeout)
    finally:
        client.stop()
        client.join(5.0)
    result = client._ping_result
    if result is None:
        raise ConnectionClosedError(f"server closed without a ping reply ({client.close_reason})", client.close_reason)
    return result
