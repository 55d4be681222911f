"""Policies from the config (`policies.*`, here through REGISTRY_POLICIES_* variables) apply
under those of the database: a configured immutable rule and default quota are enforced, a
configured retention policy is listed and applied, and a database policy of the same pattern
takes its place. The CLI refuses bad rules with a message and exit code 1."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import httpx
import pytest
from api.helpers import assert_error, encode, image_doc, push_blob, push_image, put_manifest
from auth.helpers import run_cli

from policies.conftest import ADMIN, PolicyRegistry, start_policy_server
from registry.oci import mediatypes as mt

from support.backends import ServerFactory

CONFIGURED = {
    "REGISTRY_POLICIES_IMMUTABLE_TAGS": json.dumps([{"pattern": "frozen/*", "tags": "v*"}]),
    "REGISTRY_POLICIES_RETENTION": json.dumps([{"pattern": "ci/*", "keep_last": 1}]),
    "REGISTRY_POLICIES_DEFAULT_QUOTA": "50KB",
}


@pytest.fixture(scope="module")
def configured(make_server: ServerFactory) -> Iterator[PolicyRegistry]:
    server = start_policy_server(make_server, "configured-policies", CONFIGURED)
    yield PolicyRegistry(server)
    server.stop()


@pytest.fixture
def as_admin(configured: PolicyRegistry) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=configured.url, auth=ADMIN, timeout=30) as client:
        yield client


def test_a_configured_immutable_rule_is_enforced_and_listed(
    configured: PolicyRegistry, as_admin: httpx.Client
) -> None:
    push_image(as_admin, "frozen/app", "v1")
    refused = put_manifest(
        as_admin, "frozen/app", "v1", encode(image_doc(as_admin, "frozen/app")), mt.OCI_MANIFEST
    )
    message = assert_error(refused, 403, "DENIED")[0]["message"]
    assert "configured rule" in message and "frozen/*" in message
    rules = configured.admin_api("GET", "/immutable").json()["rules"]
    assert {"id": None, "pattern": "frozen/*", "tags": "v*", "source": "config"} in rules


def test_the_default_quota_holds_every_namespace_without_its_own(
    configured: PolicyRegistry, as_admin: httpx.Client
) -> None:
    big = os.urandom(60_000)
    digest = push_blob(as_admin, "roomy/app", big)
    doc = image_doc(as_admin, "roomy/app")
    doc["layers"].append({"mediaType": mt.OCI_LAYER_GZIP, "digest": digest, "size": len(big)})
    refused = put_manifest(as_admin, "roomy/app", "v1", encode(doc), mt.OCI_MANIFEST)
    error = assert_error(refused, 403, "DENIED")[0]
    assert error["detail"]["limit"] == 50_000
    set_own = configured.admin_api("PUT", "/quotas", json={"namespace": "roomy", "limit": "1MB"})
    assert set_own.status_code == 200
    assert (
        put_manifest(as_admin, "roomy/app", "v1", encode(doc), mt.OCI_MANIFEST).status_code == 201
    )
    assert configured.admin_api("GET", "/quotas").json()["default"] == 50_000


def test_a_configured_retention_policy_applies_until_the_database_has_one(
    configured: PolicyRegistry, as_admin: httpx.Client
) -> None:
    for tag in ("one", "two", "three"):
        push_image(as_admin, "ci/app", tag)
    listed = configured.admin_api("GET", "/retention").json()["policies"]
    assert {"pattern": "ci/*", "source": "config"}.items() <= listed[-1].items()
    preview = configured.admin_api("POST", "/retention/run", json={"dry_run": True}).json()
    assert sorted(e["tag"] for e in preview["removed"]) == ["one", "two"]
    own = {"pattern": "ci/*", "keep_last": 2}
    assert configured.admin_api("PUT", "/retention", json=own).status_code == 200
    preview = configured.admin_api("POST", "/retention/run", json={"dry_run": True}).json()
    assert [e["tag"] for e in preview["removed"]] == ["one"]


def test_the_cli_refuses_bad_rules(configured: PolicyRegistry) -> None:
    data, env = configured.server.data_dir, configured.server.env
    for args, words in (
        (("retention", "set", "ci/*"), "at least one rule"),
        (("retention", "set", "ci/*", "--keep-pulled-within", "forever"), "durations"),
        (("immutable", "add", "prod/*", "v[0-9]"), "tag pattern"),
        (("immutable", "remove", "999999"), "no immutable tag rule"),
        (("quota", "set", "a/b", "1GB"), "namespace"),
        (("quota", "set", "team", "lots"), "sizes look like"),
        (("quota", "remove", "nosuchnamespace"), "no quota"),
    ):
        done = run_cli(data, *args, env=env)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert words in done.stderr, (args, done.stderr)
