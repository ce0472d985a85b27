"""Session resume (issue "Sessions", part 2): a connection survives the drop
of its socket; every message is delivered once and in order; the session
ends with a clear reason when it cannot go on.  Real sockets, the lag
proxy's cut and stall faults."""

from __future__ import annotations

import os
import threading

import pytest

from peng3dnet import errors
from peng3dnet.constants import EXTENSIONS_KEY, RESUME_KEY, STATE_LOGGEDIN
from peng3dnet.net import Client, ClientOnServer, Server
from peng3dnet.packet import Packet
from peng3dnet.tools.lagproxy import LagProxy
from tests.conftest import RawPeer
from tests.helpers import Sink, active_cids, wait_for

RESUME = {"net.session.resume": True}


class Counted(ClientOnServer):
    handshakes = 0

    def on_handshake_complete(self):
        type(self).handshakes += 1
        super().on_handshake_complete()


class Pair:
    """A resumable server and client, optionally through a lag proxy."""

    def __init__(self, net, proxy=False, server_cfg=None, client_cfg=None, proxy_kw=None, *, authenticate=None,
                 credentials=None, server_setup=None, client_packets=None):
        self.s = Server(cfg={"net.server.addr": ("127.0.0.1", 0), **RESUME, **(server_cfg or {})}, clientcls=Counted,
                        authenticate=authenticate)
        self.s.register_packet("t:num", Sink(self.s.registry, self.s))
        if server_setup is not None:
            server_setup(self.s)  # packets of the test's own, before clients come
        net.servers.append(self.s)
        self.srec = net.recorder(self.s, "peng3dnet:server.*")
        self.s.runAsync()
        self.s.process_async()
        self.proxy = None
        addr = self.s.addr
        if proxy:
            self.proxy = LagProxy(("127.0.0.1", 0), self.s.addr, **(proxy_kw or {})).start()
            addr = self.proxy.addr
        self.c = Client(addr=addr, cfg={**RESUME, "net.client.reconnect.delay": 0.02, **(client_cfg or {})},
                        credentials=credentials)
        self.c.register_packet("t:num", Sink(self.c.registry, self.c))
        for name, cls in (client_packets or {}).items():
            self.c.register_packet(name, cls(self.c.registry, self.c))
        net.clients.append(self.c)
        self.crec = net.recorder(self.c, "peng3dnet:client.*")
        self.c.runAsync()
        self.c.process_async()
        self.c.wait_for_connection(10)
        (self.cid,) = active_cids(self.s)

    @property
    def s_got(self) -> Sink:
        return self.s.registry.get_obj("t:num")

    @property
    def c_got(self) -> Sink:
        return self.c.registry.get_obj("t:num")

    def close(self):
        if self.proxy is not None:
            self.proxy.stop()


@pytest.fixture
def pairs(net):
    made = []

    def make(**kw):
        p = Pair(net, **kw)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def test_a_drop_is_resumed_with_nothing_lost(pairs, caplog):
    Counted.handshakes = 0
    caplog.set_level("INFO", logger="peng3dnet.client")
    p = pairs(proxy=True)
    owner = p.s.clients[p.cid]
    owner.state = STATE_LOGGEDIN  # the application's state survives the drop
    for i in range(50):
        p.c.send_message("t:num", i)
        p.s.send_message("t:num", i, p.cid)
    p.s_got.wait_count(50)
    p.c_got.wait_count(50)
    p.proxy.cut()
    for i in range(50, 100):  # sent while the socket is gone: kept for the next one
        p.c.send_message("t:num", i)
        p.s.send_message("t:num", i, p.cid)
    assert p.s_got.wait_count(100) == list(range(100))
    assert p.c_got.wait_count(100) == list(range(100))
    p.crec.wait_for("peng3dnet:client.resumed")
    (rc,) = p.crec.wait_for("peng3dnet:client.reconnecting")[:1]
    assert rc["attempt"] == 1 and 0 < rc["delay"] <= 0.02
    (sus,) = p.srec.wait_for("peng3dnet:server.connection.suspended")
    assert sus["client"] is owner and sus["reason"] in ("socketclose", "socketerror")
    (res,) = p.srec.wait_for("peng3dnet:server.connection.resumed")
    assert res["client"] is owner
    # Same cid, same object, same state; the handshake hook ran once; the
    # connection made for the resume was closed with "resumed", the session never.
    assert list(p.s.clients) == [p.cid] and p.s.clients[p.cid] is owner and owner.state == STATE_LOGGEDIN
    assert Counted.handshakes == 1
    closes = p.srec.wait_for("peng3dnet:server.connection.close")
    assert [(d["reason"], d["client"] is owner) for d in closes] == [("resumed", False)]
    assert not p.c.closed and not p.c.reconnecting
    assert "peng3dnet:client.close" not in p.crec.names()
    assert (f"= client: reconnected to {p.proxy.addr} (attempt 1), resuming"
            in [r.getMessage() for r in caplog.records if r.name == "peng3dnet.client"])


def test_every_drop_gets_the_full_reconnect_budget(pairs):
    """A successful resume starts the next drop's count afresh: attempt 1,
    the first back-off, and all net.client.reconnect attempts (here one)."""
    p = pairs(proxy=True, client_cfg={"net.client.reconnect": 1})
    for n in (1, 2, 3):
        p.proxy.cut()
        p.crec.wait_for("peng3dnet:client.resumed", n)
        p.c.send_message("t:num", n)  # and the session carries on
        assert p.s_got.wait_count(n) == list(range(1, n + 1))
    attempts = [(d["attempt"], d["delay"] <= 0.02) for d in p.crec.wait_for("peng3dnet:client.reconnecting", 3)]
    assert attempts == [(1, True)] * 3
    assert not p.c.closed and "peng3dnet:client.close" not in p.crec.names()


def test_calls_survive_a_drop(pairs):
    """A call whose request got through before the cut is answered after the resume."""
    gate = threading.Event()
    started = threading.Event()

    def setup(s):
        @s.handler("t:slow")
        def slow(msg, cid):
            started.set()
            gate.wait(10)
            return msg + 1

    p = pairs(proxy=True, server_setup=setup, client_packets={"t:slow": Packet})
    fut = p.c.call_async("t:slow", 41, timeout=30)
    assert started.wait(10)  # the server runs the handler: the request crossed
    p.proxy.cut()
    p.crec.wait_for("peng3dnet:client.resumed")
    gate.set()  # the answer goes out on the new socket
    assert fut.result(20) == 42
    started.clear()
    assert p.c.call("t:slow", 1, timeout=10) == 2


