"""Pushing local images to real registries (ours and CNCF Distribution), watched by a proxy
that notes every request: blobs the registry has are skipped, blobs of another repository
are mounted, large blobs go in chunks that resume after a dropped connection, indexes of
local platforms go with their manifests, and tokens are asked for pull,push."""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest

from registry.oci.manifest import Platform
from registry.runtime import credentials
from registry.runtime.errors import AccessDenied, InvalidReference, LocalImageNotFound
from registry.runtime.images import ImageIndex
from registry.runtime.pull import Puller
from registry.runtime.push import Pusher as RuntimePusher
from registry.runtime.store import Store
from runtime.distribution import Distribution
from runtime.httpproxy import HttpProxy
from runtime.imaging import Image, Layer, Pusher, directory, file, sha256, tar_bytes
from runtime.runner import cli
from runtime.tokenserver import TokenServer

from support.server import RegistryServer

MiB = 1 << 20


def small_image(tag: str) -> Image:
    return Image([Layer(tar_bytes([directory("etc"), file("etc/which", tag)])),
                  Layer(tar_bytes([file(f"{tag}.txt", tag * 100)]))], {"Cmd": ["/bin/sh"]})


def random_image(size: int) -> Image:
    """One layer that gzip cannot shrink: `size` random bytes, so it goes in chunks."""
    return Image([Layer(tar_bytes([file("blob.bin", os.urandom(size))]), "none")])


@pytest.fixture
def proxy(registry_server: RegistryServer) -> Iterator[HttpProxy]:
    p = HttpProxy(registry_server.port)
    yield p
    p.close()


def blob_requests(p: HttpProxy, method: str) -> list[str]:
    return [r.path for r in p.requests if r.method == method and "/blobs/" in r.path]


def test_push_skips_blobs_the_registry_has(
        registry_server: RegistryServer, pusher: Pusher, proxy: HttpProxy, store: Store,
        capsys: pytest.CaptureFixture[str]) -> None:
    pusher.image("push/skip", "v1", small_image("skip"))
    record = Puller(store).pull(f"{proxy.host}/push/skip:v1")
    ImageIndex(store).add(record, [f"{proxy.host}/push/skip:v2"])
    proxy.requests.clear()
    digest = RuntimePusher(store).push(f"{proxy.host}/push/skip:v2")
    assert digest == record.manifest_digest
    assert len(blob_requests(proxy, "HEAD")) == 3  # two layers and the config
    assert blob_requests(proxy, "POST") == blob_requests(proxy, "PATCH") == []
    assert [r.path for r in proxy.requests if r.method == "PUT"] == [
        "/v2/push/skip/manifests/v2"]
    assert capsys.readouterr().out.count("Layer already exists") == 3
    tagged = httpx.head(f"{registry_server.url}/v2/push/skip/manifests/v2",
                        headers={"Accept": record.manifest_media_type})
    assert tagged.headers["Docker-Content-Digest"] == digest


def test_push_mounts_blobs_from_the_repository_it_came_from(
        registry_server: RegistryServer, pusher: Pusher, proxy: HttpProxy, store: Store,
        capsys: pytest.CaptureFixture[str]) -> None:
    pusher.image("push/mount-src", "v1", small_image("mount"))
    record = Puller(store).pull(f"{proxy.host}/push/mount-src:v1")
    assert cli("tag", f"{proxy.host}/push/mount-src:v1", f"{proxy.host}/push/mount-dst:v1",
               env={"POCKET_RUNTIME_ROOT": str(store.root)}).returncode == 0
    proxy.requests.clear()
    RuntimePusher(store).push(f"{proxy.host}/push/mount-dst:v1")
    posts = blob_requests(proxy, "POST")
    assert len(posts) == 3 and all("from=push/mount-src" in p for p in posts)
    assert blob_requests(proxy, "PATCH") == blob_requests(proxy, "PUT") == []
    assert capsys.readouterr().out.count("Mounted from push/mount-src") == 3
    for digest in record.layers:
        here = httpx.head(f"{registry_server.url}/v2/push/mount-dst/blobs/{digest}")
        assert here.status_code == 200
    # the record now knows the new repository holds the blobs, and its digest reference
    after = ImageIndex(store).get(f"{proxy.host}/push/mount-dst:v1")
    assert f"{proxy.host}/push/mount-dst@{record.manifest_digest}" in after.refs
    assert all(f"{proxy.host}/push/mount-dst" in after.blob_sources[d] for d in record.layers)


