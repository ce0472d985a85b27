"""The server side of state sync: :class:`SyncServer` and its tick thread.

Theory of operation
-------------------
The server owns the game state: ``SyncServer.entities`` maps an entity id
(str) to a flat dict of msgpack-able values.  A tick thread steps the game at
a fixed rate (``tick_rate``, default 20 Hz).  One tick, under
:attr:`SyncServer.lock`:

1. take the inputs received since the last tick;
2. *membership*: compare the joined clients with the server's connection
   table (``server.clients``) and join the new ones (``on_join``, event
   ``peng3dnet:sync.join``);
3. apply the inputs of joined clients, in the order they arrived
   (``on_input``);
4. remove the clients that left (``on_leave``, event ``peng3dnet:sync.leave``),
   after their last inputs were applied;
5. advance the game (``on_step``);
6. send every joined client a snapshot of what that client may see
   (``interest``).

A snapshot is *full* on join (or after the client asked for a resync), and
otherwise a *delta* against the last tick that client acknowledged: the
server keeps the views it sent for ``history`` ticks, so a late ack only
makes the next delta larger, never wrong.  Each snapshot carries a CRC-32 of
the client's whole view (see :mod:`~peng3dnet.ext.sync.wire`).

Join and leave
--------------
Join and leave are *never* read from what a client sends.  Each tick the
server's connection table is the truth: a connection counts as joined from
the first tick at which its ``protocol_state`` is
:attr:`~peng3dnet.protocol.handshake.HandshakeState.ACTIVE` and its
``conntype`` is ``"classic"`` (ping and custom connection types never join),
and it leaves at the first tick at which its cid is gone from
``server.clients``.  The server forgets a connection after its ``on_close``,
which runs after the handlers of the packets that arrived before the close,
so every input a client sent before leaving is applied before its leave.
Input messages only carry ``ack``/``seq``/``in``/``resync``; any other key
(``_join``, ``_leave``, ...) is ignored, and ``in`` goes to ``on_input`` as it
is.  A connection that completes its handshake and closes again between two
ticks never joins (no join, no leave).

Inputs
------
Inputs arrive through a packet handler registered for ``INPUT_PACKET``, so
they reach the SyncServer where the application processes the server's
packets: the thread that calls ``server.process()`` (``process_async()``, the
documented default, or a game loop), or the network thread with
``net.process.inline``.  A server whose packets are never processed gets no
inputs and no acks (every snapshot is then full) and never sees a client
leave.  The handler only measures the message and queues it: a message
larger than ``max_input_size`` bytes of msgpack is dropped and counted in
``stats["inputs_dropped"]``.  Nothing here needs the event bus, so sync
works with ``net.events.enable`` off (the sync events are then not emitted;
use the ``on_join``/``on_leave`` hooks).

Threads: the game hooks (``on_join``, ``on_input``, ``on_leave``,
``on_step``) and the sync events run on the tick thread ("peng3dnet sync
Thread"), or on the thread that calls :meth:`SyncServer.step` when the tick
thread is not started.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ...constants import CONNTYPE_CLASSIC
from ...errors import Peng3dNetError
from ...packet import Packet
from ...protocol.handshake import HandshakeState
from ...userlog import failure_key, report_user_error
from .algebra import View
from .wire import INPUT_PACKET, SNAPSHOT_PACKET, SnapshotBatch, decode_input, encoded_size

__all__ = ["SyncServer"]

log = logging.getLogger(__name__)

_ACTIVE = HandshakeState.ACTIVE

INPUT_BACKLOG_TICKS = 8
"""A client's inputs beyond ``max_inputs_per_tick`` wait for the next
ticks, up to this many ticks' worth; only the rest are dropped (a burst
after a stall or a session's resume is applied in order over a few ticks)."""


