"""The arena demo: headless agreement between clients and server, and the
window under Xvfb (pixels and a key press)."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest

from demos.arena.game import ARENA_W, COIN_HUE, RADIUS, pick_color, player_color

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
TOL = 1e-6  # the stated tolerance: clients report exactly the server's state at that tick


def test_every_demo_module_imports():
    for mod in ("demos.chat", "demos.arena.game", "demos.arena.netgame", "demos.arena.__main__", "demos.arena.window"):
        importlib.import_module(mod)


def run(args, env_extra=None, **kw):
    env = dict(os.environ, PYTHONPATH=ROOT, **(env_extra or {}))
    return subprocess.Popen([sys.executable, "-m", "demos.arena", *args], cwd=ROOT, env=env, text=True, **kw)


def reap(p) -> None:
    """Kill a demo process still running and close its pipes."""
    if p.poll() is None:
        p.kill()
        p.wait()
    for f in (p.stdout, p.stderr):
        if f is not None:
            f.close()


def test_lan_flag_finds_the_dedicated_server_and_joins_it(tmp_path):
    # Loopback only: the server listens on 127.0.0.1 (game and discovery on
    # free ports) and the client sends its query to 127.0.0.1, not broadcast.
    srv = run(["--server", "--host", "127.0.0.1", "--port", "0", "--lan-port", "0", "--duration", "30"],
              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        port = int(re.search(r"arena server on port (\d+)", srv.stdout.readline()).group(1))
        lan_port = int(re.search(r"LAN discovery on udp port (\d+)", srv.stdout.readline()).group(1))
        report = tmp_path / "scout.json"
        out = subprocess.run(
            [sys.executable, "-m", "demos.arena", "--lan", "--lan-port", str(lan_port), "--lan-addr", "127.0.0.1",
             "--headless", "--name", "scout", "--duration", "2", "--report", str(report)],
            cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=60,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        assert f"joining peng3dnet arena at 127.0.0.1:{port}" in out.stdout
        rep = json.loads(report.read_text())
        assert rep["role"] == "client" and "scout" in rep["players"]  # it played on that server
    finally:
        srv.send_signal(signal.SIGINT)  # the server's clean exit path
        try:
            srv.wait(30)
        finally:
            reap(srv)


def test_headless_server_and_three_bots_agree(tmp_path):
    srv = run(["--server", "--host", "127.0.0.1", "--port", "0", "--lan-port", "0", "--duration", "6",
               "--report", str(tmp_path / "server.json")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = srv.stdout.readline()
        port = int(re.search(r"port (\d+)", line).group(1))
        bots = [
            run(["--connect", f"127.0.0.1:{port}", "--headless", "--name", f"b{i}", "--duration", "3",
                 "--report", str(tmp_path / f"b{i}.json")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for i in range(3)
        ]
        for b in bots:
            rc = b.wait(60)
            err = b.stderr.read()
            b.stderr.close()
            assert rc == 0, err
        assert srv.wait(60) == 0, srv.stderr.read()
    finally:
        reap(srv)
    server = json.loads((tmp_path / "server.json").read_text())
    assert server["role"] == "server"
    for i in range(3):
        rep = json.loads((tmp_path / f"b{i}.json").read_text())
        assert rep["role"] == "client" and rep["stats"]["desyncs"] == 0
        truth = server["history"][str(rep["tick"])]
        assert set(rep["players"]) == set(truth)
        for name, p in rep["players"].items():
            for k in ("x", "y"):
                assert abs(p[k] - truth[name][k]) <= TOL
            assert p["score"] == truth[name]["score"]
        assert rep["stats"]["prediction_error_max"] <= TOL
    # all three played together (bots leave one by one at the end)
    assert any(set(v) >= {"b0", "b1", "b2"} for v in server["history"].values())
    # the bots chase coins: somebody scored
    assert max(p["score"] for v in server["history"].values() for p in v.values()) >= 1


def test_no_threads_mode_plays_the_whole_game_on_one_thread(tmp_path):
    report = tmp_path / "r.json"
    out = subprocess.run([sys.executable, "-m", "demos.arena", "--headless", "--no-threads", "--duration", "3",
                          "--report", str(report)], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    rep = json.loads(report.read_text())
    assert rep["threads"] == ["MainThread"]  # server, four clients, sync ticks: no other thread
    server = rep["server"]
    assert set(rep["players"]) == {"bot1", "bot2", "bot3", "you"} and rep["stats"]["desyncs"] == 0
    assert server["tick"] >= 40  # 20 Hz for about 3 s
    truth = server["history"][str(rep["tick"])]
    for name, p in rep["players"].items():  # the player's view is the server's, tick for tick
        for k in ("x", "y"):
            assert abs(p[k] - truth[name][k]) <= TOL
        assert p["score"] == truth[name]["score"]


def test_sigterm_stops_the_dedicated_server_cleanly():
    srv = run(["--server", "--host", "127.0.0.1", "--port", "0", "--lan-port", "0"],
              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        port = int(re.search(r"arena server on port (\d+)", srv.stdout.readline()).group(1))
        from peng3dnet.net import Client

        c = Client(addr=("127.0.0.1", port), cfg={"net.registry.missingpacketaction": "ignore"})  # no sync packets
        c.runAsync()
        c.wait_for_connection(10)
        srv.send_signal(signal.SIGTERM)  # what systemd / docker stop send
        assert srv.wait(30) == 0, srv.stderr.read()
        c.wait_for_close(10)
        assert c.close_reason == "servershutdown"  # not "socketclose"
        c.join(5)
    finally:
        reap(srv)


def pixel_histogram(path: str) -> dict[tuple[int, int, int], int]:
    exe = shutil.which("convert")
    if exe is None:
        pytest.fail("ImageMagick's convert is missing: run `bash .ci/run` (it installs imagemagick)")
    out = subprocess.run([exe, path, "-format", "%c", "histogram:info:-"], capture_output=True, text=True, timeout=60)
    hist = {}
    for line in out.stdout.splitlines():
        m = re.match(r"\s*(\d+):\s*\(\s*(\d+),\s*(\d+),\s*(\d+)", line)
        if m:
            n, r, g, b = map(int, m.groups())
            hist[(r, g, b)] = hist.get((r, g, b), 0) + n
    return hist


def test_window_renders_players_and_a_key_moves_the_local_player(tmp_path, xvfb_display):
    shot = tmp_path / "arena.png"
    report = tmp_path / "report.json"
    env_display = {"DISPLAY": xvfb_display}
    env = dict(os.environ, PYTHONPATH=ROOT, **env_display)
    out = subprocess.run(
        [sys.executable, "-m", "demos.arena", "--name", "tester", "--bots", "2", "--duration", "3",
         "--screenshot", str(shot), "--report", str(report), "--test-keys", "RIGHT@0.6-2.2"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert shot.exists() and shot.stat().st_size > 1000
    hist = pixel_histogram(str(shot))
    data = json.loads(report.read_text())
    colors = {name: tuple(p["color"]) for name, p in data["players"].items()}
    assert set(colors) == {"tester", "bot1", "bot2"} and len(set(colors.values())) == 3  # one colour each
    assert len(data["eids"]) == 1  # the window's player was given one avatar (it reported none once)
    for name, c in colors.items():  # a circle of radius 14 ~ 615 px
        assert hist.get(c, 0) >= 300, f"avatar colour {c} of {name} not drawn"
    assert hist.get((255, 210, 40), 0) >= 100  # coins
    hist_ticks = data["server"]["history"]
    ticks = sorted(t for t in map(int, hist_ticks) if "tester" in hist_ticks[str(t)])
    assert ticks, "the window client never joined under its name"
    start = hist_ticks[str(ticks[0])]["tester"]["x"]
    end = hist_ticks[str(ticks[-1])]["tester"]["x"]
    # 1.6 s of RIGHT at 180 px/s on the server, unless the wall stops it first
    assert end - start >= min(150.0, ARENA_W - RADIUS - start - 1.0)
    # the window client's authoritative view equals the server's at the same tick
    truth = hist_ticks[str(data["tick"])]
    for name, p in data["players"].items():
        assert abs(p["x"] - truth[name]["x"]) <= TOL and abs(p["y"] - truth[name]["y"]) <= TOL


def test_escape_quits_the_windowed_game(tmp_path, xvfb_display):
    report = tmp_path / "report.json"
    env = dict(os.environ, PYTHONPATH=ROOT, DISPLAY=xvfb_display)
    try:
        out = subprocess.run(
            # no --duration: only Escape can end it
            [sys.executable, "-m", "demos.arena", "--name", "tester", "--bots", "0",
             "--report", str(report), "--test-keys", "ESCAPE@1.0-1.1"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the game was still running 60 s after Escape")
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads(report.read_text())
    assert data["role"] == "client" and data["name"] == "tester"


def test_player_names_are_cleaned_bounded_and_unique():
    from demos.arena.game import MAX_NAME, clean_name

    assert clean_name("evil\u202eeman") == "evil eman"  # bidi override gone
    assert clean_name("a\nb\x00c\u200bd") == "a b c d"  # newline, NUL, zero-width space
    assert clean_name("  \t ") == "player" and clean_name(None) == "player"
    assert clean_name("Ｂｏｂ") == "Bob"  # NFKC: full-width letters
    long = clean_name("x" * 100)
    assert long == "x" * MAX_NAME
    assert clean_name("bob", ["Bob"]) == "bob 2"  # case
    assert clean_name("B\u043eb", ["Bob"]) == "B\u043eb 2"  # Cyrillic o looks like o
    assert clean_name("b o b", ["bob", "bob 2"]) == "b o b 3"
    assert clean_name("x" * 100, ["x" * MAX_NAME]) == "x" * (MAX_NAME - 2) + " 2"  # still bounded
    assert clean_name("alice", ["bob"]) == "alice"


def test_a_bot_keeps_its_avatar_and_score_through_cut_connections(tmp_path):
    """The bot's connection goes through a proxy that resets it every 0.7 s:
    each time the session resumes; the bot keeps one entity, its score never
    goes back, and its view agrees with the server's history."""
    srv = run(["--server", "--host", "127.0.0.1", "--port", "0", "--lan-port", "0", "--duration", "8",
               "--report", str(tmp_path / "server.json")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        port = int(re.search(r"port (\d+)", srv.stdout.readline()).group(1))
        bot = run(["--connect", f"127.0.0.1:{port}", "--headless", "--name", "cutter", "--duration", "4",
                   "--cut-every", "0.7", "--report", str(tmp_path / "bot.json")],
                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        rc = bot.wait(60)
        err = bot.stderr.read()
        bot.stderr.close()
        assert rc == 0, err
        assert srv.wait(60) == 0, srv.stderr.read()
    finally:
        reap(srv)
    server = json.loads((tmp_path / "server.json").read_text())
    rep = json.loads((tmp_path / "bot.json").read_text())
    assert rep["stats"]["resumes"] >= 3, rep["stats"]  # 4 s, a cut every 0.7 s
    assert len(rep["eids"]) == 1  # one avatar the whole game
    ticks = sorted(int(t) for t, v in server["history"].items() if "cutter" in v)
    assert ticks and ticks[-1] - ticks[0] + 1 == len(ticks)  # never left the game in between
    scores = [server["history"][str(t)]["cutter"]["score"] for t in ticks]
    assert scores == sorted(scores)  # a rejoin would have started again from 0
    truth = server["history"][str(rep["tick"])]
    assert rep["players"]["cutter"]["score"] == truth["cutter"]["score"]
    assert rep["stats"]["desyncs"] == 0


def test_a_cluster_of_two_servers_and_six_bots_in_two_rooms(tmp_path, redis_url):
    """Two dedicated servers share a directory on Redis; six headless bots ask
    the lobby for room "red" or "blue": each room lives on one server, its
    bots all land there and agree with that server's history of the room;
    the chat crosses servers; the leaderboard is the cluster's."""
    env_secret = {"PENG3DNET_CLUSTER_SECRET": "test cluster secret"}
    servers = [
        run(["--server", "--host", "127.0.0.1", "--port", "0", "--cluster", redis_url, "--duration", "9",
             "--report", str(tmp_path / f"s{i}.json")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env_extra=env_secret)
        for i in range(2)
    ]
    bots = []
    try:
        ports = {int(re.search(r"port (\d+)", s.stdout.readline()).group(1)) for s in servers}
        # The red bots first, playing before the blue ones come: the blue
        # bots' join lines are then said while the red ones listen.
        for i in (0, 2, 4, 1, 3, 5):
            room = "red" if i % 2 == 0 else "blue"
            bots.append(run(["--lobby", redis_url, "--room", room, "--headless", "--name", f"{room}{i}",
                             "--duration", "4", "--report", str(tmp_path / f"b{i}.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env_extra=env_secret))
            if i == 4:
                for red in bots:  # "room red on HOST:PORT", then "playing as ..."
                    assert red.stdout.readline().startswith("room red on ")
                    assert red.stdout.readline().startswith("playing as red")
        for b in bots:
            rc = b.wait(60)
            err = b.stderr.read()
            assert rc == 0, err
        for s in servers:
            assert s.wait(60) == 0, s.stderr.read()
    finally:
        for p in servers + bots:
            reap(p)
    reps = [json.loads((tmp_path / f"b{i}.json").read_text()) for i in range(6)]
    srv = {}
    for i in range(2):
        r = json.loads((tmp_path / f"s{i}.json").read_text())
        srv[r["addr"]] = r
    assert {int(a.rsplit(":", 1)[1]) for a in srv} == ports
    compared = []
    for room in ("red", "blue"):
        mine = [r for r in reps if r["room"] == room]
        assert len(mine) == 3 and len({r["server"] for r in mine}) == 1  # one server holds the room
        server = srv[mine[0]["server"]]
        # The room usually went when its last bot left, before the server's
        # report: the server's report keeps the rooms it disposed of.
        kept = server["rooms"].get(room) or server["disposed"].get(room)
        assert kept is not None, (set(server["rooms"]), set(server["disposed"]))
        history = kept["history"]
        for r in mine:
            assert r["stats"]["desyncs"] == 0
            truth = history.get(str(r["tick"]))
            assert truth is not None, f"{r['name']}'s last tick {r['tick']} is not in the history of {room}"
            assert set(r["players"]) == set(truth), r["name"]
            for name, p in r["players"].items():  # the bot's view is the room's, tick for tick
                for k in ("x", "y"):
                    assert abs(p[k] - truth[name][k]) <= TOL, (r["name"], name, k)
                assert p["score"] == truth[name]["score"], (r["name"], name)
            compared.append(r["name"])
    assert sorted(compared) == sorted(r["name"] for r in reps)  # every bot's view was checked, all six
    # The lobby put the two rooms on the two servers (the least loaded each time) ...
    assert {r["server"] for r in reps if r["room"] == "red"} != {r["server"] for r in reps if r["room"] == "blue"}
    # ... so a red bot hearing the blue ones is the chat crossing servers (through Redis).
    for r in reps:
        if r["room"] == "red":
            assert {"blue1 joined blue", "blue3 joined blue", "blue5 joined blue"} <= set(r["chat"]), r["chat"]
    # One leaderboard for the cluster (a Redis sorted set both servers add to):
    # every point a bot saw itself score is on it (a point in its very last
    # tick may be there and not in its report), and nobody else is.
    from peng3dnet.ext.rooms.redispresence import RedisPresence

    presence = RedisPresence(redis_url, "arena")
    try:
        board = {n: s for n, s in presence.top("arena:board", 100) if n[:3] in ("red", "blu")}
    finally:
        presence.close()
    names = {r["name"] for r in reps}
    assert set(board) <= names
    own = {r["name"]: r["players"][r["name"]]["score"] for r in reps if r["name"] in r["players"]}
    for name, score in own.items():
        assert board.get(name, 0) >= score
    if any(v > 0 for n, v in own.items() if n.startswith("red")) and any(v > 0 for n, v in own.items() if n.startswith("blue")):
        assert {n[:3] for n in board} == {"red", "blu"}  # both servers' points in the one board
    assert any(r["board"] for r in reps)  # and the servers sent it to their players


def test_window_in_a_cluster_shows_the_leaderboard_and_chat(tmp_path, xvfb_display, redis_url):
    """A windowed player joins room "win" through the lobby: it lands on the
    cluster server, plays, and its HUD has the cluster's board and chat."""
    secret = {"PENG3DNET_CLUSTER_SECRET": "window test secret"}
    srv = run(["--server", "--host", "127.0.0.1", "--port", "0", "--cluster", redis_url, "--duration", "8"],
              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env_extra=secret)
    try:
        port = int(re.search(r"port (\d+)", srv.stdout.readline()).group(1))
        shot, report = tmp_path / "win.png", tmp_path / "win.json"
        out = subprocess.run(
            [sys.executable, "-m", "demos.arena", "--lobby", redis_url, "--room", "win", "--name", "viewer",
             "--duration", "3", "--screenshot", str(shot), "--report", str(report)],
            cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT, DISPLAY=xvfb_display, **secret),
            capture_output=True, text=True, timeout=120,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        assert srv.wait(60) == 0, srv.stderr.read()
    finally:
        reap(srv)
    data = json.loads(report.read_text())
    assert data["room"] == "win" and data["server"].endswith(f":{port}")
    assert "viewer joined win" in data["chat"]  # its own line came back through the cluster's chat
    viewer = tuple(data["players"]["viewer"]["color"])
    assert shot.exists() and pixel_histogram(str(shot)).get(viewer, 0) >= 300


def test_a_headless_player_exits_with_a_message_when_its_server_goes():
    srv = run(["--server", "--host", "127.0.0.1", "--port", "0", "--lan-port", "0"],
              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    bot = None
    try:
        port = int(re.search(r"port (\d+)", srv.stdout.readline()).group(1))
        bot = run(["--connect", f"127.0.0.1:{port}", "--headless", "--name", "orphan", "--duration", "120"],
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert bot.stdout.readline().startswith("playing as orphan")
        srv.send_signal(signal.SIGTERM)
        assert srv.wait(30) == 0
        assert bot.wait(30) == 1  # not the 120 s of --duration
        err = bot.stderr.read()
        assert "the server closed the connection (servershutdown); exiting" in err and "Traceback" not in err
    finally:
        reap(srv)
        if bot is not None:
            reap(bot)


def _hue(rgb) -> float:
    import colorsys

    return colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[0] * 360


def _hue_gap(a: float, b: float) -> float:
    d = abs(a - b) % 360
    return min(d, 360 - d)


def test_eight_players_get_eight_distinct_hues_and_keep_them():
    """The server gives each joining player the first free slot colour: 8
    players, 8 hues at least 30 degrees apart and 40 from the coins' gold; a
    rename keeps the colour; a leaver's colour goes to the next join."""
    from types import SimpleNamespace

    from demos.arena.netgame import ArenaLogic

    sync = SimpleNamespace(entities={}, owners={})
    game = ArenaLogic(sync)  # type: ignore[arg-type]
    for cid in range(1, 9):
        game.join(cid)
    colors = [tuple(sync.entities[f"p{cid}"]["color"]) for cid in range(1, 9)]
    hues = [_hue(c) for c in colors]
    assert len(set(colors)) == 8
    gaps = [_hue_gap(a, b) for i, a in enumerate(hues) for b in hues[i + 1:]]
    assert min(gaps) >= 30, sorted(gaps)[:3]
    assert min(_hue_gap(h, COIN_HUE) for h in hues) >= 40
    assert abs(_hue((255, 210, 40)) - COIN_HUE) < 1  # the constant is the coins' hue
    game.input(3, "p3", {"name": "renamed"})
    assert sync.entities["p3"]["name"] == "renamed" and tuple(sync.entities["p3"]["color"]) == colors[2]
    game.leave("p5")
    game.join(9)
    assert tuple(sync.entities["p9"]["color"]) == colors[4]  # the freed slot
    game.join(10)  # a ninth player at once: a colour of its own (a darker first hue)
    c10 = tuple(sync.entities["p10"]["color"])
    assert c10 not in colors and c10 == tuple(player_color(8))


def test_pick_color_skips_taken_colours():
    assert pick_color([]) == player_color(0)
    assert pick_color([player_color(0), player_color(2)]) == player_color(1)
    assert pick_color([player_color(i) for i in range(8)]) == player_color(8)
    assert len({tuple(player_color(i)) for i in range(24)}) == 24
    # every slot taken: it ends (the 33rd player hung the server: 32 colours, an endless search)
    for n in (32, 33, 300):
        assert pick_color([player_color(i) for i in range(n)]) is not None
    assert pick_color([[1, 2, 3]] * 5) == player_color(0)


def test_overlapping_name_labels_are_stacked():
    """Two players on one spot: their labels are drawn one above the other
    (they were drawn over each other); labels apart stay where they are."""
    from types import SimpleNamespace

    from demos.arena.window import LABEL_H, stack_labels

    a = SimpleNamespace(x=100.0, y=200.0, content_width=40)
    b = SimpleNamespace(x=104.0, y=200.0, content_width=40)
    c = SimpleNamespace(x=102.0, y=205.0, content_width=40)
    far = SimpleNamespace(x=400.0, y=200.0, content_width=40)
    stack_labels([a, b, c, far])
    ys = sorted(lb.y for lb in (a, b, c))
    assert ys[0] == 200.0 and ys[1] - ys[0] >= LABEL_H and ys[2] - ys[1] >= LABEL_H
    assert far.y == 200.0


@pytest.mark.parametrize("args, code, message", [
    (["--connect", ""], 2, "--connect needs HOST[:PORT]"),
    (["--connect", "host:"], 2, "empty port"),
    (["--connect", "127.0.0.1:0"], 2, "port must be 1-65535"),
    (["--connect", "127.0.0.1:1"], 1, "arena: error: cannot connect to"),
])
def test_command_line_errors_are_one_line(args, code, message):
    """A bad or unreachable address: one line and an exit code, no
    traceback (an empty --connect used to start an embedded server)."""
    out = subprocess.run([sys.executable, "-m", "demos.arena", "--headless", "--duration", "5", *args],
                         cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=60)
    assert out.returncode == code, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
    assert "embedded arena server" not in out.stdout


def test_debug_shows_the_traceback():
    out = subprocess.run([sys.executable, "-m", "demos.arena", "--headless", "--debug", "--connect", "127.0.0.1:1"],
                         cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "Traceback" in out.stderr and "NetworkError" in out.stderr


def test_label_stacking_ends_with_float_positions():
    """Positions whose sums round ((500.3 + 12) - 500.3 < 12) once looped
    forever in the window's draw."""
    import threading
    from types import SimpleNamespace

    from demos.arena.window import LABEL_H, stack_labels

    labels = [SimpleNamespace(x=300.0, y=500.3, content_width=37) for _ in range(3)]
    labels += [SimpleNamespace(x=900.0, y=1e18, content_width=37) for _ in range(2)]  # py + 12 == py
    labels += [SimpleNamespace(x=300.1 + i * 0.7, y=516.3 + i * 0.1, content_width=37) for i in range(8)]
    worker = threading.Thread(target=stack_labels, args=(labels,), daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "stack_labels never returned"
    ys = sorted(lb.y for lb in labels[:3] + labels[5:])
    assert all(b - a >= LABEL_H - 0.01 for a, b in zip(ys, ys[1:]))


def test_ctrl_c_quits_the_windowed_game_without_a_traceback(tmp_path, xvfb_display):
    """Ctrl-C in the terminal of a windowed game: exit 0 with the report
    written, no traceback (it printed 28 lines)."""
    report = tmp_path / "report.json"
    game = run(["--name", "tester", "--bots", "1", "--report", str(report)], env_extra={"DISPLAY": xvfb_display},
               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert game.stdout.readline().startswith("embedded arena server")
        assert game.stdout.readline().startswith("playing as tester on 127.0.0.1:")  # the window is open
        game.send_signal(signal.SIGINT)
        assert game.wait(30) == 0
        err = game.stderr.read()
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-2000:]
        assert json.loads(report.read_text())["name"] == "tester"  # the report of a clean exit
    finally:
        reap(game)


def test_ping_counts_the_players_not_the_ping_connection():
    """The arena's ping data counts players who joined the game; the ping
    connection asking is not one of them (it was counted)."""
    from demos.arena.netgame import ArenaServer, Bot
    from peng3dnet.ext.ping import pingServer
    from tests.helpers import wait_for

    srv = ArenaServer(host="127.0.0.1", port=0).start()
    bots = []
    try:
        assert pingServer(addr=("127.0.0.1", srv.port), timeout=10)["players"] == 0
        bots = [Bot(("127.0.0.1", srv.port), f"b{i}").start() for i in range(2)]
        wait_for(lambda: len(srv.sync.owners) == 2, what="two players in the game")
        assert pingServer(addr=("127.0.0.1", srv.port), timeout=10)["players"] == 2
    finally:
        for b in bots:
            b.stop()
        srv.stop()


def test_a_renamed_players_points_move_with_it_on_the_leaderboard():
    """A player's name arrives after it joined; a point it scored before
    (a coin under its spawn point) moves to its name on the cluster's
    leaderboard, and the board sent to players leaves the old name out."""
    from types import SimpleNamespace

    from demos.arena.netgame import BOARD_KEY, ArenaRoom
    from peng3dnet.ext.rooms.presence import LocalPresence

    presence = LocalPresence()
    sent = []
    entities = {"p1": {"kind": "player", "name": "player1", "score": 0}}
    room = SimpleNamespace(sync=SimpleNamespace(entities=entities), game=SimpleNamespace(step=lambda dt, tick: None),
                           rooms=SimpleNamespace(presence=presence), _scores={}, _names={}, _board_at=-1e9,
                           broadcast=lambda ptype, data: sent.append(data))
    step = ArenaRoom._step.__get__(room)
    step(0.05, 1)
    entities["p1"] = {**entities["p1"], "score": 1}  # the coin under its spawn point
    step(0.05, 2)
    entities["p1"] = {**entities["p1"], "name": "blue3"}  # its name arrives
    step(0.05, 3)
    entities["p1"] = {**entities["p1"], "score": 3}
    room._board_at = -1e9
    step(0.05, 4)
    assert dict(presence.top(BOARD_KEY, 10)) == {"blue3": 3.0, "player1": 0.0}
    assert sent[-1] == [["blue3", 3.0]]


def test_a_burst_of_inputs_each_claiming_the_longest_frame_moves_no_faster_than_the_budget():
    """apply_input clamps one input's dt; a burst of 40 such inputs in one
    tick moved a player 9,403 px/s against a top speed of 180 (the fault
    hunt of 2026-12-02).  The server's logic clamps their sum: the budget
    saved up (0.25 s) at once, then a tick's worth per tick."""
    from types import SimpleNamespace

    from demos.arena.game import MAX_DT, SPEED
    from demos.arena.netgame import ArenaLogic

    logic = ArenaLogic(SimpleNamespace(entities={}, owners={}))
    logic.join(1)
    eid = logic.sync.owners[1]
    logic.sync.entities[eid] = {**logic.sync.entities[eid], "x": 100.0, "y": 300.0}
    for _ in range(40):
        logic.input(1, eid, {"dx": 1, "dy": 0, "dt": MAX_DT})
    assert logic.sync.entities[eid]["x"] == pytest.approx(100.0 + SPEED * ArenaLogic.MAX_BUDGET)
    logic.step(0.05, 1)
    for _ in range(40):
        logic.input(1, eid, {"dx": 1, "dy": 0, "dt": MAX_DT})
    assert logic.sync.entities[eid]["x"] == pytest.approx(100.0 + SPEED * (ArenaLogic.MAX_BUDGET + 0.05))
    logic.input(1, eid, {"dx": 1, "dt": "long"})  # (not a number: ignored)
    logic.leave(eid)
    assert eid not in logic.budget
