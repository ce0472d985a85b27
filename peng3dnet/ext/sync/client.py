"""The client side of state sync: :class:`SyncClient`, interpolation and prediction.

Theory of operation
-------------------
:class:`SyncClient` rebuilds each view from the server's snapshots and keeps
the authoritative state (:meth:`~SyncClient.authoritative`).  A snapshot is
applied to the view of its base tick (kept for ``history`` ticks; ``-1`` is
the empty view of a full snapshot), and the result must match the
snapshot's checksum.  A snapshot whose base is missing, that is malformed,
or whose result does not match counts a desync (``stats["desyncs"]``, event
``peng3dnet:sync.desync``): it is dropped and the client asks for a full
snapshot.  Every full snapshot, and every ``ack_every``-th delta, is
acknowledged at once; inputs always carry the latest ack.

Rendering: snapshots are buffered with their server time, and
:meth:`~SyncClient.render_view` shows the other entities ``interp_delay``
seconds in the past, interpolating numeric fields between the two snapshots
around that time (:func:`~peng3dnet.ext.sync.algebra.interpolate`).  The
offset between the local clock and server time is the smallest seen, so a
late snapshot does not pull the picture back.

Prediction: the local player's entity is predicted.  Every input is applied
at once with the game's ``predict(state, input)`` (the same pure function
the server applies), and when a snapshot says which input the server
applied last (``ai``), the inputs it has not applied yet are replayed on top
of the authoritative state (reconciliation).  ``stats`` records the
prediction error found at each reconciliation.

Threads: snapshots arrive through a packet handler registered for
``SNAPSHOT_PACKET``, so they are decoded and applied where the application
processes the client's packets: the thread that calls ``client.process()``
(``process_async()``, or the game loop each frame, as
:func:`~peng3dnet.events.attach_to_pyglet` does), or the network thread with
``net.process.inline``.  A client whose packets are never processed never
sees a snapshot.  The events ``peng3dnet:sync.snapshot`` ``{tick, view}`` and
``peng3dnet:sync.desync`` ``{tick, reason}`` are emitted on that same thread
(when the client's events are enabled; nothing here needs them).
:meth:`~SyncClient.render_view`, :meth:`~SyncClient.send_input` and the other
game-side methods may be called from any thread (the game's main thread).
This module never imports pyglet.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ...errors import Peng3dNetError
from ...packet import Packet
from .algebra import View, apply_delta, distance, interpolate
from .wire import (
    INPUT_PACKET,
    SNAPSHOT_PACKET,
    MalformedSnapshotError,
    ack_message,
    checksum,
    decode_snapshot,
    input_message,
    resync_message,
)

__all__ = ["SyncClient"]

log = logging.getLogger(__name__)

DESYNC_LINES = 10
"""Desyncs logged a second, at most (the rest are counted: ``stats``)."""


class _SnapshotPacket(Packet):
    """The client's handler of ``SNAPSHOT_PACKET``: hands each message to its
    SyncClient (the thread that runs ``process()``)."""

    def __init__(self, reg: Any, peer: Any, sync: SyncClient) -> None:
        super().__init__(reg, peer)
        self.sync = sync

    def receive(self, msg: Any, cid: int | None = None) -> None:
        self.sync.snapshot_received(msg)


class SyncClient:
    """The client side of :class:`~peng3dnet.ext.sync.SyncServer`: views, interpolation, prediction.

    Args:
        client: The :class:`~peng3dnet.net.Client` (create the SyncClient
            before connecting: it registers its packets).  Its packets must
            be processed (``client.process_async()``, ``process()`` in the
            game loop, or ``net.process.inline``): snapshots arrive through a
            packet handler.
        tick_rate: The server's tick rate.
        interp_delay: How far behind the newest snapshot other entities are
            rendered, in seconds.
        history: Snapshots kept as delta bases.
        predict: ``predict(state, inp) -> new state`` for the local player's
            entity (the function the server applies); ``None`` disables
            prediction.
        clock: Time source (default ``time.monotonic``).
        ack_every: Acknowledge every n-th snapshot on its own (inputs always
            carry the latest ack).  Deltas then span up to n ticks; for
            entities that change every tick they are no larger, and the
            server reads half the packets.

    Thread safety: the game-side methods may be called from any thread;
    snapshots are applied on the thread that processes the client's packets.

    .. versionchanged:: 0.2
       Snapshots come through a packet handler (``process()``), not the
       event bus.
    """

    def __init__(
        self,
        client: Any,
        *,
        tick_rate: float = 20.0,
        interp_delay: float = 0.1,
        history: int = 64,
        predict: Callable[[dict[str, Any], Any], dict[str, Any]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        ack_every: int = 2,
    ) -> None:
        self.client = client
        self.tick_rate = float(tick_rate)
        self.interp_delay = float(interp_delay)
        self.history = int(history)
        self.predict = predict
        self.clock = clock
        self.ack_every = max(1, int(ack_every))
        self.lock = threading.RLock()
        """Guards every attribute below."""
        self.tick = -1
        """Last server tick applied."""
        self.view: View = {}
        """The authoritative view at :attr:`tick`."""
        self.own: str | None = None
        """The entity this client controls (``you`` in snapshots)."""
        self.stats: dict[str, Any] = {
            "snapshots": 0,
            "full_snapshots": 0,
            "desyncs": 0,
            "reconciliations": 0,
            "prediction_error_max": 0.0,
            "prediction_error_last": 0.0,
        }
        """Counters (read them from any thread)."""
        self._desync_window = float("-inf")  # a desync's log lines: at most DESYNC_LINES a second
        self._desync_lines = 0
        self._desync_quiet = 0
        self._states: dict[int, View] = {}
        self._buffer: deque[tuple[float, View]] = deque(maxlen=max(4, history))
        self._offset: float | None = None  # local time - server time, smallest seen
        self._seq = 0
        self._pending: deque[tuple[int, Any]] = deque()
        self._predicted: dict[str, Any] | None = None
        self._pred_by_seq: dict[int, dict[str, Any]] = {}
        self._corrupt_next = False
        self._closed = False
        client.register_packet(SNAPSHOT_PACKET, _SnapshotPacket(client.registry, client, self))
        client.register_packet(INPUT_PACKET, Packet(client.registry, client))

    def reset(self) -> None:
        """Forget the current server's timeline: the states, the render
        buffer, the clock estimate, the view and the inputs not yet
        applied.  Call it when the client moves to another room (another
        ``SyncServer``): the next snapshot starts a new timeline, so
        interpolation goes on at once.  (A snapshot whose tick is not after
        the last one does this by itself; a room whose ticks are ahead of
        the old one's cannot be told apart without it.)

        Thread safety: any thread.
        """
        with self.lock:
            self._forget_timeline()
            self.tick = -1
            self.view = {}
            self.own = None

    def _forget_timeline(self) -> None:
        """(lock held) What belongs to one server's timeline."""
        self._states.clear()
        self._buffer.clear()
        self._offset = None
        self._pending.clear()  # sent to the old server: never applied by the new one
        self._pred_by_seq.clear()
        self._predicted = None

    def close(self) -> None:
        """Stop applying snapshots (the packets stay registered; later
        snapshots are ignored).

        Thread safety: any thread.
        """
        self._closed = True

    # --- where the client's packets are processed -----------------------------------------------
    def snapshot_received(self, raw: Any) -> None:
        """Apply one snapshot message as it came from the server: what the
        registered ``SNAPSHOT_PACKET`` handler calls (where the client's
        packets are processed); not for the game to call."""
        if self._closed:
            return
        try:
            msg = decode_snapshot(raw)
        except MalformedSnapshotError as exc:
            tick = raw.get("t", -1) if isinstance(raw, dict) else -1
            log.debug("! sync: %s", exc)
            self._desync(tick, "malformed delta")
            return
        if msg is None:
            return  # not a snapshot: ignored
        now = self.clock()
        tick = msg.tick
        with self.lock:
            base = {} if msg.base == -1 else self._states.get(msg.base)
            if base is None:
                self._desync(tick, "missing base")
                return
            view = apply_delta(base, msg.delta)
            if self._corrupt_next:  # test hook: simulate a diverged client
                self._corrupt_next = False
                if view:
                    eid = next(iter(view))
                    view[eid] = {**view[eid], "_corrupt": True}
            if checksum(view) != msg.checksum:
                self._desync(tick, "checksum")
                return
            if tick <= self.tick:
                # The ticks went back: another server's timeline (a room
                # joined, a server restarted): start afresh.
                self._forget_timeline()
            self._states[tick] = view
            for old in [t for t in self._states if t <= tick - self.history]:
                del self._states[old]
            self.tick = tick
            self.view = view
            self.own = msg.you
            self.stats["snapshots"] += 1
            if msg.base == -1:
                self.stats["full_snapshots"] += 1
            server_time = tick / self.tick_rate
            off = now - server_time
            self._offset = off if self._offset is None else min(off, self._offset + 0.001)
            self._buffer.append((server_time, view))
            self._reconcile(msg.acked_input)
            ack_now = msg.base == -1 or self.stats["snapshots"] % self.ack_every == 0
        if ack_now:
            self._send(ack_message(tick))
        self.client.sendEvent("peng3dnet:sync.snapshot", {"tick": tick, "view": view})

    def _desync(self, tick: int, why: str) -> None:
        with self.lock:
            self.stats["desyncs"] += 1
            # At most DESYNC_LINES log lines a second: a server sending nothing
            # but bad snapshots (20 bytes each) wrote a line per snapshot.
            now = self.clock()
            quiet = 0
            if now - self._desync_window >= 1.0:
                self._desync_window, self._desync_lines = now, 0
                quiet, self._desync_quiet = self._desync_quiet, 0
            self._desync_lines += 1
            shown = self._desync_lines <= DESYNC_LINES
            if not shown:
                self._desync_quiet += 1
        if quiet:
            log.info("! sync: %d more desyncs before this one were not logged", quiet)
        if shown:
            log.info("! sync: desync at tick %d (%s); asking for a full snapshot", tick, why)
        self._send(resync_message())
        self.client.sendEvent("peng3dnet:sync.desync", {"tick": tick, "reason": why})

    def _reconcile(self, acked_seq: int | None) -> None:
        if acked_seq is not None:
            # (trimmed whatever follows: without prediction, or with no own
            # entity in view (a spectator, a dead player), every input sent
            # stayed here for good)
            while self._pending and self._pending[0][0] <= acked_seq:
                self._pending.popleft()
        if self.predict is None or self.own is None or self.own not in self.view:
            # Nothing of ours to predict: a prediction kept from before (an
            # entity the server deleted) is not drawn any more.
            self._predicted = None
            self._pred_by_seq.clear()
            return
        if acked_seq is not None:
            guess = self._pred_by_seq.get(acked_seq)
            if guess is not None:
                err = distance(guess, self.view[self.own])
                self.stats["prediction_error_last"] = err
                self.stats["prediction_error_max"] = max(self.stats["prediction_error_max"], err)
                self.stats["reconciliations"] += 1
            for s in [s for s in self._pred_by_seq if s <= acked_seq]:
                del self._pred_by_seq[s]
        state = dict(self.view[self.own])
        for _, inp in self._pending:
            state = self.predict(state, inp)
        self._predicted = state

    def _send(self, msg: dict[str, Any]) -> None:
        try:
            self.client.send_message(INPUT_PACKET, msg)
        except Peng3dNetError as exc:
            log.debug("sync: not sent: %s", exc)

    # --- game side (any thread) ------------------------------------------------------------------
    def send_input(self, inp: Any) -> int:
        """Send one input (with the next sequence number) and predict it.

        Args:
            inp: The game's input (msgpack-able; keep it under the server's
                ``max_input_size``, 4 KiB by default, or it is dropped).

        Returns:
            The input's sequence number.

        Thread safety: any thread.
        """
        with self.lock:
            self._seq += 1
            seq = self._seq
            self._pending.append((seq, inp))
            if self.predict is not None and self.own is not None and self.own in self.view:
                base = self._predicted if self._predicted is not None else dict(self.view[self.own])
                self._predicted = self.predict(base, inp)
                self._pred_by_seq[seq] = self._predicted
            ack = self.tick
        self._send(input_message(ack, seq, inp))
        return seq

    def authoritative(self) -> tuple[int, View]:
        """``(tick, view)``: the last server state applied (not interpolated).

        Thread safety: any thread.
        """
        with self.lock:
            return self.tick, dict(self.view)

    def predicted_own(self) -> dict[str, Any] | None:
        """The local player's predicted state (or its authoritative one).

        Thread safety: any thread.
        """
        with self.lock:
            if self._predicted is not None:
                return dict(self._predicted)
            if self.own is not None and self.own in self.view:
                return dict(self.view[self.own])
            return None

    def render_view(self, now: float | None = None) -> View:
        """What to draw now: other entities interpolated ``interp_delay``
        behind the newest snapshot, the local player predicted.

        Args:
            now: The local time (default: :attr:`clock`).

        Thread safety: any thread.
        """
        now = self.clock() if now is None else now
        with self.lock:
            if not self._buffer or self._offset is None:
                return dict(self.view)
            out = interpolate(self._buffer, now - self._offset - self.interp_delay)
            if self.own is not None:
                own = self._predicted if self._predicted is not None else self.view.get(self.own)
                if own is not None:
                    out[self.own] = dict(own)
                else:
                    out.pop(self.own, None)
            return out

    def force_desync(self) -> None:
        """Test hook: corrupt the next reconstructed view (as a diverged
        client would), so the checksum catches it and a full snapshot follows.

        Thread safety: any thread.
        """
        with self.lock:
            self._corrupt_next = True
