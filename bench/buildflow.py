"""`build`: the same multi-stage Dockerfile built by `registry build` and by `docker build`.

Not a registry against a registry: builder against builder, both FROM the same busybox image
(built by the private dockerd, as `tests/support/dockerd.py` makes it) in one of our
servers, started for the workload. Docker runs its classic builder (`DOCKER_BUILDKIT=0`,
Debian's docker.io ships no buildx). Each round, ours then Docker, A B A B:

- cold: nothing cached, the base image not even pulled (ours: an empty store; Docker: the
  built images, the base and the build cache removed first);
- cached: the same build again at once, every step a cache hit.

The figures are wall-clock seconds of the command (`registry build`, `docker build`) as a
user waits for it; the builder's CPU is shown too (ours: the command and its containers;
Docker: the CLI, dockerd and containerd with their shims). In the table the "distribution"
column is `docker build`. Targets: ours at least as fast cold, twice as fast cached.
"""

from __future__ import annotations

import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import procstat
from bench.dockerflow import _import_dockerd
from bench.report import SIDES, Metric, Results
from bench.runner import log
from bench.servers import REPO_ROOT, make_server
from bench.workloads import Context, Workload

DOCKERFILE = """ARG BASE
FROM $BASE AS build
WORKDIR /src
COPY src/ ./
RUN busybox mkdir -p /out && busybox find . -type f | busybox sort | \\
    busybox xargs busybox sha256sum > /out/SUMS && \\
    busybox tar -cf - . | busybox gzip -1 > /out/src.tar.gz
RUN busybox wc -l /out/SUMS > /out/COUNT

FROM $BASE
ARG VERSION=1.0
ENV APP_HOME=/srv/app VERSION=$VERSION
LABEL org.example.bench="build"
WORKDIR $APP_HOME
COPY --from=build /out/ ./dist/
COPY static/ ./static/
COPY config.ini ./
RUN busybox mkdir -p logs && busybox chmod 0750 logs && echo "built $VERSION" > BUILT
EXPOSE 8080
USER 1000
CMD ["/bin/busybox", "cat", "/srv/app/BUILT"]
"""
MEASURED = (
    Metric("cold_s", "cold build (nothing cached, base pulled)", "s", better="lower"),
    Metric("cached_s", "fully cached rebuild (target: half Docker's)", "s", better="lower",
           goal=0.5),
    Metric("cold_cpu_s", "builder CPU, cold", "s", better="lower", target=False),
    Metric("cached_cpu_s", "builder CPU, cached", "s", better="lower", target=False),
)


