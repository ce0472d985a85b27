"""0.1.x semantics of COMPAT.md sections 3-7, checked on our library alone
(the wire behaviour against the original is in test_oldgame.py)."""

from __future__ import annotations

import socket
import threading
import warnings

import pytest

import peng3dnet
from peng3dnet import (
    MODE_CLOSED,
    MODE_PING,
    MODE_PLAY,
    STATE_ACTIVE,
    STATE_CLOSED,
    STATE_LOGGEDIN,
    BaseRegistry,
    Client,
    ClientOnServer,
    ConfigWarning,
    FailedPingError,
    InvalidPortError,
    InvalidSmartPacketActionError,
    PacketRegistry,
    RegistryError,
    Server,
    TimedOutError,
    normalize_addr_formatted,
    parse_address,
)
from peng3dnet.ext.ping import PingableClientMixin, PingableServerMixin, pingServer
from peng3dnet.packet import Packet, SmartPacket
from peng3dnet.protocol.handshake import HandshakeState
from tests.helpers import active_cids, wait_for

# --- registry -----------------------------------------------------------------


class P(Packet):
    pass


def test_registry_lookups_of_0_1():
    reg = PacketRegistry()
    assert isinstance(reg, BaseRegistry)
    p, q = P(reg, None), P(reg, None)
    assert reg.register(p, "a:b") == 64  # register(obj, name, n=None)
    assert reg.getNewID() == 65
    for key in ("a:b", 64, p):
        assert reg.getAll(key) == (p, 64, "a:b")
        assert reg.getName(key) == reg.getStr(key) == "a:b"
        assert reg.getID(key) == reg.getInt(key) == 64
        assert reg.getObj(key) is p and reg[key] is p
    assert reg.getName("not:registered") == "not:registered"  # a str is returned as is (0.1.x)
    assert reg.getInt(99) == 99  # and an int by getID/getInt
    assert dict(reg.reg_int_str) == {64: "a:b"} and dict(reg.reg_int_str.inv) == {"a:b": 64}
    assert reg.reg_int_obj[64] is p and reg.reg_int_obj.inv[p] == 64
    for bad in ("x:y", object()):
        with pytest.raises(KeyError):  # as 0.1.x, and a RegistryError
            reg.getInt(bad)
    for bad in ("x:y", 99, object()):
        with pytest.raises(RegistryError):
            reg.getObj(bad)
    q.name = "a:q"
    assert reg.registerObject(q, 70) == 70 and reg["a:q"] is q
    with pytest.raises(AttributeError):
        reg.registerObject(P(reg, None))  # no .name
    reg.deleteObj(p)
    assert "a:b" not in reg and 64 not in reg.reg_int_str and reg.getNewID() == 64
    assert dict(reg.reg_int_str) == {70: "a:q"}
    assert isinstance(Server().registry, PacketRegistry) and isinstance(Client().registry, PacketRegistry)


# --- util, config ----------------------------------------------------------------


def test_address_helpers_of_0_1():
    assert parse_address("host") == ("host", 8080)
    assert parse_address("host:1234") == ("host", 1234)
    assert parse_address(("host", 5)) == ("host", 5)
    assert parse_address("[::1]:5") == ("::1", 5)  # IPv6: ours takes it (0.1.x refused)
    assert normalize_addr_formatted("host:5") == "host:5"
    assert normalize_addr_formatted(("::1", 5)) == "[::1]:5"
    assert parse_address("") == ("", 8080) and parse_address(":80") == ("", 80)  # every interface
    for bad in ("h:x", "h:99999", "h:"):
        with pytest.raises(InvalidPortError):
            parse_address(bad)


def test_an_empty_host_binds_every_interface(net):
    s = Server(addr=("", 0))
    net.servers.append(s)
    s.runAsync()
    assert s.addr[0] in ("0.0.0.0", "::")
    c = Client(addr=("127.0.0.1", s.addr[1]))
    net.clients.append(c)
    c.runAsync()
    c.wait_for_connection(10)


def test_unknown_config_key_is_reported_with_the_closest_known_key():
    with pytest.warns(ConfigWarning, match=r"'net\.limit\.max_clients'.*'net\.limits\.max_clients'"):
        Server(cfg={"net.limit.max_clients": 3})
    s = Server()
    with pytest.warns(ConfigWarning):
        s.cfg["net.process.inlin"] = True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # 0.1.x keys are known; keys outside net.* are the application's
        Server(cfg={"net.ssl.force": True, "net.encrypt.enabled": False, "game.difficulty": 3})


