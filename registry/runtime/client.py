"""The registry HTTP client: the token flow and Basic auth, and verified downloads.

One `RegistryClient` per registry host. Requests go out with whatever authorization we
hold for their scope; a 401 challenge is answered once, either by fetching a Bearer token
from the challenge's realm (with our Basic credentials, if any) or by Basic auth itself.
Loopback hosts and hosts in `POCKET_INSECURE_REGISTRIES` (comma separated) speak plain
HTTP, as Docker treats them as insecure registries; everything else is HTTPS.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx

from registry.oci import mediatypes as mt
from registry.oci.digest import Digest
from registry.runtime.credentials import Credentials
from registry.runtime.errors import (
    AccessDenied,
    ContentInvalid,
    ImageNotFound,
    RegistryError,
    RegistryUnreachable,
)
from registry.runtime.store import BlobWriter

MANIFEST_ACCEPT = ", ".join(
    [mt.OCI_INDEX, mt.DOCKER_MANIFEST_LIST, mt.OCI_MANIFEST, mt.DOCKER_MANIFEST]
)
MAX_MANIFEST_BYTES = 4 << 20
_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"([^"]*)"|([^,\s]*))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="x",service="y"` -> ("bearer", {"realm": "x", "service": "y"})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
        for m in _CHALLENGE_PARAM.finditer(rest)
    }
    return scheme.lower(), params


def default_scheme(host: str) -> str:
    insecure = {h.strip() for h in os.environ.get("POCKET_INSECURE_REGISTRIES", "").split(",")}
    if host in insecure:
        return "http"
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]")
    if name == "localhost":
        return "http"
    try:
        return "http" if ipaddress.ip_address(name).is_loopback else "https"
    except ValueError:
        return "https"


def _error_message(response: httpx.Response) -> str:
    try:
        errors = response.json().get("errors") or []
        first = errors[0]
        return f"{first.get('code', '')}: {first.get('message', '')}".strip(": ")
    except (ValueError, AttributeError, IndexError, TypeError):
        return f"HTTP {response.status_code}"


class RegistryClient:
    """Talks to one registry host; thread-safe (layers download in parallel)."""

    def __init__(
        self,
        host: str,
        credentials: Credentials | None = None,
        scheme: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.host = host
        self.credentials = credentials
        self.base = f"{scheme or default_scheme(host)}://{host}"
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=10.0),
            follow_redirects=True,
            headers={"User-Agent": "pocket-runtime/0.1"},
        )
        self._auth: dict[str, str] = {}  # scope -> Authorization header value

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- auth --------------------------------------------------------------------------

    def _basic(self) -> str | None:
        if self.credentials is None:
            return None
        pair = f"{self.credentials.username}:{self.credentials.password}".encode()
        return "Basic " + base64.b64encode(pair).decode()

    def _authorize(self, challenge: str, scope: str) -> None:
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            basic = self._basic()
            if basic is None:
                raise AccessDenied(
                    f"{self.host} requires a login: run `registry login {self.host}`"
                )
            self._auth[scope] = basic
            return
        if scheme != "bearer" or "realm" not in params:
            raise AccessDenied(f"{self.host} asks for unsupported authentication {challenge!r}")
        query = {"service": params["service"]} if params.get("service") else {}
        wanted = params.get("scope") or scope
        if wanted:
            query["scope"] = wanted
        headers = {}
        basic = self._basic()
        if basic:
            headers["Authorization"] = basic
        try:
            answer = self._http.get(params["realm"], params=query, headers=headers)
        except httpx.HTTPError as exc:
            raise RegistryUnreachable(f"token service {params['realm']}: {exc}") from None
        if answer.status_code in (401, 403):
            what = "invalid username or password" if basic else "a login is required"
            raise AccessDenied(f"{self.host}: {what} (run `registry login {self.host}`)")
        if answer.status_code != 200:
            raise RegistryError(f"token service {params['realm']}: HTTP {answer.status_code}")
        try:
            doc = answer.json()
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"token service {params['realm']} sent no token")
        self._auth[scope] = f"Bearer {token}"

    @contextmanager
    def _request(
        self, method: str, path: str, scope: str, headers: dict[str, str] | None = None
    ) -> Iterator[httpx.Response]:
        """Send with auth (answering one challenge), yield the streamed response."""
        url = path if path.startswith("http") else self.base + path
        for attempt in range(2):
            send_headers = dict(headers or {})
            if scope in self._auth:
                send_headers["Authorization"] = self._auth[scope]
            try:
                request = self._http.build_request(method, url, headers=send_headers)
                response = self._http.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise RegistryUnreachable(f"cannot reach registry {self.host}: {exc}") from None
            if response.status_code == 401 and attempt == 0:
                challenge = response.headers.get("WWW-Authenticate", "")
                response.close()
                self._authorize(challenge, scope)
                continue
            try:
                self._check(response)
                yield response
            finally:
                response.close()
            return

    def _check(self, response: httpx.Response) -> None:
        status = response.status_code
        if status < 300:
            return
        response.read()
        detail = _error_message(response)
        if status == 401:
            raise AccessDenied(f"{self.host}: authentication failed ({detail})")
        if status == 403:
            raise AccessDenied(f"{self.host}: access denied ({detail})")
        if status == 404:
            raise ImageNotFound(f"not found on {self.host}: {detail}")
        raise RegistryError(f"{self.host} answered {status}: {detail}")

    # --- API ---------------------------------------------------------------------------

    def ping(self) -> None:
        """GET /v2/, authenticating as needed: how `login` checks credentials."""
        with self._request("GET", "/v2/", scope=""):
            pass

    def get_manifest(self, repo: str, reference: str) -> tuple[bytes, str, str]:
        """(bytes, media type, digest) of a manifest, verified against its digest."""
        scope = f"repository:{repo}:pull"
        path = f"/v2/{repo}/manifests/{reference}"
        with self._request("GET", path, scope, {"Accept": MANIFEST_ACCEPT}) as response:
            data = b""
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > MAX_MANIFEST_BYTES:
                    raise RegistryError(f"manifest {repo}:{reference} is over 4 MiB")
            media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
            header_digest = response.headers.get("Docker-Content-Digest")
        expected = reference if ":" in reference else header_digest
        algorithm = Digest.parse(expected).algorithm if expected else "sha256"
        actual = str(Digest.of(data, algorithm))
        if expected and actual != expected:
            raise ContentInvalid(
                f"manifest {repo}@{expected} does not match its digest (got {actual})"
            )
        return data, media_type, actual

    def download_blob(
        self,
        repo: str,
        digest: str,
        writer: BlobWriter,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Stream a blob into `writer` (which checks size and digest on commit)."""
        scope = f"repository:{repo}:pull"
        with self._request("GET", f"/v2/{repo}/blobs/{digest}", scope) as response:
            for chunk in response.iter_bytes(1 << 20):
                writer.write(chunk)
                if progress is not None:
                    progress(len(chunk))
