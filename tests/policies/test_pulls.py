"""Pull statistics: counted in memory and written in batches (at the flush interval and at
shutdown), never one write per pull; shown by the admin API and `registry pulls`."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from api.helpers import push_image, push_manifest

from policies.conftest import ADMIN, PolicyRegistry, namespace, start_policy_server

from support.backends import ServerFactory


@pytest.fixture(scope="module")
def slow_flush(make_server: ServerFactory) -> Iterator[PolicyRegistry]:
    """A server that flushes its pull counts only at shutdown (within a test's time)."""
    server = start_policy_server(
        make_server, "pulls", {"REGISTRY_POLICIES_PULL_STATS_FLUSH_SECONDS": "86400"}
    )
    yield PolicyRegistry(server)
    server.stop()


def stats(registry: PolicyRegistry, repo: str) -> dict[str, dict[str, object]]:
    answer = registry.admin_api("GET", "/tags", params={"repository": repo})
    assert answer.status_code == 200, answer.text
    return {row["tag"]: row for row in answer.json()["tags"]}


def test_pulls_are_counted_in_memory_and_written_at_shutdown(slow_flush: PolicyRegistry) -> None:
    repo = f"{namespace()}/app"
    with httpx.Client(base_url=slow_flush.url, auth=ADMIN, timeout=30) as client:
        image = push_image(client, repo, "v1")
        push_manifest(client, repo, "stable", image.body, image.media_type)
        push_image(client, repo, "unpulled")
        for _ in range(3):
            assert client.get(f"/v2/{repo}/manifests/v1").status_code == 200
        assert client.head(f"/v2/{repo}/manifests/unpulled").status_code == 200  # no count
        for _ in range(2):  # by digest: every tag on it
            assert client.get(f"/v2/{repo}/manifests/{image.digest}").status_code == 200
        assert client.get(f"/v2/{repo}/manifests/nosuchtag").status_code == 404

    before = stats(slow_flush, repo)
    assert {tag: row["pull_count"] for tag, row in before.items()} == {
        "stable": 0, "unpulled": 0, "v1": 0,
    }  # fmt: skip
    assert all(row["last_pulled_at"] is None for row in before.values())

    slow_flush.server.restart()  # a graceful stop writes what was counted
    after = stats(slow_flush, repo)
    assert {tag: row["pull_count"] for tag, row in after.items()} == {
        "stable": 2, "unpulled": 0, "v1": 5,
    }  # fmt: skip
    assert all(row["last_pulled_at"] is not None for row in after.values())
    assert after["v1"]["digest"] == image.digest
    listed = slow_flush.cli("pulls", repo, "--json")
    assert '"pull_count": 5' in listed and '"tag": "stable"' in listed


def test_counts_of_several_flushes_add_up(slow_flush: PolicyRegistry) -> None:
    repo = f"{namespace()}/app"
    with httpx.Client(base_url=slow_flush.url, auth=ADMIN, timeout=30) as client:
        push_image(client, repo, "v1")
        for _flush in range(2):
            for _ in range(2):
                assert client.get(f"/v2/{repo}/manifests/v1").status_code == 200
            slow_flush.server.restart()
    assert stats(slow_flush, repo)["v1"]["pull_count"] == 4


def test_the_tags_listing_needs_an_existing_repository(policy_registry: PolicyRegistry) -> None:
    answer = policy_registry.admin_api("GET", "/tags", params={"repository": "no/such/repo"})
    assert answer.status_code == 404
    assert policy_registry.admin_api("GET", "/tags").status_code == 400
