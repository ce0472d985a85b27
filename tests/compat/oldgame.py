"""A small multiplayer program written the way peng3dnet 0.1.x programs are.

It must run unchanged on the original peng3dnet 0.1.3a0 and on this library,
as either side, against either side:

    python oldgame.py server PORT [CASE]
    python oldgame.py client PORT [CASE]

Each side prints one JSON line (its report) on stdout and exits.

What it does, 0.1.x style (star import, SmartPacket subclasses with their
own ``_receive`` checks and a ``check()`` of their own, application states
set in ``on_handshake_complete`` and in handlers, a PingableServerMixin
server, ``while peer.run: peer.process(wait=True, timeout=...)``):

1. The client pings the server (retrying until it answers), then connects.
2. The server's ``on_handshake_complete`` sets the connection's state to
   STATE_LOGGEDIN.  The client's ``on_handshake_complete`` sends ``game:login`` (valid only for a
   logged-in connection on the server); its handler sets the state to 100 and
   the mode to MODE_PLAY, and sends ``game:welcome``, then the SmartPacket
   matrix (in acknowledged chunks, see CHUNK).
3. The client's ``game:welcome`` handler sets ``remote_state`` to
   STATE_LOGGEDIN and the mode to MODE_CHAT, and sends the matrix, then two chat
   lines (one that the packet's own ``_receive`` check refuses) and
   ``game:done``, which the server answers with its own once it handled
   everything; then the client closes.
4. Each side records which matrix packets reached ``receive()``, which
   ``send()`` hooks ran, and the ``on_receive``/``on_send`` hook calls.

CASE runs one ``invalid_action = "close"`` scenario instead of the matrix:
``close-recv-server``, ``close-send-client``, ``close-recv-client``,
``close-send-server`` (which side's check fails, receiving or sending).
"""

import json
import sys
import threading
import time

try:  # the original imports peng3d, which needs this without a display
    import pyglet

    pyglet.options["shadow_window"] = False
except ImportError:
    pass

from peng3dnet import *  # noqa: F403,E402
from peng3dnet import version as libversion  # noqa: E402
from peng3dnet.ext.ping import PingableServerMixin, pingServer  # noqa: E402
from peng3dnet.packet import Packet, SmartPacket  # noqa: E402

STATES = [STATE_ACTIVE, STATE_LOGGEDIN, 100]  # noqa: F405
MODES = [None, MODE_PLAY, MODE_CHAT]  # noqa: F405
SIDES = [None, SIDE_SERVER, SIDE_CLIENT]  # noqa: F405
CONNTYPES = [None, CONNTYPE_CLASSIC, CONNTYPE_PING]  # noqa: F405

CASE = None

# The original 0.1.3 server can strand the last packet that a handler
# queues (a lost write interest, check-then-act): its network thread finds
# the connection's write queue empty after a write and then, under its
# selector lock, takes the write interest away; a packet queued by the
# process thread between the two (which saw the interest still set, so asked
# for nothing) stays queued until the next send to that connection.  A
# handler that sends two packets in a row (welcome, then the close case's
# packet) hits it under load (the server then never sends the second, both
# sides wait out their deadline).  Run on 0.1.x, this program's server pokes
# its classic connections with a "game:tick" every TICK seconds, as a game's
# tick would; on this library it sends none, so its own write path is tested
# without the crutch.  Ticks are not counted in the report.
ON_0_1 = libversion.VERSION.startswith("0.1.")
TICK = 0.1
classic_cids = set()

report = {
    "received": [],
    "send_hooks": [],
    "on_receive": 0,
    "on_send": 0,
    "check_called": 0,
    "chat": [],
    "chat_refused": 0,
    "states": {},
    "close_reason": None,
}
lock = threading.Lock()
finished = threading.Event()


def note(key, value):
    with lock:
        report[key].append(value)


def matrix_name(state, mode, side, conntype):
    return "m:%s.%s.%s.%s" % (state, mode, side, conntype)


class MatrixPacket(SmartPacket):
    pname = None  # the registered name (the original passes the encoded frame to a server's send())

    def receive(self, msg, cid=None):
        note("received", self.pname)

    def send(self, msg, cid=None):
        note("send_hooks", self.pname)

    @staticmethod
    def check(*args, **kwargs):  # a method of the program's own: the library must not call it
        with lock:
            report["check_called"] += 1
        return False


MATRIX = []
for _st in STATES:
    for _mo in MODES:
        for _si in SIDES:
            for _ct in CONNTYPES:
                _name = matrix_name(_st, _mo, _si, _ct)
                _cls = type(
                    "M", (MatrixPacket,), {"state": _st, "mode": _mo, "side": _si, "conntype": _ct, "pname": _name}
                )
                MATRIX.append((_name, _cls))


