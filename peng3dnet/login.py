"""Login: the server's ``authenticate`` hook between ``settype`` and the
registry handshake (composed into :class:`~peng3dnet.server.Server` as
``server._login``).

Theory of operation
-------------------
A server that has a hook (the ``authenticate=`` argument, or an override of
:meth:`Server.authenticate`) offers the ``auth`` extension in ``hello``; a
client of ours answers with its credentials in ``settype`` (see
:data:`~peng3dnet.constants.CREDENTIALS_KEY`).  When the ``classic``
connection type asks for the registry handshake, :meth:`Login.gate` holds
it back and runs the hook (on a worker thread, or on the network thread
with ``net.auth.workers = 0``).  The decision comes back to the network
thread, which either sends the handshake (accepted) or closes the
connection with ``"auth:<reason>"`` (refused, timed out after
``net.timeout.auth``, or the client could not send credentials: a 0.1.x
client).  Only then is ``peng3dnet:server.connection.auth`` emitted, so a
subscriber sees one decision per connection, on the network thread.

Nothing here blocks the network thread unless the application asks for it
(``workers = 0``); a decision that arrives after the time-out or after the
client left is dropped.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import TYPE_CHECKING, Any

from .constants import CREDENTIALS_KEY
from .errors import AuthenticationError
from .protocol.codec import pack
from .userlog import report_user_error

if TYPE_CHECKING:  # pragma: no cover
    from .link import Link
    from .server import Server

__all__ = ["Login", "AUTH_PENDING", "auth_reason"]

log = logging.getLogger("peng3dnet.login")

AUTH_PENDING = "pending"
"""``Link.auth`` while the hook runs (``None``: not asked yet; ``True``:
accepted; ``False``: refused)."""

_MAX_REASON = 100
MAX_CREDENTIALS = 64 * 1024
"""Largest credentials (msgpack bytes) passed to the hook; more: ``auth:toolarge``."""


def auth_reason(reason: Any) -> str:
    """The close reason of a refusal: ``"auth:"`` and a short, printable
    form of ``reason`` (``"refused"`` when empty)."""
    text = " ".join(str(reason if reason is not None else "").split())[:_MAX_REASON]
    return "auth:" + (text or "refused")


class _Workers:
    """A few daemon threads running hook calls in order of arrival."""

    def __init__(self, n: int) -> None:
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._run, name=f"peng3dnet auth {i}", daemon=True) for i in range(n)
        ]
        for t in self._threads:
            t.start()

    def submit(self, fn: Any, *args: Any) -> None:
        self._jobs.put((fn, args))

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, args = job
            fn(*args)

    def stop(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)


class Login:
    """The login step of one server.

    Thread safety: :meth:`gate` and the decisions run on the network thread;
    the hook runs on a worker thread (``net.auth.workers`` of them, started
    at the first login) or, with ``workers = 0``, on the network thread.
    """

    def __init__(self, server: Server, enabled: bool) -> None:
        self.server = server
        self.enabled = enabled
        """Whether the server has a hook."""
        self._workers: _Workers | None = None
        self._lock = threading.Lock()

    def gate(self, link: Link) -> bool:
        """Called where the registry handshake would be sent (network
        thread).  Returns whether to send it now; ``False``: the login runs
        (or failed) and :meth:`_decided` sends it later."""
        if link.auth is True or not self.enabled:
            return True
        if link.auth is not None:  # pending, or refused (closing): nothing to send
            return False
        server = self.server
        owner = link.owner
        if "auth" not in link.proto.negotiated:
            log.info("! server cid=%s: refused, the client cannot send credentials (a 0.1.x client?)", link.cid)
            self._decided(link, False, None, "auth:unsupported")
            return False
        credentials = link.proto.peer_credentials
        link.proto.peer_settype.pop(CREDENTIALS_KEY, None)  # kept by the hook's call only
        if len(pack(credentials)) > MAX_CREDENTIALS:
            log.info("! server cid=%s: refused, credentials over %d bytes", link.cid, MAX_CREDENTIALS)
            self._decided(link, False, None, "auth:toolarge")
            return False
        link.auth = AUTH_PENDING
        cfg = server.cfg
        timeout = float(cfg["net.timeout.auth"])
        if timeout > 0:
            link.auth_timer = server._reactor.call_later(timeout, lambda: self._timed_out(link, timeout))
        workers = int(cfg["net.auth.workers"])
        if workers <= 0:
            self._decided(link, *self._ask(link, owner, credentials))
            return False
        with self._lock:
            if self._workers is None:
                self._workers = _Workers(workers)
            self._workers.submit(self._job, link, owner, credentials)
        return False

    def _job(self, link: Link, owner: Any, credentials: Any) -> None:
        """One hook call (a worker thread); the decision goes to the network thread."""
        if link.auth is not AUTH_PENDING or link.proto.closed:
            return  # timed out or gone while it waited for a worker
        result = self._ask(link, owner, credentials)
        self.server._reactor.call_soon(self._decided, link, *result)

    def _ask(self, link: Link, owner: Any, credentials: Any) -> tuple[bool, Any, str | None]:
        """Run the hook: ``(ok, data, close reason)`` (the hook's thread)."""
        try:
            result = self.server.authenticate(owner, credentials)
        except AuthenticationError as exc:
            return False, None, auth_reason(exc.reason if exc.reason is not None else exc)
        except BaseException:  # a hook must not kill a worker or the network thread
            report_user_error("! server cid=%s: authenticate raised; refusing the client", link.cid)
            return False, None, "auth:error"
        if result is None or result is False:
            return False, None, "auth:refused"
        return True, (None if result is True else result), None

    def _timed_out(self, link: Link, timeout: float) -> None:
        if link.auth is AUTH_PENDING:
            link.auth_timer = None
            log.info("! server cid=%s: no login decision after %.1f s", link.cid, timeout)
            self._decided(link, False, None, "auth:timeout")

    def _decided(self, link: Link, ok: bool, data: Any, reason: str | None) -> None:
        """Apply a decision (network thread)."""
        if link.auth is True or link.auth is False:
            return  # already decided (a late answer after the time-out)
        timer = link.auth_timer
        if timer is not None:
            timer.cancel()
            link.auth_timer = None
        if link.proto.closed:
            link.auth = False
            return
        server = self.server
        owner = link.owner
        link.auth = ok
        if ok:
            owner.auth_data = data
            owner.authenticated = True
            server._emit("peng3dnet:server.connection.auth", {"client": owner, "ok": True, "reason": None})
            if link.proto.closed:  # closed by a handler of that event (a policy of the program's)
                return
            server._send_handshake(link)
            return
        log.info("server cid=%s: login refused (%s)", link.cid, reason)
        server._emit("peng3dnet:server.connection.auth", {"client": owner, "ok": False, "reason": reason})
        server._close_link(link, reason)

    def stop(self) -> None:
        """Let the worker threads end (any thread)."""
        with self._lock:
            if self._workers is not None:
                self._workers.stop()
                self._workers = None