def resumable_push(origin_url: str, origin_host: str, goal_port: int, store: Store,
                   monkeypatch: pytest.MonkeyPatch, name: str) -> tuple[HttpProxy, str,
                                                                       list[int], int]:
    """A 1 MiB layer pushed in 256 KiB PATCHes through a proxy that cuts the third one
    after 100 KiB: (the proxy, the layer's digest, the chunks' offsets, resumes)."""
    chunk = 256 << 10
    image = random_image(MiB - 4096)
    Pusher(origin_url).image(name, "v1", image)
    record = Puller(store).pull(f"{origin_host}/{name}:v1")
    monkeypatch.setenv("POCKET_PUSH_CHUNK_SIZE", str(chunk))
    proxy = HttpProxy(goal_port, cut_patch=3, cut_after=100 << 10)
    ref = f"{proxy.host}/{name}:v1"
    ImageIndex(store).add(record, [ref])
    pushing = RuntimePusher(store)
    pushing.push(ref)
    starts = list(range(0, len(image.layers[0].blob), chunk))
    assert len(starts) >= 4
    return proxy, record.layers[0], starts, pushing.resumed


def patch_starts(proxy: HttpProxy) -> list[int]:
    return [int(r.headers["content-range"].split("-")[0]) for r in proxy.requests
            if r.method == "PATCH"]


