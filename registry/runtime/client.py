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
UPLOAD_PIECE = 256 << 10
_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"([^"]*)"|([^,\s]*))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="x",service="y"` -> ("bearer", {"realm": "x", "service": "y"})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
              for m in _CHALLENGE_PARAM.finditer(rest)}
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
    """The registry's first error as docker prints it: `manifest unknown: <message>`."""
    try:
        errors = response.json().get("errors") or []
        first = errors[0]
        code = str(first.get("code", "")).lower().replace("_", " ")
        return f"{code}: {first.get('message', '')}".strip(": ")
    except (ValueError, AttributeError, IndexError, TypeError):
        return f"HTTP {response.status_code}"


def _pieces(data: bytes, progress: Callable[[int], None] | None) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(view), UPLOAD_PIECE):
        piece = view[start : start + UPLOAD_PIECE]
        yield bytes(piece)
        if progress is not None:
            progress(len(piece))


def _manifest_name(host: str, repo: str, reference: str) -> str:
    separator = "@" if ":" in reference else ":"
    return f"manifest for {host}/{repo}{separator}{reference}"


class RegistryClient:
    """Talks to one registry host; thread-safe (layers download in parallel)."""

    def __init__(self, host: str, credentials: Credentials | None = None,
                 scheme: str | None = None, timeout: float = 60.0) -> None:
        self.host = host
        self.credentials = credentials
        self.base = f"{scheme or default_scheme(host)}://{host}"
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=10.0), follow_redirects=True,
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
        query: dict[str, str | list[str]] = {}
        if params.get("service"):
            query["service"] = params["service"]
        # what the challenge names and what this request needs (a push asks pull,push, a
        # mount pull on its source too), one `scope` parameter each, as Docker sends them
        wanted = list(dict.fromkeys((params.get("scope") or "").split() + scope.split()))
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
    def _request(self, method: str, path: str, scope: str,
                 headers: dict[str, str] | None = None,
                 missing: str = "", content: bytes | None = None,
                 progress: Callable[[int], None] | None = None,
                 allow: tuple[int, ...] = ()) -> Iterator[httpx.Response]:
        """Send with auth (answering one challenge), yield the streamed response. `missing`
        names what a 404 means (`manifest for host/name:tag`), as docker says it; a status
        in `allow` is no error. `content` goes out in pieces that `progress` counts."""
        url = path if path.startswith("http") else self.base + path
        for attempt in range(2):
            send_headers = dict(headers or {})
            if scope in self._auth:
                send_headers["Authorization"] = self._auth[scope]
            body = None
            if content is not None:
                send_headers["Content-Length"] = str(len(content))
                body = _pieces(content, progress)
            try:
                request = self._http.build_request(method, url, headers=send_headers,
                                                   content=body)
                response = self._http.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise RegistryUnreachable(f"cannot reach registry {self.host}: {exc}") from None
            if response.status_code == 401 and attempt == 0:
                challenge = response.headers.get("WWW-Authenticate", "")
                response.close()
                self._authorize(challenge, scope)
                continue
            try:
                if response.status_code not in allow:
                    self._check(response, missing)
                yield response
            finally:
                response.close()
            return

    def _check(self, response: httpx.Response, missing: str = "") -> None:
        status = response.status_code
        if status < 300:
            return
        response.read()
        detail = _error_message(response)
        if status == 401:
            if self.credentials is None:
                raise AccessDenied(f"{self.host}: a login is required "
                                   f"(run `registry login {self.host}`)")
            raise AccessDenied(f"{self.host}: authentication failed ({detail})")
        if status == 403:
            raise AccessDenied(f"{self.host}: access denied ({detail})")
        if status == 404:
            what = missing or f"{response.request.url.path} on {self.host}"
            raise ImageNotFound(f"{what} not found: {detail}")
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
        with self._request("GET", path, scope, {"Accept": MANIFEST_ACCEPT},
                           missing=_manifest_name(self.host, repo, reference)) as response:
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

    def download_blob(self, repo: str, digest: str, writer: BlobWriter,
                      progress: Callable[[int], None] | None = None) -> None:
        """Stream a blob into `writer` (which checks size and digest on commit)."""
        scope = f"repository:{repo}:pull"
        with self._request("GET", f"/v2/{repo}/blobs/{digest}", scope) as response:
            for chunk in response.iter_bytes(1 << 20):
                writer.write(chunk)
                if progress is not None:
                    progress(len(chunk))

    # --- pushing -----------------------------------------------------------------------

    def blob_exists(self, repo: str, digest: str) -> bool:
        scope = f"repository:{repo}:pull,push"
        with self._request("HEAD", f"/v2/{repo}/blobs/{digest}", scope,
                           allow=(404,)) as response:
            return response.status_code == 200

    def manifest_exists(self, repo: str, digest: str) -> bool:
        scope = f"repository:{repo}:pull,push"
        with self._request("HEAD", f"/v2/{repo}/manifests/{digest}", scope,
                           headers={"Accept": MANIFEST_ACCEPT}, allow=(404,)) as response:
            return response.status_code == 200

    def start_upload(self, repo: str, mount: str | None = None,
                     source: str | None = None) -> tuple[bool, str]:
        """POST an upload session: (True, blob location) when `mount` from `source` worked,
        else (False, the session's location)."""
        path = f"/v2/{repo}/blobs/uploads/"
        scope = f"repository:{repo}:pull,push"
        if mount and source:
            path += f"?mount={mount}&from={source}"
            scope += f" repository:{source}:pull"
        with self._request("POST", path, scope, content=b"") as response:
            return response.status_code == 201, self._location(response)

    def _location(self, response: httpx.Response) -> str:
        location = str(response.headers.get("Location") or "")
        if not location:
            raise RegistryError(f"{self.host} answered {response.status_code} without a Location")
        if location.startswith("http"):
            return location
        return self.base + ("" if location.startswith("/") else "/") + location

    def upload_chunk(self, repo: str, location: str, offset: int, data: bytes,
                     progress: Callable[[int], None] | None = None) -> str:
        """PATCH `data` at `offset` (Content-Range); the session's next location."""
        headers = {"Content-Type": "application/octet-stream",
                   "Content-Range": f"{offset}-{offset + len(data) - 1}"}
        with self._request("PATCH", location, f"repository:{repo}:pull,push", headers,
                           content=data, progress=progress) as response:
            if response.status_code != 202:
                raise RegistryError(f"{self.host} answered {response.status_code} to a chunk")
            return self._location(response)

    def upload_status(self, repo: str, location: str) -> tuple[int, str]:
        """(bytes the registry holds, location) of an upload session, from its `Range`."""
        with self._request("GET", location, f"repository:{repo}:pull,push") as response:
            text = response.headers.get("Range", "")
            location = self._location(response)
        start, _, end = text.removeprefix("bytes=").partition("-")
        if start != "0" or not end.isdigit():
            raise RegistryError(f"{self.host} gave no valid Range for an upload: {text!r}")
        return int(end) + 1 if int(end) > 0 else 0, location

    def finish_upload(self, repo: str, location: str, digest: str, data: bytes = b"",
                      progress: Callable[[int], None] | None = None) -> None:
        """PUT `?digest=` (with the whole blob as `data`, or nothing after chunks)."""
        url = location + ("&" if "?" in location else "?") + f"digest={digest}"
        headers = {"Content-Type": "application/octet-stream"}
        with self._request("PUT", url, f"repository:{repo}:pull,push", headers,
                           content=data, progress=progress) as response:
            if response.status_code != 201:
                raise RegistryError(f"{self.host} answered {response.status_code} to the "
                                    f"end of an upload of {digest}")

    def put_manifest(self, repo: str, reference: str, data: bytes, media_type: str) -> str:
        """PUT a manifest (or index) by tag or digest; its digest as the registry says it."""
        with self._request("PUT", f"/v2/{repo}/manifests/{reference}",
                           f"repository:{repo}:pull,push", {"Content-Type": media_type},
                           content=data) as response:
            return response.headers.get("Docker-Content-Digest") or str(Digest.of(data))
