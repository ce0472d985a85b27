"""Login (issue "Sessions", part 1): credentials carried by the ``auth``
extension, the server's ``authenticate`` hook, its decision, time-out and
refusals, on real sockets."""

from __future__ import annotations

import logging
import threading

import pytest

from peng3dnet import errors
from peng3dnet.constants import EXTENSIONS_KEY, STATE_ACTIVE, STATE_LOGGEDIN
from peng3dnet.net import Client, Server
from peng3dnet.packet import Packet
from tests.conftest import EchoPacket, RawPeer
from tests.helpers import active_cids, wait_for


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