def test_a_hundred_thousand_each_way_through_cuts(pairs):
    n = 100_000
    p = pairs(proxy=True, proxy_kw={"cut_every": 0.5})

    def cutter():  # cuts in mid-stream whatever the machine's speed, on top of the timed ones
        got = p.s_got
        for k in (20_000, 50_000, 80_000):
            with got.cond:
                got.cond.wait_for(lambda k=k: len(got.got) >= k, 60)
            p.proxy.cut()

    cuts = threading.Thread(target=cutter)
    cuts.start()

    def server_sends():
        for i in range(n):
            p.s.send_message("t:num", i, p.cid)

    t = threading.Thread(target=server_sends)
    t.start()
    for i in range(n):
        p.c.send_message("t:num", i)
    t.join(120)
    cuts.join(120)
    assert p.s_got.wait_count(n, 120) == list(range(n))
    assert p.c_got.wait_count(n, 120) == list(range(n))
    assert p.proxy.cuts >= 3
    assert len(p.crec.wait_for("peng3dnet:client.resumed", 3)) >= 3
    assert "peng3dnet:client.close" not in p.crec.names()
    assert not p.c.closed
    # (The timed cuts go on: a reconnect's new connection is listed until it
    # takes the session over at settype; between them only the session is.)
    wait_for(lambda: list(p.s.clients) == [p.cid], what="the session the only client")


def test_grace_period_ends_the_session(pairs):
    p = pairs(server_cfg={"net.session.grace": 0.3}, client_cfg={"net.client.reconnect": 0})
    owner = p.s.clients[p.cid]
    p.c._link_obj.chan.sock.shutdown(2)  # the client's socket dies; it does not try again
    (cl,) = p.crec.wait_for("peng3dnet:client.close")
    assert cl["reason"] == "resume:failed" and p.c.close_reason == "resume:failed"
    p.srec.wait_for("peng3dnet:server.connection.suspended")
    (closed,) = p.srec.wait_for("peng3dnet:server.connection.close")
    assert closed["reason"] == "sessionexpired" and closed["client"] is owner
    wait_for(lambda: not p.s.clients, what="the client forgotten")
    with pytest.raises(errors.ConnectionClosedError):
        p.s.send_message("t:num", 1, p.cid)
    assert p.s.stats.connections_open == 0 and not p.s._links and not p.s._sessions
    p.c.join(5)  # the client's loop ended with its session


def test_replay_overflow_ends_a_suspended_session(pairs):
    p = pairs(server_cfg={"net.session.replay_buffer": 4000}, client_cfg={"net.client.reconnect": 0})
    owner = p.s.clients[p.cid]
    p.c._link_obj.chan.sock.shutdown(2)
    p.srec.wait_for("peng3dnet:server.connection.suspended")
    sent = 0
    with pytest.raises(errors.ConnectionClosedError) as exc:
        for _ in range(100):  # ~110 bytes each: over the cap while nobody can ack
            p.s.send_message("t:num", "x" * 100, p.cid)
            sent += 1
    assert exc.value.reason == "replayoverflow" and 4000 // 120 <= sent <= 4000 // 100
    (closed,) = p.srec.wait_for("peng3dnet:server.connection.close")
    assert closed["reason"] == "replayoverflow" and closed["client"] is owner
    with pytest.raises(errors.ConnectionClosedError):
        p.s.send_message("t:num", 1, p.cid)


def test_client_replay_overflow_while_reconnecting(pairs):
    p = pairs(proxy=True, client_cfg={"net.session.replay_buffer": 4000, "net.client.reconnect.delay": 5})
    p.proxy.cut()
    wait_for(lambda: p.c.reconnecting, what="reconnecting")
    with pytest.raises(errors.ConnectionClosedError) as exc:
        for _ in range(100):
            p.c.send_message("t:num", "y" * 100)
    assert exc.value.reason == "replayoverflow"
    (cl,) = p.crec.wait_for("peng3dnet:client.close")
    assert cl["reason"] == "replayoverflow" and p.c.close_reason == "replayoverflow"
    p.c.join(5)  # its loop ended too


def test_a_restarted_server_is_not_mistaken_for_a_resume(pairs, net):
    p = pairs(proxy=True)
    other = Server(cfg={"net.server.addr": ("127.0.0.1", 0), **RESUME})
    other.register_packet("t:num", Sink(other.registry, other))
    net.servers.append(other)
    orec = net.recorder(other, "peng3dnet:server.*")
    other.runAsync()
    p.proxy.target = other.addr  # "the server restarted": the same address, a new process
    p.proxy.cut()
    (cl,) = p.crec.wait_for("peng3dnet:client.close")
    assert cl["reason"] == "resume:unknown" and p.c.close_reason == "resume:unknown"
    (oc,) = orec.wait_for("peng3dnet:server.connection.close")
    assert oc["reason"] == "resume:unknown"
    assert "peng3dnet:server.connection.handshakecomplete" not in orec.names()


def test_client_close_while_reconnecting(pairs):
    p = pairs(proxy=True, client_cfg={"net.client.reconnect.delay": 5})
    p.proxy.cut()
    wait_for(lambda: p.c.reconnecting, what="reconnecting")
    p.c.close("bye")
    (cl,) = p.crec.wait_for("peng3dnet:client.close")
    assert cl["reason"] == "bye"
    p.c.join(5)
    assert not p.c.run


def test_stall_longer_than_the_heartbeat_timeout_is_resumed(pairs):
    hb = {"net.heartbeat.interval": 0.05, "net.heartbeat.timeout": 0.3}
    p = pairs(proxy=True, server_cfg=hb, client_cfg=hb)
    p.c.send_message("t:num", 0)
    p.s_got.wait_count(1)
    p.proxy.stall(1.0)
    p.c.send_message("t:num", 1)
    p.s.send_message("t:num", 1, p.cid)
    p.crec.wait_for("peng3dnet:client.resumed", timeout=20)
    assert p.s_got.wait_count(2) == [0, 1]
    assert p.c_got.wait_count(1) == [1]


