"""Namespace quotas over HTTP: usage counts each blob once per namespace; a push that would
go over is DENIED (403) with what is used and allowed; pushes that add nothing still pass;
a namespace at its quota takes no new uploads; racing pushes cannot both slip under."""

from __future__ import annotations

import os

import httpx
from api.helpers import (
    assert_error,
    descriptor,
    encode,
    image_manifest,
    push_blob,
    push_manifest,
    put_manifest,
)

from policies.conftest import PolicyRegistry, namespace, race
from registry.oci import mediatypes as mt


def set_quota(registry: PolicyRegistry, ns: str, limit: int | str) -> None:
    answer = registry.admin_api("PUT", "/quotas", json={"namespace": ns, "limit": limit})
    assert answer.status_code == 200, answer.text


def usage(registry: PolicyRegistry, ns: str) -> dict[str, object]:
    answer = registry.admin_api("GET", "/usage", params={"namespace": ns})
    assert answer.status_code == 200, answer.text
    [row] = answer.json()["namespaces"]
    return row  # type: ignore[no-any-return]


def image(client: httpx.Client, repo: str, layer: bytes) -> bytes:
    """An image manifest (config + one layer), blobs pushed; its bytes."""
    config = encode({"architecture": "amd64", "os": "linux", "layer": len(layer)})
    push_blob(client, repo, config)
    push_blob(client, repo, layer)
    return encode(
        image_manifest(descriptor(mt.OCI_CONFIG, config), [descriptor(mt.OCI_LAYER_GZIP, layer)])
    )


def test_usage_counts_a_blob_shared_by_two_repositories_once(
    policy_registry: PolicyRegistry, client: httpx.Client
) -> None:
    ns = namespace()
    layer = os.urandom(10_000)
    body = image(client, f"{ns}/a", layer)
    push_manifest(client, f"{ns}/a", "v1", body, mt.OCI_MANIFEST)
    config_size = len(encode({"architecture": "amd64", "os": "linux", "layer": len(layer)}))
    once = usage(policy_registry, ns)["used"]
    assert once == len(layer) + config_size + len(body)
    # The same image in a second repository of the namespace, and under a second tag.
    image(client, f"{ns}/b", layer)
    push_manifest(client, f"{ns}/b", "v1", body, mt.OCI_MANIFEST)
    push_manifest(client, f"{ns}/b", "v2", body, mt.OCI_MANIFEST)
    assert usage(policy_registry, ns)["used"] == once
    # Uploaded but named by no manifest: not counted. Another namespace: counted apart.
    push_blob(client, f"{ns}/a", os.urandom(5000))
    assert usage(policy_registry, ns)["used"] == once
    other = namespace()
    image(client, f"{other}/a", layer)
    push_manifest(client, f"{other}/a", "v1", body, mt.OCI_MANIFEST)
    assert usage(policy_registry, other)["used"] == once
    listed = policy_registry.cli("usage", ns)
    assert ns in listed and str(once) in listed


def test_a_push_over_the_quota_is_denied_and_one_adding_nothing_passes(
    policy_registry: PolicyRegistry, client: httpx.Client
) -> None:
    ns = namespace()
    set_quota(policy_registry, ns, 30_000)
    first = image(client, f"{ns}/app", os.urandom(20_000))
    push_manifest(client, f"{ns}/app", "v1", first, mt.OCI_MANIFEST)
    used = usage(policy_registry, ns)["used"]
    assert isinstance(used, int) and 20_000 < used < 30_000

    second = image(client, f"{ns}/app", os.urandom(20_000))
    refused = put_manifest(client, f"{ns}/app", "v2", second, mt.OCI_MANIFEST)
    error = assert_error(refused, 403, "DENIED")[0]
    assert ns in error["message"] and "used" in error["message"]
    assert "allowed" in error["message"] and "needs" in error["message"]
    assert error["detail"]["used"] == used and error["detail"]["limit"] == 30_000
    assert client.get(f"/v2/{ns}/app/manifests/v2").status_code == 404
    assert usage(policy_registry, ns)["used"] == used

    # Adding nothing: a new tag on the same image, the same image in another repository.
    push_manifest(client, f"{ns}/app", "again", first, mt.OCI_MANIFEST)
    config_and_layer = client.get(f"/v2/{ns}/app/manifests/v1").json()
    for blob in [config_and_layer["config"], *config_and_layer["layers"]]:
        mounted = client.post(
            f"/v2/{ns}/copy/blobs/uploads/", params={"mount": blob["digest"], "from": f"{ns}/app"}
        )
        assert mounted.status_code == 201, mounted.text
    push_manifest(client, f"{ns}/copy", "v1", first, mt.OCI_MANIFEST)

    # Raised: the push goes through.
    set_quota(policy_registry, ns, "1MiB")
    push_manifest(client, f"{ns}/app", "v2", second, mt.OCI_MANIFEST)


def test_a_namespace_at_its_quota_takes_no_new_uploads(
    policy_registry: PolicyRegistry, client: httpx.Client
) -> None:
    ns = namespace()
    body = image(client, f"{ns}/app", os.urandom(4000))
    push_manifest(client, f"{ns}/app", "v1", body, mt.OCI_MANIFEST)
    used = usage(policy_registry, ns)["used"]
    assert isinstance(used, int)
    set_quota(policy_registry, ns, used + 1)
    assert client.post(f"/v2/{ns}/app/blobs/uploads/").status_code == 202  # under: allowed
    set_quota(policy_registry, ns, used)
    for answer in (
        client.post(f"/v2/{ns}/app/blobs/uploads/"),
        client.post(f"/v2/{ns}/other/blobs/uploads/", params={"digest": "sha256:" + "0" * 64}),
    ):
        error = assert_error(answer, 403, "DENIED")[0]
        assert error["detail"] == {"namespace": ns, "used": used, "limit": used, "needed": None}
    # Another namespace is not held back.
    assert client.post(f"/v2/{namespace()}/app/blobs/uploads/").status_code == 202
    assert (
        policy_registry.admin_api("DELETE", "/quotas", params={"namespace": ns}).status_code == 204
    )
    assert client.post(f"/v2/{ns}/app/blobs/uploads/").status_code == 202


def test_racing_pushes_cannot_both_slip_under_the_quota(
    policy_registry: PolicyRegistry, client: httpx.Client
) -> None:
    ns = namespace()
    set_quota(policy_registry, ns, 15_000)
    for round_number in range(6):
        repo = f"{ns}/r{round_number}"
        bodies = [image(client, repo, os.urandom(10_000)) for _ in range(2)]
        pushes = [(f"t{i}", body) for i, body in enumerate(bodies)]
        assert race(policy_registry, repo, pushes) == [201, 403]
        used = usage(policy_registry, ns)["used"]
        assert isinstance(used, int) and used <= 15_000
        # Make room for the next round.
        tags = client.get(f"/v2/{repo}/tags/list").json()["tags"]
        digest = client.get(f"/v2/{repo}/manifests/{tags[0]}").headers["docker-content-digest"]
        assert client.delete(f"/v2/{repo}/manifests/{digest}").status_code == 202
