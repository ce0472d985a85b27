"""Presence on Redis (or Valkey), with redis-py: many server processes, on
one machine or many, share one directory (``pip install peng3dnet[redis]``).

Keys live under a namespace (default ``peng3dnet``):

* ``NS:server:ID`` (msgpack info, expires after its TTL) and the set
  ``NS:servers``;
* ``NS:room:ID`` (a hash: ``info`` msgpack, ``max_clients``, ``clients``,
  ``server``, ``kind``; expires) and the set ``NS:rooms``;
* ``NS:seats:ROOM``, a sorted set of reservations scored by their expiry
  (Redis ``TIME``, so the clocks of the processes do not matter);
  :meth:`RedisPresence.reserve_seat` is one Lua script: no double booking;
* ``NS:claim:TOKEN`` (``SET NX``): a used reservation token;
* channels ``NS:ch:NAME`` (``PUBLISH``), keys ``NS:kv:KEY``, sorted sets
  ``NS:z:KEY``.

Thread safety: any thread (redis-py's connection pool); subscription
callbacks run on the thread "peng3dnet presence".
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import msgpack

from ...errors import NetworkError
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
return redis.call('ZCOUNT', KEYS[1], now, '+inf')
"""


def _pack(value: Any) -> bytes:
    return msgpack.packb(value)  # type: ignore[no-any-return]


def _unpack(data: bytes | None) -> Any:
    return None if data is None else msgpack.unpackb(data, raw=False, strict_map_key=False)


class RedisPresence(Presence):
    """Presence on a Redis server.

    Args:
        url: ``redis://host:port/db`` (``rediss://`` for TLS).
        namespace: Prefix of every key and channel.

    Raises:
        ImportError: redis-py is not installed (``pip install peng3dnet[redis]``).
    """

    def __init__(self, url: str, namespace: str = "peng3dnet") -> None:
        import redis  # optional dependency: only this class needs it

        self._redis_mod = redis
        self.url = url
        self.ns = namespace
        self.r = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
        self._reserve = self.r.register_script(_RESERVE)
        self._free = self.r.register_script(_FREE)
        self._lock = threading.Lock()
        self._subs: dict[str, list[Callable[[str, Any], None]]] = {}
        self._pubsub: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def _k(self, *parts: str) -> str:
        return ":".join((self.ns, *parts))

    def _call(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except self._redis_mod.exceptions.RedisError as exc:  # unreachable, time-out, read-only, out of memory...
            raise NetworkError(f"redis at {self.url}: {type(exc).__name__}: {exc}") from exc

    # --- servers -----------------------------------------------------------------------------
    def register_server(self, server_id: str, info: dict[str, Any], ttl: float) -> None:
        p = self.r.pipeline()
        p.set(self._k("server", server_id), _pack(info), px=max(1, int(ttl * 1000)))
        p.sadd(self._k("servers"), server_id)
        self._call(p.execute)

    def unregister_server(self, server_id: str) -> None:
        for room in self.rooms():
            if room.get("server") == server_id:
                self.remove_room(room["id"])
        p = self.r.pipeline()
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
        p = self.r.pipeline()
        p.hset(key, mapping={
            "info": _pack(info), "max_clients": int(info.get("max_clients", 0)), "clients": int(info.get("clients", 0)),
            "server": str(info.get("server", "")), "kind": str(info.get("kind", "")),
        })
        p.pexpire(key, max(1, int(ttl * 1000)))
        p.sadd(self._k("rooms"), room_id)
        self._call(p.execute)

    def remove_room(self, room_id: str) -> None:
        p = self.r.pipeline()
        p.delete(self._k("room", room_id), self._k("seats", room_id))
        p.srem(self._k("rooms"), room_id)
        self._call(p.execute)

    def rooms(self, kind: str | None = None) -> list[dict[str, Any]]:
        ids = sorted(x.decode() for x in self._call(self.r.smembers, self._k("rooms")))
        if not ids:
            return []
        p = self.r.pipeline()
        for rid in ids:
            p.hgetall(self._k("room", rid))
        rows = self._call(p.execute)
        live = self.servers()
        p = self.r.pipeline()  # every room's live reservations in one round trip
        for rid in ids:
            self._free(keys=[self._k("seats", rid)], client=p)
        reserved_counts = self._call(p.execute)
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
        return int(self._call(self.r.publish, self._k("ch", channel), _pack(data)))

    def subscribe(self, channel: str, callback: Callable[[str, Any], None]) -> None:
        with self._lock:
            if self._pubsub is None:
                self._pubsub = self.r.pubsub(ignore_subscribe_messages=True)
            if channel not in self._subs:  # (recorded once subscribed: a failure is retried by the next call)
                self._call(self._pubsub.subscribe, self._k("ch", channel))
            self._subs.setdefault(channel, []).append(callback)
            if self._thread is None:
                self._thread = threading.Thread(target=self._listen, name="peng3dnet presence", daemon=True)
                self._thread.start()

    def unsubscribe(self, channel: str, callback: Callable[[str, Any], None]) -> None:
        with self._lock:
            subs = self._subs.get(channel, [])
            if callback in subs:
                subs.remove(callback)
            if not subs and channel in self._subs:
                del self._subs[channel]  # (forgotten here whatever Redis says: no callback to deliver to)
                if self._pubsub is not None:
                    self._call(self._pubsub.unsubscribe, self._k("ch", channel))

    def _listen(self) -> None:
        prefix = self._k("ch", "")
        while not self._stop.is_set():
            try:
                msg = self._pubsub.get_message(timeout=1.0)  # blocks on the socket, at most 1 s
            except Exception as exc:  # noqa: BLE001 - the connection broke: say so, try again
                if self._stop.is_set():
                    return
                log.warning("presence: subscription lost (%s); retrying", exc)
                self._stop.wait(1.0)
                continue
            if msg is None or msg.get("type") != "message":
                continue
            channel = msg["channel"].decode()[len(prefix):]
            try:
                data = _unpack(msg["data"])
            except Exception:  # noqa: BLE001 - not ours
                log.info("presence: undecodable message on %s dropped", channel)
                continue
            with self._lock:
                subs = list(self._subs.get(channel, ()))
            for cb in subs:
                try:
                    cb(channel, data)
                except Exception:
                    log.exception("presence: subscriber of %s raised", channel)

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
        self._stop.set()
        if self._thread is not None:
            self._thread.join(3)
        if self._pubsub is not None:
            try:
                self._pubsub.close()
            except Exception:  # noqa: BLE001 - closing
                pass
        self.r.close()
