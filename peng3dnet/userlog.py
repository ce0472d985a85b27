"""Errors raised by user code stay visible.

peng3dnet 0.1.x printed a traceback when a packet handler, a hook or an
event handler raised; programs written for it rely on seeing one.  The
library itself is silent by default (a ``NullHandler`` on the ``peng3dnet``
logger, as urllib3 does), so such errors go to their own logger,
``peng3dnet.user``, which carries a fallback handler: it writes the record
with its traceback to ``sys.stderr`` only while logging is not configured,
that is, while no handler other than a ``NullHandler`` would see the record
(no root handler from ``basicConfig``, none on ``peng3dnet`` or
``peng3dnet.user``).  Once the program configures logging, records take the
normal road and the fallback stays quiet, so nothing is printed twice.

Silence it with ``logging.getLogger("peng3dnet.user").propagate = False``
plus a handler of your own, or by configuring logging.

Thread safety: any thread.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Hashable

__all__ = ["user_log", "report_user_error", "failure_key", "REPEAT_WINDOW"]

USER_LOGGER = "peng3dnet.user"

user_log = logging.getLogger(USER_LOGGER)
"""The logger of user-code errors (and of :class:`~peng3dnet.packet.PrintPacket`)."""


class _FallbackHandler(logging.Handler):
    """Writes to stderr while no other handler would see the record."""

    def emit(self, record: logging.LogRecord) -> None:
        if _configured():
            return
        stream = sys.stderr
        if stream is None:  # pythonw
            return
        try:
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


def _configured() -> bool:
    logger: logging.Logger | None = user_log
    while logger is not None:
        for h in logger.handlers:
            if not isinstance(h, (logging.NullHandler, _FallbackHandler)):
                return True
        if not logger.propagate:
            return False
        logger = logger.parent  # type: ignore[assignment]
    return False


if not any(isinstance(h, _FallbackHandler) for h in user_log.handlers):
    _handler = _FallbackHandler(logging.INFO)
    _handler.setFormatter(logging.Formatter("peng3dnet: %(message)s"))
    user_log.addHandler(_handler)
if user_log.level == logging.NOTSET:
    user_log.setLevel(logging.INFO)


REPEAT_WINDOW = 10.0
"""Seconds during which the same failure (see :func:`report_user_error`'s
``key``) is counted, not logged again."""

_monotonic = time.monotonic  # (its own name: a test may set it without touching time.monotonic)
_repeats: dict[Hashable, list[float]] = {}  # key -> [time of the last traceback, repeats since]
_repeats_lock = threading.Lock()


def report_user_error(msg: str, *args: object, key: Hashable | None = None) -> None:
    """Log the exception being handled, raised by user code, with its
    traceback (call it from an ``except`` block).

    ``key``: what makes two failures the same one (a handler, say).  The
    same failure again within :data:`REPEAT_WINDOW` seconds is only
    counted: a handler that fails for every packet of a flood must not
    write a traceback per packet (megabytes of them, and their formatting's
    CPU, for a peer's few bytes each).  The next traceback logged for that
    key says how many were not shown.  The key is the failure's handler,
    exception type and innermost line (:func:`failure_key`).
    """
    if key is not None:
        now = _monotonic()
        with _repeats_lock:
            entry = _repeats.get(key)
            if entry is not None and now - entry[0] < REPEAT_WINDOW:
                entry[1] += 1
                return
            if len(_repeats) >= 1024 and entry is None:
                _repeats.clear()  # (bounded, whatever fails)
            _repeats[key] = [now, 0]
        if entry is not None and entry[1]:
            msg += " (the same failure %d times more in the %.0f s before, tracebacks not shown)"
            args = (*args, int(entry[1]), now - entry[0])
        else:
            msg += " (the same failure again within %.0f s is counted, not shown)"
            args = (*args, REPEAT_WINDOW)
    user_log.error(msg, *args, exc_info=True)


def failure_key(fn: object) -> Hashable:
    """The ``key`` of :func:`report_user_error` for the exception being
    handled, raised by ``fn``: its name, the exception's type and the file
    and line it was raised at."""
    exc = sys.exc_info()[1]
    tb = exc.__traceback__ if exc is not None else None
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = (tb.tb_frame.f_code.co_filename, tb.tb_lineno) if tb is not None else None
    name = (getattr(fn, "__module__", None), getattr(fn, "__qualname__", None) or type(fn).__qualname__)
    return (name, type(exc), where)
