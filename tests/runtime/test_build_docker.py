"""Our build against Docker's classic builder (DOCKER_BUILDKIT=0), from the same context and
the same base image in our registry: the two images have the same files, owners, modes,
config, environment, user and output; ours, pushed to our registry, runs the same under
real Docker; and `docker build` can start FROM it."""

from __future__ import annotations

import difflib
import gzip
import io
import json
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from registry.runtime.store import Store
from runtime.buildhelp import write_context
from runtime.runner import ROOT, cli

from support.dockerd import DockerDaemon, build_busybox_image
from support.server import RegistryServer

pytestmark = pytest.mark.requires(ROOT, "building needs root")

DOCKERFILE = """# syntax=docker/dockerfile:1
ARG BASE
FROM ${BASE} AS builder
ARG VERSION=1.0
RUN ["/bin/busybox", "sh", "-c", "busybox mkdir -p /out && echo version $VERSION > /out/version"]
COPY src/ /src/
RUN busybox sha256sum /src/*.txt | busybox cut -c1-16 > /out/sums && busybox chmod 0600 /out/sums

FROM ${BASE}
MAINTAINER pocket tests
ARG USER_ID=1000
ENV APP=/srv/app \\
    GREETING="hello world" PATH=/srv/app/bin:/usr/local/bin:/usr/bin:/bin
LABEL org.example.title="pocket build" org.example.version="${VERSION:-none}"
RUN echo "app:x:$USER_ID:$USER_ID:app:/home/app:/bin/sh" >> /etc/passwd && \\
    echo "app:x:$USER_ID:" > /etc/group && busybox mkdir -p /home/app && \\
    busybox chown app:app /home/app
WORKDIR $APP
COPY --chown=app:app conf/ conf/
COPY *.txt docs/
COPY --from=builder /out/ /srv/app/out/
ADD bundle.tar.gz /opt/
ADD plain.txt /opt/plain.txt
SHELL ["/bin/sh", "-c"]
RUN busybox mkdir -p bin && \\
    printf '#!/bin/sh\\necho "$GREETING from $(busybox id -un) in $(pwd)"\\n' > bin/greet && \\
    busybox chmod 755 bin/greet && rm -f /layers/3.txt
EXPOSE 8080/tcp 9090/udp
VOLUME ["/data"]
USER app
STOPSIGNAL SIGINT
HEALTHCHECK --interval=10s --timeout=2s --start-period=1s --retries=4 CMD greet || exit 1
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["greet; cat out/version out/sums; busybox id; ls docs"]
"""

# Left out: what a container runtime puts there (/proc...; Docker's /.dockerenv and /etc/mtab)
# and /data, the image's VOLUME, which `docker run` mounts an anonymous volume on (making the
# folder) and our `run` does not: the images themselves have no /data, as `docker run` of
# both shows in test_ours_pulled_and_run_by_docker.
LISTING = (
    "cd / && busybox find / -xdev \\( -path /proc -o -path /sys -o -path /dev -o -path /data -o "
    "-path /etc/hosts -o -path /etc/hostname -o -path /etc/resolv.conf -o -path /etc/mtab "
    "-o -path /.dockerenv \\) -prune -o -print | busybox sort | while read -r f; do "
    "if [ -f \"$f\" ] && [ ! -L \"$f\" ]; then "
    "echo \"$(busybox stat -c '%n %u %g %a %F %s' \"$f\") $(busybox sha256sum < \"$f\" | "
    "busybox cut -c1-12)\"; else busybox stat -c '%n %u %g %a %F' \"$f\"; fi; done"
)
CONFIG_KEYS = ("Env", "Cmd", "Entrypoint", "WorkingDir", "User", "ExposedPorts", "Volumes",
               "Labels", "StopSignal", "Healthcheck", "Shell", "OnBuild")


def bundle() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, kind, mode, uid, data in (
                ("bundle", tarfile.DIRTYPE, 0o750, 1000, b""),
                ("bundle/tool", tarfile.REGTYPE, 0o755, 1000, b"#!/bin/sh\necho tool\n"),
                ("bundle/share", tarfile.DIRTYPE, 0o755, 0, b""),
                ("bundle/share/data", tarfile.REGTYPE, 0o640, 33, b"data\n"),
                ("bundle/link", tarfile.SYMTYPE, 0o777, 0, b"")):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.uid, info.gid = kind, mode, uid, uid
            info.mtime = 1_600_000_000
            info.linkname = "tool" if kind == tarfile.SYMTYPE else ""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    return gzip.compress(buffer.getvalue())


