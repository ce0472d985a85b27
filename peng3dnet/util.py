"""Helpers: address parsing and layered configuration."""

from __future__ import annotations

import difflib
import ipaddress
import logging
import os
import warnings
from collections.abc import Mapping
from typing import Any

from .constants import DEFAULT_CONFIG
from .errors import InvalidAddressError, InvalidPortError

__all__ = [
    "parse_address",
    "normalize_addr_socketstyle",
    "normalize_addr_formatted",
    "ConfigView",
    "ConfigWarning",
    "address_group",
]

_DEFAULT_PORT = 8080


def address_group(host: str, ipv6_prefix: int = 64) -> str:
    """The group a peer's address counts in for per-address limits: an
    IPv4 address itself (also when IPv4-mapped, ``::ffff:a.b.c.d``), an
    IPv6 address's network of ``ipv6_prefix`` bits (one host usually owns a
    whole /64).  Anything that is not an IP address is its own group.

    >>> address_group("2001:db8::1") == address_group("2001:db8::ffff:1")
    True
    """
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, ipv6_prefix), strict=False))
    return str(ip)

log = logging.getLogger(__name__)


def _parse_port(port: Any) -> int:
    if isinstance(port, bool):
        raise InvalidPortError(f"invalid port {port!r}")
    try:
        value = int(port)
    except (TypeError, ValueError):
        raise InvalidPortError(f"invalid port {port!r}: not an integer") from None
    if not 0 <= value <= 65535:
        raise InvalidPortError(f"port {value} out of range 0..65535")
    return value


def parse_address(addr: Any, default_port: int | None = _DEFAULT_PORT) -> tuple[Any, ...]:
    """Parse an address into ``(host, port)`` (the 0.1.x name; the same as
    :func:`normalize_addr_socketstyle`).

    Raises:
        InvalidPortError: The port is not an int in 0..65535 (or is empty after ``:``).
        InvalidAddressError: The address cannot be parsed.
    """
    return normalize_addr_socketstyle(addr, default_port)


