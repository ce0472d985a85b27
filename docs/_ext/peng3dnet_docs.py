"""Local Sphinx extension of the peng3dnet documentation.

It generates, from the code, the parts of the documentation that must not
drift from it:

``.. peng3dnet-events::``
    Every event of :data:`peng3dnet.events.CATALOG`: its name, when it
    fires (the catalog's own text), the thread it fires on, the keys of its
    data and what they mean.
``.. peng3dnet-config::``
    Every key of :data:`peng3dnet.constants.DEFAULT_CONFIG`: its default,
    the values it accepts and what it means.
``.. peng3dnet-cli-help:: [SUBCOMMAND]``
    The ``--help`` text of the ``peng3dnet`` command (or of one of its
    subcommands), from :func:`peng3dnet.cli.build_parser`.

The code knows the names (events and their keys, config keys and their
defaults); the meanings that the code does not carry are kept here, in
:data:`EVENTS`, :data:`EVENT_KEYS` and :data:`CONFIG`.  The build fails
(``ExtensionError``) when the code has an event, a data key or a config key
that has no description here, or when a description here names something
the code no longer has; and a page that generates the catalog or the help
text must show all of it (no subcommand left out).

Roles: ``:netevent:`peng3dnet:client.recv``` and
``:netconf:`net.session.resume``` link to an entry of those pages (a
reference to an unknown one is a warning, so an error with ``-W``);
``:readme:`text <anchor>``` links to a section of the repository's
``README.md`` and checks that the section exists.

It also keeps napoleon from reading the first sentence of an attribute
docstring that contains a colon ("The 6-byte packet header: id and
flags") as a type annotation.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
from collections.abc import Iterator
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.errors import ExtensionError
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles, split_explicit_title

logger = logging.getLogger(__name__)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
README = os.path.join(ROOT, "README.md")

# --------------------------------------------------------------------------------------------
# Events: what the catalog (peng3dnet/events/catalog.py) does not say.
# --------------------------------------------------------------------------------------------

NET = "the network thread"
"""Shorthand: the thread that runs the peer's loop (see the events page)."""

EVENTS: dict[str, tuple[str, str]] = {
    # name: (the side whose object sends it, the thread it fires on)
    "peng3dnet:server.initialize": ("server", "the thread that calls ``initialize()`` (``runAsync()``, "
                                    "``runBlocking()`` and ``poll()`` call it)"),
    "peng3dnet:server.bind": ("server", "the thread that calls ``bind()`` (or ``runAsync()``, ...)"),
    "peng3dnet:server.start": ("server", NET + ", as the loop starts"),
    "peng3dnet:server.interrupt": ("server", "the thread that calls ``interrupt()``"),
    "peng3dnet:server.stop": ("server", NET + ", after every connection's close; the thread that calls "
                              "``stop()``/``shutdown()`` when no loop ran"),
    "peng3dnet:server.shutdown": ("server", NET + ", right after ``stop``; the calling thread when no loop ran"),
    "peng3dnet:server.connection.accept": ("server", NET),
    "peng3dnet:server.connection.auth": ("server", NET + ", before ``handshakecomplete``"),
    "peng3dnet:server.connection.suspended": ("server", NET),
    "peng3dnet:server.connection.resumed": ("server", NET),
    "peng3dnet:server.connection.handshakecomplete": ("server", NET),
    "peng3dnet:server.connection.send": ("server", "the thread that called ``send_message()`` (after the "
                                         "message was queued); " + NET + " for the packets the library "
                                         "sends by itself. Handlers run under the connection's lock: keep "
                                         "them short"),
    "peng3dnet:server.connection.recv": ("server", NET),
    "peng3dnet:server.connection.close": ("server", NET),
    "peng3dnet:server.connection.heartbeat": ("server", NET),
    "peng3dnet:client.initialize": ("client", "the thread that calls ``initialize()`` (``connect()``, "
                                    "``runAsync()``, ... call it)"),
    "peng3dnet:client.connect": ("client", "the thread that calls ``connect()`` (or ``runAsync()``, ...)"),
    "peng3dnet:client.start": ("client", NET + ", as the loop starts"),
    "peng3dnet:client.interrupt": ("client", "the thread that calls ``interrupt()``"),
    "peng3dnet:client.reconnecting": ("client", NET),
    "peng3dnet:client.resumed": ("client", NET),
    "peng3dnet:client.handshakecomplete": ("client", NET),
    "peng3dnet:client.send": ("client", "as ``peng3dnet:server.connection.send``: the sending thread"),
    "peng3dnet:client.recv": ("client", NET),
    "peng3dnet:client.close": ("client", NET),
    "peng3dnet:client.heartbeat": ("client", NET),
    "peng3dnet:client.stop": ("client", NET + ", as the loop ends; the thread that calls ``stop()`` when "
                              "no loop ran"),
    "peng3dnet:room.create": ("server", "the thread that made the room: the server's handler thread for a "
                              "join call, or the program's thread calling ``RoomServer.create()``"),
    "peng3dnet:room.join": ("server", "the server's handler thread (where ``process()`` runs), which "
                            "answers the join call"),
    "peng3dnet:room.leave": ("server", "the server's handler thread (a leave call, or a join of another "
                             "room); the rooms thread when the member's connection closed"),
    "peng3dnet:room.dispose": ("server", "the thread on which the last member left (see ``room.leave``), "
                               "or that called ``RoomServer.dispose()``"),
    "peng3dnet:cluster.message": ("server", "the presence's thread (Redis pub/sub), or the publishing "
                                  "thread with the in-process directory"),
    "peng3dnet:sync.join": ("server", "the sync tick thread (\"peng3dnet sync Thread\"), or the thread "
                            "calling ``SyncServer.step()``, right after ``on_join``"),
    "peng3dnet:sync.leave": ("server", "the sync tick thread, right after ``on_leave``"),
    "peng3dnet:sync.snapshot": ("client", "the thread that processes the client's packets "
                                "(``process()``, ``process_async()``'s thread, or " + NET + " inline)"),
    "peng3dnet:sync.desync": ("client", "the thread that processes the client's packets"),
}
"""Event name -> (the side of its sender, the thread it fires on)."""