@pytest.mark.parametrize(
    ("request_value", "reason"),
    [
        ("junk", "resume:invalid"),
        ({"token": b"short", "received": 0}, "resume:invalid"),
        ({"token": b"\x00" * 16, "received": -1}, "resume:invalid"),
        ({"token": b"\x00" * 16, "received": 0}, "resume:unknown"),
    ],
)
def test_bad_resume_requests_are_refused(net, request_value, reason):
    s, rec = net.server(**RESUME)
    peer = RawPeer(s.addr)
    _, hello = peer.recv_packet()
    assert "resume" in hello[EXTENSIONS_KEY]
    peer.send_packet(2, {"conntype": "classic", EXTENSIONS_KEY: ["resume"], RESUME_KEY: request_value})
    assert peer.recv_until_close() == [(16, {"reason": reason})]
    assert rec.wait_for("peng3dnet:server.connection.close")[0]["reason"] == reason


def test_an_ack_beyond_what_was_sent_closes(net):
    s, rec = net.server(**RESUME)
    peer = RawPeer(s.addr)
    peer.recv_packet()
    peer.send_packet(2, {"conntype": "classic", EXTENSIONS_KEY: ["resume"]})
    _, hs = peer.recv_packet()
    assert len(hs["peng3dnet.session"]["token"]) == 16 and hs["peng3dnet.session"]["received"] == 0
    peer.send_packet(4, {"success": True})
    peer.send_packet(36, 5)  # nothing was sent to it
    assert peer.recv_until_close()[-1] == (16, {"reason": "invalidpacket"})


def test_without_resume_a_drop_closes_as_before(net):
    s, rec = net.server()
    c = net.client(s, **RESUME)  # only one side wants it: not negotiated
    assert "resume" not in c.extensions
    c._link_obj.chan.sock.shutdown(2)
    c.wait_for_close(10)
    assert c.close_reason in ("socketclose", "socketerror")
    assert rec.wait_for("peng3dnet:server.connection.close")[0]["reason"] in ("socketclose", "socketerror")


def test_events_are_in_the_catalog():
    from peng3dnet.events.catalog import CATALOG

    for name in ("peng3dnet:client.reconnecting", "peng3dnet:client.resumed",
                 "peng3dnet:server.connection.suspended", "peng3dnet:server.connection.resumed"):
        assert name in CATALOG



def test_an_application_close_is_never_taken_for_a_drop(pairs):
    """The reason strings of drops, used by a program, close for good."""
    p = pairs()
    p.s.close_connection(p.cid, "timeout")  # e.g. an AFK kick
    (cl,) = p.crec.wait_for("peng3dnet:client.close")
    assert cl["reason"] == "timeout" and "peng3dnet:client.reconnecting" not in p.crec.names()
    p.c.join(5)
    wait_for(lambda: not p.s.clients and not p.s._sessions, what="the session gone")


def test_closing_a_suspended_session_ends_it(pairs):
    p = pairs(proxy=True, client_cfg={"net.client.reconnect.delay": 0.5})
    owner = p.s.clients[p.cid]
    p.proxy.cut()
    p.srec.wait_for("peng3dnet:server.connection.suspended")
    owner.close("kicked")  # while it has no socket
    (closed,) = p.srec.wait_for("peng3dnet:server.connection.close")
    assert closed["reason"] == "kicked" and closed["client"] is owner
    (cl,) = p.crec.wait_for("peng3dnet:client.close")  # it comes back to a session that is gone
    assert cl["reason"] == "resume:unknown"
    wait_for(lambda: not p.s._links and not p.s._sessions, what="nothing left")


def test_shutdown_ends_a_suspended_session_with_its_reason(pairs):
    """shutdown(reason=...) closes every client with its reason, a session
    waiting for its client's next socket too (it was ended at the loop's
    end with a fixed 'servershutdown')."""
    p = pairs(client_cfg={"net.client.reconnect": 0})
    owner = p.s.clients[p.cid]
    p.c._link_obj.chan.sock.shutdown(2)  # the client's socket dies; it does not come back
    p.srec.wait_for("peng3dnet:server.connection.suspended")
    p.s.shutdown(join=True, timeout=5, reason="maintenance")
    (closed,) = p.srec.wait_for("peng3dnet:server.connection.close")
    assert closed["reason"] == "maintenance" and closed["client"] is owner
    assert not p.s._sessions


def test_a_drop_before_the_handshake_completed_is_not_suspended(net):
    s, rec = net.server(**RESUME)
    peer = RawPeer(s.addr)
    peer.recv_packet()
    peer.send_packet(2, {"conntype": "classic", EXTENSIONS_KEY: ["resume"]})
    peer.recv_packet()  # the handshake, with a session; never accepted
    peer.close()
    (closed,) = rec.wait_for("peng3dnet:server.connection.close")
    assert closed["reason"] == "socketclose"
    assert "peng3dnet:server.connection.suspended" not in rec.names()
    wait_for(lambda: not s.clients and not s._links and not s._sessions, what="nothing kept")


def test_server_forgets_everything_after_a_resume(pairs):
    p = pairs(proxy=True)
    p.proxy.cut()
    p.crec.wait_for("peng3dnet:client.resumed")
    p.c.close("bye")
    p.srec.wait_for("peng3dnet:server.connection.close", 2)  # the short-lived one, then the session's
    wait_for(lambda: not p.s._links and not p.s._sessions and not p.s.clients, what="nothing left")
    assert p.s.stats.connections_open == 0


def test_login_is_checked_again_on_resume(pairs):
    calls = []
    allow = {"ok": True}

    def hook(client, credentials):
        calls.append((client, credentials))
        if not allow["ok"]:
            raise errors.AuthenticationError("banned")
        return {"user": credentials}

    p = pairs(proxy=True, authenticate=hook, credentials="ann")
    owner = p.s.clients[p.cid]
    p.proxy.cut()
    p.crec.wait_for("peng3dnet:client.resumed")
    assert [(cl, cr) for cl, cr in calls] == [(owner, "ann"), (owner, "ann")]  # the same client object
    allow["ok"] = False
    p.proxy.cut()
    (cl,) = p.crec.wait_for("peng3dnet:client.close")
    assert cl["reason"] == "auth:banned"
    closed = [d for d in p.srec.wait_for("peng3dnet:server.connection.close", 3) if d["client"] is owner]
    assert [d["reason"] for d in closed] == ["auth:banned"]
    wait_for(lambda: not p.s.clients and not p.s._sessions, what="the session gone")


