from __future__ import annotations

import pytest

from peng3dnet.errors import AlreadyRegisteredError, InvalidAddressError, RegistryError
from peng3dnet.net import Client, Server
from peng3dnet.registry import PacketRegistry
from peng3dnet.util import ConfigView, normalize_addr_socketstyle


@pytest.mark.parametrize(
    "addr,expected",
    [
        (("h", 1), ("h", 1)),
        (["h", "2"], ("h", 2)),
        ("host:80", ("host", 80)),
        ("host", ("host", 9)),
        ("[::1]:5", ("::1", 5)),
        ("[::1]", ("::1", 9)),
        ("::1", ("::1", 9)),
        ("fe80::1%eth0", ("fe80::1%eth0", 9)),
        (("::1", 5, 0, 0), ("::1", 5, 0, 0)),
    ],
)
def test_normalize(addr, expected):
    assert normalize_addr_socketstyle(addr, 9) == expected


@pytest.mark.parametrize("addr", ["host:", "host:x", "host:70000", "[::1", "[::1]x", "[::1]:", ("h",), (1, 2), None])
def test_normalize_invalid(addr):
    with pytest.raises(InvalidAddressError):
        normalize_addr_socketstyle(addr, 9)


def test_normalize_default_port_is_8080_and_none_requires_a_port():
    assert normalize_addr_socketstyle("host") == ("host", 8080)  # 0.1.x default
    with pytest.raises(InvalidAddressError):
        normalize_addr_socketstyle("host", None)
    with pytest.raises(ValueError):  # InvalidAddressError is a ValueError
        normalize_addr_socketstyle("host:-1")


def test_addr_resolution_from_config():
    assert Server(cfg={"net.server.addr.host": "127.0.0.2", "net.server.addr.port": 7}).addr == ("127.0.0.2", 7)
    assert Server(cfg={"net.server.addr": "a:1"}).addr == ("a", 1)
    assert Server(cfg={"net.server.addr": "a", "net.server.addr.port": 3}).addr == ("a", 3)
    assert Server(addr="b", cfg={"net.server.addr.port": 4}).addr == ("b", 4)
    assert Client(cfg={"net.client.addr.host": "c", "net.client.addr.port": 5}).addr == ("c", 5)


class FakePengCfg:
    def __init__(self):
        self.d = {"net.compress.level": 1}

    def __getitem__(self, k):
        return self.d[k]


class FakePeng:
    def __init__(self):
        self.cfg = FakePengCfg()


def test_config_layering_sees_peng_changes():
    peng = FakePeng()
    cfg = ConfigView({"net.compress.threshold": 5}, peng)
    assert cfg["net.compress.threshold"] == 5
    assert cfg["net.compress.level"] == 1
    peng.cfg.d["net.compress.level"] = 9
    assert cfg["net.compress.level"] == 9
    assert cfg["net.compress.enabled"] is True
    with pytest.raises(KeyError):
        cfg["no.such.key"]


def test_registry():
    r = PacketRegistry()
    ybj = object()
    assert r.register("X", "a:x") == 64
    assert r.register(ybj, "a:y", 70) == 70
    assert r.register("Z", "a:z") == 65
    with pytest.raises(AlreadyRegisteredError):
        r.register(1, "a:x")
    with pytest.raises(AlreadyRegisteredError):
        r.register(1, "a:w", 70)
    with pytest.raises(RegistryError):
        r.register(1, "")
    with pytest.raises(RegistryError):
        r.register(1, "a:v", -1)
    assert r.get_id("a:y") == 70 and r.get_name(64) == "a:x" and r.get_obj("a:z") == "Z"
    assert r.get_id(ybj) == 70  # object lookup
    with pytest.raises(RegistryError):
        r.get_id(99)
    r.remap({"a:x": 70, "a:y": 64, "other": 65})
    assert r.get_id("a:x") == 70 and r.get_id("a:y") == 64
    assert r.get_id("a:z") not in (64, 65, 70)  # ours only, moved off taken ids
    assert len(r) == 3 and "a:z" in r and "other" not in r


# --- config values are type-checked when the peer is made -------------------------------------

import pytest as _pytest  # noqa: E402

from peng3dnet.errors import ConfigError  # noqa: E402