EVENT_GROUPS: list[tuple[str, str, str]] = [
    # (name prefix, section title, introduction), in the order of the page
    ("peng3dnet:server.", "Server", "The life of a :class:`~peng3dnet.net.Server`."),
    ("peng3dnet:server.connection.", "Server: connections",
     "Events of one connection of a server; the data's ``client`` is its "
     ":class:`~peng3dnet.net.ClientOnServer`."),
    ("peng3dnet:client.", "Client", "The life of a :class:`~peng3dnet.net.Client` and its connection."),
    ("peng3dnet:room.", "Rooms (``ext.rooms``)",
     "Emitted by a :class:`~peng3dnet.ext.rooms.RoomServer` through its server."),
    ("peng3dnet:cluster.", "Cluster (``ext.rooms``)",
     "Messages between the server processes of a game, through the directory."),
    ("peng3dnet:sync.", "State sync (``ext.sync``)",
     "Emitted by :class:`~peng3dnet.ext.sync.SyncServer` (through the server) and "
     ":class:`~peng3dnet.ext.sync.SyncClient` (through the client)."),
]
"""How the events page is divided; an event goes to the group with the longest matching prefix."""

EVENT_KEYS: dict[str, str] = {
    # key: meaning (for every event that has it, unless EVENT_KEY_OVERRIDES says otherwise)
    "addr": "an address, ``(host, port)``",
    "reason": "the close reason (a str, or ``None`` when the peer gave none)",
    "join": "the ``join`` argument of ``shutdown()``",
    "timeout": "the ``timeout`` argument of ``shutdown()`` (seconds; 0: no limit)",
    "sock": "the socket (a ``socket.socket``, an ``ssl.SSLSocket`` with TLS); do not read from it or "
            "write to it",
    "client": "the connection's :class:`~peng3dnet.net.ClientOnServer`",
    "cid": "the connection id (an int, the key of ``server.clients``)",
    "ok": "``True`` when the login hook accepted the client",
    "pid": "the packet id (below 64: an internal packet of the library)",
    "data": "the message sent (any msgpack value; credentials and session tokens are shown as "
            "``\"<redacted>\"``)",
    "msg": "the message received, decoded (credentials and session tokens are shown as "
           "``\"<redacted>\"``)",
    "rtt": "the round trip time just measured, in seconds",
    "stats": "the connection's counters as a dict (:meth:`~peng3dnet.net.ConnectionStats.as_dict`: "
             "``bytes_in``, ``bytes_out``, ``packets_in``, ``packets_out``, ``rtt``, ...)",
    "attempt": "the number of the next reconnect attempt (1 for the first)",
    "delay": "seconds until that attempt (exponential back-off with jitter, "
             ":netconf:`net.client.reconnect.delay` to :netconf:`net.client.reconnect.max_delay`)",
    "room": "the :class:`~peng3dnet.ext.rooms.Room`",
    "channel": "the channel the message was published on (a str)",
    "eid": "the entity the client owned (``SyncServer.owners[cid]``), or ``None``",
    "tick": "the server tick of the snapshot",
    "view": "the client's authoritative view after the snapshot: entity id -> state dict",
}
"""Data key -> its meaning."""

