"""Login (issue "Sessions", part 1): credentials carried by the ``auth``
extension, the server's ``authenticate`` hook, its decision, time-out and
refusals, on real sockets; then :class:`~peng3dnet.login.Login` unit by
unit, without sockets."""

from __future__ import annotations

import logging
import threading

import pytest

from peng3dnet import errors
from peng3dnet.constants import CREDENTIALS_KEY, EXTENSIONS_KEY, SIDE_SERVER, STATE_ACTIVE, STATE_LOGGEDIN
from peng3dnet.errors import AuthenticationError
from peng3dnet.login import AUTH_PENDING, MAX_CREDENTIALS, Login, auth_reason
from peng3dnet.net import Client, Server
from peng3dnet.packet import Packet
from peng3dnet.protocol.codec import pack
from peng3dnet.protocol.connection import ProtocolConnection
from tests.conftest import EchoPacket, RawPeer
from tests.helpers import FakeTimer, active_cids, wait_for


class Hook:
    """An authenticate hook that records its calls and answers by user name."""

    def __init__(self, answers=None, gate: threading.Event | None = None) -> None:
        self.calls: list[tuple[int, object, str]] = []
        self.answers = answers or {}
        self.gate = gate
        self.lock = threading.Lock()

    def __call__(self, client, credentials):
        with self.lock:
            self.calls.append((client.cid, credentials, threading.current_thread().name))
        user = credentials.get("user") if isinstance(credentials, dict) else credentials
        if self.gate is not None and user == "slow":
            self.gate.wait(10)
        answer = self.answers.get(user, True)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def test_accepted_with_data_lands_on_the_client_object(net):
    hook = Hook({"alice": {"account": "alice", "level": 3}})
    s, rec = net.server(authenticate=hook)
    creds = {"user": "alice", "password": "hunter2", 1: b"\x00"}
    c = net.client(s, credentials=creds)
    (cid,) = active_cids(s)
    cos = s.clients[cid]
    assert hook.calls == [(cid, creds, hook.calls[0][2])]
    assert hook.calls[0][2].startswith("peng3dnet auth")  # a login worker, not the network thread
    assert cos.auth_data == {"account": "alice", "level": 3}
    assert cos.authenticated and c.authenticated
    wait_for(lambda: cos.state == STATE_LOGGEDIN, what="state LOGGEDIN")
    names = rec.names()
    assert names.index("peng3dnet:server.connection.auth") < names.index("peng3dnet:server.connection.handshakecomplete")
    (d,) = rec.wait_for("peng3dnet:server.connection.auth")
    assert d["client"] is cos and d["ok"] is True and d["reason"] is None
    c.send_message("test:echo", "after login")
    assert c.registry.get_obj("test:echo").wait_count(1) == ["after login"]


def test_accept_with_true_keeps_no_data(net):
    s, _ = net.server(authenticate=lambda client, creds: True)
    net.client(s, credentials="token")
    (cid,) = active_cids(s)
    assert s.clients[cid].auth_data is None and s.clients[cid].authenticated


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (errors.AuthenticationError("banned until Friday"), "auth:banned until Friday"),
        (errors.AuthenticationError("ignored message", "wrongpassword"), "auth:wrongpassword"),
        (False, "auth:refused"),
        (None, "auth:refused"),
        (errors.AuthenticationError(""), "auth:refused"),
        (errors.AuthenticationError("x" * 500), "auth:" + "x" * 100),
    ],
)
def test_refused_client_sees_the_reason(net, answer, reason):
    s, rec = net.server(authenticate=Hook({"bob": answer}))
    c = net.client(s, credentials={"user": "bob"}, wait=False)
    with pytest.raises(errors.AuthenticationError) as exc:
        c.wait_for_connection(10)
    assert exc.value.reason == reason and isinstance(exc.value, errors.ConnectionClosedError)
    assert c.close_reason == reason and not c.authenticated
    (d,) = rec.wait_for("peng3dnet:server.connection.auth")
    assert d["ok"] is False and d["reason"] == reason
    (closed,) = rec.wait_for("peng3dnet:server.connection.close")
    assert closed["reason"] == reason
    assert "peng3dnet:server.connection.handshakecomplete" not in rec.names()


