"""The ``peng3dnet`` command (also ``python -m peng3dnet``).

    peng3dnet ping HOST[:PORT] [--json] [--timeout S]
    peng3dnet discover [--port P] [--addr A] [--timeout S] [--json] [--watch [--interval S]]
    peng3dnet lagproxy LISTEN TARGET [--delay MS] [--jitter MS] [--bandwidth KIB] [--seed N]
    peng3dnet serve [--host H] [--port P]

User errors print one line ``peng3dnet: error: ...`` on stderr (a
traceback only with ``--debug``).  Exit codes: 0 success, 1 failure (not
reachable, nothing found, port in use), 2 usage (bad option or address),
130 interrupted.  ``serve``, ``lagproxy`` and ``discover --watch`` run until
Ctrl-C or SIGTERM and then exit 0.

This is the only module of the package that prints.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import signal
import sys
import threading
import time
from typing import Any, NoReturn

from .errors import InvalidAddressError, Peng3dNetError

__all__ = ["main"]

log = logging.getLogger(__name__)

PROG = "peng3dnet"
EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _TerminatedError(BaseException):
    """Raised in the main thread by the SIGTERM handler."""


class _UserError(Exception):
    """A failure to report in one line (exit code ``code``)."""

    def __init__(self, message: str, code: int = EXIT_FAIL) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line ``peng3dnet: error: ...``."""

    def error(self, message: str) -> NoReturn:
        _fail(f"{message} (see '{self.prog} --help')")
        raise SystemExit(EXIT_USAGE)


def _fail(message: str) -> None:
    print(f"{PROG}: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: not an integer") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} out of range 0..65535")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"seconds must be > 0, not {text}")
    return value


def _fmt_addr(addr: Any) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _until_stopped(ready: str) -> None:
    """Print ``ready`` (the line a caller waits for before it may signal
    us), then block the main thread until Ctrl-C or SIGTERM.  The line is
    printed inside the ``try``: a Ctrl-C that follows it at once is a clean
    stop, never an interrupted exit.

    The wait is a ``select()`` on the signal wake-up pipe
    (:func:`signal.set_wakeup_fd`): the kernel may deliver the signal to
    any thread of the process (the server's network thread, say), and a
    lock wait in the main thread is interrupted only by a signal delivered
    to the main thread itself: it slept on (for an hour), and Ctrl-C hung.
    The handler writes to the pipe whichever thread took the signal, the
    main thread wakes and runs it (main thread only)."""
    if threading.current_thread() is not threading.main_thread():  # (no signals here: main() called by a program)
        try:
            print(ready, flush=True)
            threading.Event().wait()
        except (KeyboardInterrupt, _TerminatedError):
            pass
        return
    rfd, wfd = os.pipe()
    os.set_blocking(wfd, False)
    old_fd = signal.set_wakeup_fd(wfd)
    try:
        print(ready, flush=True)
        while True:
            select.select([rfd], [], [])
            os.read(rfd, 512)  # (a signal without a Python handler that raises: wait on)
    except (KeyboardInterrupt, _TerminatedError):
        pass
    finally:
        signal.set_wakeup_fd(old_fd)
        os.close(rfd)
        os.close(wfd)


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _TerminatedError()


# --- what a server says, shown safely --------------------------------------------------------------

_DEPTH = 32
"""How deep a server's answer is shown; deeper containers are shown as "..."."""


def _jsonable(value: Any, depth: int = _DEPTH) -> Any:
    """``value`` made safe to show: every map key a string (msgpack allows
    int and bytes keys, JSON does not; a key that is not a string is shown
    as ``type:repr``, so it cannot collide with a string key), and nothing
    nested deeper than :data:`_DEPTH` (a hostile answer must not crash the
    output, nor recurse without bound)."""
    if isinstance(value, (dict, list, tuple)) and depth <= 0:
        return "..."
    if isinstance(value, dict):
        return {k if isinstance(k, str) else f"{type(k).__name__}:{k!r}": _jsonable(v, depth - 1)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, depth - 1) for v in value]
    return value