EVENT_KEY_OVERRIDES: dict[tuple[str, str], str] = {
    ("peng3dnet:server.bind", "addr"): "the address the server listens on, ``(host, port)`` (the real port "
                                       "when port 0 was asked for)",
    ("peng3dnet:server.connection.accept", "addr"): "the client's address, as ``accept()`` returned it",
    ("peng3dnet:server.connection.accept", "client"): "the new :class:`~peng3dnet.net.ClientOnServer` "
                                                      "(its ``on_connect`` runs right after)",
    ("peng3dnet:client.connect", "addr"): "the server's address, ``(host, port)``",
    ("peng3dnet:server.stop", "reason"): "why the loop stops: ``\"method\"`` (``stop()`` or ``shutdown()`` "
                                         "was called)",
    ("peng3dnet:server.shutdown", "reason"): "the close reason sent to every client (``\"servershutdown\"`` "
                                             "unless ``shutdown(reason=...)``)",
    ("peng3dnet:server.connection.auth", "reason"): "``None`` when accepted; else the close reason the "
                                                    "client gets, ``\"auth:...\"``",
    ("peng3dnet:server.connection.suspended", "reason"): "why the socket went: the reason its connection "
                                                         "would have closed with (e.g. ``socketclose``, "
                                                         "``timeout``)",
    ("peng3dnet:server.connection.close", "reason"): "the close reason: the one the peer sent in "
                                                     "``closeconn``, ours, or one the library chose (e.g. "
                                                     "``socketclose``); ``resumed`` for the short-lived "
                                                     "connection whose socket a resumed session took over",
    ("peng3dnet:client.stop", "reason"): "``\"method\"`` after ``stop()``, ``\"connectionclosed\"`` when the "
                                         "connection closed",
    ("peng3dnet:room.join", "client"): "the :class:`~peng3dnet.net.ClientOnServer` that joined",
    ("peng3dnet:room.leave", "client"): "the :class:`~peng3dnet.net.ClientOnServer` that left",
    ("peng3dnet:cluster.message", "data"): "what was published (any msgpack value)",
    ("peng3dnet:sync.join", "cid"): "the connection id of the client that joined",
    ("peng3dnet:sync.leave", "cid"): "the connection id of the client that left",
    ("peng3dnet:sync.desync", "tick"): "the server tick of the snapshot that failed",
    ("peng3dnet:sync.desync", "reason"): "what went wrong: a checksum mismatch, a malformed snapshot, or "
                                         "a missing delta base; a full snapshot was requested",
}
"""(event, key) -> its meaning for that event only."""

EVENT_NOTES: dict[str, str] = {
    "peng3dnet:server.stop": "It comes after the close of every connection that was still open.",
    "peng3dnet:server.connection.accept": "Connections refused at once (``serverfull``, ``addresslimit``) "
                                          "have no events at all.",
    "peng3dnet:server.connection.auth": "At most once per connection, and not when the client left before "
                                        "the decision; only on a server with a login hook.",
    "peng3dnet:server.connection.handshakecomplete": "Emitted by the base ``ClientOnServer."
                                                     "on_handshake_complete``; not again after a resume.",
    "peng3dnet:server.connection.send": "Internal packets always; application packets when the connection "
                                        "type allows it.",
    "peng3dnet:server.connection.recv": "Internal packets always; application packets when the connection "
                                        "type allows it, before they are queued for ``process()``.",
    "peng3dnet:server.connection.close": "Also when the handshake failed.  A session that lost its "
                                         "socket is suspended, not closed: its close comes when it ends "
                                         "(e.g. ``sessionexpired``).",
    "peng3dnet:server.connection.heartbeat": "Only on connections that negotiated the ``heartbeat`` "
                                             "extension.",
    "peng3dnet:client.connect": "Once per client: a resumed session's new socket brings ``reconnecting`` and "
                                "``resumed`` instead.",
    "peng3dnet:client.reconnecting": "Only with :netconf:`net.session.resume`; once before each attempt.",
    "peng3dnet:client.close": "A session that lost its socket is not closed (see "
                                  "``reconnecting``): its close comes when it ends.",
    "peng3dnet:sync.desync": "The failed snapshot is counted in ``SyncClient.stats[\"desyncs\"]``.",
}
"""Event name -> a remark from the README that the catalog does not make."""

_EVENT_INTRO = """\
Every event's data is a dict.  Besides the keys listed for each event, it
always holds ``peng`` (the ``peng3d.Peng`` given to the peer, or ``None``)
and the peer that sent it: ``server`` (a :class:`~peng3dnet.net.Server`) or
``client`` (a :class:`~peng3dnet.net.Client`), as listed for each event.
"""


def _event_group(name: str) -> str | None:
    prefixes = [p for p, _, _ in EVENT_GROUPS if name.startswith(p)]
    return max(prefixes, key=len) if prefixes else None


def _check_events() -> None:
    """Raise ExtensionError when the catalog and the descriptions here disagree."""
    from peng3dnet.events import CATALOG

    problems = []
    for name in CATALOG:
        if name not in EVENTS:
            problems.append(f"event {name} has no thread/side in docs/_ext/peng3dnet_docs.py EVENTS")
        if _event_group(name) is None:
            problems.append(f"event {name} fits no group of EVENT_GROUPS")
    for name in EVENTS:
        if name not in CATALOG:
            problems.append(f"EVENTS describes {name}, which is not in the catalog")
    keys_used = set()
    for name, spec in CATALOG.items():
        for key in spec.keys:
            keys_used.add(key)
            if (name, key) not in EVENT_KEY_OVERRIDES and key not in EVENT_KEYS:
                problems.append(f"data key {key!r} of {name} has no description (EVENT_KEYS)")
    for key in EVENT_KEYS:
        if key not in keys_used:
            problems.append(f"EVENT_KEYS describes {key!r}, which no event of the catalog has")
    for name in EVENT_NOTES:
        if name not in CATALOG:
            problems.append(f"EVENT_NOTES describes {name}, which is not in the catalog")
    for name, key in EVENT_KEY_OVERRIDES:
        if name not in CATALOG or key not in CATALOG[name].keys:
            problems.append(f"EVENT_KEY_OVERRIDES describes {key!r} of {name}, which the catalog does not have")
    for name, (side, _) in EVENTS.items():
        if side not in ("server", "client"):
            problems.append(f"EVENTS: side of {name} must be 'server' or 'client', not {side!r}")
        for role in ("server", "client"):
            if name.startswith(f"peng3dnet:{role}.") and side != role:
                problems.append(f"EVENTS: {name} is sent by a {role}, not a {side}")
    if problems:
        raise ExtensionError("the event catalog and the docs disagree:\n  " + "\n  ".join(problems))


