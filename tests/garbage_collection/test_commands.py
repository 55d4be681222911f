"""`registry gc [--dry-run]` beside a running server, and the admin API's
`POST /auth/admin/gc` and `GET /auth/admin/gc/runs` (admins only)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from api.helpers import digest_of, unique_repo
from auth.conftest import ADMIN, start_auth_server
from auth.helpers import bearer, run_cli, token_for

from registry.oci import mediatypes as mt

from support.server import RegistryServer

NO_GRACE = {
    "REGISTRY_GC_ENABLED": "false",  # only the runs the tests ask for
    "REGISTRY_GC_BLOB_GRACE_SECONDS": "0",
}


def push(client: httpx.Client, repository: str, tag: str, layers: list[bytes]) -> str:
    config = json.dumps({"repository": repository, "tag": tag}).encode()
    for blob in [config, *layers]:
        answer = client.post(
            f"/v2/{repository}/blobs/uploads/", params={"digest": digest_of(blob)}, content=blob
        )
        assert answer.status_code == 201, answer.text
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": {"mediaType": mt.OCI_CONFIG, "digest": digest_of(config),
                       "size": len(config)},
            "layers": [{"mediaType": mt.OCI_LAYER, "digest": digest_of(b), "size": len(b)}
                       for b in layers],
        }
    ).encode()  # fmt: skip
    answer = client.put(
        f"/v2/{repository}/manifests/{tag}", content=body, headers={"Content-Type": mt.OCI_MANIFEST}
    )
    assert answer.status_code == 201, answer.text
    return digest_of(body)


def stored_files(data: Path) -> set[str]:
    return {str(p.relative_to(data)) for p in (data / "storage").rglob("*") if p.is_file()}


def blob_file(data: Path, digest: str) -> Path:
    hexdigest = digest.split(":")[1]
    return data / "storage" / "blobs" / "sha256" / hexdigest[:2] / hexdigest / "data"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    server = RegistryServer(tmp_path_factory.mktemp("gc-commands") / "data", env=NO_GRACE)
    server.start()
    yield server
    server.stop()


def test_gc_command_beside_a_running_server(server: RegistryServer) -> None:
    gone, kept = unique_repo("gc"), unique_repo("gc")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        doomed = push(client, gone, "v1", [b"shared base", b"only in gone"])
        push(client, kept, "v1", [b"shared base", b"only in kept"])
        assert client.delete(f"/v2/{gone}/manifests/{doomed}").status_code == 202
        gone_config = json.dumps({"repository": gone, "tag": "v1"}).encode()
        unique = {digest_of(b"only in gone"), digest_of(gone_config)}
        files = stored_files(server.data_dir)

        preview = run_cli(server.data_dir, "gc", "--dry-run", "--json", env=NO_GRACE)
        assert preview.returncode == 0, preview.stderr
        report = json.loads(preview.stdout)
        assert report["dry_run"] and set(report["deleted_blobs"]) >= unique
        assert stored_files(server.data_dir) == files  # nothing changed

        run = run_cli(server.data_dir, "gc", "--json", env=NO_GRACE)
        assert run.returncode == 0, run.stderr
        assert set(json.loads(run.stdout)["deleted_blobs"]) == set(report["deleted_blobs"])
        for digest in unique:
            assert not blob_file(server.data_dir, digest).exists()
        assert blob_file(server.data_dir, digest_of(b"shared base")).exists()

        again = run_cli(server.data_dir, "gc", env=NO_GRACE)
        assert again.returncode == 0
        assert (
            again.stdout.startswith("garbage collection ") and ": deleted 0 blobs" in again.stdout
        )

        # The image left pulls whole, and the server never noticed.
        manifest = client.get(f"/v2/{kept}/manifests/v1", headers={"Accept": mt.OCI_MANIFEST})
        for descriptor in [manifest.json()["config"], *manifest.json()["layers"]]:
            blob = client.get(f"/v2/{kept}/blobs/{descriptor['digest']}")
            assert blob.status_code == 200 and digest_of(blob.content) == descriptor["digest"]


def test_bad_settings_stop_gc_and_serve_at_once(tmp_path: Path) -> None:
    failed = run_cli(tmp_path, "gc", env={"REGISTRY_GC_BATCH_SIZE": "0"})
    assert failed.returncode == 2 and "batch_size" in failed.stderr
    refused = run_cli(tmp_path, "serve", env={"REGISTRY_GC_INTERVAL_SECONDS": "0"})
    assert refused.returncode == 2 and "gc.interval_seconds" in refused.stderr


# The admin API -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def admin_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    server = start_auth_server(tmp_path_factory.mktemp("gc-admin"), env=NO_GRACE)
    yield server
    server.stop()


def admin_api(server: RegistryServer, method: str, path: str, **kwargs: object) -> httpx.Response:
    kwargs.setdefault("auth", ADMIN)
    return httpx.request(method, f"{server.url}/auth/admin{path}", timeout=60, **kwargs)  # type: ignore[arg-type]


def test_admin_api_runs_and_lists_collections(admin_server: RegistryServer) -> None:
    repository = unique_repo("gc")
    token = token_for(admin_server.url, [f"repository:{repository}:pull,push,delete"], ADMIN)
    with httpx.Client(base_url=admin_server.url, timeout=30, headers=bearer(token)) as client:
        image = push(client, repository, "v1", [b"soon garbage"])
        assert client.delete(f"/v2/{repository}/manifests/{image}").status_code == 202
    layer = blob_file(admin_server.data_dir, digest_of(b"soon garbage"))

    preview = admin_api(admin_server, "POST", "/gc", json={"dry_run": True})
    assert preview.status_code == 200, preview.text
    assert (
        preview.json()["dry_run"] and digest_of(b"soon garbage") in preview.json()["deleted_blobs"]
    )
    assert layer.exists()

    done = admin_api(admin_server, "POST", "/gc")
    assert done.status_code == 200 and done.json()["status"] == "ok"
    assert digest_of(b"soon garbage") in done.json()["deleted_blobs"]
    assert not layer.exists()

    started = admin_api(admin_server, "POST", "/gc", json={"wait": False})
    assert started.status_code == 202
    deadline = time.monotonic() + 60
    while (runs := admin_api(admin_server, "GET", "/gc/runs").json()["runs"])[0][
        "status"
    ] == "running":
        assert time.monotonic() < deadline, runs
        time.sleep(0.1)
    assert [(r["trigger"], r["dry_run"], r["status"]) for r in runs[:3]] == [
        ("api", False, "ok"), ("api", False, "ok"), ("api", True, "ok"),
    ]  # fmt: skip
    assert runs[1]["blobs_deleted"] >= 2 and runs[1]["bytes_reclaimed"] > 0
    assert (
        len(admin_api(admin_server, "GET", "/gc/runs", params={"limit": "1"}).json()["runs"]) == 1
    )

    audit = admin_api(admin_server, "GET", "/audit", params={"action": "admin"}).json()["entries"]
    assert sum(1 for e in audit if e["detail"].get("op") == "gc.run") >= 3


def test_admin_api_is_for_admins_only(admin_server: RegistryServer) -> None:
    user = ("gc-user", "pw-not-an-admin-1")
    made = admin_api(admin_server, "POST", "/users", json={"name": user[0], "password": user[1]})
    assert made.status_code == 201
    for method, path in (("POST", "/gc"), ("GET", "/gc/runs")):
        assert admin_api(admin_server, method, path, auth=None).status_code == 401
        denied = admin_api(admin_server, method, path, auth=user)
        assert denied.status_code == 403 and denied.json()["errors"][0]["code"] == "DENIED"
        wrong = admin_api(admin_server, method, path, auth=(ADMIN[0], "wrong password"))
        assert wrong.status_code == 401
    runs = admin_api(admin_server, "GET", "/gc/runs").json()["runs"]
    assert all(r["trigger"] != "api" or r["dry_run"] in (True, False) for r in runs)


@pytest.mark.parametrize(
    "body",
    [b'{"dry_run": "yes"}', b'{"everything": true}', b"[]", b"not json", b'{"wait": 1}'],
)
def test_admin_api_refuses_bad_requests(admin_server: RegistryServer, body: bytes) -> None:
    before = len(
        admin_api(admin_server, "GET", "/gc/runs", params={"limit": "1000"}).json()["runs"]
    )
    answer = admin_api(admin_server, "POST", "/gc", content=body)
    assert answer.status_code == 400 and answer.json()["errors"][0]["code"] == "BAD_REQUEST"
    after = len(admin_api(admin_server, "GET", "/gc/runs", params={"limit": "1000"}).json()["runs"])
    assert after == before  # nothing ran


@pytest.mark.parametrize("limit", ["0", "-1", "x", "1001"])
def test_admin_api_refuses_bad_limits(admin_server: RegistryServer, limit: str) -> None:
    answer = admin_api(admin_server, "GET", "/gc/runs", params={"limit": limit})
    assert answer.status_code == 400
