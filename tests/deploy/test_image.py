"""deploy/Dockerfile, for real: the image built on a debootstrap base (no Docker Hub here)
without network inside the build, run as a non-root user on a read-only root filesystem, and
`docker login`, `push` and `pull` against it at a non-loopback address over TLS, with only
the test's CA in the daemon's certs.d."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.dockerd import DockerDaemon, build_busybox_image
from support.images import BuiltImage
from support.pki import CertificateAuthority

SUBNET = "10.99.1.0/24"  # inside the private dockerd's own network namespace
ADDRESS = "10.99.1.10"
PORT = 5000
NETWORK = "pocket-deploy-image"


@pytest.fixture(scope="module")
def network(dockerd: DockerDaemon) -> Iterator[str]:
    dockerd.docker("network", "create", "--subnet", SUBNET, NETWORK)
    yield NETWORK
    dockerd.docker("network", "rm", NETWORK, check=False)


@pytest.fixture(scope="module")
def tls_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, bytes]]:
    """The server's files, readable by the image's unprivileged user; the CA's PEM."""
    folder = tmp_path_factory.mktemp("image-tls")
    ca = CertificateAuthority("image test CA")
    issued = ca.issue_server(folder / "issued", ips=[ADDRESS], names=["registry"])
    mounted = folder / "mounted"
    mounted.mkdir(mode=0o755)
    mounted.chmod(0o755)
    shutil.copy(issued.certificate, mounted / "tls.crt")
    shutil.copy(issued.key, mounted / "tls.key")
    for name in ("tls.crt", "tls.key"):
        (mounted / name).chmod(0o644)
    yield mounted, ca.pem


@pytest.fixture(scope="module")
def running(
    dockerd: DockerDaemon,
    registry_image: BuiltImage,
    network: str,
    tls_folder: tuple[Path, bytes],
) -> Iterator[str]:
    mounted, ca_pem = tls_folder
    name = f"registry-{uuid.uuid4().hex[:8]}"
    dockerd.docker(
        "run", "-d", "--name", name, "--network", network, "--ip", ADDRESS,
        "--read-only", "--tmpfs", "/tmp",
        "-v", f"{mounted}:/etc/registry/tls:ro",
        "-e", "REGISTRY_SERVER_TLS_CERTIFICATE=/etc/registry/tls/tls.crt",
        "-e", "REGISTRY_SERVER_TLS_KEY=/etc/registry/tls/tls.key",
        "-e", f"REGISTRY_SERVER_PUBLIC_URL=https://{ADDRESS}:{PORT}",
        "--health-interval", "1s", "--health-start-period", "30s",
        registry_image.tag,
    )  # fmt: skip
    dockerd.trust(f"{ADDRESS}:{PORT}", ca_pem)
    try:
        wait_healthy(dockerd, name)
        dockerd.docker(
            "exec", "-i", name, "registry", "user", "add", "alice", "--password-stdin",
            input="correct horse battery\n",
        )  # fmt: skip
        yield name
    finally:
        print(dockerd.docker("logs", "--tail", "50", name, check=False).stderr[-4000:])
        dockerd.docker("rm", "-f", "-v", name, check=False)


def wait_healthy(dockerd: DockerDaemon, name: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        status = dockerd.docker(
            "inspect", "--format", "{{.State.Status}} {{.State.Health.Status}}", name
        ).stdout.strip()
        if status == "running healthy":
            return
        if status.startswith("exited"):
            break
        time.sleep(0.5)
    logs = dockerd.docker("logs", name, check=False)
    raise AssertionError(f"{name} is {status!r}:\n{logs.stdout}\n{logs.stderr}")


def test_the_image_is_small_non_root_and_checks_its_health(
    dockerd: DockerDaemon, registry_image: BuiltImage, running: str
) -> None:
    config = json.loads(dockerd.docker("image", "inspect", registry_image.tag).stdout)[0]["Config"]
    assert config["User"] == "10001:10001"
    assert "/var/lib/registry" in config["Volumes"]
    assert config["Healthcheck"]["Test"] == ["CMD", "registry", "healthcheck"]
    assert "5000/tcp" in config["ExposedPorts"]
    assert "REGISTRY_AUTH_ENABLED=true" in config["Env"]
    assert dockerd.docker("exec", running, "id", "-u").stdout.strip() == "10001"
    # The running server: its own process, healthy by its HEALTHCHECK (so over TLS).
    health = json.loads(
        dockerd.docker("inspect", "--format", "{{json .State.Health}}", running).stdout
    )
    assert health["Status"] == "healthy" and health["Log"][-1]["ExitCode"] == 0
    assert registry_image.size < 400 * 2**20


def test_docker_logs_in_pushes_and_pulls_over_tls(dockerd: DockerDaemon, running: str) -> None:
    registry = f"{ADDRESS}:{PORT}"
    dockerd.docker(
        "login", registry, "-u", "alice", "--password-stdin", input="correct horse battery\n"
    )
    local = build_busybox_image(dockerd, f"image-test-{uuid.uuid4().hex[:8]}:v1")
    remote = f"{registry}/alice/busybox:v1"
    dockerd.docker("tag", local, remote)
    dockerd.docker("push", remote)
    dockerd.docker("rmi", remote, local)
    dockerd.docker("pull", remote)
    output = dockerd.docker("run", "--rm", "--network", "none", remote).stdout
    assert "hello from pocket" in output
    # Without the CA, the daemon refuses the registry: it is the CA that made this work.
    (dockerd.root / "etc-docker" / "certs.d" / registry / "ca.crt").unlink()  # type: ignore[operator]
    try:
        refused = dockerd.docker("pull", remote, check=False)
        assert refused.returncode != 0 and "certificate" in refused.stderr
    finally:
        dockerd.trust(registry, dockerd_ca(running, dockerd))


def dockerd_ca(running: str, dockerd: DockerDaemon) -> bytes:
    """The CA back, read from the server's chain (its last certificate)."""
    chain = dockerd.docker("exec", running, "cat", "/etc/registry/tls/tls.crt").stdout
    return ("-----BEGIN CERTIFICATE-----" + chain.split("-----BEGIN CERTIFICATE-----")[-1]).encode()