_THREAD_NOTE = re.compile(r"\s*\([^()]*thread[^()]*\)\s*$")
"""A catalog text's closing remark on the thread: the Thread field says it."""


def _sentence(text: str) -> str:
    """Capitalise (unless it starts with a name: ``interrupt()``, ``ext.rooms``), mark up calls, end with a dot."""
    text = text.strip()
    if re.match(r"[a-z]+(?![\w.(])", text):
        text = text[0].upper() + text[1:]
    text = re.sub(r"(?<![`\w])(\w+\(\))", r"``\1``", text)
    return text if text.endswith(".") else text + "."


def events_rst() -> list[str]:
    """The events page's body, as reStructuredText lines."""
    from peng3dnet.events import CATALOG

    lines = _EVENT_INTRO.splitlines() + [""]
    grouped: dict[str, list[str]] = {prefix: [] for prefix, _, _ in EVENT_GROUPS}
    for name in CATALOG:
        grouped[str(_event_group(name))].append(name)
    for prefix, title, intro in EVENT_GROUPS:
        names = grouped[prefix]
        if not names:
            continue
        lines += [title, "-" * len(title), "", intro, ""]
        for name in names:
            spec = CATALOG[name]
            side, thread = EVENTS[name]
            lines += [f".. netevent:: {name}", ""]
            lines += [f"   {_sentence(_THREAD_NOTE.sub('', spec.doc))}"]
            if name in EVENT_NOTES:
                lines += [f"   {EVENT_NOTES[name]}"]
            lines += [""]
            lines += [f"   :Signal: ``peng3dnet.events.{spec.attr}``"]
            lines += [f"   :Sent by: the {side} (data key ``{side}``)"]
            lines += [f"   :Thread: {_sentence(thread)}"]
            if spec.keys:
                lines += ["   :Data:"]
                for key in spec.keys:
                    meaning = EVENT_KEY_OVERRIDES.get((name, key), EVENT_KEYS.get(key, ""))
                    lines += [f"      - ``{key}``: {meaning}"]
            else:
                lines += ["   :Data: nothing beyond ``peng`` and the sender"]
            lines += [""]
    return lines


# --------------------------------------------------------------------------------------------
# Configuration: what DEFAULT_CONFIG (peng3dnet/constants.py) does not say.
# --------------------------------------------------------------------------------------------

CONFIG_GROUPS: list[tuple[str, tuple[str, ...]]] = [
    # (section title, key prefixes); the first group with a matching prefix wins
    ("Addresses and connecting", ("net.server.addr", "net.client.addr", "net.server.dualstack",
                                  "net.client.connect_timeout")),
    ("Sessions and reconnecting", ("net.session.", "net.client.reconnect")),
    ("Compression", ("net.compress.",)),
    ("Packets, registry and handlers", ("net.registry.", "net.smartpacket.", "net.process.", "net.client.shared_loop")),
    ("Events and debugging", ("net.events.", "net.debug.")),
    ("Login", ("net.auth.",)),
    ("Time-outs and heartbeats", ("net.timeout.", "net.heartbeat.")),
    ("TLS", ("net.ssl.", "net.encrypt.")),
    ("Limits", ("net.limits.",)),
]

