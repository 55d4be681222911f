"""The two registries under test, started with equivalent settings on loopback.

Both get filesystem storage in a fresh temporary folder, or in S3 mode a fresh bucket of the
same SeaweedFS (ours: `storage.driver: s3`; Distribution: its `s3` driver with
`regionendpoint`), no auth, deletes enabled, logs at error level without access logs, and the
defaults a user would run otherwise: ours with its default worker count (`registry serve`),
Distribution with Debian's packaged config minus auth (it keeps `cache.blobdescriptor:
inmemory`, as that file has it). On S3 both redirect blob GETs to presigned URLs, or both
stream them, as the workload asks.

With `auth=True` both run Docker's token authentication instead, each with its own token
server: ours with `auth.enabled` and one admin user made by its CLI (its `/auth/token`
issues the tokens), Distribution with `auth: token:` trusting `bench.tokenserver`. Both sign
ES256. `bearer(scopes)` fetches a token the way a client would, before anything is measured.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from bench import rawhttp
from bench.seaweed import ACCESS_KEY, SECRET_KEY, SeaweedFS
from bench.tokenserver import TokenServer
from registry.config import environment_name

REPO_ROOT = Path(__file__).resolve().parent.parent
DISTRIBUTION_BINARY = "/usr/bin/docker-registry"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
SERVICE = "bench-registry"
USER = ("bench", "bench-password-0123")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class S3Target:
    """S3 storage for a server: a new bucket of `seaweed` each time; GETs redirected or not."""

    seaweed: SeaweedFS
    redirect: bool = False


class ServerError(RuntimeError):
    """A server that would not start, or died."""


class Server:
    """One registry process: `start()`, use `url`/`host`/`pid`, then `stop()`."""

    name = "server"
    label = "server"

    def __init__(self, workdir: Path, auth: bool = False) -> None:
        self.workdir = workdir
        self.auth = auth
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._log: object = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise ServerError(f"{self.name} is not running")
        return self.process.pid

    @property
    def log_path(self) -> Path:
        return self.workdir / "server.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def bearer(self, scopes: list[str]) -> dict[str, str]:
        """An Authorization header carrying a token for `scopes`; none without auth."""
        if not self.auth:
            return {}
        return {"Authorization": f"Bearer {self.fetch_token(scopes)}"}

    def fetch_token(self, scopes: list[str]) -> str:
        raise NotImplementedError

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for _attempt in range(3):
            self.port = free_port()
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    self.command(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.environment(),
                    cwd=REPO_ROOT,
                    start_new_session=True,
                )
            if self._wait_ready():
                return
            self._terminate()
        raise ServerError(f"{self.name} did not start:\n{self.log_tail()}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False  # e.g. lost the port to someone else: try another one
            with (
                contextlib.suppress(OSError, rawhttp.HTTPError),
                rawhttp.Connection(self.host, timeout=2) as conn,
            ):
                if conn.request("GET", "/v2/").status in (200, 401):  # 401: auth on
                    return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        self._terminate()
        shutil.rmtree(self.workdir, ignore_errors=True)
        s3: S3Target | None = getattr(self, "s3", None)
        if s3 is not None:
            s3.seaweed.drop_bucket(getattr(self, "bucket", ""))

    def _terminate(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            # The whole session: uvicorn's workers too.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.process = None

    def check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            raise ServerError(f"{self.name} died:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return "(no log)"

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class OursServer(Server):
    name = "ours"
    label = "pocket-registry"

    def __init__(
        self,
        workdir: Path,
        workers: int | None = None,
        settings: dict[str, str] | None = None,
        s3: S3Target | None = None,
        auth: bool = False,
    ) -> None:
        super().__init__(workdir, auth)
        self.workers = workers
        self.settings = settings or {}  # e.g. {"storage.fsync": "false"}, from --setting
        self.s3 = s3
        self.bucket = s3.seaweed.new_bucket("ours") if s3 is not None else ""

    def start(self) -> None:
        if self.auth:  # the admin who asks for tokens, made as an operator would
            subprocess.run(
                [sys.executable, "-m", "registry", "user", "add", USER[0], "--admin",
                 "--password-stdin", "--data", str(self.workdir / "data")],
                input=USER[1], capture_output=True, text=True, env=self.environment(),
                cwd=REPO_ROOT, check=True, timeout=120,
            )  # fmt: skip
        super().start()

    def fetch_token(self, scopes: list[str]) -> str:
        return _token_from(self.host, f"/auth/token?{_token_query(scopes)}")

    def command(self) -> list[str]:
        command = [
            sys.executable, "-m", "registry", "serve",
            "--addr", self.host,
            "--data", str(self.workdir / "data"),
        ]  # fmt: skip
        if self.workers:
            command += ["--workers", str(self.workers)]
        return command

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        env["REGISTRY_SERVER_LOG_LEVEL"] = "error"
        env["REGISTRY_SERVER_ACCESS_LOG"] = "false"
        env["PYTHONPATH"] = str(REPO_ROOT)
        if self.s3 is not None:
            env.update(self.s3.seaweed.settings(self.bucket))
            env["REGISTRY_STORAGE_S3_REDIRECT"] = str(self.s3.redirect).lower()
        if self.auth:
            env["REGISTRY_AUTH_ENABLED"] = "true"
            env["REGISTRY_AUTH_SERVICE"] = SERVICE
        for key, value in self.settings.items():
            env[environment_name(key)] = value
        return env


class DistributionServer(Server):
    name = "distribution"
    label = "CNCF Distribution"

    def __init__(
        self,
        workdir: Path,
        binary: str = DISTRIBUTION_BINARY,
        s3: S3Target | None = None,
        auth: bool = False,
    ) -> None:
        super().__init__(workdir, auth)
        self.binary = binary
        self.s3 = s3
        self.bucket = s3.seaweed.new_bucket("distribution") if s3 is not None else ""
        self.tokens: TokenServer | None = None

    def command(self) -> list[str]:
        config = self.workdir / "config.yml"
        if self.s3 is None:
            storage = f"  filesystem: {{rootdirectory: {self.workdir / 'data'}}}\n"
        else:
            storage = (
                f"  s3: {{region: us-east-1, regionendpoint: '{self.s3.seaweed.endpoint}', "
                f"bucket: {self.bucket}, accesskey: {ACCESS_KEY}, secretkey: {SECRET_KEY}, "
                "secure: false, v4auth: true}\n"
                f"  redirect: {{disable: {str(not self.s3.redirect).lower()}}}\n"
            )
        auth = ""
        if self.auth:
            if self.tokens is None:
                self.tokens = TokenServer(self.workdir / "tokens", SERVICE, USER)
            auth = self.tokens.distribution_config()
        config.write_text(
            "version: 0.1\n"
            "log: {level: error, accesslog: {disabled: true}}\n"
            "storage:\n"
            f"{storage}"
            "  delete: {enabled: true}\n"
            "  cache: {blobdescriptor: inmemory}\n"
            f"http: {{addr: '{self.host}', secret: bench-secret}}\n" + auth
        )
        return [self.binary, "serve", str(config)]

    def fetch_token(self, scopes: list[str]) -> str:
        assert self.tokens is not None
        realm = self.tokens.realm.removeprefix("http://")
        host, _, path = realm.partition("/")
        return _token_from(host, f"/{path}?{_token_query(scopes)}")

    def stop(self) -> None:
        super().stop()
        if self.tokens is not None:
            self.tokens.stop()
            self.tokens = None

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        # With AWS_CA_BUNDLE set (this machine sets it), Distribution's AWS SDK panics at start.
        env.pop("AWS_CA_BUNDLE", None)
        return env


def _token_query(scopes: list[str]) -> str:
    return urlencode([("service", SERVICE), *(("scope", scope) for scope in scopes)])


def _token_from(host: str, path: str) -> str:
    """GET a token endpoint with the bench user's Basic credentials."""
    basic = base64.b64encode(":".join(USER).encode()).decode()
    with rawhttp.Connection(host) as conn:
        answer = rawhttp.expect(
            conn.request("GET", path, {"Authorization": f"Basic {basic}"}), 200, what="token"
        )
    return str(json.loads(answer.body)["token"])


def distribution_version(binary: str = DISTRIBUTION_BINARY) -> str:
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        return "absent"
    return out.stdout.strip() or out.stderr.strip()


def make_server(
    side: str,
    base: Path,
    workers: int | None = None,
    settings: dict[str, str] | None = None,
    s3: S3Target | None = None,
    auth: bool = False,
) -> Server:
    workdir = Path(tempfile.mkdtemp(prefix=f"{side}-", dir=base))
    if side == "ours":
        return OursServer(workdir, workers=workers, settings=settings, s3=s3, auth=auth)
    if side == "distribution":
        return DistributionServer(workdir, s3=s3, auth=auth)
    raise ValueError(f"unknown server {side!r}")
