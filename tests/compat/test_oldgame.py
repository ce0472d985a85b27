"""A program written for peng3dnet 0.1.x (oldgame.py) runs unchanged: both
sides ours, each side against the original 0.1.3a0 (in its own virtualenv),
and, as the oracle, both sides original.

The expectations below are a model of 0.1.x semantics (COMPAT.md): which
SmartPacket of the matrix reaches ``receive()`` and which ``send()`` hook
runs, from each side's application state.  The original-vs-original run
checks the model itself.  One difference is the original's, and modelled as
such: its Client reports ``conntype`` as ``"_notset"``, so a SmartPacket with
``conntype = "classic"`` never passes on an original client; ours reports the
connection type in use, as COMPAT.md asks.

Run on 0.1.x, the program's server sends a tick every 100 ms to work
around the original server's lost write interest (see oldgame.py); run on
this library it sends none, so our sides are tested without that help.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import pytest

from tests.helpers import impl_command

HERE = os.path.dirname(os.path.abspath(__file__))
GAME = os.path.join(HERE, "oldgame.py")

SIDE_CLIENT, SIDE_SERVER = 0, 1  # the 0.1.x values, spelt out: this is what is tested
STATE_ACTIVE, STATE_LOGGEDIN = 64, 65
MODE_PLAY, MODE_CHAT = 3, 4
STATES = [STATE_ACTIVE, STATE_LOGGEDIN, 100]
MODES = [None, MODE_PLAY, MODE_CHAT]
SIDES = [None, SIDE_SERVER, SIDE_CLIENT]
CONNTYPES = [None, "classic", "ping"]
MATRIX = [(st, mo, si, ct) for st in STATES for mo in MODES for si in SIDES for ct in CONNTYPES]

PAIRINGS = [("ours", "ours"), ("orig", "ours"), ("ours", "orig"), ("orig", "orig")]


class View(NamedTuple):
    state: int
    mode: int
    conntype: str
    side: int


def name(st: Any, mo: Any, si: Any, ct: Any) -> str:
    return f"m:{st}.{mo}.{si}.{ct}"


def passes(view: View, receiving: bool, st: Any, mo: Any, si: Any, ct: Any) -> bool:
    """SmartPacket's check in 0.1.x: ``side`` is the side that receives."""
    if si is not None and (si == view.side) != receiving:
        return False
    return st == view.state and mo in (None, view.mode) and ct in (None, view.conntype)


def expected(view: View, receiving: bool) -> list[str]:
    return sorted(name(*m) for m in MATRIX if passes(view, receiving, *m))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def last_json(out: str, err: str, who: str) -> dict[str, Any]:
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    assert lines, f"{who} printed no report; stderr:\n{err[-3000:]}"
    return json.loads(lines[-1])


def run_pair(server_impl: str, client_impl: str, case: str | None = None) -> tuple[dict, dict]:
    """One run; again on a new port if another process took the free port
    between free_port() and the server's bind (seen on a busy machine)."""
    for attempt in range(3):
        try:
            return _run_pair(server_impl, client_impl, case)
        except _PortTakenError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


class _PortTakenError(Exception):
    pass


def _run_pair(server_impl: str, client_impl: str, case: str | None = None) -> tuple[dict, dict]:
    port = free_port()
    extra = [case] if case else []
    scmd, senv = impl_command(server_impl, GAME, "server", port, *extra)
    ccmd, cenv = impl_command(client_impl, GAME, "client", port, *extra)
    server = subprocess.Popen(scmd, env=senv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        client = subprocess.run(ccmd, env=cenv, capture_output=True, text=True, timeout=90)
        sout, serr = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    who = f"{server_impl} server / {client_impl} client"
    if "Address already in use" in serr and not any(ln.startswith("{") for ln in sout.splitlines()):
        raise _PortTakenError(who)
    return last_json(sout, serr, f"server ({who})"), last_json(client.stdout, client.stderr, f"client ({who})")


def run_all(jobs: list[tuple[str, str, str | None]]) -> list[tuple[dict, dict]]:
    # Two at a time: each run is mostly waiting for the original's import of peng3d.
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda job: run_pair(*job), jobs))


@pytest.fixture(scope="module")
def matrix_runs() -> dict[tuple[str, str], tuple[dict, dict]]:
    return dict(zip(PAIRINGS, run_all([(s, c, None) for s, c in PAIRINGS])))


