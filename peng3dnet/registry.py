"""The packet registry: packet name <-> packet id <-> packet object.

Pure data, no I/O.  Ids 0-63 are reserved for the library; application
packets get ids from 64 up in registration order unless a fixed id is given.
A client renumbers its registry to the server's ids at the handshake
(:meth:`Registry.remap`).

Thread safety: registration is meant to happen before connections are made;
lookups may run on any thread at any time.  :meth:`Registry.remap` replaces
both maps with one attribute assignment, so a concurrent lookup sees either
the old or the new numbering, never a mix.
"""

from __future__ import annotations

from typing import Any

from .constants import PID_FIRST_FREE
from .errors import AlreadyRegisteredError, RegistryError

__all__ = ["Registry"]

_MAX_ID = 2**32 - 1


class Registry:
    """Maps packet names, ids and objects to each other."""

    __slots__ = ("_maps", "_objs", "_obj_names", "version")

    def __init__(self) -> None:
        # (name -> id, id -> name), swapped as one tuple by remap().
        self._maps: tuple[dict[str, int], dict[int, str]] = ({}, {})
        self._objs: dict[str, Any] = {}
        self._obj_names: dict[int, str] = {}  # id(obj) -> name
        self.version = 0
        """Bumped by every change (register, remap): lets users cache lookups."""

    # --- registration -----------------------------------------------------------
    def register(self, name: str, obj: Any, n: int | None = None) -> int:
        """Register a packet.

        Args:
            name: Unique name, conventionally ``namespace:category.name``.
            obj: The packet object (usually a :class:`~peng3dnet.packet.Packet`).
            n: Fixed id; when ``None`` the lowest free id from 64 up is used.

        Returns:
            The id of the packet.

        Raises:
            AlreadyRegisteredError: The name or the id is taken.
            RegistryError: The name or the id is invalid.
        """
        if not isinstance(name, str) or not name:
            raise RegistryError(f"packet name must be a non-empty str, not {name!r}")
        n2i, i2n = self._maps
        if name in n2i:
            raise AlreadyRegisteredError(f"packet name {name!r} is already registered")
        if n is None:
            n = PID_FIRST_FREE
            while n in i2n:
                n += 1
        elif not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= _MAX_ID:
            raise RegistryError(f"packet id must be an int in 0..2**32-1, not {n!r}")
        elif n in i2n:
            raise AlreadyRegisteredError(f"packet id {n} is already taken by {i2n[n]!r}")
        n2i[name] = n
        i2n[n] = name
        self._objs[name] = obj
        self._obj_names[id(obj)] = name
        self.version += 1
        return n

    # --- lookups -----------------------------------------------------------------
    def get_id(self, key: int | str | Any) -> int:
        """Return the id of a packet given by id, name or object.

        Raises:
            RegistryError: No such packet.
        """
        n2i, i2n = self._maps
        if isinstance(key, int) and not isinstance(key, bool):
            if key in i2n:
                return key
        elif isinstance(key, str):
            if key in n2i:
                return n2i[key]
        else:
            name = self._obj_names.get(id(key))
            if name is not None and name in n2i:
                return n2i[name]
        raise RegistryError(f"unknown packet {key!r}")

    def get_name(self, key: int | str | Any) -> str:
        """Return the name of a packet given by id, name or object.

        Raises:
            RegistryError: No such packet.
        """
        return self._maps[1][self.get_id(key)]

    def get_obj(self, key: int | str | Any) -> Any:
        """Return the object of a packet given by id, name or object.

        Raises:
            RegistryError: No such packet.
        """
        return self._objs[self.get_name(key)]

    def find_obj(self, pid: int) -> Any | None:
        """Return the object registered under ``pid``, or ``None`` (no exception)."""
        name = self._maps[1].get(pid)
        return None if name is None else self._objs[name]

    def __contains__(self, key: object) -> bool:
        try:
            self.get_id(key)
        except RegistryError:
            return False
        return True

    def __len__(self) -> int:
        return len(self._maps[0])

    def names(self) -> set[str]:
        """Return the set of registered names."""
        return set(self._maps[0])

    def mapping(self) -> dict[str, int]:
        """Return a copy of the name -> id map (what the handshake sends)."""
        return dict(self._maps[0])

    # --- handshake sync ----------------------------------------------------------------
    def remap(self, server: dict[str, int]) -> None:
        """Renumber our packets to the server's ids.

        Names both sides know take the server's id.  Names only we know keep
        their id when it is free in the server's numbering, else they get the
        lowest free id from 64 up.  Names only the server knows are ignored.

        Args:
            server: The server's name -> id map.
        """
        n2i_old, _ = self._maps
        n2i: dict[str, int] = {}
        i2n: dict[int, str] = {}
        for name in n2i_old:
            if name in server:
                pid = server[name]
                n2i[name] = pid
                i2n[pid] = name
        taken = set(server.values())
        for name, pid in n2i_old.items():
            if name in n2i:
                continue
            if pid in taken or pid in i2n:
                pid = PID_FIRST_FREE
                while pid in taken or pid in i2n:
                    pid += 1
            n2i[name] = pid
            i2n[pid] = name
        self._maps = (n2i, i2n)
        self.version += 1
