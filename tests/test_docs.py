"""The documentation: it builds with warnings as errors, the generated pages
list every event and config key of the code, and the tutorial's programs
play a whole game (in a terminal, and in a pyglet window under Xvfb).

The build runs Sphinx in a subprocess (``python -m sphinx -W``); the
tutorial runs its server and players as subprocesses on loopback, waiting
on their output lines with bounded waits, never fixed sleeps.
"""

from __future__ import annotations

import html
import importlib.util
import os
import re
import subprocess
import sys

import pytest

from peng3dnet.cli import build_parser
from peng3dnet.constants import DEFAULT_CONFIG, EXTENSION_PACKETS
from peng3dnet.events import CATALOG
from tests.helpers import LineProcess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
TUTORIAL = os.path.join(DOCS, "tutorial")
ENV = dict(os.environ, PYTHONPATH=ROOT)
BUILD_TIMEOUT = 100  # seconds; the build takes about 10 s on 2 cores


def require_sphinx() -> None:
    if importlib.util.find_spec("sphinx") is None:
        pytest.fail("Sphinx is not installed: pip install -e '.[test]' (it brings sphinx>=7.2), "
                    "or pip install 'sphinx>=7.2'")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> str:
    """Build the documentation once for this module; return the output directory."""
    require_sphinx()
    out = str(tmp_path_factory.mktemp("docs-html"))
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", DOCS, out]
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the documentation did not build within {BUILD_TIMEOUT} s")
    assert done.returncode == 0, f"sphinx -W failed:\n{done.stdout}\n{done.stderr}"
    return out


def page_text(site: str, name: str) -> str:
    """The text of a built page, without markup."""
    with open(os.path.join(site, name), encoding="utf-8") as f:
        return html.unescape(re.sub(r"<[^>]+>", "", f.read()))


def test_the_documentation_builds_without_warnings(site):
    for page in ("index.html", "tutorial.html", "compat.html", "events.html", "config.html", "protocol.html",
                 "cli.html", "api/index.html", "api/net.html", "api/protocol.html", "api/transport.html"):
        assert os.path.exists(os.path.join(site, page)), page


def test_every_event_of_the_catalog_is_on_the_events_page(site):
    text = page_text(site, "events.html")
    missing = [name for name in CATALOG if name not in text]
    assert not missing, f"events not on the page: {missing}"
    for name, spec in CATALOG.items():
        assert f"peng3dnet.events.{spec.attr}" in text, name
        for key in spec.keys:
            assert key in text, (name, key)


def test_every_config_key_is_on_the_config_page(site):
    text = page_text(site, "config.html")
    missing = [key for key in DEFAULT_CONFIG if key not in text]
    assert not missing, f"config keys not on the page: {missing}"


def test_the_protocol_page_names_every_extension_and_the_cli_page_every_subcommand(site):
    proto = page_text(site, "protocol.html")
    for ext, packets in EXTENSION_PACKETS.items():
        assert ext in proto, ext
        for name, pid in packets.items():
            assert f"{name} ({pid})" in proto, name
    cli = page_text(site, "cli.html")
    subs = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction").choices
    for name, sub in subs.items():
        assert f"usage: peng3dnet {name}" in cli, name
        for action in sub._actions:
            for opt in action.option_strings:
                assert opt in cli, (name, opt)


def test_the_tutorial_page_shows_the_programs_that_the_tests_run(site):
    text = page_text(site, "tutorial.html")
    for needle in ("class TagServer", "def play(", "def move(", "attach_to_pyglet(client, poll=True"):
        assert needle in text, needle


