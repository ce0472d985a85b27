"""The catalog of peng3dnet events: names, data keys and when they fire.

Every event's data is a dict.  Server events carry ``peng`` and ``server``;
client events carry ``peng`` and ``client``; the keys listed here come on
top.  Thread: connection events fire on the network thread; ``send`` events
of application packets on the thread that called ``send_message``;
``initialize``/``bind``/``connect``/``interrupt`` on the thread that called
the method; ``stop`` and ``shutdown`` on the network thread as its loop ends
(on the calling thread when no loop ever ran).
"""

from __future__ import annotations

__all__ = ["CATALOG", "EventSpec"]

from typing import NamedTuple


class EventSpec(NamedTuple):
    """One catalog entry."""

    attr: str
    """Module attribute name of the signal in :mod:`peng3dnet.events`."""
    keys: tuple[str, ...]
    """Data keys beyond ``peng`` and ``server``/``client``."""
    doc: str
    """When the event fires."""


CATALOG: dict[str, EventSpec] = {
    "peng3dnet:server.initialize": EventSpec("server_initialized", (), "registries set up by initialize(), once"),
    "peng3dnet:server.bind": EventSpec("server_bound", ("addr",), "listening socket bound by bind(), once"),
    "peng3dnet:server.start": EventSpec("server_started", (), "main loop about to run (network thread)"),
    "peng3dnet:server.interrupt": EventSpec("server_interrupted", (), "interrupt() called"),
    "peng3dnet:server.stop": EventSpec("server_stopped", ("reason",), "main loop told to stop"),
    "peng3dnet:server.shutdown": EventSpec(
        "server_shutdown", ("reason", "join", "timeout"), "all clients told to close and the loop stopped"
    ),
    "peng3dnet:server.connection.accept": EventSpec(
        "connection_accepted", ("sock", "addr", "client", "cid"), "connection accepted (network thread)"
    ),
    "peng3dnet:server.connection.auth": EventSpec(
        "connection_authenticated",
        ("client", "ok", "reason"),
        "the authenticate hook decided (network thread); reason is the close reason when refused",
    ),
    "peng3dnet:server.connection.suspended": EventSpec(
        "connection_suspended", ("client", "reason"),
        "a resumable session lost its socket; the client object is kept for the grace period (network thread)",
    ),
    "peng3dnet:server.connection.resumed": EventSpec(
        "connection_resumed", ("client",), "a suspended session runs on a new socket (network thread)"
    ),
    "peng3dnet:server.connection.handshakecomplete": EventSpec(
        "connection_handshake_completed", ("client",), "handshake done, packets may flow (network thread)"
    ),
    "peng3dnet:server.connection.send": EventSpec(
        "connection_sent", ("client", "pid", "data"), "a packet sent (sending thread)"
    ),
    "peng3dnet:server.connection.recv": EventSpec(
        "connection_received", ("client", "pid", "msg"), "a packet received and decoded (network thread)"
    ),
    "peng3dnet:server.connection.close": EventSpec(
        "connection_closed", ("client", "reason"), "connection closed, once per connection (network thread)"
    ),
    "peng3dnet:server.connection.heartbeat": EventSpec(
        "connection_heartbeat", ("client", "rtt", "stats"), "heartbeat answered: RTT measured (network thread)"
    ),
    "peng3dnet:client.initialize": EventSpec("client_initialized", (), "registries set up, once"),
    "peng3dnet:client.connect": EventSpec("client_connected", ("addr", "sock"), "TCP connection made"),
    "peng3dnet:client.start": EventSpec("client_started", (), "main loop about to run (network thread)"),
    "peng3dnet:client.interrupt": EventSpec("client_interrupted", (), "interrupt() called"),
    "peng3dnet:client.reconnecting": EventSpec(
        "client_reconnecting", ("attempt", "delay"), "the session lost its socket; the next attempt in delay s (network thread)"
    ),
    "peng3dnet:client.resumed": EventSpec("client_resumed", (), "the session runs on a new socket (network thread)"),
    "peng3dnet:client.handshakecomplete": EventSpec(
        "client_handshake_completed", (), "handshake done, packets may flow (network thread)"
    ),
    "peng3dnet:client.send": EventSpec("client_sent", ("pid", "data"), "a packet sent (sending thread)"),
    "peng3dnet:client.recv": EventSpec(
        "client_received", ("pid", "msg"), "a packet received and decoded (network thread)"
    ),
    "peng3dnet:client.close": EventSpec("client_closed", ("reason",), "connection closed, once (network thread)"),
    "peng3dnet:client.heartbeat": EventSpec(
        "client_heartbeat", ("rtt", "stats"), "heartbeat answered: RTT measured (network thread)"
    ),
    "peng3dnet:client.stop": EventSpec("client_stopped", ("reason",), "main loop told to stop"),
    # peng3dnet.ext.rooms (sender: the Server the RoomServer runs on)
    "peng3dnet:room.create": EventSpec("room_created", ("room",), "ext.rooms: a room was made (the thread that made it)"),
    "peng3dnet:room.join": EventSpec("room_joined", ("room", "client"), "ext.rooms: a client joined a room (handler thread)"),
    "peng3dnet:room.leave": EventSpec(
        "room_left", ("room", "client"), "ext.rooms: a client left a room (handler or rooms thread)"
    ),
    "peng3dnet:room.dispose": EventSpec("room_disposed", ("room",), "ext.rooms: a room went away"),
    "peng3dnet:cluster.message": EventSpec(
        "cluster_message", ("channel", "data"), "ext.rooms: a message published on a subscribed channel (presence thread)"
    ),
    # peng3dnet.ext.sync (sender: the Server or Client the sync helper runs on)
    "peng3dnet:sync.join": EventSpec("sync_joined", ("cid",), "a client joined the sync (server, tick thread)"),
    "peng3dnet:sync.leave": EventSpec("sync_left", ("cid", "eid"), "a client left the sync (server, tick thread)"),
    "peng3dnet:sync.snapshot": EventSpec(
        "sync_snapshot_applied", ("tick", "view"), "a snapshot was applied (client, the thread that processes its packets)"
    ),
    "peng3dnet:sync.desync": EventSpec(
        "sync_desynced", ("tick", "reason"), "a snapshot failed its checksum or was malformed (client, the thread that processes its packets)"
    ),
}
"""Event name -> :class:`EventSpec`, for every event of the library and its extensions."""
