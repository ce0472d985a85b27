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

__all__ = ["user_log", "report_user_error"]

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


def report_user_error(msg: str, *args: object) -> None:
    """Log the exception being handled, raised by user code, with its
    traceback (call it from an ``except`` block)."""
    user_log.error(msg, *args, exc_info=True)