# --- peers: flags, run ----------------------------------------------------------


def test_side_flags_and_run():
    s, c = Server(), Client()
    assert (s.is_server, s.is_client, c.is_server, c.is_client) == (True, False, False, True)
    assert s.run and c.run  # true from the start, as in 0.1.x
    s.stop()
    assert s.run is False


def test_run_false_stops_and_a_client_run_ends_with_its_connection(net):
    s, _ = net.server()
    c = net.client(s)
    assert s.run and c.run
    s.close_connection(active_cids(s)[0], "kick")
    c.join(10)  # the client's loop ends with its connection
    wait_for(lambda: not c.run, what="client.run false")
    s.run = False  # 0.1.x programs stop a peer this way
    s.join(10)
    assert not s.run


# --- application state and mode ------------------------------------------------------


def test_state_and_mode_belong_to_the_application(net):
    seen = {}
    done = threading.Event()

    class Cos(ClientOnServer):
        def on_connect(self):
            seen["connect"] = self.state
            self.state = 100  # the application's own value, before the handshake

        def on_handshake_complete(self):
            seen["before_base"] = self.state  # the library did not move it at settype
            super().on_handshake_complete()
            seen["after_base"] = self.state
            self.state = STATE_LOGGEDIN

        def on_close(self, reason=None):
            seen["in_on_close"] = (self.state, self.mode)
            done.set()

    class Play(Packet):
        def receive(self, msg, cid=None):
            client = self.peer.clients[cid]
            seen["handler"] = (client.state, client.mode, client.conntype)
            client.mode = MODE_PLAY

    s, _ = net.server(record=None, clientcls=Cos, packets={"t:play": Play})
    c = net.client(s, packets={"t:play": Packet})
    (cid,) = wait_for(lambda: [k for k, v in s.clients.items() if v.state == STATE_LOGGEDIN], what="logged in")
    cos = s.clients[cid]
    assert c.remote_state == STATE_ACTIVE and c.protocol_state is HandshakeState.ACTIVE
    assert cos.protocol_state is HandshakeState.ACTIVE
    c.send_message("t:play", 1)
    wait_for(lambda: cos.mode == MODE_PLAY, what="mode set by the handler")
    assert seen == {"connect": 4, "before_base": 100, "after_base": STATE_ACTIVE,
                    "handler": (STATE_LOGGEDIN, 0, "classic")}
    c.close("bye")
    assert done.wait(10)
    assert seen["in_on_close"] == (STATE_LOGGEDIN, MODE_PLAY)  # still the application's in on_close
    assert (cos.state, cos.mode) == (STATE_CLOSED, MODE_CLOSED)  # then closed
    wait_for(lambda: (c.remote_state, c.mode) == (STATE_CLOSED, MODE_CLOSED), what="client closed")


def test_ping_connection_is_active_in_ping_mode(net):
    seen = []

    class S(PingableServerMixin, Server):
        pingdata = {"name": "x"}

        def getPingData(self, msg, cid):
            cl = self.clients[cid]
            seen.append((cl.state, cl.mode, cl.conntype))
            return super().getPingData(msg, cid)

    s = S(addr=("127.0.0.1", 0))
    net.servers.append(s)
    s.runAsync()
    assert pingServer(addr=s.addr, timeout=10)["name"] == "x"
    assert seen == [(STATE_ACTIVE, MODE_PING, "ping")]


# --- packets: hooks, close ordering, invalid actions -------------------------------------


