"""Presence on Redis (or Valkey), with redis-py: many server processes, on
one machine or many, share one directory (``pip install peng3dnet[redis]``).

Keys live under a namespace (default ``peng3dnet``), all of them under
one hash tag ``{NS}``, so that they share one slot of a Redis Cluster (the
Lua scripts and multi-key commands need that; a directory is small):

* ``{NS}:server:ID`` (msgpack info, expires after its TTL) and the set
  ``{NS}:servers``;
* ``{NS}:room:ID`` (a hash: ``info`` msgpack, ``max_clients``, ``clients``,
  ``server``, ``kind``; expires) and the set ``{NS}:rooms``;
* ``{NS}:seats:ROOM``, a sorted set of reservations scored by their expiry
  (Redis ``TIME``, so the clocks of the processes do not matter);
  :meth:`RedisPresence.reserve_seat` is one Lua script: no double booking;
* ``{NS}:claim:TOKEN`` (``SET NX``): a used reservation token;
* keys ``{NS}:kv:KEY``, sorted sets ``{NS}:z:KEY``;
* channels ``NS:ch:NAME`` (``PUBLISH``; channels are not keys).

On a cluster (``cluster=True``) :meth:`RedisPresence.publish` publishes on
the primary that holds the namespace's slot, only there (it raises
``NetworkError`` when that node cannot be reached), and counts the
processes subscribed on that node.  The listener subscribes on that
primary too, or, when it cannot be reached, on another one (classic
pub/sub reaches every node, so the messages still arrive, but publish()
does not count that process; it stays there until its connection is lost).

Thread safety: any thread (redis-py's connection pool).  Subscriptions
belong to one thread, "peng3dnet presence" (started by the first
:meth:`RedisPresence.subscribe`): it alone uses redis-py's ``PubSub``
(which is not thread-safe).  :meth:`~RedisPresence.subscribe` and
:meth:`~RedisPresence.unsubscribe` hand it a request and wait for the
outcome.  It runs a :class:`~peng3dnet.transport.Reactor`: it waits on a
selector (the subscription's socket and a wake-up socketpair, no time-out),
reads the replies redis-py buffered before it blocks again (at most
``_DRAIN_MAX`` at a time, and it stops early for queued requests or
:meth:`~RedisPresence.close`: a steady flow of messages cannot hold them
up), runs the callbacks, and after a lost connection subscribes to the
recorded channels again (an attempt a second, a timer).  If the thread
dies (an exception that is not an ``Exception``, e.g. ``SystemExit`` from a
callback), the presence's subscriptions are failed: requests raise
``NetworkError`` at once.
"""

from __future__ import annotations

import logging
import selectors
import threading
import urllib.parse
from collections.abc import Callable
from typing import Any

import msgpack

from ...errors import NetworkError
from ...transport import EVENT_READ, Reactor
from .presence import Presence

__all__ = ["RedisPresence"]

log = logging.getLogger(__name__)