def test_refused_client_never_gets_the_registry():
    """On the wire: after settype the next packet is the closeconn."""
    s = Server(cfg={"net.server.addr": ("127.0.0.1", 0)}, authenticate=lambda c, creds: creds == "right")
    s.register_packet("test:secret", EchoPacket(s.registry, s))
    s.runAsync()
    try:
        peer = RawPeer(s.addr)
        pid, hello = peer.recv_packet()
        assert pid == 1 and "auth" in hello[EXTENSIONS_KEY]
        peer.send_packet(2, {"conntype": "classic", EXTENSIONS_KEY: ["auth"], "peng3dnet.credentials": "wrong"})
        assert peer.recv_until_close() == [(16, {"reason": "auth:refused"})]
        peer = RawPeer(s.addr)
        peer.recv_packet()
        peer.send_packet(2, {"conntype": "classic", EXTENSIONS_KEY: ["auth"], "peng3dnet.credentials": "right"})
        pid, hs = peer.recv_packet()
        assert pid == 3 and "test:secret" in hs["registry"]
    finally:
        s.shutdown(timeout=5)


def test_hook_that_raises_refuses_and_is_logged(net, caplog):
    s, _ = net.server(authenticate=Hook({"eve": KeyError("no such table")}))
    c = net.client(s, credentials="eve", wait=False)
    with caplog.at_level(logging.ERROR, logger="peng3dnet.user"):
        with pytest.raises(errors.AuthenticationError):
            c.wait_for_connection(10)
        assert c.close_reason == "auth:error"
        wait_for(lambda: any("authenticate raised" in r.getMessage() for r in caplog.records), what="log record")
    rec = next(r for r in caplog.records if "authenticate raised" in r.getMessage())
    assert rec.exc_info is not None and rec.exc_info[0] is KeyError
    good = net.client(s, credentials="someone else")  # the worker survived
    assert good.authenticated


def test_slow_decision_times_out_and_a_late_answer_is_ignored(net):
    gate = threading.Event()
    hook = Hook({"slow": True}, gate=gate)
    s, rec = net.server(authenticate=hook, **{"net.timeout.auth": 0.3})
    slow = net.client(s, credentials="slow", wait=False)
    # Another client logs in while the slow decision blocks one worker.
    fast = net.client(s, credentials="fast")
    assert fast.authenticated
    with pytest.raises(errors.AuthenticationError) as exc:
        slow.wait_for_connection(10)
    assert exc.value.reason == "auth:timeout"
    gate.set()  # the hook now says yes: too late
    wait_for(lambda: len(hook.calls) == 2, what="both hook calls")
    fast.send_message("test:echo", "ping")  # a round trip: the late answer had its chance to be applied
    assert fast.registry.get_obj("test:echo").wait_count(1) == ["ping"]
    auth = [d for d in rec.wait_for("peng3dnet:server.connection.auth", 2)]
    assert sorted((d["ok"], d["reason"]) for d in auth) == [(False, "auth:timeout"), (True, None)]
    assert len([n for n in rec.names() if n == "peng3dnet:server.connection.auth"]) == 2
    assert len(active_cids(s)) == 1


def test_hook_on_the_network_thread_with_zero_workers(net):
    hook = Hook()
    s, _ = net.server(authenticate=hook, **{"net.auth.workers": 0})
    net.client(s, credentials="x")
    assert hook.calls[0][2] == "peng3dnet Server Thread"


def test_version2_client_is_refused_with_a_clear_reason(net):
    hook = Hook()
    s, rec = net.server(authenticate=hook)
    peer = RawPeer(s.addr)
    peer.recv_packet()
    peer.send_packet(2, {"conntype": "classic"})  # a 0.1.x client: no extensions, no credentials
    assert peer.recv_until_close() == [(16, {"reason": "auth:unsupported"})]
    (d,) = rec.wait_for("peng3dnet:server.connection.auth")
    assert d["ok"] is False and d["reason"] == "auth:unsupported"
    assert hook.calls == []


