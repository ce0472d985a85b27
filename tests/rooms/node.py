"""One server process of a cluster, for the Redis tests:

    python -m tests.rooms.node REDIS_URL NAMESPACE SECRET_HEX

Prints ``READY <server id> <port>``, then ``MSG <channel> <json data>`` for
every message on the channel "news"; runs until killed or stdin closes.
"""

from __future__ import annotations

import json
import sys

from peng3dnet import events
from peng3dnet.ext.rooms import Room, RoomServer
from peng3dnet.ext.rooms.redispresence import RedisPresence
from peng3dnet.net import Server


class Match(Room):
    max_clients = 4


def main() -> None:
    url, ns, secret = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3])
    server = Server(addr=("127.0.0.1", 0))
    rooms = RoomServer(server, RedisPresence(url, ns), secret=secret, ttl=1.0)
    rooms.define("match", Match)

    def on_msg(event, data):
        print("MSG", data["channel"], json.dumps(data["data"], sort_keys=True), flush=True)

    events.subscribe("peng3dnet:cluster.message", on_msg, sender=server)
    server.runAsync()
    server.process_async()
    rooms.start()
    rooms.subscribe("news")
    print("READY", rooms.server_id, server.addr[1], flush=True)
    sys.stdin.read()
    rooms.stop()
    server.shutdown(timeout=5)


if __name__ == "__main__":
    main()
