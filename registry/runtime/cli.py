"""The runtime's subcommands: login, pull, images, rmi, run, ps, logs, stop, rm, inspect.

`add_commands(subparsers)` adds them to the `registry` CLI; each sets `func`, taking the
parsed args and returning the exit code. Every `RuntimeFailure` becomes one line on
stderr (`Error: ...`) and its exit code; `run` returns the container's exit code.
"""

from __future__ import annotations

import argparse
import functools
import getpass
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

import registry
from registry.runtime import credentials
from registry.runtime.cgroups import parse_memory
from registry.runtime.client import RegistryClient
from registry.runtime.errors import (
    ContainerConflict,
    ContainerNotFound,
    RuntimeFailure,
    StartFailure,
)
from registry.runtime.images import ImageIndex, ImageRecord
from registry.runtime.platform import parse_platform
from registry.runtime.pull import Puller, ensure_image, parse_reference
from registry.runtime.spec import build_spec, cli_env, read_env_file
from registry.runtime.state import Container, ContainerStore, new_id, random_name
from registry.runtime.store import Store
from registry.runtime.supervisor import LOG_NAME, Supervisor, check_privileges
from registry.runtime.volumes import ensure_volume, parse_volume

Command = Callable[[argparse.Namespace], int]
STOP_TIMEOUT = 10


def _guard(func: Command) -> Command:
    @functools.wraps(func)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except RuntimeFailure as exc:
            print(f"Error: {exc.message}", file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt:
            return 130
        except PermissionError as exc:
            print(f"Error: permission denied: {exc.filename or exc}", file=sys.stderr)
            return 1
        except OSError as exc:
            print(
                f"Error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr
            )
            return 1

    return wrapper


def _store() -> Store:
    return Store()


def _console() -> Console:
    return Console(stderr=True, highlight=False)


# --- login / pull / images / rmi ---------------------------------------------------------


@_guard
def cmd_login(args: argparse.Namespace) -> int:
    username = args.username or input("Username: ")
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = args.password if args.password is not None else getpass.getpass()
    creds = credentials.Credentials(username, password)
    with RegistryClient(args.server, creds) as client:
        client.ping()
    credentials.store(args.server, creds)
    print("Login Succeeded")
    return 0


@_guard
def cmd_pull(args: argparse.Namespace) -> int:
    platform = parse_platform(args.platform) if args.platform else None
    record = Puller(_store(), _console()).pull(args.image, platform)
    ref = parse_reference(args.image)
    print(f"Digest: {record.manifest_digest}")
    print(str(ref))
    return 0


def _ago(timestamp: float) -> str:
    seconds = max(0, int(time.time() - timestamp))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'s' if n > 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.3g}{unit}" if unit != "B" else f"{n}B"
        n /= 1000  # type: ignore[assignment]
    return f"{n}B"


def _table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@_guard
def cmd_images(args: argparse.Namespace) -> int:
    rows = [["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"]]
    for record in ImageIndex(_store()).load().values():
        tags = [r for r in record.refs if "@" not in r] or [f"{record.repository}:<none>"]
        for tag_ref in tags:
            repo, _, tag = tag_ref.rpartition(":")
            short = record.id.split(":")[-1][:12]
            if args.quiet:
                print(short)
                continue
            rows.append([repo, tag, short, record.created[:19] or "-", _size(record.size)])
    if not args.quiet:
        _table(rows)
    return 0


def _canonical(ref: str) -> str:
    try:
        return str(parse_reference(ref))
    except RuntimeFailure:
        return ref