def test_client_without_credentials_sends_none(net):
    hook = Hook({None: "guest"})
    s, _ = net.server(authenticate=hook)
    c = net.client(s)
    (cid,) = active_cids(s)
    assert hook.calls[0][1] is None and s.clients[cid].auth_data == "guest" and c.authenticated


def test_credentials_from_the_config_key(net):
    hook = Hook()
    s, _ = net.server(authenticate=hook)
    c = Client(addr=s.addr, cfg={"net.auth.credentials": {"token": "abc"}})
    c.register_packet("test:echo", EchoPacket(c.registry, c))
    net.clients.append(c)
    c.runAsync()
    c.wait_for_connection(10)
    assert hook.calls[0][1] == {"token": "abc"}


def test_credentials_are_not_sent_to_a_server_without_a_hook(net):
    s, rec = net.server()
    c = net.client(s, credentials="secret")
    (cid,) = active_cids(s)
    assert "auth" not in c.extensions and not c.authenticated
    settype = s.clients[cid]._link.proto.peer_settype
    assert "peng3dnet.credentials" not in settype and "secret" not in repr(settype)
    assert s.clients[cid].state == STATE_ACTIVE and not s.clients[cid].authenticated
    assert "peng3dnet:server.connection.auth" not in rec.names()


def test_unsendable_credentials_raise_at_construction():
    with pytest.raises(errors.LocalProtocolError, match="credentials cannot be sent"):
        Client(addr=("127.0.0.1", 1), credentials=object())


def test_subclass_override_is_a_hook(net):
    class Guarded(Server):
        def authenticate(self, client, credentials):
            if credentials != "letmein":
                raise errors.AuthenticationError("wrong")
            return {"who": client.addr[0]}

    s = Guarded(cfg={"net.server.addr": ("127.0.0.1", 0)})
    net.servers.append(s)
    s.runAsync()
    s.process_async()
    ok = net.client(s, credentials="letmein", **{"net.registry.autosync": False})
    assert ok.authenticated
    bad = net.client(s, credentials="nope", wait=False, **{"net.registry.autosync": False})
    with pytest.raises(errors.AuthenticationError, match="auth:wrong"):
        bad.wait_for_connection(10)


def test_ping_connections_are_not_gated(net):
    from peng3dnet.ext.ping import pingServer

    hook = Hook()
    s, _ = net.server(authenticate=hook)
    result = pingServer(addr=s.addr, timeout=10)
    assert result["delay"] >= 0 and hook.calls == []


def test_a_default_smartpacket_warns_once_when_the_client_is_logged_in(net, caplog):
    from peng3dnet.packet import SmartPacket

    class Move(SmartPacket):  # state left at the default, STATE_ACTIVE
        def receive(self, msg, cid=None):
            raise AssertionError("must not run for a logged-in client")

    class LoggedMove(SmartPacket):
        state = STATE_LOGGEDIN
        got: list = []

        def receive(self, msg, cid=None):
            self.got.append(msg)

    s, _ = net.server(authenticate=lambda client, creds: True,
                      packets={"test:move": Move, "test:logged": LoggedMove})
    c = net.client(s, credentials="x", packets={"test:move": Packet, "test:logged": Packet})
    with caplog.at_level(logging.WARNING, logger="peng3dnet.packet"):
        c.send_message("test:move", 1)
        c.send_message("test:move", 2)
        c.send_message("test:logged", 3)
        wait_for(lambda: LoggedMove.got == [3], what="the logged-in packet")
    warned = [r for r in caplog.records if "STATE_LOGGEDIN" in r.getMessage()]
    assert len(warned) == 1 and "Move wants state STATE_ACTIVE" in warned[0].getMessage()


