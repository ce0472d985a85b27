"""``mypyc_attr`` for the modules the optional compiled build compiles.

mypy and mypyc see ``mypy_extensions.mypyc_attr`` (a build-time
dependency of the compiled build only); at run time it is a no-op, so the
package needs neither mypy nor mypy_extensions.  This module itself is
never compiled: in a compiled module the ``else`` branch below would be
taken for unreachable code.

``@mypyc_attr(allow_interpreted_subclasses=True)`` marks the classes
programs subclass (``Server``, ``ClientOnServer``, ``Client``, their core
``Peer`` and ``NetworkLoop``): in a compiled build their subclasses stay
ordinary Python classes.  See the README's "Optional compiled build".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, TypeVar

COMPILED_MODULES = [
    "peng3dnet/protocol/codec.py", "peng3dnet/protocol/connection.py", "peng3dnet/protocol/framing.py",
    "peng3dnet/protocol/handshake.py", "peng3dnet/transport.py", "peng3dnet/relay.py", "peng3dnet/inbox.py",
    "peng3dnet/flow.py", "peng3dnet/link.py", "peng3dnet/plans.py", "peng3dnet/peer.py", "peng3dnet/server.py",
    "peng3dnet/client.py",
]
"""What the compiled build compiles (paths from the repository root): the
modules a packet passes through (the sans-I/O core, the transport, the
relay, the process queue and flow control, the peer core and its facades).
``peng3dnet/loopthread.py`` stays interpreted: mypyc's traverse of a
compiled ``threading.Thread`` subclass visits its weak reference list as
if it owned it (a crash at exit, seen once); so does ``peng3dnet/net.py``,
which holds the public classes."""

if TYPE_CHECKING:
    from mypy_extensions import mypyc_attr as mypyc_attr
else:
    def mypyc_attr(*args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        """A class decorator that returns the class unchanged."""
        return lambda cls: cls


_E = TypeVar("_E", bound=BaseException)


def caused(err: _E, cause: BaseException) -> _E:
    """``err`` with ``cause`` as its ``__cause__``.

    In a compiled module mypyc drops the cause of ``raise X from exc``
    (seen with mypy 2.4; the context is kept), so the compiled modules write
    ``raise caused(X, exc) from exc``: the same exception in both builds."""
    err.__cause__ = cause
    return err
