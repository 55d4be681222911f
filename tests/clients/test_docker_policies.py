"""Lifecycle policies seen by real docker (the private dockerd): an immutable tag cannot be
pushed again with other content but can with the same; a namespace's quota lets an image
in, refuses the next one with a message saying what is used and allowed, and still takes
a new tag of what it holds. Rules are set with the CLI while the server runs."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from auth.helpers import run_cli

from support.dockerd import DockerDaemon, build_busybox_image
from support.server import RegistryServer

pytestmark = pytest.mark.clients

ENV = {
    "REGISTRY_GC_ENABLED": "false",  # only the runs the tests ask for
    "REGISTRY_GC_BLOB_GRACE_SECONDS": "0",
}
ACCEPT = "application/vnd.docker.distribution.manifest.v2+json"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    server = RegistryServer(tmp_path_factory.mktemp("docker-policies") / "data", env=ENV)
    server.start()
    yield server
    server.stop()


def cli(server: RegistryServer, *args: str) -> str:
    done = run_cli(server.data_dir, *args, env=server.env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def refused(dockerd: DockerDaemon, ref: str) -> str:
    """`docker push ref` fails; what it said."""
    push = dockerd.docker("push", ref, check=False)
    assert push.returncode != 0, push.stdout
    return push.stdout + push.stderr


def test_an_immutable_tag_is_pushed_once(dockerd: DockerDaemon, server: RegistryServer) -> None:
    cli(server, "immutable", "add", "frozen/*", "v*")
    first, second = (f"{server.host}/frozen/{name}" for name in ("first", "second"))
    build_busybox_image(dockerd, f"{first}:v1", layers=2)
    build_busybox_image(dockerd, f"{second}:v1", layers=2)
    dockerd.docker("push", f"{first}:v1")
    dockerd.docker("push", f"{first}:v1")  # the same content again: fine

    dockerd.docker("tag", f"{second}:v1", f"{first}:v1")  # other content, same tag
    said = refused(dockerd, f"{first}:v1")
    assert "immutable" in said and "frozen/*" in said and "denied" in said.lower(), said
    dockerd.docker("tag", f"{second}:v1", f"{first}:latest")  # not protected
    dockerd.docker("push", f"{first}:latest")

    dockerd.docker("rmi", f"{first}:v1", f"{first}:latest", f"{second}:v1")
    dockerd.docker("pull", f"{first}:v1")
    listed = cli(server, "pulls", "frozen/first", "--json")
    assert '"tag": "v1"' in listed


def test_a_quota_lets_one_image_in_and_refuses_the_next(
    dockerd: DockerDaemon, server: RegistryServer
) -> None:
    one, two = (f"{server.host}/capped/{name}" for name in ("one", "two"))
    build_busybox_image(dockerd, f"{one}:v1", layers=2)
    build_busybox_image(dockerd, f"{two}:v1", layers=2)
    cli(server, "quota", "set", "capped", "1GiB")
    dockerd.docker("push", f"{one}:v1")
    [row] = json.loads(cli(server, "usage", "capped", "--json"))
    used = int(row["used"])
    assert used > 100_000  # busybox, compressed

    cli(server, "quota", "set", "capped", str(used + used // 2))  # room for half an image
    said = refused(dockerd, f"{two}:v1")
    assert "quota" in said and "capped" in said and "allowed" in said, said
    [row] = json.loads(cli(server, "usage", "capped", "--json"))
    assert int(row["used"]) == used  # nothing of the refused image counts

    dockerd.docker("tag", f"{one}:v1", f"{one}:again")  # adds nothing: allowed
    dockerd.docker("push", f"{one}:again")
    cli(server, "quota", "set", "capped", str(3 * used))
    dockerd.docker("push", f"{two}:v1")
    usage = cli(server, "usage", "capped")
    assert "capped" in usage and "%" in usage


def test_retention_keeps_what_its_rules_keep(dockerd: DockerDaemon, server: RegistryServer) -> None:
    repo = f"{server.host}/kept/app"
    build_busybox_image(dockerd, f"{repo}:base", layers=2)
    for tag in ("old-1", "old-2", "stable", "new-1"):
        dockerd.docker("tag", f"{repo}:base", f"{repo}:{tag}")  # one image, several tags
    build_busybox_image(dockerd, f"{repo}:other", layers=2)
    for tag in ("old-1", "old-2", "stable", "base"):
        dockerd.docker("push", f"{repo}:{tag}")
    dockerd.docker("push", f"{repo}:other")
    dockerd.docker("push", f"{repo}:new-1")  # the newest push
    cli(server, "retention", "set", "kept/*", "--keep-last", "1", "--keep-tags", "stable,other")

    preview = json.loads(cli(server, "retention", "run", "--dry-run", "--json"))
    assert sorted(e["tag"] for e in preview["removed"]) == ["base", "old-1", "old-2"]
    dockerd.docker("pull", f"{repo}:old-1")  # a dry run removes nothing

    cli(server, "retention", "run")
    for tag in ("base", "old-1", "old-2"):
        dockerd.docker("rmi", f"{repo}:{tag}")
        gone = dockerd.docker("pull", f"{repo}:{tag}", check=False)
        assert gone.returncode != 0 and "not found" in (gone.stdout + gone.stderr).lower()
    for tag in ("stable", "new-1", "other"):  # stable and new-1 are the same image as old-1
        dockerd.docker("rmi", f"{repo}:{tag}")
        dockerd.docker("pull", f"{repo}:{tag}")


def blobs_of(server: RegistryServer, repository: str, tag: str) -> list[str]:
    answer = httpx.get(
        f"{server.url}/v2/{repository}/manifests/{tag}", headers={"Accept": ACCEPT}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    doc = answer.json()
    return [doc["config"]["digest"], *(layer["digest"] for layer in doc["layers"])]


def on_disk(server: RegistryServer, digest: str) -> bool:
    algorithm, encoded = digest.split(":", 1)
    return (server.data_dir / "storage" / "blobs" / algorithm / encoded[:2] / encoded).is_dir()


def test_retention_with_garbage_collection_frees_what_only_removed_tags_held(
    dockerd: DockerDaemon, server: RegistryServer
) -> None:
    repo = f"{server.host}/pruned/app"
    for tag in ("old", "new"):
        build_busybox_image(dockerd, f"{repo}:{tag}", layers=2)
        dockerd.docker("push", f"{repo}:{tag}")
    old, new = blobs_of(server, "pruned/app", "old"), blobs_of(server, "pruned/app", "new")
    assert all(on_disk(server, d) for d in old + new)
    # Two builds in the same second can share a layer (same bytes, same times): that one
    # stays, as new still holds it.
    only_old = [d for d in old if d not in new]
    cli(server, "retention", "set", "pruned/*", "--keep-last", "1", "--untagged-after", "0s")

    preview = json.loads(cli(server, "gc", "--dry-run", "--json"))
    assert [e["tag"] for e in preview["retention"]["removed"]] == ["old"]
    assert all(on_disk(server, d) for d in old)

    # Untags old and deletes its manifest; its blobs, unreferenced, go in the same run.
    report = json.loads(cli(server, "gc", "--json"))
    assert report["tags_removed"] == 1 and report["blobs_deleted"] == len(only_old)
    assert not any(on_disk(server, d) for d in only_old)
    assert all(on_disk(server, d) for d in new)
    dockerd.docker("rmi", f"{repo}:old", f"{repo}:new")
    gone = dockerd.docker("pull", f"{repo}:old", check=False)
    assert gone.returncode != 0
    dockerd.docker("pull", f"{repo}:new")
    dockerd.docker("run", "--rm", "--network", "none", f"{repo}:new")
