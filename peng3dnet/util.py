"""Helpers: address parsing and layered configuration."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from .constants import DEFAULT_CONFIG
from .errors import InvalidAddressError

__all__ = ["normalize_addr_socketstyle", "ConfigView"]

log = logging.getLogger(__name__)


def _parse_port(port: Any) -> int:
    if isinstance(port, bool):
        raise InvalidAddressError(f"invalid port {port!r}")
    try:
        value = int(port)
    except (TypeError, ValueError):
        raise InvalidAddressError(f"invalid port {port!r}") from None
    if not 0 <= value <= 65535:
        raise InvalidAddressError(f"port {value} out of range 0..65535")
    return value


def normalize_addr_socketstyle(addr: Any, default_port: int | None = None) -> tuple[Any, ...]:
    """Turn an address into the tuple form ``socket`` functions take.

    Accepted forms: ``(host, port)``, an IPv6 ``(host, port, flowinfo,
    scope_id)`` tuple, ``"host"``, ``"host:port"``, ``"[v6addr]"``,
    ``"[v6addr]:port"`` and a bare IPv6 address such as ``"::1"``.

    Args:
        addr: The address.
        default_port: Port used when ``addr`` gives none.

    Returns:
        ``(host, port)``, or the 4-tuple for an IPv6 tuple input.

    Raises:
        InvalidAddressError: The address cannot be parsed, or has no port and
            no default was given.
    """
    if isinstance(addr, (tuple, list)):
        if len(addr) not in (2, 4) or not isinstance(addr[0], str):
            raise InvalidAddressError(f"invalid address tuple {addr!r}")
        return (addr[0], _parse_port(addr[1]), *addr[2:])
    if not isinstance(addr, str) or not addr:
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
    if not host:
        raise InvalidAddressError(f"empty host in address {addr!r}")
    if port is None or port == "":
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
        self._pengcfg = getattr(peng, "cfg", None) if peng is not None else None

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
        self.overrides[key] = value
        if self.on_change is not None:
            self.on_change()

    def __iter__(self) -> Any:
        keys = dict.fromkeys(DEFAULT_CONFIG)
        keys.update(dict.fromkeys(self.overrides))
        return iter(keys)

    def __len__(self) -> int:
        return len(set(DEFAULT_CONFIG) | set(self.overrides))
