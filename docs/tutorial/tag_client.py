"""Tag: a player.  No window and no threads: it plays by itself in a loop
that polls the network, and prints what the server announces.

    python docs/tutorial/tag_client.py --connect 127.0.0.1:8080 --name Ann
"""

import argparse
import time

from tag_rules import PACKETS, move, steer

from peng3dnet.ext.sync import SyncClient
from peng3dnet.net import Client
from peng3dnet.packet import Packet

FRAME = 1 / 30  # the game loop's period


class NewsPacket(Packet):
    """``tag:news``: a line of text from the server."""

    def receive(self, msg, cid=None):
        print(f"[{self.obj}] {msg}", flush=True)  # obj: our name, given at registration


def play(addr, name, duration=None):
    client = Client(addr=addr)
    client.register_packet("tag:name", Packet(client.registry, client))  # same names as the server
    client.register_packet("tag:news", NewsPacket(client.registry, client, name))
    assert set(PACKETS) <= set(client.registry.names())
    view = SyncClient(client, predict=move)  # before connecting: it registers the sync packets

    client.poll()  # connects; from now on this thread drives the client
    client.wait_for_connection(timeout=10)  # polls while it waits
    client.send_message("tag:name", name)

    start = next_frame = time.monotonic()
    while client.run:  # false once the server closed us and every packet was handled
        client.poll(max(0.0, next_frame - time.monotonic()))  # network I/O and packet handlers
        now = time.monotonic()
        if now < next_frame:
            continue
        next_frame = max(next_frame + FRAME, now)
        if duration is not None and now - start > duration:
            client.close("bye")  # polls until the close is sent
            break
        players = view.render_view()  # others interpolated, ours predicted
        if view.own in players:
            dx, dy = steer(players, view.own)
            view.send_input({"dx": dx, "dy": dy, "dt": FRAME})

    stats = view.stats
    print(f"[{name}] closed: {client.close_reason}; snapshots {stats['snapshots']}, "
          f"desyncs {stats['desyncs']}", flush=True)


def main():
    ap = argparse.ArgumentParser(description="A tag player (a bot).")
    ap.add_argument("--connect", default="127.0.0.1:8080", metavar="HOST:PORT")
    ap.add_argument("--name", default="bot")
    ap.add_argument("--duration", type=float, default=None, help="leave after this many seconds")
    args = ap.parse_args()
    play(args.connect, args.name, args.duration)


if __name__ == "__main__":
    main()