def test_credentials_never_reach_events_or_logs(net, caplog):
    s, rec = net.server(authenticate=lambda client, creds: True, **{"net.debug.print.recv": True})
    with caplog.at_level(logging.INFO, logger="peng3dnet"):
        c = net.client(s, credentials={"password": "hunter2"}, **{"net.debug.print.send": True})
    crec = net.recorder(c, "peng3dnet:client.*")
    (cid,) = active_cids(s)
    settype = [d for d in rec.wait_for("peng3dnet:server.connection.recv", 2) if d["pid"] == 2]
    assert settype and settype[0]["msg"]["peng3dnet.credentials"] == "<redacted>"
    assert "hunter2" not in repr(rec.items) and "hunter2" not in repr(crec.items)
    assert not any("hunter2" in r.getMessage() for r in caplog.records)
    assert "peng3dnet.credentials" not in s.clients[cid]._link.proto.peer_settype  # not kept after the hook


def test_oversized_credentials_are_refused_without_calling_the_hook(net):
    hook = Hook()
    s, _ = net.server(authenticate=hook)
    c = net.client(s, credentials="x" * (64 * 1024 + 1), wait=False)
    with pytest.raises(errors.AuthenticationError, match="auth:toolarge"):
        c.wait_for_connection(10)
    assert hook.calls == []


def test_credentials_of_exactly_64_kib_are_accepted_one_byte_more_refused(net):
    """The limit is on the packed credentials: 65,536 bytes pass (the hook
    is asked), 65,537 do not."""
    hook = Hook()
    s, _ = net.server(authenticate=hook)
    net.client(s, credentials=b"x" * 65533)  # bin16: 3 header bytes + 65,533 = 65,536
    assert [len(creds) for _, creds, _ in hook.calls] == [65533]
    c = net.client(s, credentials=b"x" * 65534, wait=False)
    with pytest.raises(errors.AuthenticationError, match="auth:toolarge"):
        c.wait_for_connection(10)
    assert len(hook.calls) == 1


@pytest.mark.parametrize("data", [{}, 0, "", []])
def test_falsy_data_from_the_hook_accepts(net, data):
    """Only False and None refuse; an empty player record is data."""
    s, _ = net.server(authenticate=lambda client, creds: data)
    c = net.client(s, credentials="token")
    (cid,) = active_cids(s)
    assert s.clients[cid].authenticated and s.clients[cid].auth_data == data and type(s.clients[cid].auth_data) is type(data)
    assert c.authenticated


def test_a_0_1_x_method_named_authenticate_is_not_a_hook(net, caplog):
    class Old(Server):
        def authenticate(self):  # a 0.1.x program's own method
            return "whatever"

    with caplog.at_level(logging.WARNING, logger="peng3dnet.server"):
        s = Old(cfg={"net.server.addr": ("127.0.0.1", 0)})
    assert any("not used as the login hook" in r.getMessage() for r in caplog.records)
    s.register_packet("test:echo", EchoPacket(s.registry, s))
    net.servers.append(s)
    s.runAsync()
    c = net.client(s)
    assert "auth" not in c.extensions and not c.authenticated


# === Login unit by unit, without sockets ==================================================
# :class:`peng3dnet.login.Login` against a recording fake server and links
# carrying a real (socketless) protocol connection: the gate's return values,
# the decisions' exact effects (``link.auth``, the timer, the event, the
# close), the time-out's and the worker threads' rules, and the log lines
# value by value (the session mutation area runs this file).

AUTH_EVENT = "peng3dnet:server.connection.auth"


class FakeReactor:
    """call_later records its timers; call_soon queues for the test to run."""

    def __init__(self):
        self.timers: list[FakeTimer] = []
        self.soon: list = []
        self.cond = threading.Condition()

    def call_later(self, delay, fn):
        t = FakeTimer(delay, fn)
        self.timers.append(t)
        return t

    def call_soon(self, fn, *args):
        with self.cond:
            self.soon.append((fn, args))
            self.cond.notify_all()

    def run_soon(self, n=1, timeout=5.0):
        """Wait until ``n`` calls are queued, then run them (as the network thread would)."""
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.soon) >= n, timeout)
            calls, self.soon = self.soon, []
        for fn, args in calls:
            fn(*args)