CONFIG: dict[str, str] = {
    "net.server.addr": "Server: the address to listen on (``(host, port)``, ``\"host:port\"``, "
                       "``\"[v6]:port\"``); wins over the two keys below.  An empty host listens on every "
                       "interface.",
    "net.server.addr.host": "Server: the host to listen on when :netconf:`net.server.addr` is not set.",
    "net.server.addr.port": "Server: the port to listen on; also the port of an address given without one.",
    "net.client.addr": "Client: the server's address; wins over the two keys below.",
    "net.client.addr.host": "Client: the server's host when :netconf:`net.client.addr` is not set.",
    "net.client.addr.port": "Client: the server's port; also the port of an address given without one.",
    "net.client.connect_timeout": "Client: seconds ``connect()`` (the TCP connection and, with TLS, its "
                                  "handshake) may block.",
    "net.server.dualstack": "Server: a server bound to an IPv6 address (``\"::\"``) also accepts IPv4 "
                            "clients.",
    "net.compress.enabled": "Compress outgoing bodies longer than :netconf:`net.compress.threshold` with "
                            "zlib.  Received bodies are accepted compressed or not, whatever this says.",
    "net.compress.threshold": "Bytes of msgpack body above which an outgoing body is compressed.",
    "net.compress.level": "The zlib compression level (0-9).",
    "net.ssl.enabled": "Use TLS (both sides must agree; there is never a silent fall back to plaintext).",
    "net.ssl.force": "Accepted for 0.1.x programs and otherwise unused: TLS is never dropped silently here, "
                     "so there is nothing to force.",
    "net.encrypt.enabled": "Accepted for 0.1.x programs: protocol 2 has no AES encryption; ``True`` gives a "
                           "``ConfigWarning`` (use TLS).",
    "net.ssl.cafile": "CA bundle to verify the peer with (a client: the server's certificate; a server: "
                      "client certificates).",
    "net.ssl.server.certfile": "Server: its certificate chain (required with TLS).",
    "net.ssl.server.keyfile": "Server: the key of its certificate (required with TLS).",
    "net.ssl.server.force_verify": "Server: require a client certificate signed by "
                                   ":netconf:`net.ssl.cafile`.  Without it, a client certificate is verified "
                                   "when one is sent and a CA file is set, and not asked for otherwise.",
    "net.ssl.client.check_hostname": "Client: with :netconf:`net.ssl.client.force_verify`, check that the "
                                     "certificate names the host connected to.  Off by default as in 0.1.x.",
    "net.ssl.client.force_verify": "Client: verify the server's certificate (against "
                                   ":netconf:`net.ssl.cafile`, or the system's store).  Off by default as in "
                                   "0.1.x, so that programs joining self-signed servers keep working: turn it "
                                   "on for any server with a real certificate.",
    "net.ssl.client.certfile": "Client: its certificate, for mutual authentication.",
    "net.ssl.client.keyfile": "Client: the key of its certificate.",
    "net.events.enable": "``False``: emit no events at all; ``True`` or ``\"auto\"``: emit them on the "
                         "bus, and to ``peng.sendEvent`` when a ``Peng`` was given.",
    "net.debug.print.recv": "Log every packet received at INFO (logger ``peng3dnet``).",
    "net.debug.print.send": "Log every packet sent at INFO.",
    "net.debug.print.connect": "Log every connection made or accepted at INFO.",
    "net.debug.print.close": "Log every connection closed at INFO.",
    "net.registry.autosync": "Client: at the handshake, check the server's registry against ours and adopt "
                             "its numbering.",
    "net.registry.missingpacketaction": "Client: what to do when the two registries name different "
                                        "packets: ``\"closeconnection\"`` (reason ``packetregmismatch``) or "
                                        "``\"ignore\"``.",
    "net.smartpacket.strict_send": "``True``: a ``SmartPacket`` whose check fails on send raises "
                                   "``LocalProtocolError`` and nothing is sent.  ``False`` (as 0.1.x): the "
                                   "message is sent and the check only decides whether the ``send()`` hook "
                                   "runs.",
    "net.process.inline": "Run packet handlers on the network thread as packets arrive, instead of queueing "
                          "them for ``process()`` (lowest latency; handlers must be quick and must not "
                          "block).",
    "net.timeout.handshake": "Seconds a connection may take to complete its handshake (a stalled TLS "
                             "handshake and a ping that never completes included); then it closes with "
                             "``handshaketimeout``.  0: no limit.",
    "net.timeout.idle": "Close a connection that sent nothing for this many seconds (reason ``timeout``), "
                        "version-2 peers included.  0: off.",
    "net.timeout.send": "Seconds ``send_message`` from a program thread waits for a full write buffer "
                        "(:netconf:`net.limits.write_buffer_block`) to drain before it raises "
                        "``WriteBufferFullError``.",
    "net.timeout.auth": "Server: seconds the login hook may take before the client is refused with "
                        "``auth:timeout``.  0: no limit (the handshake time-out still applies).",
    "net.timeout.call": "Seconds ``call()`` waits for the answer when not given ``timeout``; then "
                        "``TimedOutError``.  0: no limit.",
    "net.session.resume": "Resume a connection after its socket dropped: the server keeps the client's "
                          "session, the client reconnects, nothing is lost.  Needed on both sides.",
    "net.session.grace": "Server: seconds a dropped session waits for its client before it closes with "
                         "``sessionexpired``.",
    "net.session.replay_buffer": "Bytes sent and not yet acknowledged that a session keeps for a resume; "
                                 "over it the session closes with ``replayoverflow``.",
    "net.session.replay_total": "Server: the replay buffers of all sessions together; over it the sessions "
                                "with the largest are closed (``replayoverflow``) until the rest fit.  "
                                "0: no limit.",
    "net.client.shared_loop": "Client: ``runAsync()`` serves the client on the process's one shared network "
                              "thread (see :class:`~peng3dnet.client.NetworkLoop`) instead of a thread of its "
                              "own; ``False``: a thread per client.",
    "net.client.reconnect": "Client: reconnect attempts after a drop before the session closes with "
                            "``resume:failed``.",
    "net.client.reconnect.delay": "Client: seconds before the first reconnect attempt (doubled after each "
                                  "failed one, with jitter).",
    "net.client.reconnect.max_delay": "Client: the longest delay between two reconnect attempts.",
    "net.auth.credentials": "Client: what to log in with when the server asks (any msgpack value; "
                            "``Client(credentials=...)`` wins).",
    "net.auth.workers": "Server: threads that run the ``authenticate`` hook (0: it runs on the network "
                        "thread, which it then blocks).",
    "net.heartbeat.enabled": "Offer the ``heartbeat`` extension (liveness probes and RTT measurement; only "
                             "between peers that both offer it).",
    "net.heartbeat.interval": "Seconds between two probes on a connection that negotiated heartbeats.",
    "net.heartbeat.timeout": "Such a connection silent for longer than this many seconds closes with "
                             "``timeout`` (or, with sessions, is suspended).",
    "net.limits.max_packet_size": "The largest length prefix accepted; a larger one closes the connection "
                                  "with ``packettoolarge`` as soon as its 4 bytes arrive, before any of the "
                                  "body is buffered.",
    "net.limits.max_decompressed_size": "The largest decompressed body accepted; a zlib bomb closes with "
                                        "``packettoolarge`` after producing at most this much.",
    "net.limits.recv_queue": "Packets of one connection waiting for ``process()``; at the limit, reading "
                             "from that connection pauses until ``process()`` has brought it down to half "
                             "(TCP back-pressure, nothing dropped).",
    "net.limits.recv_queue_total": "The bytes waiting for ``process()`` on all connections together (0: no "
                                   "limit): over it, reading pauses for each connection from its next read "
                                   "that queues packets, until the total is down to half.",
    "net.limits.recv_queue_bytes": "The same in bytes (the decoded msgpack bodies' sizes; 0: no limit): "
                                   "at the limit, reading from that connection pauses until both are down "
                                   "to half.  The core decodes no packet past it (one packet may cross it); "
                                   "what waits in memory is bounded by it, whatever the packet count.",
    "net.limits.max_clients": "Server: connections at once; more get ``closeconn`` ``serverfull`` and are "
                              "closed at once, except as many as there are suspended sessions, which "
                              "are let in to resume one (closed with ``serverfull`` at ``settype`` if "
                              "they do not).",
    "net.limits.per_address.connections": "Server: connections from one address (an IPv6 address counts as "
                                          "its network, :netconf:`net.limits.per_address.ipv6_prefix`); more "
                                          "get ``addresslimit``.  0: off.",
    "net.limits.per_address.handshakes": "Server: connections from one address whose handshake is not "
                                         "complete yet; more get ``addresslimit``.  0: off.",
    "net.limits.per_address.connect_rate": "Server: new connections per second from one address (a token "
                                           "bucket of :netconf:`net.limits.per_address.connect_burst`); more "
                                           "are refused at accept with ``addresslimit``.  0: off.",
    "net.limits.per_address.connect_burst": "Server: new connections one address may open at once before "
                                            ":netconf:`net.limits.per_address.connect_rate` holds it.",
    "net.limits.per_address.ipv6_prefix": "Server: the IPv6 prefix length that counts as one address (an "
                                          "IPv4-mapped address counts as its IPv4 address).",
    "net.limits.per_address.exempt_loopback": "Server: connections from loopback addresses (local bots, "
                                              "load tests) are not counted per address.",
    "net.limits.write_buffer": "Bytes queued for one connection that the peer has not read; over it, "
                               ":netconf:`net.limits.write_buffer_action` applies.",
    "net.limits.write_buffer_action": "``\"close\"``: close a peer that does not read with "
                                      "``slowconsumer``; ``\"raise\"``: ``send_message`` raises "
                                      "``WriteBufferFullError`` and the message is not queued.",
    "net.limits.write_buffer_total": "Server: all connections' write buffers together; over it the "
                                     "connections with the largest buffers are closed (``slowconsumer``) "
                                     "until the rest fit.  0: off.",
    "net.limits.read_buffer_total": "Server: the bytes of incomplete packets all connections hold together; "
                                    "over it the connections holding one are closed (``slowproducer``), the "
                                    "slowest producer first (bytes held per second since it began), until "
                                    "the rest fit.  0: off.",
    "net.limits.min_read_rate": "Both sides: a connection holding an incomplete packet for longer than "
                                ":netconf:`net.limits.min_read_grace` at fewer bytes a second than this "
                                "(since the packet's first byte) is closed (``slowproducer``); not one we "
                                "stopped reading.  0: off.",
    "net.limits.min_read_grace": "Both sides: seconds an incomplete packet may arrive below "
                                 ":netconf:`net.limits.min_read_rate` before its connection is closed.",
    "net.limits.write_buffer_block": "``send_message`` from a program thread waits while its connection's "
                                     "write buffer is over this many bytes, until it is down to half "
                                     "(lossless flow control; see :netconf:`net.timeout.send`).  0: never "
                                     "wait.",
    "net.limits.rate.packets": "Server: packets per second per connection (a token bucket); over it, "
                               ":netconf:`net.limits.rate.action` applies.  0: off.",
    "net.limits.rate.bytes": "Server: bytes per second per connection; every byte read is charged.  0: off.",
    "net.limits.rate.burst": "Server: the size of those buckets, in seconds of their rate.",
    "net.limits.rate.action": "Over a rate: ``\"throttle\"`` slows the connection down (reading pauses, "
                              "nothing is lost); ``\"close\"`` closes it with ``ratelimit``; ``\"drop\"`` "
                              "drops the application packets above the rate.",
    "net.limits.inflate.rate": "Bytes per second that decompression may produce for one connection (both "
                               "sides); over it :netconf:`net.limits.rate.action` applies.  0: off.",
    "net.limits.inflate.burst": "The size of that budget, in seconds of its rate (keep rate x burst at "
                                "least :netconf:`net.limits.max_decompressed_size`).",
}
"""Config key -> its meaning."""

