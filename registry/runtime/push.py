"""Pushing: a local image (built or pulled) to a registry, as `docker push` does it.

For each blob (layers, then the config): `HEAD` first, and nothing is sent when the
registry has it; else a cross-repository mount (`POST ?mount=&from=`) from a repository
of the same registry known to hold it (the one an image was pulled from, or pushed to);
else an upload: in one `PUT` up to the chunk size, above it in `PATCH`es with
`Content-Range`, each one's progress on a bar. A chunk whose connection drops is not
started over: the session's status (`GET`, its `Range`) says where to go on from. Then
the manifest, byte for byte as the image has it (OCI or Docker schema2), by tag; when the
image came from an index whose other platforms are in the store too (or already in the
target repository), their manifests and the index itself.

Credentials are those of `pull` (`registry login`, Docker's config.json); tokens are asked
for `pull,push` (and `pull` on a mount's source).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from registry.oci.manifest import Descriptor, Manifest, ManifestError, parse_manifest
from registry.oci.reference import Reference
from registry.runtime import credentials
from registry.runtime.client import RegistryClient
from registry.runtime.errors import (
    AccessDenied,
    ImageNotFound,
    LocalImageNotFound,
    RegistryError,
)
from registry.runtime.images import ImageIndex, ImageRecord
from registry.runtime.references import parse_reference
from registry.runtime.store import Store

CHUNK_ENV = "POCKET_PUSH_CHUNK_SIZE"
DEFAULT_CHUNK = 16 << 20
MIN_CHUNK = 64 << 10
RESUME_ATTEMPTS = 5
PARALLEL_UPLOADS = 4
MAX_MOUNT_SOURCES = 3


def chunk_size() -> int:
    """Bytes per PATCH ($POCKET_PUSH_CHUNK_SIZE, at least 64 KiB); smaller blobs go whole."""
    raw = os.environ.get(CHUNK_ENV, "")
    try:
        return max(MIN_CHUNK, int(raw)) if raw else DEFAULT_CHUNK
    except ValueError:
        raise RegistryError(f"{CHUNK_ENV} must be a number of bytes, not {raw!r}") from None


@dataclass
class BlobPush:
    digest: str
    size: int
    sources: list[str]  # repositories of the same registry that hold it
    outcome: str = ""


def _parse(data: bytes, media_type: str, what: str) -> Manifest:
    try:
        return parse_manifest(data, media_type or None)
    except ManifestError as exc:
        raise RegistryError(f"{what}: the stored manifest is invalid: {exc}") from None


class Pusher:
    def __init__(self, store: Store, console: Console | None = None,
                 say: Callable[[str], None] | None = None) -> None:
        self.store = store
        self.images = ImageIndex(store)
        self.console = console or Console(stderr=True, highlight=False)
        self.say = say or (lambda line: print(line, flush=True))
        self.chunk = chunk_size()
        self._lock = threading.Lock()
        self.resumed = 0

    def push(self, reference: str) -> str:
        """Push the local image `reference` names; the digest its tag now points at."""
        ref = parse_reference(reference)
        record = self.images.find(str(ref))
        if record is None:
            raise LocalImageNotFound(f"an image does not exist locally with the tag: {ref}")
        self.say(f"The push refers to repository [{ref.host}/{ref.name}]")
        with RegistryClient(ref.host, credentials.lookup(ref.host)) as client:
            index = self._index_of(record, client, ref)
            digest = self._push_image(client, ref, record, by_tag=index is None)
            if index is not None:
                for child in index[1]:
                    if child is not record:
                        self._push_image(client, ref, child, by_tag=False)
                data, media_type, _ = index[0]
                digest = client.put_manifest(ref.name, ref.tag or "latest", data, media_type)
        size = len(self._top_bytes(record, index))
        self.say(f"{ref.tag or 'latest'}: digest: {digest} size: {size}")
        self.images.add(self.images.get(record.id), [f"{ref.host}/{ref.name}@{digest}"])
        return digest

    # --- what to push -------------------------------------------------------------------

    def _top_bytes(self, record: ImageRecord,
                   index: tuple[tuple[bytes, str, str], list[ImageRecord]] | None) -> bytes:
        return index[0][0] if index else self.store.read_blob(record.manifest_digest)

    def _index_of(self, record: ImageRecord, client: RegistryClient, ref: Reference
                  ) -> tuple[tuple[bytes, str, str], list[ImageRecord]] | None:
        """The index this image was pulled through, when every platform it lists is in the
        store (or already in the target repository): (its bytes, type, digest), records."""
        by_manifest = {r.manifest_digest: r for r in self.images.load().values()}
        for text in record.refs:
            digest = text.rpartition("@")[2]
            if "@" not in text or digest == record.manifest_digest:
                continue
            if not self.store.has_blob(digest):
                continue
            data = self.store.read_blob(digest)
            try:
                index = parse_manifest(data)
            except ManifestError:
                continue
            if not index.is_index or record.manifest_digest not in {
                    d.digest for d in index.manifests}:
                continue
            children: list[ImageRecord] = []
            for child in index.manifests:
                local = by_manifest.get(child.digest)
                if local is not None and self._complete(local):
                    children.append(local)
                elif not client.manifest_exists(ref.name, child.digest):
                    self.say(f"Pushing only {record.platform}: the index {digest[:19]} lists "
                             f"{child.digest[:19]}, which is not in the local store")
                    return None
            return (data, index.media_type, digest), children
        return None

    def _complete(self, record: ImageRecord) -> bool:
        return all(self.store.has_blob(d) for d in (*record.layers, record.id,
                                                    record.manifest_digest))

    def _push_image(self, client: RegistryClient, ref: Reference, record: ImageRecord,
                    by_tag: bool) -> str:
        data = self.store.read_blob(record.manifest_digest)
        manifest = _parse(data, record.manifest_media_type, str(ref))
        if manifest.config is None:
            raise RegistryError(f"{ref}: the image's manifest has no config")
        blobs = [self._blob(record, d) for d in (*manifest.layers, manifest.config)]
        self._push_blobs(client, ref, blobs)
        target = (ref.tag or "latest") if by_tag else record.manifest_digest
        digest = client.put_manifest(ref.name, target, data, manifest.media_type)
        record.blob_sources = {
            **record.blob_sources,
            **{b.digest: sorted({*record.blob_sources.get(b.digest, []),
                                 f"{ref.host}/{ref.name}"}) for b in blobs},
        }
        self.images.add(record, [])
        return digest

    def _blob(self, record: ImageRecord, desc: Descriptor) -> BlobPush:
        if not self.store.has_blob(desc.digest):
            raise LocalImageNotFound(f"blob {desc.digest} of the image is not in the local "
                                     "store: pull the image again")
        known = list(record.blob_sources.get(desc.digest, []))
        if "/" in record.repository and desc.digest in (*record.layers, record.id):
            known.append(record.repository)  # a pulled image's repository holds its blobs
        return BlobPush(desc.digest, desc.size, list(dict.fromkeys(known)))

    # --- blobs ------------------------------------------------------------------------------

    def _push_blobs(self, client: RegistryClient, ref: Reference, blobs: list[BlobPush]) -> None:
        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                   TransferSpeedColumn())
        with Progress(*columns, console=self.console, transient=True,
                      disable=not self.console.is_terminal) as progress, \
                ThreadPoolExecutor(PARALLEL_UPLOADS) as pool:
            tasks = [pool.submit(self._push_blob, client, ref, blob, progress) for blob in blobs]
            for task in tasks:
                task.result()

    def _push_blob(self, client: RegistryClient, ref: Reference, blob: BlobPush,
                   progress: Progress) -> None:
        short = blob.digest.split(":")[-1][:12]
        task = progress.add_task(f"{short} preparing", total=blob.size)
        if client.blob_exists(ref.name, blob.digest):
            blob.outcome = "Layer already exists"
        else:
            location = None
            for source in blob.sources[:MAX_MOUNT_SOURCES]:
                host, _, name = source.partition("/")
                if host != ref.host or name == ref.name:
                    continue
                mounted, location = client.start_upload(ref.name, blob.digest, name)
                if mounted:
                    blob.outcome = f"Mounted from {name}"
                    break
            if not blob.outcome:
                if location is None:
                    _, location = client.start_upload(ref.name)
                progress.update(task, description=f"{short} pushing")
                self._upload(client, ref.name, blob, location,
                             lambda n: progress.advance(task, n))
                blob.outcome = "Pushed"
        progress.update(task, description=f"{short} {blob.outcome}", completed=blob.size)
        self.say(f"{short}: {blob.outcome}")

    def _read(self, digest: str, offset: int, size: int) -> bytes:
        with open(self.store.blob_path(digest), "rb") as f:
            f.seek(offset)
            return f.read(size)

    def _upload(self, client: RegistryClient, repo: str, blob: BlobPush, location: str,
                advance: Callable[[int], None]) -> None:
        if blob.size <= self.chunk:
            client.finish_upload(repo, location, blob.digest, self._read(blob.digest, 0,
                                                                         blob.size), advance)
            return
        offset, failures = 0, 0
        sent = [0]  # bytes of the current chunk on the bar, taken back if it fails

        def counted(n: int) -> None:
            sent[0] += n
            advance(n)

        while offset < blob.size:
            data = self._read(blob.digest, offset, min(self.chunk, blob.size - offset))
            sent[0] = 0
            try:
                location = client.upload_chunk(repo, location, offset, data, counted)
                offset += len(data)
                failures = 0
            except AccessDenied:
                raise
            except RegistryError as exc:  # a dropped connection, a 416, a lost session
                failures += 1
                if failures > RESUME_ATTEMPTS:
                    raise RegistryError(f"uploading {blob.digest} failed {failures} times in "
                                        f"a row: {exc.message}") from None
                time.sleep(min(0.2 * 2 ** failures, 5))
                advance(-sent[0])
                try:
                    offset, location = client.upload_status(repo, location)
                except ImageNotFound:  # the registry forgot the session: start again
                    offset, (_, location) = 0, client.start_upload(repo)
                    advance(-blob.size)
                with self._lock:
                    self.resumed += 1
        client.finish_upload(repo, location, blob.digest)
