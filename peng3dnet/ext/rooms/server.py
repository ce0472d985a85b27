"""Rooms on a server: many named rooms per process, each with its members,
its own state and tick, join/leave with a maximum size, and a directory
shared with other processes through a :class:`~.presence.Presence`.

Threads: join and leave run where the server's handlers run (they are
calls: ``peng3dnet:rooms.join``/``.leave``); ticks, the membership check
(a client that closed leaves its room) and the presence refresh run on the
thread "peng3dnet rooms" (:meth:`RoomServer.start`).  Room hooks run under
:attr:`RoomServer.lock`, so a room's state is only ever touched by one
thread at a time.  The lock is never held while the directory is asked (a
slow or stalled Redis must not stop the ticks): a join reserves its seat
outside it, takes the client in under it, and writes the room's count
outside it again; other directory entries are written by the thread
"peng3dnet rooms directory", or by the caller once it let the lock go.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
import uuid
from typing import Any

from ...errors import AuthenticationError, CallError, Peng3dNetError
from ...packet import Packet
from ...protocol.describe import describe
from ...userlog import report_user_error
from ..sync import INPUT_PACKET, SNAPSHOT_PACKET, SyncServer
from ..sync.wire import encoded_size
from .presence import LocalPresence, Presence
from .tokens import ROOM_NAME_RULE, Seat, TokenError, read_token, valid_room_name

__all__ = ["Room", "RoomServer", "JOIN_PACKET", "LEAVE_PACKET", "CLUSTER_EVENT"]

log = logging.getLogger(__name__)

JOIN_PACKET = "peng3dnet:rooms.join"
"""Called by a client: ``{"room", "kind", "options", "seat"}`` -> ``{"room", "kind", "clients", "data"}``."""
LEAVE_PACKET = "peng3dnet:rooms.leave"
CLUSTER_EVENT = "peng3dnet:cluster.message"

JOIN_TRIES = 3
"""How many times a join by kind chooses its room: again when the room it
chose closed or filled while it reserved its seat (then it is refused)."""


class _LostRaceError(CallError):
    """A join by kind's room closed or filled while it reserved its seat
    (it chooses again; never seen outside :meth:`RoomServer._join_call`)."""




class Room:
    """A room: subclass it, set the class attributes, override the hooks.

    Hooks (all under the room server's lock): ``on_create(options)``;
    ``on_join(client, options)``, whose return value goes back to the
    joining client as ``data`` (raise :class:`~peng3dnet.errors.CallError`
    to refuse with a reason); ``on_leave(client)``; ``on_dispose()``;
    ``on_tick(dt)`` at the room server's tick rate.
    """

    max_clients = 8
    """Seats of the room."""
    auto_dispose = True
    """Dispose of the room when its last member leaves."""
    synced = False
    """Give the room a :class:`~peng3dnet.ext.sync.SyncServer` (``self.sync``)
    of its own, ticked with the room, for the room's members only (the room
    server must be made with ``sync=True``)."""

    def __init__(self, rooms: RoomServer, name: str, kind: str, options: dict[str, Any]) -> None:
        self.rooms = rooms
        self.server = rooms.server
        self.name = name
        self.kind = kind
        self.options = options
        self.members: dict[int, Any] = {}
        """cid -> ClientOnServer of the clients in the room."""
        self.created = time.time()
        self.sync: SyncServer | None = None
        if self.synced:
            self.sync = SyncServer(self.server, tick_rate=rooms.tick_rate, members=lambda: self.members, register=False)

    # --- hooks -------------------------------------------------------------------------------
    def on_create(self, options: dict[str, Any]) -> None:
        """The room was made."""

    def on_join(self, client: Any, options: dict[str, Any]) -> Any:
        """A client joins; return data for it, or raise CallError to refuse."""
        return None

    def on_leave(self, client: Any) -> None:
        """A client left (it asked, joined another room, or closed)."""

    def on_dispose(self) -> None:
        """The room is going away."""

    def on_tick(self, dt: float) -> None:
        """Every tick of the room server."""

    # --- tools -------------------------------------------------------------------------------
    def broadcast(self, ptype: Any, data: Any) -> int:
        """Send one message to every member (encoded once); how many got it."""
        return int(self.server.broadcast(ptype, data, cids=list(self.members)))

    @property
    def full(self) -> bool:
        return len(self.members) >= self.max_clients

    def info(self) -> dict[str, Any]:
        """What the directory shows of the room."""
        return {
            "server": self.rooms.server_id, "kind": self.kind, "clients": len(self.members),
            "max_clients": self.max_clients, "addr": self.rooms.public_addr, "created": self.created,
        }


class _RouteInput(Packet):
    """Sync inputs to the SyncServer of the sender's room."""

    def __init__(self, reg: Any, peer: Any, rooms: RoomServer) -> None:
        super().__init__(reg, peer)
        self.rooms = rooms

    def receive(self, msg: Any, cid: int | None = None) -> None:
        room = self.rooms.room_of(cid) if cid is not None else None
        if room is not None and room.sync is not None and cid is not None:
            room.sync.input_received(cid, msg)


