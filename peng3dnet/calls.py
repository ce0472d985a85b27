"""Calls: a request that expects an answer (composed into every peer as
``peer._calls``).

Theory of operation
-------------------
On connections that negotiated the ``calls`` extension, ``call(ptype, data)``
sends ``[call id, packet id, data]`` (id 34) and waits on a
:class:`concurrent.futures.Future`.  The other side queues the request like
a packet of that type (same process queue, same flow control, same
``SmartPacket`` check), runs the packet's handler where handlers run and
sends back ``[call id, status, value]`` (id 35): what the handler returned,
or the exception it raised, or "nobody can answer".  Replies are taken on
the network thread, never queued, so a handler that waits for a call of its
own does not wait behind itself: unless that connection's process queue is
full (reading from it paused, the reply in the socket behind the queued
packets): then the call times out (a known limit, in the README).

Every call has a deadline (a reactor timer); a reply after it, or for a call
of another connection, or for an unknown id, is dropped.  A call whose
connection closes fails at once with :class:`ConnectionClosedError`.

Thread safety: :meth:`Calls.start` from any thread; :meth:`on_request`,
:meth:`on_reply` and :meth:`closed` on the network thread; the answering
wrapper on the thread that runs handlers.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import threading
from typing import TYPE_CHECKING, Any

from .errors import (
    CallError,
    ConnectionClosedError,
    LocalProtocolError,
    Peng3dNetError,
    RemoteCallError,
    TimedOutError,
)
from .packet import Packet, SmartPacket, smart_check
from .plans import NO_EVENT, thread_pack
from .protocol.connection import CALL_ERROR, CALL_OK, CALL_UNANSWERED, CallReplied, CallRequested
from .protocol.describe import describe

if TYPE_CHECKING:  # pragma: no cover
    from .link import Link
    from .peer import Peer

__all__ = ["Calls", "CallFuture"]

log = logging.getLogger("peng3dnet.calls")

_MAX_MESSAGE = 1000  # characters of a remote error's message kept


def _text(value: Any, width: int) -> str:
    """A peer's string cut to ``width``; any other value described
    (bounded: a 1,000-level value must not make ``str()`` recurse)."""
    return value[:width] if isinstance(value, str) else describe(value, width)


class CallFuture(concurrent.futures.Future):  # type: ignore[type-arg]
    """The pending answer of one call: a :class:`concurrent.futures.Future`
    (``result(timeout)``, ``done()``, ``add_done_callback()``, whose
    callbacks run on the network thread) that also names the call."""

    call_id: int
    cid: int | None


class Calls:
    """The calls of one peer (see the module docstring)."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[Any, CallFuture, Any]] = {}  # call id -> (link or session, future, timer)

    # --- the calling side ---------------------------------------------------------------
    def start(self, link: Link, ptype: Any, data: Any, timeout: float, callback: Any = None) -> CallFuture:
        """Send a call on ``link`` and return its future (any thread).

        Raises:
            LocalProtocolError: The peer cannot answer calls (0.1.x), the
                connection is not active yet, ``ptype`` is internal, or
                ``data`` cannot be encoded.
            UnknownPacketError: ``ptype`` is not registered.
            ConnectionClosedError: The connection is closed.
        """
        peer = self.peer
        pid = peer._lookup(ptype)[1]
        fut = CallFuture()
        fut.cid = link.cid
        call_id = fut.call_id = next(self._ids)
        frame = link.proto.encode_call(call_id, pid, data, thread_pack)
        if callback is not None:
            fut.add_done_callback(lambda f: peer._queue_call(link, callback, fut))
        fut.add_done_callback(self._on_done)  # (a cancel() forgets the call)
        key = _key(link)
        with self._lock:
            self._pending[call_id] = (key, fut, None)
        try:
            peer._send_frame(link, frame, pid, NO_EVENT)
        except BaseException:
            with self._lock:
                self._pending.pop(call_id, None)
            raise
        if timeout is not None and timeout > 0:
            timer = peer._reactor.call_later(timeout, lambda: self._expire(call_id, timeout))
            with self._lock:
                if call_id in self._pending:
                    self._pending[call_id] = (key, fut, timer)
                else:
                    timer.cancel()
        return fut

    def _on_done(self, fut: concurrent.futures.Future[Any]) -> None:
        """A call's future is done: when the program cancelled it, forget
        the call (a late reply is then dropped as unknown) (the thread that
        called ``cancel()``, or the network thread)."""
        if fut.cancelled() and isinstance(fut, CallFuture):
            self.forget(fut.call_id)

    def _expire(self, call_id: int, timeout: float) -> None:
        with self._lock:
            entry = self._pending.pop(call_id, None)
        if entry is not None:
            _settle(entry[1], exc=TimedOutError(f"call {call_id} got no reply within {timeout} s"))

    def on_reply(self, link: Link, o: CallReplied) -> None:
        """An answer arrived (network thread)."""
        with self._lock:
            entry = self._pending.get(o.call_id)
            if entry is None or entry[0] is not _key(link):
                entry = None  # late (timed out), unknown, or another connection's call: dropped
            else:
                del self._pending[o.call_id]
        if entry is None:
            log.debug("= %s cid=%s: reply to call %d dropped (late or unknown)", self.peer._role, link.cid, o.call_id)
            return
        _, fut, timer = entry
        if timer is not None:
            timer.cancel()
        if o.status == CALL_OK:
            _settle(fut, o.value)
            return
        value = o.value if isinstance(o.value, dict) else {}
        rtype = value.get("type")
        message = value.get("message")
        _settle(
            fut,
            exc=RemoteCallError(
                _text(message, _MAX_MESSAGE) if message is not None else "remote error",
                remote_type=_text(rtype, 100) if rtype is not None else "",
                unanswered=o.status == CALL_UNANSWERED,
            ),
        )

    def closed(self, link: Link, reason: str | None) -> None:
        """``link`` closed: its calls fail now (network thread)."""
        key = _key(link)
        with self._lock:
            gone = [cid for cid, entry in self._pending.items() if entry[0] is key]
            entries = [self._pending.pop(cid) for cid in gone]
        for _, fut, timer in entries:
            if timer is not None:
                timer.cancel()
            _settle(fut, exc=ConnectionClosedError(f"connection closed before the reply ({reason})", reason))

    def forget(self, call_id: int) -> None:
        """Drop a call nobody waits for any more (any thread)."""
        with self._lock:
            entry = self._pending.pop(call_id, None)
        if entry is not None and entry[2] is not None:
            entry[2].cancel()

    @property
    def pending(self) -> int:
        """Calls waiting for their reply (any thread)."""
        return len(self._pending)

    # --- the answering side -------------------------------------------------------------
    def on_request(self, link: Link, o: CallRequested) -> Any:
        """A call arrived (network thread).  Returns what to queue for the
        handler thread (``answer(msg, cid)``), or ``None`` when it was
        answered at once (no handler)."""
        peer = self.peer
        pobj = peer.registry.find_obj(o.pid)
        if pobj is None or not isinstance(pobj, Packet):
            self._reply(link, o.call_id, CALL_UNANSWERED, {"type": "UnknownPacketError", "message": f"no packet {o.pid}"})
            return None
        if not getattr(pobj, "answers", False):
            # Opt-in: a handler written for plain messages must not send
            # back whatever it happens to return.
            self._reply(link, o.call_id, CALL_UNANSWERED, {
                "type": "NotCallable", "message": f"packet {peer.registry.get_name(o.pid)!r} does not answer calls"})
            return None
        cls = type(pobj)
        smart: SmartPacket | None = None
        if cls._receive is Packet._receive or cls._receive is SmartPacket._receive:
            fn = pobj.receive  # the base _receive would drop the return value
            smart = pobj if isinstance(pobj, SmartPacket) else None
        else:
            fn = pobj._receive  # the application's own checks come first; it returns the answer
        call_id = o.call_id

        def answer(msg: Any, cid: int | None) -> None:
            try:
                if smart is not None and not smart_check(smart, cid, receiving=True):
                    self._reply(link, call_id, CALL_UNANSWERED, {"type": "SmartPacketInvalid", "message": "not valid now"})
                    smart._invalid(cid, "received")
                    return
                value = fn(msg, cid)
            except CallError as exc:  # an answer, not a bug: not logged
                self._reply(link, call_id, CALL_ERROR, {"type": type(exc).__name__, "message": str(exc)})
                return
            except BaseException as exc:
                # Answered either way; the handler's error is then reported
                # as any handler's (a BaseException goes on to stop the peer).
                self._reply(link, call_id, CALL_ERROR, {"type": type(exc).__name__, "message": str(exc)})
                raise
            self._reply(link, call_id, CALL_OK, value)

        answer.__qualname__ = f"call of {cls.__name__}"
        return answer

    def _reply(self, link: Link, call_id: int, status: int, value: Any) -> None:
        """Send an answer (the handler's thread, or the network thread)."""
        try:
            try:
                frame = link.proto.encode_reply(call_id, status, value, thread_pack)
            except LocalProtocolError as exc:
                if link.proto.closed:
                    return
                frame = link.proto.encode_reply(
                    call_id, CALL_ERROR, {"type": "LocalProtocolError", "message": f"the answer cannot be sent: {exc}"},
                    thread_pack,
                )
            self.peer._send_frame(link, frame, -1, NO_EVENT, cork=False)
        except ConnectionClosedError:
            pass  # the caller is gone; its side fails the call
        except Peng3dNetError as exc:  # e.g. WriteBufferFullError: the caller times out
            log.info("! %s cid=%s: the answer to call %d cannot be sent: %s", self.peer._role, link.cid, call_id, exc)


