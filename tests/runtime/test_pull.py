"""Pulling from a real registry (CNCF Distribution): formats, platforms, checks, auth."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from registry.oci.manifest import Platform
from registry.runtime import credentials
from registry.runtime.errors import (
    AccessDenied,
    ContentInvalid,
    ImageNotFound,
    PlatformNotFound,
    RegistryUnreachable,
)
from registry.runtime.images import ImageIndex
from registry.runtime.pull import Puller
from registry.runtime.store import Store
from registry.runtime.unpack import read_layer_info
from runtime.distribution import Distribution
from runtime.imaging import (
    DOCKER_MANIFEST,
    Image,
    Layer,
    Pusher,
    directory,
    file,
    sha256,
    tar_bytes,
)
from runtime.tamper import TamperingProxy
from runtime.tokenserver import TokenServer

from support.server import RegistryServer, free_port


def three_layers() -> list[Layer]:
    return [
        Layer(tar_bytes([directory("etc"), file("etc/one", "1"), file("etc/gone", "x")]), "gzip"),
        Layer(tar_bytes([directory("etc"), file("etc/two", "2"), file("etc/.wh.gone")]), "zstd"),
        Layer(tar_bytes([directory("etc"), file("etc/three", "3")]), "none"),
    ]


def test_pull_records_image_and_unpacks_every_compression(
    registry_server: RegistryServer, pusher: Pusher, store: Store
) -> None:
    image = Image(three_layers(), {"Cmd": ["/bin/sh"]})
    digest = pusher.image("pull/basic", "v1", image)
    record = Puller(store).pull(f"{registry_server.host}/pull/basic:v1")
    assert record.id == sha256(image.config_bytes())
    assert record.manifest_digest == digest
    assert f"{registry_server.host}/pull/basic:v1" in record.refs
    assert f"{registry_server.host}/pull/basic@{digest}" in record.refs
    dirs = [store.layer_dir(d) for d in record.diff_ids]
    assert (dirs[0] / "fs/etc/one").read_text() == "1"
    assert (dirs[1] / "fs/etc/two").read_text() == "2"
    assert read_layer_info(dirs[1]).whiteouts == ["etc/gone"]
    assert (dirs[2] / "fs/etc/three").read_text() == "3"
    assert ImageIndex(store).get(f"{registry_server.host}/pull/basic:v1").id == record.id


def test_layers_in_the_store_are_not_downloaded_again(
    registry_server: RegistryServer, pusher: Pusher, store: Store
) -> None:
    layers = three_layers()
    pusher.image("pull/cache-a", "v1", Image(layers, {"Env": ["A=1"]}))
    Puller(store).pull(f"{registry_server.host}/pull/cache-a:v1")
    # A second image sharing the layers, whose layer blobs then vanish from the registry:
    pusher.image("pull/cache-b", "v1", Image(layers, {"Env": ["B=2"]}))
    with httpx.Client(base_url=registry_server.url) as http:
        for layer in layers:
            gone = http.delete(f"/v2/pull/cache-b/blobs/{sha256(layer.blob)}")
            assert gone.status_code == 202
    record = Puller(store).pull(f"{registry_server.host}/pull/cache-b:v1")
    assert all(store.has_layer(d) for d in record.diff_ids)


def test_docker_schema2_and_pull_by_digest(
    registry_server: RegistryServer, pusher: Pusher, store: Store
) -> None:
    digest = pusher.image("pull/docker", "v1", Image(three_layers()[:1]), DOCKER_MANIFEST)
    record = Puller(store).pull(f"{registry_server.host}/pull/docker@{digest}")
    assert record.manifest_media_type == DOCKER_MANIFEST
    assert record.refs == [f"{registry_server.host}/pull/docker@{digest}"]


def platform_images() -> list[Image]:
    return [
        Image([Layer(tar_bytes([file("arch", arch)]))], architecture=arch)
        for arch in ("amd64", "arm64", "s390x")
    ]


def test_index_picks_the_wanted_platform(
    registry_server: RegistryServer, pusher: Pusher, store: Store
) -> None:
    index_digest = pusher.index("pull/multi", "v1", platform_images())
    ref = f"{registry_server.host}/pull/multi:v1"
    for arch in ("arm64", "s390x"):
        record = Puller(store).pull(ref, Platform(arch, "linux"))
        assert (store.layer_dir(record.diff_ids[0]) / "fs/arch").read_text() == arch
        assert record.platform == f"linux/{arch}"
        assert f"{registry_server.host}/pull/multi@{index_digest}" in record.refs
    with pytest.raises(PlatformNotFound, match="linux/ppc64le"):
        Puller(store).pull(ref, Platform("ppc64le", "linux"))


def test_a_single_manifest_for_another_platform_is_refused(
    registry_server: RegistryServer, pusher: Pusher, store: Store
) -> None:
    pusher.image("pull/other-arch", "v1", platform_images()[2])
    with pytest.raises(Exception, match="linux/s390x"):
        Puller(store).pull(f"{registry_server.host}/pull/other-arch:v1", Platform("amd64", "linux"))


def test_missing_image_and_unreachable_registry(
    registry_server: RegistryServer, store: Store
) -> None:
    with pytest.raises(ImageNotFound):
        Puller(store).pull(f"{registry_server.host}/pull/nothing-here:v1")
    with pytest.raises(RegistryUnreachable):
        Puller(store).pull(f"127.0.0.1:{free_port()}/pull/x:v1")


def test_diff_id_mismatch_is_refused(
    registry_server: RegistryServer, pusher: Pusher, store: Store
) -> None:
    image = Image(three_layers()[:1])
    lie = json.loads(image.config_bytes())
    lie["rootfs"]["diff_ids"] = [sha256(b"something else")]
    config = json.dumps(lie).encode()
    pusher.blob("pull/lying", config)
    _, body = pusher.image_manifest("pull/lying", image)
    doc = json.loads(body)
    doc["config"] = {**doc["config"], "digest": sha256(config), "size": len(config)}
    pusher.manifest("pull/lying", "v1", doc, doc["mediaType"])
    with pytest.raises(ContentInvalid, match="diff id"):
        Puller(store).pull(f"{registry_server.host}/pull/lying:v1")
    assert store.layer_ids() == []


@pytest.fixture
def hostile(
    registry_server: RegistryServer, pusher: Pusher
) -> Iterator[tuple[TamperingProxy, str]]:
    digest = pusher.image("pull/tampered", "v1", Image(three_layers()[:1]))

    def rewrite(path: str, body: bytes) -> bytes:
        if "/blobs/" in path and len(body) > 200:  # the layer, not the config
            return body[:-1] + bytes([body[-1] ^ 1])
        if path.endswith("/manifests/forged"):
            return body.replace(b'"schemaVersion": 2', b'"schemaVersion":2')
        return body

    proxy = TamperingProxy(registry_server.url, rewrite)
    yield proxy, digest
    proxy.stop()


def test_forged_layer_under_a_genuine_digest_is_refused(
    hostile: tuple[TamperingProxy, str], store: Store
) -> None:
    proxy, _ = hostile
    with pytest.raises(ContentInvalid, match="does not match its digest"):
        Puller(store).pull(f"{proxy.host}/pull/tampered:v1")
    assert store.layer_ids() == [] and ImageIndex(store).load() == {}


def test_forged_manifest_under_a_genuine_digest_is_refused(
    hostile: tuple[TamperingProxy, str], store: Store, pusher: Pusher
) -> None:
    proxy, digest = hostile

    # The proxy rewrites manifests asked for as "forged"; ask for a digest it then lies about.
    def rewrite(path: str, body: bytes) -> bytes:
        return (
            body.replace(b'"schemaVersion": 2', b'"schemaVersion":2')
            if "manifests" in path
            else body
        )

    proxy.rewrite = rewrite
    with pytest.raises(ContentInvalid, match="does not match its digest"):
        Puller(store).pull(f"{proxy.host}/pull/tampered@{digest}")
    with pytest.raises(ContentInvalid, match="does not match its digest"):
        Puller(store).pull(f"{proxy.host}/pull/tampered:v1")  # vs Docker-Content-Digest


def test_token_auth_with_login_credentials(
    token_registry: tuple[Distribution, TokenServer], store: Store
) -> None:
    reg, tokens = token_registry
    token = tokens.token("alice", ["repository:auth/img:pull,push"])
    push = Pusher(reg.url, headers={"Authorization": f"Bearer {token}"})
    push.image("auth/img", "v1", Image(three_layers()[:1]))
    push.close()
    with pytest.raises(AccessDenied):
        Puller(store).pull(f"{reg.host}/auth/img:v1")
    credentials.store(reg.host, credentials.Credentials("alice", "wrong"))
    with pytest.raises(AccessDenied, match="invalid username or password"):
        Puller(store).pull(f"{reg.host}/auth/img:v1")
    credentials.store(reg.host, credentials.Credentials("alice", "wonderland"))
    record = Puller(store).pull(f"{reg.host}/auth/img:v1")
    assert record.diff_ids
    last = tokens.requests[-1]
    assert last["user"] == "alice"
    assert last["query"]["scope"] == ["repository:auth/img:pull"]
    assert last["query"]["service"] == [tokens.service]


def test_basic_auth_from_docker_config(
    basic_registry: Distribution, store: Store, tmp_path: Path
) -> None:
    push = Pusher(basic_registry.url, auth=("alice", "wonderland"))
    push.image("auth/basic", "v1", Image(three_layers()[:1]))
    push.close()
    with pytest.raises(AccessDenied, match="registry login"):
        Puller(store).pull(f"{basic_registry.host}/auth/basic:v1")
    config = credentials.config_path()
    config.parent.mkdir(parents=True, exist_ok=True)
    import base64

    auth = base64.b64encode(b"alice:wonderland").decode()
    config.write_text(json.dumps({"auths": {f"http://{basic_registry.host}": {"auth": auth}}}))
    assert Puller(store).pull(f"{basic_registry.host}/auth/basic:v1").diff_ids
