"""Constants of peng3dnet: wire formats, states, modes, sides and the default config.

Everything here is plain data; importing it has no side effects.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "STRUCT_FORMAT_LENGTH32", "STRUCT_FORMAT_HEADER", "MAX_PACKETLENGTH",
    "FLAG_COMPRESSED", "FLAG_ENCRYPTED_AES",
    "STATE_INIT", "STATE_HANDSHAKE_WAIT1", "STATE_HANDSHAKE_WAIT2", "STATE_WAITTYPE", "STATE_HELLOWAIT",
    "STATE_ACTIVE", "STATE_LOGGEDIN", "STATE_CLOSED",
    "MODE_NOTSET", "MODE_CLOSED", "MODE_PING", "MODE_PLAY", "MODE_CHAT",
    "CONNTYPE_NOTSET", "CONNTYPE_CLASSIC", "CONNTYPE_PING",
    "SIDE_CLIENT", "SIDE_SERVER",
    "SSLSEC_NONE", "SSLSEC_WRAPPED", "SSLSEC_ENCRYPTED", "SSLSEC_SERVERAUTH", "SSLSEC_BOTHAUTH",
    "DEFAULT_CONFIG",
]
"""What ``from peng3dnet import *`` (and the star imports of the modules that
re-export the constants) takes from here: the names of peng3dnet 0.1.x.
The protocol's packet ids and extension names stay module attributes."""

# --- wire formats -----------------------------------------------------------
STRUCT_FORMAT_LENGTH32 = "!I"
"""``struct`` format of the 4-byte length prefix (unsigned, big-endian)."""
STRUCT_FORMAT_HEADER = "!IH"
"""``struct`` format of the 6-byte header: packet id and flags."""

MAX_PACKETLENGTH = 2**32 - 1
"""Largest length the 32-bit prefix can express."""

FLAG_COMPRESSED = 1 << 0
"""Flag bit: the body is zlib-compressed."""
FLAG_ENCRYPTED_AES = 1 << 1
"""Flag bit reserved by protocol 2 for encryption; never valid on the wire."""
KNOWN_FLAGS = FLAG_COMPRESSED
"""Every flag bit a receiver accepts; any other bit makes a packet malformed."""

# --- packet ids -------------------------------------------------------------
PID_HELLO = 1
PID_SETTYPE = 2
PID_HANDSHAKE = 3
PID_HANDSHAKE_ACCEPT = 4
PID_CLOSECONN = 16
PID_HEARTBEAT = 32
"""Extension ``heartbeat``: liveness probe (only on connections that negotiated it)."""
PID_HEARTBEAT_ACK = 33
"""Extension ``heartbeat``: the answer to a probe, echoing its body."""
PID_CALL = 34
"""Extension ``calls``: a request, ``[call id, packet id, message]``."""
PID_CALL_REPLY = 35
"""Extension ``calls``: the answer, ``[call id, status, value]`` (status 0:
the handler's return value; 1: it raised, value ``{"type", "message"}``;
2: no handler can answer, value ``{"type", "message"}``)."""
PID_SESSION_ACK = 36
"""Extension ``resume``: how many counted packets (application packets and
calls) the sender has received on this session so far, an int."""
PID_FIRST_FREE = 64
"""Ids below this are reserved for the library."""
PID_PING_REQUEST = 64
"""Raw id of a ping request on a ``ping`` connection (not in the registry)."""
PID_PING_REPLY = 65
"""Raw id of a ping reply on a ``ping`` connection (not in the registry)."""