class FakeServer:
    def __init__(self, hook=None, *, timeout=5.0, workers=0):
        self.cfg = {"net.timeout.auth": timeout, "net.auth.workers": workers}
        self._reactor = FakeReactor()
        self.hook = hook if hook is not None else (lambda owner, creds: True)
        self.asked: list = []
        self.emitted: list = []
        self.handshakes: list = []
        self.closes: list = []

    def authenticate(self, owner, credentials):
        self.asked.append((owner, credentials, threading.current_thread().name))
        return self.hook(owner, credentials)

    def _emit(self, name, data):
        self.emitted.append((name, data))

    def _send_handshake(self, link):
        self.handshakes.append(link)

    def _close_link(self, link, reason):
        self.closes.append((link, reason))


class FakeOwner:
    auth_data = "unset"
    authenticated = False


class FakeLink:
    def __init__(self, cid=7, *, negotiated=("auth",), settype=None):
        self.cid = cid
        self.auth = None
        self.auth_timer = None
        self.owner = FakeOwner()
        self.proto = ProtocolConnection(SIDE_SERVER)
        self.proto.negotiated = frozenset(negotiated)
        self.proto.peer_settype = dict(settype if settype is not None else {CREDENTIALS_KEY: {"user": "alice"}})


def _records(caplog, logger="peng3dnet.login"):
    return [(r.levelno, r.msg, r.args) for r in caplog.records if r.name == logger]


# --- auth_reason ------------------------------------------------------------------------

def test_auth_reason_of_nothing_is_refused_and_text_is_squashed_and_cut():
    assert auth_reason(None) == "auth:refused"
    assert auth_reason("") == "auth:refused"
    assert auth_reason("  bad \n\t password ") == "auth:bad password"
    assert auth_reason(0) == "auth:0"
    assert auth_reason("x" * 150) == "auth:" + "x" * 100


# --- the gate ---------------------------------------------------------------------------

def test_the_gate_lets_an_accepted_link_or_a_server_without_hook_through():
    server = FakeServer()
    link = FakeLink()
    link.auth = True
    assert Login(server, True).gate(link) is True
    assert Login(server, False).gate(FakeLink()) is True
    assert server.asked == [] and server.emitted == [] and server.closes == []


@pytest.mark.parametrize("auth", [AUTH_PENDING, False])
def test_the_gate_holds_a_pending_or_refused_link_without_asking_again(auth):
    server = FakeServer()
    link = FakeLink()
    link.auth = auth
    assert Login(server, True).gate(link) is False
    assert link.auth is auth
    assert server.asked == [] and server.emitted == [] and server.closes == [] and server._reactor.timers == []


def test_a_client_without_the_auth_extension_is_refused_unsupported(caplog):
    caplog.set_level(logging.DEBUG, "peng3dnet.login")
    server = FakeServer()
    link = FakeLink(cid=12, negotiated=())
    assert Login(server, True).gate(link) is False
    assert link.auth is False
    assert server.asked == []
    assert server.closes == [(link, "auth:unsupported")]
    assert server.emitted == [(AUTH_EVENT, {"client": link.owner, "ok": False, "reason": "auth:unsupported"})]
    assert _records(caplog) == [
        (logging.INFO, "! server cid=%s: refused, the client cannot send credentials (a 0.1.x client?)", (12,)),
        (logging.INFO, "server cid=%s: login refused (%s)", (12, "auth:unsupported")),
    ]