def _printable(value: Any) -> str:
    """``value`` as text with control characters escaped (one server, one
    line, no terminal escapes from the network), nested no deeper than
    :data:`_DEPTH`."""
    text = str(_jsonable(value))
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


# --- ping -----------------------------------------------------------------------------------------

def _cmd_ping(args: argparse.Namespace) -> int:
    from .ext.ping import pingServer
    from .util import normalize_addr_socketstyle

    addr = normalize_addr_socketstyle(args.address)
    try:
        reply = pingServer(addr=addr, timeout=args.timeout)
    except InvalidAddressError:
        raise
    except Peng3dNetError as exc:
        raise _UserError(f"cannot ping {_fmt_addr(addr)}: {exc}") from exc
    info = {"address": _fmt_addr(addr), **reply}
    if args.json:
        print(json.dumps(_jsonable(info), default=repr, sort_keys=True), flush=True)
        return 0
    rows: list[tuple[str, str]] = [("address", info["address"])]
    delay = info.get("delay")
    if isinstance(delay, (int, float)):
        rows.append(("delay", f"{delay * 1000:.1f} ms"))
    ver = info.get("peng3dnet")
    if isinstance(ver, dict):
        rows.append(("version", _printable(f"{ver.get('version', '?')} (protocol {ver.get('protoversion', '?')})")))
    skip = {"address", "delay", "peng3dnet", "oldmsg", "recvtime"}
    rows += [(_printable(k), _printable(v)) for k, v in sorted(info.items(), key=lambda kv: str(kv[0])) if k not in skip]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    sys.stdout.flush()
    return 0


# --- discover -------------------------------------------------------------------------------------

def _server_line(info: dict[str, Any], as_json: bool) -> str:
    if as_json:
        return json.dumps(_jsonable(info), default=repr, sort_keys=True)
    parts = [_printable(_fmt_addr((info.get("host"), info.get("port"))))]
    ver = info.get("peng3dnet")
    if isinstance(ver, dict):
        parts.append(f"peng3dnet {_printable(ver.get('version', '?'))}")
    parts += [f"{_printable(k)}={_printable(v)}" for k, v in sorted(info.items(), key=lambda kv: str(kv[0]))
              if k not in ("host", "port", "peng3dnet")]
    return "  ".join(parts)


def _cmd_discover(args: argparse.Namespace) -> int:
    from .ext.discovery import discover_servers

    if not args.watch:
        found = discover_servers(port=args.port, timeout=args.timeout, addr=args.addr)
        for info in found:
            print(_server_line(info, args.json))
        sys.stdout.flush()
        if not found:
            raise _UserError(f"no server answered on {args.addr} udp port {args.port} within {args.timeout} s")
        return 0
    seen: dict[tuple[Any, Any], Any] = {}  # the last round's answers only: bounded, whatever the LAN sends
    try:
        while True:
            started = time.monotonic()
            now: dict[tuple[Any, Any], Any] = {}
            for info in discover_servers(port=args.port, timeout=args.timeout, addr=args.addr):
                key = (info.get("host"), info.get("port"))
                now[key] = info
                if seen.get(key) != info:  # new (or back), or its data changed
                    print(_server_line(info, args.json), flush=True)
            seen = now
            rest = args.interval - (time.monotonic() - started)
            if rest > 0:
                time.sleep(rest)
    except (KeyboardInterrupt, _TerminatedError):
        return 0


# --- lagproxy -------------------------------------------------------------------------------------

def _cmd_lagproxy(args: argparse.Namespace) -> int:
    from .tools.lagproxy import from_args

    proxy = from_args(args.listen, args.target, args)
    proxy.start()
    try:
        bw = f"{args.bandwidth:g} KiB/s" if args.bandwidth else "unlimited"
        _until_stopped(f"lagproxy listening on {_fmt_addr(proxy.addr)} -> {_fmt_addr(proxy.target)} "
                       f"(delay {args.delay:g} ms, jitter {args.jitter:g} ms, bandwidth {bw})")
    finally:
        proxy.stop()
    return 0


