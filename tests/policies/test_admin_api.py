"""Managing policies through the admin API: admins only, every input checked, changes
audited, and what the CLI changes is what the API lists."""

from __future__ import annotations

import httpx
import pytest

from policies.conftest import PolicyRegistry, namespace


def test_retention_policies_are_set_listed_replaced_and_removed(
    policy_registry: PolicyRegistry,
) -> None:
    pattern = f"{namespace()}/*"
    body = {
        "pattern": pattern,
        "keep_last": 5,
        "keep_tags": "latest,v*",
        "keep_pulled_within": "30d",
        "untagged_after": "168h",
    }
    answer = policy_registry.admin_api("PUT", "/retention", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "pattern": pattern, "keep_last": 5, "keep_tags": "latest,v*",
        "keep_pulled_within": "30d", "keep_pushed_within": None, "untagged_after": "1w",
        "source": "database",
    }  # fmt: skip
    replaced = {"pattern": pattern, "keep_pushed_within": "14d"}
    assert policy_registry.admin_api("PUT", "/retention", json=replaced).status_code == 200
    listed = policy_registry.admin_api("GET", "/retention").json()["policies"]
    [mine] = [p for p in listed if p["pattern"] == pattern]
    assert mine["keep_last"] is None and mine["keep_pushed_within"] == "2w"
    assert pattern in policy_registry.cli("retention", "list")
    removed = policy_registry.admin_api("DELETE", "/retention", params={"pattern": pattern})
    assert removed.status_code == 204
    again = policy_registry.admin_api("DELETE", "/retention", params={"pattern": pattern})
    assert again.status_code == 404
    entries = policy_registry.admin_api("GET", "/audit", params={"action": "admin"}).json()
    assert any(e["target"] == pattern for e in entries["entries"])


@pytest.mark.parametrize(
    "body",
    [
        {"pattern": "Bad/*", "keep_last": 1},
        {"pattern": "ok/*"},  # no rule at all
        {"pattern": "ok/*", "keep_last": -1},
        {"pattern": "ok/*", "keep_last": True},
        {"pattern": "ok/*", "keep_last": "3"},
        {"pattern": "ok/*", "keep_tags": "v(1|2)"},
        {"pattern": "ok/*", "keep_tags": "a" * 2000},
        {"pattern": "ok/*", "keep_pulled_within": "30 days"},
        {"pattern": "ok/*", "untagged_after": "-1d"},
        {"pattern": "ok/*", "keep_last": 1, "keep_forever": True},
        {"pattern": 7, "keep_last": 1},
    ],
)
def test_bad_retention_policies_are_refused(
    policy_registry: PolicyRegistry, body: dict[str, object]
) -> None:
    answer = policy_registry.admin_api("PUT", "/retention", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["errors"][0]["code"] == "BAD_REQUEST"


def test_immutable_rules_and_quotas_are_managed_and_checked(
    policy_registry: PolicyRegistry,
) -> None:
    ns = namespace()
    made = policy_registry.admin_api(
        "POST", "/immutable", json={"pattern": f"{ns}/*", "tags": "v*"}
    )
    assert made.status_code == 201, made.text
    rule = made.json()["id"]
    twice = policy_registry.admin_api(
        "POST", "/immutable", json={"pattern": f"{ns}/*", "tags": "v*"}
    )
    assert twice.status_code == 409
    for bad in (
        {"pattern": f"{ns}/*", "tags": "v[0-9]"},
        {"pattern": f"{ns}/*", "tags": ""},
        {"pattern": f"{ns}/*"},
        {"pattern": "UPPER", "tags": "v*"},
    ):
        assert policy_registry.admin_api("POST", "/immutable", json=bad).status_code == 400, bad
    listed = policy_registry.admin_api("GET", "/immutable").json()["rules"]
    assert {"id": rule, "pattern": f"{ns}/*", "tags": "v*", "source": "database"} in listed
    assert str(rule) in policy_registry.cli("immutable", "list")
    assert policy_registry.admin_api("DELETE", f"/immutable/{rule}").status_code == 204
    assert policy_registry.admin_api("DELETE", f"/immutable/{rule}").status_code == 404
    assert policy_registry.admin_api("DELETE", "/immutable/x1").status_code == 404

    assert policy_registry.admin_api(
        "PUT", "/quotas", json={"namespace": ns, "limit": "2GiB"}
    ).json() == {"namespace": ns, "limit": 2 * 1024**3}
    for bad in (
        {"namespace": f"{ns}/app", "limit": "1GiB"},
        {"namespace": ns, "limit": "lots"},
        {"namespace": ns, "limit": 0},
        {"namespace": ns, "limit": True},
        {"namespace": ns},
    ):
        assert policy_registry.admin_api("PUT", "/quotas", json=bad).status_code == 400, bad
    quotas = policy_registry.admin_api("GET", "/quotas").json()
    assert {"namespace": ns, "limit": 2 * 1024**3} in quotas["quotas"]
    assert quotas["default"] is None
    # The CLI changes the same database.
    policy_registry.cli("quota", "set", ns, "500MB")
    [row] = policy_registry.admin_api("GET", "/usage", params={"namespace": ns}).json()[
        "namespaces"
    ]
    assert row["limit"] == 500_000_000 and row["used"] == 0


def test_only_admins_manage_policies(policy_registry: PolicyRegistry) -> None:
    name, password = namespace("user"), "pw-" + namespace()
    made = policy_registry.admin_api("POST", "/users", json={"name": name, "password": password})
    assert made.status_code == 201
    for method, path in (
        ("GET", "/retention"),
        ("PUT", "/retention"),
        ("POST", "/immutable"),
        ("PUT", "/quotas"),
        ("GET", "/usage"),
        ("GET", "/tags?repository=x"),
    ):
        answer = httpx.request(
            method, f"{policy_registry.url}/auth/admin{path}", auth=(name, password), json={}
        )
        assert answer.status_code == 403, (method, path)
        assert httpx.request(method, f"{policy_registry.url}/auth/admin{path}").status_code == 401
