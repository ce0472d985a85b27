"""Packet plans and the hot path's other caches.

Hot path note
-------------
Sending and receiving a packet must not re-read the config, re-inspect a
packet class or re-filter event receivers each time.  Every cache the
per-packet paths use is listed here with what invalidates it; nothing else
is cached.

1. ``Peer._send_plans`` (:class:`SendPlan` per ``ptype`` key): rebuilt when
   ``Registry.version`` changes (register, remap) or the key's type differs
   (``64.0``/``True`` must not find the plan of ``64``/``1``).
2. ``Peer._recv_plans`` (:class:`RecvPlan` per pid): rebuilt when
   ``Registry.version`` changes.  A class whose receive would do nothing
   gets ``call=None`` and its packets are not queued at all.
3. Config copies (``Peer._h_*``, made by :func:`hot_settings`): refreshed
   when ``peer.cfg[key] = value`` is set and by the housekeeping timer
   (about once a second), so a change made in a Peng's config is seen
   within a second.
4. Event routes (``events.bus.Route``, one per peer for recv and send):
   rebuilt when the signal's receivers change (its ``version``).
5. Per connection, at creation (``Link``): the owner's ``on_receive`` and
   ``on_send`` hooks (``None`` when not overridden); ``Link.plain`` once
   the first plaintext read was checked.
6. Per thread: one msgpack Packer (:func:`thread_pack`), dropped after a
   body larger than ``PACKER_KEEP``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, NamedTuple

import msgpack

from .inbox import NO_LIMIT
from .packet import Packet, SmartPacket

__all__ = ['SendPlan', 'RecvPlan', 'BASE_RECEIVE', 'BASE_SEND', 'NO_EVENT', 'thread_pack', 'hot_settings', 'quiet_smart']

log = logging.getLogger(__name__)

class SendPlan(NamedTuple):
    """What sending one ``ptype`` needs (cached per ptype; see :meth:`Peer._send_plan`)."""

    regver: int  # the registry version it was made for
    pid: int
    pobj: Any  # the packet object, or None
    hooks: bool  # call pobj._send after queueing (the class overrides _send or send)
    smart: bool  # a SmartPacket (the strict send check applies)
    keytype: type  # type(ptype): 64.0 or True must not find the plan of 64 or 1


class RecvPlan(NamedTuple):
    """What receiving one pid needs (cached per pid; see :meth:`Peer._recv_plan`)."""

    regver: int
    pobj: Any
    call: Any  # what to call with (msg, cid): pobj.receive when the class keeps
    # Packet._receive (which would only call it), else pobj._receive; None
    # when nothing would happen (then the packet is not even queued)


BASE_RECEIVE = (Packet._receive, Packet.receive)  # a class that keeps both is not queued
BASE_SEND = (Packet._send, Packet.send)
NO_EVENT = object()  # marks a send the connection type does not announce
_LOCAL = threading.local()  # per thread: .pack, a msgpack Packer's pack method
PACKER_KEEP = 256 * 1024  # a Packer that encoded more than this is dropped


def thread_pack(value: Any) -> bytes:
    """msgpack-encode with this thread's Packer (it reuses its buffer; a
    Packer is not thread-safe, so one per thread).  After a body larger than
    ``PACKER_KEEP`` (measured before any compression) the Packer is
    dropped, so no thread keeps a huge buffer."""
    try:
        pack = _LOCAL.pack
    except AttributeError:
        pack = _LOCAL.pack = msgpack.Packer().pack
    body: bytes = pack(value)
    if len(body) > PACKER_KEEP:
        del _LOCAL.pack
    return body


def hot_settings(cfg: Any, rate_reads: bool) -> dict[str, Any]:
    """The config values the per-packet paths read, as the ``_h_*``
    attributes a peer keeps (cache 3 of the hot path note).

    Args:
        cfg: The peer's layered config.
        rate_reads: Whether rate limits apply to this peer's reads (a
            server's: they limit what clients send).
    """
    rate_p = float(cfg["net.limits.rate.packets"])
    rate_b = float(cfg["net.limits.rate.bytes"])
    burst = float(cfg["net.limits.rate.burst"])
    rate = rate_p > 0 or rate_b > 0
    inflate_rate = float(cfg["net.limits.inflate.rate"])
    return {
        "_h_write_total": int(cfg["net.limits.write_buffer_total"]),
        "_h_read_total": int(cfg["net.limits.read_buffer_total"]) if rate_reads else 0,
        # incomplete packets are counted (Flow.hold_read) for the server-wide
        # cap or for the minimum rate (both sides: a server may trickle too)
        "_h_read_held": bool((rate_reads and int(cfg["net.limits.read_buffer_total"]) > 0)
                             or float(cfg["net.limits.min_read_rate"]) > 0),
        "_h_write_block": int(cfg["net.limits.write_buffer_block"]),
        "_h_inflate": inflate_rate > 0,
        "_h_inflate_rate": inflate_rate,
        "_h_inflate_cap": int(inflate_rate * float(cfg["net.limits.inflate.burst"])),
        "_h_events": bool(cfg["net.events.enable"]),
        "_h_print_recv": bool(cfg["net.debug.print.recv"]),
        "_h_print_send": bool(cfg["net.debug.print.send"]),
        "_h_recv_queue": int(cfg["net.limits.recv_queue"]),
        # (inline, nothing is queued: no limit, and the read path need not ask)
        "_h_recv_bytes": NO_LIMIT if cfg["net.process.inline"] else int(cfg["net.limits.recv_queue_bytes"]) or NO_LIMIT,
        "_h_recv_total": NO_LIMIT if cfg["net.process.inline"] else int(cfg["net.limits.recv_queue_total"]) or NO_LIMIT,
        "_h_write_cap": int(cfg["net.limits.write_buffer"]),
        "_h_write_raise": cfg["net.limits.write_buffer_action"] == "raise",
        "_h_rate_p": rate_p,
        "_h_rate_b": rate_b,
        "_h_rate_burst": burst,
        # the buckets' sizes; the packet bucket holds one packet at least
        # (else int(tokens) stays 0 and a throttled connection stalls for good)
        "_h_rate_cap_p": max(rate_p * burst, 1.0) if rate_p > 0 else 0.0,
        "_h_rate_cap_b": rate_b * burst,
        "_h_rate_drop": cfg["net.limits.rate.action"] == "drop",
        "_h_rate_throttle": cfg["net.limits.rate.action"] == "throttle",
        # the packet bucket sets the reads' quota (Server._read_quota)
        "_h_rate_quota": rate_reads and cfg["net.limits.rate.action"] == "throttle" and rate_p > 0,
        "_h_rate": rate,
        "_h_rate_reads": rate and rate_reads,
        "_h_inline": bool(cfg["net.process.inline"]),
        "_h_strict_send": bool(cfg["net.smartpacket.strict_send"]),
        "_h_compress": (
            bool(cfg["net.compress.enabled"]),
            int(cfg["net.compress.threshold"]),
            int(cfg["net.compress.level"]),
        ),
    }


def quiet_smart(cls: Any, hook: str) -> bool:
    """A SmartPacket class whose check cannot be observed on this path: it
    keeps SmartPacket's ``_receive``/``_send`` and the no-op hook, and
    ignores invalid packets.  Calling it would do nothing, so the hot path
    skips it (the receive side does not even queue the packet)."""
    if not issubclass(cls, SmartPacket) or cls.invalid_action != "ignore":
        return False
    if hook == "send":
        return cls._send is SmartPacket._send and cls.send is Packet.send
    return cls._receive is SmartPacket._receive and cls.receive is Packet.receive