@_pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("net.limits.max_clients", "many", "must be an int"),
        ("net.limits.max_clients", 2048.0, "must be an int"),
        ("net.limits.max_clients", True, "must be an int"),
        ("net.timeout.handshake", "10", "must be a number"),
        ("net.heartbeat.enabled", 1, "must be True or False"),
        ("net.compress.enabled", "yes", "must be True or False"),
        ("net.limits.rate.action", "block", "must be one of 'throttle', 'close', 'drop'"),
        ("net.events.enable", "on", "must be one of True, False, 'auto'"),
        ("net.ssl.cafile", 5, "must be None or a path"),
        ("net.server.addr", 8080, "must be None"),
        ("net.registry.missingpacketaction", "drop", "must be one of"),
        ("net.limits.recv_queue", 0, "must be at least 1"),
        ("net.limits.recv_queue_bytes", -1, "must be at least 0"),
    ],
)
def test_a_wrong_value_fails_at_creation_naming_the_key(key, value, message):
    from peng3dnet.net import Client, Server

    for make in (lambda: Server(addr=("127.0.0.1", 0), cfg={key: value}), lambda: Client(addr=("127.0.0.1", 1), cfg={key: value})):
        with _pytest.raises(ConfigError, match=f"^config {key} = {value!r}") as ei:
            make()
        assert message in str(ei.value) and isinstance(ei.value, ValueError)


def test_a_read_buffer_total_below_the_packet_size_fails_on_a_server_only():
    from peng3dnet.net import Client, Server

    small = {"net.limits.max_packet_size": 1024 * 1024, "net.limits.read_buffer_total": 1024 * 1024 - 1}
    with _pytest.raises(ConfigError, match=r"^config net.limits.read_buffer_total = 1048575: must be 0 \(off\) "
                                           r"or at least net.limits.max_packet_size \(1048576\)"):
        Server(addr=("127.0.0.1", 0), cfg=small)
    Client(addr=("127.0.0.1", 1), cfg=small)  # (not used by a client)
    for fine in ({**small, "net.limits.read_buffer_total": 1024 * 1024}, {**small, "net.limits.read_buffer_total": 0}):
        assert Server(addr=("127.0.0.1", 0), cfg=fine).cfg["net.limits.read_buffer_total"] == fine[
            "net.limits.read_buffer_total"]



def test_a_later_change_that_breaks_the_read_total_rule_fails_on_a_server_only():
    from peng3dnet.net import Client, Server

    s = Server(addr=("127.0.0.1", 0), cfg={"net.limits.max_packet_size": 1024 * 1024})
    with _pytest.raises(ConfigError, match=r"^config net.limits.read_buffer_total = 1048575: must be 0"):
        s.cfg["net.limits.read_buffer_total"] = 1024 * 1024 - 1
    with _pytest.raises(ConfigError, match=r"\(2097152\), or a packet that large could never arrive"):
        s.cfg["net.limits.read_buffer_total"] = 1024 * 1024
        s.cfg["net.limits.max_packet_size"] = 2 * 1024 * 1024  # (the other key of the pair)
    assert s.cfg["net.limits.max_packet_size"] == 1024 * 1024  # refused: not set
    s.cfg["net.limits.read_buffer_total"] = 0  # off: any packet size
    s.cfg["net.limits.max_packet_size"] = 2 * 1024 * 1024
    c = Client(addr=("127.0.0.1", 1))
    c.cfg["net.limits.read_buffer_total"] = 1  # (not used by a client)


def test_right_values_pass_and_setting_a_key_is_checked():
    from peng3dnet.net import Server

    s = Server(addr=("127.0.0.1", 0), cfg={
        "net.timeout.handshake": 5,  # an int where a float is the default: fine
        "net.events.enable": "auto", "net.ssl.cafile": None, "net.server.addr": ("127.0.0.1", 0),
        "net.auth.credentials": {"anything": [1, 2]}, "net.limits.rate.action": "drop",
    })
    with _pytest.raises(ConfigError, match="net.limits.recv_queue"):
        s.cfg["net.limits.recv_queue"] = "big"
    s.cfg["net.limits.recv_queue"] = 10
    assert s.cfg["net.limits.recv_queue"] == 10