def test_receive_then_on_receive_on_send_then_send_for_application_packets_only(net):
    """0.1.x's order (checked against the original in test_conntype_hooks.py):
    a received packet's handler, then on_receive; a sent one's on_send, then
    the packet's send hook."""
    order = []

    class Hooked(Packet):
        def _receive(self, msg, cid=None):
            order.append(("_receive", msg))
            super()._receive(msg, cid)

        def receive(self, msg, cid=None):
            order.append(("receive", msg))

        def send(self, msg, cid=None):
            order.append(("send", msg))

    class Cos(ClientOnServer):
        def on_receive(self, pid, msg):
            order.append(("on_receive", pid, msg))

        def on_send(self, ptype, data):
            order.append(("on_send", ptype, data))

    s, _ = net.server(record=None, clientcls=Cos, packets={"t:h": Hooked})
    c = net.client(s, packets={"t:h": Packet})
    (cid,) = active_cids(s)
    pid = s.registry.getID("t:h")
    c.send_message("t:h", "in")
    wait_for(lambda: len(order) >= 3, what="handlers")
    s.send_message("t:h", "out", cid)
    assert order == [("_receive", "in"), ("receive", "in"), ("on_receive", pid, "in"),
                     ("on_send", "t:h", "out"), ("send", "out")]


def test_close_comes_after_the_packets_received_before_it(net):
    got = []
    closed = []

    class Rec(Packet):
        def receive(self, msg, cid=None):
            got.append(msg)

    class Cos(ClientOnServer):
        def on_close(self, reason=None):
            closed.append((reason, list(got), self.server.clients.get(self.cid) is self))

    # no process thread: packets wait in the queue
    s, rec = net.server(process=False, record="peng3dnet:server.connection.close", clientcls=Cos, packets={"t:r": Rec})
    c = net.client(s, packets={"t:r": Packet})
    (cid,) = active_cids(s)
    for i in range(50):
        c.send_message("t:r", i)
    c.close("bye")
    rec.wait_for("peng3dnet:server.connection.close")  # the event is immediate (network thread)
    cos = s.clients[cid]
    assert closed == [] and cos.state != STATE_CLOSED  # the application's close waits its turn
    n = [0]

    def step():
        n[0] += s.process()
        return closed

    wait_for(step, what="on_close")  # (the queued close may follow the event by a moment)
    assert n[0] == 50  # process() counts packets, not the close
    assert got == list(range(50))
    assert closed == [("bye", list(range(50)), True)]  # on_close after the handlers, client still known
    assert cid not in s.clients and cos.state == STATE_CLOSED


def test_an_unknown_invalid_action_raises(net, caplog):
    class Bogus(SmartPacket):
        state = 100  # never true here
        invalid_action = "explode"

    s, _ = net.server(process=False)
    s.register_packet("t:bogus", Bogus(s.registry, s))
    c = net.client(s, packets={"t:bogus": Bogus})
    (cid,) = active_cids(s)
    with pytest.raises(InvalidSmartPacketActionError):
        c.send_message("t:bogus", 1)  # sent (0.1.x), then the check's action raises to the sender
    with caplog.at_level("ERROR", logger="peng3dnet.user"):
        wait_for(lambda: s.process() == 1, what="the packet")
    assert any(r.exc_info and r.exc_info[0] is InvalidSmartPacketActionError for r in caplog.records)
    assert cid in s.clients and not c.closed  # reported, nothing closed


def test_strict_send_refuses_before_sending(net):
    got = []

    class LoggedIn(SmartPacket):
        state = STATE_LOGGEDIN

        def receive(self, msg, cid=None):
            got.append(msg)

    s, _ = net.server()
    s.register_packet("t:li", LoggedIn(s.registry, s))
    c = net.client(s, packets={"t:li": LoggedIn}, **{"net.smartpacket.strict_send": True})
    (cid,) = active_cids(s)
    with pytest.raises(peng3dnet.LocalProtocolError, match="strict_send"):
        c.send_message("t:li", "refused")
    with pytest.raises(peng3dnet.LocalProtocolError, match="strict_send"):
        c.call_async("t:li", "refused too")  # a call of it likewise (calls skipped the check)
    assert not c._calls._pending  # nothing sent, nothing waits
    c.remote_state = STATE_LOGGEDIN
    s.clients[cid].state = STATE_LOGGEDIN
    c.send_message("t:li", "sent")
    wait_for(lambda: got, what="delivery")
    assert got == ["sent"]


# --- ping ---------------------------------------------------------------------------