class RoomServer:
    """The rooms of one :class:`~peng3dnet.net.Server`.

    Args:
        server: The server (register the room server before it accepts clients).
        presence: Where the directory lives (default: a :class:`LocalPresence`).
        server_id: This process's id in the directory (default: random).
        public_addr: ``"host:port"`` clients reach this server at (default:
            the bound address, once bound).
        secret: Shared secret of the cluster's seat tokens (bytes); every
            server and lobby of a cluster needs the same one.  Default: a
            random one (tokens of this process only).
        tick_rate: Ticks per second of the rooms (and of their sync).
        ttl: Seconds the directory keeps this server and its rooms without
            a refresh (refreshed three times per ``ttl``).
        sync: Register ``ext.sync``'s packets, routed to each room's own
            SyncServer (rooms with ``synced = True``); clients then need a
            ``SyncClient``.
        max_rooms: The most rooms this server holds at once (a client's
            join may make one: without a bound, clients could make rooms
            of a kind that is not disposed when empty until memory runs
            out); a join that would make one more is refused.
        max_options_size: The largest ``options`` of a client's join, in
            bytes of msgpack; a larger join is refused.  A room keeps the
            options of the join that made it for as long as it lives, and
            decoded msgpack takes up to some 70 times its size (3 MB of
            empty maps kept 230 MB, in the fault hunt of 2026-12-02).

    Thread safety: every method from any thread.
    """

    def __init__(
        self,
        server: Any,
        presence: Presence | None = None,
        *,
        server_id: str | None = None,
        public_addr: str | None = None,
        secret: bytes | None = None,
        tick_rate: float = 20.0,
        ttl: float = 5.0,
        sync: bool = False,
        max_rooms: int = 1024,
        max_options_size: int = 4096,
    ) -> None:
        self.server = server
        self.max_rooms = int(max_rooms)
        self.max_options_size = int(max_options_size)
        self.presence = presence if presence is not None else LocalPresence()
        self.server_id = server_id or uuid.uuid4().hex[:12]
        self._public_addr = public_addr
        self.secret = secret if secret is not None else secrets.token_bytes(32)
        self.tick_rate = float(tick_rate)
        self.ttl = float(ttl)
        self.lock = threading.RLock()
        """Guards the rooms; room hooks run under it (never held while the
        directory is asked, unless the caller holds it itself)."""
        self.kinds: dict[str, tuple[type[Room], dict[str, Any]]] = {}
        self.rooms: dict[str, Room] = {}
        """name -> room."""
        self._room_of: dict[int, Room] = {}
        self._channels: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Directory writes off the rooms thread (a slow or stalled Redis must
        # not stop the ticks): the names of the rooms whose directory entry
        # the directory thread brings up to date (their count now, or their
        # removal), which also refreshes.
        self._dir_queue: set[str] = set()
        self._dir_cond = threading.Condition(threading.Lock())
        self._dir_thread: threading.Thread | None = None
        # Rooms made whose entry was not written yet (under the rooms lock):
        # a join's reservation puts such a room in the directory (a join
        # reserves outside the lock, maybe before the room's maker wrote it).
        self._unlisted: set[str] = set()
        # The writes of a room's entry in flight (name -> their ids), and the
        # seats of joins given back only once the writes of their room that
        # were in flight when the join's own count was written are over:
        # such a write may have read an older count and land after the
        # join's (it writes the room again once it sees the change), and
        # the join's reservation keeps its seat counted until then (never
        # double booked).  Under _writes_lock (nothing else taken under it).
        self._writing: dict[str, set[int]] = {}
        self._held_seats: list[tuple[set[int], str, str]] = []
        self._write_ids = itertools.count(1)
        self._writes_lock = threading.Lock()
        self._sub_lock = threading.Lock()  # subscribe()/unsubscribe(): one presence subscription per channel
        self.stats = {"joins": 0, "leaves": 0, "created": 0, "disposed": 0, "refused": 0, "ticks": 0}
        server.handler(JOIN_PACKET)(self._join_call)
        server.handler(LEAVE_PACKET)(self._leave_call)
        if sync:
            server.register_packet(SNAPSHOT_PACKET, Packet(server.registry, server))
            server.register_packet(INPUT_PACKET, _RouteInput(server.registry, server, self))

    @property
    def public_addr(self) -> str:
        if self._public_addr is not None:
            return self._public_addr
        host, port = self.server.addr[0], self.server.addr[1]
        host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"

    # --- rooms ---------------------------------------------------------------------------------
    def define(self, kind: str, room_cls: type[Room] = Room, **options: Any) -> None:
        """Make rooms of ``kind`` with ``room_cls`` (``options``: defaults
        of every room of that kind)."""
        with self.lock:
            self.kinds[kind] = (room_cls, options)

    def create(self, kind: str, name: str | None = None, options: dict[str, Any] | None = None) -> Room:
        """Make a room (``name``: default a new unique one); any thread.

        The directory is asked about an explicit name (names are the
        cluster's) and given the room's entry before this returns, both
        outside the rooms lock (under it only when the caller holds the
        lock itself, as a room hook does).

        Raises:
            CallError: Unknown kind, or the name is taken.
            NetworkError: The directory cannot be asked about the name.
        """
        if name:
            with self.lock:
                self._check_new(kind, name, True)  # (the refusals that need no directory come first)
            self._not_elsewhere(name)
        pending: list[str] = []
        with self.lock:
            room = self._make(kind, name, options, pending)
        self._write_entries(pending)
        return room

    def _check_new(self, kind: str, name: str, explicit: bool) -> None:
        """Refuse a new room for what needs no directory (lock held);
        ``explicit``: the name is given, not made here (its rule)."""
        if kind not in self.kinds:
            raise CallError(f"no rooms of kind {describe(kind)} here")  # (a client's string: cut short)
        if explicit and not valid_room_name(name):  # (every way in: a direct join, a lobby's seat, the program)
            raise CallError(ROOM_NAME_RULE)
        if name in self.rooms:
            raise CallError(f"room {name!r} exists")
        if len(self.rooms) >= self.max_rooms:
            raise CallError(f"this server holds {self.max_rooms} rooms, its most (max_rooms)")

    def _not_elsewhere(self, name: str) -> None:
        """Refuse a name that a room of another server has (names are the
        cluster's: one room of a name).  It asks the directory: never under
        the rooms lock (any thread)."""
        elsewhere = [r for r in self.presence.rooms() if r["id"] == name and r.get("server") != self.server_id]
        if elsewhere:
            raise CallError(f"room {name!r} exists on another server ({elsewhere[0].get('addr')})")

    def _make(self, kind: str, name: str | None, options: dict[str, Any] | None, pending: list[str]) -> Room:
        """Make a room, with no directory call (lock held; an explicit name
        was checked before, its rule and the directory, by
        :meth:`_check_new` and :meth:`_not_elsewhere`): its name goes to
        ``pending``, the entries the caller writes once it let the lock go."""
        name = name or f"{kind}-{uuid.uuid4().hex[:8]}"
        self._check_new(kind, name, False)  # (again: the rooms may have changed since)
        cls, defaults = self.kinds[kind]
        opts = {**defaults, **(options or {})}
        room = cls(self, name, kind, opts)
        self.rooms[name] = room
        self._unlisted.add(name)
        self.stats["created"] += 1
        try:
            room.on_create(opts)
        except Exception:
            report_user_error("! rooms: on_create of %s raised", name)
        pending.append(name)
        self.server.sendEvent("peng3dnet:room.create", {"room": room})
        return room

    def room_of(self, cid: int) -> Room | None:
        """The room client ``cid`` is in."""
        return self._room_of.get(cid)

    def dispose(self, room: Room) -> None:
        """Close a room: its members leave it first (any thread; the
        directory is told outside the lock, or by the directory thread)."""
        pending: list[str] = []
        with self.lock:
            for cid in list(room.members):
                self._leave(cid, pending)
            if self.rooms.get(room.name) is room:
                self._dispose(room, pending)
        self._write_entries(pending)

    def _dispose(self, room: Room, pending: list[str]) -> None:
        """Take a room away (lock held); its directory entry: see :meth:`_entry_changed`."""
        del self.rooms[room.name]
        self._unlisted.discard(room.name)
        self.stats["disposed"] += 1
        try:
            room.on_dispose()
        except Exception:
            report_user_error("! rooms: on_dispose of %s raised", room.name)
        self._entry_changed(room.name, pending)
        self.server.sendEvent("peng3dnet:room.dispose", {"room": room})

    # --- join / leave (the calls) ------------------------------------------------------------------
    def authenticate(self, client: Any, credentials: Any) -> Any:
        """A login hook (``Server(authenticate=rooms.authenticate)``) that
        admits clients holding a seat token of this server (``credentials``:
        ``{"seat": token}``) and refuses the rest; the seat is then taken by
        the client's join call.  Raises AuthenticationError (``auth:...``)."""
        token = credentials.get("seat") if isinstance(credentials, dict) else None
        try:
            seat = self._check_seat(token)
        except CallError as exc:
            raise AuthenticationError(str(exc)) from None
        return {"seat": seat}

    def _check_seat(self, token: Any) -> Seat:
        try:
            seat = read_token(self.secret, token)
        except TokenError as exc:
            raise CallError(str(exc)) from None
        if seat.server != self.server_id:
            raise CallError("the seat is on another server")
        if not self.presence.claim(seat.seat, max(1.0, seat.expires - time.time() + 60)):
            raise CallError("the seat token was used already")
        return seat

    def _join_call(self, msg: Any, cid: int) -> Any:
        if not isinstance(msg, dict):
            raise CallError("bad join request")
        client = self.server.clients.get(cid)
        if client is None:
            raise CallError("gone")
        raw_options = msg.get("options")
        options: dict[str, Any] = raw_options if isinstance(raw_options, dict) else {}
        if options:
            size = encoded_size(options)
            if size is None or size > self.max_options_size:
                with self.lock:
                    self.stats["refused"] += 1
                raise CallError(f"join options of {size} bytes: at most {self.max_options_size} (max_options_size)")
        name = msg.get("room") if isinstance(msg.get("room"), str) else None
        kind = msg.get("kind") if isinstance(msg.get("kind"), str) else None
        if name is not None and not valid_room_name(name):
            raise CallError(ROOM_NAME_RULE)
        seat: Seat | None = None
        auth = getattr(client, "auth_data", None)
        if isinstance(auth, dict) and isinstance(auth.get("seat"), Seat) and msg.get("seat") is None and not name:
            seat = auth.pop("seat")  # checked and claimed at login
        elif msg.get("seat") is not None:
            seat = self._check_seat(msg.get("seat"))
        # A join by kind (no room, no seat) whose room closed or filled while
        # it reserved its seat chooses again, JOIN_TRIES times in all; a
        # join naming its room (or holding a seat for it) is refused then.
        by_kind = seat is None and name is None and bool(kind)
        for _ in range(JOIN_TRIES):
            answer = self._join_once(client, cid, options, name, kind, seat, by_kind)
            if answer is not None:
                return answer
        with self.lock:
            self.stats["refused"] += 1
        raise CallError(f"the rooms of kind {describe(kind)} closed or filled while the join reserved its seat, "
                        f"{JOIN_TRIES} times: try again")

    def _join_once(self, client: Any, cid: int, options: dict[str, Any], name: str | None, kind: str | None,
                   seat: Seat | None, by_kind: bool) -> Any:
        """One attempt of a join (the server's handler thread): its answer;
        or, for a join ``by_kind``, ``None`` when the room it chose closed
        or filled while it reserved its seat outside the lock: then it left
        nothing behind (its reservation given back, a room it made that
        nobody joined disposed, not counted as refused) and may choose
        again.  Raises CallError (refused)."""
        made: Room | None = None  # a room made for this join: gone again if the join fails
        room: Room | None = None
        own_seat: str | None = None  # a direct join reserves its seat too: reservations are honoured
        pending: list[str] = []  # directory entries to write once the lock is let go
        # The directory is never asked under the lock (a stalled Redis would
        # stop every room's tick): (1) under the lock, the room (made if it
        # must be: a new name is looked up in the directory first, outside);
        # (2) outside, its seat is reserved; (3) under the lock, the room is
        # checked again and the client taken in (on_join); (4) outside, the
        # room's count is written, then the reservation given back.
        try:
            want = seat.room if seat is not None else name
            makes = seat is not None or bool(kind)
            if want is None and kind is None:
                raise CallError("join needs a room, a kind or a seat")
            if want is not None and makes:
                with self.lock:
                    new = want not in self.rooms
                    if new:
                        self._check_new(seat.kind if seat is not None else kind, want, True)  # type: ignore[arg-type]
                if new:  # (made below if still not here: one gone meanwhile is made again unasked, a rare race)
                    self._not_elsewhere(want)
            free: list[tuple[Room, dict[str, Any] | None]] = []
            mine: Room | None = None
            with self.lock:
                if want is None:  # by kind: the fullest room of that kind whose seat we can reserve
                    kind_rooms = (r for r in self.rooms.values() if r.kind == kind and not r.full)
                    free = [(r, r.info() if r.name in self._unlisted else None)
                            for r in sorted(kind_rooms, key=lambda r: -len(r.members))]
                    mine = self._room_of.get(cid)
                else:
                    room = self.rooms.get(want)
                    if room is None and seat is not None:
                        room = made = self._make(seat.kind, want,
                                                 seat.options if isinstance(seat.options, dict) else {}, pending)
                    elif room is None and kind:
                        room = made = self._make(kind, want, options, pending)
                    if room is None:
                        raise CallError(f"no room {want!r}")
            # A reservation puts a room made here in the directory if it is
            # not there yet (``info``: its maker has not written it yet).
            for r, r_info in free:  # (a seat the lobby reserved for someone else is not free)
                if r is mine:
                    room = r
                    break
                token = f"direct-{cid}-{uuid.uuid4().hex[:8]}"
                if self.presence.reserve_seat(r.name, token, 30.0, r_info):
                    room, own_seat = r, token  # (set once reserved: a failed reservation has none to release)
                    break
            with self.lock:
                if room is None:
                    room = made = self._make(kind, None, options, pending)  # type: ignore[arg-type]
                inside = self._room_of.get(cid) is room
                if inside:
                    answer = {"room": room.name, "kind": room.kind, "clients": len(room.members), "data": None}
                elif room.full:
                    raise (_LostRaceError if by_kind else CallError)(f"room {room.name!r} is full")
                info = room.info() if room.name in self._unlisted else None
            if not inside and seat is None and own_seat is None:
                token = f"direct-{cid}-{uuid.uuid4().hex[:8]}"
                if not self.presence.reserve_seat(room.name, token, 30.0, info):
                    raise CallError(f"room {room.name!r} is full (its last seats are reserved)")
                own_seat = token
            if not inside:
                with self.lock:  # the room may have gone, filled, or had us join it meanwhile
                    if self.rooms.get(room.name) is not room:
                        raise (_LostRaceError if by_kind else CallError)(f"room {room.name!r} is closed")
                    inside = self._room_of.get(cid) is room
                    data = None
                    if not inside:
                        if room.full:
                            raise (_LostRaceError if by_kind else CallError)(f"room {room.name!r} is full")
                        data = room.on_join(client, options)
                        if cid in self._room_of:
                            self._leave(cid, pending)
                        room.members[cid] = client
                        self._room_of[cid] = room
                        self.stats["joins"] += 1
                        self.server.sendEvent("peng3dnet:room.join", {"room": room, "client": client})
                    answer = {"room": room.name, "kind": room.kind, "clients": len(room.members), "data": data}
        except Exception as exc:  # (a bug of the room's on_join too: it must leave nothing behind)
            lost = isinstance(exc, _LostRaceError)  # (chosen again: not refused yet)
            with self.lock:
                if not lost:
                    self.stats["refused"] += 1
                if made is not None and not made.members and self.rooms.get(made.name) is made:
                    self._dispose(made, pending)
                gone = room is not None and self.rooms.get(room.name) is not room
            if seat is not None:
                self._release(seat.room, seat.seat)
            if own_seat is not None:
                self._release(room.name, own_seat)  # type: ignore[union-attr]
            if gone:  # (our reservation may have put it in the directory again after its disposal)
                pending.append(room.name)  # type: ignore[union-attr]
            self._write_entries(pending)
            if lost:
                log.debug("rooms: a join by kind chooses again: %s", exc)
                return None
            if isinstance(exc, Peng3dNetError) and not isinstance(exc, CallError):
                raise CallError(f"the directory is unavailable: {exc}") from None
            raise
        taken = seat.seat if seat is not None else own_seat
        if not inside:
            published = self._write_entry(room.name)
            if not published:
                taken = None  # (released only after the count went up: never double booked; it expires)
        if taken is not None:
            self._release_after_writes(room.name, taken)
        self._write_entries([n for n in pending if n != room.name])
        return answer

    def _release_after_writes(self, room: str, seat: str) -> None:
        """Give a join's seat back once the writes of its room's entry in
        flight now are over (any thread, not under the rooms lock): now
        if there are none, else by the last of them (see ``_writing``)."""
        with self._writes_lock:
            waits = set(self._writing.get(room, ()))
            if waits:
                self._held_seats.append((waits, room, seat))
                return
        self._release(room, seat)

    def _release(self, room: str, seat: str) -> None:
        try:
            self.presence.release_seat(room, seat)
        except Peng3dNetError as exc:  # it expires by itself
            log.warning("rooms: cannot release a seat of %s: %s", room, exc)

    def _leave_call(self, msg: Any, cid: int) -> Any:
        """The leave call (the server's handler thread; the directory is
        told outside the lock)."""
        pending: list[str] = []
        with self.lock:
            left = self._leave(cid, pending)
        self._write_entries(pending)
        return left

    def _leave(self, cid: int, pending: list[str]) -> bool:
        """Take ``cid`` out of its room (lock held); its room's directory
        entry: see :meth:`_entry_changed`."""
        room = self._room_of.pop(cid, None)
        if room is None:
            return False
        client = room.members.pop(cid, None)
        if room.sync is not None:
            room.sync.member_left(cid)  # (a leave and a join again before its next tick: both seen)
        self.stats["leaves"] += 1
        try:
            room.on_leave(client)
        except Exception:
            report_user_error("! rooms: on_leave of %s raised", room.name)
        self.server.sendEvent("peng3dnet:room.leave", {"room": room, "client": client})
        if self.rooms.get(room.name) is not room:
            pass  # disposed meanwhile (by its on_leave, or a room.leave handler): not published again
        elif not room.members and room.auto_dispose:
            self._dispose(room, pending)
        else:
            self._entry_changed(room.name, pending)
        return True

    # --- the directory ---------------------------------------------------------------------------
    def _entry_changed(self, name: str, pending: list[str]) -> None:
        """A room's directory entry is out of date (lock held): the
        directory thread writes it if it runs (the rooms thread must not
        wait for the directory), else the caller once it let the lock go
        (``pending``, see :meth:`_write_entries`)."""
        if not self._directory_later(name):
            pending.append(name)

    def _write_entries(self, names: list[str]) -> None:
        """Write the entries of ``names`` (each once) now (not under the rooms lock)."""
        for name in dict.fromkeys(names):
            self._write_entry(name)

    def _directory_later(self, name: str) -> bool:
        """Leave a room's directory entry to the directory thread, if it
        runs (any thread); whether it does."""
        with self._dir_cond:
            if self._dir_thread is None:
                return False
            self._dir_queue.add(name)
            self._dir_cond.notify()
        return True

    def _write_entry(self, name: str) -> bool:
        """Bring one room's directory entry up to date (not under the rooms
        lock): its count as it is now, or its removal when there is no room
        of that name now.  Read again after the write, and written again
        if it changed meanwhile (a join's count written since, a room
        disposed, or made again under that name): what the directory
        keeps is the room's last state, never an older one (a write that
        read the room earlier may land after a later one, until it writes
        again: a join's seat stays reserved until such writes are over, see
        ``_writing``).  Whether the last write went through (a join gives
        its seat back only then)."""
        wid = self._write_starts(name)
        try:
            return self._write_rounds(name)
        finally:
            self._write_ends(name, wid)

    def _write_starts(self, name: str) -> int:
        """A write of ``name``'s entry begins, before it reads the room (any thread): its id."""
        with self._writes_lock:
            wid = next(self._write_ids)
            self._writing.setdefault(name, set()).add(wid)
            return wid

    def _write_ends(self, name: str, wid: int) -> None:
        """Write ``wid`` of ``name``'s entry is over (its thread): the
        joins' seats that waited for it (and no other) are given back."""
        with self._writes_lock:
            ids = self._writing[name]
            ids.discard(wid)
            if not ids:
                del self._writing[name]
            ready = []
            for held in self._held_seats:
                held[0].discard(wid)
                if not held[0]:
                    ready.append(held)
            self._held_seats = [h for h in self._held_seats if h[0]]
        for _, room, seat in ready:
            self._release(room, seat)

    def _write_rounds(self, name: str) -> bool:
        """:meth:`_write_entry`'s writes (registered in ``_writing``)."""
        written: Any = None
        for _ in range(4):  # (changes while we write: each round is rare; the next refresh settles the rest)
            with self.lock:
                room = self.rooms.get(name)
                now = room.info() if room is not None else None
            if written is not None and now == written[0]:
                return True
            try:
                if now is None:
                    self.presence.remove_room(name)
                else:
                    self.presence.set_room(name, now, self.ttl)
                    with self.lock:
                        if self.rooms.get(name) is room:
                            self._unlisted.discard(name)
            except Peng3dNetError as exc:
                log.warning("rooms: cannot %s %s in the directory: %s", "remove" if now is None else "publish",
                            name, exc)
                return False
            written = (now,)
        return True

    def server_info(self) -> dict[str, Any]:
        players = len(self._room_of)
        capacity = int(self.server.cfg["net.limits.max_clients"]) or 1
        return {
            "addr": self.public_addr, "kinds": {k: c.max_clients for k, (c, _) in self.kinds.items()},
            "players": players, "rooms": len(self.rooms), "load": players / capacity,
        }

    def refresh(self) -> None:
        """Tell the directory we are alive, with our rooms (the directory
        thread does it every ``ttl / 3``).  The rooms are read under the
        rooms lock and written outside it (see :meth:`_write_entry`); a
        refresh that ends after :meth:`stop` takes the server out again.

        Raises:
            NetworkError: The directory is unreachable.
        """
        with self.lock:
            if self._stop.is_set():
                return  # stopped (or stopping): a late refresh must not put us back in the directory
            info = self.server_info()
            names = list(self.rooms)
        self.presence.register_server(self.server_id, info, self.ttl)
        for name in names:
            if self._stop.is_set():
                break
            self._write_entry(name)
        if self._stop.is_set():  # stop() ran meanwhile: its leaving may have come before our registering
            self.presence.unregister_server(self.server_id)

    def _run_directory(self) -> None:
        """The directory thread ("peng3dnet rooms directory"): the rooms'
        entries left to it, and a refresh every ``ttl / 3``.  It never
        holds the rooms lock while it waits for the directory."""
        next_refresh = time.monotonic() + self.ttl / 3
        cond = self._dir_cond
        me = threading.current_thread()
        while not self._stop.is_set() and self._dir_thread is me:  # (a start() after a stop() has its own)
            with cond:
                while not self._dir_queue and not self._stop.is_set():
                    left = next_refresh - time.monotonic()
                    if left <= 0:
                        break
                    cond.wait(left)
                batch, self._dir_queue = self._dir_queue, set()
            for name in sorted(batch):
                if self._stop.is_set():
                    return
                try:
                    self._write_entry(name)
                except Exception:  # (a room's info() msgpack cannot pack...): this thread must live on
                    log.exception("! rooms: writing %s to the directory failed", name)
            if time.monotonic() >= next_refresh:
                next_refresh = time.monotonic() + self.ttl / 3
                try:
                    self.refresh()
                except Exception as exc:  # noqa: BLE001 - the thread must live on: retried next time
                    log.warning("rooms: directory refresh failed: %s", exc)

    # --- messages between processes -------------------------------------------------------------
    def subscribe(self, channel: str) -> None:
        """Deliver messages published on ``channel`` (by any process) as
        ``peng3dnet:cluster.message`` events ``{channel, data}`` of this
        server (on the presence's thread)."""
        with self._sub_lock:  # (two threads subscribing at once: one presence subscription)
            if channel not in self._channels:
                self.presence.subscribe(channel, self._on_message)  # (raises in an outage: not recorded, retry later)
                self._channels.add(channel)

    def _on_message(self, channel: str, data: Any) -> None:
        self.server.sendEvent(CLUSTER_EVENT, {"channel": channel, "data": data})

    def publish(self, channel: str, data: Any) -> int:
        """Send ``data`` to the subscribers of ``channel`` in every process."""
        return self.presence.publish(channel, data)

    # --- the rooms thread ---------------------------------------------------------------------------
    def start(self) -> threading.Thread:
        """Register in the directory and start ticking (thread "peng3dnet rooms")."""
        self._stop.clear()
        self.refresh()
        dthread = threading.Thread(target=self._run_directory, name="peng3dnet rooms directory", daemon=True)
        with self._dir_cond:
            self._dir_thread = dthread
        dthread.start()
        t = threading.Thread(target=self._run, name="peng3dnet rooms", daemon=True)
        self._thread = t
        t.start()
        return t

    def stop(self) -> None:
        """Stop ticking, dispose of every room, leave the directory (a
        refresh that ran late, on the rooms thread or another, puts
        nothing back: refreshes after this do nothing)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        with self._dir_cond:  # the directory's last writes are ours now, made here
            dthread, self._dir_thread = self._dir_thread, None
            self._dir_queue.clear()
            self._dir_cond.notify_all()
        if dthread is not None and dthread is not threading.current_thread():
            # (It may wait for the rooms lock, held by our caller (a room
            # hook), or for a stalled Redis: not for ever.  A refresh it
            # ends after our leaving takes the server out again.)
            dthread.join(1)
        with self.lock:
            for room in list(self.rooms.values()):
                self.dispose(room)
        with self._sub_lock:
            for channel in list(self._channels):
                try:
                    self.presence.unsubscribe(channel, self._on_message)
                except Peng3dNetError as exc:  # (a directory outage: we leave anyway)
                    log.warning("rooms: cannot unsubscribe from %s: %s", channel, exc)
            self._channels.clear()
        try:
            self.presence.unregister_server(self.server_id)
        except Peng3dNetError as exc:
            log.warning("rooms: cannot leave the directory: %s", exc)

    def _run(self) -> None:
        period = 1.0 / self.tick_rate
        next_tick = time.monotonic()
        while not self._stop.is_set():
            try:
                self.step(period)
            except Exception:
                report_user_error("! rooms: a tick raised")
            next_tick += period
            delay = next_tick - time.monotonic()
            if delay < -period:
                next_tick, delay = time.monotonic(), 0.0
            if delay > 0:
                self._stop.wait(delay)

    def step(self, dt: float | None = None) -> None:
        """One tick of every room: members that closed leave, then each
        room's sync and ``on_tick`` (the rooms thread, or a test's)."""
        dt = 1.0 / self.tick_rate if dt is None else dt
        pending: list[str] = []  # (only while the directory thread does not run: a test's ticks)
        with self.lock:
            self.stats["ticks"] += 1
            clients = self.server.clients
            for cid in [c for c in self._room_of if c not in clients]:
                self._leave(cid, pending)
            for room in list(self.rooms.values()):
                try:  # one room's error never stops the others' ticks
                    if room.sync is not None:
                        room.sync.step(dt)
                    room.on_tick(dt)
                except Exception:
                    report_user_error("! rooms: the tick of %s raised", room.name)
        self._write_entries(pending)