def normalize_addr_formatted(addr: Any, default_port: int | None = _DEFAULT_PORT) -> str:
    """Format an address as ``"host:port"`` (``"[v6addr]:port"`` for IPv6).

    Raises:
        InvalidAddressError: As :func:`normalize_addr_socketstyle`.
    """
    host, port = normalize_addr_socketstyle(addr, default_port)[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def normalize_addr_socketstyle(addr: Any, default_port: int | None = _DEFAULT_PORT) -> tuple[Any, ...]:
    """Turn an address into the tuple form ``socket`` functions take.

    Accepted forms: ``(host, port)``, an IPv6 ``(host, port, flowinfo,
    scope_id)`` tuple, ``"host"``, ``"host:port"``, ``"[v6addr]"``,
    ``"[v6addr]:port"`` and a bare IPv6 address such as ``"::1"``.  An empty
    host (``""``, ``":8080"``, ``("", 8080)``) means every interface to a
    server, as in 0.1.x.

    Args:
        addr: The address.
        default_port: Port used when ``addr`` gives none (8080 as in 0.1.x;
            ``None``: a port is required).

    Returns:
        ``(host, port)``, or the 4-tuple for an IPv6 tuple input.

    Raises:
        InvalidPortError: The port is not an int in 0..65535 (or is empty after ``:``).
        InvalidAddressError: The address cannot be parsed, or has no port and
            no default was given.
    """
    if isinstance(addr, (tuple, list)):
        if len(addr) not in (2, 4) or not isinstance(addr[0], str):
            raise InvalidAddressError(f"invalid address tuple {addr!r}")
        return (addr[0], _parse_port(addr[1]), *addr[2:])
    if not isinstance(addr, str):
        raise InvalidAddressError(f"invalid address {addr!r}")
    port: Any = None
    if addr.startswith("["):
        end = addr.find("]")
        if end < 0:
            raise InvalidAddressError(f"unterminated '[' in address {addr!r}")
        host = addr[1:end]
        rest = addr[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise InvalidAddressError(f"garbage after ']' in address {addr!r}")
            port = rest[1:]
    elif addr.count(":") > 1:
        host = addr  # a bare IPv6 address
    elif ":" in addr:
        host, port = addr.split(":", 1)
    else:
        host = addr
    if port == "":
        raise InvalidPortError(f"empty port in address {addr!r}")
    if port is None:
        if default_port is None:
            raise InvalidAddressError(f"address {addr!r} has no port and there is no default")
        port = default_port
    return (host, _parse_port(port))


class ConfigView(Mapping[str, Any]):
    """Read-only layered config: overrides, then a peng3d config, then defaults.

    Args:
        overrides: The ``cfg`` dict given to a Server or Client.
        peng: A ``peng3d.Peng`` whose ``cfg`` is consulted (live: a later
            change of the peng's config is seen), or ``None``.

    Thread safety: reads from any thread.
    """

    def __init__(self, overrides: Mapping[str, Any] | None = None, peng: Any = None) -> None:
        self.overrides: dict[str, Any] = dict(overrides or {})
        """The user's overrides (change them with ``cfg[key] = value``)."""
        self.on_change: Any = None
        """Called with no arguments after ``cfg[key] = value`` (the owning peer
        refreshes its cached copies of hot keys)."""
        self.server = False
        """Whether a server owns it: a change is also checked against the
        server's rules of :func:`check_config` (set by the owner)."""
        self._pengcfg = getattr(peng, "cfg", None) if peng is not None else None
        for key in self.overrides:
            _check_key(key, 5)  # _check_key < ConfigView < Peer < Server/Client < the program

    def __getitem__(self, key: str) -> Any:
        if key in self.overrides:
            return self.overrides[key]
        if self._pengcfg is not None:
            try:
                return self._pengcfg[key]
            except KeyError:
                pass
        return DEFAULT_CONFIG[key]

    def __setitem__(self, key: str, value: Any) -> None:
        _check_key(key, 3)
        check_value(key, value)
        if self.server and key in _READ_TOTAL_KEYS:
            _check_read_total(value if key == _READ_TOTAL_KEYS[0] else self[_READ_TOTAL_KEYS[0]],
                              value if key == _READ_TOTAL_KEYS[1] else self[_READ_TOTAL_KEYS[1]])
        self.overrides[key] = value
        if self.on_change is not None:
            self.on_change()

    def __iter__(self) -> Any:
        keys = dict.fromkeys(DEFAULT_CONFIG)
        keys.update(dict.fromkeys(self.overrides))
        return iter(keys)

    def __len__(self) -> int:
        return len(set(DEFAULT_CONFIG) | set(self.overrides))


_CHOICES: dict[str, tuple[Any, ...]] = {
    "net.events.enable": (True, False, "auto"),
    "net.limits.rate.action": ("throttle", "close", "drop"),
    "net.limits.write_buffer_action": ("close", "raise"),
    "net.registry.missingpacketaction": ("closeconnection", "ignore"),
}
_MIN: dict[str, int] = {"net.limits.recv_queue": 1, "net.limits.recv_queue_bytes": 0, "net.limits.recv_queue_total": 0}
"""Keys whose values have a floor (a queue of no packets would never be read)."""
_ANY = frozenset({"net.auth.credentials"})  # any msgpack value (checked by the Client)
_ADDRESSES = frozenset({"net.server.addr", "net.client.addr"})


def check_value(key: str, value: Any) -> None:
    """Raise :class:`~peng3dnet.errors.ConfigError` when ``value`` cannot
    be right for ``key``: the type of its default (an int where an int is
    expected, a number where a float is, a bool, a str; a path or ``None``
    where the default is ``None``), or one of its allowed values.  Keys
    peng3dnet does not know are not checked."""
    from .errors import ConfigError

    if key not in DEFAULT_CONFIG or key in _ANY:
        return
    choices = _CHOICES.get(key)
    if choices is not None:
        if not any(value is c or (type(value) is type(c) and value == c) for c in choices):
            raise ConfigError(f"config {key} = {value!r}: must be one of {', '.join(map(repr, choices))}")
        return
    default = DEFAULT_CONFIG[key]
    if key in _ADDRESSES:
        ok = value is None or isinstance(value, (str, tuple, list))
        want = 'None, "host:port" or (host, port)'
    elif default is None:
        ok = value is None or isinstance(value, (str, os.PathLike))
        want = "None or a path"
    elif isinstance(default, bool):
        ok = isinstance(value, bool)
        want = "True or False"
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
        want = "an int"
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        want = "a number"
    elif isinstance(default, str):
        ok = isinstance(value, str)
        want = "a str"
    else:
        return
    if not ok:
        raise ConfigError(f"config {key} = {value!r} ({type(value).__name__}): must be {want}")
    floor = _MIN.get(key)
    if floor is not None and value < floor:
        raise ConfigError(f"config {key} = {value!r}: must be at least {floor}")


def check_config(cfg: Mapping[str, Any], server: bool = False) -> None:
    """:func:`check_value` for every key peng3dnet knows, as ``cfg`` layers
    them (overrides, a Peng's config, defaults); for a ``server``, also
    that ``net.limits.read_buffer_total`` (when on) holds a packet of
    ``net.limits.max_packet_size``: one that large could never arrive."""
    for key in DEFAULT_CONFIG:
        check_value(key, cfg[key])
    if server:
        _check_read_total(cfg[_READ_TOTAL_KEYS[0]], cfg[_READ_TOTAL_KEYS[1]])


_READ_TOTAL_KEYS = ("net.limits.read_buffer_total", "net.limits.max_packet_size")


def _check_read_total(total: int, size: int) -> None:
    """A server's ``net.limits.read_buffer_total`` (when on) must hold a
    packet of ``net.limits.max_packet_size``."""
    from .errors import ConfigError

    if 0 < total < size:
        raise ConfigError(f"config net.limits.read_buffer_total = {total!r}: must be 0 (off) or at least "
                          f"net.limits.max_packet_size ({size!r}), or a packet that large could never arrive")


class ConfigWarning(UserWarning):
    """A config key given to a Server or Client is not known to peng3dnet."""


def _check_key(key: Any, stacklevel: int) -> None:
    """Warn about a ``net.*`` key nobody reads (a typo would otherwise be
    silently ignored).  Keys outside ``net.`` belong to the application or
    to peng3d and are not checked."""
    if isinstance(key, str) and key.startswith("net.") and key not in DEFAULT_CONFIG:
        close = difflib.get_close_matches(key, list(DEFAULT_CONFIG), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        warnings.warn(f"unknown peng3dnet config key {key!r}{hint}", ConfigWarning, stacklevel=stacklevel)
