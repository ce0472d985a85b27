"""The login step unit by unit (no sockets): :class:`peng3dnet.login.Login`
against a recording fake server and links carrying a real (socketless)
protocol connection.  The gate's return values, the decisions' exact
effects (``link.auth``, the timer, the event, the close), the time-out's
and the worker threads' rules, and the log lines value by value."""

from __future__ import annotations

import logging
import threading

import pytest

from peng3dnet.constants import CREDENTIALS_KEY, SIDE_SERVER
from peng3dnet.errors import AuthenticationError
from peng3dnet.login import AUTH_PENDING, MAX_CREDENTIALS, Login, auth_reason
from peng3dnet.protocol.codec import pack
from peng3dnet.protocol.connection import ProtocolConnection

AUTH_EVENT = "peng3dnet:server.connection.auth"


class Timer:
    def __init__(self, delay, fn):
        self.delay = delay
        self.fn = fn
        self.cancelled = False

    def cancel(self):
        self.cancelled = True


class Reactor:
    """call_later records its timers; call_soon queues for the test to run."""

    def __init__(self):
        self.timers: list[Timer] = []
        self.soon: list = []
        self.cond = threading.Condition()

    def call_later(self, delay, fn):
        t = Timer(delay, fn)
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


class Server:
    def __init__(self, hook=None, *, timeout=5.0, workers=0):
        self.cfg = {"net.timeout.auth": timeout, "net.auth.workers": workers}
        self._reactor = Reactor()
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


class Owner:
    auth_data = "unset"
    authenticated = False


class Link:
    def __init__(self, cid=7, *, negotiated=("auth",), settype=None):
        self.cid = cid
        self.auth = None
        self.auth_timer = None
        self.owner = Owner()
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
    server = Server()
    link = Link()
    link.auth = True
    assert Login(server, True).gate(link) is True
    assert Login(server, False).gate(Link()) is True
    assert server.asked == [] and server.emitted == [] and server.closes == []


@pytest.mark.parametrize("auth", [AUTH_PENDING, False])
def test_the_gate_holds_a_pending_or_refused_link_without_asking_again(auth):
    server = Server()
    link = Link()
    link.auth = auth
    assert Login(server, True).gate(link) is False
    assert link.auth is auth
    assert server.asked == [] and server.emitted == [] and server.closes == [] and server._reactor.timers == []


def test_a_client_without_the_auth_extension_is_refused_unsupported(caplog):
    caplog.set_level(logging.DEBUG, "peng3dnet.login")
    server = Server()
    link = Link(cid=12, negotiated=())
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
    server = Server()
    link = Link(cid=3, settype={CREDENTIALS_KEY: at_limit})
    assert Login(server, True).gate(link) is False
    assert server.asked == [(link.owner, at_limit, threading.current_thread().name)]
    assert link.auth is True and server.handshakes == [link]

    caplog.clear()
    server = Server()
    link = Link(cid=4, settype={CREDENTIALS_KEY: at_limit + b"x"})
    assert Login(server, True).gate(link) is False
    assert link.auth is False and server.asked == [] and server.handshakes == []
    assert server.closes == [(link, "auth:toolarge")]
    assert _records(caplog) == [
        (logging.INFO, "! server cid=%s: refused, credentials over %d bytes", (4, MAX_CREDENTIALS)),
        (logging.INFO, "server cid=%s: login refused (%s)", (4, "auth:toolarge")),
    ]


def test_the_credentials_are_taken_out_of_settype_and_none_sent_is_asked_as_none():
    server = Server()
    link = Link(settype={"conntype": "classic", CREDENTIALS_KEY: [1, 2]})
    Login(server, True).gate(link)
    assert server.asked[0][1] == [1, 2]
    assert link.proto.peer_settype == {"conntype": "classic"}

    server = Server()
    link = Link(settype={"conntype": "classic"})  # the client sent no credentials key at all
    assert Login(server, True).gate(link) is False
    assert server.asked == [(link.owner, None, threading.current_thread().name)]
    assert link.auth is True


def test_inline_login_accepts_with_the_hooks_data_and_cancels_the_timer():
    server = Server(lambda owner, creds: {"account": creds["user"]}, timeout=2.5, workers=0)
    link = Link()
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
    server = Server(lambda owner, creds: answer)
    link = Link()
    Login(server, True).gate(link)
    assert link.auth is True and link.owner.auth_data == data and server.handshakes == [link]