def test_credentials_over_the_limit_are_refused_toolarge_and_at_the_limit_asked(caplog):
    caplog.set_level(logging.DEBUG, "peng3dnet.login")
    # msgpack bin 16: 3 bytes of header, so MAX_CREDENTIALS - 3 bytes of data pack to exactly the limit
    at_limit = b"x" * (MAX_CREDENTIALS - 3)
    assert len(pack(at_limit)) == MAX_CREDENTIALS
    server = FakeServer()
    link = FakeLink(cid=3, settype={CREDENTIALS_KEY: at_limit})
    assert Login(server, True).gate(link) is False
    assert server.asked == [(link.owner, at_limit, threading.current_thread().name)]
    assert link.auth is True and server.handshakes == [link]

    caplog.clear()
    server = FakeServer()
    link = FakeLink(cid=4, settype={CREDENTIALS_KEY: at_limit + b"x"})
    assert Login(server, True).gate(link) is False
    assert link.auth is False and server.asked == [] and server.handshakes == []
    assert server.closes == [(link, "auth:toolarge")]
    assert _records(caplog) == [
        (logging.INFO, "! server cid=%s: refused, credentials over %d bytes", (4, MAX_CREDENTIALS)),
        (logging.INFO, "server cid=%s: login refused (%s)", (4, "auth:toolarge")),
    ]


def test_the_credentials_are_taken_out_of_settype_and_none_sent_is_asked_as_none():
    server = FakeServer()
    link = FakeLink(settype={"conntype": "classic", CREDENTIALS_KEY: [1, 2]})
    Login(server, True).gate(link)
    assert server.asked[0][1] == [1, 2]
    assert link.proto.peer_settype == {"conntype": "classic"}

    server = FakeServer()
    link = FakeLink(settype={"conntype": "classic"})  # the client sent no credentials key at all
    assert Login(server, True).gate(link) is False
    assert server.asked == [(link.owner, None, threading.current_thread().name)]
    assert link.auth is True


def test_inline_login_accepts_with_the_hooks_data_and_cancels_the_timer():
    server = FakeServer(lambda owner, creds: {"account": creds["user"]}, timeout=2.5, workers=0)
    link = FakeLink()
    assert Login(server, True).gate(link) is False
    (timer,) = server._reactor.timers
    assert timer.delay == 2.5 and timer.cancelled is True
    assert link.auth_timer is None
    assert link.auth is True
    assert link.owner.auth_data == {"account": "alice"} and link.owner.authenticated is True
    assert server.emitted == [(AUTH_EVENT, {"client": link.owner, "ok": True, "reason": None})]
    assert server.handshakes == [link] and server.closes == []


@pytest.mark.parametrize("answer, data", [(True, None), ("player-1", "player-1"), (0, 0), ("", "")])
def test_any_answer_but_none_or_false_accepts_and_true_carries_no_data(answer, data):
    server = FakeServer(lambda owner, creds: answer)
    link = FakeLink()
    Login(server, True).gate(link)
    assert link.auth is True and link.owner.auth_data == data and server.handshakes == [link]


@pytest.mark.parametrize("answer", [None, False])
def test_none_or_false_refuses(answer):
    server = FakeServer(lambda owner, creds: answer)
    link = FakeLink()
    Login(server, True).gate(link)
    assert link.auth is False and link.owner.authenticated is False and link.owner.auth_data == "unset"
    assert server.closes == [(link, "auth:refused")] and server.handshakes == []
    assert server.emitted == [(AUTH_EVENT, {"client": link.owner, "ok": False, "reason": "auth:refused"})]


def test_an_authentication_error_refuses_with_its_reason_or_its_message():
    def hook(owner, creds):
        raise AuthenticationError("bad password", creds)

    for creds, reason in (("banned user", "auth:banned user"), (None, "auth:bad password")):
        server = FakeServer(hook)
        link = FakeLink(settype={CREDENTIALS_KEY: creds})
        Login(server, True).gate(link)
        assert server.closes == [(link, reason)]


def test_a_hook_that_raises_refuses_with_error_and_reports_the_cid(caplog):
    caplog.set_level(logging.DEBUG)

    def hook(owner, creds):
        raise KeyError("boom")

    server = FakeServer(hook)
    link = FakeLink(cid=21)
    Login(server, True).gate(link)
    assert server.closes == [(link, "auth:error")] and link.auth is False
    (rec,) = [r for r in caplog.records if r.name == "peng3dnet.user"]
    assert (rec.levelno, rec.msg, rec.args) == (
        logging.ERROR, "! server cid=%s: authenticate raised; refusing the client", (21,))
    assert rec.exc_info[0] is KeyError