_RESERVE = """
local room, seats, index = KEYS[1], KEYS[2], KEYS[3]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('EXISTS', room) == 0 then
  if ARGV[2] == '' then return 0 end
  redis.call('HSET', room, 'info', ARGV[2], 'max_clients', ARGV[5], 'clients', 0, 'server', ARGV[6], 'kind', ARGV[7])
  redis.call('PEXPIRE', room, ARGV[3])
  redis.call('SADD', index, ARGV[4])
end
redis.call('ZREMRANGEBYSCORE', seats, '-inf', now)
local max = tonumber(redis.call('HGET', room, 'max_clients') or '0')
local clients = tonumber(redis.call('HGET', room, 'clients') or '0')
if clients + redis.call('ZCARD', seats) >= max then return 0 end
redis.call('ZADD', seats, now + tonumber(ARGV[3]), ARGV[1])
if redis.call('PTTL', seats) < tonumber(ARGV[3]) then redis.call('PEXPIRE', seats, ARGV[3]) end
return 1
"""
_FREE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i, seats in ipairs(KEYS) do out[i] = redis.call('ZCOUNT', seats, now, '+inf') end
return out
"""


_REQUEST_TIMEOUT = 10.0  # subscribe()/unsubscribe() wait this long for the listener (the socket time-out)
_READ_TIMEOUT = 10.0  # a message begun is read to its end within this
_RETRY_DELAY = 1.0  # subscribing again after a lost connection: attempts this far apart
_CLOSE_JOIN = 5.0  # close() waits this long for a callback the listener is running
_CONNECT_TIMEOUT = 1.0  # the listener's own connect time-out (requests wait behind it)
_DRAIN_MAX = 64  # messages read in one go before the listener looks at its requests again


class _Request:
    """A subscribe() or unsubscribe() for the listener thread; ``done`` is
    set (under the presence's lock) unless the caller gave up first."""

    __slots__ = ("op", "channel", "callback", "done", "error", "cancelled")

    def __init__(self, op: str, channel: str, callback: Callable[[str, Any], None]) -> None:
        self.op = op
        self.channel = channel
        self.callback = callback
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.cancelled = False


def _nothing() -> None:
    pass


def _selectable(base: Any) -> Any:
    """``base`` (a redis-py connection class) with ``fileno()``: its socket's
    descriptor (-1 while not connected), for a selector; and ``socket()``:
    the socket object (``None`` while not connected)."""

    class SelectableConnection(base):  # type: ignore[misc,valid-type]
        def fileno(self) -> int:
            sock = self._sock
            return -1 if sock is None else int(sock.fileno())

        def socket(self) -> Any:
            return self._sock

    return SelectableConnection


def _pack(value: Any) -> bytes:
    return msgpack.packb(value)  # type: ignore[no-any-return]


def _unpack(data: bytes | None) -> Any:
    return None if data is None else msgpack.unpackb(data, raw=False, strict_map_key=False)


class RedisPresence(Presence):
    """Presence on a Redis server.

    Args:
        url: ``redis://host:port/db`` (``rediss://`` for TLS); with
            ``cluster``, any node of the cluster (``redis://host:port``).
        namespace: Prefix of every key and channel (not empty).
        cluster: Talk to a Redis Cluster (redis-py's ``RedisCluster``).

    Raises:
        ImportError: redis-py is not installed (``pip install peng3dnet[redis]``).
        ValueError: ``namespace`` is empty.
        NetworkError: (``cluster``) no node of the cluster answers (it is
            asked for its slots at once).
    """

    def __init__(self, url: str, namespace: str = "peng3dnet", *, cluster: bool = False) -> None:
        import redis  # optional dependency: only this class needs it
        from redis.cluster import RedisCluster

        if not namespace:
            raise ValueError("RedisPresence: the namespace must not be empty (it is the keys' hash tag)")
        self._redis_mod = redis
        # (a cluster's own errors, e.g. no node reachable, are not RedisErrors)
        self._errors = (redis.exceptions.RedisError, redis.exceptions.RedisClusterException)
        self.url = url
        self.ns = namespace
        self.cluster = cluster
        """Whether this talks to a Redis Cluster."""
        self._tag = "{" + namespace + "}"
        self.r: Any = self._call((RedisCluster if cluster else redis.Redis).from_url,
                                 url, socket_timeout=10, socket_connect_timeout=5)
        self._reserve = self.r.register_script(_RESERVE)
        self._free = self.r.register_script(_FREE)
        # Subscriptions: a client of its own, without redis-py's retries (the
        # listener thread reconnects, and subscribes again, itself).
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self._ps_kw = {"socket_timeout": _READ_TIMEOUT, "socket_connect_timeout": _CONNECT_TIMEOUT,
                       "retry": Retry(NoBackoff(), 0, supported_errors=())}
        self._ps_clients: dict[str, Any] = {}  # node url -> its client (one without a cluster)
        self._lock = threading.Lock()  # guards _requests, _thread, _failed, _ps_clients and the requests' completion
        # (touched by the listener thread only, from its start on; on a cluster made by _connect)
        self._ps: Any = None if cluster else self._ps_client(url).pubsub()
        self._requests: list[_Request] = []
        self._thread: threading.Thread | None = None
        self._failed: str | None = None  # why the listener thread ended, when it did without close()
        self._doing = "idle"  # what the listener thread is doing (for close()'s warning)
        self._stop = threading.Event()
        self._reactor = Reactor("peng3dnet presence")
        # the listener thread's own (see "The listener thread runs a Reactor" below)
        self._subs: dict[str, list[Callable[[str, Any], None]]] = {}
        self._conn: Any = None
        self._fd = -1  # _conn's socket's descriptor when it was registered
        self._sock: Any = None  # ... and that socket (held: a new one is never taken for it)
        self._drain_queued = False  # a _drain is queued with after_io (once at most)
        self._requested: set[str] = set()
        self._confirmed: set[str] = set()
        self._waiting: dict[str, list[_Request]] = {}
        self._retry_timer: Any = None

    def _k(self, *parts: str) -> str:
        return ":".join((self._tag, *parts))

    def _ch(self, channel: str) -> str:
        return f"{self.ns}:ch:{channel}"

    def _ps_client(self, url: str) -> Any:
        with self._lock:
            client = self._ps_clients.get(url)
            if client is None:
                # (its connections have a fileno(): the listener's selector watches them)
                cls = _selectable(self._redis_mod.connection.parse_url(url).get(
                    "connection_class", self._redis_mod.connection.Connection))
                client = self._ps_clients[url] = self._redis_mod.Redis.from_url(url, connection_class=cls, **self._ps_kw)
            return client

    def _msg_nodes(self) -> list[Any]:
        # (cluster) the namespace slot's primary first, then the other primaries
        owner = self.r.get_node_from_key(self._k())
        return [owner] + [n for n in self.r.get_primaries() if n.name != owner.name]

    def _node_url(self, node: Any) -> str:
        parts = urllib.parse.urlsplit(self.url)
        user = parts.netloc.rpartition("@")[0]
        host = f"[{node.host}]" if ":" in node.host else node.host
        return urllib.parse.urlunsplit((parts.scheme, f"{user}@{host}:{node.port}" if user else f"{host}:{node.port}",
                                        "/0", parts.query, ""))

    def _call(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except self._errors as exc:  # unreachable, time-out, read-only, out of memory...
            raise NetworkError(f"redis at {self.url}: {type(exc).__name__}: {exc}") from exc

    # --- servers -----------------------------------------------------------------------------
    def register_server(self, server_id: str, info: dict[str, Any], ttl: float) -> None:
        p = self.r.pipeline(transaction=True)
        p.set(self._k("server", server_id), _pack(info), px=max(1, int(ttl * 1000)))
        p.sadd(self._k("servers"), server_id)
        self._call(p.execute)

    def unregister_server(self, server_id: str) -> None:
        for room in self.rooms():
            if room.get("server") == server_id:
                self.remove_room(room["id"])
        p = self.r.pipeline(transaction=True)
        p.delete(self._k("server", server_id))
        p.srem(self._k("servers"), server_id)
        self._call(p.execute)

    def servers(self) -> dict[str, dict[str, Any]]:
        ids = sorted(x.decode() for x in self._call(self.r.smembers, self._k("servers")))
        if not ids:
            return {}
        values = self._call(self.r.mget, [self._k("server", i) for i in ids])
        out = {}
        gone = []
        for sid, raw in zip(ids, values):
            if raw is None:
                gone.append(sid)
            else:
                out[sid] = _unpack(raw)
        if gone:
            self._call(self.r.srem, self._k("servers"), *gone)
        return out

    # --- rooms -------------------------------------------------------------------------------
    def set_room(self, room_id: str, info: dict[str, Any], ttl: float) -> None:
        key = self._k("room", room_id)
        p = self.r.pipeline(transaction=True)
        p.hset(key, mapping={
            "info": _pack(info), "max_clients": int(info.get("max_clients", 0)), "clients": int(info.get("clients", 0)),
            "server": str(info.get("server", "")), "kind": str(info.get("kind", "")),
        })
        p.pexpire(key, max(1, int(ttl * 1000)))
        p.sadd(self._k("rooms"), room_id)
        self._call(p.execute)

    def remove_room(self, room_id: str) -> None:
        p = self.r.pipeline(transaction=True)
        p.delete(self._k("room", room_id))  # (one key per DELETE: a cluster's pipeline has no multi-key one)
        p.delete(self._k("seats", room_id))
        p.srem(self._k("rooms"), room_id)
        self._call(p.execute)

    def rooms(self, kind: str | None = None) -> list[dict[str, Any]]:
        ids = sorted(x.decode() for x in self._call(self.r.smembers, self._k("rooms")))
        if not ids:
            return []
        p = self.r.pipeline(transaction=True)
        for rid in ids:
            p.hgetall(self._k("room", rid))
        rows = self._call(p.execute)
        live = self.servers()
        reserved_counts = self._call(self._free, keys=[self._k("seats", rid) for rid in ids])  # one round trip
        out = []
        gone = []
        for rid, row, reserved_raw in zip(ids, rows, reserved_counts):
            if not row:
                gone.append(rid)
                continue
            info = _unpack(row.get(b"info")) or {}
            info["clients"] = int(row.get(b"clients", 0))
            if info.get("server") not in live or (kind is not None and info.get("kind") != kind):
                continue
            reserved = int(reserved_raw)
            info["seats"] = max(0, int(info.get("max_clients", 0)) - info["clients"] - reserved)
            info["id"] = rid
            out.append(info)
        if gone:
            self._call(self.r.srem, self._k("rooms"), *gone)
        return out

    def reserve_seat(self, room_id: str, seat_id: str, ttl: float, info: dict[str, Any] | None = None) -> bool:
        args = [
            seat_id, _pack(info) if info is not None else b"", max(1, int(ttl * 1000)), room_id,
            int((info or {}).get("max_clients", 0)), str((info or {}).get("server", "")), str((info or {}).get("kind", "")),
        ]
        keys = [self._k("room", room_id), self._k("seats", room_id), self._k("rooms")]
        return bool(self._call(self._reserve, keys=keys, args=args))

    def release_seat(self, room_id: str, seat_id: str) -> None:
        self._call(self.r.zrem, self._k("seats", room_id), seat_id)

    def claim(self, token_id: str, ttl: float) -> bool:
        return bool(self._call(self.r.set, self._k("claim", token_id), b"1", nx=True, px=max(1, int(ttl * 1000))))

    # --- messages ------------------------------------------------------------------------------
    def publish(self, channel: str, data: Any) -> int:
        if self.cluster:  # where the processes subscribe: their count (each node counts its own)
            return int(self._call(lambda: self.r.publish(self._ch(channel), _pack(data),
                                                         target_nodes=self.r.get_node_from_key(self._k()))))
        return int(self._call(self.r.publish, self._ch(channel), _pack(data)))

    def subscribe(self, channel: str, callback: Callable[[str, Any], None]) -> None:
        """Call ``callback(channel, data)`` for every message published on
        ``channel`` from now on: when this returns, Redis has confirmed the
        subscription (from a callback, on the listener thread itself: it has
        been sent, not yet confirmed).

        Thread safety: any thread; the listener thread carries it out.

        Raises:
            NetworkError: Redis cannot be reached or did not confirm within
                the socket time-out (10 s; the confirmation comes after the
                messages Redis queued for this process before it, a
                backlog when the callbacks are slower than the flow); the
                callback is not recorded.
        """
        self._request(_Request("subscribe", channel, callback))

    def unsubscribe(self, channel: str, callback: Callable[[str, Any], None]) -> None:
        """Stop calling ``callback`` for ``channel``: not called once this
        returns.  The callback is forgotten even when Redis cannot be told
        (the error is raised after): in an outage nothing is sent (the
        subscription went with the connection, and is not made again).

        Thread safety: any thread; the listener thread carries it out.

        Raises:
            NetworkError: Redis could not be told; or the listener thread
                did not answer within 10 s (it is still queued then, and
                carried out when the listener gets to it: the callback may
                be called until then); or the presence is closed.
        """
        self._request(_Request("unsubscribe", channel, callback))

    def _request(self, req: _Request) -> None:
        if self._reactor.in_loop():  # a callback (un)subscribing: no one else to wait for
            if self._stop.is_set():
                raise NetworkError(f"redis at {self.url}: the presence is closed")
            self._serve(req, inline=True)
        else:
            with self._lock:
                if self._stop.is_set():
                    raise NetworkError(f"redis at {self.url}: the presence is closed")
                if self._failed is not None:
                    raise NetworkError(f"redis at {self.url}: {self._failed}")
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="peng3dnet presence", daemon=True)
                    self._thread.start()
                self._requests.append(req)
            self._reactor.call_soon(self._take_requests)  # (wakes it)
            if not req.done.wait(_REQUEST_TIMEOUT):
                with self._lock:
                    if not req.done.is_set():
                        req.cancelled = True  # (a late confirmation records nothing)
                        raise NetworkError(f"redis at {self.url}: no answer to {req.op} {req.channel!r} "
                                           f"within {_REQUEST_TIMEOUT:g} s")
        if req.error is not None:  # (a new exception for each caller: one object is not raised on two threads)
            exc = req.error
            if isinstance(exc, NetworkError):
                raise NetworkError(str(exc)) from exc.__cause__
            raise NetworkError(f"redis at {self.url}: {type(exc).__name__}: {exc}") from exc

    # The listener thread runs a Reactor (peng3dnet.transport: a selector,
    # a wake-up socketpair, cross-thread calls, timers).  It alone touches
    # the PubSub (redis-py's is not thread-safe): it serves the requests of
    # subscribe()/unsubscribe(), reads replies and messages when the
    # subscription's socket is readable (never on a clock), and reconnects.
    # State, all its own:
    #   _subs       channel -> callbacks (recorded: subscribed again after a reconnect)
    #   _conn       the subscription's redis-py connection, registered (None: down)
    #   _requested  channels SUBSCRIBE was sent for on that connection
    #   _confirmed  ... and Redis confirmed
    #   _waiting    channel -> subscribe requests waiting for that confirmation
    # A subscribe completes (and its callback is recorded) on Redis's
    # confirmation, under _lock, unless its caller gave up (cancelled).

    _selector: Callable[[], selectors.BaseSelector] = selectors.DefaultSelector  # (tests count its waits)

    def _run(self) -> None:
        why = "the presence is closed"
        try:
            self._reactor.run(self._selector, _nothing)
        except Exception as exc:
            why = f"the listener thread failed ({type(exc).__name__}: {exc})"
            log.exception("presence: the listener failed")
        except BaseException as exc:  # (SystemExit from a callback...: it ends the thread, said here)
            why = f"the listener thread ended ({type(exc).__name__}: {exc})"
            log.warning("presence: %s; subscriptions fail from now on", why, exc_info=True)
        finally:
            with self._lock:  # (before the requests are failed: no new one waits for this thread)
                if not self._stop.is_set():
                    self._failed = why
                requests, self._requests = self._requests, []
                clients = list(self._ps_clients.values())
            self._disconnect()
            self._reactor.close()
            for req in requests:
                self._complete(req, NetworkError(f"redis at {self.url}: {why}"))
            for reqs in self._waiting.values():
                for req in reqs:
                    self._complete(req, NetworkError(f"redis at {self.url}: {why}"))
            self._waiting = {}
            for client in clients:
                client.close()

    def _take_requests(self) -> None:
        with self._lock:
            requests, self._requests = self._requests, []
        for req in requests:
            self._serve(req)

    def _complete(self, req: _Request, error: BaseException | None = None) -> bool:
        with self._lock:
            if req.cancelled:
                return False
            if error is None and req.op == "subscribe":
                self._subs.setdefault(req.channel, []).append(req.callback)
            req.error = error
            req.done.set()
            return True

    def _send(self, *args: str) -> None:
        self._ps.execute_command(*args)
        self._drain_soon()  # (a reply redis-py holds already: not on the socket)

    def _drain_soon(self) -> None:
        """Queue :meth:`_drain` at the end of this round of the loop, once
        (listener thread)."""
        if not self._drain_queued:
            self._drain_queued = True
            self._reactor.after_io(self._drain)

    def _serve(self, req: _Request, inline: bool = False) -> None:
        ch, key = req.channel, self._ch(req.channel)
        try:
            if req.op == "unsubscribe":
                subs = self._subs.get(ch)
                if subs is not None and req.callback in subs:
                    subs.remove(req.callback)
                if subs is not None and not subs:
                    del self._subs[ch]  # (forgotten here whatever Redis says: no callback to deliver to)
                    # Only a confirmed SUBSCRIBE is undone here: one still on its way
                    # is undone by _confirm (a later subscribe() must not take that
                    # SUBSCRIBE's confirmation for its own one after an UNSUBSCRIBE).
                    if ch in self._confirmed and not self._waiting.get(ch):
                        self._requested.discard(ch)
                        self._confirmed.discard(ch)
                        if self._conn is not None:
                            self._send("UNSUBSCRIBE", key)
                self._complete(req)
                return
            if self._conn is None:
                self._connect(ch)  # (raises: Redis is not there now)
            if ch in self._confirmed:
                self._complete(req)
            else:
                if ch not in self._requested:
                    self._send("SUBSCRIBE", key)
                    self._requested.add(ch)
                if inline:
                    self._complete(req)  # (sent; its confirmation cannot be waited for on this thread)
                else:
                    self._waiting.setdefault(ch, []).append(req)
        except Exception as exc:  # noqa: BLE001 - handed to the caller (as NetworkError)
            self._complete(req, exc)
            if self._conn is not None and isinstance(exc, (*self._errors, OSError)):
                self._lost(exc)

    def _connect(self, extra: str | None = None) -> None:
        # (Re)connect and subscribe to every recorded channel (and ``extra``);
        # on a cluster, on the namespace slot's primary, else another one.
        channels = list(self._subs)
        if extra is not None and extra not in self._subs:
            channels.append(extra)
        args = [self._ch(c) for c in channels]
        doing = self._doing  # (a callback subscribing: back to that after)
        try:
            if not self.cluster:
                self._doing = f"connecting to {self.url}"
                self._ps.reset()
                self._ps.execute_command("SUBSCRIBE", *args)
            else:
                failure: Exception | None = None
                self._doing = f"looking up the cluster's nodes at {self.url}"
                for node in self._msg_nodes():
                    if self._ps is not None:
                        self._ps.reset()
                    self._doing = f"connecting to {node.host}:{node.port}"
                    self._ps = self._ps_client(self._node_url(node)).pubsub()
                    try:
                        self._ps.execute_command("SUBSCRIBE", *args)
                        break
                    except self._errors as exc:
                        failure = exc
                else:
                    assert failure is not None
                    raise failure
        finally:
            self._doing = doing
        self._requested = set(channels)
        self._confirmed = set()
        self._conn = self._ps.connection
        # (registered by its descriptor: were redis-py to reconnect it by itself,
        # a new one, the old one must still be found to unregister it)
        self._fd = self._conn.fileno()
        self._sock = self._conn.socket()
        self._reactor.register(self._fd, EVENT_READ, self._on_readable)  # type: ignore[arg-type]  # (selectors take a descriptor)
        self._drain_soon()

    def _lost(self, exc: BaseException) -> None:
        log.warning("presence: subscription lost (%s: %s); retrying", type(exc).__name__, exc)
        self._disconnect()
        waiting, self._waiting = self._waiting, {}
        for reqs in waiting.values():
            for req in reqs:
                self._complete(req, exc)
        self._retry_soon()

    def _retry_soon(self) -> None:
        if self._retry_timer is None:
            self._retry_timer = self._reactor.call_later(_RETRY_DELAY, self._retry)

    def _retry(self) -> None:
        self._retry_timer = None
        if self._conn is not None or not self._subs:
            return  # (connected by a request meanwhile, or nothing to subscribe to)
        try:
            self._connect()
            log.info("presence: subscribed again to %d channel(s)", len(self._subs))
        except Exception as exc:  # noqa: BLE001 - Redis is not back yet
            log.info("presence: cannot subscribe again yet (%s: %s)", type(exc).__name__, exc)
            self._disconnect()
            self._retry_soon()

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._reactor.unregister(self._fd)  # type: ignore[arg-type]
            self._conn = None
            self._fd = -1
            self._sock = None
        self._requested = set()
        self._confirmed = set()
        if self._ps is None:
            return
        try:
            self._ps.reset()
        except Exception:  # noqa: BLE001 - closing a broken connection
            log.debug("presence: closing the subscription's connection failed", exc_info=True)

    def _on_readable(self, mask: int) -> None:
        self._drain()

    def _drain(self) -> None:
        # What is readable now, redis-py's buffer first (data it read
        # already is not on the socket any more); a message begun is read to
        # its end (socket time-out).  At most _DRAIN_MAX messages, and one
        # only while requests (or stop()) are queued: the rest waits for the next
        # round of the loop (after_io: redis-py's buffer is invisible to the
        # selector), after the queued calls ran.
        reactor = self._reactor
        self._drain_queued = False
        try:
            n = 0
            while self._conn is not None:
                if self._conn.socket() is not self._sock:
                    # redis-py connected again by itself (a command sent while it was
                    # down, a callback's): a new socket (maybe with the old
                    # descriptor's number, so not told by fileno()), subscribed to
                    # nothing we know of, not watched
                    raise self._redis_mod.exceptions.ConnectionError("the connection was replaced")
                if not self._conn.can_read(timeout=0):
                    break
                if n >= _DRAIN_MAX or (n and reactor.has_pending()):  # (one message a round at least)
                    self._drain_soon()
                    return
                n += 1
                msg = self._ps.handle_message(self._ps.parse_response(block=False, timeout=_READ_TIMEOUT))
                if msg is None:
                    continue
                kind = msg.get("type")
                if kind == "message":
                    self._deliver(msg)
                elif kind == "subscribe":
                    self._confirm(msg["channel"].decode()[len(self._ch("")):])
        except Exception as exc:  # noqa: BLE001 - the connection broke: say so, try again
            if self._conn is not None:
                self._lost(exc)
            else:
                log.debug("presence: reading after the connection went", exc_info=True)

    def _confirm(self, ch: str) -> None:
        if ch not in self._requested:
            return  # (unsubscribed since)
        self._confirmed.add(ch)
        for req in self._waiting.pop(ch, ()):
            self._complete(req)
        if ch not in self._subs:  # every caller gave up: no one to deliver to
            self._requested.discard(ch)
            self._confirmed.discard(ch)
            self._send("UNSUBSCRIBE", self._ch(ch))

    def _deliver(self, msg: dict[str, Any]) -> None:
        channel = msg["channel"].decode()[len(self._ch("")):]
        try:
            data = _unpack(msg["data"])
        except Exception:  # noqa: BLE001 - not ours
            log.info("presence: undecodable message on %s dropped", channel)
            return
        for cb in list(self._subs.get(channel, ())):
            # (not a callback unsubscribed by an earlier one of this message, nor after close())
            if self._reactor.stopping or cb not in self._subs.get(channel, ()):
                continue
            self._doing = "in a callback"
            try:
                cb(channel, data)
            except Exception:
                log.exception("presence: subscriber of %s raised", channel)
            finally:
                self._doing = "idle"

    # --- shared data ---------------------------------------------------------------------------
    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        self._call(self.r.set, self._k("kv", key), _pack(value), px=None if ttl is None else max(1, int(ttl * 1000)))

    def get(self, key: str, default: Any = None) -> Any:
        raw = self._call(self.r.get, self._k("kv", key))
        return default if raw is None else _unpack(raw)

    def delete(self, key: str) -> None:
        self._call(self.r.delete, self._k("kv", key), self._k("z", key))

    def incr_score(self, key: str, member: str, amount: float) -> float:
        return float(self._call(self.r.zincrby, self._k("z", key), amount, member))

    def top(self, key: str, n: int = 10) -> list[tuple[str, float]]:
        rows = self._call(self.r.zrevrange, self._k("z", key), 0, max(0, n - 1), withscores=True)
        return [(m.decode(), float(s)) for m, s in rows]

    def close(self) -> None:
        """Stop the listener thread (at once, unless it is running a
        callback or connecting: waited for 5 s at most) and close the
        connections (the listener closes its own as it ends).  No callback
        is called once this returned (but one running may still be, when
        the 5 s passed).

        Thread safety: any thread, a callback's too."""
        with self._lock:
            self._stop.set()
            thread = self._thread
            clients = list(self._ps_clients.values()) if thread is None else []
        self._reactor.stop()
        if thread is not None and thread is not threading.current_thread():
            thread.join(_CLOSE_JOIN)
            if thread.is_alive():
                log.warning("presence: the listener thread is still busy (%s); it ends after that", self._doing)
        for client in clients:  # (no listener thread ever: nobody else closes them)
            client.close()
        self.r.close()