@pytest.mark.parametrize("answer", [None, False])
def test_none_or_false_refuses(answer):
    server = Server(lambda owner, creds: answer)
    link = Link()
    Login(server, True).gate(link)
    assert link.auth is False and link.owner.authenticated is False and link.owner.auth_data == "unset"
    assert server.closes == [(link, "auth:refused")] and server.handshakes == []
    assert server.emitted == [(AUTH_EVENT, {"client": link.owner, "ok": False, "reason": "auth:refused"})]


def test_an_authentication_error_refuses_with_its_reason_or_its_message():
    def hook(owner, creds):
        raise AuthenticationError("bad password", creds)

    for creds, reason in (("banned user", "auth:banned user"), (None, "auth:bad password")):
        server = Server(hook)
        link = Link(settype={CREDENTIALS_KEY: creds})
        Login(server, True).gate(link)
        assert server.closes == [(link, reason)]


def test_a_hook_that_raises_refuses_with_error_and_reports_the_cid(caplog):
    caplog.set_level(logging.DEBUG)

    def hook(owner, creds):
        raise KeyError("boom")

    server = Server(hook)
    link = Link(cid=21)
    Login(server, True).gate(link)
    assert server.closes == [(link, "auth:error")] and link.auth is False
    (rec,) = [r for r in caplog.records if r.name == "peng3dnet.user"]
    assert (rec.levelno, rec.msg, rec.args) == (
        logging.ERROR, "! server cid=%s: authenticate raised; refusing the client", (21,))
    assert rec.exc_info[0] is KeyError


def test_a_time_out_of_zero_starts_no_timer():
    server = Server(timeout=0)
    link = Link()
    Login(server, True).gate(link)
    assert server._reactor.timers == [] and link.auth_timer is None and link.auth is True


def test_the_time_out_refuses_a_pending_login_once_and_a_late_answer_is_dropped(caplog):
    caplog.set_level(logging.DEBUG, "peng3dnet.login")
    server = Server(timeout=1.5, workers=1)
    login = Login(server, True)
    link = Link(cid=5)
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
    server = Server()
    login = Login(server, True)
    link = Link()
    link.auth = AUTH_PENDING
    login._decided(link, first, "data", None if first else "auth:x")
    login._decided(link, second, "other", None if second else "auth:y")
    assert link.auth is first
    assert len(server.emitted) == 1 and len(server.handshakes) + len(server.closes) == 1


def test_a_decision_for_a_closed_connection_only_marks_it_refused():
    server = Server()
    login = Login(server, True)
    link = Link()
    link.auth = AUTH_PENDING
    timer = link.auth_timer = Timer(3, None)
    link.proto.closed = True
    login._decided(link, True, "data", None)
    assert link.auth is False and timer.cancelled is True and link.auth_timer is None
    assert server.emitted == [] and server.handshakes == [] and server.closes == []
    assert link.owner.authenticated is False


# --- the workers ------------------------------------------------------------------------

def test_one_worker_runs_the_hook_off_the_network_thread_and_hands_the_decision_back():
    server = Server(lambda owner, creds: "ok", workers=1)
    login = Login(server, True)
    link = Link()
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
    server = Server(workers=3)
    login = Login(server, True)
    try:
        login.gate(Link(cid=1))
        server._reactor.run_soon()
        first = login._workers
        assert [(t.name, t.daemon) for t in first._threads] == [
            ("peng3dnet auth 0", True), ("peng3dnet auth 1", True), ("peng3dnet auth 2", True)]
        login.stop()
        assert login._workers is None
        for t in first._threads:
            t.join(5)
            assert not t.is_alive()
        link = Link(cid=2)
        login.gate(link)
        server._reactor.run_soon()
        assert login._workers is not first and link.auth is True
    finally:
        login.stop()


@pytest.mark.parametrize("auth, closed", [(AUTH_PENDING, True), (False, False), (True, False)])
def test_a_queued_job_skips_a_login_no_longer_pending_or_a_closed_connection(auth, closed):
    server = Server()
    login = Login(server, True)
    link = Link()
    link.auth = auth
    link.proto.closed = closed
    login._job(link, link.owner, "creds")
    assert server.asked == [] and server._reactor.soon == []


def test_a_queued_job_of_a_pending_login_asks_and_hands_over():
    server = Server(lambda owner, creds: False)
    login = Login(server, True)
    link = Link()
    link.auth = AUTH_PENDING
    login._job(link, link.owner, "creds")
    assert server.asked == [(link.owner, "creds", threading.current_thread().name)]
    assert server._reactor.soon == [(login._decided, (link, False, None, "auth:refused"))]