def test_a_time_out_of_zero_starts_no_timer():
    server = FakeServer(timeout=0)
    link = FakeLink()
    Login(server, True).gate(link)
    assert server._reactor.timers == [] and link.auth_timer is None and link.auth is True


def test_the_time_out_refuses_a_pending_login_once_and_a_late_answer_is_dropped(caplog):
    caplog.set_level(logging.DEBUG, "peng3dnet.login")
    server = FakeServer(timeout=1.5, workers=1)
    login = Login(server, True)
    link = FakeLink(cid=5)
    started, gate = threading.Event(), threading.Event()

    def hook(owner, creds):
        started.set()
        return gate.wait(5)

    server.hook = hook
    try:
        assert login.gate(link) is False
        assert link.auth is AUTH_PENDING
        assert started.wait(5)  # the worker runs the hook
        (timer,) = server._reactor.timers
        assert timer.delay == 1.5 and link.auth_timer is timer
        timer.fn()  # the reactor fires it
        assert link.auth is False and link.auth_timer is None
        assert server.closes == [(link, "auth:timeout")]
        assert _records(caplog) == [
            (logging.INFO, "! server cid=%s: no login decision after %.1f s", (5, 1.5)),
            (logging.INFO, "server cid=%s: login refused (%s)", (5, "auth:timeout")),
        ]
        gate.set()
        server._reactor.run_soon()  # the hook's late "yes"
        assert link.auth is False and server.handshakes == [] and len(server.emitted) == 1
        timer.fn()  # fired again (already decided): nothing more
        assert server.closes == [(link, "auth:timeout")] and len(caplog.records) == 2
    finally:
        gate.set()
        login.stop()


@pytest.mark.parametrize("first, second", [(True, False), (False, True)])
def test_a_decision_is_applied_once(first, second):
    server = FakeServer()
    login = Login(server, True)
    link = FakeLink()
    link.auth = AUTH_PENDING
    login._decided(link, first, "data", None if first else "auth:x")
    login._decided(link, second, "other", None if second else "auth:y")
    assert link.auth is first
    assert len(server.emitted) == 1 and len(server.handshakes) + len(server.closes) == 1


def test_a_decision_for_a_closed_connection_only_marks_it_refused():
    server = FakeServer()
    login = Login(server, True)
    link = FakeLink()
    link.auth = AUTH_PENDING
    timer = link.auth_timer = FakeTimer(3, None)
    link.proto.closed = True
    login._decided(link, True, "data", None)
    assert link.auth is False and timer.cancelled is True and link.auth_timer is None
    assert server.emitted == [] and server.handshakes == [] and server.closes == []
    assert link.owner.authenticated is False


# --- the workers ------------------------------------------------------------------------

def test_one_worker_runs_the_hook_off_the_network_thread_and_hands_the_decision_back():
    server = FakeServer(lambda owner, creds: "ok", workers=1)
    login = Login(server, True)
    link = FakeLink()
    try:
        assert login.gate(link) is False
        assert link.auth is AUTH_PENDING  # nothing decided on the calling thread
        server._reactor.run_soon()
        assert server.asked == [(link.owner, {"user": "alice"}, "peng3dnet auth 0")]
        assert link.auth is True and link.owner.auth_data == "ok"
        (t,) = login._workers._threads
        assert t.daemon is True and t.name == "peng3dnet auth 0"
    finally:
        login.stop()


def test_workers_are_daemons_named_by_number_and_a_stopped_login_starts_new_ones():
    server = FakeServer(workers=3)
    login = Login(server, True)
    try:
        login.gate(FakeLink(cid=1))
        server._reactor.run_soon()
        first = login._workers
        assert [(t.name, t.daemon) for t in first._threads] == [
            ("peng3dnet auth 0", True), ("peng3dnet auth 1", True), ("peng3dnet auth 2", True)]
        login.stop()
        assert login._workers is None
        for t in first._threads:
            t.join(5)
            assert not t.is_alive()
        link = FakeLink(cid=2)
        login.gate(link)
        server._reactor.run_soon()
        assert login._workers is not first and link.auth is True
    finally:
        login.stop()