_CONFIG_INTRO = """\
Give a :class:`~peng3dnet.net.Server` or :class:`~peng3dnet.net.Client` a
``cfg`` dict; its keys are layered over a ``Peng``'s ``peng.cfg`` (when a
``peng`` is given) and over :data:`peng3dnet.constants.DEFAULT_CONFIG`.  A
``net.*`` key that peng3dnet does not know raises a
:class:`~peng3dnet.util.ConfigWarning` naming the closest known key; a value
of the wrong type, or outside a key's choices, raises
:class:`~peng3dnet.errors.ConfigError` when the peer is created or the key is
set.  An int is fine where the default is a float.
"""


def _config_group(key: str) -> str | None:
    for title, prefixes in CONFIG_GROUPS:
        if key.startswith(prefixes):
            return title
    return None


def _check_config() -> None:
    from peng3dnet.constants import DEFAULT_CONFIG

    problems = []
    for key in DEFAULT_CONFIG:
        if key not in CONFIG:
            problems.append(f"config key {key} has no description in docs/_ext/peng3dnet_docs.py CONFIG")
        if _config_group(key) is None:
            problems.append(f"config key {key} fits no group of CONFIG_GROUPS")
    for key in CONFIG:
        if key not in DEFAULT_CONFIG:
            problems.append(f"CONFIG describes {key}, which is not in DEFAULT_CONFIG")
    if problems:
        raise ExtensionError("the default config and the docs disagree:\n  " + "\n  ".join(problems))


