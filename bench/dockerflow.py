"""`docker push` and `docker pull` of a multi-layer image, through a private dockerd.

The daemon and its CLI come from `tests/support/dockerd.py` (`DockerDaemon`); it is started
once for the whole run and stopped at the end. The image is built once, FROM scratch, one
`COPY` of pseudo-random bytes per layer (incompressible, like most real layers after gzip).
Each round tags it for the server under test, pushes (timed), deletes every local tag so its
layers go too, pulls (timed), and keeps the pulled image as the source of the next round.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import procstat
from bench.report import Metric
from bench.servers import REPO_ROOT, Server
from bench.workloads import MIB, Context, Outcome, Workload

SOURCE = "bench-source:latest"


def _import_dockerd() -> Any:
    import sys

    # as the tests import it: `support.dockerd`, with `tests/` on the path (it imports
    # `support.ci` and `support.netrelay` by those names)
    tests = str(REPO_ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from support import dockerd

    return dockerd


class DockerPushPull(Workload):
    name = "docker"
    title = "docker push, then docker pull, of a multi-layer image (seconds, wall clock)"
    metrics = (
        Metric("push_s", "docker push", "s", better="lower"),
        Metric("pull_s", "docker pull", "s", better="lower"),
    )

    # dockerd's gzip fills both cores, and its CPU time for the same push swings by 15% from
    # one round to the next: more rounds, for a median that holds still.
    min_rounds = 5

    def __init__(self) -> None:
        self.daemon: Any = None

    def available(self, ctx: Context) -> str | None:
        try:
            dockerd = _import_dockerd()
        except ImportError as exc:
            return f"tests/support/dockerd.py cannot be imported: {exc}"
        if dockerd.find_dockerd() is None or dockerd.find_docker_cli() is None:
            return "dockerd or the docker CLI is missing (Debian package docker.io)"
        return None

    def _start(self, ctx: Context) -> Any:
        if self.daemon is None:
            dockerd = _import_dockerd()
            daemon = dockerd.DockerDaemon(dockerd.find_dockerd(), dockerd.find_docker_cli())
            daemon.start()
            self.daemon = daemon
            try:
                self._build(ctx)
            except BaseException:
                self.close()
                raise
        return self.daemon

    def _build(self, ctx: Context) -> None:
        layers, size = ctx.settings.docker_layers, ctx.settings.docker_layer_mib * MIB
        with tempfile.TemporaryDirectory(prefix="bench-image-", dir=ctx.folder) as context:
            lines = ["FROM scratch"]
            for index in range(1, layers + 1):
                rng = random.Random(f"docker-layer-{index}-{time.time_ns()}")
                with Path(context, f"layer{index}.bin").open("wb") as out:
                    remaining = size
                    while remaining:
                        block = rng.randbytes(min(8 * MIB, remaining))
                        out.write(block)
                        remaining -= len(block)
                lines.append(f"COPY layer{index}.bin /data/layer{index}.bin")
            Path(context, "Dockerfile").write_text("\n".join(lines) + "\n")
            self.daemon.docker("build", "--force-rm", "--tag", SOURCE, context, timeout=900)

    def close(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
            self.daemon = None

    def prepare(self, server: Server, ctx: Context) -> Any:
        daemon = self._start(ctx)
        target = f"{server.host}/bench/docker:latest"
        daemon.docker("tag", SOURCE, target)
        return target

    def run(self, server: Server, ctx: Context, state: Any) -> Outcome:
        target: str = state
        daemon = self.daemon
        client_cpu = procstat.tree_cpu_seconds(daemon.process.pid)
        started = time.perf_counter()
        daemon.docker("push", target, timeout=900)
        push_s = time.perf_counter() - started
        daemon.docker("rmi", target, SOURCE)
        left = daemon.docker("images", "-q").stdout.split()
        if left:
            daemon.docker("rmi", "-f", *left)
        started = time.perf_counter()
        daemon.docker("pull", target, timeout=900)
        pull_s = time.perf_counter() - started
        daemon.docker("tag", target, SOURCE)
        daemon.docker("rmi", target)
        moved = 2 * ctx.settings.docker_layers * ctx.settings.docker_layer_mib * MIB
        # The client is dockerd and its containerd (gzip on push, gunzip and unpack on pull):
        # their CPU is shown as the load generator's.
        client_cpu = procstat.tree_cpu_seconds(daemon.process.pid) - client_cpu
        return Outcome({"push_s": push_s, "pull_s": pull_s}, moved, client_cpu)
