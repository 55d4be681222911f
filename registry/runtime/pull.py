"""Pulling: reference -> manifest (through an index, by platform) -> verified layers.

Every byte is checked before use: manifests against the digest asked for (or the one the
registry announced for a tag), blobs against their descriptor's digest and size while
streaming, unpacked layers against the config's diff ids. Layers already unpacked in the
store are neither downloaded nor unpacked again; the rest download in parallel.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TransferSpeedColumn,
)

from registry.oci import mediatypes as mt
from registry.oci.manifest import Descriptor, Manifest, ManifestError, Platform, parse_manifest
from registry.oci.reference import Reference
from registry.runtime import credentials
from registry.runtime.client import RegistryClient
from registry.runtime.errors import (
    ContentInvalid,
    Interrupted,
    RegistryError,
)
from registry.runtime.images import ImageIndex, ImageRecord
from registry.runtime.platform import format_platform, host_platform, matches, select_manifest
from registry.runtime.references import DEFAULT_REGISTRY as DEFAULT_REGISTRY
from registry.runtime.references import DEFAULT_REGISTRY_ENV as DEFAULT_REGISTRY_ENV
from registry.runtime.references import parse_reference as parse_reference
from registry.runtime.references import reference_key as reference_key
from registry.runtime.store import Store, remove_tree
from registry.runtime.unpack import unpack_layer

PARALLEL_DOWNLOADS = 4
CANCEL_WAIT_SECONDS = 5  # for downloads to notice a Ctrl-C and remove their temp files
LAYER_TYPES = frozenset(
    {mt.OCI_LAYER, mt.OCI_LAYER_GZIP, mt.OCI_LAYER_ZSTD, mt.DOCKER_LAYER_GZIP,
     "application/vnd.docker.image.rootfs.diff.tar"}
) | mt.NON_DISTRIBUTABLE_LAYERS


@dataclass
class ResolvedImage:
    manifest: Manifest
    manifest_bytes: bytes
    manifest_digest: str
    top_digest: str
    config: dict[str, Any]
    config_digest: str
    platform: Platform


class Puller:
    """Pulls images into a store; one per command."""

    def __init__(self, store: Store, console: Console | None = None) -> None:
        self.store = store
        self.images = ImageIndex(store)
        self.console = console or Console(stderr=True)
        self._cancel = threading.Event()

    def pull(self, reference: str, platform: Platform | None = None) -> ImageRecord:
        ref = parse_reference(reference)
        wanted = platform or host_platform()
        creds = credentials.lookup(ref.host)
        with RegistryClient(ref.host, creds) as client:
            resolved = self.resolve(client, ref, wanted)
            sizes = self._fetch_layers(client, ref, resolved)
        layers = resolved.manifest.layers
        record = ImageRecord(
            id=resolved.config_digest,
            repository=f"{ref.host}/{ref.name}",
            manifest_digest=resolved.manifest_digest,
            manifest_media_type=resolved.manifest.media_type,
            layers=[d.digest for d in layers],
            diff_ids=list(resolved.config["rootfs"]["diff_ids"]),
            platform=format_platform(resolved.platform),
            size=sum(sizes),
            created=str(resolved.config.get("created", "")),
            pulled=time.time(),
        )
        refs = [f"{ref.host}/{ref.name}@{resolved.top_digest}"]
        if ref.tag and not ref.digest:
            refs.append(f"{ref.host}/{ref.name}:{ref.tag}")
        self.images.add(record, refs)
        return record

    def resolve(self, client: RegistryClient, ref: Reference, wanted: Platform) -> ResolvedImage:
        data, media_type, digest = client.get_manifest(ref.name, ref.target)
        top_digest = digest
        manifest = _parse(data, media_type, str(ref))
        if manifest.is_index:
            child = select_manifest(manifest.manifests, wanted)
            self.store.put_blob(digest, data)
            data, media_type, digest = client.get_manifest(ref.name, child.digest)
            manifest = _parse(data, media_type or child.media_type, str(ref))
            if manifest.is_index:
                raise RegistryError(f"{ref}: an index inside an index is not supported")
        if manifest.config is None:
            raise RegistryError(f"{ref}: manifest has no config")
        if manifest.artifact_type or manifest.config.media_type not in (
            mt.OCI_CONFIG, mt.DOCKER_CONFIG
        ):
            raise RegistryError(
                f"{ref} is not a container image (config {manifest.config.media_type})"
            )
        for layer in manifest.layers:
            if layer.media_type not in LAYER_TYPES:
                raise RegistryError(f"{ref}: unsupported layer media type {layer.media_type}")
        config_bytes = self._config(client, ref, manifest.config)
        try:
            config = json.loads(config_bytes)
            diff_ids = config["rootfs"]["diff_ids"]
        except (ValueError, KeyError, TypeError):
            raise ContentInvalid(f"{ref}: image config is not valid") from None
        if not isinstance(diff_ids, list) or len(diff_ids) != len(manifest.layers):
            raise ContentInvalid(f"{ref}: config lists {len(diff_ids)} diff ids for "
                                 f"{len(manifest.layers)} layers")
        image_platform = Platform(str(config.get("architecture", "")), str(config.get("os", "")),
                                  config.get("variant"))
        if not matches(image_platform, wanted):
            raise RegistryError(
                f"{ref}: image is for {format_platform(image_platform)}, "
                f"not {format_platform(wanted)} (use --platform)"
            )
        self.store.put_blob(digest, data)
        return ResolvedImage(manifest, data, digest, top_digest, config,
                             manifest.config.digest, image_platform)

    def _config(self, client: RegistryClient, ref: Reference, desc: Descriptor) -> bytes:
        if not self.store.has_blob(desc.digest):
            writer = self.store.blob_writer(desc.digest, desc.size)
            try:
                client.download_blob(ref.name, desc.digest, writer)
                writer.commit()
            except BaseException:
                writer.abort()
                raise
        return self.store.read_blob(desc.digest)

    def _fetch_layers(self, client: RegistryClient, ref: Reference,
                      resolved: ResolvedImage) -> list[int]:
        diff_ids = resolved.config["rootfs"]["diff_ids"]
        pairs = list(zip(resolved.manifest.layers, diff_ids, strict=True))
        with Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
            TransferSpeedColumn(), console=self.console, transient=False,
        ) as progress:
            pool = ThreadPoolExecutor(PARALLEL_DOWNLOADS)
            tasks = [
                pool.submit(self._layer, client, ref, desc, diff_id, progress)
                for desc, diff_id in pairs
            ]
            try:
                return [t.result() for t in tasks]
            except BaseException:
                # Ctrl-C or a failed layer: the others stop at their next MiB or entry
                # and clean up after themselves, rather than run to the end.
                self._cancel.set()
                pool.shutdown(wait=False, cancel_futures=True)
                wait(tasks, timeout=CANCEL_WAIT_SECONDS)
                raise
            finally:
                pool.shutdown(wait=False)

    def _advance(self, progress: Progress, task: TaskID, n: int) -> None:
        if self._cancel.is_set():
            raise Interrupted("interrupted")
        progress.advance(task, n)

    def _layer(self, client: RegistryClient, ref: Reference, desc: Descriptor, diff_id: str,
               progress: Progress) -> int:
        short = desc.digest.split(":")[-1][:12]
        if self.store.has_layer(diff_id):
            progress.add_task(f"{short} already exists", total=desc.size, completed=desc.size)
            return _layer_size(self.store, diff_id)
        task: TaskID = progress.add_task(f"{short} downloading", total=desc.size)
        if not self.store.has_blob(desc.digest):
            writer = self.store.blob_writer(desc.digest, desc.size)
            try:
                client.download_blob(ref.name, desc.digest, writer,
                                     lambda n: self._advance(progress, task, n))
                writer.commit()
            except BaseException:
                writer.abort()
                raise
        progress.update(task, description=f"{short} extracting", completed=desc.size)
        temp = self.store.new_temp_dir("layer-")
        try:
            info, actual = unpack_layer(self.store.blob_path(desc.digest), temp,
                                        cancelled=self._cancel.is_set)
            if actual != diff_id:
                raise ContentInvalid(
                    f"layer {desc.digest} unpacks to {actual}, not the diff id {diff_id} "
                    "its config names"
                )
            self.store.commit_layer(temp, diff_id)
        except BaseException:
            remove_tree(temp)
            raise
        progress.update(task, description=f"{short} pull complete")
        return info.size


def _layer_size(store: Store, diff_id: str) -> int:
    try:
        doc = json.loads((store.layer_dir(diff_id) / "layer.json").read_text())
        return int(doc.get("size", 0))
    except (OSError, ValueError):
        return 0


def _parse(data: bytes, media_type: str, what: str) -> Manifest:
    try:
        return parse_manifest(data, media_type or None)
    except ManifestError as exc:
        raise RegistryError(f"{what}: invalid manifest: {exc}") from None


def ensure_image(store: Store, reference: str, platform: Platform | None = None,
                 console: Console | None = None) -> ImageRecord:
    """The local image for `reference`, pulling it first when it is not there."""
    ref = parse_reference(reference)
    images = ImageIndex(store)
    record = images.find(reference_key(ref)) or images.find(reference)
    if record is not None and all(store.has_layer(d) for d in record.diff_ids):
        return record
    out = console or Console(stderr=True)
    out.print(f"Unable to find image '{reference}' locally", highlight=False)
    return Puller(store, out).pull(reference, platform)
