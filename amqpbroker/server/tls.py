"""TLS for the AMQP listener (AMQPS): the server's ``ssl.SSLContext`` from the configuration, and
the user name a client certificate stands for (SASL EXTERNAL, as RabbitMQ's
rabbitmq_auth_mechanism_ssl). The standard library's ``ssl`` does the protocol; anyio's
``TLSListener`` runs the handshake for each accepted socket."""

from __future__ import annotations

import ssl
from typing import Any

from amqpbroker.config import Config

__all__ = ["server_context", "TLSConfigError", "certificate_user"]

_VERSIONS = {"tlsv1.2": ssl.TLSVersion.TLSv1_2, "tlsv1.3": ssl.TLSVersion.TLSv1_3}


class TLSConfigError(Exception):
    """The TLS settings cannot make a context (a missing file, an unknown version): start-up stops."""


def server_context(config: Config) -> ssl.SSLContext | None:
    """The context for AMQPS, or None when no certificate is configured (no TLS listener)."""
    if not config.tls_certfile:
        return None
    if not config.tls_keyfile:
        raise TLSConfigError("tls_certfile is set but tls_keyfile is not")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    versions = [name.strip().lower() for name in config.tls_versions.split(",") if name.strip()]
    unknown = [name for name in versions if name not in _VERSIONS]
    if unknown or not versions:
        raise TLSConfigError(f"tls_versions: {', '.join(unknown) or '(none)'}; use tlsv1.2 and/or tlsv1.3")
    chosen = sorted(_VERSIONS[name] for name in versions)
    context.minimum_version, context.maximum_version = chosen[0], chosen[-1]
    try:
        context.load_cert_chain(config.tls_certfile, config.tls_keyfile)
        if config.tls_cafile:
            context.load_verify_locations(config.tls_cafile)
        if config.tls_ciphers:
            context.set_ciphers(config.tls_ciphers)
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(f"cannot load the TLS files: {exc}") from exc
    if config.tls_fail_if_no_peer_cert:
        context.verify_mode = ssl.CERT_REQUIRED
    elif config.tls_verify_peer:
        context.verify_mode = ssl.CERT_OPTIONAL
    if context.verify_mode != ssl.CERT_NONE and not config.tls_cafile:
        raise TLSConfigError("tls_verify_peer / tls_fail_if_no_peer_cert need tls_cafile")
    return context


def certificate_user(certificate: dict[str, Any] | None, login_from: str = "common_name") -> str | None:
    """The user name a verified client certificate (``SSLObject.getpeercert()``) stands for: its
    subject's common name, or its first DNS / e-mail subject alternative name."""
    if not certificate:
        return None
    if login_from == "subject_alternative_name":
        for kind, value in certificate.get("subjectAltName", ()):
            if kind in ("DNS", "email"):
                return value
        return None
    for rdn in certificate.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None
