"""Container commands: ps, logs, stop, rm, inspect."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from registry.runtime import endpoints
from registry.runtime.commands.common import ago, canonical, guard, open_store, print_table
from registry.runtime.errors import ContainerConflict, ContainerNotFound, RuntimeFailure
from registry.runtime.images import ImageIndex, ImageRecord
from registry.runtime.ports import port_map
from registry.runtime.state import Container, ContainerStore
from registry.runtime.store import Store
from registry.runtime.supervisor import LOG_NAME

STOP_TIMEOUT = 10


def _status(c: Container) -> str:
    if c.running:
        return f"Up {ago(c.started_at)}"
    if c.status == "created" or c.exit_code is None:
        return "Created"
    return f"Exited ({c.exit_code}) {ago(c.finished_at)} ago"


@guard
def cmd_ps(args: argparse.Namespace) -> int:
    store = open_store()
    endpoints.sweep(store)  # what a killed supervisor left on a network
    everything = ContainerStore(store).all()
    shown = everything if args.all else [c for c in everything if c.running]
    if args.quiet:
        for c in shown:
            print(c.id[:12])
        return 0
    rows = [["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NETWORKS",
             "NAMES"]]
    for c in shown:
        command = " ".join(c.argv)
        command = command if len(command) <= 20 else command[:19] + "…"
        rows.append(
            [c.id[:12], c.image, f'"{command}"', f"{ago(c.created)} ago", _status(c),
             ", ".join(endpoints.published(c)), c.network, c.name]
        )
    print_table(rows)
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


@guard
def cmd_logs(args: argparse.Namespace) -> int:
    containers = ContainerStore(open_store())
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


@guard
def cmd_stop(args: argparse.Namespace) -> int:
    containers = ContainerStore(open_store())
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


@guard
def cmd_rm(args: argparse.Namespace) -> int:
    store = open_store()
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
    endpoints.sweep(store, deep=True)  # veths and /etc/hosts lines a crash left
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
            "PortBindings": port_map(c.ports),
            "AutoRemove": c.auto_remove,
            "Init": c.init,
            "Memory": c.memory or 0,
            "PidsLimit": c.pids_limit,
            "NanoCpus": int((c.cpus or 0) * 1e9),
            "SecurityOpt": [
                *(["seccomp=unconfined"] if c.seccomp == "unconfined" else []),
                *(["seccomp=<custom profile>"] if c.seccomp == "custom" else []),
                *(["no-new-privileges"] if c.no_new_privileges else []),
            ] or None,
        },
        "NetworkSettings": endpoints.network_settings(c),
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


@guard
def cmd_inspect(args: argparse.Namespace) -> int:
    store = open_store()
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
        record = images.find(canonical(ref)) or images.find(ref)
        if record is None:
            print(f"Error: no such object: {ref}", file=sys.stderr)
            status = 1
            continue
        out.append(inspect_image(store, record))
    print(json.dumps(out, indent=4))
    return status


def add_parsers(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
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
