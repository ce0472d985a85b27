"""The event bus: blinker signals named by peng3d event strings.

Theory of operation
-------------------
Each event name (``peng3dnet:client.recv``) is one blinker signal in a
private :class:`blinker.Namespace`.  A subscription is a *pattern* (an exact
name, or a ``fnmatch`` pattern such as ``peng3dnet:*``) plus a handler and an
optional sender.  It is connected to every existing signal whose name
matches, and to every matching signal created later (extension events).

Handlers take peng3d's signature ``handler(event, data)``, so one function
can serve both this bus and ``peng.addEventListener``.  They are wrapped in a
receiver that catches and logs any exception, so a raising handler never
stops the other handlers or the network loop.

References: by default the bus holds a *strong* reference to the handler (a
lambda does not vanish); pass ``weak=True`` to hold it weakly (a bound
method is then dropped when its object dies, and the subscription with it).

Thread safety: subscribe/unsubscribe from any thread.  Handlers run
synchronously on the thread that emits the event (see the catalog); use
:class:`~peng3dnet.events.dispatch.MainThreadDispatcher` to run them on the
game's main thread instead.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

import blinker

from ..userlog import failure_key, report_user_error
from .catalog import CATALOG

__all__ = ["ANY", "Handler", "Route", "signal", "subscribe", "unsubscribe", "emit", "has_receivers", "namespace"]

log = logging.getLogger(__name__)

ANY = blinker.ANY
"""Sender wildcard: subscribe to the events of every Server and Client."""

Handler = Callable[[str, dict[str, Any]], Any]

namespace = blinker.Namespace()
"""The private namespace holding every peng3dnet signal."""

_lock = threading.RLock()
_subs: list[_Subscription] = []
_MAGIC = frozenset("*?[")


class _Subscription:
    __slots__ = ("pattern", "sender", "_ref", "_strong", "live", "__weakref__")

    def __init__(self, pattern: str, handler: Handler, sender: Any, weak: bool) -> None:
        self.pattern = pattern
        self.sender = sender
        self.live = True
        """Until unsubscribed: an emission already under way (a peer's cached
        receivers of recv/send) skips it from then on, as blinker's own
        emission does."""
        self._strong: Handler | None = None
        self._ref: Callable[[], Handler | None] | None = None
        if weak:
            # Dropped with its object, at once (not at the next event it
            # matches): the weak reference's callback removes it.
            me = weakref.ref(self)

            def gone(_ref: Any) -> None:
                sub = me()
                if sub is not None:
                    _remove(sub)

            if hasattr(handler, "__self__") and hasattr(handler, "__func__"):
                self._ref = weakref.WeakMethod(handler, gone)  # type: ignore[arg-type]
            else:
                self._ref = weakref.ref(handler, gone)
        else:
            self._strong = handler

    @property
    def handler(self) -> Handler | None:
        if self._strong is not None:
            return self._strong
        assert self._ref is not None
        return self._ref()

    def matches(self, name: str) -> bool:
        if _MAGIC.isdisjoint(self.pattern):
            return name == self.pattern
        return fnmatch.fnmatchcase(name, self.pattern)

    def __call__(self, sender: Any, event: str, data: dict[str, Any]) -> None:  # blinker passes event=, data=
        if not self.live:
            return
        handler = self._strong
        if handler is None:
            handler = self._ref() if self._ref is not None else None
            if handler is None:
                _remove(self)
                return
        try:
            handler(event, data)
        except Exception:
            # (the same failure again within 10 s is counted: a handler
            # failing for every packet of a flood wrote a traceback each)
            report_user_error("! event handler %r for %s raised", handler, event, key=failure_key(handler))


class _Signal(blinker.NamedSignal):
    """A NamedSignal that counts changes to its receivers (for :class:`Route`)."""

    def __init__(self, name: str, doc: str | None = None) -> None:
        super().__init__(name, doc)
        self.version = 0
        """Bumped by every connect() and disconnect()."""

    def connect(self, receiver: Any, sender: Any = ANY, weak: bool = True) -> Any:
        try:
            return super().connect(receiver, sender, weak)
        finally:
            self.version += 1

    def disconnect(self, receiver: Any, sender: Any = ANY) -> None:
        try:
            super().disconnect(receiver, sender)
        finally:
            self.version += 1


class Route:
    """The receivers of one event from one sender, looked up once.

    The per-packet events (``recv``/``send``) go through a route instead of
    :func:`emit`: blinker's sender filtering builds a set and walks a
    generator on every send, which costs more than a small packet's decode.
    A route caches the result until the signal's receivers change.  The
    cache is used only while every receiver is a subscription made by this
    module (strongly held); anything else (say, a weak receiver connected to
    the signal with blinker directly) makes the cached receivers ``None``, and the
    caller falls back to :func:`emit`, which handles every case.

    Use: ``version, targets = route.cache``; if ``version !=
    route.sig.version``, ``targets = route.refresh(sender)``.

    Args:
        name: The event name.

    Thread safety: any thread; a route caches for the sender passed to
    :meth:`refresh`, so keep one route per (event, sender).
    """

    __slots__ = ("name", "sig", "cache")

    def __init__(self, name: str) -> None:
        self.name = name
        self.sig: _Signal = signal(name)  # type: ignore[assignment]
        self.cache: tuple[int, tuple[_Subscription, ...] | None] = (-1, ())
        """``(signal version, receivers)``: the receivers to call as
        ``r(sender, event=name, data=data)``, or ``None`` when :func:`emit`
        must be used.  One tuple, replaced at once, so concurrent readers
        never pair a version with another version's receivers."""

    def refresh(self, sender: Any) -> tuple[_Subscription, ...] | None:
        """Recompute the receivers for ``sender``, cache and return them."""
        sig = self.sig
        version = sig.version  # read first: a change during the walk forces another refresh
        found = tuple(sig.receivers_for(sender)) if sig.receivers else ()
        targets = found if all(type(r) is _Subscription for r in found) else None
        self.cache = (version, targets)  # type: ignore[assignment]
        return targets  # type: ignore[return-value]


