"""Pins the public names (a rename is a breaking change)."""

from __future__ import annotations

import inspect

import pytest

import peng3dnet
from peng3dnet import constants, net
from peng3dnet.ext import ping

SERVER_API = {
    "addConnType": "(t, obj)",
    "bind": "()",
    "close_connection": "(cid, reason=None)",
    "genCID": "()",
    "initialize": "()",
    "interrupt": "()",
    "join": "(timeout=None)",
    "process": "(wait=False, timeout=None)",
    "process_async": "()",
    "process_forever": "()",
    "process_single_packet": "(client)",
    "receive_data": "(data, cid)",
    "receive_packet": "(data, cid)",
    "register_packet": "(name, obj, n=None)",
    "runAsync": "(selector=<class 'selectors.EpollSelector'>)",
    "runBlocking": "(selector=<class 'selectors.EpollSelector'>)",
    "sendEvent": "(event, data=None)",
    "send_message": "(ptype, data, cid)",
    "shutdown": "(join=True, timeout=0, reason='servershutdown')",
    "stop": "()",
    # additions of ours (keyword-compatible, documented in the README)
    "broadcast": "(ptype, data, cids=None)",
    "send_encoded": "(ptype, body, cid)",
    "send_raw": "(cid, pid, msg)",
    "begin_handshake": "(cid)",
}
CLIENT_API = {
    "addConnType": "(t, obj)",
    "close": "(reason=None)",
    "close_connection": "(cid=None, reason=None)",
    "connect": "()",
    "initialize": "()",
    "interrupt": "()",
    "join": "(timeout=None)",
    "on_close": "(reason=None)",
    "on_connect": "()",
    "on_handshake_complete": "()",
    "on_receive": "(pid, msg)",
    "on_send": "(ptype, data)",
    "process": "(wait=False, timeout=None)",
    "process_async": "()",
    "process_forever": "()",
    "process_single_packet": "(client=None)",
    "pump_write_buffer": "()",
    "receive_data": "(data, cid=None)",
    "receive_packet": "(data, cid=None)",
    "register_packet": "(name, obj, n=None)",
    "runAsync": "(selector=<class 'selectors.EpollSelector'>)",
    "runBlocking": "(selector=<class 'selectors.EpollSelector'>)",
    "sendEvent": "(event, data=None)",
    "send_message": "(ptype, data, cid=None)",
    "stop": "()",
    "wait_for_connection": "(timeout=None)",
    "wait_for_close": "(timeout=None)",
    # additions of ours
    "attach": "(loop)",
    "send_raw": "(cid, pid, msg)",
}


def sig(func) -> str:
    s = inspect.signature(func)
    params = [p for name, p in s.parameters.items() if name != "self"]
    return str(s.replace(parameters=params, return_annotation=inspect.Signature.empty)).replace("'", "'")


def strip_annotations(func) -> str:
    s = inspect.signature(func)
    params = [
        p.replace(annotation=inspect.Parameter.empty) for name, p in s.parameters.items() if name != "self"
    ]
    return str(s.replace(parameters=params, return_annotation=inspect.Signature.empty))


def test_server_methods():
    for name, expected in SERVER_API.items():
        assert strip_annotations(getattr(net.Server, name)) == expected, name


def test_client_methods():
    for name, expected in CLIENT_API.items():
        assert strip_annotations(getattr(net.Client, name)) == expected, name


def test_constructors():
    # The 0.1.x parameters in their order; ours come after them, with defaults.
    assert strip_annotations(net.Server.__init__) == "(peng=None, addr=None, clientcls=None, cfg=None, authenticate=None)"
    assert strip_annotations(net.Client.__init__).startswith("(peng=None, addr=None, cfg=None, conntype='classic', credentials=")
    assert strip_annotations(net.ClientOnServer.__init__) == "(server, conn, addr, cid)"
    for name in ("close", "on_close", "on_connect", "on_handshake_complete"):
        assert hasattr(net.ClientOnServer, name)
    assert strip_annotations(ping.pingServer).startswith("(peng=None, addr=None, cfg=None, data=None, clientcls=")


def test_structs_and_constants():
    assert net.STRUCT_HEADER.format == "!IH" and net.STRUCT_LENGTH32.format == "!I"
    assert peng3dnet.PROTOVERSION == 2
    for name in ("CONNTYPE_CLASSIC", "CONNTYPE_PING", "CONNTYPE_NOTSET", "STATE_ACTIVE", "MODE_PING",
                 "SIDE_SERVER", "SIDE_CLIENT", "SSLSEC_NONE", "SSLSEC_BOTHAUTH", "FLAG_COMPRESSED", "DEFAULT_CONFIG",
                 "STRUCT_FORMAT_HEADER", "STRUCT_FORMAT_LENGTH32"):
        assert hasattr(constants, name), name
    assert constants.CONNTYPE_CLASSIC == "classic" and constants.CONNTYPE_PING == "ping"


def test_network_loop():
    assert strip_annotations(net.NetworkLoop.add) == "(client)"
    assert strip_annotations(net.NetworkLoop.start).startswith("(selector=")


def test_package_exports():
    for name in peng3dnet.__all__:
        assert hasattr(peng3dnet, name), name


def test_the_public_classes_take_the_parameters_of_the_classes_they_extend():
    """net.Server/net.Client repeat their base's __init__ parameters (so
    inspect.signature() reads them in the compiled build too): a parameter
    added to the base must be added here as well."""
    from peng3dnet import client as client_mod
    from peng3dnet import server as server_mod

    def params(func):
        return [(p.name, p.kind, p.default) for p in inspect.signature(func).parameters.values()]

    for public, base in ((net.Server, server_mod.Server), (net.Client, client_mod.Client)):
        assert public.__mro__[1] is base
        assert params(public.__init__) == params(base.__init__), public
    assert net.ClientOnServer.__mro__[1] is server_mod.ClientOnServer and "__init__" not in vars(net.ClientOnServer)
    assert net.Server(cfg={"net.server.addr": ("127.0.0.1", 0)}).clientcls is net.ClientOnServer
    assert net.Server.is_server is True and net.Server.is_client is False and net.Client.is_client is True
    assert (net.Server.side, net.Client.side) == (peng3dnet.SIDE_SERVER, peng3dnet.SIDE_CLIENT)


def test_redis_presence_is_importable_from_the_rooms_package_on_demand():
    import peng3dnet.ext.rooms as rooms
    from peng3dnet.ext.rooms import RedisPresence, redispresence

    assert RedisPresence is redispresence.RedisPresence and issubclass(RedisPresence, rooms.Presence)
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        rooms.Nope  # noqa: B018