class CloseOnServerReceive(MatrixPacket):  # the client (LOGGEDIN) may send it, the server (100) not receive it
    state = STATE_LOGGEDIN  # noqa: F405
    invalid_action = "close"


class CloseOnClientSend(MatrixPacket):  # the client (remote_state LOGGEDIN) may not send it
    state = 100
    invalid_action = "close"


class CloseOnClientReceive(MatrixPacket):  # the client (LOGGEDIN) may not receive it
    state = 100
    invalid_action = "close"


class CloseOnServerSend(MatrixPacket):  # the server (state 100) may not send it
    state = STATE_LOGGEDIN  # noqa: F405
    invalid_action = "close"


CASES = {
    "close-recv-server": ("client", "case:a", CloseOnServerReceive),
    "close-send-client": ("client", "case:b", CloseOnClientSend),
    "close-recv-client": ("server", "case:c", CloseOnClientReceive),
    "close-send-server": ("server", "case:d", CloseOnServerSend),
}
for _, _name, _cls in CASES.values():
    _cls.pname = _name


class ChatPacket(SmartPacket):
    side = SIDE_SERVER  # noqa: F405
    state = 100

    def _receive(self, msg, cid=None):  # the program's own check, before SmartPacket's
        if not isinstance(msg, dict) or not msg.get("text"):
            with lock:
                report["chat_refused"] += 1
            return
        SmartPacket._receive(self, msg, cid)

    def receive(self, msg, cid=None):
        note("chat", msg["text"])


# The matrix goes out in acknowledged chunks of under 1 KiB: the original
# library reads 1024 bytes at a time and stalls for good when a read ends
# inside a 4-byte length prefix, which a longer burst makes likely.
CHUNK = 16
progress = {"stream_complete": False, "peer_done": False}


def send_chunk(peer, k, cid=None):
    for name, _ in MATRIX[k * CHUNK:(k + 1) * CHUNK]:
        peer.send_message(name, name, cid)
    peer.send_message("game:sync", k, cid)


class Sync(Packet):
    def receive(self, msg, cid=None):
        self.peer.send_message("game:synced", msg, cid)


class Synced(Packet):
    def receive(self, msg, cid=None):
        nxt = msg + 1
        if nxt * CHUNK < len(MATRIX):
            send_chunk(self.peer, nxt, cid)
        else:
            stream_complete(self.peer, cid)


def stream_complete(peer, cid):
    if peer.is_server:
        progress["stream_complete"] = True
        if progress["peer_done"]:
            peer.send_message("game:done", "server", cid)
    else:
        peer.send_message("game:chat", {"text": "hi all"})
        peer.send_message("game:chat", {"text": ""})  # refused by ChatPacket's own check
        peer.send_message("game:done", "client")


def register_all(peer):
    for name, cls in MATRIX:
        peer.register_packet(name, cls(peer.registry, peer))
    for _, name, cls in CASES.values():
        peer.register_packet(name, cls(peer.registry, peer))
    peer.register_packet("game:login", Login(peer.registry, peer))
    peer.register_packet("game:welcome", Welcome(peer.registry, peer))
    peer.register_packet("game:chat", ChatPacket(peer.registry, peer))
    peer.register_packet("game:done", Done(peer.registry, peer))
    peer.register_packet("game:sync", Sync(peer.registry, peer))
    peer.register_packet("game:synced", Synced(peer.registry, peer))
    peer.register_packet("game:tick", Tick(peer.registry, peer))


class Tick(Packet):
    def receive(self, msg, cid=None):
        pass


def is_tick(ptype, msg):
    return ptype == "game:tick" or (isinstance(msg, dict) and "tick" in msg)


class Login(SmartPacket):
    side = SIDE_SERVER  # noqa: F405
    state = STATE_LOGGEDIN  # noqa: F405

    def receive(self, msg, cid=None):
        server = self.peer
        client = server.clients[cid]
        report["states"]["login"] = [client.state, client.mode]
        client.state = 100
        client.mode = MODE_PLAY  # noqa: F405
        server.send_message("game:welcome", {"hello": msg["name"]}, cid)
        if CASE is None:
            send_chunk(server, 0, cid)
        elif CASES[CASE][0] == "server":  # a close case: both sides finish on the close
            server.send_message(CASES[CASE][1], CASE, cid)


class Welcome(SmartPacket):
    side = SIDE_CLIENT  # noqa: F405

    def receive(self, msg, cid=None):
        client = self.peer
        report["states"]["welcome"] = [client.remote_state, client.mode]
        client.remote_state = STATE_LOGGEDIN  # noqa: F405
        client.mode = MODE_CHAT  # noqa: F405
        if CASE is None:
            send_chunk(client, 0)
        elif CASES[CASE][0] == "client":
            client.send_message(CASES[CASE][1], CASE)


