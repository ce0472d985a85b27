"""Tag in a pyglet window: the arrow keys move you (``--bot``: it plays by
itself).  The same rules, packets and server; no thread of our own: the
pyglet clock polls the network.

    python docs/tutorial/tag_window.py --connect 127.0.0.1:8080 --name Ann
"""

import argparse

import pyglet
from pyglet.window import key
from tag_client import FRAME, NewsPacket
from tag_rules import HEIGHT, TAG_RADIUS, WIDTH, move, steer

from peng3dnet.events import attach_to_pyglet
from peng3dnet.ext.sync import SyncClient
from peng3dnet.net import Client
from peng3dnet.packet import Packet


def main():
    ap = argparse.ArgumentParser(description="A tag player in a window.")
    ap.add_argument("--connect", default="127.0.0.1:8080", metavar="HOST:PORT")
    ap.add_argument("--name", default="player")
    ap.add_argument("--bot", action="store_true", help="steer by itself")
    args = ap.parse_args()

    client = Client(addr=args.connect)
    client.register_packet("tag:name", Packet(client.registry, client))
    client.register_packet("tag:news", NewsPacket(client.registry, client, args.name))
    view = SyncClient(client, predict=move)

    window = pyglet.window.Window(int(WIDTH), int(HEIGHT), caption=f"tag: {args.name}")
    keys = key.KeyStateHandler()
    window.push_handlers(keys)

    net = attach_to_pyglet(client, poll=True, interval=FRAME)  # each tick: poll(), then the events below

    @net.subscribe("peng3dnet:client.handshakecomplete")
    def on_connected(event, data):  # the main thread, like every handler subscribed through net
        client.send_message("tag:name", args.name)

    @net.subscribe("peng3dnet:client.close")
    def on_close(event, data):
        print(f"[{args.name}] closed: {data['reason']}; snapshots {view.stats['snapshots']}", flush=True)
        pyglet.app.exit()

    def update(dt):
        players = view.render_view()
        if view.own not in players:
            return
        if args.bot:
            dx, dy = steer(players, view.own)
        else:
            dx = keys[key.RIGHT] - keys[key.LEFT]
            dy = keys[key.UP] - keys[key.DOWN]
        view.send_input({"dx": dx, "dy": dy, "dt": FRAME})

    pyglet.clock.schedule_interval(update, FRAME)

    @window.event
    def on_draw():
        window.clear()
        batch = pyglet.graphics.Batch()
        circles = []
        for eid, p in view.render_view().items():
            color = (230, 60, 60) if p["it"] else (80, 230, 120) if eid == view.own else (80, 160, 230)
            circles.append(pyglet.shapes.Circle(p["x"], p["y"], TAG_RADIUS / 2, color=color, batch=batch))
        batch.draw()

    pyglet.app.run()  # until the window is closed or the server closes us
    net.close()
    if client.run:  # we closed the window: leave politely
        client.close("bye")


if __name__ == "__main__":
    main()