def write_context(folder: Path, files: int, size: int) -> None:
    """A source tree and static files (text-like, seeded): `files` files, `size` bytes."""
    rng = random.Random(f"build-context-{files}-{size}")
    words = [rng.randbytes(6).hex() for _ in range(512)]
    per_file = max(1, size // max(files, 1))
    for index in range(files):
        top = "src" if index % 3 else "static"
        path = folder / top / f"pkg{index % 17}" / f"file{index}.{'c' if top == 'src' else 'css'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        lines, length = [], 0
        while length < per_file:
            line = " ".join(rng.choice(words) for _ in range(8))
            lines.append(line)
            length += len(line) + 1
        path.write_text("\n".join(lines) + "\n")
    (folder / "config.ini").write_text("[app]\nport = 8080\n")
    (folder / "Dockerfile").write_text(DOCKERFILE)
    (folder / ".dockerignore").write_text("*.tmp\n")


class Build(Workload):
    name = "build"
    title = ("registry build vs docker build (classic builder) of one multi-stage "
             "Dockerfile, cold and fully cached (seconds; the distribution column is docker)")
    metrics = MEASURED
    own_runner = True

    def available(self, ctx: Context) -> str | None:
        if os.geteuid() != 0:
            return "building needs root"
        try:
            dockerd = _import_dockerd()
        except ImportError as exc:
            return f"tests/support/dockerd.py cannot be imported: {exc}"
        if dockerd.find_dockerd() is None or dockerd.find_docker_cli() is None:
            return "dockerd or the docker CLI is missing (Debian package docker.io)"
        return None

    def run_all(self, ctx: Context, results: Results, repeat: int) -> None:
        """Both builders, `repeat` rounds, against one registry of ours."""
        dockerd = _import_dockerd()
        daemon = dockerd.DockerDaemon(dockerd.find_dockerd(), dockerd.find_docker_cli())
        server = make_server("ours", ctx.folder)
        context = ctx.folder / "build-context"
        write_context(context, ctx.settings.build_files, ctx.settings.build_mib * 1024 * 1024)
        results.metrics[self.name] = list(self.metrics)
        results.titles[self.name] = self.title
        results.note(self.name, "ours: registry build; the distribution column: docker build "
                                "(classic builder); both FROM a base in one of our servers")
        results.note(self.name, f"context: {ctx.settings.build_files} files, "
                                f"{ctx.settings.build_mib} MiB; steps: 17 in two stages")
        # as installed by pip, with its byte code: a checkout run with PYTHONDONTWRITEBYTECODE
        # would compile every module again on each build
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO_ROOT / "registry")],
                       check=False, capture_output=True)
        with server:
            daemon.start()
            try:
                base = dockerd.build_busybox_image(daemon, f"{server.host}/bench/busybox:v1", 3)
                daemon.docker("push", base)
                daemon.docker("rmi", base)
                for round_index in range(max(repeat, 1)):
                    for side in SIDES:
                        measure = self._ours if side == "ours" else self._docker
                        values = measure(ctx, context, base, daemon, round_index)
                        results.add(self.name, side, values)
                        who = "ours" if side == "ours" else "docker"
                        log(f"  [build] round {round_index + 1} {who:<7}"
                            + ", ".join(f"{k}={v:.2f}" for k, v in values.items()))
            finally:
                daemon.stop()

    def _ours(self, ctx: Context, context: Path, base: str, daemon: Any,
              round_index: int) -> dict[str, float]:
        store = Path(tempfile.mkdtemp(prefix="pocket-store-", dir=ctx.folder))
        env = {**os.environ, "POCKET_RUNTIME_ROOT": str(store),
               "DOCKER_CONFIG": str(store / "docker-config")}
        command = [sys.executable, "-m", "registry", "build", "--build-arg", f"BASE={base}",
                   "-t", f"{base.split('/')[0]}/bench/built:pocket", str(context)]
        try:
            cold, cold_cpu = _timed(command, env)
            cached, cached_cpu = _timed(command, env)
        finally:
            shutil.rmtree(store, ignore_errors=True)
        return {"cold_s": cold, "cached_s": cached, "cold_cpu_s": cold_cpu,
                "cached_cpu_s": cached_cpu}

    def _docker(self, ctx: Context, context: Path, base: str, daemon: Any,
                round_index: int) -> dict[str, float]:
        tag = f"{base.split('/')[0]}/bench/built:docker"
        left = daemon.docker("images", "-aq").stdout.split()
        if left:
            daemon.docker("rmi", "-f", *sorted(set(left)), check=False)
        command = [daemon.docker_cli, "build", "--build-arg", f"BASE={base}", "-t", tag,
                   str(context)]
        env = daemon.env
        daemon.expose(int(base.split("/")[0].rsplit(":", 1)[1]))
        cold, cold_cpu = _timed(command, env, daemon.process.pid)
        cached, cached_cpu = _timed(command, env, daemon.process.pid)
        return {"cold_s": cold, "cached_s": cached, "cold_cpu_s": cold_cpu,
                "cached_cpu_s": cached_cpu}


def _timed(command: list[str], env: dict[str, str], daemon_pid: int | None = None
           ) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the command, its children and the daemon's tree)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    daemon_before = procstat.tree_cpu_seconds(daemon_pid) if daemon_pid else 0.0
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=900, check=False)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} failed:\n{done.stdout[-2000:]}\n"
                           f"{done.stderr[-2000:]}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if daemon_pid:
        cpu += procstat.tree_cpu_seconds(daemon_pid) - daemon_before
    return elapsed, cpu
