"""The packet registry: packet name <-> packet id <-> packet object.

Pure data, no I/O.  Ids 0-63 are reserved for the library; application
packets get ids from 64 up in registration order unless a fixed id is given.
A client renumbers its registry to the server's ids at the handshake
(:meth:`PacketRegistry.remap`).

:class:`BaseRegistry` keeps the three-way map and the lookup API of
peng3dnet 0.1.x (``register(obj, name, n)``, ``getName``/``getStr``,
``getID``/``getInt``, ``getObj``, ``getAll``, ``registry[x]``, the two-way
maps ``reg_int_str`` and ``reg_int_obj`` with ``.inv``);
:class:`PacketRegistry` adds what the handshake needs.  Every peer's
``registry`` is a :class:`PacketRegistry`.

Thread safety: registration is meant to happen before connections are made;
lookups may run on any thread at any time.  Every change (register, delete,
remap) builds new maps and installs them with one attribute assignment, so a
concurrent lookup sees either the old or the new maps, never a mix.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from .constants import PID_FIRST_FREE
from .errors import AlreadyRegisteredError, RegistryError, UnknownPacketError

__all__ = ["BaseRegistry", "PacketRegistry", "TwoWayMap"]

_MAX_ID = 2**32 - 1


class TwoWayMap(Mapping[Any, Any]):
    """A read-only mapping with its reverse as :attr:`inv` (what 0.1.x
    programs know as a bidict).  A snapshot: later registrations are not seen."""

    __slots__ = ("_fwd", "_rev")

    def __init__(self, fwd: dict[Any, Any], rev: dict[Any, Any]) -> None:
        self._fwd = fwd
        self._rev = rev

    @property
    def inv(self) -> TwoWayMap:
        """The reverse mapping."""
        return TwoWayMap(self._rev, self._fwd)

    def __getitem__(self, key: Any) -> Any:
        return self._fwd[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._fwd)

    def __len__(self) -> int:
        return len(self._fwd)

    def __repr__(self) -> str:
        return f"TwoWayMap({self._fwd!r})"


class BaseRegistry:
    """Maps names, ids and objects to each other."""

    __slots__ = ("_maps", "version")

    def __init__(self) -> None:
        # (name -> id, id -> name, name -> obj, id(obj) -> name), replaced as one tuple.
        self._maps: tuple[dict[str, int], dict[int, str], dict[str, Any], dict[int, str]] = ({}, {}, {}, {})
        self.version = 0
        """Bumped by every change (register, delete, remap): lets users cache lookups."""

    # --- registration -----------------------------------------------------------
    def register(self, obj: Any, name: str, n: int | None = None) -> int:
        """Register ``obj`` under ``name`` (argument order of 0.1.x).

        Args:
            obj: The object (usually a :class:`~peng3dnet.packet.Packet`).
            name: Unique name, conventionally ``namespace:category.name``.
            n: Fixed id; when ``None`` the lowest free id from 64 up is used.

        Returns:
            The id.

        Raises:
            AlreadyRegisteredError: The name or the id is taken.
            RegistryError: The name or the id is invalid.
        """
        if not isinstance(name, str) or not name:
            raise RegistryError(f"packet name must be a non-empty str, not {name!r}")
        n2i, i2n, objs, onames = self._maps
        if name in n2i:
            raise AlreadyRegisteredError(f"packet name {name!r} is already registered")
        if n is None:
            n = self._free_id(i2n)
        elif not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= _MAX_ID:
            raise RegistryError(f"packet id must be an int in 0..2**32-1, not {n!r}")
        elif n in i2n:
            raise AlreadyRegisteredError(f"packet id {n} is already taken by {i2n[n]!r}")
        self._maps = (
            {**n2i, name: n},
            {**i2n, n: name},
            {**objs, name: obj},
            {**onames, id(obj): name},
        )
        self.version += 1
        return n

    def registerObject(self, obj: Any, n: int | None = None) -> int:  # noqa: N802
        """Register ``obj`` under its ``name`` attribute (0.1.x API).

        Raises:
            AttributeError: ``obj`` has no ``name``.
        """
        return self.register(obj, obj.name, n)

    def deleteObj(self, obj: Any) -> None:  # noqa: N802
        """Remove an entry given by name, id or object (0.1.x API).

        Raises:
            UnknownPacketError: No such entry.
        """
        name = self.get_name(obj)
        n2i, i2n, objs, onames = self._maps
        pid = n2i[name]
        self._maps = (
            {k: v for k, v in n2i.items() if k != name},
            {k: v for k, v in i2n.items() if k != pid},
            {k: v for k, v in objs.items() if k != name},
            {k: v for k, v in onames.items() if v != name},
        )
        self.version += 1

    def getNewID(self) -> int:  # noqa: N802
        """Return the id the next registration without a fixed id gets."""
        return self._free_id(self._maps[1])

    @staticmethod
    def _free_id(taken: Mapping[int, Any] | set[int]) -> int:
        n = PID_FIRST_FREE
        while n in taken:
            n += 1
        return n

    # --- lookups -----------------------------------------------------------------
    def get_id(self, key: int | str | Any) -> int:
        """Return the id of an entry given by id, name or object.

        Raises:
            UnknownPacketError: No such entry (a :class:`RegistryError` and a
                :class:`KeyError`).
        """
        n2i, i2n, _, onames = self._maps
        if isinstance(key, int) and not isinstance(key, bool):
            if key in i2n:
                return key
        elif isinstance(key, str):
            if key in n2i:
                return n2i[key]
        else:
            name = onames.get(id(key))
            if name is not None and name in n2i:
                return n2i[name]
        raise UnknownPacketError(f"unknown packet {key!r}")

    def get_name(self, key: int | str | Any) -> str:
        """Return the name of an entry given by id, name or object.

        Raises:
            UnknownPacketError: No such entry.
        """
        return self._maps[1][self.get_id(key)]

    def get_obj(self, key: int | str | Any) -> Any:
        """Return the object of an entry given by id, name or object.

        Raises:
            UnknownPacketError: No such entry.
        """
        maps = self._maps
        return maps[2][maps[1][self.get_id(key)]]

    def find_obj(self, pid: int) -> Any | None:
        """Return the object registered under ``pid``, or ``None`` (no exception)."""
        _, i2n, objs, _ = self._maps
        name = i2n.get(pid)
        return None if name is None else objs[name]

    # The lookup names of 0.1.x.  getName/getStr return a string key as it
    # is, registered or not, as 0.1.x did; the others check.
    def getName(self, obj: int | str | Any) -> str:  # noqa: N802
        """Name of an entry given by id or object; a str is returned as is (0.1.x API).

        Raises:
            UnknownPacketError: No such entry.
        """
        return obj if isinstance(obj, str) else self.get_name(obj)

    getStr = getName  # noqa: N815  (0.1.x has both names)

    def getID(self, obj: int | str | Any) -> int:  # noqa: N802
        """Id of an entry given by name or object; an int is returned as is
        (0.1.x API, like :meth:`getName` with a str).

        Raises:
            UnknownPacketError: No such entry.
        """
        if isinstance(obj, int) and not isinstance(obj, bool):
            return obj
        return self.get_id(obj)

    getInt = getID  # noqa: N815  (0.1.x has both names)

    def getObj(self, obj: int | str | Any) -> Any:  # noqa: N802
        """Object of an entry given by name, id or object (0.1.x API).

        Raises:
            UnknownPacketError: No such entry.
        """
        return self.get_obj(obj)

    def getAll(self, obj: int | str | Any) -> tuple[Any, int, str]:  # noqa: N802
        """``(object, id, name)`` of an entry given by name, id or object (0.1.x API).

        Raises:
            UnknownPacketError: No such entry.
        """
        pid = self.get_id(obj)
        _, i2n, objs, _ = self._maps
        return objs[i2n[pid]], pid, i2n[pid]

    def __getitem__(self, key: int | str | Any) -> Any:
        return self.get_obj(key)

    @property
    def reg_int_str(self) -> TwoWayMap:
        """id -> name, with ``.inv`` name -> id (a snapshot)."""
        n2i, i2n, _, _ = self._maps
        return TwoWayMap(i2n, n2i)

    @property
    def reg_int_obj(self) -> TwoWayMap:
        """id -> object, with ``.inv`` object -> id (a snapshot)."""
        _, i2n, objs, _ = self._maps
        fwd = {pid: objs[name] for pid, name in i2n.items()}
        return TwoWayMap(fwd, {obj: pid for pid, obj in fwd.items()})

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


class PacketRegistry(BaseRegistry):
    """The registry of a Server or Client: packets by name, id and object."""

    __slots__ = ()

    # --- handshake sync ----------------------------------------------------------------
    def remap(self, server: dict[str, int]) -> None:
        """Renumber our packets to the server's ids.

        Names both sides know take the server's id.  Names only we know keep
        their id when it is free in the server's numbering, else they get the
        lowest free id from 64 up.  Names only the server knows are ignored.

        Args:
            server: The server's name -> id map.
        """
        n2i_old, _, objs, onames = self._maps
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
                pid = self._free_id(taken | set(i2n))
            n2i[name] = pid
            i2n[pid] = name
        self._maps = (n2i, i2n, objs, onames)
        self.version += 1
