"""Retention over HTTP: a dry run lists what would go and changes nothing; a run removes
exactly the tags no rule keeps, never another tag of the same image, never an immutable one."""

from __future__ import annotations

from typing import Any

import httpx
from api.helpers import index_manifest, push_image, push_manifest

from policies.conftest import ADMIN, PolicyRegistry, namespace


def set_policy(registry: PolicyRegistry, **fields: Any) -> None:
    answer = registry.admin_api("PUT", "/retention", json=fields)
    assert answer.status_code == 200, answer.text


def run(registry: PolicyRegistry, dry_run: bool) -> dict[str, Any]:
    answer = registry.admin_api("POST", "/retention/run", json={"dry_run": dry_run})
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def tags_of(client: httpx.Client, repo: str) -> list[str]:
    return client.get(f"/v2/{repo}/tags/list").json()["tags"]  # type: ignore[no-any-return]


def test_a_run_removes_the_tags_no_rule_keeps_and_only_those(
    policy_registry: PolicyRegistry, client: httpx.Client
) -> None:
    ns = namespace()
    repo, other = f"{ns}/app", f"{namespace()}/app"
    push_image(client, repo, "latest")
    push_image(client, repo, "release-1")
    old = push_image(client, repo, "build-1")
    for n in range(2, 5):
        push_image(client, repo, f"build-{n}")
    push_manifest(client, repo, "alias-of-build-1", old.body, old.media_type)  # newest push
    push_image(client, other, "build-1")  # no policy governs it
    immutable = policy_registry.admin_api(
        "POST", "/immutable", json={"pattern": repo, "tags": "release-*"}
    )
    assert immutable.status_code == 201
    set_policy(policy_registry, pattern=f"{ns}/*", keep_last=2, keep_tags="latest")
    before = tags_of(client, repo)

    preview = run(policy_registry, dry_run=True)
    mine = [e for e in preview["removed"] if e["repository"] == repo]
    assert sorted(e["tag"] for e in mine) == ["build-1", "build-2", "build-3"]
    assert all("no rule" in e["reason"] for e in mine)
    assert tags_of(client, repo) == before

    done = run(policy_registry, dry_run=False)
    assert sorted(e["tag"] for e in done["removed"] if e["repository"] == repo) == [
        "build-1", "build-2", "build-3",
    ]  # fmt: skip
    assert tags_of(client, repo) == ["alias-of-build-1", "build-4", "latest", "release-1"]
    # The image of build-1 is still there under its other tag.
    alias = client.get(f"/v2/{repo}/manifests/alias-of-build-1")
    assert alias.status_code == 200 and alias.headers["docker-content-digest"] == old.digest
    assert tags_of(client, other) == ["build-1"]
    assert not [e for e in run(policy_registry, dry_run=True)["removed"] if e["repository"] == repo]


def test_tags_pulled_within_the_window_are_kept(
    policy_registry: PolicyRegistry, client: httpx.Client
) -> None:
    """Pull statistics reach the database at the flush interval or at shutdown: this server
    is restarted to flush them."""
    ns = namespace()
    repo = f"{ns}/app"
    for tag in ("used", "unused"):
        push_image(client, repo, tag)
    assert client.get(f"/v2/{repo}/manifests/used").status_code == 200
    policy_registry.server.restart()
    set_policy(policy_registry, pattern=repo, keep_last=0, keep_pulled_within="1d")
    with httpx.Client(base_url=policy_registry.url, auth=ADMIN, timeout=30) as fresh:
        done = run(policy_registry, dry_run=False)
        assert [e["tag"] for e in done["removed"] if e["repository"] == repo] == ["unused"]
        assert tags_of(fresh, repo) == ["used"]


def test_running_retention_is_for_admins_and_checks_its_body(
    policy_registry: PolicyRegistry,
) -> None:
    bad = policy_registry.admin_api("POST", "/retention/run", json={"dry_run": "yes"})
    assert bad.status_code == 400
    bad = policy_registry.admin_api("POST", "/retention/run", json={"everything": True})
    assert bad.status_code == 400
    anonymous = httpx.post(f"{policy_registry.url}/auth/admin/retention/run", json={})
    assert anonymous.status_code == 401


def untagged_digests(report: dict[str, Any], repo: str) -> list[str]:
    return sorted(e["digest"] for e in report["deleted"] if e["repository"] == repo)


def test_untagged_manifests_go_but_never_the_children_of_a_kept_index(
    policy_registry: PolicyRegistry, client: httpx.Client
) -> None:
    repo = f"{namespace()}/app"
    amd64, arm64 = push_image(client, repo), push_image(client, repo)  # by digest
    index = push_manifest(
        client, repo, "multi", index_manifest([amd64.descriptor(), arm64.descriptor()])
    )
    orphan = push_image(client, repo)  # pushed without a tag
    signed = push_image(client, repo, "signed")
    signature = push_image(client, repo, subject=signed.descriptor())  # a referrer

    set_policy(policy_registry, pattern=repo, untagged_after="1d")
    assert untagged_digests(run(policy_registry, dry_run=False), repo) == []  # too recent

    set_policy(policy_registry, pattern=repo, untagged_after="0s")
    preview = run(policy_registry, dry_run=True)
    assert untagged_digests(preview, repo) == [orphan.digest]
    assert client.get(f"/v2/{repo}/manifests/{orphan.digest}").status_code == 200
    done = run(policy_registry, dry_run=False)
    assert untagged_digests(done, repo) == [orphan.digest]
    assert client.get(f"/v2/{repo}/manifests/{orphan.digest}").status_code == 404
    for kept in (amd64, arm64, index, signed, signature):
        assert client.get(f"/v2/{repo}/manifests/{kept.digest}").status_code == 200

    # Untagged, the index goes, and its platform manifests with it (in the same run).
    assert client.delete(f"/v2/{repo}/manifests/multi").status_code == 202
    preview = run(policy_registry, dry_run=True)
    assert untagged_digests(preview, repo) == sorted([index.digest, amd64.digest, arm64.digest])
    done = run(policy_registry, dry_run=False)
    assert untagged_digests(done, repo) == sorted([index.digest, amd64.digest, arm64.digest])
    for gone in (amd64, arm64, index):
        assert client.get(f"/v2/{repo}/manifests/{gone.digest}").status_code == 404
    assert client.get(f"/v2/{repo}/manifests/{signature.digest}").status_code == 200


def test_retention_runs_with_garbage_collection(
    policy_registry: PolicyRegistry, client: httpx.Client
) -> None:
    ns = namespace()
    repo = f"{ns}/app"
    first = push_image(client, repo, "first")
    push_image(client, repo, "second")
    set_policy(policy_registry, pattern=f"{ns}/*", keep_last=1, untagged_after="0s")

    preview = policy_registry.admin_api("POST", "/gc", json={"dry_run": True})
    assert preview.status_code == 200, preview.text
    figures = preview.json()
    mine = [e for e in figures["retention"]["removed"] if e["repository"] == repo]
    assert [e["tag"] for e in mine] == ["first"]
    assert f"{repo}@{first.digest}" in figures["deleted_manifests"]  # untagged by this run
    assert tags_of(client, repo) == ["first", "second"]

    done = policy_registry.admin_api("POST", "/gc", json={"dry_run": False})
    assert done.status_code == 200, done.text
    assert f"{repo}@{first.digest}" in done.json()["deleted_manifests"]
    assert tags_of(client, repo) == ["second"]
    assert client.get(f"/v2/{repo}/manifests/{first.digest}").status_code == 404
    usage = policy_registry.cli("usage", ns, "--check")
    assert "0 wrong" in usage