@pytest.mark.parametrize("auth, closed", [(AUTH_PENDING, True), (False, False), (True, False)])
def test_a_queued_job_skips_a_login_no_longer_pending_or_a_closed_connection(auth, closed):
    server = FakeServer()
    login = Login(server, True)
    link = FakeLink()
    link.auth = auth
    link.proto.closed = closed
    login._job(link, link.owner, "creds")
    assert server.asked == [] and server._reactor.soon == []


def test_a_queued_job_of_a_pending_login_asks_and_hands_over():
    server = FakeServer(lambda owner, creds: False)
    login = Login(server, True)
    link = FakeLink()
    link.auth = AUTH_PENDING
    login._job(link, link.owner, "creds")
    assert server.asked == [(link.owner, "creds", threading.current_thread().name)]
    assert server._reactor.soon == [(login._decided, (link, False, None, "auth:refused"))]


@pytest.mark.parametrize("workers", [2, 0])
def test_a_client_closed_from_the_auth_event_is_closed_quietly(net, caplog, workers):
    """A policy in the auth event (ban after the hook accepted) closing the
    client: the server then began the handshake on the closed connection
    and logged an error (an unexpected one in a queued call, or the
    connection type's hook, the user blamed, with no workers)."""
    from peng3dnet import events

    s, rec = net.server(authenticate=Hook(), **{"net.auth.workers": workers})

    def on_auth(event, data):
        if data["ok"]:
            data["client"].close("banned-by-policy")

    events.subscribe("peng3dnet:server.connection.auth", on_auth, sender=s)
    try:
        with caplog.at_level(logging.WARNING):
            c = Client(addr=s.addr)
            net.clients.append(c)
            c.runAsync()
            c.process_async()
            with pytest.raises(errors.ConnectionClosedError):
                c.wait_for_connection(10)
            assert c.close_reason == "banned-by-policy"
            (d,) = rec.wait_for("peng3dnet:server.connection.close")
            assert d["reason"] == "banned-by-policy"
            later = threading.Event()
            s._reactor.call_soon(later.set)  # runs once the network thread is past the decision
            assert later.wait(10)
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    finally:
        events.unsubscribe("peng3dnet:server.connection.auth", on_auth, sender=s)


def test_a_connection_type_that_asks_for_the_handshake_gets_no_packets_before_the_login(net):
    """A connection type of the program's that begins the registry
    handshake (which the login gates) may exchange packets after settype;
    while its login was pending they reached their handlers (the client
    was let in only to be refused a moment later).  Such a packet closes
    the connection now, as before the handshake of a classic one."""
    from peng3dnet.conntypes import ConnectionType

    class Gated(ConnectionType):
        def init(self, cid):
            if cid is not None:  # (the server's side)
                self.peer.begin_handshake(cid)

    gate = threading.Event()
    hook = Hook({"wrong": False}, gate=gate)
    ran: list = []
    s, rec = net.server(authenticate=hook)
    s.addConnType("gated", Gated(s))
    s.handler("game:cmd")(lambda msg, cid: ran.append(msg))
    c = Client(addr=s.addr, conntype="gated", credentials="slow")  # the hook waits for the gate
    c.register_packet("game:cmd", Packet(c.registry, c))
    c.addConnType("gated", ConnectionType(c))
    net.clients.append(c)
    c.runAsync()
    c.process_async()
    wait_for(lambda: hook.calls, what="the login pending")
    c.send_message("game:cmd", "drop table")
    (d,) = rec.wait_for("peng3dnet:server.connection.close")
    assert d["reason"] == "smartpacketinvalid"
    gate.set()
    s.process(wait=False)
    assert ran == []
