"""Per-packet cost of the event bus, measured in-process (no sockets, no noise
from the other process): N application packets fed through
``Server.receive_data()`` with events disabled, enabled without subscribers,
and with one subscriber.

    python -m bench.events_cost [--n 200000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import socket
import time
from typing import Any

import msgpack

from peng3dnet import events
from peng3dnet.net import Server
from peng3dnet.packet import Packet
from peng3dnet.protocol.framing import encode_frame


class Sink(Packet):
    def receive(self, msg, cid=None):
        pass


def handshaken_server(events_on: bool, extensions: list[str] | None = None, default_config: bool = False,
                      packet: Any = None) -> tuple[Server, int, int, socket.socket, socket.socket]:
    """An in-process server (inline handlers, limits off; or, with
    ``default_config``, the default config: handlers queued for
    ``process()``, limits on) with one connection over a socketpair whose
    handshake was fed by hand: ``(server, cid, pid of "b:msg", our end, the
    peer's end)``.  ``packet``: the class of "b:msg" (a sink by default).
    Also used by bench.instr against older trees: keep to APIs they have."""
    cfg = {} if default_config else {
        "net.events.enable": events_on, "net.process.inline": True,
        "net.limits.rate.packets": 0, "net.limits.rate.bytes": 0,
    }
    s = Server(addr=("127.0.0.1", 0), cfg=cfg)
    s.register_packet("b:msg", (packet or Sink)(s.registry, s))
    s.initialize()
    a, b = socket.socketpair()
    s._accepted(a, ("bench", 0))
    cid = next(iter(s.clients))
    settype: dict = {"conntype": "classic"}
    if extensions:
        settype["peng3dnet.extensions"] = extensions
    s.receive_data(encode_frame(2, 0, msgpack.packb(settype)), cid)
    s.receive_data(encode_frame(4, 0, msgpack.packb({"success": True})), cid)
    return s, cid, s.registry.get_id("b:msg"), a, b


def one(n: int, mode: str) -> float:
    s, cid, pid, a, b = handshaken_server(mode != "disabled")
    data = b"".join(encode_frame(pid, 0, msgpack.packb([i, "x"])) for i in range(n))
    chunks = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    handler = None
    if mode == "one subscriber":
        def handler(event, d):
            pass
        events.subscribe("peng3dnet:server.connection.recv", handler, sender=s)
    t0 = time.process_time()
    for c in chunks:
        s.receive_data(c, cid)
    dt = time.process_time() - t0
    if handler is not None:
        events.unsubscribe("peng3dnet:server.connection.recv", handler, sender=s)
    a.close()
    b.close()
    return dt / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    modes = ["disabled", "no subscriber", "one subscriber"]
    # Interleave the modes in every round (a drifting machine affects all
    # modes alike) and keep each mode's best round.
    runs: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.repeat):
        for m in modes:
            runs[m].append(one(args.n, m))
    best = {m: min(v) for m, v in runs.items()}
    print("| events | us per packet | vs disabled |")
    print("| --- | ---: | ---: |")
    for m in modes:
        print(f"| {m} | {best[m] * 1e6:.2f} | {best[m] / best['disabled']:.3f} |")


if __name__ == "__main__":
    main()
