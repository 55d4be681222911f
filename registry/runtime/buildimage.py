"""A build's result in the local store, and a stored image as the start of a stage.

A built image is stored as a pulled one is: its config and manifest as blobs, its layers
(already there from the steps), and an image record naming it by the `-t` references. The
manifest is Docker schema2 when every layer is gzip (as `docker build` makes them), else
OCI, each layer keeping its own media type.
"""

from __future__ import annotations

import json
import time
from typing import Any

from registry.oci import mediatypes as mt
from registry.oci.digest import Digest
from registry.oci.manifest import Platform, parse_manifest
from registry.runtime import buildconfig as bc
from registry.runtime.buildconfig import ImageState, LayerRef
from registry.runtime.images import ImageIndex, ImageRecord
from registry.runtime.platform import format_platform
from registry.runtime.references import parse_reference
from registry.runtime.store import Store

GZIP_TYPES = frozenset({mt.OCI_LAYER_GZIP, mt.DOCKER_LAYER_GZIP})


def from_record(store: Store, record: ImageRecord) -> ImageState:
    """A pulled (or built) image as the start of a stage."""
    config = json.loads(store.read_blob(record.id))
    manifest = parse_manifest(store.read_blob(record.manifest_digest),
                              record.manifest_media_type or None)
    layers = [LayerRef(d.digest, diff_id, d.size, d.media_type)
              for d, diff_id in zip(manifest.layers, record.diff_ids, strict=True)]
    sources = {k: list(v) for k, v in record.blob_sources.items()}
    if "/" in record.repository:
        for layer in layers:
            known = sources.setdefault(layer.digest, [])
            if record.repository not in known:
                known.append(record.repository)
    return ImageState(config, layers, bc.cache_key("", ["FROM", record.id]), sources)


def store_image(store: Store, state: ImageState, tags: list[str]) -> ImageRecord:
    """The built image into the store as a pulled one: config, manifest and record; the
    record of the same image id when there is one (a fully cached rebuild)."""
    images = ImageIndex(store)
    config = state.config_bytes()
    image_id = state.image_id
    existing = images.load().get(image_id)
    if existing is not None and store.has_blob(existing.manifest_digest):
        if not set(tags) <= set(existing.refs):  # else nothing changes: a cached rebuild
            images.add(existing, tags)
            existing = images.get(image_id)
        return existing
    store.put_blob(image_id, config)
    docker = all(layer.media_type in GZIP_TYPES for layer in state.layers)
    layers = []
    for layer in state.layers:
        media_type = layer.media_type
        if media_type in GZIP_TYPES:
            media_type = mt.DOCKER_LAYER_GZIP if docker else mt.OCI_LAYER_GZIP
        layers.append({"mediaType": media_type, "size": layer.size, "digest": layer.digest})
    manifest_type = mt.DOCKER_MANIFEST if docker else mt.OCI_MANIFEST
    doc: dict[str, Any] = {
        "schemaVersion": 2, "mediaType": manifest_type,
        "config": {"mediaType": mt.DOCKER_CONFIG if docker else mt.OCI_CONFIG,
                   "size": len(config), "digest": image_id},
        "layers": layers,
    }
    manifest = json.dumps(doc, indent=3).encode()
    manifest_digest = str(Digest.of(manifest))
    store.put_blob(manifest_digest, manifest)
    first = parse_reference(tags[0]) if tags else None
    record = ImageRecord(
        id=image_id,
        repository=f"{first.host}/{first.name}" if first else "<none>",
        manifest_digest=manifest_digest,
        manifest_media_type=manifest_type,
        layers=[layer.digest for layer in state.layers],
        diff_ids=[layer.diff_id for layer in state.layers],
        platform=format_platform(Platform(str(state.config.get("architecture", "")),
                                          str(state.config.get("os", "")),
                                          state.config.get("variant"))),
        size=sum(_unpacked_size(store, layer.diff_id) for layer in state.layers),
        created=str(state.config.get("created", "")),
        pulled=time.time(),
        blob_sources=state.sources,
    )
    images.add(record, tags)
    return images.get(image_id)


def _unpacked_size(store: Store, diff_id: str) -> int:
    """What `images` shows for a layer, as for a pulled one: the bytes of its files."""
    try:
        return int(json.loads((store.layer_dir(diff_id) / "layer.json").read_text())["size"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0
