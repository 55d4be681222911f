"""The pocket runtime pushing to our own registry with auth on: refused before `registry
login`, then pushed with a token for pull,push, blobs mounted from the user's other
repository (the token carries pull on it too), and refused where the user may not push."""

from __future__ import annotations

from pathlib import Path

import httpx
from runtime.imaging import Image, Layer, Pusher, directory, file, tar_bytes
from runtime.runner import cli

from auth.conftest import AuthRegistry
from auth.helpers import SERVICE


def test_push_needs_login_then_mounts_and_pushes(auth_server: AuthRegistry,
                                                 tmp_path: Path) -> None:
    user, password = auth_server.new_user("push")
    pusher = Pusher(auth_server.url, auth=(user, password))
    try:
        layers = [Layer(tar_bytes([directory("etc"), file("etc/app", "pushed by pocket")]))]
        pusher.image(f"{user}/base", "v1", Image(layers, {"Cmd": ["/bin/sh"]}))
    finally:
        pusher.close()
    env = {"POCKET_RUNTIME_ROOT": str(tmp_path / "store"), "DOCKER_CONFIG": str(tmp_path / "dc")}
    base, app = f"{auth_server.host}/{user}/base:v1", f"{auth_server.host}/{user}/app:v1"
    login = cli("login", auth_server.host, "-u", user, "--password-stdin",
                stdin=password + "\n", env=env)
    assert login.returncode == 0, login.stderr
    assert cli("pull", base, env=env).returncode == 0
    assert cli("tag", base, app, env=env).returncode == 0

    logged_out = {**env, "DOCKER_CONFIG": str(tmp_path / "nobody")}
    denied = cli("push", app, env=logged_out)
    assert denied.returncode == 1 and denied.stderr.startswith("Error: ")
    assert "Traceback" not in denied.stderr

    pushed = cli("push", app, env=env)
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdout.count(f"Mounted from {user}/base") == 2  # the layer and the config
    digest = pushed.stdout.split("digest: ")[1].split()[0]
    with httpx.Client(base_url=auth_server.url, auth=(user, password)) as http:
        token = http.get("/auth/token", params={"service": SERVICE,
                                                "scope": f"repository:{user}/app:pull"})
        bearer = {"Authorization": f"Bearer {token.json()['token']}"}
        head = http.head(f"/v2/{user}/app/manifests/v1", headers={
            **bearer, "Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert head.status_code == 200 and head.headers["Docker-Content-Digest"] == digest

    other, other_password = auth_server.new_user("other")
    assert cli("login", auth_server.host, "-u", other, "--password-stdin",
               stdin=other_password + "\n", env=env).returncode == 0
    refused = cli("push", app, env=env)
    assert refused.returncode == 1 and refused.stderr.startswith("Error: ")
    assert "denied" in refused.stderr or "authentication" in refused.stderr