def test_the_extension_refuses_a_key_or_an_event_without_a_description(monkeypatch):
    require_sphinx()
    sys.path.insert(0, os.path.join(DOCS, "_ext"))
    try:
        import peng3dnet_docs as ext
    finally:
        sys.path.remove(os.path.join(DOCS, "_ext"))
    from sphinx.errors import ExtensionError

    ext._check_config()
    ext._check_events()
    monkeypatch.delitem(ext.CONFIG, "net.timeout.idle")
    with pytest.raises(ExtensionError, match="net.timeout.idle has no description"):
        ext._check_config()
    monkeypatch.setitem(ext.CONFIG, "net.timeout.idle", "back")
    monkeypatch.setitem(ext.CONFIG, "net.no.such.key", "gone from the code")
    with pytest.raises(ExtensionError, match="net.no.such.key"):
        ext._check_config()
    monkeypatch.delitem(ext.EVENTS, "peng3dnet:client.recv")
    with pytest.raises(ExtensionError, match="peng3dnet:client.recv has no thread"):
        ext._check_events()
    monkeypatch.undo()
    monkeypatch.delitem(ext.EVENT_KEYS, "rtt")
    with pytest.raises(ExtensionError, match="'rtt' of peng3dnet:server.connection.heartbeat"):
        ext._check_events()


# --- the tutorial's programs ----------------------------------------------------------------------

class Program(LineProcess):
    """One of the tutorial's programs in a subprocess (see LineProcess)."""

    def __init__(self, script: str, *args: str, env: dict[str, str] | None = None) -> None:
        super().__init__([sys.executable, os.path.join(TUTORIAL, script), *args], cwd=ROOT, env=env or ENV,
                         name=script)


def play_a_game(tags: int, players: list[tuple[str, list[str], dict[str, str] | None]]) -> tuple[Program, list[Program]]:
    """Start the server and the players; wait until the game is over and
    every program ended.  Returns them, their output read."""
    server = Program("tag_server.py", "--port", "0", "--tags", str(tags))
    started: list[Program] = []
    try:
        port = int(server.wait_line(r"^tag server on 127\.0\.0\.1:(\d+)$").group(1))
        for script, args, env in players:
            started.append(Program(script, "--connect", f"127.0.0.1:{port}", *args, env=env))
        server.wait_line(r"^game over: ", timeout=60)
        assert server.finish() == 0, server.stderr()
        for prog in started:
            code = prog.finish()
            assert code == 0, f"{prog.name} exited {code}: {prog.stderr()}"
        return server, started
    finally:
        for prog in [server, *started]:
            prog.kill()


def summary(prog: Program) -> re.Match[str]:
    m = prog.wait_line(r"closed: (\S+); snapshots (\d+)")
    assert m.group(1) == "servershutdown", prog.lines
    assert int(m.group(2)) > 0, prog.lines
    return m


def test_the_tutorial_game_in_a_terminal_server_and_two_players():
    server, players = play_a_game(2, [("tag_client.py", ["--name", "Ann"], None),
                                      ("tag_client.py", ["--name", "Bob"], None)])
    assert {"Ann joined", "Bob joined"} <= set(server.lines), server.lines
    tags = [line for line in server.lines if re.fullmatch(r"(Ann|Bob) tagged (Ann|Bob)", line)]
    assert len(tags) == 2, server.lines
    final = server.lines[-1]
    assert re.fullmatch(r"game over: Ann \d, Bob \d", final), server.lines
    for prog, name in zip(players, ("Ann", "Bob")):
        for line in [*tags, final]:  # every announcement reached every player, in order
            assert f"[{name}] {line}" in prog.lines, (name, line, prog.lines)
        news = [line for line in prog.lines if line.startswith(f"[{name}] ") and "tagged" in line]
        assert news == [f"[{name}] {line}" for line in tags]
        assert summary(prog) and prog.lines[-1].endswith("desyncs 0"), prog.lines


def test_the_tutorial_game_in_a_pyglet_window(xvfb_display):
    env = dict(ENV, DISPLAY=xvfb_display)
    server, (window, bot) = play_a_game(1, [("tag_window.py", ["--name", "Win", "--bot"], env),
                                            ("tag_client.py", ["--name", "Bob"], None)])
    assert {"Win joined", "Bob joined"} <= set(server.lines), server.lines
    assert any(re.fullmatch(r"(Win|Bob) tagged (Win|Bob)", line) for line in server.lines), server.lines
    assert "[Win] " + server.lines[-1] in window.lines, window.lines  # the game over line
    summary(window)
    summary(bot)
