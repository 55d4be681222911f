"""Two replicas on one PostgreSQL and one S3 bucket, behind a round-robin load balancer (a
small TCP proxy: each new connection to the next replica), driven by real docker and skopeo.

Nothing a request needs may live in one replica's memory or disk: an upload whose PATCHes
land on both, a replica killed in the middle of a push (the client's retry succeeds), one
tag pushed through both at once, and, with auth on, docker's login and tokens (issued by one
replica, used on the other: the signing keys are shared through the database).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from clients.test_skopeo import Skopeo, skopeo  # noqa: F401 (the fixture)

from registry.oci.digest import Digest

from support.dockerd import DockerDaemon, build_busybox_image
from support.postgres import PostgresServer
from support.seaweedfs import SeaweedFS
from support.server import RegistryServer
from support.tcpproxy import TcpProxy

pytestmark = pytest.mark.clients
MiB = 1024 * 1024
PUSHED = re.compile(r"digest: (sha256:[0-9a-f]{64}) size:")


@dataclass
class Cluster:
    replicas: list[RegistryServer]
    balancer: TcpProxy

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.balancer.port}"


@pytest.fixture(scope="module")
def cluster(postgres: PostgresServer, seaweedfs: SeaweedFS,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    name = f"cluster_{uuid.uuid4().hex[:8]}"
    env = {**seaweedfs.settings(seaweedfs.new_bucket("cluster")),
           "REGISTRY_DATABASE_URL": postgres.create_database(name)}
    yield from _running(tmp_path_factory.mktemp("cluster"), env)


def _running(root: Path, env: dict[str, str],
             before: Callable[[list[RegistryServer]], None] | None = None) -> Iterator[Cluster]:
    """Two replicas on `env` behind a round-robin balancer, for as long as the caller
    iterates; `before` runs once the replicas are made, before they start."""
    replicas = [RegistryServer(root / f"replica{i}" / "data", env=env) for i in range(2)]
    if before is not None:
        before(replicas)
    for replica in replicas:
        replica.launch()
    for replica in replicas:
        replica.wait_ready(timeout=60)
    balancer = TcpProxy("127.0.0.1", replicas[0].port, ("127.0.0.1", replicas[1].port))
    balancer.start()
    yield Cluster(replicas, balancer)
    balancer.stop()
    for replica in replicas:
        replica.stop()


def big_image(dockerd: DockerDaemon, tag: str, megabytes: int) -> str:
    """Busybox plus one layer of random bytes (a push that takes a while)."""
    base = build_busybox_image(dockerd, f"{tag}-base", layers=1)
    with tempfile.TemporaryDirectory() as context:
        Path(context, "blob").write_bytes(os.urandom(megabytes * MiB))
        Path(context, "Dockerfile").write_text(f"FROM {base}\nCOPY blob /blob\n")
        dockerd.docker("build", "--tag", tag, context, timeout=300)
    return tag


def test_docker_and_skopeo_through_the_balancer(
        cluster: Cluster, dockerd: DockerDaemon, skopeo: Skopeo) -> None:  # noqa: F811
    before = list(cluster.balancer.connections)
    tag = build_busybox_image(dockerd, f"{cluster.host}/lb/busybox:v1", layers=3)
    pushed = PUSHED.search(dockerd.docker("push", tag).stdout)
    assert pushed
    dockerd.docker("rmi", tag)
    dockerd.docker("pull", tag)
    assert dockerd.docker("run", "--rm", "--network", "none", tag).returncode == 0
    skopeo.copy(f"docker://{tag}", f"docker://{cluster.host}/lb/copied:v1")
    copied = skopeo.inspect(f"docker://{cluster.host}/lb/copied:v1")
    assert copied["Digest"] == pushed.group(1)
    served = [now - then for now, then in zip(cluster.balancer.connections, before,
                                              strict=True)]
    assert all(count > 0 for count in served), served  # both replicas took part


def test_a_chunked_upload_whose_patches_alternate_between_replicas(cluster: Cluster) -> None:
    """Each request on a connection of its own: the balancer sends them in turn to each
    replica, so every PATCH continues on the other one what the last one wrote."""
    data = os.urandom(24 * MiB + 7)
    headers = {"Connection": "close"}
    before = list(cluster.balancer.connections)
    with httpx.Client(base_url=f"http://{cluster.host}", timeout=120, headers=headers) as http:
        start = http.post("/v2/lb/chunked/blobs/uploads/")
        assert start.status_code == 202, start.text
        location = start.headers["Location"]
        offset = 0
        for piece in (data[i:i + 6 * MiB] for i in range(0, len(data), 6 * MiB)):
            patch = http.patch(location, content=piece, headers={
                "Content-Range": f"{offset}-{offset + len(piece) - 1}",
                "Content-Type": "application/octet-stream"})
            assert patch.status_code == 202, patch.text
            offset += len(piece)
            assert patch.headers["Range"] == f"0-{offset - 1}"
            location = patch.headers["Location"]
        digest = str(Digest.of(data))
        done = http.put(location, params={"digest": digest})
        assert done.status_code == 201, done.text
        for replica in cluster.replicas:  # every replica serves the whole, right bytes
            got = httpx.get(f"{replica.url}/v2/lb/chunked/blobs/{digest}", timeout=120)
            assert got.status_code == 200 and Digest.of(got.content) == Digest.parse(digest)
    served = [now - then for now, then in zip(cluster.balancer.connections, before,
                                              strict=True)]
    assert min(served) >= 3, served  # 6 requests, alternating


def test_a_replica_killed_mid_push_and_the_clients_retry(
        cluster: Cluster, dockerd: DockerDaemon) -> None:
    tag = big_image(dockerd, f"{cluster.host}/lb/big:v1", megabytes=64)
    outcome: dict[str, object] = {}

    def push() -> None:
        outcome["first"] = dockerd.docker("push", tag, check=False, timeout=600)

    cluster.balancer.reset_counts()
    pushing = threading.Thread(target=push)
    pushing.start()
    deadline = time.monotonic() + 120
    while cluster.balancer.upstream_bytes < 16 * MiB and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cluster.balancer.upstream_bytes >= 16 * MiB, "the push never got going"
    victim = cluster.replicas[0]
    victim.stop(kill=True)  # SIGKILL, mid-push
    pushing.join(timeout=600)
    retry = dockerd.docker("push", tag, check=False, timeout=600)  # what a client does next
    assert retry.returncode == 0, retry.stderr
    digest = PUSHED.search(retry.stdout)
    assert digest
    victim.start()  # back, and serving what the other one stored
    dockerd.docker("rmi", tag)
    dockerd.docker("pull", tag)
    check = dockerd.docker("run", "--rm", "--network", "none", tag, "sh", "-c",
                           "wc -c < /blob").stdout.strip()
    assert check == str(64 * MiB)
    for replica in cluster.replicas:
        manifest = httpx.get(f"{replica.url}/v2/lb/big/manifests/v1", timeout=30, headers={
            "Accept": "application/vnd.docker.distribution.manifest.v2+json"})
        assert manifest.headers["Docker-Content-Digest"] == digest.group(1)


def test_one_tag_pushed_through_both_replicas_at_once(
        cluster: Cluster, dockerd: DockerDaemon, skopeo: Skopeo) -> None:  # noqa: F811
    digests = []
    for name in ("first", "second"):
        tag = build_busybox_image(dockerd, f"{cluster.host}/lb/{name}:v1", layers=2)
        pushed = PUSHED.search(dockerd.docker("push", tag).stdout)
        assert pushed
        digests.append(pushed.group(1))
    target = f"docker://{cluster.host}/lb/same:v1"
    with ThreadPoolExecutor(2) as pool:
        copies = [pool.submit(skopeo.copy, f"docker://{cluster.host}/lb/{name}:v1", target)
                  for name in ("first", "second")]
        for copy in copies:
            copy.result()  # neither fails
    for replica in cluster.replicas:  # both agree on what the tag is now
        seen = httpx.head(f"{replica.url}/v2/lb/same/manifests/v1", timeout=30, headers={
            "Accept": "application/vnd.docker.distribution.manifest.v2+json"})
        assert seen.headers["Docker-Content-Digest"] in digests
    answers = {httpx.head(f"{r.url}/v2/lb/same/manifests/v1", timeout=30, headers={
        "Accept": "application/vnd.docker.distribution.manifest.v2+json"}
    ).headers["Docker-Content-Digest"] for r in cluster.replicas}
    assert len(answers) == 1
    dockerd.docker("pull", f"{cluster.host}/lb/same:v1")


# Auth on: keys shared through the database, a token from one replica good on the other ----


ADMIN = ("admin", "admin secret for the replicas")


@pytest.fixture(scope="module")
def auth_cluster(postgres: PostgresServer, seaweedfs: SeaweedFS,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("auth-cluster")
    secret = root / "keys-secret"
    secret.write_text(f"keys secret {uuid.uuid4().hex}\n")
    env = {**seaweedfs.settings(seaweedfs.new_bucket("auth-cluster")),
           "REGISTRY_DATABASE_URL": postgres.create_database(f"auth_{uuid.uuid4().hex[:8]}"),
           "REGISTRY_AUTH_ENABLED": "true",
           "REGISTRY_AUTH_KEYS_STORE": "database",
           "REGISTRY_AUTH_KEYS_SECRET_FILE": str(secret)}

    def add_admin(replicas: list[RegistryServer]) -> None:
        made = subprocess.run(
            [sys.executable, "-m", "registry", "user", "add", ADMIN[0], "--admin",
             "--password-stdin", "--data", str(replicas[0].data_dir)],
            input=ADMIN[1], capture_output=True, text=True, env=replicas[0].env, timeout=120,
            check=False,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr

    yield from _running(root, env, add_admin)


def token_from(replica: RegistryServer, scope: str) -> str:
    answer = httpx.get(f"{replica.url}/auth/token", auth=ADMIN, timeout=30,
                       params={"service": "pocket-registry", "scope": scope})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["token"])


def test_with_auth_docker_logs_in_pushes_and_pulls_through_the_balancer(
        auth_cluster: Cluster, dockerd: DockerDaemon) -> None:
    host = auth_cluster.host
    before = list(auth_cluster.balancer.connections)
    tag = build_busybox_image(dockerd, f"{host}/admin/secured:v1", layers=2)
    anonymous = dockerd.docker("push", tag, check=False)
    assert anonymous.returncode != 0  # no credentials, no push
    dockerd.docker("login", host, "--username", ADMIN[0], "--password-stdin", input=ADMIN[1])
    try:
        pushed = PUSHED.search(dockerd.docker("push", tag).stdout)
        assert pushed
        dockerd.docker("rmi", tag)
        dockerd.docker("pull", tag)
        assert dockerd.docker("run", "--rm", "--network", "none", tag).returncode == 0
    finally:
        dockerd.docker("logout", host, check=False)
    served = [now - then for now, then in zip(auth_cluster.balancer.connections, before,
                                              strict=True)]
    assert all(count > 0 for count in served), served  # both replicas took part

    # A token that one replica issued works on the other, and only within its scope.
    token = token_from(auth_cluster.replicas[0], "repository:admin/secured:pull")
    accept = {"Accept": "application/vnd.docker.distribution.manifest.v2+json"}
    for replica in reversed(auth_cluster.replicas):
        got = httpx.get(f"{replica.url}/v2/admin/secured/manifests/v1", timeout=30,
                        headers={**accept, "Authorization": f"Bearer {token}"})
        assert got.status_code == 200, got.text
        assert got.headers["Docker-Content-Digest"] == pushed.group(1)
        beyond = httpx.post(f"{replica.url}/v2/admin/secured/blobs/uploads/", timeout=30,
                            headers={"Authorization": f"Bearer {token}"})
        assert beyond.status_code == 401, beyond.text  # pull only: no push with it
        elsewhere = httpx.get(f"{replica.url}/v2/admin/other/tags/list", timeout=30,
                              headers={"Authorization": f"Bearer {token}"})
        assert elsewhere.status_code == 401, elsewhere.text
    # Both replicas publish the same signing keys.
    keys = [{key["kid"] for key in httpx.get(f"{r.url}/auth/jwks", timeout=30).json()["keys"]}
            for r in auth_cluster.replicas]
    assert keys[0] == keys[1] and keys[0]