def test_chunked_upload_resumes_after_a_dropped_connection(
        registry_server: RegistryServer, distribution: Distribution, store: Store,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The push asks our registry where the upload is (GET) and goes on from there: the
    first two chunks are not sent again."""
    proxy, layer, starts, resumed = resumable_push(
        distribution.url, distribution.host, registry_server.port, store, monkeypatch,
        "push/resume")
    proxy.close()
    assert resumed == 1
    assert [r.cut for r in proxy.requests if r.method == "PATCH"] == \
        [False, False, True] + [False] * (len(starts) - 2)
    assert patch_starts(proxy) == starts[:3] + starts[2:]
    assert len([r for r in proxy.requests if r.method == "GET" and "/uploads/" in r.path]) == 1
    got = httpx.get(f"{registry_server.url}/v2/push/resume/blobs/{layer}")
    assert got.status_code == 200 and sha256(got.content) == layer


def test_chunked_upload_to_distribution_starts_over_when_the_session_is_lost(
        registry_server: RegistryServer, distribution: Distribution, store: Store,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Distribution cancels a session whose last chunk half arrived (its size no longer
    matches the state in the upload's URL): the status answers 404, and the push starts
    a new upload rather than fail."""
    proxy, layer, starts, resumed = resumable_push(
        registry_server.url, registry_server.host, distribution.port, store, monkeypatch,
        "push/resume-dist")
    proxy.close()
    assert resumed == 1
    assert patch_starts(proxy) == starts[:3] + starts
    got = httpx.get(f"{distribution.url}/v2/push/resume-dist/blobs/{layer}")
    assert got.status_code == 200 and sha256(got.content) == layer


def test_push_without_credentials_and_with_token_login(
        token_registry: tuple[Distribution, TokenServer], registry_server: RegistryServer,
        pusher: Pusher, store: Store) -> None:
    reg, tokens = token_registry
    pusher.image("push/tokens", "v1", small_image("tokens"))
    record = Puller(store).pull(f"{registry_server.host}/push/tokens:v1")
    ref = f"{reg.host}/push/tokens:v1"
    ImageIndex(store).add(record, [ref])
    with pytest.raises(AccessDenied):
        RuntimePusher(store).push(ref)
    credentials.store(reg.host, credentials.Credentials("alice", "wonderland"))
    tokens.requests.clear()
    assert RuntimePusher(store).push(ref) == record.manifest_digest
    scopes = {s for r in tokens.requests for s in r["query"]["scope"]}
    assert "repository:push/tokens:pull,push" in scopes
    assert Puller(store).pull(ref).manifest_digest == record.manifest_digest


def test_push_with_basic_auth(basic_registry: Distribution, registry_server: RegistryServer,
                              pusher: Pusher, store: Store) -> None:
    pusher.image("push/basic", "v1", small_image("basic"))
    record = Puller(store).pull(f"{registry_server.host}/push/basic:v1")
    ref = f"{basic_registry.host}/push/basic:v1"
    ImageIndex(store).add(record, [ref])
    with pytest.raises(AccessDenied, match="registry login"):
        RuntimePusher(store).push(ref)
    credentials.store(basic_registry.host, credentials.Credentials("alice", "wonderland"))
    assert RuntimePusher(store).push(ref) == record.manifest_digest


def platform_images() -> list[Image]:
    return [Image([Layer(tar_bytes([file("arch", arch)]))], architecture=arch)
            for arch in ("amd64", "arm64")]


def test_index_goes_with_the_platforms_in_the_store(
        registry_server: RegistryServer, distribution: Distribution, pusher: Pusher,
        store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    index = pusher.index("push/multi", "v1", platform_images())
    source = f"{registry_server.host}/push/multi:v1"
    one = Puller(store).pull(source, Platform("amd64", "linux"))
    only = f"{distribution.host}/push/multi-one:v1"
    ImageIndex(store).add(ImageIndex(store).get(source), [only])
    assert RuntimePusher(store).push(only) == one.manifest_digest  # arm64 is not here
    assert "Pushing only linux/amd64" in capsys.readouterr().out
    Puller(store).pull(source, Platform("arm64", "linux"))
    both = f"{distribution.host}/push/multi:v1"
    ImageIndex(store).add(ImageIndex(store).get(source), [both])
    assert RuntimePusher(store).push(both) == index
    with httpx.Client(base_url=distribution.url) as http:
        top = http.get("/v2/push/multi/manifests/v1",
                       headers={"Accept": "application/vnd.oci.image.index.v1+json"})
        assert top.headers["Docker-Content-Digest"] == index
        for child in top.json()["manifests"]:
            assert http.head(f"/v2/push/multi/manifests/{child['digest']}",
                             headers={"Accept": child["mediaType"]}).status_code == 200


def test_push_and_tag_errors(store: Store, registry_server: RegistryServer, pusher: Pusher
                             ) -> None:
    with pytest.raises(LocalImageNotFound, match="does not exist locally"):
        RuntimePusher(store).push(f"{registry_server.host}/push/nothing:v1")
    pusher.image("push/tagme", "v1", small_image("tag"))
    Puller(store).pull(f"{registry_server.host}/push/tagme:v1")
    env = {"POCKET_RUNTIME_ROOT": str(store.root)}
    bad = cli("tag", f"{registry_server.host}/push/tagme:v1", f"x/y@sha256:{'0' * 64}", env=env)
    assert bad.returncode == 1 and bad.stderr.startswith("Error: invalid tag")
    missing = cli("tag", "push/none:v1", "push/other:v1", env=env)
    assert missing.returncode == 1 and "no such image" in missing.stderr
    done = cli("tag", f"{registry_server.host}/push/tagme:v1", "team/app:2", env=env)
    assert done.returncode == 0, done.stderr
    assert "localhost:5000/team/app" in cli("images", env=env).stdout
    with pytest.raises(InvalidReference):
        RuntimePusher(store).push("UPPER/case")