class Done(Packet):
    def receive(self, msg, cid=None):
        if self.peer.is_server:  # the client's part was handled: answer once ours is through too
            progress["peer_done"] = True
            if progress["stream_complete"]:
                self.peer.send_message("game:done", "server", cid)
        else:  # the server handled everything: the client may close
            finished.set()


class CountHooks:
    """Counts the peer hooks' calls for application packets (the original
    also calls them for its internal handshake packets)."""

    def on_receive(self, pid, msg):
        if pid >= 64 and not is_tick(pid, msg):
            with lock:
                report["on_receive"] += 1

    def on_send(self, ptype, data):
        if not str(ptype).startswith("peng3dnet:") and not is_tick(ptype, None):
            with lock:
                report["on_send"] += 1


class Player(CountHooks, ClientOnServer):  # noqa: F405
    def on_connect(self):
        report["states"].setdefault("on_connect", [self.state, self.mode])

    def on_handshake_complete(self):
        report["states"]["handshake_before"] = [self.state, self.mode, self.conntype]
        ClientOnServer.on_handshake_complete(self)  # noqa: F405
        report["states"]["handshake_base"] = [self.state, self.mode]
        self.state = STATE_LOGGEDIN  # noqa: F405
        if self.conntype == CONNTYPE_CLASSIC:  # noqa: F405  (not the ping)
            classic_cids.add(self.cid)

    def on_close(self, reason=None):
        classic_cids.discard(self.cid)
        if self.conntype == CONNTYPE_CLASSIC:  # noqa: F405  (not the ping)
            report["close_reason"] = reason
            finished.set()


class GameServer(PingableServerMixin, Server):  # noqa: F405
    pingdata = {"name": "oldgame"}

    def getPingData(self, msg, cid):
        data = PingableServerMixin.getPingData(self, msg, cid)
        data["asked"] = msg.get("who")
        return data


class GameClient(CountHooks, Client):  # noqa: F405
    def on_handshake_complete(self):
        report["states"]["handshake_before"] = [self.remote_state, self.mode]
        Client.on_handshake_complete(self)  # noqa: F405
        report["states"]["handshake_base"] = [self.remote_state, self.mode]
        self.send_message("game:login", {"name": "p1"})

    def on_close(self, reason=None):
        report["close_reason"] = reason
        finished.set()


def run_server(port):
    server = GameServer(addr=("127.0.0.1", port), clientcls=Player)
    report["flags"] = [server.is_server, server.is_client, server.run]
    register_all(server)
    server.runAsync()
    deadline = time.time() + 60
    ticks, next_tick = 0, time.time() + TICK
    while server.run and not finished.is_set() and time.time() < deadline:
        server.process(wait=True, timeout=0.05)
        if ON_0_1 and time.time() >= next_tick:
            ticks, next_tick = ticks + 1, time.time() + TICK
            for cid in list(classic_cids):
                try:
                    server.send_message("game:tick", {"tick": ticks}, cid)
                except Exception:  # closed meanwhile
                    pass
    server.process()
    report["timed_out"] = not finished.is_set()
    report["ticks"] = ticks
    report["on_0_1"] = ON_0_1


def run_client(port):
    deadline = time.time() + 30
    while True:  # the server may still be starting
        try:
            pong = pingServer(addr=("127.0.0.1", port), data={"who": "oldgame"}, timeout=5)
            break
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(0.1)
    report["ping"] = [pong["name"], pong["asked"], sorted(pong["peng3dnet"])]
    client = GameClient(addr=("127.0.0.1", port))
    report["flags"] = [client.is_server, client.is_client, client.run]
    register_all(client)
    client.runAsync()  # the handshake runs while the loop below processes (0.1.x needs that)
    deadline = time.time() + 60
    while client.run and not finished.is_set() and time.time() < deadline:
        client.process(wait=True, timeout=0.05)
    # run can turn False before on_close came (0.1.x sets it before its
    # network thread calls on_close; seen under load, also with ours as the
    # client): keep processing until it comes, bounded.
    end = min(deadline, time.time() + 10)
    while not finished.is_set() and time.time() < end:
        client.process(wait=True, timeout=0.05)
    report["timed_out"] = not finished.is_set()
    if report["close_reason"] is None:
        client.close_connection(reason="bye")


if __name__ == "__main__":
    role, port = sys.argv[1], int(sys.argv[2])
    CASE = sys.argv[3] if len(sys.argv) > 3 else None
    (run_server if role == "server" else run_client)(port)
    sys.stdout.write(json.dumps(report, sort_keys=True, default=repr) + "\n")
    sys.stdout.flush()
