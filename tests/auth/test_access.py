"""Who may do what, end to end: namespaces, teams, public repositories, robot tokens, Basic
auth on /v2/, the filtered catalog and cross-repository mounts."""

from __future__ import annotations

import time

import httpx
import jwt

from auth.conftest import AuthRegistry
from auth.helpers import (
    assert_error,
    bearer,
    challenge,
    digest_of,
    get_token,
    push_blob,
    push_image,
    token_for,
    unique,
)


def scope(name: str, actions: str = "pull,push") -> str:
    return f"repository:{name}:{actions}"


def test_users_push_and_pull_in_their_own_namespace(
    auth_server: AuthRegistry, client: httpx.Client
) -> None:
    user = auth_server.new_user()
    repo = f"{user[0]}/app"
    token = token_for(auth_server.url, [scope(repo)], user)
    answer, _ = push_image(client, repo, "v1", bearer(token))
    assert answer.status_code == 201, answer.text
    pulled = client.get(f"/v2/{repo}/manifests/v1", headers=bearer(token))
    assert pulled.status_code == 200
    assert client.get(f"/v2/{repo}/tags/list", headers=bearer(token)).json()["tags"] == ["v1"]


def test_nobody_pushes_into_someone_elses_namespace(
    auth_server: AuthRegistry, client: httpx.Client
) -> None:
    owner, intruder = auth_server.new_user(), auth_server.new_user()
    repo = f"{owner[0]}/app"
    token = token_for(auth_server.url, [scope(repo, "pull,push,delete")], intruder)
    assert token_for(auth_server.url, [], intruder)  # a valid login...
    answer, _ = push_image(client, repo, "v1", bearer(token))
    assert_error(answer, 403, "DENIED")  # ...but nothing granted on that repository
    assert challenge(answer)["error"] == "insufficient_scope"
    owner_token = token_for(auth_server.url, [scope(repo)], owner)
    pushed, _ = push_image(client, repo, "v1", bearer(owner_token))
    assert pushed.status_code == 201
    # The intruder can neither read nor delete it.
    for method, path in [
        ("GET", f"/v2/{repo}/manifests/v1"),
        ("GET", f"/v2/{repo}/tags/list"),
        ("DELETE", f"/v2/{repo}/manifests/v1"),
    ]:
        assert_error(client.request(method, path, headers=bearer(token)), 403, "DENIED")
    assert client.get(f"/v2/{repo}/manifests/v1", headers=bearer(owner_token)).status_code == 200


def test_team_grants(auth_server: AuthRegistry, client: httpx.Client) -> None:
    member, outsider = auth_server.new_user(), auth_server.new_user()
    team = auth_server.new_team([member[0]])
    space = unique("team-")
    auth_server.grant(f"{space}/*", "push", team=team)
    repo = f"{space}/service"
    answer, _ = push_image(
        client, repo, "v1", bearer(token_for(auth_server.url, [scope(repo)], member))
    )
    assert answer.status_code == 201
    denied = token_for(auth_server.url, [scope(repo)], outsider)
    assert denied and get_token(auth_server.url, [scope(repo)], outsider).json()
    assert_error(client.get(f"/v2/{repo}/tags/list", headers=bearer(denied)), 403, "DENIED")
    # push was granted, delete was not; adding it works, revoking takes it away again.
    wanted = [scope(repo, "pull,push,delete")]
    granted = token_for(auth_server.url, wanted, member)
    assert_error(client.delete(f"/v2/{repo}/manifests/v1", headers=bearer(granted)), 403, "DENIED")
    auth_server.grant(f"{space}/*", "delete", team=team)
    granted = token_for(auth_server.url, wanted, member)
    assert client.delete(f"/v2/{repo}/manifests/v1", headers=bearer(granted)).status_code == 202
    revoked = auth_server.admin_api(
        "DELETE", "/grants", params={"team": team, "pattern": f"{space}/*"}
    )
    assert revoked.status_code == 200
    after = token_for(auth_server.url, wanted, member)
    assert_error(client.get(f"/v2/{repo}/tags/list", headers=bearer(after)), 403, "DENIED")