def test_ping_client_mixin_and_failed_ping(net):
    s = type("S", (PingableServerMixin, Server), {"pingdata": {"name": "p"}})(addr=("127.0.0.1", 0))
    net.servers.append(s)
    s.runAsync()

    class PC(PingableClientMixin, Client):
        pass

    pc = PC(addr=s.addr, conntype="ping")
    net.clients.append(pc)
    pc.setPingData({"who": "me"})
    pc.runAsync()
    pong = pc.wait_for_pong(10)
    assert pong["name"] == "p" and pong["oldmsg"]["who"] == "me" and pong["delay"] >= 0
    # A server that accepts and never answers: FailedPingError, a TimedOutError and a RuntimeError.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        with pytest.raises(FailedPingError) as ei:
            pingServer(addr=silent.getsockname(), timeout=0.3)
    assert isinstance(ei.value, TimedOutError) and isinstance(ei.value, RuntimeError)


def test_every_failed_ping_is_a_failed_ping_error(net):
    """0.1.x raised FailedPingError for every ping that failed (a server
    browser catches that one): a server that is not there, or that closes
    without a reply, too; each error is also the precise one."""
    from peng3dnet.errors import ConnectionClosedError, NetworkError, PingClosedError, PingUnreachableError

    with socket.socket() as gone:  # (bound, not listening: refused)
        gone.bind(("127.0.0.1", 0))
        with pytest.raises(FailedPingError) as ei:
            pingServer(addr=gone.getsockname(), timeout=5)
    assert type(ei.value) is PingUnreachableError and isinstance(ei.value, NetworkError)
    assert isinstance(ei.value, OSError) and ei.value.reason == "socketerror"
    assert isinstance(ei.value.__cause__, NetworkError) and "refused" in str(ei.value)
    s, _ = net.server(record=None)  # a classic-only server: no ping connection type
    del s.conntypes["ping"]
    with pytest.raises(FailedPingError) as ei:
        pingServer(addr=s.addr, timeout=5)
    assert type(ei.value) is PingClosedError and isinstance(ei.value, ConnectionClosedError)
    assert ei.value.reason == "unknownconntype"


def test_a_client_that_cannot_connect_raises_an_oserror():
    """The socket's error came through in 0.1.x (on its network thread, or
    to a program calling connect() itself): ``except OSError`` keeps working."""
    from peng3dnet.errors import NetworkError

    with socket.socket() as gone:
        gone.bind(("127.0.0.1", 0))
        c = Client(addr=gone.getsockname())
        with pytest.raises(OSError) as ei:
            c.connect()
    assert isinstance(ei.value, NetworkError) and isinstance(ei.value.__cause__, ConnectionRefusedError)


def test_packets_and_on_close_are_not_lost_when_the_loop_ends_after_the_process_thread(net):
    """A packet that the network thread queues after the process thread's
    last regular drain (the loop finishing its iteration during stop()),
    and the close queued behind it, are still handled."""
    go = threading.Event()
    handled, closed = [], []

    class Rec(Packet):
        def receive(self, msg, cid=None):
            handled.append(msg)

    class Cos(ClientOnServer):
        def on_close(self, reason=None):
            closed.append((reason, list(handled)))

    s, _ = net.server(process=False, record=None, clientcls=Cos, packets={"t:r": Rec})
    pthread = s.process_async()
    c = net.client(s, packets={"t:r": Packet})
    active_cids(s)
    in_recv = threading.Event()

    def hold(event, data):  # network thread, before the packet is queued
        in_recv.set()
        go.wait(10)

    peng3dnet.events.subscribe("peng3dnet:server.connection.recv", hold, sender=s)
    try:
        c.send_message("t:r", "late")
        assert in_recv.wait(10)
        s.stop()  # the process thread sees the stop now, with nothing queued yet
        pthread.join(0.5)  # (it may wait for the loop's end: that is the fix)
        go.set()  # the packet is queued now, then the loop closes the connection
        s.join(15)
        pthread.join(15)
    finally:
        go.set()
        peng3dnet.events.unsubscribe("peng3dnet:server.connection.recv", hold, sender=s)
    assert handled == ["late"]
    assert closed == [("servershutdown", ["late"])]
    assert not s.clients and not s.run


