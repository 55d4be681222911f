"""The pocket runtime against our own registry with auth on: a private image pulls only
after `registry login`, and then runs."""

from __future__ import annotations

from pathlib import Path

from runtime.imaging import Image, Layer, Pusher, directory, file, tar_bytes
from runtime.runner import ROOT, cli

from auth.conftest import AuthRegistry


def test_private_image_pulls_after_login_and_runs(
    auth_server: AuthRegistry, tmp_path: Path
) -> None:
    user, password = auth_server.new_user("rt")
    pusher = Pusher(auth_server.url, auth=(user, password))
    try:
        layer = Layer(tar_bytes([directory("etc"), file("etc/greeting", "hello from a login")]))
        pusher.image(f"{user}/app", "v1", Image([layer]))
    finally:
        pusher.close()
    ref = f"{auth_server.host}/{user}/app:v1"
    env = {"POCKET_RUNTIME_ROOT": str(tmp_path / "store"), "DOCKER_CONFIG": str(tmp_path / "dc")}

    denied = cli("pull", ref, env=env)
    assert denied.returncode != 0
    assert denied.stderr.startswith("Error: ") and len(denied.stderr.splitlines()) == 1
    assert "Traceback" not in denied.stderr

    wrong = cli("login", auth_server.host, "-u", user, "--password-stdin", stdin="nope\n", env=env)
    assert wrong.returncode != 0 and "Traceback" not in wrong.stderr

    login = cli(
        "login", auth_server.host, "-u", user, "--password-stdin", stdin=password + "\n", env=env
    )
    assert login.returncode == 0, login.stderr
    pulled = cli("pull", ref, env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert f"{auth_server.host}/{user}/app" in cli("images", env=env).stdout
    if ROOT:
        ran = cli("run", "--rm", ref, "/bin/true", env=env)
        # The image has no /bin/true: the runtime's Docker-style 127 shows it got that far.
        assert ran.returncode == 127, ran.stderr