def _fmt_default(value: Any) -> str:
    text = f"``{value!r}``"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 1024 * 1024:
        mib = value / (1024 * 1024)
        if mib == int(mib):
            text += f" ({int(mib)} MiB)"
    return text


def _fmt_accepts(key: str, default: Any) -> str:
    """What :func:`peng3dnet.util.check_value` accepts for ``key``."""
    from peng3dnet import util

    choices = getattr(util, "_CHOICES", {}).get(key)
    if choices is not None:
        return "one of " + ", ".join(f"``{c!r}``" for c in choices)
    if key in getattr(util, "_ANY", ()):
        return "any msgpack value"
    if key in getattr(util, "_ADDRESSES", ()):
        return "``None``, ``\"host:port\"`` or ``(host, port)``"
    if default is None:
        return "``None`` or a path"
    if isinstance(default, bool):
        return "``True`` or ``False``"
    if isinstance(default, int):
        return "an int"
    if isinstance(default, float):
        return "a number"
    if isinstance(default, str):
        return "a str"
    return "see the description"


def config_rst() -> list[str]:
    """The configuration page's body, as reStructuredText lines."""
    from peng3dnet.constants import DEFAULT_CONFIG

    lines = _CONFIG_INTRO.splitlines() + [""]
    for title, _ in CONFIG_GROUPS:
        keys = [k for k in DEFAULT_CONFIG if _config_group(k) == title]
        if not keys:
            continue
        lines += [title, "-" * len(title), ""]
        for key in keys:
            default = DEFAULT_CONFIG[key]
            lines += [f".. netconf:: {key}", ""]
            lines += [f"   {CONFIG[key]}", ""]
            lines += [f"   :Default: {_fmt_default(default)}"]
            lines += [f"   :Accepts: {_fmt_accepts(key, default)}", ""]
    return lines


# --------------------------------------------------------------------------------------------
# The command line: --help of peng3dnet and its subcommands.
# --------------------------------------------------------------------------------------------

HELP_WIDTH = 90


@contextlib.contextmanager
def _columns(width: int) -> Iterator[None]:
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        yield
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cli_help(command: str | None) -> str:
    """``peng3dnet --help`` (``command`` None) or ``peng3dnet COMMAND --help``."""
    from peng3dnet.cli import build_parser

    parser = build_parser()
    if command is not None:
        subs = _subcommands(parser)
        if command not in subs:
            raise ExtensionError(f"peng3dnet-cli-help: no subcommand {command!r} (known: {', '.join(subs)})")
        parser = subs[command]
    with _columns(HELP_WIDTH):
        return parser.format_help().rstrip()


# --------------------------------------------------------------------------------------------
# Directives and roles
# --------------------------------------------------------------------------------------------

