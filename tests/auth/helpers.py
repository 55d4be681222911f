"""Talking to an auth-enabled registry from tests: accounts, tokens, pushes, error checks."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
SERVICE = "pocket-registry"


def unique(prefix: str = "u") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def run_cli(
    data_dir: Path, *args: str, input: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m registry <args> --data <data_dir>`, as an operator would run it."""
    return subprocess.run(
        [sys.executable, "-m", "registry", *args, "--data", str(data_dir)],
        input=input,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """`status` with the spec's error body (`{"errors": [{code, message, detail}]}`)."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    errors = response.json()["errors"]
    assert isinstance(errors, list) and errors
    assert set(errors[0]) == {"code", "message", "detail"}
    if code is not None:
        assert errors[0]["code"] == code, errors
    return errors[0]  # type: ignore[no-any-return]


def challenge(response: httpx.Response) -> dict[str, str]:
    """The parameters of a `WWW-Authenticate: Bearer k="v",...` header."""
    header = response.headers["www-authenticate"]
    scheme, _, rest = header.partition(" ")
    assert scheme == "Bearer", header
    params = {}
    for part in _split_params(rest):
        key, _, value = part.partition("=")
        assert value.startswith('"') and value.endswith('"'), header
        params[key] = value[1:-1]
    return params


def _split_params(text: str) -> list[str]:
    parts, current, quoted = [], "", False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def get_token(
    base_url: str,
    scopes: list[str],
    auth: tuple[str, str] | None = None,
    **params: str,
) -> httpx.Response:
    query: list[tuple[str, str]] = [("service", SERVICE), *(("scope", s) for s in scopes)]
    query += list(params.items())
    return httpx.get(f"{base_url}/auth/token", params=query, auth=auth, timeout=30)


def token_for(base_url: str, scopes: list[str], auth: tuple[str, str] | None = None) -> str:
    answer = get_token(base_url, scopes, auth)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def push_blob(
    client: httpx.Client, name: str, data: bytes, headers: dict[str, str]
) -> httpx.Response:
    return client.post(
        f"/v2/{name}/blobs/uploads/",
        params={"digest": digest_of(data)},
        content=data,
        headers={**headers, "Content-Type": "application/octet-stream"},
    )


def push_image(
    client: httpx.Client, name: str, tag: str, headers: dict[str, str]
) -> tuple[httpx.Response, str]:
    """A one-layer OCI image; returns the manifest PUT answer (or the first failing one)."""
    layer = os.urandom(64)
    config = json.dumps({"architecture": "amd64", "os": "linux", "n": uuid.uuid4().hex}).encode()
    for blob in (layer, config):
        answer = push_blob(client, name, blob, headers)
        if answer.status_code != 201:
            return answer, ""
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": digest_of(layer), "size": len(layer)}],
        }
    ).encode()
    answer = client.put(
        f"/v2/{name}/manifests/{tag}",
        content=manifest,
        headers={**headers, "Content-Type": OCI_MANIFEST},
    )
    return answer, digest_of(layer)