def _connect(sig: blinker.NamedSignal, sub: _Subscription) -> None:
    sig.connect(sub, sender=sub.sender, weak=False)


def _remove(sub: _Subscription) -> None:
    sub.live = False
    with _lock:
        if sub in _subs:
            _subs.remove(sub)
        for sig in list(namespace.values()):
            sig.disconnect(sub)


def signal(name: str, doc: str | None = None) -> blinker.NamedSignal:
    """Return the signal of an event, creating it (and wiring matching
    pattern subscriptions) on first use.

    Thread safety: any thread.
    """
    sig = namespace.get(name)
    if sig is not None:
        return sig
    with _lock:
        sig = namespace.get(name)
        if sig is None:
            sig = _Signal(name, doc)
            # (over a copy: a weak subscription whose object dies meanwhile,
            # the collector running inside blinker's connect, removes itself)
            for sub in list(_subs):
                if sub.matches(name) and sub in _subs:
                    _connect(sig, sub)
            # Published once wired: another thread's first emission of the
            # name (found without the lock) reached no pattern subscriber.
            namespace[name] = sig
        return sig


def subscribe(pattern: str, handler: Handler | None = None, *, sender: Any = ANY, weak: bool = False) -> Any:
    """Subscribe ``handler(event, data)`` to the events matching ``pattern``.

    Usable as a decorator: ``@subscribe("peng3dnet:client.recv")``.

    Args:
        pattern: An event name, or an ``fnmatch`` pattern (``peng3dnet:*``,
            ``peng3dnet:server.connection.*``).
        handler: The callable; omitted when used as a decorator.
        sender: Only events of this Server or Client (default: all).
        weak: Hold the handler weakly (see the module doc).

    Returns:
        The handler (so the decorator leaves the function unchanged).

    Thread safety: any thread.
    """
    if handler is None:
        return lambda func: subscribe(pattern, func, sender=sender, weak=weak)
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"invalid event pattern {pattern!r}")
    sub = _Subscription(pattern, handler, sender, weak)
    with _lock:
        _subs.append(sub)
        if _MAGIC.isdisjoint(pattern):
            _connect(signal(pattern), sub)
        else:
            for name, sig in list(namespace.items()):
                if sub.matches(name):
                    _connect(sig, sub)
    return handler


def unsubscribe(pattern: str, handler: Handler, *, sender: Any = ANY) -> bool:
    """Remove the subscriptions of ``handler`` to ``pattern`` (and ``sender``).

    Returns:
        Whether anything was removed.

    Thread safety: any thread.
    """
    with _lock:
        found = [s for s in list(_subs) if s.pattern == pattern and s.sender is sender and s.handler == handler]
        for sub in found:
            _remove(sub)
    return bool(found)


def has_receivers(name: str) -> bool:
    """Whether anyone subscribed to ``name`` (cheap: for an extension that
    wants to skip building event data nobody reads)."""
    sig = namespace.get(name)
    if sig is None:
        sig = signal(name)  # as emit() would: wires the matching pattern subscriptions
    return bool(sig.receivers)


def emit(name: str, sender: Any, data: dict[str, Any]) -> None:
    """Deliver an event to its subscribers on the calling thread.

    Thread safety: any thread; handlers run on it.
    """
    sig = namespace.get(name)
    if sig is None:
        sig = signal(name)
    if sig.receivers:
        # Same delivery as Signal.send (sender filtering, weak references),
        # minus its per-call coroutine check: receivers here are plain
        # callables, and this runs once per packet.
        for receiver in sig.receivers_for(sender):
            receiver(sender, event=name, data=data)


for _name, _spec in CATALOG.items():
    signal(_name, _spec.doc)
del _name, _spec
