"""Registries for the OCI conformance suites (scripts/conformance.sh starts this): each target
is a URL with auth off, on loopback, with its own data. Run with the project's virtualenv:

    .venv/bin/python scripts/conformance_targets.py STATE_FILE TARGET...

Targets:
  * disk: `registry serve` on its defaults (filesystem and SQLite under its --data folder,
    workers auto, keep-alive 5 s);
  * s3: `registry serve` (workers auto) on S3 (SeaweedFS) and PostgreSQL, its own bucket and
    database;
  * replicas: two `registry serve` processes (one worker each) sharing a bucket and a
    database, with server.keep_alive_timeout 0, behind tests/support/tcpproxy.py (round robin
    per connection): each answer closes its connection (saying `Connection: close`), so each
    request is a new connection and consecutive requests go to alternate replicas;
  * distribution: CNCF Distribution (Debian's /usr/bin/docker-registry) on a folder, with
    the configuration bench/ uses (deletes on, in-memory blob descriptor cache), for comparison.
PostgreSQL and SeaweedFS come from the tests' support code (tests/support/), started only when
a target needs them, and go with the targets.

It writes {"target": URL, ...} to STATE_FILE (JSON) once every target answers, and waits. On
SIGUSR1 it writes the proxy's connection counts per replica to STATE_FILE.counts (JSON); on
SIGTERM or SIGINT it stops everything it started and removes STATE_FILE; the servers' logs and
data stay in STATE_FILE's folder for the caller to look at or remove.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from support.postgres import PostgresServer, postgres_bin_dir  # noqa: E402
from support.seaweedfs import SeaweedFS, weed_binary  # noqa: E402
from support.server import free_port  # noqa: E402
from support.tcpproxy import TcpProxy  # noqa: E402

TARGETS = ("disk", "s3", "replicas", "distribution")
DISTRIBUTION = os.environ.get("CONF_DISTRIBUTION", "/usr/bin/docker-registry")
COMMON = {"REGISTRY_AUTH_ENABLED": "false", "REGISTRY_SERVER_LOG_LEVEL": "warning"}


class Targets:
    """What this process started, so that a signal stops all of it."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: list[subprocess.Popen[bytes]] = []
        self.proxies: dict[str, TcpProxy] = {}
        self.pg: PostgresServer | None = None
        self.weed: SeaweedFS | None = None

    def backends(self) -> tuple[PostgresServer, SeaweedFS]:
        """PostgreSQL and SeaweedFS, started on first use."""
        if self.pg is None:
            self.pg = PostgresServer(postgres_bin_dir())
            self.pg.start()
        if self.weed is None:
            binary = weed_binary()
            if binary is None:
                raise RuntimeError("weed is missing: bash scripts/bootstrap.sh test,postgres,s3")
            self.weed = SeaweedFS(binary)
            self.weed.start()
        return self.pg, self.weed

    def launch(self, name: str, command: list[str], env: dict[str, str], url: str) -> str:
        """Start a server; its URL once GET /v2/ answers 200 (auth is off)."""
        log = (self.work / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        self.procs.append(proc)
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}, see {log.name}")
            try:
                if httpx.get(url + "/v2/", timeout=2).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not answer, see {log.name}")
            time.sleep(0.5)

    def registry(self, name: str, settings: dict[str, str], workers: str = "auto") -> str:
        """`registry serve` with `settings` (REGISTRY_* variables) over a clean environment."""
        port = free_port()
        data = self.work / f"data-{name}"
        data.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        command = [
            str(ROOT / ".venv/bin/registry"), "serve", "--data", str(data),
            "--addr", f"127.0.0.1:{port}", "--workers", workers,
        ]  # fmt: skip
        return self.launch(name, command, {**env, **settings}, f"http://127.0.0.1:{port}")

    def distribution(self) -> str:
        port = free_port()
        config = self.work / "distribution.yml"
        config.write_text(
            "version: 0.1\n"
            "log: {level: error, accesslog: {disabled: true}}\n"
            "storage:\n"
            f"  filesystem: {{rootdirectory: {self.work / 'data-distribution'}}}\n"
            "  delete: {enabled: true}\n"
            "  cache: {blobdescriptor: inmemory}\n"
            f"http: {{addr: '127.0.0.1:{port}', secret: conformance-secret}}\n"
        )
        # Distribution reads REGISTRY_* variables as settings too; its AWS SDK panics at start
        # with AWS_CA_BUNDLE set (as bench/servers.py found).
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("REGISTRY_") and k != "AWS_CA_BUNDLE"
        }
        command = [DISTRIBUTION, "serve", str(config)]
        return self.launch("distribution", command, env, f"http://127.0.0.1:{port}")

    def start(self, name: str) -> dict[str, str]:
        if name == "disk":
            return {"disk": self.registry("disk", {"REGISTRY_AUTH_ENABLED": "false"})}
        if name == "distribution":
            return {"distribution": self.distribution()}
        pg, weed = self.backends()
        settings = {
            **COMMON,
            **weed.settings(weed.new_bucket(name)),
            "REGISTRY_DATABASE_URL": pg.create_database(name),
        }
        if name == "s3":
            return {"s3": self.registry("s3", settings)}
        settings["REGISTRY_SERVER_KEEP_ALIVE_TIMEOUT"] = "0"
        members = [self.registry(f"replicas-{i}", settings, workers="1") for i in (1, 2)]
        ports = [int(url.rsplit(":", 1)[1]) for url in members]
        proxy = TcpProxy("127.0.0.1", ports[0], ("127.0.0.1", ports[1]))
        proxy.start()
        self.proxies[name] = proxy
        return {name: proxy.url, f"{name}-members": " ".join(members)}

    def counts(self) -> dict[str, list[int]]:
        return {name: list(proxy.connections) for name, proxy in self.proxies.items()}

    def stop(self) -> None:
        for proxy in self.proxies.values():
            proxy.stop()
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.weed is not None:
            self.weed.stop()
        if self.pg is not None:
            self.pg.stop()


def write_json(path: Path, value: Any) -> None:
    """Whole or not at all: the shell polls for the file."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=1) + "\n")
    partial.replace(path)


def main(argv: list[str]) -> int:
    if len(argv) < 2 or any(name not in TARGETS for name in argv[1:]):
        print(
            f"usage: conformance_targets.py STATE_FILE {{{'|'.join(TARGETS)}}}...", file=sys.stderr
        )
        return 2
    state_file = Path(argv[0]).resolve()
    state_file.parent.mkdir(parents=True, exist_ok=True)
    targets = Targets(state_file.parent)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            raise SystemExit(0)

    def counts(*_: object) -> None:
        write_json(state_file.with_name(state_file.name + ".counts"), targets.counts())

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGUSR1, counts)
    try:
        state: dict[str, str] = {}
        for name in dict.fromkeys(argv[1:]):
            state.update(targets.start(name))
        write_json(state_file, state)
        print(json.dumps(state, indent=1), flush=True)
        while True:
            time.sleep(3600)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        targets.stop()
        state_file.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
