"""TLS on a real server: HTTPS with the server's chain, client certificates for mutual TLS,
and SIGHUP reloading the files while connections stay up."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from registry.tls import TlsFiles, build_context

from support.pki import CertificateAuthority, Issued
from support.server import RegistryServer


def tls_env(issued: Issued, client_ca: Path | None = None) -> dict[str, str]:
    env = {
        "REGISTRY_SERVER_TLS_CERTIFICATE": str(issued.certificate),
        "REGISTRY_SERVER_TLS_KEY": str(issued.key),
    }
    if client_ca is not None:
        env["REGISTRY_SERVER_TLS_CLIENT_CA"] = str(client_ca)
    return env


def served_serial(port: int, ca: Path) -> int:
    """The serial of the certificate a new connection to the server is given."""
    context = ssl.create_default_context(cafile=str(ca))
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def wait_for_serial(port: int, ca: Path, serial: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while True:
        try:
            seen = served_serial(port, ca)
        except (OSError, ssl.SSLError):
            seen = -1  # a worker being replaced
        if seen == serial or time.monotonic() > deadline:
            return seen
        time.sleep(0.1)


def replace(target: Path, source: Path) -> None:
    """Put `source`'s bytes at `target` atomically, as a secret update does."""
    temporary = target.with_suffix(".new")
    temporary.write_bytes(source.read_bytes())
    os.chmod(temporary, 0o600)
    os.replace(temporary, target)


@pytest.fixture
def pki(tmp_path: Path) -> Iterator[tuple[CertificateAuthority, Path]]:
    ca = CertificateAuthority()
    yield ca, ca.write(tmp_path / "ca.pem")


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-workers"])
def test_sighup_reloads_the_certificate_keeping_connections(
    tmp_path: Path, pki: tuple[CertificateAuthority, Path], workers: int
) -> None:
    ca, ca_file = pki
    first = ca.issue_server(tmp_path / "first")
    second = ca.issue_server(tmp_path / "second")
    live = tmp_path / "live"
    live.mkdir()
    (live / "tls.crt").write_bytes(first.certificate.read_bytes())
    (live / "tls.key").write_bytes(first.key.read_bytes())
    env = tls_env(Issued(live / "tls.crt", live / "tls.key", first.serial))
    server = RegistryServer(
        tmp_path / "data", extra_args=["--workers", str(workers)], env=env, ca=ca_file
    )
    server.start()
    try:
        assert server.url.startswith("https://")
        assert served_serial(server.port, ca_file) == first.serial
        with httpx.Client(base_url=server.url, verify=server.verify) as kept:
            assert kept.get("/v2/").status_code == 200
            replace(live / "tls.crt", second.certificate)
            replace(live / "tls.key", second.key)
            assert server.process is not None
            server.process.send_signal(signal.SIGHUP)
            assert wait_for_serial(server.port, ca_file, second.serial) == second.serial
            if workers == 1:  # in place: the connection opened before is still served
                assert kept.get("/v2/").status_code == 200
                assert len(kept._transport._pool.connections) == 1  # type: ignore[attr-defined]
        assert server.process.poll() is None
    finally:
        server.stop()


def test_files_that_do_not_load_keep_the_old_certificate(
    tmp_path: Path, pki: tuple[CertificateAuthority, Path]
) -> None:
    ca, ca_file = pki
    issued = ca.issue_server(tmp_path / "tls")
    server = RegistryServer(tmp_path / "data", env=tls_env(issued), ca=ca_file)
    server.start()
    try:
        issued.key.write_text("not a key\n")
        assert server.process is not None
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "not reloaded" not in server.log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "TLS files not reloaded" in server.log_path.read_text()
        assert served_serial(server.port, ca_file) == issued.serial
        assert httpx.get(f"{server.url}/v2/", verify=server.verify).status_code == 200
    finally:
        server.stop()


def test_mutual_tls_requires_a_client_certificate_of_the_client_ca(
    tmp_path: Path, pki: tuple[CertificateAuthority, Path]
) -> None:
    ca, ca_file = pki
    clients = CertificateAuthority("clients")
    client_ca = clients.write(tmp_path / "clients.pem")
    alice = clients.issue_client(tmp_path / "clients", "alice")
    stranger = CertificateAuthority("other").issue_client(tmp_path / "other", "mallory")
    server = RegistryServer(
        tmp_path / "data", env=tls_env(ca.issue_server(tmp_path / "tls"), client_ca), ca=ca_file
    )
    server.launch()  # not start(): its readiness check has no client certificate
    try:

        def get(cert: Issued | None) -> int:
            context = ssl.create_default_context(cafile=str(ca_file))
            if cert is not None:
                context.load_cert_chain(cert.certificate, cert.key)
            try:
                return httpx.get(f"{server.url}/v2/", verify=context, timeout=5).status_code
            except (httpx.TransportError, ssl.SSLError):
                return 0

        deadline = time.monotonic() + 30
        while get(alice) != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert get(alice) == 200
        assert get(None) == 0  # no certificate: the handshake fails
        assert get(stranger) == 0
        # The clients' CA is replaced: alice's certificate is refused from the reload on.
        replace(client_ca, CertificateAuthority("new clients").write(tmp_path / "new.pem"))
        assert server.process is not None
        server.process.send_signal(signal.SIGHUP)
        while get(alice) == 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert get(alice) == 0
    finally:
        server.stop()


def test_a_non_loopback_address_without_auth_is_refused_with_tls_too(
    tmp_path: Path, pki: tuple[CertificateAuthority, Path]
) -> None:
    ca, _ = pki
    env = {**os.environ, **tls_env(ca.issue_server(tmp_path / "tls"))}
    result = subprocess.run(
        [sys.executable, "-m", "registry", "serve", "--addr", "0.0.0.0:0",
         "--data", str(tmp_path / "data")],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0 without authentication" in result.stderr


def test_unusable_files_stop_the_start(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "REGISTRY_SERVER_TLS_CERTIFICATE": str(tmp_path / "missing.pem"),
        "REGISTRY_SERVER_TLS_KEY": str(tmp_path / "missing.key"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "registry", "serve", "--addr", "127.0.0.1:0",
         "--data", str(tmp_path / "data")],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "server.tls: cannot use certificate" in result.stderr


def test_the_context_wants_tls_1_2_or_newer(tmp_path: Path) -> None:
    issued = CertificateAuthority().issue_server(tmp_path)
    context = build_context(TlsFiles(str(issued.certificate), str(issued.key)))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_NONE
