"""Ping: query a server's status and latency without a full handshake.

Every :class:`~peng3dnet.net.Server` answers ``ping`` connections; mix in
:class:`PingableServerMixin` to add status data (name, player count, ...) to
the reply.  :func:`pingServer` does one query from a client.
"""

from __future__ import annotations

import logging
from typing import Any

from ...conntypes import PingConnectionType
from ...constants import *  # noqa: F403  (0.1.x: peng3dnet.ext.ping exposes the constants)
from ...constants import CONNTYPE_PING
from ...errors import FailedPingError, NetworkError, PingClosedError, PingUnreachableError, TimedOutError
from ...net import Client

__all__ = ["pingServer", "PingableServerMixin", "PingableClientMixin", "PingConnectionType"]

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
    """Client mixin for ``Client(..., conntype="ping")``: set the request's
    data, wait for the reply."""

    def setPingData(self, data: dict[str, Any] | None) -> None:  # noqa: N802
        """Set extra keys of the ping request (``time`` is always set by the
        library when the request is sent).  Call it before ``runAsync()``.

        Thread safety: any thread, before the connection is made.
        """
        self.ping_request_data = dict(data or {})

    def wait_for_pong(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the server's reply and return it (see :func:`pingServer`).

        Raises:
            FailedPingError: No reply within ``timeout`` seconds (a
                :class:`~peng3dnet.errors.TimedOutError`); its subclass
                :class:`~peng3dnet.errors.PingClosedError` (also a
                ``ConnectionClosedError``) when the connection closed
                without a reply.

        Thread safety: any thread but the network thread.
        """
        try:
            self.wait_for_close(timeout)  # type: ignore[attr-defined]
        except TimedOutError:
            raise FailedPingError(f"no ping reply within {timeout} s") from None
        result = self.ping_result
        if result is None:
            reason = self.close_reason  # type: ignore[attr-defined]
            raise PingClosedError(f"server closed without a ping reply ({reason})", reason)
        return result

    @property
    def ping_result(self) -> dict[str, Any] | None:
        """The server's reply with ``delay`` and ``recvtime`` added, or ``None``."""
        conntypes: dict[str, Any] = getattr(self, "conntypes", {})
        ct = conntypes.get(CONNTYPE_PING)
        return ct.result if isinstance(ct, PingConnectionType) else None


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
        FailedPingError: Every failure, as in 0.1.x (``except
            FailedPingError`` in a server browser catches them all): no
            reply within ``timeout`` (a :class:`~peng3dnet.errors.TimedOutError`);
            :class:`~peng3dnet.errors.PingUnreachableError` (also a
            ``NetworkError``) when the server could not be reached;
            :class:`~peng3dnet.errors.PingClosedError` (also a
            ``ConnectionClosedError``) when it closed without replying.

    Thread safety: any thread; blocks the caller.
    """
    client = clientcls(peng, addr, cfg, conntype=CONNTYPE_PING)
    client.ping_request_data = dict(data or {})  # type: ignore[attr-defined]
    try:
        client.runAsync()
    except NetworkError as exc:
        raise PingUnreachableError(f"cannot ping {client.addr}: {exc}", exc.reason) from exc
    try:
        client.wait_for_close(timeout)
    except TimedOutError:
        raise FailedPingError(f"no ping reply from {client.addr} within {timeout} s") from None
    finally:
        client.stop()
        client.join(5.0)
    ct = client.conntypes.get(CONNTYPE_PING)
    result = ct.result if isinstance(ct, PingConnectionType) else None
    if result is None:
        raise PingClosedError(f"server closed without a ping reply ({client.close_reason})", client.close_reason)
    return result