# --- serve ----------------------------------------------------------------------------------------

def _cmd_serve(args: argparse.Namespace) -> int:
    from .ext.ping import PingableServerMixin
    from .net import Server
    from .packet import Packet

    class EchoPacket(Packet):
        """``peng3dnet:echo``: send every message back to its sender."""

        def receive(self, msg: Any, cid: int | None = None) -> None:
            if cid is not None:
                self.peer.send_message("peng3dnet:echo", msg, cid)

    class EchoServer(PingableServerMixin, Server):
        pingdata = {"name": "peng3dnet echo server"}

    server = EchoServer(addr=(args.host, args.port))
    server.register_packet("peng3dnet:echo", EchoPacket(server.registry, server))
    server.runAsync()
    try:
        server.process_async()
        _until_stopped(f"serving on {_fmt_addr(server.addr)}")
    finally:
        server.shutdown(timeout=5)
    return 0


# --- main -----------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """The ``peng3dnet`` argument parser."""
    from .tools.lagproxy import add_arguments as add_proxy_arguments
    from .version import PROTOVERSION, RELEASE

    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="debug logging; show tracebacks")
    ap = _Parser(prog=PROG, description="peng3dnet command line tools.", parents=[common])
    ap.add_argument("--version", action="version", version=f"{PROG} {RELEASE} (protocol {PROTOVERSION})")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("ping", parents=[common], help="query a server's status and latency")
    p.add_argument("address", metavar="HOST[:PORT]", help="the server (default port 8080)")
    p.add_argument("--timeout", type=_seconds, default=5.0, help="seconds to wait for the reply (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.set_defaults(func=_cmd_ping)

    from .ext.discovery import DISCOVERY_PORT

    p = sub.add_parser("discover", parents=[common], help="find servers on the LAN (UDP broadcast)")
    p.add_argument("--port", type=_port, default=DISCOVERY_PORT, help=f"discovery UDP port (default {DISCOVERY_PORT})")
    p.add_argument("--addr", default="255.255.255.255", help="where to send the query (default: broadcast)")
    p.add_argument("--timeout", type=_seconds, default=1.0, help="seconds to collect answers (default 1)")
    p.add_argument("--json", action="store_true", help="one JSON line per server")
    p.add_argument("--watch", action="store_true", help="query again every --interval seconds until Ctrl-C")
    p.add_argument("--interval", type=_seconds, default=2.0, help="seconds between queries with --watch (default 2)")
    p.set_defaults(func=_cmd_discover)

    p = sub.add_parser("lagproxy", parents=[common], help="TCP proxy adding delay, jitter, a bandwidth cap")
    p.add_argument("listen", metavar="LISTEN", help="PORT (on 127.0.0.1) or HOST:PORT to listen on (port 0: any)")
    p.add_argument("target", metavar="TARGET", help="HOST:PORT of the server")
    add_proxy_arguments(p)
    p.set_defaults(func=_cmd_lagproxy)

    p = sub.add_parser("serve", parents=[common], help="run an echo server (peng3dnet:echo, pingable)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8080, help="TCP port (default 8080; 0: any free port)")
    p.set_defaults(func=_cmd_serve)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run the ``peng3dnet`` command; return the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    debug = getattr(args, "debug", False)
    logging.basicConfig(level=logging.DEBUG if debug else logging.ERROR,
                        format="%(name)s: %(levelname)s: %(message)s")
    old_term = None
    if threading.current_thread() is threading.main_thread():
        old_term = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except _TerminatedError:
        return 0
    except _UserError as exc:
        if debug:
            raise
        _fail(str(exc))
        return exc.code
    except InvalidAddressError as exc:
        if debug:
            raise
        _fail(str(exc))
        return EXIT_USAGE
    except (Peng3dNetError, OSError) as exc:
        if debug:
            raise
        _fail(str(exc))
        return EXIT_FAIL
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