def test_public_repositories_are_pulled_anonymously(
    auth_server: AuthRegistry, client: httpx.Client
) -> None:
    owner = auth_server.new_user()
    repo = f"{owner[0]}/public"
    answer, _ = push_image(
        client, repo, "v1", bearer(token_for(auth_server.url, [scope(repo)], owner))
    )
    assert answer.status_code == 201
    anonymous = token_for(auth_server.url, [scope(repo)])
    assert_error(client.get(f"/v2/{repo}/manifests/v1", headers=bearer(anonymous)), 401)
    auth_server.make_public(repo)
    anonymous = token_for(auth_server.url, [scope(repo)])
    assert client.get(f"/v2/{repo}/manifests/v1", headers=bearer(anonymous)).status_code == 200
    pushed, _ = push_image(client, repo, "v2", bearer(anonymous))
    assert_error(pushed, 401)
    # Still no way in without any token at all.
    assert_error(client.get(f"/v2/{repo}/manifests/v1"), 401)


def test_a_pull_only_ci_token(auth_server: AuthRegistry, client: httpx.Client) -> None:
    owner = auth_server.new_user()
    repo = f"{owner[0]}/built"
    pushed, _ = push_image(
        client, repo, "v1", bearer(token_for(auth_server.url, [scope(repo)], owner))
    )
    assert pushed.status_code == 201
    name, secret = auth_server.new_token([f"{owner[0]}/*:pull"], owner=owner[0])
    token = token_for(auth_server.url, [scope(repo)], (name, secret))
    assert get_token(auth_server.url, [scope(repo)], (name, secret)).json()
    assert client.get(f"/v2/{repo}/manifests/v1", headers=bearer(token)).status_code == 200
    answer, _ = push_image(client, repo, "v2", bearer(token))
    assert_error(answer, 403, "DENIED")
    # The token's name is its user name; another name with the secret is refused.
    assert_error(get_token(auth_server.url, [], (owner[0], secret)), 401)
    assert_error(get_token(auth_server.url, [], ("someone", secret)), 401)


def test_a_token_never_outgrows_its_owner(auth_server: AuthRegistry, client: httpx.Client) -> None:
    owner, other = auth_server.new_user(), auth_server.new_user()
    name, secret = auth_server.new_token(["*:pull,push,delete"], owner=owner[0])
    token = token_for(
        auth_server.url, [scope(f"{owner[0]}/a"), scope(f"{other[0]}/a")], (name, secret)
    )
    access = jwt.decode(token, options={"verify_signature": False})["access"]
    assert access == [{"type": "repository", "name": f"{owner[0]}/a", "actions": ["pull", "push"]}]


def test_revoked_and_expired_tokens(auth_server: AuthRegistry, client: httpx.Client) -> None:
    name, secret = auth_server.new_token(["ci/*:pull"])
    jwt_token = token_for(auth_server.url, ["repository:ci/app:pull"], (name, secret))
    assert_error(client.get("/v2/ci/app/tags/list", headers=bearer(jwt_token)), 404)
    assert auth_server.admin_api("DELETE", f"/tokens/{name}").status_code == 204
    assert_error(get_token(auth_server.url, [], (name, secret)), 401)
    # A bearer token it was traded for stops working too: its subject is gone.
    answer = client.get("/v2/ci/app/tags/list", headers=bearer(jwt_token))
    assert "no longer exists" in assert_error(answer, 401)["message"]
    short, short_secret = auth_server.new_token(["ci/*:pull"], expires="1s")
    time.sleep(1.5)
    assert_error(get_token(auth_server.url, [], (short, short_secret)), 401)