@pytest.fixture(scope="module")
def images(dockerd: DockerDaemon, registry_server: RegistryServer,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The same context built by Docker and by us, ours pushed to our registry."""
    host = registry_server.host
    base = build_busybox_image(dockerd, f"{host}/cmp/build-base:v1", layers=3)
    dockerd.docker("push", base)
    context = write_context(tmp_path_factory.mktemp("context"), {
        "Dockerfile": DOCKERFILE, ".dockerignore": "*.log\nsrc/secret*\n",
        "src/a.txt": "alpha\n", "src/b.txt": "beta\n", "src/secret.txt": "no\n",
        "conf/app.conf": "port=8080\n", "conf/sub/x.conf": "x=1\n",
        "readme.txt": "read me\n", "notes.txt": "notes\n", "debug.log": "log\n",
        "bundle.tar.gz": bundle(), "plain.txt": "plain\n"})
    (context / "conf" / "app.conf").chmod(0o600)
    theirs, ours = f"{host}/cmp/built-by-docker:v1", f"{host}/cmp/built-by-pocket:v1"
    dockerd.docker("build", "--build-arg", f"BASE={base}", "-t", theirs, str(context))
    store_root = tmp_path_factory.mktemp("store")
    env = {"POCKET_RUNTIME_ROOT": str(store_root),
           "DOCKER_CONFIG": str(tmp_path_factory.mktemp("dc"))}
    built = cli("build", "--build-arg", f"BASE={base}", "-t", ours, str(context), env=env,
                timeout=300)
    assert built.returncode == 0, built.stderr + built.stdout
    pushed = cli("push", ours, env=env, timeout=300)
    assert pushed.returncode == 0, pushed.stderr
    yield {"theirs": theirs, "ours": ours, "root": str(store_root), "base": base}


def docker_run(dockerd: DockerDaemon, image: str, flags: list[str] | None = None,
               command: list[str] | None = None) -> tuple[int, str]:
    done = dockerd.docker("run", "--rm", "--network", "none", *(flags or []), image,
                          *(command or []), check=False)
    assert done.returncode != 125, done.stderr
    return done.returncode, done.stdout


def pocket_run(images: dict[str, str], flags: list[str] | None = None,
               command: list[str] | None = None) -> tuple[int, str]:
    done = cli("run", "--rm", "--network", "none", *(flags or []), images["ours"],
               *(command or []), env={"POCKET_RUNTIME_ROOT": images["root"]}, timeout=120)
    assert done.returncode != 125, done.stderr
    return done.returncode, done.stdout


def test_same_files_owners_and_modes(dockerd: DockerDaemon, images: dict[str, str]) -> None:
    listing = ["--entrypoint", "/bin/busybox", "-u", "0"]
    theirs = docker_run(dockerd, images["theirs"], listing, ["sh", "-c", LISTING])
    ours = pocket_run(images, listing, ["sh", "-c", LISTING])
    assert theirs[0] == 0 and len(theirs[1].splitlines()) > 40
    assert ours == theirs, "\n".join(difflib.unified_diff(
        theirs[1].splitlines(), ours[1].splitlines(), "docker", "ours", lineterm=""))
    for expected in ("/srv/app/conf/app.conf 1000 1000 600 regular file",
                     "/opt/bundle 1000 1000 750 directory",
                     "/opt/bundle/share/data 33 33 640 regular file",
                     "/srv/app/out/sums 0 0 600 regular file"):
        assert expected in theirs[1]
    assert "/layers/3.txt" not in theirs[1] and "secret" not in theirs[1]
    assert "debug.log" not in theirs[1]


def test_same_output_user_and_environment(dockerd: DockerDaemon,
                                          images: dict[str, str]) -> None:
    theirs = docker_run(dockerd, images["theirs"])
    assert theirs[0] == 0 and theirs[1].startswith("hello world from app in /srv/app\n")
    assert pocket_run(images) == theirs
    env = ["--entrypoint", "/bin/busybox"]
    theirs_env = docker_run(dockerd, images["theirs"], env, ["env"])
    ours_env = pocket_run(images, env, ["env"])

    def comparable(text: str) -> list[str]:
        return sorted(line for line in text.splitlines() if not line.startswith("HOSTNAME="))

    assert comparable(ours_env[1]) == comparable(theirs_env[1])


def inspect(dockerd: DockerDaemon, image: str) -> dict[str, Any]:
    doc = json.loads(dockerd.docker("image", "inspect", image).stdout)[0]
    config = {key: doc["Config"].get(key) for key in CONFIG_KEYS}
    return {"config": config, "author": doc.get("Author"), "layers": len(doc["RootFS"]["Layers"]),
            "os": doc["Os"], "architecture": doc["Architecture"]}


def test_ours_pulled_and_run_by_docker(dockerd: DockerDaemon, images: dict[str, str]) -> None:
    dockerd.docker("pull", images["ours"])
    assert inspect(dockerd, images["ours"]) == inspect(dockerd, images["theirs"])
    full = LISTING.replace("-path /data -o ", "")
    for flags, command in (([], []), (["--entrypoint", "/bin/busybox", "-u", "0"],
                                      ["sh", "-c", full])):
        mine = docker_run(dockerd, images["ours"], flags, command)
        assert mine == docker_run(dockerd, images["theirs"], flags, command)
        assert mine[0] == 0 and (not command or "/data 0 0 755 directory" in mine[1])


def test_docker_builds_from_our_image(dockerd: DockerDaemon, images: dict[str, str],
                                      store: Store) -> None:
    with tempfile.TemporaryDirectory() as context:
        Path(context, "Dockerfile").write_text(
            f"FROM {images['ours']}\nUSER root\nRUN greet > /greeted\nCMD [\"cat /greeted\"]\n")
        tag = images["ours"].replace("built-by-pocket", "docker-on-pocket")
        dockerd.docker("build", "-t", tag, context)
    done = dockerd.docker("run", "--rm", "--network", "none", tag)
    assert done.stdout == "hello world from root in /srv/app\n"