@pytest.mark.parametrize("pairing", PAIRINGS, ids=lambda p: f"{p[0]}-server-{p[1]}-client")
def test_program_runs_unchanged_and_smartpackets_follow_0_1_semantics(matrix_runs, pairing):
    server_impl, client_impl = pairing
    srv, cli = matrix_runs[pairing]
    assert not srv["timed_out"] and not cli["timed_out"]
    # The work-around for the original server runs on it, and only there.
    assert srv["on_0_1"] == (server_impl == "orig")
    if server_impl == "ours":
        assert srv["ticks"] == 0

    # Server side: its connection is at state 100 / MODE_PLAY (set by the login handler).
    server_view = View(100, MODE_PLAY, "classic", SIDE_SERVER)
    assert sorted(srv["received"]) == expected(server_view, receiving=True)
    assert sorted(srv["send_hooks"]) == expected(server_view, receiving=False)
    # Client side: remote_state STATE_LOGGEDIN / MODE_CHAT (set by the welcome handler).
    client_view = View(STATE_LOGGEDIN, MODE_CHAT, "classic" if client_impl == "ours" else "_notset", SIDE_CLIENT)
    assert sorted(cli["received"]) == expected(client_view, receiving=True)
    assert sorted(cli["send_hooks"]) == expected(client_view, receiving=False)
    assert len(srv["received"]) == 8 and len(cli["send_hooks"]) == (8 if client_impl == "ours" else 4)

    # State moves of the library, and the application's own states.
    assert srv["states"] == {
        "on_connect": [4, 0],  # STATE_HELLOWAIT, MODE_NOTSET
        "handshake_before": [1, 0, "classic"],  # STATE_HANDSHAKE_WAIT1
        "handshake_base": [STATE_ACTIVE, 0],  # the base on_handshake_complete
        "login": [STATE_LOGGEDIN, 0],  # set in on_handshake_complete, seen by the handler
    }
    assert cli["states"] == {
        "handshake_before": [1, 0],
        "handshake_base": [STATE_ACTIVE, 0],
        "welcome": [STATE_ACTIVE, 0],
    }
    # Hooks: every application packet, both ways (6 chunks: 6 syncs and 6 acks
    # each way); the program's own check() never called.
    assert (srv["on_receive"], srv["on_send"]) == (1 + 81 + 6 + 6 + 2 + 1, 1 + 81 + 6 + 6 + 1)
    assert (cli["on_receive"], cli["on_send"]) == (1 + 81 + 6 + 6 + 1, 1 + 81 + 6 + 6 + 2 + 1)
    assert srv["check_called"] == cli["check_called"] == 0
    # The chat packet's own _receive check refused the empty line; the valid one passed.
    assert srv["chat"] == ["hi all"] and srv["chat_refused"] == 1
    assert srv["flags"] == [True, False, True] and cli["flags"] == [False, True, True]
    assert cli["ping"] == ["oldgame", "oldgame", ["protoversion", "release", "version"]]
    assert srv["close_reason"] == "bye"  # the client's close, after every packet was handled


CASES = {
    # case: (side that closes, whose hook/handler ran)
    "close-recv-server": "server",  # the client may send it, the server may not receive it
    "close-send-client": "client",  # the client may not send it: sent anyway, then the client closes
    "close-recv-client": "client",
    "close-send-server": "server",
}


@pytest.fixture(scope="module")
def case_runs() -> dict[tuple[str, str, str], tuple[dict, dict]]:
    jobs = [(s, c, case) for case in CASES for s, c in PAIRINGS]
    return dict(zip(jobs, run_all(jobs)))


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("pairing", PAIRINGS, ids=lambda p: f"{p[0]}-server-{p[1]}-client")
def test_invalid_action_close(case_runs, pairing, case):
    srv, cli = case_runs[(*pairing, case)]
    assert not srv["timed_out"] and not cli["timed_out"]
    assert srv["on_0_1"] == (pairing[0] == "orig")
    if pairing[0] == "ours":
        assert srv["ticks"] == 0
    closer, other = (srv, cli) if CASES[case] == "server" else (cli, srv)
    closer_impl = pairing[0] if CASES[case] == "server" else pairing[1]
    if closer_impl == "ours":
        # Ours writes its closeconn before closing: the other side is told
        # why; its own on_close gets the reason too.
        assert other["close_reason"] == "smartpacketinvalid"
        assert closer["close_reason"] == "smartpacketinvalid"
    else:
        # The original sometimes closes its socket before its closeconn is
        # written (the peer then sees a plain socket close), and passes no
        # reason to its own server-side on_close.
        assert other["close_reason"] in ("smartpacketinvalid", "socketclose")
    # The check that failed ran no hook; the other side's passed.
    if case == "close-recv-server":
        assert srv["received"] == [] and cli["send_hooks"] == ["case:a"]
    elif case == "close-send-client":
        assert cli["send_hooks"] == []  # sent anyway (0.1.x), then closed
    elif case == "close-recv-client":
        assert cli["received"] == [] and srv["send_hooks"] == ["case:c"]
    else:
        assert srv["send_hooks"] == []
        if closer_impl == "ours":  # sent anyway, then closed: delivered (the original may drop it)
            assert cli["received"] == ["case:d"]