@_guard
def cmd_rmi(args: argparse.Namespace) -> int:
    store = _store()
    images = ImageIndex(store)
    containers = ContainerStore(store)
    status = 0
    for ref in args.images:
        key = ref if images.find(ref) and not images.find(_canonical(ref)) else _canonical(ref)
        record = images.find(key)
        if record is None:
            print(f"Error: no such image: {ref}", file=sys.stderr)
            status = 1
            continue
        users = [c for c in containers.all() if c.image_id == record.id]
        last_tag = len([r for r in record.refs if "@" not in r]) <= 1 or key == record.id
        if users and last_tag and not args.force:
            print(
                f"Error: unable to remove {ref}: container {users[0].id[:12]} is using its "
                "image (use -f, or remove the container)",
                file=sys.stderr,
            )
            status = 1
            continue
        record, removed = images.untag(key)
        if key != record.id:
            print(f"Untagged: {key}")
        if removed:
            print(f"Deleted: {record.id}")
    collect_garbage(store)
    return status


def collect_garbage(store: Store) -> None:
    """Remove blobs and layers no image or container needs any more."""
    with store.locked():
        records = ImageIndex(store).load().values()
        containers = ContainerStore(store).all()
        layers = {d for r in records for d in r.diff_ids} | {
            d for c in containers for d in c.diff_ids
        }
        blobs = {b for r in records for b in (*r.layers, r.id, r.manifest_digest)}
        blobs |= {ref.rpartition("@")[2] for r in records for ref in r.refs if "@" in ref}
        for diff_id in store.layer_ids():
            if diff_id not in layers:
                store.remove_layer(diff_id)
        for digest in store.blob_digests():
            if digest not in blobs:
                store.remove_blob(digest)


# --- run ---------------------------------------------------------------------------------


def _image_config(store: Store, record: ImageRecord) -> dict[str, Any]:
    doc = json.loads(store.read_blob(record.id))
    config = doc.get("config") or {}
    return config if isinstance(config, dict) else {}


def _user_env(args: argparse.Namespace) -> list[str]:
    env: list[str] = []
    for path in args.env_file:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise RuntimeFailure(f"cannot read env file {path}: {exc.strerror}") from None
        env += read_env_file(text, os.environ)
    return env + cli_env(args.env, os.environ)


def _limits(args: argparse.Namespace) -> tuple[int | None, int | None, float | None]:
    try:
        memory = parse_memory(args.memory) if args.memory else None
    except ValueError as exc:
        raise RuntimeFailure(f"invalid --memory: {exc}") from None
    if args.cpus is not None and args.cpus <= 0:
        raise RuntimeFailure("--cpus must be positive")
    return memory, args.pids_limit, args.cpus


@_guard
def cmd_run(args: argparse.Namespace) -> int:
    check_privileges()
    store = _store()
    platform = parse_platform(args.platform) if args.platform else None
    record = ensure_image(store, args.image, platform, _console())
    cid = new_id()
    hostname = args.hostname or cid[:12]
    spec = build_spec(
        _image_config(store, record),
        args.command,
        entrypoint=args.entrypoint,
        user_env=_user_env(args),
        user=args.user,
        workdir=args.workdir,
        hostname=hostname,
    )
    mounts = [parse_volume(v, store) for v in args.volume]
    for m in mounts:
        if m.volume:
            ensure_volume(store, m.volume)
    memory, pids, cpus = _limits(args)
    if args.network not in ("host", "none"):
        raise RuntimeFailure(f"network {args.network!r} is not supported (host or none)")
    container = Container(
        id=cid,
        name=args.name or random_name(),
        image=args.image,
        image_id=record.id,
        diff_ids=record.diff_ids,
        argv=spec.argv,
        env=spec.env,
        user=spec.user,
        workdir=spec.workdir,
        hostname=hostname,
        mounts=mounts,
        network=args.network,
        init=args.init,
        auto_remove=args.rm,
        detached=args.detach,
        interactive=args.interactive,
        memory=memory,
        pids_limit=pids,
        cpus=cpus,
    )
    containers = ContainerStore(store)
    if not args.name:
        while any(c.name == container.name for c in containers.all()):
            container.name = f"{random_name()}_{cid[:4]}"
    containers.create(container)
    if args.detach:
        return _run_detached(store, container)
    supervisor = Supervisor(store, container)
    supervisor.forward_signals()
    supervisor.start()
    return supervisor.wait()