def _settle(fut: CallFuture, value: Any = None, exc: BaseException | None = None) -> None:
    """Set a call's outcome, unless the program cancelled its future
    meanwhile (then nobody wants it: a cancel racing the reply must not
    raise InvalidStateError into the network thread)."""
    try:
        if exc is None:
            fut.set_result(value)
        else:
            fut.set_exception(exc)
    except concurrent.futures.InvalidStateError:
        pass


def _key(link: Link) -> Any:
    """What a call belongs to: its connection, or the session the
    connection carries (a resumed session answers on a new socket)."""
    return link.session if link.session is not None else link


def wait_result(peer: Peer, fut: CallFuture, timeout: float | None) -> Any:
    """Block until ``fut`` is done and return its result (see ``Peer.call``)."""
    if peer._reactor.in_loop() and not peer._polled_here():
        raise LocalProtocolError(
            "call() on the network thread (an inline handler or an event handler) would wait for itself; "
            "use call_async()"
        )
    # The call's own timer fails it at ``timeout``; the extra second covers
    # a loop that stopped before the timer could fire.
    limit = None if timeout is None or timeout <= 0 else timeout + 1
    if peer._polled_here():
        peer._drive(fut.done, limit)
    else:
        peer._relay.before_wait()
    try:
        return fut.result(limit)
    except TimedOutError:
        raise  # the call's own time-out (a TimeoutError too: let it through as it is)
    except concurrent.futures.TimeoutError:
        peer._calls.forget(fut.call_id)
        raise TimedOutError(f"call {fut.call_id} got no reply") from None
