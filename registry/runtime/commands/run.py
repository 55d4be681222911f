"""`run`: pull the image if needed, decide the container, start it and wait (or detach)."""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

import registry
from registry.runtime.cgroups import parse_memory
from registry.runtime.commands.common import console, guard, open_store
from registry.runtime.errors import RuntimeFailure, StartFailure
from registry.runtime.images import ImageRecord
from registry.runtime.networks import NAME, NetworkStore, check_name, check_network_name, is_named
from registry.runtime.platform import parse_platform
from registry.runtime.ports import parse_publishes
from registry.runtime.pull import ensure_image
from registry.runtime.seccomp import parse_security_opts
from registry.runtime.spec import build_spec, cli_env, read_env_file
from registry.runtime.state import Container, ContainerStore, PortBinding, new_id, random_name
from registry.runtime.store import Store
from registry.runtime.supervisor import Supervisor, check_privileges
from registry.runtime.volumes import ensure_volume, parse_volume


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


def _network_options(args: argparse.Namespace,
                     store: Store) -> tuple[list[str], list[PortBinding]]:
    """Names that go into other containers' /etc/hosts are checked (Docker's rule), the
    network must exist, and aliases and ports need one."""
    if args.name:
        check_name(args.name)
    aliases = [check_name(a, "network alias", NAME) for a in args.network_alias]
    ports = parse_publishes(args.publish)
    if is_named(args.network):
        NetworkStore(store).load(check_network_name(args.network))
    elif aliases or ports:
        raise RuntimeFailure("--network-alias and -p need a network: `registry network create "
                             "NAME`, then `run --network NAME`")
    return aliases, ports


@guard
def cmd_run(args: argparse.Namespace) -> int:
    check_privileges()
    store = open_store()
    aliases, ports = _network_options(args, store)
    platform = parse_platform(args.platform) if args.platform else None
    record = ensure_image(store, args.image, platform, console())
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
    security = parse_security_opts(args.security_opt)
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
        aliases=aliases,
        ports=ports,
        init=args.init,
        auto_remove=args.rm,
        detached=args.detach,
        interactive=args.interactive,
        memory=memory,
        pids_limit=pids,
        cpus=cpus,
        seccomp=security.seccomp,
        seccomp_profile=security.profile,
        no_new_privileges=security.no_new_privileges,
    )
    containers = ContainerStore(store)
    if not args.name:
        while any(c.name == container.name for c in containers.all()):
            container.name = f"{random_name()}_{cid[:4]}"
    containers.create(container)
    try:
        if args.detach:
            return _run_detached(store, container)
        supervisor = Supervisor(store, container)
        supervisor.forward_signals()  # from here on Ctrl-C goes to the container
    except KeyboardInterrupt:
        if container.auto_remove:
            containers.remove(container.id)
        raise
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


def add_parsers(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "run",
        help="run a command in a new container",
        usage="%(prog)s [OPTIONS] IMAGE [COMMAND] [ARG...]",
        description="Run COMMAND (default: the image's) in a new container of IMAGE. "
        "Ctrl-C is passed on to the container; a second Ctrl-C kills it.",
    )
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
    p.add_argument("--network", "--net", default="host",
                   help="host (default), none, or a network made by `network create`")
    p.add_argument("--network-alias", action="append", default=[],
                   help="another name the network's containers reach this one by")
    p.add_argument("-p", "--publish", action="append", default=[],
                   help="[host_ip:][host_port:]container_port[/tcp]: publish a port on the "
                   "host (on 127.0.0.1 unless host_ip says otherwise)")
    p.add_argument(
        "--init",
        action="store_true",
        help="run a tiny init that forwards signals and reaps zombies",
    )
    p.add_argument("-m", "--memory", help="memory limit, e.g. 64m or 1g")
    p.add_argument("--pids-limit", type=int, help="most processes at once")
    p.add_argument("--cpus", type=float, help="CPU share, e.g. 0.5")
    p.add_argument(
        "--security-opt",
        action="append",
        default=[],
        help="seccomp=unconfined, seccomp=<profile.json> (Docker's format), no-new-privileges",
    )
    p.add_argument("--platform", help="os/arch[/variant] to pull if the image is missing")
    p.add_argument("image", help="[host:port/]name[:tag|@digest]")
    p.add_argument(
        "command", nargs=argparse.REMAINDER, help="command and arguments (default: the image's)"
    )
    p.set_defaults(func=cmd_run)