def test_a_raising_connection_type_closes_its_connection_only(net, caplog):
    from peng3dnet.conntypes import ConnectionType

    class Broken(ConnectionType):
        def receive(self, msg, pid, flags, cid):
            raise ZeroDivisionError("a bug in the program's connection type")

    s, rec = net.server(record="peng3dnet:server.connection.close")
    s.addConnType("broken", Broken(s))
    good = net.client(s)
    bad = Client(addr=s.addr, conntype="broken")
    bad.addConnType("broken", ConnectionType(bad))
    net.clients.append(bad)
    bad.runAsync()
    wait_for(lambda: any(c.conntype == "broken" for c in s.clients.values()), what="broken connection")
    with caplog.at_level("ERROR", logger="peng3dnet.user"):
        bad.send_raw(None, 64, {"x": 1})
        (d,) = rec.wait_for("peng3dnet:server.connection.close")
    assert d["reason"] == "conntypeerror"
    assert any(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in caplog.records)
    good.send_message("test:echo", "still served")
    assert good.registry.get_obj("test:echo").wait_count(1) == ["still served"]


def test_a_smartpacket_whose_check_cannot_be_observed_is_not_queued(net):
    class Quiet(SmartPacket):  # no receive, ignores invalid packets: nothing to do
        state = 100

    class Strict(SmartPacket):  # no receive, but closes on an invalid packet: must be checked
        state = 100
        invalid_action = "close"

    s, rec = net.server(process=False, record="peng3dnet:server.connection.close")
    s.register_packet("t:quiet", Quiet(s.registry, s))
    s.register_packet("t:strict", Strict(s.registry, s))
    c = net.client(s, packets={"t:quiet": Packet, "t:strict": Packet})
    active_cids(s)
    c.send_message("t:quiet", 1)
    c.send_message("t:strict", 2)
    n = wait_for(lambda: s.process(), what="the strict packet")
    assert n == 1  # only t:strict was queued
    (d,) = rec.wait_for("peng3dnet:server.connection.close")
    assert d["reason"] == "smartpacketinvalid"


def test_a_base_exception_in_a_handler_is_reported_and_stops_cleanly(net, caplog):
    class Exit(Packet):
        def receive(self, msg, cid=None):
            raise SystemExit(msg)

    # process() on the program's own (main) thread: it propagates
    s, _ = net.server(process=False, record=None)
    s.register_packet("t:exit", Exit(s.registry, s))
    c = net.client(s, packets={"t:exit": Packet})
    active_cids(s)
    c.send_message("t:exit", 3)
    with pytest.raises(SystemExit):
        wait_for(lambda: s.process(), what="the packet")
    # on the process thread: reported with its traceback, the server stops cleanly
    s2, rec = net.server(record="peng3dnet:server.*")
    s2.register_packet("t:exit", Exit(s2.registry, s2))
    c2 = net.client(s2, packets={"t:exit": Packet})
    active_cids(s2)
    with caplog.at_level("ERROR", logger="peng3dnet.user"):
        c2.send_message("t:exit", 4)
        (d,) = rec.wait_for("peng3dnet:server.connection.close")
        rec.wait_for("peng3dnet:server.stop")
    assert d["reason"] == "servershutdown"
    c2.wait_for_close(10)
    assert c2.close_reason == "servershutdown"
    assert any(r.exc_info and r.exc_info[0] is SystemExit for r in caplog.records)
    s2.join(10)
    # The process thread drains what the loop queued while closing (the
    # close, behind the packets): then nothing waits and run is False.
    wait_for(lambda: not s2.run, what="run False once the process thread drained")


def test_ctrl_c_in_a_handler_on_the_main_thread_propagates_without_a_report(net, caplog):
    """Ctrl-C while the main thread runs a handler (a game processing its
    packets from its frame loop): KeyboardInterrupt reaches the program,
    with no 'handler raised' traceback; a SystemExit is still reported."""
    class Interrupted(Packet):
        def receive(self, msg, cid=None):
            raise KeyboardInterrupt if msg == "int" else SystemExit(msg)

    s, _ = net.server(process=False, record=None)
    s.register_packet("t:int", Interrupted(s.registry, s))
    c = net.client(s, packets={"t:int": Packet})
    active_cids(s)
    with caplog.at_level("ERROR", logger="peng3dnet.user"):
        c.send_message("t:int", "int")
        with pytest.raises(KeyboardInterrupt):
            wait_for(lambda: s.process(), what="the packet")
        assert not [r for r in caplog.records if r.name == "peng3dnet.user"]
        c.send_message("t:int", "exit")
        with pytest.raises(SystemExit):
            wait_for(lambda: s.process(), what="the packet")
        assert [r.exc_info[0] for r in caplog.records if r.name == "peng3dnet.user"] == [SystemExit]
