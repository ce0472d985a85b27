"""Every name and value that ../shared/COMPAT.md lists, in every module it
lists, checked in a fresh interpreter (so "reachable after ``import
peng3dnet`` alone" means exactly that)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO

CONSTANTS = {
    "STATE_INIT": 0,
    "STATE_HANDSHAKE_WAIT1": 1,
    "STATE_HANDSHAKE_WAIT2": 2,
    "STATE_WAITTYPE": 3,
    "STATE_HELLOWAIT": 4,
    "STATE_ACTIVE": 64,
    "STATE_LOGGEDIN": 65,
    "STATE_CLOSED": 128,
    "MODE_NOTSET": 0,
    "MODE_CLOSED": 1,
    "MODE_PING": 2,
    "MODE_PLAY": 3,
    "MODE_CHAT": 4,
    "CONNTYPE_NOTSET": "_notset",
    "CONNTYPE_CLASSIC": "classic",
    "CONNTYPE_PING": "ping",
    "FLAG_COMPRESSED": 1,
    "FLAG_ENCRYPTED_AES": 2,
    "SIDE_CLIENT": 0,
    "SIDE_SERVER": 1,
    "SSLSEC_NONE": 0,
    "SSLSEC_WRAPPED": 1,
    "SSLSEC_ENCRYPTED": 2,
    "SSLSEC_SERVERAUTH": 3,
    "SSLSEC_BOTHAUTH": 4,
    "MAX_PACKETLENGTH": 2**32 - 1,
    "STRUCT_FORMAT_HEADER": "!IH",
    "STRUCT_FORMAT_LENGTH32": "!I",
}

# Modules that expose the constants (COMPAT.md section 1).
CONSTANT_MODULES = ["peng3dnet", "peng3dnet.net", "peng3dnet.packet", "peng3dnet.conntypes", "peng3dnet.ext.ping",
                    "peng3dnet.constants"]

ERRORS = {  # class: bases that must be in its MRO
    "RegistryError": ["ValueError"],
    "AlreadyRegisteredError": ["RegistryError", "ValueError"],
    "InvalidAddressError": ["ValueError"],
    "InvalidHostError": ["InvalidAddressError", "ValueError"],
    "InvalidPortError": ["InvalidAddressError", "ValueError"],
    "UnsupportedAddressError": ["NotImplementedError"],
    "InvalidSmartPacketActionError": ["ValueError"],
    "TimedOutError": ["RuntimeError"],
    "FailedPingError": ["TimedOutError", "RuntimeError"],
}

PACKAGE_NAMES = [  # reachable as peng3dnet.X after `import peng3dnet` alone, and by `from peng3dnet import *`
    "Server", "Client", "ClientOnServer", "PacketRegistry", "BaseRegistry", "ConnectionType",
    "ClassicConnectionType", "PingConnectionType", "PROTOVERSION", "VERSION", "RELEASE", "DEFAULT_CONFIG",
    "parse_address", "normalize_addr_socketstyle", "normalize_addr_formatted", "STRUCT_HEADER", "STRUCT_LENGTH32",
    *ERRORS, *CONSTANTS,
]
NET_MODULE_ATTRS = ["packet", "registry", "conntypes", "errors", "util", "version"]


def probe(code: str) -> dict:
    """Run ``code`` in a fresh interpreter (ours first on the path); it
    prints one JSON value."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": REPO, "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def fresh() -> dict:
    return probe(r"""
import json, sys
import peng3dnet
res = {"pkg": {}, "mods": {}, "net_mods": {}, "errors": {}, "ping": {}}
for n in %(names)r:
    res["pkg"][n] = hasattr(peng3dnet, n)
res["ext_ping"] = hasattr(peng3dnet, "ext") and hasattr(peng3dnet.ext, "ping") and \
    hasattr(peng3dnet.ext.ping, "PingableServerMixin")
for n in %(netmods)r:
    res["net_mods"][n] = getattr(peng3dnet.net, n, None) is sys.modules.get("peng3dnet." + n)
res["net_packet_Packet"] = peng3dnet.net.packet.Packet is peng3dnet.packet.Packet
for m in %(cmods)r:
    mod = sys.modules[m]
    res["mods"][m] = {c: getattr(mod, c, "<missing>") for c in %(consts)r}
for e in %(errs)r:
    cls = getattr(peng3dnet.errors, e)
    res["errors"][e] = [b.__name__ for b in cls.__mro__]
ns = {}
exec("from peng3dnet import *", ns)
res["star"] = {n: n in ns for n in %(names)r}
for n in ("PingableServerMixin", "PingableClientMixin", "PingConnectionType", "pingServer"):
    res["ping"][n] = hasattr(peng3dnet.ext.ping, n)
res["pyglet_loaded"] = "pyglet" in sys.modules or "peng3d" in sys.modules
print(json.dumps(res))
""" % {"names": PACKAGE_NAMES, "netmods": NET_MODULE_ATTRS, "cmods": CONSTANT_MODULES,
       "consts": list(CONSTANTS), "errs": list(ERRORS)})


@pytest.mark.parametrize("name", PACKAGE_NAMES)
def test_name_reachable_from_the_package_and_star_import(fresh, name):
    assert fresh["pkg"][name], f"peng3dnet.{name} missing after `import peng3dnet`"
    assert fresh["star"][name], f"`from peng3dnet import *` does not give {name}"


def test_ext_ping_and_net_modules_reachable_without_further_imports(fresh):
    assert fresh["ext_ping"]
    assert all(fresh["ping"].values()), fresh["ping"]
    assert fresh["net_mods"] == dict.fromkeys(NET_MODULE_ATTRS, True)
    assert fresh["net_packet_Packet"]
    assert fresh["pyglet_loaded"] is False  # and the core still imports no pyglet/peng3d


@pytest.mark.parametrize("module", CONSTANT_MODULES)
@pytest.mark.parametrize("name", list(CONSTANTS))
def test_constant_value_in_every_module(fresh, module, name):
    assert fresh["mods"][module][name] == CONSTANTS[name], f"{module}.{name}"


@pytest.mark.parametrize("name", list(ERRORS))
def test_error_class_bases(fresh, name):
    mro = fresh["errors"][name]
    for base in ERRORS[name]:
        assert base in mro, f"{name} must derive from {base}: {mro}"
    assert "Peng3dNetError" in mro  # ours: one base for everything the library raises


def test_the_protocol_state_never_equals_an_application_state():
    from peng3dnet.protocol.handshake import HandshakeState

    for member in HandshakeState:
        assert all(member != v for v in CONSTANTS.values()), member


def test_added_names_do_not_reuse_state_and_mode_values():
    import peng3dnet.constants as c

    for prefix, listed in (("STATE_", "STATE"), ("MODE_", "MODE")):
        values = [getattr(c, n) for n in dir(c) if n.startswith(prefix)]
        assert len(values) == len(set(values)), f"two {listed} names share a value"
        extra = {n for n in dir(c) if n.startswith(prefix)} - set(CONSTANTS)
        assert not extra, f"names that COMPAT.md does not list: {extra}"