class _InputPacket(Packet):
    """The server's handler of ``INPUT_PACKET``: hands each message to its
    SyncServer (the thread that runs ``process()``)."""

    def __init__(self, reg: Any, peer: Any, sync: SyncServer) -> None:
        super().__init__(reg, peer)
        self.sync = sync

    def receive(self, msg: Any, cid: int | None = None) -> None:
        if cid is not None:
            self.sync.input_received(cid, msg)


class _ClientSync:
    __slots__ = ("cid", "acked", "history", "resync", "last_seq")

    def __init__(self, cid: int) -> None:
        self.cid = cid
        self.acked = -1
        self.history: dict[int, View] = {}
        self.resync = True
        self.last_seq = -1


class SyncServer:
    """Authoritative state and per-client snapshots on a :class:`~peng3dnet.net.Server`.

    Args:
        server: The server (create the SyncServer before clients connect:
            it registers its packets).  Its packets must be processed
            (``server.process_async()``, ``process()`` in a loop, or
            ``net.process.inline``): inputs arrive through a packet handler.
        tick_rate: Ticks per second.
        history: Ticks of sent views kept per client as delta bases.
        interest: ``interest(cid, eid, state, entities, own_eid) -> bool``;
            ``None`` sends every entity to every client.
        max_input_size: Largest input message accepted, in bytes of msgpack
            (the whole message: ``ack``, ``seq``, ``in`` and any other key);
            larger ones are dropped before they are queued, counted in
            ``stats["inputs_dropped"]``, and never reach ``on_input``.  The
            connection stays open.  (The packet itself was already bounded
            by ``net.limits.max_packet_size`` when it was decoded.)
        max_inputs_per_tick: Input messages of one client applied in one
            tick; more wait for the next ticks, up to
            :data:`INPUT_BACKLOG_TICKS` ticks' worth (a burst after a stall
            or a resume: dropping it left the client's prediction ahead of
            the server for good), and beyond that they are dropped
            (counted in ``stats["inputs_dropped"]``):
            a queue of a client's inputs bounded only by the rate limit let
            one client that sends faster than the game handles grow it
            without bound and stall every tick (8,400 inputs a second
            through the default rate limit against a 150 us ``on_input``:
            0-1 ticks a second, +320 MB in 10 s, in the fault hunt of
            2026-12-02).  16 is 5 inputs a frame at 60 frames a second
            and 20 ticks.

    Game hooks (attributes; all run on the tick thread, with :attr:`lock` held):
    ``on_join(cid)`` a client joined (give it an entity: set
    ``entities[eid]`` and ``owners[cid] = eid``);
    ``on_input(cid, eid, inp)`` applies one input of a client to the state;
    ``on_leave(cid, eid)`` a client left (``eid`` is its owned entity or
    ``None``; remove the entity if the game wants to);
    ``on_step(dt, tick)`` advances the game one tick.
    The events ``peng3dnet:sync.join`` ``{cid}`` and ``peng3dnet:sync.leave``
    ``{cid, eid}`` are emitted right after ``on_join``/``on_leave`` (when the
    server's events are enabled).

    Thread safety: mutate :attr:`entities` and :attr:`owners` from the hooks,
    or hold :attr:`lock` from other threads.  The packet handler that
    receives inputs runs where the server's packets are processed and never
    takes :attr:`lock`.

    .. versionchanged:: 0.2
       Join and leave come from the server's connection table, not from
       messages; inputs come through a packet handler (``process()``), not
       the event bus; ``max_input_size``, ``on_join`` and ``on_leave`` added.
    """

    def __init__(
        self,
        server: Any,
        *,
        tick_rate: float = 20.0,
        history: int = 64,
        interest: Callable[..., bool] | None = None,
        max_input_size: int = 4096,
        members: Callable[[], Any] | None = None,
        register: bool = True,
        max_inputs_per_tick: int = 16,
    ) -> None:
        self.server = server
        self.tick_rate = float(tick_rate)
        self.history = int(history)
        self.interest = interest
        self.max_input_size = int(max_input_size)
        """Largest input message accepted, in bytes of msgpack."""
        self.max_inputs_per_tick = int(max_inputs_per_tick)
        """Input messages of one client queued for one tick; more are dropped."""
        self.members = members
        """``None`` (every classic connection of the server joins), or a
        callable returning the cids that may be joined (a room's members:
        ``peng3dnet.ext.rooms``); a cid no longer in it leaves."""
        self.entities: View = {}
        """The authoritative state: entity id -> flat dict.  Replace values,
        do not mutate nested lists/dicts in place (views are shallow copies)."""
        self.owners: dict[int, str] = {}
        """cid -> the entity that client controls (sent as ``you``)."""
        self.tick = 0
        """The number of the last tick."""
        self.lock = threading.RLock()
        """Guards :attr:`entities` and the per-client state."""
        self.on_join: Callable[[int], None] | None = None
        self.on_input: Callable[[int, str | None, Any], None] | None = None
        self.on_leave: Callable[[int, str | None], None] | None = None
        self.on_step: Callable[[float, int], None] | None = None
        self.stats = {
            "ticks": 0,
            "snapshots": 0,
            "full_snapshots": 0,
            "resyncs": 0,
            "inputs": 0,
            "inputs_dropped": 0,
        }
        """Counters (any thread); ``snapshots`` and ``full_snapshots`` (of
        them, the ones without a base) count snapshots sent;
        ``inputs_dropped`` counts input messages over ``max_input_size``
        or ``max_inputs_per_tick``."""
        self._clients: dict[int, _ClientSync] = {}
        self._inputs: deque[tuple[int, Any]] = deque()
        self._queued: dict[int, int] = {}  # cid -> inputs queued for the next ticks (guarded by _inputs_lock)
        self._gone: set[int] = set()  # cids that left the members since the last tick (guarded by _inputs_lock)
        self._inputs_lock = threading.Lock()
        self._accepting = True
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if register:  # (False: one of many on a server; whoever registered them routes inputs here)
            server.register_packet(SNAPSHOT_PACKET, Packet(server.registry, server))
            server.register_packet(INPUT_PACKET, _InputPacket(server.registry, server, self))

    # --- where the server's packets are processed --------------------------------------------
    def input_received(self, cid: int, msg: Any) -> None:
        """Queue one input message of client ``cid`` for the next tick (size
        bounded): what the registered ``INPUT_PACKET`` handler calls; not
        for the game to call."""
        if not self._accepting:
            return
        size = encoded_size(msg)
        with self._inputs_lock:
            if size is None or size > self.max_input_size:
                self.stats["inputs_dropped"] += 1
                log.debug("! sync: input of cid=%d dropped (%s bytes > %d)", cid, size, self.max_input_size)
                return
            queued = self._queued.get(cid, 0)
            if queued >= self.max_inputs_per_tick * INPUT_BACKLOG_TICKS:
                self.stats["inputs_dropped"] += 1
                log.debug("! sync: input of cid=%d dropped (%d queued for the next ticks already)", cid, queued)
                return
            self._queued[cid] = queued + 1
            self._inputs.append((cid, msg))

    def member_left(self, cid: int) -> None:
        """``cid`` left the members (what ``members()`` returns), perhaps to
        come back before the next tick: its leave runs at the next tick all
        the same (``on_leave``, then ``on_join`` if it is a member again),
        and its inputs queued so far are dropped.  What ``ext.rooms`` calls
        when a client leaves a room: a client that left and joined again
        (or hopped to another room and back) between two ticks was the same
        member to this server, with no leave and no join (the arena demo's
        player was left with no entity).  Any thread."""
        with self._inputs_lock:
            self._gone.add(cid)
            if self._queued.pop(cid, None):
                self._inputs = deque(item for item in self._inputs if item[0] != cid)

    # --- tick thread -------------------------------------------------------------------------
    def start(self) -> threading.Thread:
        """Start ticking in a daemon thread "peng3dnet sync Thread" (and
        accept inputs again after :meth:`stop`).

        Returns:
            The thread.

        Thread safety: any thread.
        """
        self._accepting = True
        self._stop.clear()
        t = threading.Thread(target=self._run, name="peng3dnet sync Thread", daemon=True)
        self._thread = t
        t.start()
        return t

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop ticking; inputs received from now on are dropped until :meth:`start`.

        Thread safety: any thread but the tick thread (which it would wait for).
        """
        self._accepting = False
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        period = 1.0 / self.tick_rate
        next_t = time.monotonic()
        while not self._stop.is_set():
            try:
                self.step(period)
            except Exception:
                report_user_error("! sync: tick %d raised", self.tick)
            next_t += period
            delay = next_t - time.monotonic()
            if delay < -period:  # fell behind: do not try to catch up with a burst
                next_t = time.monotonic()
                delay = 0
            if delay > 0:
                self._stop.wait(delay)  # a fixed tick, woken early by stop()

    def step(self, dt: float | None = None) -> int:
        """Run one tick now: membership, inputs, leaves, ``on_step``, snapshots.

        Args:
            dt: The tick's duration passed to ``on_step`` (default ``1 / tick_rate``).

        Returns:
            The tick.

        Raises:
            Exception: Whatever ``on_step`` raised (the tick thread reports it
                and keeps ticking).

        Thread safety: the tick thread, or any one thread when not started
        (tests drive ticks by hand).
        """
        dt = 1.0 / self.tick_rate if dt is None else dt
        with self.lock:
            # Inputs first, then the table: an input in this batch was handled
            # after its connection's handshake completed, so the table read
            # afterwards has its cid (ACTIVE, closing, or already gone).
            with self._inputs_lock:
                inputs = self._take_inputs()
                gone, self._gone = self._gone, set()
            table = self.server.clients.copy()  # one C-level copy: the network thread may change it
            if self.members is not None:
                allowed = self.members()
                table = {cid: c for cid, c in table.items() if cid in allowed}
            for cid in sorted(gone):  # (left since the last tick: gone, even if back already)
                if cid in self._clients:
                    self._leave(cid)
            left = self._update_membership(table)
            self._apply_inputs(inputs)
            for cid in left:
                self._leave(cid)
            self.tick += 1
            if self.on_step is not None:
                self.on_step(dt, self.tick)
            self.stats["ticks"] += 1
            self._send_snapshots()
        return self.tick

    def _update_membership(self, table: dict[int, Any]) -> list[int]:
        """Join the new connections of ``table``; return the cids that left."""
        for cid in sorted(table):
            if cid in self._clients:
                continue
            client = table[cid]
            if client.conntype == CONNTYPE_CLASSIC and client.protocol_state is _ACTIVE:
                self._clients[cid] = _ClientSync(cid)
                if self.on_join is not None:
                    try:
                        self.on_join(cid)
                    except Exception:
                        report_user_error("! sync: on_join raised for cid=%d", cid)
                self.server.sendEvent("peng3dnet:sync.join", {"cid": cid})
        return [cid for cid in self._clients if cid not in table]

    def _leave(self, cid: int) -> None:
        del self._clients[cid]
        eid = self.owners.get(cid)
        if self.on_leave is not None:
            try:
                self.on_leave(cid, eid)
            except Exception:
                report_user_error("! sync: on_leave raised for cid=%d", cid)
        self.server.sendEvent("peng3dnet:sync.leave", {"cid": cid, "eid": eid})
        self.owners.pop(cid, None)

    def _take_inputs(self) -> list[tuple[int, Any]]:
        """This tick's inputs: at most ``max_inputs_per_tick`` of each
        client, in order; the rest stay queued for the next ticks, in order
        (``_inputs_lock`` held)."""
        limit = self.max_inputs_per_tick
        taken: list[tuple[int, Any]] = []
        kept: deque[tuple[int, Any]] = deque()
        counts: dict[int, int] = {}
        for item in self._inputs:
            cid = item[0]
            n = counts.get(cid, 0)
            counts[cid] = n + 1
            if n < limit:
                taken.append(item)
            else:
                kept.append(item)
        self._inputs = kept
        self._queued = {cid: n - limit for cid, n in counts.items() if n > limit}
        return taken

    def _apply_inputs(self, inputs: list[tuple[int, Any]]) -> None:
        for cid, raw in inputs:
            cs = self._clients.get(cid)
            msg = decode_input(raw)
            if cs is None or msg is None:
                continue  # not joined (closed before its first tick), or not a map
            ack = msg.ack
            if ack is not None and ack in cs.history and ack > cs.acked:
                prev = cs.acked
                cs.acked = ack
                if prev in cs.history and prev <= self.tick - self.history:
                    del cs.history[prev]  # an old base kept only while it was the acked one
            if msg.resync:
                cs.resync = True
                self.stats["resyncs"] += 1
            seq = msg.seq
            if seq is not None and seq > cs.last_seq and msg.has_input:
                cs.last_seq = seq
                self.stats["inputs"] += 1
                if self.on_input is not None:
                    try:
                        self.on_input(cid, self.owners.get(cid), msg.inp)
                    except Exception:
                        report_user_error("! sync: on_input raised for cid=%d", cid)

    def view_for(self, cid: int) -> View:
        """The view client ``cid`` gets now (interest applied; copies).

        Thread safety: the tick thread, or hold :attr:`lock`.
        """
        own = self.owners.get(cid)
        ents = self.entities
        if self.interest is None:
            return {eid: dict(st) for eid, st in ents.items()}
        return {eid: dict(st) for eid, st in ents.items() if self.interest(cid, eid, st, ents, own)}

    def _send_snapshots(self) -> None:
        # Fan-out without per-client copies where clients share data: with no
        # interest filter every client's view is the same object this tick,
        # and the batch checksums it once and encodes each distinct delta
        # (one per acknowledged base tick, usually one) once.
        tick = self.tick
        # Each entity is copied once per tick; filtered views share the copies.
        snap = {eid: dict(st) for eid, st in self.entities.items()}
        interest = self.interest
        batch = SnapshotBatch(tick)
        server = self.server
        clients = server.clients
        for cid, cs in list(self._clients.items()):
            client = clients.get(cid)
            if client is not None and client.suspended:
                # Its session waits for a new socket: nothing queued for it;
                # once back, it gets a delta from the tick it acknowledged last.
                continue
            own = self.owners.get(cid)
            if interest is None:
                view = snap
            else:
                try:
                    view = {eid: st for eid, st in snap.items() if interest(cid, eid, st, snap, own)}
                except Exception:
                    # (this client gets no snapshot this tick; the others do: one
                    # entity the filter cannot read stopped snapshots for everyone)
                    report_user_error("! sync: interest raised for cid=%d", cid, key=failure_key(interest))
                    continue
            base = None if cs.resync else cs.history.get(cs.acked)
            if base is None:
                cs.resync = False
            body = batch.encode(view, base, cs.acked, cs.last_seq, own)
            cs.history[tick] = view
            old = tick - self.history
            if old in cs.history and old != cs.acked:
                del cs.history[old]
            if len(cs.history) > self.history + 1:  # ticks whose pruning was skipped (suspended): all of them
                for t in [t for t in cs.history if t <= old and t != cs.acked]:
                    del cs.history[t]
            try:
                server.send_encoded(SNAPSHOT_PACKET, body, cid)
                self.stats["snapshots"] += 1
                if base is None:  # (counted when sent, like "snapshots": full <= all)
                    self.stats["full_snapshots"] += 1
            except Peng3dNetError as exc:
                log.debug("sync: snapshot to cid=%d not sent: %s", cid, exc)

    @property
    def clients(self) -> list[int]:
        """cids of the joined clients.

        Thread safety: any thread.
        """
        return list(self._clients)