def test_a_peer_that_never_acknowledges_is_closed_when_the_replay_buffer_fills(net):
    s, rec = net.server(**RESUME, **{"net.session.replay_buffer": 4000})
    peer = RawPeer(s.addr)
    peer.recv_packet()
    peer.send_packet(2, {"conntype": "classic", EXTENSIONS_KEY: ["resume"]})
    peer.recv_packet()
    peer.send_packet(4, {"success": True})  # then reads, but never sends an ack
    (cid,) = active_cids(s)
    sent = 0
    while sent < 100 and cid in s.clients:
        try:
            s.send_message("test:echo", "x" * 100, cid)
        except errors.ConnectionClosedError:
            break
        sent += 1
    (closed,) = rec.wait_for("peng3dnet:server.connection.close")
    assert closed["reason"] == "replayoverflow" and 4000 // 120 <= sent <= 4000 // 100 + 1
    assert peer.recv_until_close()[-1] == (16, {"reason": "replayoverflow"})


def _hold_network_thread(peer):
    """Block ``peer``'s network thread in a queued call; returns the event
    that releases it.  Waits until the thread is inside the call."""
    inside, release = threading.Event(), threading.Event()

    def hold():
        inside.set()
        release.wait(10)

    peer._reactor.call_soon(hold)
    assert inside.wait(5), "the network thread never ran the queued call"
    return release


def test_a_client_close_answered_before_its_own_loop_saw_it_still_ends_the_loop(pairs):
    """Race (the arena demo's 5 s stops): the application's close queues its
    close output for the network thread; the server answers the closeconn
    with EOF; the network thread reads that EOF before it handles the close
    output.  The session then ended only after the socket was closed, and
    the client's loop never stopped (join timed out)."""
    p = pairs()
    release = _hold_network_thread(p.c)
    p.c.close("bye")  # the closeconn is written from this thread; the close output waits behind hold()
    p.srec.wait_for("peng3dnet:server.connection.close")
    wait_for(lambda: not p.s._links, what="the server closed its socket")
    release.set()  # next round: the EOF is read first, then the queued close output
    p.c.join(5)
    assert p.c.close_reason == "bye" and "peng3dnet:client.reconnecting" not in p.crec.names()


def test_a_server_close_answered_before_its_own_loop_saw_it_forgets_the_link(pairs):
    """The same race on the server: the connection must leave the server's
    tables (it stayed in them, kept as if suspended)."""
    p = pairs()
    release = _hold_network_thread(p.s)
    p.s.close_connection(p.cid, "kicked")
    (cl,) = p.crec.wait_for("peng3dnet:client.close")
    assert cl["reason"] == "kicked"
    p.c.join(5)  # the client closed its socket
    release.set()
    wait_for(lambda: not p.s._links and not p.s._sessions and not p.s.clients, what="nothing left")
    assert p.s.stats.connections_open == 0 and "peng3dnet:server.connection.suspended" not in p.srec.names()


def test_a_client_close_racing_a_drop_is_not_lost(pairs):
    """The socket drops between close()'s check and the close itself: the
    close used to be skipped (already closed), the session resumed, and the
    program's close was forgotten."""
    p = pairs(proxy=True, client_cfg={"net.client.reconnect.delay": 0.3})
    real = p.c._close_link

    def racing(link, reason, polite=False):
        p.c._close_link = real  # once
        p.proxy.cut()
        wait_for(lambda: p.c.reconnecting, what="the drop seen by the client")
        return real(link, reason, polite)

    p.c._close_link = racing
    p.c.close("bye")
    p.c.join(5)
    assert p.c.close_reason == "bye" and "peng3dnet:client.resumed" not in p.crec.names()


def test_a_server_close_racing_a_drop_is_not_lost(pairs):
    """The same on the server: a kicked client must not resume its session."""
    p = pairs(proxy=True, client_cfg={"net.client.reconnect.delay": 0.3})
    real = p.s._close_link

    def racing(link, reason, polite=False):
        p.s._close_link = real  # once: the server's later closes (the refused resume) go through as they are
        p.proxy.cut()
        p.srec.wait_for("peng3dnet:server.connection.suspended")
        return real(link, reason, polite)

    p.s._close_link = racing
    p.s.close_connection(p.cid, "kicked")
    (closed,) = p.srec.wait_for("peng3dnet:server.connection.close")
    assert closed["reason"] == "kicked"
    (cl,) = p.crec.wait_for("peng3dnet:client.close")
    assert cl["reason"] == "resume:unknown" and "peng3dnet:client.resumed" not in p.crec.names()
    wait_for(lambda: not p.s._links and not p.s._sessions and not p.s.clients, what="nothing left")


def test_session_tokens_never_reach_events(pairs, net):
    """The session token (handshake) and the resume request (settype on
    the next socket) are bearer secrets: redacted in every send/recv event,
    on both sides (only credentials were checked)."""
    p = pairs(proxy=True)
    token = p.c._link_obj.session.token
    crec_all = net.recorder(p.c, "peng3dnet:client.*")
    srec_all = net.recorder(p.s, "peng3dnet:server.*")
    p.proxy.cut()
    p.crec.wait_for("peng3dnet:client.resumed")
    p.srec.wait_for("peng3dnet:server.connection.resumed")
    seen = {RESUME_KEY: 0}
    for rec in (p.crec, p.srec, crec_all, srec_all):
        for _, d in rec.items:
            msg = d.get("msg", d.get("data"))
            assert repr(token) not in repr(msg) and str(token) not in repr(msg)
            if isinstance(msg, dict):
                for key in (RESUME_KEY, "peng3dnet.session"):
                    if key in msg:
                        assert msg[key] == "<redacted>", (key, msg)
                        seen[RESUME_KEY] += key == RESUME_KEY
    assert seen[RESUME_KEY] >= 2  # the resume request, sent by the client and received by the server