class EventsDirective(SphinxDirective):
    """``.. peng3dnet-events::``: the event catalog."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        self.env.note_dependency(os.path.join(ROOT, "peng3dnet", "events", "catalog.py"))
        self.env.note_dependency(__file__)
        return self._parse(events_rst())

    def _parse(self, lines: list[str]) -> list[nodes.Node]:
        node = nodes.section()  # a container; the generated sections join the page's
        node.document = self.state.document
        content = StringList(lines, source="<peng3dnet_docs generated>")
        nested_parse_with_titles(self.state, content, node, self.content_offset)
        return node.children


class ConfigDirective(EventsDirective):
    """``.. peng3dnet-config::``: every config key."""

    def run(self) -> list[nodes.Node]:
        self.env.note_dependency(os.path.join(ROOT, "peng3dnet", "constants.py"))
        self.env.note_dependency(__file__)
        return self._parse(config_rst())


class CliHelpDirective(SphinxDirective):
    """``.. peng3dnet-cli-help:: [COMMAND]``: a ``--help`` text."""

    has_content = False
    optional_arguments = 1
    option_spec = {"caption": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        command = self.arguments[0] if self.arguments else None
        self.env.note_dependency(os.path.join(ROOT, "peng3dnet", "cli.py"))
        text = cli_help(command)
        seen = self.env.__dict__.setdefault("peng3dnet_cli_seen", {})
        seen.setdefault(self.env.docname, set()).add(command or "")
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        self.set_source_info(block)
        return [block]


def _check_cli(app: Sphinx, env: Any) -> None:
    """Every subcommand's help is shown somewhere once the pages using the
    directive are read (none: the project has no CLI page, nothing to check)."""
    seen_by_doc = getattr(env, "peng3dnet_cli_seen", {})
    seen = set().union(*seen_by_doc.values()) if seen_by_doc else set()
    if not seen:
        return
    from peng3dnet.cli import build_parser

    missing = [c for c in ["", *_subcommands(build_parser())] if c not in seen]
    if missing:
        names = ", ".join(repr(c) if c else "(the main command)" for c in missing)
        logger.warning("peng3dnet-cli-help: the help of %s is not shown on any page", names)


def _merge_cli(app: Sphinx, env: Any, docnames: set[str], other: Any) -> None:
    mine = env.__dict__.setdefault("peng3dnet_cli_seen", {})
    for doc, cmds in getattr(other, "peng3dnet_cli_seen", {}).items():
        mine.setdefault(doc, set()).update(cmds)


def _purge_cli(app: Sphinx, env: Any, docname: str) -> None:
    getattr(env, "peng3dnet_cli_seen", {}).pop(docname, None)


# --- README links -----------------------------------------------------------------------------

_readme_slugs: set[str] | None = None


def _github_slug(title: str) -> str:
    text = title.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def readme_slugs() -> set[str]:
    """The anchors GitHub gives the README's headings."""
    global _readme_slugs
    if _readme_slugs is None:
        slugs: set[str] = set()
        fenced = False
        with open(README, encoding="utf-8") as f:
            for line in f:
                if line.startswith("```"):
                    fenced = not fenced
                    continue
                m = None if fenced else re.match(r"#{1,6} (.+)", line)
                if m:
                    slugs.add(_github_slug(m.group(1)))
        _readme_slugs = slugs
    return _readme_slugs


def readme_role(name: str, rawtext: str, text: str, lineno: int, inliner: Any,
                options: Any = None, content: Any = None) -> tuple[list[nodes.Node], list[Any]]:
    """``:readme:`Title <anchor>```: a link to a section of README.md."""
    has_title, title, anchor = split_explicit_title(text)
    anchor = anchor.lstrip("#")
    env = inliner.document.settings.env
    env.note_dependency(README)
    if anchor and anchor not in readme_slugs():
        msg = inliner.reporter.warning(f"README.md has no section with the anchor #{anchor}", line=lineno)
        return [inliner.problematic(rawtext, rawtext, msg)], [msg]
    base = env.config.peng3dnet_readme_url
    if not base:
        page_dir = os.path.dirname(os.path.join(env.app.outdir, env.docname))
        base = os.path.relpath(README, page_dir).replace(os.sep, "/")
    uri = f"{base}#{anchor}" if anchor else base
    label = title if has_title else ("README" if not anchor else f"README: {anchor}")
    return [nodes.reference(rawtext, label, refuri=uri)], []


# --- references to events and config keys ---------------------------------------------------

def _missing_reference(app: Sphinx, env: Any, node: Any, contnode: Any) -> None:
    if node.get("refdomain") == "std" and node.get("reftype") in ("netevent", "netconf"):
        what = "event" if node["reftype"] == "netevent" else "config key"
        logger.warning("unknown peng3dnet %s %r", what, node["reftarget"], location=node)


# --- napoleon and attribute docstrings ----------------------------------------------------------

def _protect_attribute_sentence(app: Sphinx, what: str, name: str, obj: Any, options: Any,
                                lines: list[str]) -> None:
    """napoleon reads ``"Type: description"`` in the first line of an
    attribute's docstring as an inline type.  peng3dnet's attribute
    docstrings never use that form (types come from annotations), but
    many start with a sentence that has a colon ("The 6-byte packet header:
    id and flags", "``ai``: the last input applied").  A first line without
    a colon keeps them text: an empty comment, which napoleon takes for the
    inline attribute and docutils drops."""
    if what in ("attribute", "data", "property") and lines and ":" in lines[0]:
        lines[:0] = ["..", ""]


# --------------------------------------------------------------------------------------------

def _check_all(app: Sphinx) -> None:
    _check_events()
    _check_config()


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_config_value("peng3dnet_readme_url", "", "html")
    app.add_object_type("netevent", "netevent", indextemplate="pair: %s; event")
    app.add_object_type("netconf", "netconf", indextemplate="pair: %s; config key")
    app.add_directive("peng3dnet-events", EventsDirective)
    app.add_directive("peng3dnet-config", ConfigDirective)
    app.add_directive("peng3dnet-cli-help", CliHelpDirective)
    app.add_role("readme", readme_role)
    app.connect("builder-inited", _check_all)
    app.connect("missing-reference", _missing_reference)
    app.connect("env-check-consistency", _check_cli)
    app.connect("env-merge-info", _merge_cli)
    app.connect("env-purge-doc", _purge_cli)
    # before napoleon (priority 500) turns the docstring into fields
    app.connect("autodoc-process-docstring", _protect_attribute_sentence, priority=400)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