EXTENSIONS_KEY = "peng3dnet.extensions"
"""Key of ``hello`` (server offer) and ``settype`` (client choice) listing
extensions; a version-2 peer ignores it."""
INTERNAL_PACKET_IDS: dict[str, int] = {
    "peng3dnet:internal.hello": PID_HELLO,
    "peng3dnet:internal.settype": PID_SETTYPE,
    "peng3dnet:internal.handshake": PID_HANDSHAKE,
    "peng3dnet:internal.handshake.accept": PID_HANDSHAKE_ACCEPT,
    "peng3dnet:internal.closeconn": PID_CLOSECONN,
}
"""The internal packets' names and fixed ids (every registry has them)."""
EXTENSION_PACKETS: dict[str, dict[str, int]] = {
    "heartbeat": {"peng3dnet:ext.heartbeat": PID_HEARTBEAT, "peng3dnet:ext.heartbeat.ack": PID_HEARTBEAT_ACK},
    "mapkeys": {},  # no packets: "I accept map keys other than str/bytes" (see protocol.codec.unpack)
    "auth": {},  # no packets: the client's credentials ride in settype (CREDENTIALS_KEY)
    "calls": {"peng3dnet:ext.call": PID_CALL, "peng3dnet:ext.call.reply": PID_CALL_REPLY},
    "resume": {"peng3dnet:ext.session.ack": PID_SESSION_ACK},
}
"""Packets of each extension (name -> fixed id); they appear in the
handshake registry only on connections that negotiated the extension."""
SESSION_KEY = "peng3dnet.session"
"""Key of the server's ``handshake`` (extension ``resume``): ``{"token":
bytes, "received": int}``, the session's secret and how many counted
packets the server received on it (0 on a new session)."""
RESUME_KEY = "peng3dnet.resume"
"""Key of a reconnecting client's ``settype`` (extension ``resume``):
``{"token": bytes, "received": int}``."""
CREDENTIALS_KEY = "peng3dnet.credentials"
"""Key of ``settype`` carrying the client's credentials (any msgpack value),
sent only when the ``auth`` extension was negotiated: a server offers it
only when it has an ``authenticate`` hook, so credentials never go to a
server that does not ask for them."""

# --- connection states (application-visible) --------------------------------
# Values of ClientOnServer.state and Client.remote_state.  They are part of
# the API of peng3dnet 0.1.x (programs store, compare and send them); the
# library's own protocol state is protocol.handshake.HandshakeState, exposed
# as ``protocol_state``.
STATE_INIT = 0
"""Every new connection starts here."""
STATE_HANDSHAKE_WAIT1 = 1
"""Inside the handshake, waiting for the peer's next handshake packet."""
STATE_HANDSHAKE_WAIT2 = 2
"""Reserved (unused by the library)."""
STATE_WAITTYPE = 3
"""The server waits for the client's connection type (reserved: the library
moves a new server-side connection to :data:`STATE_HELLOWAIT`)."""
STATE_HELLOWAIT = 4
"""A new server-side connection, while ``hello`` and ``settype`` are exchanged."""
STATE_ACTIVE = 64
"""Handshake complete (set by the base ``on_handshake_complete``)."""
STATE_LOGGEDIN = 65
"""Generic "authenticated" state, for applications to set."""
STATE_CLOSED = 128
"""The connection is closed."""

# --- modes ------------------------------------------------------------------------
# Values of ClientOnServer.mode and Client.mode: the library sets MODE_PING on
# ping connections and MODE_CLOSED at the close; the rest is the application's.
MODE_NOTSET = 0
"""Not set (a classic connection starts and stays here unless the application
sets another mode)."""
MODE_CLOSED = 1
"""The connection is not active (closed)."""
MODE_PING = 2
"""A ping connection."""
MODE_PLAY = 3
"""Generic, meaning up to the application."""
MODE_CHAT = 4
"""Generic, meaning up to the application."""

CONNTYPE_NOTSET = "_notset"
"""Connection type of a connection that did not choose one yet."""
CONNTYPE_CLASSIC = "classic"
"""The default connection type: handshake + registry sync + application packets."""
CONNTYPE_PING = "ping"
"""Connection type for server queries (latency, player count) without a handshake."""

# --- sides --------------------------------------------------------------------
SIDE_CLIENT = 0
"""The client side of a connection."""
SIDE_SERVER = 1
"""The server side of a connection."""

# --- TLS security levels --------------------------------------------------------
SSLSEC_NONE = 0
"""Plain TCP."""
SSLSEC_WRAPPED = 1
"""Wrapped in TLS, handshake not finished."""
SSLSEC_ENCRYPTED = 2
"""Encrypted, no certificate verified."""
SSLSEC_SERVERAUTH = 3
"""Encrypted, the server's certificate was verified by the client."""
SSLSEC_BOTHAUTH = 4
"""Encrypted, both certificates verified (mutual authentication)."""