# --- a reconnect attempt's socket and the loop's end (no network: the attempt's connect is faked) ----


@pytest.fixture
def attempt(monkeypatch):
    """A client whose reconnect attempt connects at once to one end of a
    socketpair: (client, session, that end, the other end); both ends are
    closed after the test."""
    import socket as _socket

    import peng3dnet.client as client_mod
    from peng3dnet.session import Session

    a, b = _socket.socketpair()
    monkeypatch.setattr(client_mod, "transport_connect", lambda *args, **kw: a)
    c = Client(addr=("127.0.0.1", 1))
    session = Session(b"t" * 16, 1 << 20)
    try:
        yield c, session, a, b
    finally:
        a.close()
        b.close()


def test_a_reconnected_socket_queued_to_a_loop_that_then_ends_is_closed(attempt, monkeypatch):
    c, session, a, b = attempt
    c._loop_started = True  # a loop runs (on another thread: the call is queued, not run)
    c._reconnect_connect(session)
    assert len(c._reactor._calls) == 1 and a.fileno() != -1  # handed over, not yet taken
    c._end_loop()  # the loop ends without running its queued calls
    assert a.fileno() == -1 and c._reconnect_sock is None
    fn, args = c._reactor._calls.popleft()
    fn(*args)  # had it run after all: the socket is not taken again (nor closed twice)
    assert c._link_obj is None


def test_a_reconnected_socket_whose_loop_ended_before_the_hand_over_is_closed_by_its_thread(attempt, monkeypatch):
    c, session, a, b = attempt
    c._loop_started = True
    real = c._on_network_thread

    def queue_then_the_loop_ends(fn, *args):  # the loop ends between the queueing and the thread's look
        real(fn, *args)
        c._end_loop()

    monkeypatch.setattr(c, "_on_network_thread", queue_then_the_loop_ends)
    c._reconnect_connect(session)
    assert a.fileno() == -1 and c._reconnect_sock is None


def test_a_reconnected_socket_taken_by_the_network_thread_is_not_closed_at_the_loops_end(attempt, monkeypatch):
    c, session, a, b = attempt
    session.link = type("Old", (), {"sslsec": 0, "chan": type("Chan", (), {"lock": threading.Lock()})(),
                                    "earlier": (), "queued": 0, "strict_keys": False,
                                    "proto": type("Proto", (), {"negotiated": frozenset()})()})()
    c._loop_started = True
    c._reactor.thread_id = threading.get_ident()  # the attempt's call runs at once, as on the network thread
    c._reactor.running = True
    monkeypatch.setattr(c._reactor, "selector", None)  # (no selector: the channel registers when the loop starts)
    c._reconnect_connect(session)
    assert c._reconnect_sock is None and c._link_obj is not None and c._link_obj.chan.sock is a
    c._loop_ended()
    assert a.fileno() != -1  # the new connection's socket: not the loop end's to close


def test_a_resume_while_the_old_socket_is_still_open_closes_the_old_one(net, caplog):
    """The server learns of the drop only from the new socket: the old one
    (open, silent) is closed with "resumed", and the log says why."""
    s, rec = net.server(**RESUME)
    old = RawPeer(s.addr)
    old.recv_packet()
    old.send_packet(2, {"conntype": "classic", EXTENSIONS_KEY: ["resume"]})
    _, hs = old.recv_packet()
    token = hs["peng3dnet.session"]["token"]
    old.send_packet(4, {"success": True})
    (cid,) = active_cids(s)
    new = RawPeer(s.addr)
    new.recv_packet()
    with caplog.at_level("INFO", logger="peng3dnet.server"):
        new.send_packet(2, {"conntype": "classic", EXTENSIONS_KEY: ["resume"],
                            RESUME_KEY: {"token": token, "received": 0}})
        assert old.recv_until_close() == [(16, {"reason": "resumed"})]
        assert new.recv_packet()[1]["peng3dnet.session"]["token"] == token
    assert (f"= server cid={cid}: the client resumed on a new socket; closing the old one"
            in [r.getMessage() for r in caplog.records])
    assert list(s.clients) == [cid]


@pytest.mark.timeout(60)
def test_a_send_blocked_on_a_full_buffer_across_a_drop_is_delivered_after_the_resume(net):
    """A program thread blocked in send_message() over
    ``net.limits.write_buffer_block`` when the socket drops wakes with the
    old connection closed and keeps its frame for "the next socket"
    (``Peer._send_frame``: ``_session_keep(link, ...)`` on the old link).
    If the session has already resumed by then (the thread was slow to
    get the lock back: here held in that window until the ``resumed`` event), the
    resume's replay went out without that frame: it is appended to the
    replay buffer behind what was already replayed and never written.
    The message was lost (and the two sides' packet counts no longer
    described the same packets).  Now the frame follows the session to its
    new socket (or its replay buffer, if not replayed yet)."""
    s = Server(cfg={"net.server.addr": ("127.0.0.1", 0), **RESUME, "net.limits.recv_queue": 8,
                    "net.limits.rate.packets": 0.0})
    s.register_packet("t:num", Sink(s.registry, s))
    net.servers.append(s)
    s.runAsync()  # no handlers yet: reading pauses at 8 queued packets
    c = Client(addr=s.addr, cfg={**RESUME, "net.client.reconnect.delay": 0.02,
                                 "net.limits.write_buffer_block": 64 * 1024, "net.timeout.send": 30.0})
    c.register_packet("t:num", Sink(c.registry, c))
    net.clients.append(c)
    resumed = threading.Event()
    rec = net.recorder(c, "peng3dnet:client.resumed")
    c.runAsync()
    c.process_async()
    c.wait_for_connection(10)
    (cid,) = active_cids(s)

    chan = c._link_obj.chan

    class SlowToWake:
        """``chan.drained`` of the client's socket: a waiter woken by the
        drop gets the channel's lock back only after the session resumed
        (the thread was not scheduled in between: a few ms of load)."""

        def __init__(self, cond):
            self.cond = cond

        def wait(self, timeout=None):
            woke = self.cond.wait(timeout)  # (returns with chan.lock held again)
            if chan.closed:
                chan.lock.release()
                resumed.wait(10)
                chan.lock.acquire()
            return woke

        def notify_all(self):
            self.cond.notify_all()

    chan.drained = SlowToWake(chan.drained)
    blob = os.urandom(16384)  # (incompressible)
    count = 2000
    errs: list = []

    def sender():
        try:
            for i in range(count):
                c.send_message("t:num", [i, blob])
        except Exception as exc:  # noqa: BLE001
            errs.append(exc)

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    wait_for(lambda: chan.drain_waiters > 0, what="the sender blocked on the full buffer")
    import socket as _socket

    s._links[cid].chan.sock.shutdown(_socket.SHUT_RDWR)  # the socket drops (no closeconn)
    rec.wait_for("peng3dnet:client.resumed")
    resumed.set()
    s.process_async()
    t.join(30)
    assert not t.is_alive() and errs == []
    got = s.registry.get_obj("t:num")
    with got.cond:
        got.cond.wait_for(lambda: len(got.got) >= count, 10)
        nums = [m[0] for m in got.got]
    assert sorted(set(range(count)) - set(nums)) == []  # fails: [the one blocked at the drop]
    assert nums == list(range(count))


