"""pingServer() and PingableClientMixin.wait_for_pong(): the errors a game
shows its player (no reply in time, closed without a reply) with their
messages and reasons, and the arguments handed to the client class."""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest

from peng3dnet.errors import ConnectionClosedError, FailedPingError
from peng3dnet.ext.ping import PingableClientMixin, _PingClient, pingServer
from peng3dnet.net import Client


def _closing_server() -> tuple[socket.socket, threading.Thread]:
    """Accepts one connection and closes it at once, without a word."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def run() -> None:
        conn, _ = srv.accept()
        conn.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return srv, t


def test_no_reply_in_time_names_the_server_and_the_timeout():
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        addr = silent.getsockname()
        with pytest.raises(FailedPingError) as ei:
            pingServer(addr=addr, timeout=0.3)
    assert str(ei.value) == f"no ping reply from {addr} within 0.3 s"


def test_a_server_that_closes_without_a_reply_gives_the_close_reason():
    srv, t = _closing_server()
    with srv:
        with pytest.raises(ConnectionClosedError) as ei:
            pingServer(addr=srv.getsockname(), timeout=10)
        t.join(10)
    reason = ei.value.reason
    assert reason and str(ei.value) == f"server closed without a ping reply ({reason})"


def test_wait_for_pong_reports_the_same_two_failures():
    class PC(PingableClientMixin, Client):
        pass

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        pc = PC(addr=silent.getsockname(), conntype="ping")
        pc.runAsync()
        try:
            with pytest.raises(FailedPingError) as ei:
                pc.wait_for_pong(0.3)
            assert str(ei.value) == "no ping reply within 0.3 s"
        finally:
            pc.stop()
            pc.join(5)
    srv, t = _closing_server()
    with srv:
        pc = PC(addr=srv.getsockname(), conntype="ping")
        pc.runAsync()
        try:
            with pytest.raises(ConnectionClosedError) as ei2:
                pc.wait_for_pong(10)
        finally:
            pc.stop()
            pc.join(5)
        t.join(10)
    reason = ei2.value.reason
    assert reason and str(ei2.value) == f"server closed without a ping reply ({reason})"


def test_pingserver_hands_peng_and_config_to_the_client_class():
    seen: dict[str, Any] = {}

    class Recording(_PingClient):
        def __init__(self, peng: Any, addr: Any, cfg: Any, **kw: Any) -> None:
            seen.update(peng=peng, cfg=cfg, kw=kw)
            super().__init__(None, addr, cfg, **kw)

    peng = object()
    srv, t = _closing_server()
    with srv, pytest.raises(ConnectionClosedError):
        pingServer(peng, srv.getsockname(), {"net.debug.print.send": False}, clientcls=Recording, timeout=10)
    t.join(10)
    assert seen == {"peng": peng, "cfg": {"net.debug.print.send": False}, "kw": {"conntype": "ping"}}