def _run_detached(store: Store, container: Container) -> int:
    read_fd, write_fd = os.pipe()
    package_root = str(Path(registry.__file__).resolve().parent.parent)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
    }
    log = open(ContainerStore(store).dir(container.id) / "supervisor.log", "ab")  # noqa: SIM115
    with log:
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "registry.runtime.supervisor",
                str(store.root),
                container.id,
                str(write_fd),
            ],
            pass_fds=(write_fd,),
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
        )
    os.close(write_fd)
    ready, _, _ = select.select([read_fd], [], [], 120)
    line = os.read(read_fd, 65536).decode().strip() if ready else ""
    os.close(read_fd)
    if line == "ok":
        print(container.id)
        return 0
    code, _, message = line.partition(" ")
    if not line:
        raise StartFailure("the container's supervisor did not start in time", 125)
    raise StartFailure(message, int(code) if code.isdigit() else 125)


# --- ps / logs / stop / rm / inspect -----------------------------------------------------


def _status(c: Container) -> str:
    if c.running:
        return f"Up {_ago(c.started_at)}"
    if c.status == "created" or c.exit_code is None:
        return "Created"
    return f"Exited ({c.exit_code}) {_ago(c.finished_at)} ago"


@_guard
def cmd_ps(args: argparse.Namespace) -> int:
    everything = ContainerStore(_store()).all()
    shown = everything if args.all else [c for c in everything if c.running]
    if args.quiet:
        for c in shown:
            print(c.id[:12])
        return 0
    rows = [["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES"]]
    for c in shown:
        command = " ".join(c.argv)
        command = command if len(command) <= 20 else command[:19] + "…"
        rows.append(
            [c.id[:12], c.image, f'"{command}"', f"{_ago(c.created)} ago", _status(c), c.name]
        )
    _table(rows)
    return 0


def _emit_logs(path: Path, offset: int) -> int:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return offset
    end = data.rfind(b"\n") + 1
    for line in data[:end].splitlines():
        entry = json.loads(line)
        out = sys.stdout if entry.get("stream") == "stdout" else sys.stderr
        out.flush()
        out.buffer.write(entry["log"].encode("utf-8", "surrogateescape"))
        out.buffer.flush()
    return offset + end


@_guard
def cmd_logs(args: argparse.Namespace) -> int:
    containers = ContainerStore(_store())
    c = containers.find(args.container)
    path = containers.dir(c.id) / LOG_NAME
    offset = _emit_logs(path, 0)
    while args.follow:
        try:
            running = containers.load(c.id).running
        except ContainerNotFound:
            running = False
        offset = _emit_logs(path, offset)
        if not running:
            _emit_logs(path, offset)
            break
        time.sleep(0.1)
    return 0


