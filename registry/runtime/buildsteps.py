"""The build steps that change files: RUN in a container, COPY/ADD and WORKDIR in an overlay.

Each runs over an overlay of the stage's layers with an upper directory of its own, which
then becomes the step's layer (`layerdiff.commit_upper`); a step that changed nothing
gives no layer.

RUN is a container of the runtime (`Supervisor`), with the stage's Env (and build
arguments), WorkingDir, User and the host's network. What the runtime itself puts in a
root filesystem to run a container (`/proc`, `/sys`, `/dev`, `/etc/hosts`,
`/etc/hostname`, `/etc/resolv.conf` when missing) is made first in a layer of its own
above the image, as Docker's init layer, so that it never lands in the step's layer.
The stage's VOLUMEs are throwaway volumes (seeded from the image, as Docker's anonymous
ones): what the command writes there is not kept, but a mount point it had to make is.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from registry.oci import mediatypes as mt
from registry.runtime.buildconfig import ImageState, LayerRef
from registry.runtime.buildcontext import CopyOptions, SourceRoot
from registry.runtime.buildcopy import copy_into
from registry.runtime.buildmount import Overlay, in_overlays
from registry.runtime.errors import BuildFailure, Interrupted, StartFailure
from registry.runtime.layerdiff import commit_upper, strip_bookkeeping
from registry.runtime.rootfs import makedirs_in, secure_join
from registry.runtime.spec import build_env
from registry.runtime.state import Container, ContainerStore, Mount, new_id
from registry.runtime.store import Store, remove_tree
from registry.runtime.supervisor import Supervisor

MOUNT_POINTS = ("/proc", "/sys", "/dev")
ETC_FILES = ("hostname", "hosts", "resolv.conf")


@dataclass(frozen=True)
class RunStep:
    argv: list[str]
    env: list[str]  # the stage's Env plus the build arguments it sees
    user: str
    workdir: str


def lowers(store: Store, state: ImageState) -> list[Path]:
    return [store.layer_dir(layer.diff_id) / "fs" for layer in state.layers]


def _layer(store: Store, upper: Path) -> LayerRef | None:
    result = commit_upper(store, upper)
    if result is None:
        return None
    return LayerRef(result.digest, result.diff_id, result.size, mt.OCI_LAYER_GZIP)


def prepare_mount_points(rootfs: str) -> None:
    """What the sandbox would create to run a container here, created beforehand."""
    for path in MOUNT_POINTS:
        target = secure_join(rootfs, path)
        if not os.path.lexists(target):
            makedirs_in(rootfs, path)
    if os.path.isdir(secure_join(rootfs, "/etc")):
        for name in ETC_FILES:
            target = secure_join(rootfs, f"/etc/{name}")
            if not os.path.lexists(target):
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                os.close(os.open(target, flags, 0o644))


def run_step(store: Store, state: ImageState, step: RunStep,
             say: Callable[[str], None]) -> LayerRef | None:
    scratch = store.new_temp_dir("build-run-")
    containers = ContainerStore(store)
    cid = new_id()
    try:
        init = Overlay(lowers(store, state), scratch / "init")
        in_overlays([init], lambda: prepare_mount_points(str(init.rootfs)))
        strip_bookkeeping(init.upper)
        volumes = []
        for number, path in enumerate(sorted(state.run.get("Volumes") or {})):
            source = scratch / f"volume-{number}"
            source.mkdir(mode=0o755)
            volumes.append(Mount(str(source), path, volume=f"build-{number}"))
        container = Container(
            id=cid, name=f"build-{cid[:12]}", image=state.image_id, image_id=state.image_id,
            diff_ids=[layer.diff_id for layer in state.layers], argv=step.argv,
            env=build_env(step.env, [], cid[:12]), user=step.user, workdir=step.workdir,
            hostname=cid[:12], mounts=volumes, network="host",
            extra_lowers=[str(init.upper)],
        )
        containers.create(container)
        say(f" ---> Running in {cid[:12]}")
        code, interrupted = _run_container(store, container)
        if interrupted:
            raise Interrupted("interrupted")
        if code != 0:
            raise BuildFailure(f"the command '{' '.join(step.argv)}' returned a non-zero "
                               f"code: {code}", 1)
        layer = _layer(store, containers.dir(cid) / "upper")
        say(f"Removing intermediate container {cid[:12]}")
        return layer
    finally:
        with contextlib.suppress(OSError):
            containers.remove(cid)
        remove_tree(scratch)


STOPPING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _run_container(store: Store, container: Container) -> tuple[int, bool]:
    """Run it in the foreground (its output on ours); its exit code, and whether the build
    was interrupted. Ctrl-C (or SIGTERM, SIGHUP) stops the build as it stops `docker
    build`: the container is killed at once (its shell, pid 1 of its namespace, would
    ignore a forwarded SIGINT)."""
    saved = {sig: signal.getsignal(sig) for sig in STOPPING_SIGNALS}
    stopped: list[int] = []
    own_pid = os.getpid()

    def stop(signum: int, _frame: object) -> None:
        if os.getpid() != own_pid:
            return  # a just-forked child, before it resets its handlers
        stopped.append(signum)
        if container.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(container.pid, signal.SIGKILL)

    sys.stdout.flush()
    sys.stderr.flush()
    supervisor = Supervisor(store, container)
    try:
        for sig in STOPPING_SIGNALS:
            signal.signal(sig, stop)
        try:
            supervisor.start()
        except StartFailure as exc:
            raise BuildFailure(f"the command '{' '.join(container.argv)}' could not start: "
                               f"{exc.message}", 1) from None
        if stopped:
            stop(stopped[0], None)
        code = supervisor.wait()
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    return code, bool(stopped)


@dataclass(frozen=True)
class CopyStep:
    sources: list[str]
    dest: str  # absolute in the stage
    options: CopyOptions
    context: SourceRoot | None  # None: from `source` below
    source: ImageState | None = None  # a stage or an image, for --from


def copy_step(store: Store, state: ImageState, step: CopyStep) -> LayerRef | None:
    scratch = store.new_temp_dir("build-copy-")
    try:
        target = Overlay(lowers(store, state), scratch / "stage")
        overlays = [target]
        if step.source is not None:
            overlays.append(Overlay(lowers(store, step.source), scratch / "from", readonly=True))
        (scratch / "archives").mkdir()

        def work() -> None:
            root = step.context
            if root is None:
                root = SourceRoot(str(overlays[1].rootfs), what="source image")
            resolved = root.resolve(step.sources)
            copy_into(str(target.rootfs), root, resolved, step.dest, step.options,
                      scratch / "archives")

        in_overlays(overlays, work)
        return _layer(store, target.upper)
    finally:
        remove_tree(scratch)


def workdir_step(store: Store, state: ImageState, path: str) -> LayerRef | None:
    """WORKDIR makes its folder (0755, root's) when the stage has none there."""
    scratch = store.new_temp_dir("build-workdir-")
    try:
        target = Overlay(lowers(store, state), scratch / "stage")
        in_overlays([target], lambda: _make_workdir(str(target.rootfs), path))
        return _layer(store, target.upper)
    finally:
        remove_tree(scratch)


def _make_workdir(rootfs: str, path: str) -> None:
    host = secure_join(rootfs, path)
    if os.path.isdir(host):
        return
    if os.path.lexists(host):
        raise BuildFailure(f"cannot make the working directory {path}: a file is in the way")
    missing = []
    while not os.path.lexists(host):
        missing.append(host)
        host = os.path.dirname(host)
    for folder in reversed(missing):
        os.mkdir(folder)
        os.chmod(folder, 0o755)
