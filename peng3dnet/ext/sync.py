"""Game state sync: authoritative snapshots, acked deltas with a desync check,
interest management, interpolation, and client-side prediction.

Theory of operation
-------------------
The server owns the game state: ``SyncServer.entities`` maps an entity id
(str) to a flat dict of msgpack-able values.  A tick thread steps the game at
a fixed rate (``tick_rate``, default 20 Hz): it applies the inputs clients
sent since the last tick (``on_input``), calls the game's ``on_step``, then
sends every joined client a snapshot of what that client may see
(``interest``).  A snapshot is *full* on join (or after a desync), and
otherwise a *delta* against the last tick that client acknowledged: the
server keeps the views it sent for ``history`` ticks, so a late ack only
makes the next delta larger, never wrong.  Each snapshot carries a CRC-32 of
the client's whole view; a client whose reconstruction does not match counts
a desync, drops it and asks for a full snapshot.

Snapshot message (``peng3dnet:sync.snapshot``, server -> client)::

    {"t": tick, "b": base tick or -1 (full), "cs": crc32 of the view,
     "ai": last input seq applied for this client, "you": own entity id or None,
     "n": {eid: full state}          # new or replaced entities
     "u": {eid: {key: value}}        # changed keys
     "k": {eid: [key, ...]}          # removed keys
     "d": [eid, ...]}                # entities gone from the view

Input message (``peng3dnet:sync.input``, client -> server)::

    {"ack": last tick applied, "seq": n, "in": {...}}   # or {"ack": t}, {"resync": true}

On the client, :class:`SyncClient` rebuilds each view, keeps the
authoritative state (``authoritative()``), buffers snapshots and renders the
other entities ``interp_delay`` seconds in the past, interpolating numeric
fields (``render_view()``).  The local player's entity is predicted: every
input is applied at once with the game's ``predict(state, input)`` (the same
pure function the server applies), and when a snapshot says which input the
server applied last, the unacknowledged inputs are replayed on top of the
authoritative state (reconciliation).  ``stats`` records the prediction
error found at each reconciliation.

Threads: the server's game callbacks run on the tick thread
("peng3dnet sync Thread"); snapshots are decoded on the client's network
thread; ``render_view()``/``send_input()`` may be called from any thread
(the game's main thread).  Sync events: ``peng3dnet:sync.join`` ``{cid}`` /
``peng3dnet:sync.leave`` ``{cid, eid}`` (server, on the tick thread), and
``peng3dnet:sync.snapshot`` ``{tick, view}`` / ``peng3dnet:sync.desync``
``{tick, reason}`` (client, on its network thread).  This module never
imports pyglet.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from typing import Any

import msgpack

from .. import events
from ..errors import Peng3dNetError
from ..packet import Packet

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

log = logging.getLogger(__name__)

SNAPSHOT_PACKET = "peng3dnet:sync.snapshot"
INPUT_PACKET = "peng3dnet:sync.input"

View = dict[str, dict[str, Any]]


def checksum(view: View) -> int:
    """CRC-32 of a view in a canonical order (entity ids and keys sorted)."""
    canon = [[eid, sorted(view[eid].items())] for eid in sorted(view)]
    return zlib.crc32(msgpack.packb(canon))


def diff_views(base: View, new: View) -> dict[str, Any]:
    """The delta that turns ``base`` into ``new`` (keys ``n``, ``u``, ``k``, ``d``)."""
    n: dict[str, Any] = {}
    u: dict[str, Any] = {}
    k: dict[str, Any] = {}
    for eid, st in new.items():
        old = base.get(eid)
        if old is None:
            n[eid] = st
            continue
        changed = {key: v for key, v in st.items() if key not in old or _differs(old[key], v)}
        if changed:
            u[eid] = changed
        gone = [key for key in old if key not in st]
        if gone:
            k[eid] = gone
    d = [eid for eid in base if eid not in new]
    out: dict[str, Any] = {}
    if n:
        out["n"] = n
    if u:
        out["u"] = u
    if k:
        out["k"] = k
    if d:
        out["d"] = d
    return out


def _differs(a: Any, b: Any) -> bool:
    # "Would encode differently": 1 vs 1.0 and 0.0 vs -0.0 compare equal in
    # Python but not on the wire, and the checksum is over the wire form.
    if type(a) is not type(b) or a != b:
        return True
    return isinstance(a, float) and math.copysign(1.0, a) != math.copysign(1.0, b)


def apply_delta(base: View, delta: dict[str, Any]) -> View:
    """Apply a delta (see :func:`diff_views`) to a copy of ``base``."""
    view = dict(base)
    for eid in delta.get("d", ()):
        view.pop(eid, None)
    for eid, st in delta.get("n", {}).items():
        view[eid] = dict(st)
    for eid, changed in delta.get("u", {}).items():
        st = dict(view.get(eid, {}))
        st.update(changed)
        view[eid] = st
    for eid, gone in delta.get("k", {}).items():
        st = dict(view.get(eid, {}))
        for key in gone:
            st.pop(key, None)
        view[eid] = st
    return view


def distance_interest(radius: float, *, x: str = "x", y: str = "y") -> Callable[..., bool]:
    """An interest filter: a client sees entities within ``radius`` of its own
    entity (and everything when it has none).  Entities without a position
    are always visible."""

    def interest(cid: int, eid: str, state: dict[str, Any], entities: View, own: str | None) -> bool:
        if own is None or eid == own or own not in entities:
            return True
        me = entities[own]
        if x not in state or x not in me:
            return True
        return math.hypot(state[x] - me[x], state.get(y, 0.0) - me.get(y, 0.0)) <= radius

    return interest


class _Raw(Packet):
    """Registered for the sync packets; the sync helpers use events instead."""


class _ClientSync:
    __slots__ = ("cid", "acked", "history", "resync", "last_seq", "joined_tick")

    def __init__(self, cid: int) -> None:
        self.cid = cid
        self.acked = -1
        self.history: dict[int, View] = {}
        self.resync = True
        self.last_seq = -1
        self.joined_tick = -1


class SyncServer:
    """Authoritative state and per-client snapshots on a :class:`~peng3dnet.net.Server`.

    Args:
        server: The server (create the SyncServer before clients connect:
            it registers its packets).
        tick_rate: Ticks per second.
        history: Ticks of sent views kept per client as delta bases.
        interest: ``interest(cid, eid, state, entities, own_eid) -> bool``;
            ``None`` sends every entity to every client.

    Game hooks (attributes; all run on the tick thread):
    ``on_input(cid, eid, inp)`` applies one input of a client to the state;
    ``on_step(dt, tick)`` advances the game one tick.

    Thread safety: mutate :attr:`entities` from the hooks, or hold
    :attr:`lock` from other threads.
    """

    def __init__(
        self,
        server: Any,
        *,
        tick_rate: float = 20.0,
        history: int = 64,
        interest: Callable[..., bool] | None = None,
    ) -> None:
        self.server = server
        self.tick_rate = float(tick_rate)
        self.history = int(history)
        self.interest = interest
        self.entities: View = {}
        """The authoritative state: entity id -> flat dict.  Replace values,
        do not mutate nested lists/dicts in place (views are shallow copies)."""
        self.owners: dict[int, str] = {}
        """cid -> the entity that client controls (sent as ``you``)."""
        self.tick = 0
        """The number of the last tick."""
        self.lock = threading.RLock()
        """Guards :attr:`entities` and the per-client state."""
        self.on_input: Callable[[int, str | None, Any], None] | None = None
        self.on_step: Callable[[float, int], None] | None = None
        self.stats = {"ticks": 0, "snapshots": 0, "full_snapshots": 0, "resyncs": 0, "inputs": 0}
        """Counters (any thread)."""
        self._clients: dict[int, _ClientSync] = {}
        self._inputs: deque[tuple[int, Any]] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        server.register_packet(SNAPSHOT_PACKET, _Raw(server.registry, server))
        # a server's ids never change (clients adopt them), so look it up once
        self._input_pid = server.register_packet(INPUT_PACKET, _Raw(server.registry, server))
        self._subs = [
            ("peng3dnet:server.connection.handshakecomplete", self._on_handshake),
            ("peng3dnet:server.connection.recv", self._on_recv),
            ("peng3dnet:server.connection.close", self._on_close),
        ]
        for name, fn in self._subs:
            events.subscribe(name, fn, sender=server)

    # --- network thread -------------------------------------------------------------------
    def _on_handshake(self, event: str, data: dict[str, Any]) -> None:
        self._inputs.append((data["client"].cid, {"_join": True}))

    def _on_close(self, event: str, data: dict[str, Any]) -> None:
        self._inputs.append((data["client"].cid, {"_leave": True}))

    def _on_recv(self, event: str, data: dict[str, Any]) -> None:
        if data["pid"] == self._input_pid:
            self._inputs.append((data["client"].cid, data["msg"]))

    # --- tick thread -------------------------------------------------------------------------
    def start(self) -> threading.Thread:
        """Start ticking in a daemon thread "peng3dnet sync Thread"."""
        self._stop.clear()
        t = threading.Thread(target=self._run, name="peng3dnet sync Thread", daemon=True)
        self._thread = t
        t.start()
        return t

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop ticking and unsubscribe (any thread but the tick thread)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        for name, fn in self._subs:
            events.unsubscribe(name, fn, sender=self.server)

    def _run(self) -> None:
        period = 1.0 / self.tick_rate
        next_t = time.monotonic()
        while not self._stop.is_set():
            try:
                self.step(period)
            except Exception:
                log.exception("! sync: tick %d raised", self.tick)
            next_t += period
            delay = next_t - time.monotonic()
            if delay < -period:  # fell behind: do not try to catch up with a burst
                next_t = time.monotonic()
                delay = 0
            if delay > 0:
                self._stop.wait(delay)  # a fixed tick, woken early by stop()

    def step(self, dt: float | None = None) -> int:
        """Run one tick now: inputs, ``on_step``, snapshots.  Returns the tick.

        Thread safety: the tick thread, or any one thread when not started
        (tests drive ticks by hand).
        """
        dt = 1.0 / self.tick_rate if dt is None else dt
        with self.lock:
            self._apply_inputs()
            self.tick += 1
            if self.on_step is not None:
                self.on_step(dt, self.tick)
            self.stats["ticks"] += 1
            self._send_snapshots()
        return self.tick

    def _apply_inputs(self) -> None:
        q = self._inputs
        for _ in range(len(q)):
            cid, msg = q.popleft()
            if not isinstance(msg, dict):
                continue
            cs = self._clients.get(cid)
            if msg.get("_join"):
                self._clients[cid] = _ClientSync(cid)
                self._emit("peng3dnet:sync.join", {"cid": cid})
                continue
            if msg.get("_leave"):
                if self._clients.pop(cid, None) is not None:
                    self._emit("peng3dnet:sync.leave", {"cid": cid, "eid": self.owners.get(cid)})
                self.owners.pop(cid, None)
                continue
            if cs is None:
                continue
            ack = msg.get("ack")
            if isinstance(ack, int) and ack in cs.history and ack > cs.acked:
                prev = cs.acked
                cs.acked = ack
                if prev in cs.history and prev <= self.tick - self.history:
                    del cs.history[prev]  # an old base kept only while it was the acked one
            if msg.get("resync"):
                cs.resync = True
                self.stats["resyncs"] += 1
            seq = msg.get("seq")
            if isinstance(seq, int) and seq > cs.last_seq and "in" in msg:
                cs.last_seq = seq
                self.stats["inputs"] += 1
                if self.on_input is not None:
                    try:
                        self.on_input(cid, self.owners.get(cid), msg["in"])
                    except Exception:
                        log.exception("! sync: on_input raised for cid=%d", cid)

    def view_for(self, cid: int) -> View:
        """The view client ``cid`` gets now (interest applied; copies)."""
        own = self.owners.get(cid)
        ents = self.entities
        if self.interest is None:
            return {eid: dict(st) for eid, st in ents.items()}
        return {eid: dict(st) for eid, st in ents.items() if self.interest(cid, eid, st, ents, own)}

    def _send_snapshots(self) -> None:
        # Fan-out without per-client copies where clients share data: with no
        # interest filter every client's view is the same object this tick,
        # its checksum is computed once, and each distinct delta (one per
        # acknowledged base tick, usually one) is computed and encoded once.
        # Only the few per-client keys are encoded per client.
        tick = self.tick
        # Each entity is copied once per tick; filtered views share the copies.
        snap = {eid: dict(st) for eid, st in self.entities.items()}
        interest = self.interest
        shared = snap if interest is None else None
        sums: dict[int, bytes] = {}
        deltas: dict[tuple[int, int], list[bytes]] = {}
        server = self.server
        for cid, cs in list(self._clients.items()):
            if shared is not None:
                view = shared
            else:
                own = self.owners.get(cid)
                view = {eid: st for eid, st in snap.items() if interest(cid, eid, st, snap, own)}  # type: ignore[misc]
            vid = id(view)
            if vid not in sums:
                sums[vid] = msgpack.packb(checksum(view))
            base = None if cs.resync else cs.history.get(cs.acked)
            if base is None:
                key = (vid, -1)
                if key not in deltas:
                    deltas[key] = [msgpack.packb("n"), msgpack.packb(view)]
                cs.resync = False
                self.stats["full_snapshots"] += 1
                base_tick = -1
            else:
                key = (vid, id(base))
                if key not in deltas:
                    parts: list[bytes] = []
                    for k, v in diff_views(base, view).items():
                        parts += (msgpack.packb(k), msgpack.packb(v))
                    deltas[key] = parts
                base_tick = cs.acked
            delta = deltas[key]
            head = [
                b"\xa1t", msgpack.packb(tick),
                b"\xa1b", msgpack.packb(base_tick),
                b"\xa2cs", sums[vid],
                b"\xa2ai", msgpack.packb(cs.last_seq),
                b"\xa3you", msgpack.packb(self.owners.get(cid)),
            ]
            nfields = 5 + len(delta) // 2
            body = bytes([0x80 | nfields]) + b"".join(head) + b"".join(delta)
            cs.history[tick] = view
            old = tick - self.history
            if old in cs.history and old != cs.acked:
                del cs.history[old]
            try:
                server.send_encoded(SNAPSHOT_PACKET, body, cid)
                self.stats["snapshots"] += 1
            except Peng3dNetError as exc:
                log.debug("sync: snapshot to cid=%d not sent: %s", cid, exc)

    def _emit(self, event: str, data: dict[str, Any]) -> None:
        self.server.sendEvent(event, data)

    @property
    def clients(self) -> list[int]:
        """cids of the joined clients."""
        return list(self._clients)


class SyncClient:
    """The client side of :class:`SyncServer`: views, interpolation, prediction.

    Args:
        client: The :class:`~peng3dnet.net.Client` (create the SyncClient
            before connecting: it registers its packets).
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
        self._states: dict[int, View] = {}
        self._buffer: deque[tuple[float, View]] = deque(maxlen=max(4, history))
        self._offset: float | None = None  # local time - server time, smallest seen
        self._seq = 0
        self._pending: deque[tuple[int, Any]] = deque()
        self._predicted: dict[str, Any] | None = None
        self._pred_by_seq: dict[int, dict[str, Any]] = {}
        self._corrupt_next = False
        self._snapshot_pid: int | None = None
        client.register_packet(SNAPSHOT_PACKET, _Raw(client.registry, client))
        client.register_packet(INPUT_PACKET, _Raw(client.registry, client))
        events.subscribe("peng3dnet:client.recv", self._on_recv, sender=client)

    def close(self) -> None:
        """Unsubscribe from the client's events."""
        events.unsubscribe("peng3dnet:client.recv", self._on_recv, sender=self.client)

    # --- network thread -----------------------------------------------------------------------
    def _on_recv(self, event: str, data: dict[str, Any]) -> None:
        pid = data["pid"]
        if pid < 64:
            return
        if self._snapshot_pid is None:
            # Looked up at the first application packet: by then the handshake
            # has renumbered this client's registry to the server's ids.
            self._snapshot_pid = self.client.registry.get_id(SNAPSHOT_PACKET)
        if pid != self._snapshot_pid:
            return
        msg = data["msg"]
        if not isinstance(msg, dict) or not isinstance(msg.get("t"), int):
            return
        now = self.clock()
        with self.lock:
            tick = msg["t"]
            base_tick = msg.get("b", -1)
            if base_tick == -1:
                base: View | None = {}
            else:
                base = self._states.get(base_tick)
            if base is None:
                self._desync(tick, "missing base")
                return
            try:
                view = apply_delta(base, msg)
            except (AttributeError, TypeError, ValueError):
                self._desync(tick, "malformed delta")
                return
            if self._corrupt_next:  # test hook: simulate a diverged client
                self._corrupt_next = False
                if view:
                    eid = next(iter(view))
                    view[eid] = {**view[eid], "_corrupt": True}
            if checksum(view) != msg.get("cs"):
                self._desync(tick, "checksum")
                return
            self._states[tick] = view
            for old in [t for t in self._states if t <= tick - self.history]:
                del self._states[old]
            self.tick = tick
            self.view = view
            self.own = msg.get("you")
            self.stats["snapshots"] += 1
            if base_tick == -1:
                self.stats["full_snapshots"] += 1
            server_time = tick / self.tick_rate
            off = now - server_time
            self._offset = off if self._offset is None else min(off, self._offset + 0.001)
            self._buffer.append((server_time, view))
            self._reconcile(msg.get("ai", -1))
            ack_now = base_tick == -1 or self.stats["snapshots"] % self.ack_every == 0
        if ack_now:
            self._send({"ack": tick})
        self.client.sendEvent("peng3dnet:sync.snapshot", {"tick": tick, "view": view})

    def _desync(self, tick: int, why: str) -> None:
        self.stats["desyncs"] += 1
        log.info("! sync: desync at tick %d (%s); asking for a full snapshot", tick, why)
        self._send({"resync": True})
        self.client.sendEvent("peng3dnet:sync.desync", {"tick": tick, "reason": why})

    def _reconcile(self, acked_seq: Any) -> None:
        if self.predict is None or self.own is None or self.own not in self.view:
            return
        if isinstance(acked_seq, int):
            while self._pending and self._pending[0][0] <= acked_seq:
                self._pending.popleft()
            guess = self._pred_by_seq.get(acked_seq)
            if guess is not None:
                err = _distance(guess, self.view[self.own])
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

        Returns:
            The input's sequence number.
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
        self._send({"ack": ack, "seq": seq, "in": inp})
        return seq

    def authoritative(self) -> tuple[int, View]:
        """``(tick, view)``: the last server state applied (not interpolated)."""
        with self.lock:
            return self.tick, dict(self.view)

    def predicted_own(self) -> dict[str, Any] | None:
        """The local player's predicted state (or its authoritative one)."""
        with self.lock:
            if self._predicted is not None:
                return dict(self._predicted)
            if self.own is not None and self.own in self.view:
                return dict(self.view[self.own])
            return None

    def render_view(self, now: float | None = None) -> View:
        """What to draw now: other entities interpolated ``interp_delay``
        behind the newest snapshot, the local player predicted."""
        now = self.clock() if now is None else now
        with self.lock:
            if not self._buffer or self._offset is None:
                return dict(self.view)
            t = now - self._offset - self.interp_delay
            buf = self._buffer
            if t <= buf[0][0]:
                out = dict(buf[0][1])
            elif t >= buf[-1][0]:
                out = dict(buf[-1][1])
            else:
                out = {}
                for i in range(len(buf) - 1, 0, -1):
                    t0, v0 = buf[i - 1]
                    t1, v1 = buf[i]
                    if t0 <= t <= t1:
                        a = (t - t0) / (t1 - t0) if t1 > t0 else 1.0
                        out = _lerp_view(v0, v1, a)
                        break
            if self.own is not None:
                own = self._predicted if self._predicted is not None else self.view.get(self.own)
                if own is not None:
                    out[self.own] = dict(own)
                else:
                    out.pop(self.own, None)
            return out

    def force_desync(self) -> None:
        """Test hook: corrupt the next reconstructed view (as a diverged
        client would), so the checksum catches it and a full snapshot follows."""
        with self.lock:
            self._corrupt_next = True


def _lerp_view(v0: View, v1: View, a: float) -> View:
    out: View = {}
    for eid, s1 in v1.items():
        s0 = v0.get(eid)
        if s0 is None:
            out[eid] = dict(s1)
            continue
        st = dict(s1)
        for key, b in s1.items():
            x = s0.get(key)
            if isinstance(b, float) and isinstance(x, (int, float)) and not isinstance(x, bool):
                st[key] = x + (b - x) * a
        out[eid] = st
    return out


def _distance(a: dict[str, Any], b: dict[str, Any]) -> float:
    try:
        return math.hypot(float(a.get("x", 0.0)) - float(b.get("x", 0.0)), float(a.get("y", 0.0)) - float(b.get("y", 0.0)))
    except (TypeError, ValueError):
        return 0.0