def _wait_exited(containers: ContainerStore, cid: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not containers.load(cid).running:
                return True
        except ContainerNotFound:
            return True
        time.sleep(0.05)
    return False


def stop_container(containers: ContainerStore, c: Container, timeout: float) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds; then wait for the record."""
    if not c.running:
        return
    try:
        os.kill(c.pid, signal.SIGTERM)
        if not _wait_exited(containers, c.id, timeout):
            os.kill(c.pid, signal.SIGKILL)
            _wait_exited(containers, c.id, 10)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # let the supervisor record the exit
        try:
            current = containers.load(c.id)
        except ContainerNotFound:
            return
        if current.status == "exited" or process_alive(current.supervisor_pid) is False:
            return
        time.sleep(0.05)


def process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[-1].split()[0] != "Z"


@_guard
def cmd_stop(args: argparse.Namespace) -> int:
    containers = ContainerStore(_store())
    status = 0
    for ref in args.containers:
        try:
            c = containers.find(ref)
        except RuntimeFailure as exc:
            print(f"Error: {exc.message}", file=sys.stderr)
            status = 1
            continue
        stop_container(containers, c, args.time)
        print(ref)
    return status


@_guard
def cmd_rm(args: argparse.Namespace) -> int:
    store = _store()
    containers = ContainerStore(store)
    status = 0
    for ref in args.containers:
        try:
            c = containers.find(ref)
            if c.running:
                if not args.force:
                    raise ContainerConflict(
                        f"cannot remove container {ref}: container is running: stop the "
                        "container before removing or force remove (-f)"
                    )
                stop_container(containers, c, 0)
            containers.remove(c.id)
            print(ref)
        except RuntimeFailure as exc:
            print(f"Error: {exc.message}", file=sys.stderr)
            status = 1
    return status


def _iso(ts: float) -> str:
    if not ts:
        return "0001-01-01T00:00:00Z"
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e9):09d}Z"


def inspect_container(c: Container) -> dict[str, Any]:
    running = c.running
    return {
        "Id": c.id,
        "Name": f"/{c.name}",
        "Created": _iso(c.created),
        "Path": c.argv[0],
        "Args": c.argv[1:],
        "State": {
            "Status": "running" if running else ("created" if c.status == "created" else "exited"),
            "Running": running,
            "Pid": c.pid if running else 0,
            "ExitCode": c.exit_code or 0,
            "OOMKilled": c.oom_killed,
            "Error": c.error,
            "StartedAt": _iso(c.started_at),
            "FinishedAt": _iso(c.finished_at),
        },
        "Image": c.image_id,
        "Config": {
            "Hostname": c.hostname,
            "User": c.user,
            "Env": c.env,
            "Cmd": c.argv,
            "Image": c.image,
            "WorkingDir": c.workdir,
        },
        "HostConfig": {
            "NetworkMode": c.network,
            "AutoRemove": c.auto_remove,
            "Init": c.init,
            "Memory": c.memory or 0,
            "PidsLimit": c.pids_limit,
            "NanoCpus": int((c.cpus or 0) * 1e9),
        },
        "Mounts": [
            {
                "Type": "volume" if m.volume else "bind",
                "Name": m.volume or None,
                "Source": m.source,
                "Destination": m.destination,
                "RW": not m.readonly,
            }
            for m in c.mounts
        ],
    }


def inspect_image(store: Store, record: ImageRecord) -> dict[str, Any]:
    doc = json.loads(store.read_blob(record.id))
    return {
        "Id": record.id,
        "RepoTags": [r for r in record.refs if "@" not in r],
        "RepoDigests": [r for r in record.refs if "@" in r],
        "Created": record.created,
        "Size": record.size,
        "Architecture": doc.get("architecture"),
        "Os": doc.get("os"),
        "Config": doc.get("config") or {},
        "RootFS": {"Type": "layers", "Layers": record.diff_ids},
    }


@_guard
def cmd_inspect(args: argparse.Namespace) -> int:
    store = _store()
    containers = ContainerStore(store)
    images = ImageIndex(store)
    out: list[dict[str, Any]] = []
    status = 0
    for ref in args.names:
        try:
            out.append(inspect_container(containers.find(ref)))
            continue
        except ContainerNotFound:
            pass
        record = images.find(_canonical(ref)) or images.find(ref)
        if record is None:
            print(f"Error: no such object: {ref}", file=sys.stderr)
            status = 1
            continue
        out.append(inspect_image(store, record))
    print(json.dumps(out, indent=4))
    return status


# --- wiring ------------------------------------------------------------------------------


def add_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("login", help="log in to a registry")
    p.add_argument("server", help="registry host, e.g. 127.0.0.1:5000")
    p.add_argument("-u", "--username", help="user name")
    p.add_argument("-p", "--password", help="password or token (prefer --password-stdin)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.set_defaults(func=cmd_login)

    p = subparsers.add_parser("pull", help="pull an image from a registry")
    p.add_argument("image", help="host:port/name[:tag|@digest]")
    p.add_argument(
        "--platform", help="os/arch[/variant] to pick from an index (default: this host)"
    )
    p.set_defaults(func=cmd_pull)

    p = subparsers.add_parser("images", help="list pulled images")
    p.add_argument("-q", "--quiet", action="store_true", help="print only IDs")
    p.set_defaults(func=cmd_images)

    p = subparsers.add_parser("rmi", help="remove images")
    p.add_argument("images", nargs="+", help="image references or IDs")
    p.add_argument(
        "-f", "--force", action="store_true", help="remove even what is in use or running"
    )
    p.set_defaults(func=cmd_rmi)

    p = subparsers.add_parser("run", help="run a command in a new container")
    p.add_argument(
        "-d", "--detach", action="store_true", help="run in the background; output goes to `logs`"
    )
    p.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    p.add_argument("--rm", action="store_true", help="remove the container when it exits")
    p.add_argument("--name", help="container name (must be unused)")
    p.add_argument("--hostname", help="host name inside the container")
    p.add_argument(
        "-e", "--env", action="append", default=[], help="NAME=value, or NAME to pass it through"
    )
    p.add_argument("--env-file", action="append", default=[], help="file of NAME=value lines")
    p.add_argument("--entrypoint", help="replace the image's entrypoint (and drop its Cmd)")
    p.add_argument("-w", "--workdir", help="working directory (created if missing)")
    p.add_argument("-u", "--user", help="uid, uid:gid or a user name of the image")
    p.add_argument(
        "-v",
        "--volume",
        action="append",
        default=[],
        help="host-path-or-volume:container-path[:ro]",
    )
    p.add_argument("--network", "--net", default="host", help="host (default) or none")
    p.add_argument(
        "--init",
        action="store_true",
        help="run a tiny init that forwards signals and reaps zombies",
    )
    p.add_argument("-m", "--memory", help="memory limit, e.g. 64m or 1g")
    p.add_argument("--pids-limit", type=int, help="most processes at once")
    p.add_argument("--cpus", type=float, help="CPU share, e.g. 0.5")
    p.add_argument("--platform", help="os/arch[/variant] to pull if the image is missing")
    p.add_argument("image", help="host:port/name[:tag|@digest]")
    p.add_argument(
        "command", nargs=argparse.REMAINDER, help="command and arguments (default: the image's)"
    )
    p.set_defaults(func=cmd_run)

    p = subparsers.add_parser("ps", help="list containers")
    p.add_argument("-a", "--all", action="store_true", help="include stopped containers")
    p.add_argument("-q", "--quiet", action="store_true", help="print only IDs")
    p.set_defaults(func=cmd_ps)

    p = subparsers.add_parser("logs", help="show a container's output")
    p.add_argument("container", help="name or ID")
    p.add_argument("-f", "--follow", action="store_true", help="follow until the container exits")
    p.set_defaults(func=cmd_logs)

    p = subparsers.add_parser("stop", help="stop running containers")
    p.add_argument("containers", nargs="+", help="names or IDs")
    p.add_argument(
        "-t", "--time", type=float, default=STOP_TIMEOUT, help="seconds between SIGTERM and SIGKILL"
    )
    p.set_defaults(func=cmd_stop)

    p = subparsers.add_parser("rm", help="remove containers")
    p.add_argument("containers", nargs="+", help="names or IDs")
    p.add_argument(
        "-f", "--force", action="store_true", help="remove even what is in use or running"
    )
    p.set_defaults(func=cmd_rm)

    p = subparsers.add_parser("inspect", help="show containers or images as JSON")
    p.add_argument("names", nargs="+", help="container or image names or IDs")
    p.set_defaults(func=cmd_inspect)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (`python -m registry.runtime.cli`), handy before wiring."""
    parser = argparse.ArgumentParser(prog="registry")
    add_commands(parser.add_subparsers(dest="command_name", required=True))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
