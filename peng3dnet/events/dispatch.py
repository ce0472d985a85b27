"""Main-thread delivery of events for pyglet / peng3d games.

Network threads emit events; pyglet and peng3d may only be touched from the
main thread.  A :class:`MainThreadDispatcher` subscribes on the bus with a
receiver that only *queues* ``(handler, event, data)``; :meth:`~MainThreadDispatcher.pump`,
called on the main thread, runs the queued handlers in emission order.  Each
queued call is taken out of the queue exactly once (``deque.popleft`` is
atomic), so no event is lost or run twice, whatever thread emitted it.

The one-call recipe for a pyglet game is :func:`attach_to_pyglet`: every
clock tick it calls ``process()`` of the given Server/Client (so packet
handlers run on the main thread too) and then pumps the events.

pyglet is imported only inside :meth:`MainThreadDispatcher.attach`; the rest
works without pyglet (call :meth:`~MainThreadDispatcher.pump` from any loop).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from typing import Any

from ..userlog import failure_key, report_user_error
from .bus import ANY, Handler, subscribe, unsubscribe

__all__ = ["MainThreadDispatcher", "attach_to_pyglet"]

log = logging.getLogger(__name__)


class MainThreadDispatcher:
    """Queue events from any thread and run their handlers on one thread.

    Args:
        peers: Servers/Clients whose ``process()`` :meth:`pump` calls first.
        poll: Call the peers' ``poll(0)`` instead: their network I/O runs
            in :meth:`pump` too, so no thread is needed at all (the peers
            must not have called ``runAsync()``), and every event, peng3d's
            included, is emitted on the pumping thread.
        peng_events: Deliver what the peers forward to ``peng.sendEvent``
            (the ``peng3dnet:*`` events seen by ``peng.addEventListener``
            handlers) inside :meth:`pump`, on the pumping thread, instead of
            on the network thread where touching the GUI is unsafe.
    """

    def __init__(self, *, peers: Iterable[Any] = (), poll: bool = False, peng_events: bool = False) -> None:
        self.peers: list[Any] = list(peers)
        """Servers/Clients processed by every :meth:`pump`."""
        self.poll = poll
        """Whether :meth:`pump` polls the peers (see the class arguments)."""
        # (handler, event, data, live): ``live`` is the subscription's
        # one-item list, [False] once unsubscribed (its queued calls are
        # skipped), or None (the peng forwarder).
        self._queue: deque[tuple[Handler, str, dict[str, Any], list[bool] | None]] = deque()
        self._forwarders: list[tuple[Any, Any]] = []
        """(peer, the forwarder installed on it) for ``peng_events``: only
        those are removed by :meth:`close` (another dispatcher's stay)."""
        if peng_events:
            for peer in self.peers:
                peng = peer.peng
                if peng is not None:
                    forward = self._peng_forwarder(peng)
                    peer.set_peng_forwarder(forward)
                    self._forwarders.append((peer, forward))
        self._subs: list[tuple[str, Any, Any, Any, list[bool]]] = []
        self._clock: Any = None

    def subscribe(self, pattern: str, handler: Handler | None = None, *, sender: Any = ANY) -> Any:
        """Subscribe ``handler(event, data)``; it will run inside :meth:`pump`.

        Same arguments as :func:`peng3dnet.events.subscribe` (always a strong
        reference); usable as a decorator.

        Thread safety: any thread.
        """
        if handler is None:
            return lambda func: self.subscribe(pattern, func, sender=sender)
        queue = self._queue
        target: Handler = handler
        live = [True]

        def enqueue(event: str, data: dict[str, Any]) -> None:
            queue.append((target, event, data, live))

        self._subs.append((pattern, enqueue, sender, handler, live))  # type: ignore[arg-type]
        subscribe(pattern, enqueue, sender=sender)
        return handler

    def unsubscribe(self, pattern: str, handler: Handler, *, sender: Any = ANY) -> bool:
        """Remove a subscription made with :meth:`subscribe`.

        Thread safety: any thread.
        """
        removed = False
        for entry in list(self._subs):
            pat, enqueue, snd, orig, live = entry  # type: ignore[misc]
            if pat == pattern and orig == handler and snd is sender:
                unsubscribe(pat, enqueue, sender=snd)
                live[0] = False  # its calls still queued do not run
                self._subs.remove(entry)
                removed = True
        return removed

    def _peng_forwarder(self, peng: Any) -> Handler:
        queue = self._queue
        send = peng.sendEvent

        def forward(event: str, data: dict[str, Any]) -> None:
            queue.append((send, event, data, None))  # sendEvent(event, data) inside pump()

        return forward

    @property
    def pending(self) -> int:
        """Number of queued handler calls (those of handlers unsubscribed
        since they were queued, which will not run, not counted)."""
        return sum(1 for *_, live in list(self._queue) if live is None or live[0])

    def pump(self, max_events: int | None = None) -> int:
        """Process the peers' packets, then run queued handlers in order.

        Args:
            max_events: Run at most this many queued handler calls (the rest
                stay queued for the next pump); ``None`` for all those queued
                when it starts running them (what is queued meanwhile, by
                the network thread or by the handlers, waits for the next
                pump: a frame is bounded however fast events come).

        Returns:
            The number of handler calls run.

        Thread safety: call it from the one thread that should run the
        handlers (the main thread).
        """
        for peer in self.peers:
            if self.poll:
                peer.poll(0)
            else:
                peer.process()
        queue = self._queue
        left = len(queue) if max_events is None else -1  # (None: the calls queued now, skipped ones too)
        n = 0
        while max_events is None or n < max_events:
            if left == 0:
                break
            left -= 1
            try:
                handler, event, data, live = queue.popleft()
            except IndexError:
                break
            if live is not None and not live[0]:  # unsubscribed since it was queued
                continue
            n += 1
            try:
                handler(event, data)
            except Exception:
                report_user_error("! main-thread event handler %r for %s raised", handler, event,
                                  key=failure_key(handler))
        return n

    def _tick(self, dt: float) -> None:
        self.pump()

    def attach(self, clock: Any = None, interval: float | None = None) -> MainThreadDispatcher:
        """Run :meth:`pump` from a pyglet clock (default: ``pyglet.clock``).

        Args:
            clock: A pyglet clock (module or ``Clock`` instance).
            interval: Seconds between pumps; ``None`` pumps on every tick
                (every frame under ``pyglet.app.run()``).

        Returns:
            ``self``.

        Thread safety: main thread only.
        """
        if clock is None:
            import pyglet.clock  # only the game side needs pyglet

            clock = pyglet.clock
        self.detach()
        if interval is None:
            clock.schedule(self._tick)
        else:
            clock.schedule_interval(self._tick, interval)
        self._clock = clock
        return self

    def detach(self) -> None:
        """Stop pumping from the clock given to :meth:`attach`.

        Thread safety: main thread only.
        """
        if self._clock is not None:
            self._clock.unschedule(self._tick)
            self._clock = None

    def close(self) -> None:
        """Detach and remove every subscription of this dispatcher."""
        self.detach()
        for pat, enqueue, snd, _orig, live in self._subs:  # type: ignore[misc]
            unsubscribe(pat, enqueue, sender=snd)
            live[0] = False
        self._subs.clear()
        self._queue.clear()
        # Only the forwarders this dispatcher installed, still in place: a
        # dispatcher without peng_events, or one replaced since, used to
        # send the peng3d events back to the network thread.
        for peer, forward in self._forwarders:
            if peer.peng_forwarder is forward:
                peer.set_peng_forwarder(None)
        self._forwarders.clear()


def attach_to_pyglet(*peers: Any, clock: Any = None, interval: float | None = None, poll: bool = False,
                     peng_events: bool = False) -> MainThreadDispatcher:
    """The one call a pyglet game needs: process ``peers`` and deliver events
    on the main thread every clock tick.

    Example::

        client.runAsync()
        net = attach_to_pyglet(client)
        net.subscribe("peng3dnet:client.*", on_net_event)  # runs on the main thread

        # or without any thread: the clock polls the network too
        net = attach_to_pyglet(client, poll=True)

    ``poll`` and ``peng_events``: see :class:`MainThreadDispatcher`.

    Thread safety: main thread only.
    """
    return MainThreadDispatcher(peers=peers, poll=poll, peng_events=peng_events).attach(clock, interval)
