"""The kept usage of a namespace always equals what summing its manifests gives, through
pushes of images and indexes into several repositories, re-pushes and deletes."""

from __future__ import annotations

import json
import os

import httpx
from api.helpers import index_manifest, push_blob, push_image, push_manifest

from policies.conftest import PolicyRegistry, namespace
from registry.oci import mediatypes as mt


def kept(registry: PolicyRegistry, ns: str) -> int:
    answer = registry.admin_api("GET", "/usage", params={"namespace": ns})
    return int(answer.json()["namespaces"][0]["used"])


def assert_consistent(registry: PolicyRegistry, ns: str) -> int:
    """`registry usage --check` sums the namespace from its manifests: it must agree."""
    out = registry.cli("usage", ns, "--check")
    assert "0 wrong" in out, out
    return kept(registry, ns)


def test_kept_usage_follows_pushes_and_deletes(
    policy_registry: PolicyRegistry, client: httpx.Client
) -> None:
    ns = namespace()
    a, b = f"{ns}/a", f"{ns}/b/deeper"
    one = push_image(client, a, "v1", layers=2)
    assert kept(policy_registry, ns) > 0
    size_one = assert_consistent(policy_registry, ns)

    # The same manifest in another repository of the namespace: its blobs mounted there.
    doc = json.loads(one.body)
    for blob in [doc["config"], *doc["layers"]]:
        mounted = client.post(
            f"/v2/{b}/blobs/uploads/", params={"mount": blob["digest"], "from": a}
        )
        assert mounted.status_code == 201
    push_manifest(client, b, "v1", one.body, one.media_type)
    assert assert_consistent(policy_registry, ns) == size_one

    # A multi-platform index of two images in `b`.
    two = push_image(client, b, None, layers=1)
    index = push_manifest(client, b, "multi", index_manifest([one.descriptor(), two.descriptor()]))
    with_index = assert_consistent(policy_registry, ns)
    assert with_index > size_one + index.size

    # Deleting `a`'s copy frees nothing (`b` holds it); deleting `b`'s then frees it all.
    assert client.delete(f"/v2/{a}/manifests/{one.digest}").status_code == 202
    assert assert_consistent(policy_registry, ns) == with_index
    assert client.delete(f"/v2/{b}/manifests/{index.digest}").status_code == 202
    assert client.delete(f"/v2/{b}/manifests/{one.digest}").status_code == 202
    assert client.delete(f"/v2/{b}/manifests/{two.digest}").status_code == 202
    assert assert_consistent(policy_registry, ns) == 0
    # A blob pushed alone counts for nothing; pushing again after all that is consistent.
    push_blob(client, a, os.urandom(100))
    push_image(client, a, "v2")
    assert_consistent(policy_registry, ns)


def test_two_manifests_sharing_a_layer_hold_it_once(
    policy_registry: PolicyRegistry, client: httpx.Client
) -> None:
    ns = namespace()
    repo = f"{ns}/app"
    layer = os.urandom(3000)
    layer_descriptor = {
        "mediaType": mt.OCI_LAYER_GZIP, "digest": push_blob(client, repo, layer),
        "size": len(layer),
    }  # fmt: skip
    pushed = []
    for n in range(2):
        config = json.dumps({"n": n}).encode()
        config_descriptor = {
            "mediaType": mt.OCI_CONFIG, "digest": push_blob(client, repo, config),
            "size": len(config),
        }  # fmt: skip
        doc = {
            "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": config_descriptor,
            "layers": [layer_descriptor, layer_descriptor],  # the same layer twice
        }  # fmt: skip
        pushed.append(push_manifest(client, repo, f"v{n}", doc))
    total = assert_consistent(policy_registry, ns)
    assert total == 3000 + sum(len(json.dumps({"n": n})) for n in range(2)) + sum(
        p.size for p in pushed
    )
    assert client.delete(f"/v2/{repo}/manifests/{pushed[0].digest}").status_code == 202
    assert assert_consistent(policy_registry, ns) == total - pushed[0].size - len('{"n": 0}')