def test_a_name_used_again_does_not_revive_old_tokens(
    auth_server: AuthRegistry, client: httpx.Client
) -> None:
    """Tokens name their account by id: a robot or user made again under a removed one's
    name is another account, and the removed one's tokens stay dead."""
    owner = auth_server.new_user()
    short, repo = unique("ci"), f"{owner[0]}/app"

    def make_robot() -> tuple[str, str]:
        answer = httpx.post(
            f"{auth_server.url}/auth/admin/tokens",
            json={"name": short, "scopes": [f"{owner[0]}/*:pull"]},
            auth=owner,
        )
        assert answer.status_code == 201, answer.text
        return str(answer.json()["name"]), str(answer.json()["token"])

    name, secret = make_robot()
    old = token_for(auth_server.url, [scope(repo, "pull")], (name, secret))
    assert_error(client.get(f"/v2/{repo}/tags/list", headers=bearer(old)), 404, "NAME_UNKNOWN")
    revoked = httpx.delete(f"{auth_server.url}/auth/admin/tokens/{name}", auth=owner)
    assert revoked.status_code == 204
    again, new_secret = make_robot()
    assert again == name
    answer = client.get(f"/v2/{repo}/tags/list", headers=bearer(old))
    assert "no longer exists" in assert_error(answer, 401)["message"]
    new = token_for(auth_server.url, [scope(repo, "pull")], (again, new_secret))
    assert_error(client.get(f"/v2/{repo}/tags/list", headers=bearer(new)), 404, "NAME_UNKNOWN")

    user, password = auth_server.new_user()
    theirs = token_for(auth_server.url, [scope(f"{user}/app", "pull")], (user, password))
    assert auth_server.admin_api("DELETE", f"/users/{user}").status_code == 204
    made = auth_server.admin_api("POST", "/users", json={"name": user, "password": password})
    assert made.status_code == 201
    answer = client.get(f"/v2/{user}/app/tags/list", headers=bearer(theirs))
    assert "no longer exists" in assert_error(answer, 401)["message"]


def test_basic_auth_on_v2(auth_server: AuthRegistry, client: httpx.Client) -> None:
    owner, other = auth_server.new_user(), auth_server.new_user()
    repo = f"{owner[0]}/scripted"
    answer, _ = push_image(client, repo, "v1", {})
    assert_error(answer, 401)
    basic = httpx.Client(base_url=auth_server.url, auth=owner, timeout=30)
    with basic:
        pushed, _ = push_image(basic, repo, "v1", {})
        assert pushed.status_code == 201
        assert basic.get("/v2/").status_code == 200
        assert basic.get(f"/v2/{repo}/tags/list").json()["tags"] == ["v1"]
    with httpx.Client(base_url=auth_server.url, auth=other, timeout=30) as intruder:
        assert_error(intruder.get(f"/v2/{repo}/tags/list"), 403, "DENIED")
        answer, _ = push_image(intruder, repo, "v2", {})
        assert_error(answer, 403, "DENIED")
    with httpx.Client(base_url=auth_server.url, auth=(owner[0], "wrong-pw"), timeout=30) as bad:
        assert_error(bad.get("/v2/"), 401, "UNAUTHORIZED")
    name, secret = auth_server.new_token([f"{owner[0]}/*:pull"], owner=owner[0])
    with httpx.Client(base_url=auth_server.url, auth=(name, secret), timeout=30) as robot:
        assert robot.get(f"/v2/{repo}/tags/list").status_code == 200
        answer, _ = push_image(robot, repo, "v3", {})
        assert_error(answer, 403, "DENIED")


