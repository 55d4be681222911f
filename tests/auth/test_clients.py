"""Real clients against the auth-enabled registry: skopeo with --creds, the ORAS SDK with
credentials, and docker (login, push and pull in one's namespace, push elsewhere denied,
anonymous pull of a public repository, a pull-only CI token that cannot push)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import oras.client
import pytest

from auth.conftest import AuthRegistry, start_auth_server
from auth.helpers import bearer, token_for

from support.dockerd import BusyboxImagePlan, DockerDaemon, build_busybox_image, in_ci

pytestmark = pytest.mark.clients

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def manifest_exists(auth_server: AuthRegistry, repository: str, tag: str) -> bool:
    token = token_for(auth_server.url, [f"repository:{repository}:pull"], auth_server.admin)
    answer = httpx.head(
        f"{auth_server.url}/v2/{repository}/manifests/{tag}",
        headers={**bearer(token), "Accept": OCI_MANIFEST},
    )
    return answer.status_code == 200


# -- skopeo ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def skopeo_binary() -> str:
    binary = shutil.which("skopeo")
    if binary is None:
        if in_ci():
            pytest.fail("skopeo not found: CI must run the client tests", pytrace=False)
        pytest.skip("skopeo not found (Debian package skopeo)")
    return binary


def skopeo(binary: str, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "REGISTRY_AUTH_FILE": str(home / "auth.json"),
        "CONTAINERS_REGISTRIES_CONF": str(home / "registries.conf"),
    }
    (home / "auth.json").write_text("{}\n")
    (home / "registries.conf").write_text("")
    return subprocess.run(
        [binary, "--insecure-policy", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def oci_layout(root: Path) -> Path:
    """An OCI layout with one small image tagged `v1`."""
    files = io.BytesIO()
    with tarfile.open(fileobj=files, mode="w") as tar:
        data = f"made by {uuid.uuid4().hex}\n".encode()
        info = tarfile.TarInfo("hello.txt")
        info.size, info.mtime = len(data), 1_700_000_000
        tar.addfile(info, io.BytesIO(data))
    layer = files.getvalue()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [sha256(layer)]},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": sha256(layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for blob in (layer, config, manifest):
        (blobs / sha256(blob).removeprefix("sha256:")).write_bytes(blob)
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": sha256(manifest),
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": "v1"},
            }
        ],
    }
    (root / "index.json").write_text(json.dumps(index))
    return root


def test_skopeo_with_credentials(
    auth_server: AuthRegistry, skopeo_binary: str, tmp_path: Path
) -> None:
    user, other = auth_server.new_user(), auth_server.new_user()
    layout = oci_layout(tmp_path / "layout")
    mine = f"docker://{auth_server.host}/{user[0]}/skopeo:v1"
    creds = f"{user[0]}:{user[1]}"
    copy = ["copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false"]
    done = skopeo(skopeo_binary, tmp_path, *copy, "--dest-creds", creds, f"oci:{layout}:v1", mine)
    assert done.returncode == 0, done.stderr
    assert manifest_exists(auth_server, f"{user[0]}/skopeo", "v1")
    inspected = skopeo(
        skopeo_binary, tmp_path, "inspect", "--tls-verify=false", "--creds", creds, mine
    )
    assert inspected.returncode == 0, inspected.stderr
    assert json.loads(inspected.stdout)["Name"] == f"{auth_server.host}/{user[0]}/skopeo"
    tags = skopeo(
        skopeo_binary, tmp_path, "list-tags", "--tls-verify=false", "--creds", creds,
        f"docker://{auth_server.host}/{user[0]}/skopeo",
    )  # fmt: skip
    assert json.loads(tags.stdout)["Tags"] == ["v1"]
    # Into someone else's namespace: refused, and nothing lands there.
    theirs = f"docker://{auth_server.host}/{other[0]}/skopeo:v1"
    denied = skopeo(
        skopeo_binary, tmp_path, *copy, "--dest-creds", creds, f"oci:{layout}:v1", theirs
    )
    assert denied.returncode != 0
    assert not manifest_exists(auth_server, f"{other[0]}/skopeo", "v1")
    # Without credentials, or with wrong ones, not even a read.
    anonymous = skopeo(skopeo_binary, tmp_path, "inspect", "--tls-verify=false", mine)
    assert anonymous.returncode != 0
    wrong = skopeo(
        skopeo_binary, tmp_path, "inspect", "--tls-verify=false", "--creds", f"{user[0]}:nope", mine
    )
    assert wrong.returncode != 0
    # A pull-only CI token copies out, and cannot copy in.
    name, secret = auth_server.new_token([f"{user[0]}/*:pull"], owner=user[0])
    ci = f"{name}:{secret}"
    out = skopeo(
        skopeo_binary, tmp_path, *copy[:2], "--src-tls-verify=false", "--src-creds", ci, mine,
        f"dir:{tmp_path / 'out'}",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "out" / "manifest.json").exists()
    push = skopeo(
        skopeo_binary, tmp_path, *copy, "--dest-creds", ci, f"oci:{layout}:v1",
        f"docker://{auth_server.host}/{user[0]}/skopeo:ci",
    )  # fmt: skip
    assert push.returncode != 0
    assert not manifest_exists(auth_server, f"{user[0]}/skopeo", "ci")


# -- ORAS ------------------------------------------------------------------------------------


def oras_client(
    auth_server: AuthRegistry, credentials: tuple[str, str] | None, backend: str = "token"
) -> Any:
    client = oras.client.OrasClient(hostname=auth_server.host, insecure=True, auth_backend=backend)
    if credentials is not None:
        client.auth.set_basic_auth(*credentials)
    return client


def test_oras_with_credentials(auth_server: AuthRegistry, tmp_path: Path) -> None:
    """Pulls through the token flow; pushes with the SDK's basic backend (credentials on each
    request, accepted on /v2/). ORAS-py 0.2's token backend keeps its first token through a
    401 and widens it only after a 403 (oras-py issue 67, the same against Harbor and
    Distribution), so a push that starts with a HEAD cannot get push access that way."""
    user = auth_server.new_user()
    artifact = tmp_path / "notes.txt"
    artifact.write_text(f"release notes {uuid.uuid4().hex}\n")
    target = f"{auth_server.host}/{user[0]}/oras-notes:v1"
    cwd = os.getcwd()
    os.chdir(tmp_path)  # ORAS names layers by their path as given
    try:
        pushed = oras_client(auth_server, user, "basic").push(target=target, files=["notes.txt"])
        assert pushed.status_code == 201, pushed.text
    finally:
        os.chdir(cwd)
    outdir = tmp_path / "pulled"
    files = oras_client(auth_server, user).pull(target=target, outdir=str(outdir))
    assert [Path(f).read_text() for f in files] == [artifact.read_text()]
    # A stranger's credentials, or none, get nothing, by either backend.
    stranger = auth_server.new_user()
    for backend in ("token", "basic"):
        with pytest.raises(Exception):  # noqa: B017 - the SDK raises ValueError or its own
            oras_client(auth_server, stranger, backend).pull(
                target=target, outdir=str(tmp_path / "x")
            )
    assert not (tmp_path / "x" / "notes.txt").exists()
    os.chdir(tmp_path)
    try:
        theirs = f"{auth_server.host}/{stranger[0]}/oras-notes:v1"
        refused = oras_client(auth_server, user, "basic")
        with pytest.raises(Exception):  # noqa: B017
            answer = refused.push(target=theirs, files=["notes.txt"])
            assert answer.status_code == 201  # not reached: the first upload fails
    finally:
        os.chdir(cwd)
    assert not manifest_exists(auth_server, f"{stranger[0]}/oras-notes", "v1")
    # Once public, anonymous ORAS pulls work too.
    auth_server.make_public(f"{user[0]}/oras-notes")
    again = oras_client(auth_server, None).pull(target=target, outdir=str(tmp_path / "anon"))
    assert [Path(f).read_text() for f in again] == [artifact.read_text()]


# -- docker ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image(dockerd: DockerDaemon) -> Iterator[str]:
    tag = build_busybox_image(dockerd, f"auth-busybox:{uuid.uuid4().hex[:8]}", layers=2)
    yield tag
    dockerd.docker("rmi", "--force", tag, check=False)


def docker_login(dockerd: DockerDaemon, host: str, username: str, secret: str) -> None:
    dockerd.docker("login", host, "--username", username, "--password-stdin", input=secret)


def test_docker(auth_server: AuthRegistry, dockerd: DockerDaemon, image: str) -> None:
    host = auth_server.host
    alice, bob = auth_server.new_user(), auth_server.new_user()
    expected = BusyboxImagePlan(2).expected_output()

    # docker login, then push and pull in one's own namespace.
    docker_login(dockerd, host, *alice)
    config = json.loads((Path(dockerd.env["DOCKER_CONFIG"]) / "config.json").read_text())
    stored = config["auths"][host]
    assert "identitytoken" in stored  # the refresh token: docker keeps it, not the password
    assert alice[1] not in json.dumps(config)
    auth_server.secrets.append(stored["identitytoken"])
    mine = f"{host}/{alice[0]}/busybox:v1"
    dockerd.docker("tag", image, mine)
    dockerd.docker("push", mine)
    assert manifest_exists(auth_server, f"{alice[0]}/busybox", "v1")
    private = f"{host}/{alice[0]}/private:v1"
    dockerd.docker("tag", image, private)
    dockerd.docker("push", private)
    dockerd.docker("rmi", mine, private)
    dockerd.docker("pull", mine)
    run = dockerd.docker("run", "--rm", "--network", "none", mine)
    assert run.stdout == expected

    # Pushing into Bob's namespace is refused.
    theirs = f"{host}/{bob[0]}/busybox:v1"
    dockerd.docker("tag", image, theirs)
    refused = dockerd.docker("push", theirs, check=False)
    assert refused.returncode != 0
    assert any(
        word in refused.stderr.lower() for word in ("denied", "unauthorized", "insufficient")
    )
    assert not manifest_exists(auth_server, f"{bob[0]}/busybox", "v1")

    # A repository made public is pulled with no login at all; a private one is not.
    auth_server.make_public(f"{alice[0]}/busybox")
    dockerd.docker("logout", host)
    dockerd.docker("rmi", mine)
    dockerd.docker("pull", mine)
    assert dockerd.docker("pull", private, check=False).returncode != 0

    # A CI token limited to pull pulls, and cannot push.
    ci_name, ci_secret = auth_server.new_token([f"{alice[0]}/*:pull"], owner=alice[0])
    docker_login(dockerd, host, ci_name, ci_secret)
    built = f"{host}/{alice[0]}/built:v1"
    dockerd.docker("tag", image, built)
    denied = dockerd.docker("push", built, check=False)
    assert denied.returncode != 0
    assert not manifest_exists(auth_server, f"{alice[0]}/built", "v1")
    dockerd.docker("rmi", mine)
    dockerd.docker("pull", mine)
    dockerd.docker("logout", host)
    for ref in (mine, theirs, built, private):
        dockerd.docker("rmi", "--force", ref, check=False)


def blob_requests(log: str, repository: str) -> list[tuple[str, str, int]]:
    """(method, path and query, status) of every blob-upload request to `repository` in an
    access log."""
    found = []
    pattern = re.compile(r'"(POST|PATCH|PUT) (/v2/([^ ]+)/blobs/uploads/[^ "]*)" (\d+)')
    for match in pattern.finditer(log):
        if match[3] == repository:
            found.append((match[1], match[2], int(match[4])))
    return found


def query_digest(path: str, key: str) -> str:
    return urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)[key][0]


def test_docker_mounts_layers_the_user_can_read(
    dockerd: DockerDaemon, image: str, tmp_path: Path
) -> None:
    """docker push of an image whose layers are in a repository the user may pull: each
    layer is mounted from there, none sent again; a user who may not pull uploads them."""
    server = start_auth_server(tmp_path, env={"REGISTRY_SERVER_ACCESS_LOG": "true"})
    registry = AuthRegistry(server)
    try:
        host = server.host
        bob, alice, carol = registry.new_user(), registry.new_user(), registry.new_user()
        base = f"{host}/{bob[0]}/base:v1"
        docker_login(dockerd, host, *bob)
        dockerd.docker("tag", image, base)
        dockerd.docker("push", base)
        registry.grant(f"{bob[0]}/base", "pull", user=alice[0])
        for user, pushed_ok_by_mount in ((alice, True), (carol, False)):
            docker_login(dockerd, host, *user)
            target = f"{user[0]}/app"
            dockerd.docker("tag", image, f"{host}/{target}:v1")
            dockerd.docker("push", f"{host}/{target}:v1")
            assert manifest_exists(registry, target, "v1")
            requests = blob_requests(server.log_path.read_text(errors="replace"), target)
            mounts = [r for r in requests if "mount=" in r[1] and "from=" in r[1]]
            layers = {query_digest(r[1], "mount") for r in mounts}
            sent = {query_digest(r[1], "digest") for r in requests if r[0] == "PUT"}
            assert len(layers) == 2, requests  # docker mounts layers, and sends the config
            if pushed_ok_by_mount:
                assert {r[2] for r in mounts} == {201}, requests
                assert len(sent) == 1 and not sent & layers, requests  # no layer sent again
            else:  # each mount refused quietly (202), then the layer uploaded
                assert {r[2] for r in mounts} == {202}, requests
                assert layers < sent, requests
        dockerd.docker("logout", host)
        for ref in (base, f"{host}/{alice[0]}/app:v1", f"{host}/{carol[0]}/app:v1"):
            dockerd.docker("rmi", "--force", ref, check=False)
    finally:
        server.stop()