def test_the_replay_buffers_together_are_capped_the_largest_session_closed(net):
    """net.session.replay_total: a client that reads and never acknowledges
    makes the server keep all it sends for a resume (48 MiB a session, no
    cap on the sum: 6 such clients took a server from 26 to 391 MiB in the
    fault hunt); over the total the session keeping the most is closed."""
    s, rec = net.server(**{"net.session.resume": True, "net.session.replay_total": 4 << 20,
                          "net.compress.enabled": False})
    peers = []
    for _ in range(2):
        p = RawPeer(s.addr)
        p.handshake(["resume"])  # and never acknowledges anything
        peers.append(p)
    a, b = sorted(active_cids(s, 2))
    blob = os.urandom(1 << 20)
    for _ in range(3):
        s.send_message("test:echo", blob, a)
    assert s._replay_total.bytes > 3 << 20 and not s._replay_total.over
    s.send_message("test:echo", blob, b)
    s.send_message("test:echo", blob, b)  # 5 MiB kept in all
    (d,) = rec.wait_for("peng3dnet:server.connection.close")
    assert d["reason"] == "replayoverflow" and d["client"].cid == a  # the largest, not the one written to
    assert b in active_cids(s)
    wait_for(lambda: s._replay_total.bytes == s._links[b].session.replay_bytes, what="a's bytes out of the total")
    assert (2 << 20) < s._replay_total.bytes < (3 << 20)



def test_a_suspended_sessions_replay_counts_toward_the_total_and_is_shed_first_if_largest(net):
    """net.session.replay_total with a suspended session: what is sent to
    it while it waits for a resume is kept (nobody can acknowledge it) and
    counted; over the total it is the largest and ends with
    replayoverflow, its bytes leave the total, the live session stays."""
    s, rec = net.server(**{"net.session.resume": True, "net.session.replay_total": 4 << 20,
                          "net.compress.enabled": False})
    a_peer = RawPeer(s.addr)
    a_peer.handshake(["resume"])
    (a,) = active_cids(s, 1)
    b_peer = RawPeer(s.addr)
    b_peer.handshake(["resume"])
    (b,) = set(active_cids(s, 2)) - {a}
    a_peer.close()  # the socket drops, no closeconn: a waits for a resume
    (sus,) = rec.wait_for("peng3dnet:server.connection.suspended")
    assert sus["client"].cid == a
    blob = os.urandom(1 << 20)
    for _ in range(3):
        s.send_message("test:echo", blob, a)  # kept for the resume
    assert s._replay_total.bytes > 3 << 20 and not s._replay_total.over
    s.send_message("test:echo", blob, b)
    s.send_message("test:echo", blob, b)  # 5 MiB kept in all
    (d,) = rec.wait_for("peng3dnet:server.connection.close")
    assert d["reason"] == "replayoverflow" and d["client"].cid == a
    wait_for(lambda: s._replay_total.bytes == s._links[b].session.replay_bytes, what="a's bytes out of the total")
    assert (2 << 20) < s._replay_total.bytes < (3 << 20)
    assert [x.cid for x in s._sessions.values()] == [b] and list(s.clients) == [b]
    with pytest.raises(errors.ConnectionClosedError):
        s.send_message("test:echo", 1, a)
    b_peer.close()


def test_a_heartbeat_time_out_is_a_drop_on_both_sides_the_session_resumes(pairs):
    """The client's loop stalls (a long GC pause, a debugger) longer than
    the server's heartbeat time-out while TCP stays up: the server drops
    the socket and keeps the session.  It used to send a closeconn
    "timeout", which the client, awake again, read as a close: it ended
    its session and never came back (the server held it until
    sessionexpired)."""
    import time

    p = pairs(server_cfg={"net.heartbeat.interval": 0.05, "net.heartbeat.timeout": 0.3},
              client_cfg={"net.heartbeat.timeout": 30.0})
    owner = p.s.clients[p.cid]
    p.c._reactor.call_soon(time.sleep, 1.0)  # the client's network thread stalls
    (sus,) = p.srec.wait_for("peng3dnet:server.connection.suspended")
    assert sus["reason"] == "timeout" and sus["client"] is owner
    p.crec.wait_for("peng3dnet:client.resumed")
    p.srec.wait_for("peng3dnet:server.connection.resumed")
    assert "peng3dnet:client.close" not in p.crec.names()
    assert p.s.clients[p.cid] is owner
    p.c.send_message("t:num", 1)
    p.s.send_message("t:num", 2, p.cid)
    assert p.s_got.wait_count(1) == [1] and p.c_got.wait_count(1) == [2]