def test_the_catalog_shows_only_what_the_caller_may_pull(
    auth_server: AuthRegistry, client: httpx.Client
) -> None:
    alice, bob = auth_server.new_user(), auth_server.new_user()
    team = auth_server.new_team([bob[0]])
    shared = unique("shared-")
    auth_server.grant(f"{shared}/*", "pull", team=team)
    repos = {
        "alice": [f"{alice[0]}/one", f"{alice[0]}/two"],
        "bob": [f"{bob[0]}/mine"],
        "shared": [f"{shared}/lib"],
        "public": [f"{alice[0]}/zz-public"],
    }
    admin_token = token_for(
        auth_server.url, [scope(r) for v in repos.values() for r in v], auth_server.admin
    )
    for names in repos.values():
        for repo in names:
            assert push_image(client, repo, "v1", bearer(admin_token))[0].status_code == 201
    auth_server.make_public(repos["public"][0])

    def catalog(user: tuple[str, str], **params: str) -> httpx.Response:
        token = token_for(auth_server.url, ["registry:catalog:*"], user)
        return client.get("/v2/_catalog", params=params, headers=bearer(token))

    everything = set(r for v in repos.values() for r in v)
    seen_by_bob = set(catalog(bob).json()["repositories"]) & everything
    assert seen_by_bob == {*repos["bob"], *repos["shared"], *repos["public"]}
    seen_by_alice = set(catalog(alice).json()["repositories"]) & everything
    assert seen_by_alice == {*repos["alice"], *repos["public"]}
    assert everything <= set(catalog(auth_server.admin).json()["repositories"])
    # Pagination counts only what is shown: pages of one, each with a Link to the next.
    pages, params = [], {"n": "1"}
    while True:
        answer = catalog(alice, **params)
        pages += answer.json()["repositories"]
        if "link" not in answer.headers:
            break
        link = answer.headers["link"]
        last = link.split("last=")[1].split(">")[0]
        params = {"n": "1", "last": last.replace("%2F", "/")}
    assert {*pages} & everything == seen_by_alice and len(pages) == len(set(pages))
    # Anonymous callers are not given the catalog.
    anonymous = token_for(auth_server.url, ["registry:catalog:*"])
    assert_error(client.get("/v2/_catalog", headers=bearer(anonymous)), 401)


def test_mounts_respect_access(auth_server: AuthRegistry, client: httpx.Client) -> None:
    alice, bob = auth_server.new_user(), auth_server.new_user()
    private, public = f"{alice[0]}/private", f"{alice[0]}/public"
    alice_token = token_for(auth_server.url, [scope(private), scope(public)], alice)
    secret_blob, open_blob = (
        b"alice's secret layer " + unique().encode(),
        b"open " + unique().encode(),
    )
    assert push_blob(client, private, secret_blob, bearer(alice_token)).status_code == 201
    assert push_blob(client, public, open_blob, bearer(alice_token)).status_code == 201
    auth_server.make_public(public)
    target = f"{bob[0]}/copy"
    bob_token = token_for(
        auth_server.url,
        [scope(target), f"repository:{private}:pull", f"repository:{public}:pull"],
        bob,
    )

    def mount(blob: bytes, source: str | None) -> httpx.Response:
        params = {"mount": digest_of(blob), **({"from": source} if source else {})}
        return client.post(f"/v2/{target}/blobs/uploads/", params=params, headers=bearer(bob_token))

    # From a repository Bob cannot read: no mount, an ordinary upload session instead.
    assert mount(secret_blob, private).status_code == 202
    assert mount(secret_blob, None).status_code == 202
    assert_error(
        client.get(f"/v2/{target}/blobs/{digest_of(secret_blob)}", headers=bearer(bob_token)), 404
    )
    # From one he can: mounted, with or without `from`.
    assert mount(open_blob, public).status_code == 201
    other = b"open too " + unique().encode()
    assert push_blob(client, public, other, bearer(alice_token)).status_code == 201
    assert mount(other, None).status_code == 201
    assert (
        client.get(f"/v2/{target}/blobs/{digest_of(other)}", headers=bearer(bob_token)).content
        == other
    )


