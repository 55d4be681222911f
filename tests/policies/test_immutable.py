"""Immutable tags over HTTP: a protected tag is pushed once, then never moved or deleted;
pushing the same content again is fine; racing first pushes cannot both win."""

from __future__ import annotations

import httpx
from api.helpers import assert_error, encode, image_doc, push_image, push_manifest, put_manifest

from policies.conftest import PolicyRegistry, namespace, race
from registry.oci import mediatypes as mt


def add_rule(registry: PolicyRegistry, pattern: str, tags: str) -> int:
    answer = registry.admin_api("POST", "/immutable", json={"pattern": pattern, "tags": tags})
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


def test_an_immutable_tag_cannot_move_but_the_same_content_may_be_pushed_again(
    policy_registry: PolicyRegistry, client: httpx.Client
) -> None:
    ns = namespace()
    repo = f"{ns}/app"
    rule = add_rule(policy_registry, f"{ns}/*", "v*,stable")
    first = push_image(client, repo, "v1")
    again = put_manifest(client, repo, "v1", first.body, first.media_type)
    assert again.status_code == 201, again.text  # the same digest: allowed

    other = image_doc(client, repo)
    refused = put_manifest(client, repo, "v1", encode(other), mt.OCI_MANIFEST)
    errors = assert_error(refused, 403, "DENIED")
    message = errors[0]["message"]
    assert "v1" in message and f"rule {rule}" in message and f"{ns}/*" in message
    assert errors[0]["detail"]["rule"] == rule
    assert client.get(f"/v2/{repo}/manifests/v1").headers["docker-content-digest"] == first.digest

    # A tag no glob matches moves freely; a new immutable tag is created once.
    push_manifest(client, repo, "latest", other)
    push_manifest(client, repo, "latest", first.body, first.media_type)
    push_manifest(client, repo, "stable", other)
    refused = put_manifest(client, repo, "stable", first.body, first.media_type)
    assert_error(refused, 403, "DENIED")

    # Pushed by digest with ?tag=: the tag is checked all the same.
    by_digest = client.put(
        f"/v2/{repo}/manifests/{first.digest}",
        params={"tag": "stable"},
        content=first.body,
        headers={"Content-Type": first.media_type},
    )
    assert_error(by_digest, 403, "DENIED")


def test_an_immutable_tag_cannot_be_deleted_until_its_rule_goes(
    policy_registry: PolicyRegistry, client: httpx.Client
) -> None:
    ns = namespace()
    repo = f"{ns}/app"
    rule = add_rule(policy_registry, f"{ns}/app", "release-*")
    pushed = push_image(client, repo, "release-1")
    assert_error(client.delete(f"/v2/{repo}/manifests/release-1"), 403, "DENIED")
    refused = client.delete(f"/v2/{repo}/manifests/{pushed.digest}")
    assert "release-1" in assert_error(refused, 403, "DENIED")[0]["message"]
    assert client.get(f"/v2/{repo}/manifests/release-1").status_code == 200

    # Another repository of the namespace is not covered by the rule.
    other = push_image(client, f"{ns}/other", "release-1")
    assert client.delete(f"/v2/{ns}/other/manifests/{other.digest}").status_code == 202

    assert policy_registry.admin_api("DELETE", f"/immutable/{rule}").status_code == 204
    moved = push_manifest(client, repo, "release-1", image_doc(client, repo))
    assert moved.digest != pushed.digest
    assert client.delete(f"/v2/{repo}/manifests/release-1").status_code == 202


def test_racing_first_pushes_of_an_immutable_tag_cannot_both_win(
    policy_registry: PolicyRegistry, client: httpx.Client
) -> None:
    ns = namespace()
    repo = f"{ns}/app"
    add_rule(policy_registry, f"{ns}/*", "v*")
    for round_number in range(8):
        tag = f"v{round_number}"
        docs = [encode(image_doc(client, repo)) for _ in range(2)]
        answers = race(policy_registry, repo, [(tag, body) for body in docs])
        assert answers == [201, 403], (tag, answers)
