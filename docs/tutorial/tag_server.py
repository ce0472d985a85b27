"""Tag: the server.  It owns the game; clients send inputs, get snapshots.

    python docs/tutorial/tag_server.py --port 8080 [--tags N]
"""

import argparse
import threading

from tag_rules import PACKETS, move, new_player, step, valid_input

from peng3dnet.constants import SIDE_SERVER
from peng3dnet.ext.sync import SyncServer
from peng3dnet.net import Server
from peng3dnet.packet import Packet, SmartPacket


class NamePacket(SmartPacket):
    """``tag:name``: a client tells us its player's name."""

    side = SIDE_SERVER  # only the server receives it
    invalid_action = "close"  # a client that sends it at the wrong time is closed

    def receive(self, msg, cid=None):
        self.obj.set_name(cid, msg)  # obj: the TagServer given at registration


class TagServer:
    def __init__(self, addr, tags_to_play=0):
        self.server = Server(addr=addr)
        self.server.register_packet("tag:name", NamePacket(self.server.registry, self.server, self))
        self.server.register_packet("tag:news", Packet(self.server.registry, self.server))
        assert set(PACKETS) <= set(self.server.registry.names())

        self.sync = SyncServer(self.server, tick_rate=20)  # registers the sync packets too
        self.sync.on_join = self.on_join
        self.sync.on_input = self.on_input
        self.sync.on_leave = self.on_leave
        self.sync.on_step = self.on_step
        self.names = {}  # cid -> name, from tag:name (it may come before or after the join)
        self.tags_to_play = tags_to_play
        self.tags = 0
        self.finished = threading.Event()

    def start(self):
        self.server.runAsync()  # the network thread
        self.server.process_async()  # packet handlers (NamePacket, the sync inputs) on their own thread
        self.sync.start()  # the tick thread: joins, inputs, on_step, snapshots, 20 times a second

    def stop(self):
        self.sync.stop()
        self.server.shutdown(join=True, timeout=5)  # clients get closeconn "servershutdown"

    def news(self, text):
        print(text, flush=True)
        self.server.broadcast("tag:news", text)

    # --- packet handler (the process thread) ---
    def set_name(self, cid, name):
        if isinstance(name, str) and name.isprintable():
            with self.sync.lock:  # the tick thread reads the names under this lock
                self.names[cid] = name[:16]
            self.news(f"{name[:16]} joined")

    # --- sync hooks (the tick thread, with sync.lock held) ---
    def on_join(self, cid):
        players = self.sync.entities
        name = self.names.get(cid, f"player{cid}")
        players[f"p{cid}"] = new_player(cid, name, it=not any(p["it"] for p in players.values()))
        self.sync.owners[cid] = f"p{cid}"  # the client learns which entity is its own

    def on_input(self, cid, eid, inp):
        if eid in self.sync.entities and valid_input(inp):  # never trust the network
            self.sync.entities[eid] = move(self.sync.entities[eid], inp)

    def on_leave(self, cid, eid):
        self.names.pop(cid, None)
        gone = self.sync.entities.pop(eid, None)
        if gone is not None and gone["it"] and self.sync.entities:
            heir = min(self.sync.entities)
            self.sync.entities[heir] = {**self.sync.entities[heir], "it": True}
        if gone is not None:
            self.news(f"{gone['name']} left")

    def on_step(self, dt, tick):
        players = self.sync.entities
        for cid, eid in self.sync.owners.items():  # names that arrived after the join
            name = self.names.get(cid)
            if name is not None and eid in players and players[eid]["name"] != name:
                players[eid] = {**players[eid], "name": name}
        tag = step(players, dt)
        if tag is None:
            return
        tagger, tagged = (players[eid]["name"] for eid in tag)
        self.news(f"{tagger} tagged {tagged}")
        self.tags += 1
        if self.tags == self.tags_to_play:
            scores = ", ".join(f"{p['name']} {p['tags']}" for p in sorted(players.values(), key=lambda p: p["name"]))
            self.news(f"game over: {scores}")
            self.finished.set()


def main():
    ap = argparse.ArgumentParser(description="The tag server.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080, help="0: any free port")
    ap.add_argument("--tags", type=int, default=0, help="end the game after this many tags (0: never)")
    args = ap.parse_args()

    game = TagServer((args.host, args.port), tags_to_play=args.tags)
    game.start()
    host, port = game.server.addr[:2]
    print(f"tag server on {host}:{port}", flush=True)
    try:
        game.finished.wait()  # Ctrl-C works here too
    except KeyboardInterrupt:
        pass
    finally:
        game.stop()


if __name__ == "__main__":
    main()
