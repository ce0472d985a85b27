"""TLS contexts from the ``net.ssl.*`` config keys (transport layer).

Server: ``net.ssl.server.certfile``/``keyfile`` are required; with
``net.ssl.server.force_verify`` a client certificate signed by
``net.ssl.cafile`` is required; without it, a client certificate is verified
if one is sent and ``net.ssl.cafile`` is set (optional), else not asked for.

Client: the server certificate is verified against ``net.ssl.cafile`` (or the
system store when unset) when ``net.ssl.client.force_verify`` is true (off
by default, as in 0.1.x: opt in), with a hostname check when
``net.ssl.client.check_hostname`` is true; ``net.ssl.client.certfile``/``keyfile`` present a client certificate.

Misconfiguration raises :class:`~peng3dnet.errors.TLSConfigError` at once;
there is never a silent fall back to plaintext.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from typing import Any

from .constants import SSLSEC_BOTHAUTH, SSLSEC_ENCRYPTED, SSLSEC_SERVERAUTH
from .errors import TLSConfigError

__all__ = ["server_context", "client_context", "security_level"]


def _file(cfg: Mapping[str, Any], key: str, required: bool) -> str | None:
    path = cfg[key]
    if path is None:
        if required:
            raise TLSConfigError(f"TLS is enabled but {key} is not set")
        return None
    if not os.path.isfile(path):
        raise TLSConfigError(f"{key}: no such file {path!r}")
    return str(path)


def server_context(cfg: Mapping[str, Any]) -> ssl.SSLContext:
    """Build the server's context.

    Raises:
        TLSConfigError: Missing or unusable files.
    """
    certfile = _file(cfg, "net.ssl.server.certfile", True)
    keyfile = _file(cfg, "net.ssl.server.keyfile", False)
    cafile = _file(cfg, "net.ssl.cafile", bool(cfg["net.ssl.server.force_verify"]))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(certfile, keyfile)  # type: ignore[arg-type]
        if cafile:
            ctx.load_verify_locations(cafile)
    except (ssl.SSLError, OSError) as exc:
        raise TLSConfigError(f"cannot load the server certificate/key/CA: {exc}") from exc
    if cfg["net.ssl.server.force_verify"]:
        ctx.verify_mode = ssl.CERT_REQUIRED
    elif cafile:
        ctx.verify_mode = ssl.CERT_OPTIONAL
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def client_context(cfg: Mapping[str, Any]) -> ssl.SSLContext:
    """Build the client's context.

    Raises:
        TLSConfigError: Missing or unusable files.
    """
    cafile = _file(cfg, "net.ssl.cafile", False)
    certfile = _file(cfg, "net.ssl.client.certfile", False)
    keyfile = _file(cfg, "net.ssl.client.keyfile", False)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    verify = bool(cfg["net.ssl.client.force_verify"])
    ctx.check_hostname = verify and bool(cfg["net.ssl.client.check_hostname"])
    ctx.verify_mode = ssl.CERT_REQUIRED if verify else ssl.CERT_NONE
    try:
        if verify:
            if cafile:
                ctx.load_verify_locations(cafile)
            else:
                ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if certfile:
            ctx.load_cert_chain(certfile, keyfile)
    except (ssl.SSLError, OSError) as exc:
        raise TLSConfigError(f"cannot load the client certificate/key/CA: {exc}") from exc
    return ctx


def security_level(sock: Any, server_side: bool, client_cert: bool = False) -> int:
    """The ``SSLSEC_*`` level of a TLS socket whose handshake is done.

    Each side reports what it knows: a client that verified the server's
    certificate has ``SSLSEC_SERVERAUTH`` (``SSLSEC_BOTHAUTH`` when it also
    presented a certificate); a server has ``SSLSEC_BOTHAUTH`` when it
    verified the client's certificate, else ``SSLSEC_ENCRYPTED``.
    """
    ctx = sock.context
    if server_side:
        return SSLSEC_BOTHAUTH if ctx.verify_mode != ssl.CERT_NONE and sock.getpeercert() else SSLSEC_ENCRYPTED
    if ctx.verify_mode == ssl.CERT_REQUIRED:
        return SSLSEC_BOTHAUTH if client_cert else SSLSEC_SERVERAUTH
    return SSLSEC_ENCRYPTED