def test_a_kick_between_sockets_refuses_a_resume_that_comes_before_the_kick_is_carried_out(pairs):
    """close_connection() of a suspended session queues its end for the
    network thread; a resume handled before that end (the client's settype
    was read first) took the session back and the end did nothing: the
    kicked client stayed.  The session is marked at once: the resume is
    refused, and the end then runs with the kick's reason."""
    p = pairs(proxy=True)
    owner = p.s.clients[p.cid]
    go = threading.Event()
    real_connect = p.c._reconnect_connect

    def held_connect(session):  # the attempt's thread: it connects once the kick is made
        assert go.wait(10)
        real_connect(session)

    p.c._reconnect_connect = held_connect
    p.proxy.cut()
    p.srec.wait_for("peng3dnet:server.connection.suspended")
    held: list = []
    p.s._on_network_thread = lambda fn, *args: held.append((fn, args))  # the end waits behind the resume
    p.s.close_connection(p.cid, "kick")
    go.set()
    with pytest.raises(errors.ConnectionClosedError) as closed:  # not kept for a resume that will not come
        p.s.send_message("t:num", 1, p.cid)
    assert closed.value.reason == "kick"
    (cl,) = p.crec.wait_for("peng3dnet:client.close")
    assert cl["reason"] == "resume:unknown"
    assert "peng3dnet:client.resumed" not in p.crec.names()
    ((fn, args),) = held
    del p.s._on_network_thread
    p.s._reactor.call_soon(fn, *args)
    closes = p.srec.wait_for("peng3dnet:server.connection.close", count=2)  # the refused socket's, then the kick's
    assert [(d["client"] is owner, d["reason"]) for d in closes][-1] == (True, "kick")
    wait_for(lambda: p.cid not in p.s.clients, what="the kicked client forgotten")


def test_a_kick_carried_out_after_a_resume_closes_the_resumed_socket(pairs):
    """The other order: the resume took the session before the kick's
    close_connection() looked (its socket was gone), and the kick's end
    comes after it: the resumed socket is closed with the kick's reason."""
    p = pairs(proxy=True)
    owner = p.s.clients[p.cid]
    session = p.s._links[p.cid].session
    p.proxy.cut()
    p.crec.wait_for("peng3dnet:client.resumed")
    p.srec.wait_for("peng3dnet:server.connection.resumed")
    p.s._reactor.call_soon(p.s._end_suspended, session, "kick")  # what close_connection() had queued
    (cl,) = p.crec.wait_for("peng3dnet:client.close")
    assert cl["reason"] == "kick"
    closes = p.srec.wait_for("peng3dnet:server.connection.close", count=2)  # the resume's temporary client's, the kick's
    assert [(d["client"] is owner, d["reason"]) for d in closes] == [(False, "resumed"), (True, "kick")]


def test_a_replay_over_the_write_cap_is_not_the_peers_slowness(pairs):
    """What a resume sends again may be larger than net.limits.write_buffer
    (replay_buffer 48 MiB, write_buffer 32 MiB by default): the first send
    after it, while the peer reads the replay, found the buffer over the cap
    and closed the resumed session as slowconsumer.  The unsent replay is
    not held against the cap now."""
    from peng3dnet import events

    p = pairs(server_cfg={"net.limits.write_buffer": 1 << 20, "net.compress.enabled": False},
              client_cfg={"net.client.shared_loop": False})
    gate = threading.Event()
    sent_after: list = []
    done = threading.Event()

    def on_server(event, data):  # network thread, right after the replay was written
        try:
            sent_after.append((len(data["client"]._link.chan.out), p.s.send_message("t:num", "after", p.cid)))
        except Exception as exc:  # noqa: BLE001 - checked below
            sent_after.append(exc)
        done.set()

    def on_client(event, data):  # the client reads nothing until the test has looked
        assert gate.wait(10)

    events.subscribe("peng3dnet:server.connection.resumed", on_server, sender=p.s)
    events.subscribe("peng3dnet:client.resumed", on_client, sender=p.c)
    import socket as _socket

    # (the resume's socket is accepted with the listener's small send buffer: the kernels take little)
    p.s.sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDBUF, 4096)
    try:
        p.c._link_obj.chan.sock.shutdown(2)  # the socket drops
        p.srec.wait_for("peng3dnet:server.connection.suspended")
        blob = os.urandom(65536)
        for i in range(48):  # 3 MiB kept while suspended, three times the write cap
            p.s.send_message("t:num", [i, blob], p.cid)
        assert done.wait(10)
        ((queued, none),) = sent_after
        assert queued > 1 << 20 and none is None  # over the cap, and sent all the same
        assert p.s._links[p.cid].proto.is_open
    finally:
        gate.set()
        events.unsubscribe("peng3dnet:server.connection.resumed", on_server, sender=p.s)
        events.unsubscribe("peng3dnet:client.resumed", on_client, sender=p.c)
    got = p.c_got.wait_count(49)
    assert [m[0] for m in got[:48]] == list(range(48)) and got[48] == "after"
    assert "peng3dnet:client.close" not in p.crec.names()


def test_the_servers_totals_keep_the_counts_of_a_resumed_sessions_old_socket(pairs):
    p = pairs(proxy=True)
    for i in range(20):
        p.c.send_message("t:num", i)
    p.s_got.wait_count(20)
    old = p.s._links[p.cid].stats
    before = (old.bytes_in, old.packets_in, old.bytes_out, old.packets_out)
    assert before[1] >= 20
    p.proxy.cut()
    p.crec.wait_for("peng3dnet:client.resumed")
    p.srec.wait_for("peng3dnet:server.connection.resumed")
    new = p.s._links[p.cid].stats
    assert new is not old
    st = p.s.stats
    assert st.bytes_in >= before[0] + new.bytes_in and st.packets_in >= before[1] + new.packets_in
    assert st.bytes_out >= before[2] + new.bytes_out and st.packets_out >= before[3] + new.packets_out


class _Logged(Packet):
    """Records (msg, whether its cid is still a client of the server)."""

    def __init__(self, reg, peer, log):
        super().__init__(reg, peer)
        self.log = log

    def receive(self, msg, cid=None):
        self.log.append(("msg", msg, cid in self.peer.clients))