# --- default configuration ------------------------------------------------------
DEFAULT_CONFIG: dict[str, Any] = {
    # Addresses. "addr" wins over "addr.host"/"addr.port" when set.
    "net.server.addr": None,
    "net.server.addr.host": "0.0.0.0",
    "net.server.addr.port": 8080,
    "net.client.addr": None,
    "net.client.addr.host": "localhost",
    "net.client.addr.port": 8080,
    "net.client.connect_timeout": 10.0,
    # Compression of outgoing bodies.
    "net.compress.enabled": True,
    "net.compress.threshold": 8192,
    "net.compress.level": 6,
    # TLS (see the README, "Security and limits").
    "net.ssl.enabled": False,
    # 0.1.x keys, accepted: TLS is never silently dropped here (net.ssl.force
    # has nothing to force), and protocol 2 has no AES encryption (a True
    # net.encrypt.enabled is reported as unsupported).
    "net.ssl.force": True,
    "net.encrypt.enabled": False,
    "net.ssl.cafile": None,
    "net.ssl.server.certfile": None,
    "net.ssl.server.keyfile": None,
    "net.ssl.server.force_verify": False,
    # Client verification: off by default, as in 0.1.x (programs rely on it
    # with self-signed servers); turn both on for a server with a real
    # certificate (see the README, "TLS").
    "net.ssl.client.check_hostname": False,
    "net.ssl.client.force_verify": False,
    "net.ssl.client.certfile": None,
    "net.ssl.client.keyfile": None,
    # Events: True, False or "auto" (blinker always, peng3d when a Peng is given).
    "net.events.enable": "auto",
    # Log (at INFO) each event of these kinds; the original printed them.
    "net.debug.print.recv": False,
    "net.debug.print.send": False,
    "net.debug.print.connect": False,
    "net.debug.print.close": False,
    # Registry sync at the handshake (client side).
    "net.registry.autosync": True,
    "net.registry.missingpacketaction": "closeconnection",
    "net.server.dualstack": False,
    # SmartPacket send-side check: False (0.1.x) = always send, the check only
    # decides whether the send() hook runs; True = raise LocalProtocolError
    # and send nothing when the check fails.
    "net.smartpacket.strict_send": False,
    # Run packet handlers on the network thread as packets arrive (no queue,
    # no process() needed; handlers must be quick and must not block).
    "net.process.inline": False,
    # Liveness (seconds; 0 turns a timeout off).
    "net.timeout.handshake": 10.0,
    "net.timeout.idle": 0.0,
    "net.timeout.send": 30.0,
    "net.timeout.auth": 5.0,
    "net.timeout.call": 10.0,
    # Session resume (see the README, "Sessions: resume after a drop"): on
    # both sides to use it.
    "net.session.resume": False,
    "net.session.grace": 30.0,
    "net.session.replay_buffer": 48 * 1024 * 1024,
    "net.session.replay_total": 256 * 1024 * 1024,
    # runAsync() puts a client on the process's shared network thread (one
    # NetworkLoop for every such client) instead of a thread of its own.
    "net.client.shared_loop": True,
    "net.client.reconnect": 10,
    "net.client.reconnect.delay": 0.1,
    "net.client.reconnect.max_delay": 5.0,
    # Login (see the README, "Login"): the client's credentials (any
    # msgpack value; the Client argument wins), and how many threads run the
    # server's authenticate hook (0: on the network thread, which it blocks).
    "net.auth.credentials": None,
    "net.auth.workers": 2,
    "net.heartbeat.enabled": True,
    "net.heartbeat.interval": 5.0,
    "net.heartbeat.timeout": 20.0,
    # Limits (every input from the network is bounded).
    "net.limits.max_packet_size": 16 * 1024 * 1024,
    "net.limits.max_decompressed_size": 16 * 1024 * 1024,
    "net.limits.recv_queue": 65536,
    # (decoded bodies' bytes; in memory up to ~70x that for empty maps: see the README's known limits)
    "net.limits.recv_queue_bytes": 16 * 1024 * 1024,
    "net.limits.recv_queue_total": 64 * 1024 * 1024,
    "net.limits.max_clients": 2048,
    "net.limits.per_address.connections": 256,
    "net.limits.per_address.handshakes": 64,
    "net.limits.per_address.connect_rate": 20.0,
    "net.limits.per_address.connect_burst": 60.0,
    "net.limits.per_address.ipv6_prefix": 64,
    "net.limits.per_address.exempt_loopback": True,
    "net.limits.write_buffer": 32 * 1024 * 1024,
    "net.limits.write_buffer_action": "close",
    "net.limits.write_buffer_total": 256 * 1024 * 1024,
    "net.limits.read_buffer_total": 128 * 1024 * 1024,
    "net.limits.min_read_rate": 1024.0,
    "net.limits.min_read_grace": 10.0,
    "net.limits.write_buffer_block": 4 * 1024 * 1024,
    "net.limits.rate.packets": 20000.0,
    "net.limits.rate.bytes": 32 * 1024 * 1024.0,
    "net.limits.rate.burst": 5.0,
    "net.limits.rate.action": "throttle",
    "net.limits.inflate.rate": 64 * 1024 * 1024.0,
    "net.limits.inflate.burst": 1.0,
}
"""Default values of every config key; see the README for each key's meaning."""
