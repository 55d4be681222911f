"""TLS on the registry's own listener: a certificate chain and key (PEM), optionally a client
CA for mutual TLS, and a reload of those files on SIGHUP that drops no connection.

A live `SSLContext` can take a new certificate, but it cannot forget a CA it once trusted.
So a reload builds a whole new context from the files, and the listener's context hands each
new handshake to the newest one: its SNI callback, which OpenSSL calls on every ClientHello
(with or without a server name: Docker sends none to an IP address), sets the connection's
context. Connections already open keep the one they started with. Files that do not load
leave the current context in place, with an error in the log.

What a reload cannot change: whether client certificates are required (a connection keeps
the verify mode of the listener's context). That follows the settings, which need a restart.

With several workers, uvicorn's supervisor answers SIGHUP by replacing the workers one at a
time (each new one ready before the old one finishes its requests and exits), and each new
worker reads the files; a worker sent SIGHUP itself reloads in place.
"""

from __future__ import annotations

import logging
import signal
import ssl
from dataclasses import dataclass
from typing import Any

from registry.config import ConfigError

log = logging.getLogger("registry")


@dataclass(frozen=True)
class TlsFiles:
    """Where the PEM files are (`server.tls.*`)."""

    certificate: str
    key: str
    client_ca: str = ""


def build_context(files: TlsFiles) -> ssl.SSLContext:
    """A server context from `files`: TLS 1.2 or newer, OpenSSL's default ciphers, and
    client certificates required (and checked against `client_ca`) when one is given.
    Raises OSError or ssl.SSLError when a file is missing or unusable."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_RENEGOTIATION  # a client-started renegotiation costs us CPU
    context.set_alpn_protocols(["http/1.1"])
    context.load_cert_chain(files.certificate, files.key)
    if files.client_ca:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=files.client_ca)
    return context


def check(files: TlsFiles) -> None:
    """ConfigError when the files do not make a context (at start, before serving)."""
    try:
        build_context(files)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ConfigError(
            f"server.tls: cannot use certificate {files.certificate!r}, key {files.key!r}"
            + (f", client CA {files.client_ca!r}" if files.client_ca else "")
            + f": {exc}"
        ) from None


class ReloadableContext:
    """The listener's context, handing each handshake to the newest context built."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self.listener = build_context(files)
        self.current = self.listener
        self.listener.sni_callback = self._choose

    def _choose(self, connection: Any, server_name: str | None, context: ssl.SSLContext) -> None:
        current = self.current
        if context is not current:
            connection.context = current

    def reload(self) -> bool:
        """Build a context from the files again; True when it replaced the current one."""
        try:
            fresh = build_context(self.files)
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.error("TLS files not reloaded, the previous ones stay in use: %s", exc)
            return False
        self.current = fresh
        log.info("TLS certificate reloaded from %s", self.files.certificate)
        return True


def listener_context(
    files: TlsFiles, _config: object = None, _default: object = None
) -> ssl.SSLContext:
    """The context a server process listens with, reloaded when the process gets SIGHUP.

    Called by uvicorn in each server process (its `ssl_context_factory`, as a partial of this
    module-level function, which pickles for worker processes), from the main thread."""
    reloadable = ReloadableContext(files)
    signal.signal(signal.SIGHUP, lambda _signum, _frame: reloadable.reload())
    return reloadable.listener
