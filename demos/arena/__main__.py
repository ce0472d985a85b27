"""peng3dnet arena: python -m demos.arena [options]

Default: an embedded server, a window for you, and 3 AI bots.  Arrow keys or
WASD move; coins score; Escape quits.

  --server [--port P]     dedicated headless server (announced on the LAN)
  --host ADDR             address the dedicated server listens on (default: all)
  --connect HOST:PORT     join a server
  --lan                   join the first server found on the LAN
  --lan-port P            UDP port of LAN discovery (default 8089; 0 with --server: any free one)
  --lan-addr ADDR         where --lan sends its query (default 255.255.255.255, broadcast)
  --bots N                AI bots (default 3 with the embedded server, else 0)
  --headless              no window: play as a bot
  --no-threads            with --headless or --server: one thread drives everything with poll()
  --name NAME             your name
  --lag MS                route your connection through a lag proxy (MS one-way, 20% jitter)
  --cut-every S           route your connection through a proxy that resets it every S seconds
                          (the session resumes: you keep your avatar and score)
  --duration S            exit cleanly after S seconds
  --screenshot PATH       save the window as PNG before exiting
  --report PATH           write a JSON summary at exit
  --debug                 debug logging; show tracebacks of errors

Errors (a server that cannot be reached, a bad address) print one line and
exit with code 1 (2 for a bad option); Ctrl-C quits cleanly.

A cluster (rooms on several server processes, a directory on Redis):
  --server --port P --cluster redis://127.0.0.1:6379   one server process of the cluster
  --lobby redis://127.0.0.1:6379 --room NAME           join room NAME wherever it is (made if new)
  (every process of a cluster needs the same PENG3DNET_CLUSTER_SECRET)
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from typing import Any

log = logging.getLogger("demos.arena")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m demos.arena", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", action="store_true")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--connect", metavar="HOST:PORT")
    ap.add_argument("--lan", action="store_true")
    ap.add_argument("--host", default="0.0.0.0")
    ap.add_argument("--lan-port", type=int, default=None)
    ap.add_argument("--lan-addr", default="255.255.255.255")
    ap.add_argument("--bots", type=int, default=None)
    ap.add_argument("--headless", action="store_true")
    ap.add_argument("--no-threads", action="store_true")
    ap.add_argument("--name", default="you")
    ap.add_argument("--lag", type=float, default=0.0, metavar="MS")
    ap.add_argument("--cut-every", type=float, default=0.0, metavar="S")
    ap.add_argument("--cluster", metavar="REDIS_URL")
    ap.add_argument("--lobby", metavar="REDIS_URL")
    ap.add_argument("--room", default=None)
    ap.add_argument("--duration", type=float, default=None, metavar="S")
    ap.add_argument("--screenshot", metavar="PATH")
    ap.add_argument("--report", metavar="PATH")
    ap.add_argument("--debug", action="store_true")
    ap.add_argument("--test-keys", default="", help=argparse.SUPPRESS)  # "RIGHT@0.5-1.5,UP@..."
    args = ap.parse_args(argv)
    if args.connect is not None:
        # an empty --connect used to start an embedded server, and "host:" meant port 8080
        args.connect_addr = _parse_connect(ap, args.connect)
    return args


def _parse_connect(ap: argparse.ArgumentParser, text: str) -> tuple[str, int]:
    """``--connect HOST[:PORT]`` (port 8080 when left out) or a usage error."""
    from peng3dnet.errors import InvalidAddressError
    from peng3dnet.util import normalize_addr_socketstyle

    if not text.strip():
        ap.error("--connect needs HOST[:PORT], got an empty string")
    try:
        host, port = normalize_addr_socketstyle(text.strip(), 8080)[:2]
    except InvalidAddressError as exc:
        ap.error(f"--connect {text!r}: {exc}")
    if not host:
        ap.error(f"--connect {text!r}: no host")
    if not 0 < port < 65536:
        ap.error(f"--connect {text!r}: port must be 1-65535")
    return host, port


def write_report(path: str | None, data: dict[str, Any]) -> None:
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)


def main(argv: list[str] | None = None) -> int:
    """Run the demo; user-facing errors become one line on stderr and exit
    code 1 (a traceback only with ``--debug``)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return _main(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if args.debug or not _is_user_error(exc):
            raise
        print(f"arena: error: {exc}", file=sys.stderr, flush=True)
        return 1


def _is_user_error(exc: BaseException) -> bool:
    """Errors a player causes or meets (unreachable server or Redis, bad
    address, refused login), as opposed to bugs, which keep their traceback."""
    from peng3dnet.errors import LocalProtocolError, Peng3dNetError

    if isinstance(exc, LocalProtocolError):
        return False  # the program used the library wrongly: a bug, with its traceback
    if isinstance(exc, (Peng3dNetError, OSError)):
        return True
    return type(exc).__module__.split(".")[0] == "redis"  # redis.exceptions.ConnectionError & co


def _main(args: argparse.Namespace) -> int:
    from peng3dnet.errors import TimedOutError
    from peng3dnet.ext.discovery import DISCOVERY_PORT, discover_servers
    from peng3dnet.tools.lagproxy import LagProxy
    from peng3dnet.util import normalize_addr_socketstyle

    from .netgame import ArenaClient, ArenaServer, Bot, ClusterArenaServer, matchmake

    lan_port = DISCOVERY_PORT if args.lan_port is None else args.lan_port
    if args.no_threads and not (args.headless or args.server):
        print("--no-threads needs --headless or --server", file=sys.stderr)
        return 2
    if args.no_threads:
        return _main_polled(args)
    if args.server:
        # SIGTERM (systemd, docker stop, kill) stops as Ctrl-C does: every
        # client gets "servershutdown", the report is written, exit 0.
        signal.signal(signal.SIGTERM, _raise_interrupt)
        srv: Any
        # The server's threads start with SIGINT and SIGTERM blocked, so the
        # kernel delivers them to this thread: its wait below is interrupted
        # only by a signal delivered to it (else Ctrl-C could hang).
        stop_signals = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
        try:
            if args.cluster:
                srv = ClusterArenaServer(args.cluster, host=args.host, port=args.port).start()
            else:
                srv = ArenaServer(host=args.host, port=args.port, lan=True, lan_port=lan_port).start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
        print(f"arena server on port {srv.port}", flush=True)
        if getattr(srv, "lan_addr", None) is not None:
            print(f"LAN discovery on udp port {srv.lan_addr[1]}", flush=True)
        try:
            threading.Event().wait(args.duration)
        except KeyboardInterrupt:
            pass
        report = srv.report()
        srv.stop()
        write_report(args.report, report)
        return 0
    server = None
    seat = None
    if args.lobby:
        seat = matchmake(args.lobby, args.room)
        addr = normalize_addr_socketstyle(seat["addr"], 8080)
        print(f"room {seat['room']} on {seat['addr']}", flush=True)
    elif args.connect is not None:
        addr = args.connect_addr
    elif args.lan:
        found = discover_servers(lan_port, timeout=1.5, addr=args.lan_addr)
        if not found:
            print("no server found on the LAN", file=sys.stderr)
            return 1
        addr = (found[0]["host"], found[0]["port"])
        print(f"joining {found[0].get('name', '?')} at {addr[0]}:{addr[1]}", flush=True)
    else:
        server = ArenaServer(host="127.0.0.1", port=args.port).start()
        addr = ("127.0.0.1", server.port)
        print(f"embedded arena server on port {server.port}", flush=True)

    nbots = args.bots if args.bots is not None else (3 if server else 0)
    bots = [Bot(addr, f"bot{i + 1}").start() for i in range(nbots)]

    proxy = None
    my_addr = addr
    if args.lag > 0 or args.cut_every > 0:
        proxy = LagProxy(("127.0.0.1", 0), addr, delay=args.lag / 1000, jitter=args.lag / 5000,
                         cut_every=args.cut_every).start()
        my_addr = proxy.addr

    report: dict[str, Any] = {}
    rc = 0
    try:
        if args.headless:
            me = Bot(my_addr, args.name, seat=seat).start()
            client = me.player.client
            print(f"playing as {args.name} on {my_addr[0]}:{my_addr[1]}", flush=True)
            try:
                client.wait_for_close(args.duration)  # the game's end, or the server's
                lost = True
            except TimedOutError:
                lost = False  # --duration is up
            except KeyboardInterrupt:
                lost = False
            report = me.player.report()
            me.stop()
            if lost:
                print(f"the server closed the connection ({client.close_reason}); exiting", file=sys.stderr, flush=True)
                rc = 1
        else:
            from .window import ArenaGame

            # the window processes the client's packets on the main thread
            player = ArenaClient(my_addr, args.name, seat=seat).start(process=False)
            keys = []
            for item in filter(None, args.test_keys.split(",")):
                name, span = item.split("@")
                a, b = span.split("-")
                keys.append((float(a), float(b), name))
            try:
                game = ArenaGame(player, duration=args.duration, screenshot=args.screenshot, test_keys=keys)
                # Ctrl-C in the terminal quits like Escape, between frames: a
                # KeyboardInterrupt in the middle of pyglet's drawing left
                # half-made objects whose __del__ printed tracebacks.
                previous = signal.signal(signal.SIGINT, lambda signum, frame: game.request_quit())
                try:
                    print(f"playing as {args.name} on {my_addr[0]}:{my_addr[1]} (window)", flush=True)
                    game.run()
                finally:
                    signal.signal(signal.SIGINT, previous)
            except KeyboardInterrupt:
                pass  # (Ctrl-C while the window opened)
            report = player.report()
            player.stop()
    finally:
        for b in bots:
            b.stop()
        if proxy is not None:
            proxy.stop()
        if server is not None:
            server_report = server.report()
            server.stop()
            if args.report and not report:
                report = server_report
            elif args.report:
                report["server"] = server_report
        write_report(args.report, report)
    return rc


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _main_polled(args: argparse.Namespace) -> int:
    """--no-threads: the server (embedded or dedicated) and the bots on this
    one thread, through poll() (see netgame.run_polled)."""
    from .netgame import ArenaServer, Bot, run_polled

    server = None
    if args.connect is not None:
        addr = args.connect_addr
    else:
        host = args.host if args.server else "127.0.0.1"
        server = ArenaServer(host=host, port=args.port).start(threads=False)
        addr = ("127.0.0.1", server.port) if not args.server else (host, server.port)
        print(f"arena server on port {server.port} (no threads)", flush=True)
    bots = []
    if args.headless:
        nbots = args.bots if args.bots is not None else (3 if server else 0)
        bots = [Bot(addr, f"bot{i + 1}") for i in range(nbots)] + [Bot(addr, args.name)]
    try:
        run_polled(server, bots, args.duration)
    except KeyboardInterrupt:
        pass
    report: dict[str, Any] = bots[-1].player.report() if bots else {}
    report["threads"] = sorted(t.name for t in threading.enumerate())  # the proof: only ours
    if server is not None:
        server_report = server.report()
        server.server.shutdown(timeout=5)
        report = {**report, "server": server_report} if report else server_report
    write_report(args.report, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
