"""The command line against hostile LAN answers and ping data (found by a bug hunt)."""

from __future__ import annotations

import socket
import threading

import msgpack
import pytest

from tests.test_cli import cli


class FakeResponder:
    """Answers every discovery query on loopback with ``answer`` (a hostile LAN host)."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.is_set():
            try:
                data, addr = self.sock.recvfrom(64)
            except OSError:
                continue
            if data == b"peng3dnet?":
                self.sock.sendto(self.answer, addr)

    def close(self) -> None:
        self.done.set()
        self.thread.join(5)
        self.sock.close()


@pytest.mark.timeout(60)
def test_discover_json_survives_an_answer_with_a_bytes_key():
    fake = FakeResponder(msgpack.packb({"port": 9, "name": "lan", b"evil": 1}))
    try:
        out = cli("discover", "--addr", "127.0.0.1", "--port", str(fake.port), "--timeout", "1", "--json")
    finally:
        fake.close()
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 1 and '"port": 9' in out.stdout, out.stdout


@pytest.mark.timeout(60)
def test_ping_json_survives_ping_data_with_an_integer_key():
    from peng3dnet.ext.ping import PingableServerMixin
    from peng3dnet.net import Server

    class S(PingableServerMixin, Server):
        pingdata = {"name": "odd", 1: "one"}  # any server's ping data: msgpack allows int keys

    s = S(addr=("127.0.0.1", 0))
    s.runAsync()
    try:
        out = cli("ping", f"127.0.0.1:{s.addr[1]}", "--json", "--timeout", "10")
    finally:
        s.shutdown(timeout=5)
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 1 and '"name": "odd"' in out.stdout, out.stdout


@pytest.mark.timeout(60)
def test_discover_prints_one_line_per_server_whatever_its_name():
    forged = "x\n10.6.6.6:8080  peng3dnet 0.9.9  name=forged"
    fake = FakeResponder(msgpack.packb({"port": 9, "name": forged}))
    try:
        out = cli("discover", "--addr", "127.0.0.1", "--port", str(fake.port), "--timeout", "1")
    finally:
        fake.close()
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("127.0.0.1:9  "), out.stdout


def test_discover_watch_prints_new_changed_and_returning_servers_and_keeps_only_the_last_round(monkeypatch, capsys):
    """--watch prints a server when it is new, changed, or back after a
    round without it (what it remembers is the last round's answers only:
    a LAN flooding it with fake servers cannot grow its memory)."""
    import argparse

    import peng3dnet.ext.discovery as discovery
    from peng3dnet import cli as cli_mod

    a, b, b2 = {"host": "10.0.0.1", "port": 1, "name": "a"}, {"host": "10.0.0.2", "port": 2, "name": "b"}, \
        {"host": "10.0.0.2", "port": 2, "name": "b, renamed"}
    rounds = [[a, b], [a, b], [a, b2], [b2], [a, b2]]

    def fake(**kw):
        if not rounds:
            raise KeyboardInterrupt
        return rounds.pop(0)

    monkeypatch.setattr(discovery, "discover_servers", fake)
    args = argparse.Namespace(watch=True, interval=0.0, port=8089, timeout=0.1, addr="127.0.0.1", json=True)
    assert cli_mod._cmd_discover(args) == 0
    names = [line.split('"name": ')[1].split('"')[1] for line in capsys.readouterr().out.splitlines()]
    assert names == ["a", "b", "b, renamed", "a"]  # a again: it was missing from the round before
