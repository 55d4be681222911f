"""CNCF Distribution (`/usr/bin/docker-registry`) started by tests, plain, Basic or token auth."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import bcrypt
import httpx

from support.server import free_port

BINARY = "/usr/bin/docker-registry"


class Distribution:
    def __init__(
        self,
        workdir: Path,
        auth: str = "",
        users: dict[str, str] | None = None,
        token: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            "version: 0.1",
            "log: {level: error, accesslog: {disabled: true}}",
            f"storage: {{filesystem: {{rootdirectory: {workdir / 'data'}}}, "
            "delete: {enabled: true}}",
            f"http: {{addr: 127.0.0.1:{self.port}, secret: test}}",
        ]
        if auth == "htpasswd":
            htpasswd = workdir / "htpasswd"
            htpasswd.write_text(
                "".join(
                    f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(4)).decode()}\n"
                    for u, p in (users or {}).items()
                )
            )
            lines.append(f"auth: {{htpasswd: {{realm: test, path: {htpasswd}}}}}")
        elif auth == "token":
            assert token is not None
            lines.append(
                f"auth: {{token: {{realm: {token['realm']}, service: {token['service']}, "
                f"issuer: {token['issuer']}, rootcertbundle: {token['cert']}}}}}"
            )
        config = workdir / "config.yml"
        config.write_text("\n".join(lines) + "\n")
        self.log = (workdir / "registry.log").open("wb")
        self.process = subprocess.Popen(
            [BINARY, "serve", str(config)], stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (workdir / "registry.log").read_text()
            try:
                httpx.get(f"{self.url}/v2/", timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("distribution did not start")

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.log.close()