def test_the_challenge_of_a_mount_names_its_source(
    auth_server: AuthRegistry, client: httpx.Client
) -> None:
    """As in Distribution: answering the challenge of a mount yields a token it can use."""
    owner, other = auth_server.new_user(), auth_server.new_user()
    source, target = f"{owner[0]}/base", f"{owner[0]}/derived"
    blob = b"base layer " + unique().encode()
    token = token_for(auth_server.url, [scope(source)], owner)
    assert push_blob(client, source, blob, bearer(token)).status_code == 201
    params = {"mount": digest_of(blob), "from": source}
    answer = client.post(f"/v2/{target}/blobs/uploads/", params=params)
    asked = challenge(assert_response(answer, 401))
    assert asked["scope"] == f"repository:{target}:pull,push repository:{source}:pull"
    wide = token_for(auth_server.url, [asked["scope"]], owner)
    answer = client.post(f"/v2/{target}/blobs/uploads/", params=params, headers=bearer(wide))
    assert answer.status_code == 201
    # A token naming only the target, of an account that may pull the source: 401 again,
    # naming both, so the client widens its token instead of uploading the layer again.
    other_target = f"{owner[0]}/other"
    narrow = token_for(auth_server.url, [scope(other_target)], owner)
    answer = client.post(
        f"/v2/{other_target}/blobs/uploads/", params=params, headers=bearer(narrow)
    )
    error = assert_error(answer, 401, "UNAUTHORIZED")
    assert error["detail"] == [{"type": "repository", "name": source, "actions": ["pull"]}]
    asked = challenge(answer)
    assert asked["error"] == "insufficient_scope"
    assert asked["scope"] == f"repository:{other_target}:pull,push repository:{source}:pull"
    wide = token_for(auth_server.url, [asked["scope"]], owner)
    answer = client.post(f"/v2/{other_target}/blobs/uploads/", params=params, headers=bearer(wide))
    assert answer.status_code == 201
    # Basic credentials carry the account's rights: no challenge, the mount just happens.
    with httpx.Client(base_url=auth_server.url, auth=owner, timeout=30) as basic:
        answer = basic.post(f"/v2/{owner[0]}/third/blobs/uploads/", params=params)
        assert answer.status_code == 201
    # Nor can someone who may not read the source get it by answering the challenge.
    theirs = token_for(
        auth_server.url, [scope(f"{other[0]}/copy"), f"repository:{source}:pull"], other
    )
    answer = client.post(
        f"/v2/{other[0]}/copy/blobs/uploads/", params=params, headers=bearer(theirs)
    )
    assert answer.status_code == 202


def test_a_down_scoped_token_mounts_nothing_beyond_its_scopes(
    auth_server: AuthRegistry, client: httpx.Client
) -> None:
    """A CI token for one repository, leaked: its account may read more, the token may not."""
    owner = auth_server.new_user()
    secret_repo, ci_repo = f"{owner[0]}/secret", f"{owner[0]}/ci"
    full = token_for(auth_server.url, [scope(secret_repo), scope(ci_repo)], owner)
    blob = b"a layer only the secret repository has " + unique().encode()
    assert push_blob(client, secret_repo, blob, bearer(full)).status_code == 201
    leaked = token_for(auth_server.url, [scope(ci_repo)], owner)
    uploads = f"/v2/{ci_repo}/blobs/uploads/"
    # Without `from`: the blob is in no repository the token may pull, so no mount.
    answer = client.post(uploads, params={"mount": digest_of(blob)}, headers=bearer(leaked))
    assert answer.status_code == 202
    answer = client.get(f"/v2/{ci_repo}/blobs/{digest_of(blob)}", headers=bearer(leaked))
    assert_error(answer, 404, "BLOB_UNKNOWN")
    # With `from`: not with this token either; the challenge says what a token would need.
    params = {"mount": digest_of(blob), "from": secret_repo}
    answer = client.post(uploads, params=params, headers=bearer(leaked))
    assert challenge(assert_response(answer, 401))["error"] == "insufficient_scope"
    answer = client.get(f"/v2/{ci_repo}/blobs/{digest_of(blob)}", headers=bearer(leaked))
    assert_error(answer, 404, "BLOB_UNKNOWN")
    # A token that carries pull on the source mounts, with or without `from`.
    both = token_for(auth_server.url, [scope(ci_repo), scope(secret_repo, "pull")], owner)
    answer = client.post(uploads, params={"mount": digest_of(blob)}, headers=bearer(both))
    assert answer.status_code == 201


def assert_response(answer: httpx.Response, status: int) -> httpx.Response:
    assert_error(answer, status)
    return answer
