"""A small chat over peng3dnet, driven by events (headless, no pyglet).

    python -m demos.chat                     embedded server + you + 2 bots
    python -m demos.chat --server --port P   dedicated server
    python -m demos.chat --connect HOST:PORT join a server
    python -m demos.chat --duration 5        exit after 5 seconds

Type a line and press Enter to say it; Ctrl-D or Ctrl-C to leave.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading

from peng3dnet import events
from peng3dnet.net import Client, Server
from peng3dnet.packet import Packet

log = logging.getLogger("demos.chat")

PACKET = "chat:say"


class RelayPacket(Packet):
    """Server side: stamp the sender and relay to every connected client."""

    def receive(self, msg, cid=None):
        server = self.peer
        text = str(msg.get("text", ""))[:500] if isinstance(msg, dict) else ""
        out = {"who": msg.get("name", f"#{cid}") if isinstance(msg, dict) else f"#{cid}", "text": text}
        for other in list(server.clients):
            try:
                server.send_message(PACKET, out, other)
            except Exception as exc:  # a client that just left
                log.debug("relay to %s failed: %s", other, exc)


def make_server(port: int) -> Server:
    server = Server(addr=("0.0.0.0", port))
    server.register_packet(PACKET, RelayPacket(server.registry, server))
    return server


def make_client(addr, name: str) -> Client:
    client = Client(addr=addr)
    client.register_packet(PACKET, Packet(client.registry, client))  # events do the work
    client.name = name  # type: ignore[attr-defined]
    return client


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", action="store_true", help="run a dedicated server only")
    ap.add_argument("--port", type=int, default=0, help="server port (0: any free port)")
    ap.add_argument("--connect", metavar="HOST:PORT", help="join a server instead of starting one")
    ap.add_argument("--name", default="you")
    ap.add_argument("--bots", type=int, default=2)
    ap.add_argument("--duration", type=float, default=None, help="exit after this many seconds")
    args = ap.parse_args(argv)

    server = None
    if not args.connect:
        server = make_server(args.port)
        server.runAsync()
        server.process_async()
        print(f"server listening on port {server.addr[1]}", flush=True)
        if args.server:
            try:
                threading.Event().wait(args.duration)
            except KeyboardInterrupt:
                pass
            server.shutdown(timeout=5)
            return 0
    addr = args.connect or ("127.0.0.1", server.addr[1])

    me = make_client(addr, args.name)

    # The game subscribes to events instead of subclassing: every chat line
    # received by *our* client is printed (network thread is fine for print).
    def on_recv(event, data):
        msg = data["msg"]
        if isinstance(msg, dict) and "who" in msg:
            print(f"<{msg['who']}> {msg['text']}", flush=True)

    events.subscribe("peng3dnet:client.recv", on_recv, sender=me)
    me.runAsync()
    me.wait_for_connection(10)

    bots = []
    for i in range(args.bots if server else 0):
        bot = make_client(addr, f"bot{i + 1}")
        bot.runAsync()
        bot.wait_for_connection(10)
        bots.append(bot)
    for i, bot in enumerate(bots):
        bot.send_message(PACKET, {"name": bot.name, "text": f"hello, I am bot {i + 1}"})

    done = threading.Event()

    def read_stdin():
        for line in sys.stdin:
            if line.strip():
                me.send_message(PACKET, {"name": args.name, "text": line.rstrip("\n")})
        done.set()

    if args.duration is None:
        threading.Thread(target=read_stdin, daemon=True).start()
    try:
        done.wait(args.duration)
    except KeyboardInterrupt:
        pass
    for c in [me, *bots]:
        c.close("bye")
        c.join(5)
    if server:
        server.shutdown(timeout=5)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
