"""Packet plans: what sending or receiving one packet needs, cached."""

from __future__ import annotations

import logging
import threading
from typing import Any, NamedTuple

import msgpack

from .packet import Packet

__all__ = ['SendPlan', 'RecvPlan', 'BASE_RECEIVE', 'BASE_SEND', 'NO_EVENT', 'thread_pack']

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