def _resume_with_packets_waiting(net, log):
    """A server whose program calls process() itself, a client of it that
    sent 0, 1, 2 (they wait in the server's queue), then lost its socket and
    resumed on a new one."""
    class Closing(ClientOnServer):
        def on_close(self, reason=None):
            if reason != "resumed":  # (the resume's temporary client gives way to the session's)
                log.append(("on_close", reason))

    s = Server(cfg={"net.server.addr": ("127.0.0.1", 0), **RESUME}, clientcls=Closing)
    s.register_packet("t:num", _Logged(s.registry, s, log))
    net.servers.append(s)
    srec = net.recorder(s, "peng3dnet:server.connection.*")
    s.runAsync()  # no process thread: the test's process() calls are the game loop's
    proxy = LagProxy(("127.0.0.1", 0), s.addr).start()
    c = Client(addr=proxy.addr, cfg={**RESUME, "net.client.reconnect.delay": 0.02})
    c.register_packet("t:num", Sink(c.registry, c))
    net.clients.append(c)
    c.runAsync()
    c.process_async()
    c.wait_for_connection(10)
    (cid,) = active_cids(s)
    for i in range(3):
        c.send_message("t:num", i)
    wait_for(lambda: len(s._inbox.items) == 3, what="3 waiting for process()")
    proxy.cut()
    srec.wait_for("peng3dnet:server.connection.resumed")
    return s, srec, c, cid, proxy


def test_a_close_after_a_resume_comes_after_the_packets_of_the_earlier_socket(net):
    """Packets of a resumed session's earlier socket still waiting for
    process() were not counted as the new socket's: its close ran at once,
    before them (on_close first, then handlers whose cid was gone)."""
    log: list = []
    s, srec, c, cid, proxy = _resume_with_packets_waiting(net, log)
    try:
        c.close("bye")
        srec.wait_for("peng3dnet:server.connection.close", count=2)  # the resume's temporary client's, ours
        assert log == []  # on_close waits behind the packets
        s.process()
        assert log == [("msg", 0, True), ("msg", 1, True), ("msg", 2, True), ("on_close", "bye")]
    finally:
        proxy.stop()


def test_process_single_packet_takes_the_earlier_sockets_packets_first(net):
    log: list = []
    s, srec, c, cid, proxy = _resume_with_packets_waiting(net, log)
    try:
        c.send_message("t:num", 3)  # on the new socket
        wait_for(lambda: len(s._inbox.items) == 4, what="4 waiting")
        client = s.clients[cid]
        n = 0
        while s.process_single_packet(client):
            n += 1
        assert n == 4 and [m for _, m, _ in log] == [0, 1, 2, 3]
        assert not s._inbox.items
    finally:
        proxy.stop()


def _server_events(rec) -> list:
    return [(e.rsplit(".", 1)[1], d.get("reason")) for e, d in rec.items
            if e in ("peng3dnet:server.connection.suspended", "peng3dnet:server.connection.resumed")]


def test_suspended_and_resumed_come_in_pairs_when_the_old_socket_is_still_open(net):
    """The client resumes before the server saw its old socket drop: the
    old one is closed ("resumed") and the pair of events goes out (there
    was a resumed with no suspended before it)."""
    s, rec = net.server(**RESUME)
    old = RawPeer(s.addr)
    old.handshake(["resume"])
    (cid,) = active_cids(s)
    token = s._links[cid].session.token
    new = RawPeer(s.addr)
    new.recv_packet()
    new.send_packet(2, {"conntype": "classic", EXTENSIONS_KEY: ["resume"], RESUME_KEY: {"token": token, "received": 0}})
    assert old.recv_until_close() == [(16, {"reason": "resumed"})]
    assert new.recv_packet()[0] == 3
    new.send_packet(4, {"success": True})
    rec.wait_for("peng3dnet:server.connection.resumed")
    assert _server_events(rec) == [("suspended", "resumed"), ("resumed", None)]


def test_a_new_socket_dropping_during_its_resume_does_not_announce_the_suspension_twice(net):
    s, rec = net.server(**RESUME)
    first = RawPeer(s.addr)
    first.handshake(["resume"])
    (cid,) = active_cids(s)
    token = s._links[cid].session.token
    first.close()
    rec.wait_for("peng3dnet:server.connection.suspended")
    hello = {"conntype": "classic", EXTENSIONS_KEY: ["resume"], RESUME_KEY: {"token": token, "received": 0}}
    second = RawPeer(s.addr)
    second.recv_packet()
    second.send_packet(2, hello)
    assert second.recv_packet()[0] == 3  # the server's handshake: the session is this socket's now
    second.close()  # and it drops before its accept
    wait_for(lambda: s._links[cid].session.suspended, what="suspended again")
    third = RawPeer(s.addr)
    third.recv_packet()
    third.send_packet(2, hello)
    assert third.recv_packet()[0] == 3
    third.send_packet(4, {"success": True})
    rec.wait_for("peng3dnet:server.connection.resumed")
    assert _server_events(rec) == [("suspended", "socketclose"), ("resumed", None)]


def test_calls_and_int_keyed_maps_sent_while_reconnecting_wait_for_the_resume(pairs):
    """From the new socket's connect until the server's hello, the client's
    new connection knew no extensions: call() raised "the peer does not
    support calls" and a map with int keys the 0.1.x peer's refusal, where
    the README says sends wait in the replay buffer."""
    from peng3dnet.packet import Packet

    def setup(s):
        s.handler("t:double")(lambda msg, cid: 2 * msg)

    p = pairs(proxy=True, server_setup=setup, client_packets={"t:double": Packet})
    old = p.c._link_obj
    p.proxy.delay = 0.5  # (the new socket's hello comes half a second after its connect)
    p.proxy.cut()
    wait_for(lambda: p.c._link_obj is not old, what="the new socket connected")
    assert p.c._link_obj.proto.peer_hello == {}  # before its hello
    fut = p.c.call_async("t:double", 21, timeout=10)
    p.c.send_message("t:num", {1: "one"})
    assert fut.result(10) == 42
    assert p.s_got.wait_count(1) == [{1: "one"}]
    assert "peng3dnet:client.close" not in p.crec.names()


def test_a_reconnect_attempt_failing_for_a_tls_configuration_schedules_the_next_one(tmp_path):
    """A CA file missing for a moment (rotated) when an attempt runs raised
    TLSConfigError, which the attempt's thread did not catch: it died,
    nothing was scheduled, and the client stayed reconnecting for ever."""
    import types

    c = Client(addr=("127.0.0.1", 1), cfg={"net.ssl.enabled": True, "net.ssl.cafile": str(tmp_path / "gone.pem")})
    called: list = []
    c._on_network_thread = lambda fn, *args: called.append(fn.__name__)
    c._reconnect_connect(types.SimpleNamespace(attempt=1, ended=False))
    assert called == ["_reconnect_failed"]
