"""A real registry server for tests: `python -m registry serve` on a free loopback port."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RegistryServer:
    """`python -m registry serve` in a child process, with its own data folder."""

    def __init__(
        self,
        data_dir: Path,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        workers: int | None = 1,
        ca: Path | None = None,
    ) -> None:
        """`workers`: one by default (many servers share this machine's cores in a test
        run); None leaves the server's own default (one per core)."""
        self.data_dir = data_dir
        self.ca = ca  # a CA file: the server speaks TLS (settings in `env`), verified with it
        self.port = free_port()
        self.extra_args = extra_args or []
        self.env = {**os.environ, **(env or {})}
        if workers is not None:
            self.env.setdefault("REGISTRY_SERVER_WORKERS", str(workers))
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}-server.log"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.ca else 'http'}://{self.host}"

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """What httpx's `verify` wants for this server."""
        return ssl.create_default_context(cafile=str(self.ca)) if self.ca else True

    def start(self) -> None:
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        """Start the process without waiting for it (several replicas started at once)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "registry",
                "serve",
                "--addr",
                self.host,
                "--data",
                str(self.data_dir),
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )

    def wait_ready(self, timeout: float = 30) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"registry exited early:\n{self.log_path.read_text()}")
            try:
                answer = httpx.get(f"{self.url}/v2/", timeout=1, verify=self.verify)
                if answer.status_code in (200, 401):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"registry did not start:\n{self.log_path.read_text()}")

    def stop(self, kill: bool = False) -> None:
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()
