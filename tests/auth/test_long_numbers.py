"""Numbers past Python's int-conversion limit, and lifetimes past what a date can hold, in
the admin API: 400 with a message, never a 500."""

from __future__ import annotations

import pytest

from auth.conftest import AuthRegistry
from auth.helpers import assert_error, unique

LONG = "9" * 5000


@pytest.mark.parametrize("limit", [LONG, "²", "1" + "0" * 30])
def test_audit_limit(auth_server: AuthRegistry, limit: str) -> None:
    answer = auth_server.admin_api("GET", "/audit", params={"limit": limit})
    assert_error(answer, 400)


def test_audit_limit_with_leading_zeros(auth_server: AuthRegistry) -> None:
    answer = auth_server.admin_api("GET", "/audit", params={"limit": "0" * 5000 + "2"})
    assert answer.status_code == 200
    assert len(answer.json()["entries"]) <= 2


@pytest.mark.parametrize("expires", [LONG + "d", "99999999999999w", "3700000d", "٣d"])
def test_token_lifetime(auth_server: AuthRegistry, expires: str) -> None:
    body = {"name": unique("ci"), "scopes": ["ci/*:pull"], "expires": expires}
    assert_error(auth_server.admin_api("POST", "/tokens", json=body), 400)


def test_token_lifetime_of_a_century(auth_server: AuthRegistry) -> None:
    body = {"name": unique("ci"), "scopes": ["ci/*:pull"], "expires": "36500d"}
    assert auth_server.admin_api("POST", "/tokens", json=body).status_code == 201
