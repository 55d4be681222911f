"""Image records: which references name which pulled image, and what it is made of.

`images.json` holds `{"images": {<image id>: record}}`, the image id being the config's
digest (as Docker's). A record lists the references that name it (`host/name:tag`,
`host/name@digest`), its manifest digest, its layers' blob digests and diff ids, its
platform and size. All changes happen under the store lock.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any

from registry.runtime.errors import LocalImageNotFound
from registry.runtime.state import ContainerStore
from registry.runtime.store import Store


@dataclass
class ImageRecord:
    """One image of the store and the references that name it (see the module docstring)."""

    id: str
    repository: str
    manifest_digest: str
    manifest_media_type: str
    layers: list[str]
    diff_ids: list[str]
    platform: str
    size: int
    created: str
    pulled: float
    refs: list[str] = field(default_factory=list)
    # blob digest -> repositories (host/name) known to hold it, for cross-repository
    # mounts when pushing; a pulled image's own repository holds all of its blobs
    blob_sources: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ImageRecord:
        return cls(**{k: doc[k] for k in cls.__dataclass_fields__ if k in doc})


class ImageIndex:
    """The image records of one store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.path = store.root / "images.json"

    def load(self) -> dict[str, ImageRecord]:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        return {k: ImageRecord.from_json(v) for k, v in doc.get("images", {}).items()}

    def save(self, images: dict[str, ImageRecord]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.store.root / "tmp", prefix="images-")
        with os.fdopen(fd, "w") as out:
            json.dump({"images": {k: asdict(v) for k, v in images.items()}}, out, indent=1)
        os.replace(tmp, self.path)

    def add(self, record: ImageRecord, refs: list[str]) -> None:
        """Record an image and point `refs` at it (taking them from any other image)."""
        with self.store.locked():
            images = self.load()
            for other in images.values():
                other.refs = [r for r in other.refs if r not in refs]
            existing = images.get(record.id)
            keep = existing.refs if existing else []
            record.refs = sorted(set(keep) | set(refs))
            images[record.id] = record
            self.save(images)

    def find(self, ref: str) -> ImageRecord | None:
        """By full reference, by image id (or a prefix of 12+ hex), else None."""
        images = self.load()
        for record in images.values():
            if ref in record.refs:
                return record
        hexpart = ref.removeprefix("sha256:")
        if len(hexpart) >= 4 and all(c in "0123456789abcdef" for c in hexpart):
            hits = [r for k, r in images.items() if k.removeprefix("sha256:").startswith(hexpart)]
            if len(hits) == 1:
                return hits[0]
        return None

    def get(self, ref: str) -> ImageRecord:
        record = self.find(ref)
        if record is None:
            raise LocalImageNotFound(f"no such image: {ref}")
        return record

    def untag(self, ref: str) -> tuple[ImageRecord, bool]:
        """Drop a reference (or, given an id, the whole image); True when the image went."""
        with self.store.locked():
            images = self.load()
            record = None
            for candidate in images.values():
                if ref in candidate.refs:
                    record = candidate
                    candidate.refs.remove(ref)
                    # a digest reference alone does not keep an image once its tags went
                    if not [r for r in candidate.refs if "@" not in r]:
                        candidate.refs = []
                    break
            if record is None:
                record = self.find(ref)
                if record is None:
                    raise LocalImageNotFound(f"no such image: {ref}")
                record.refs = []
                images[record.id] = record
            removed = not record.refs
            if removed:
                del images[record.id]
            self.save(images)
            return record, removed


def collect_garbage(store: Store) -> None:
    """Remove blobs and unpacked layers that no image record and no container needs."""
    with store.locked():
        records = ImageIndex(store).load().values()
        containers = ContainerStore(store).all()
        layers = {d for r in records for d in r.diff_ids} | {
            d for c in containers for d in c.diff_ids
        }
        blobs = {b for r in records for b in (*r.layers, r.id, r.manifest_digest)}
        blobs |= {ref.rpartition("@")[2] for r in records for ref in r.refs if "@" in ref}
        for diff_id in store.layer_ids():
            if diff_id not in layers:
                store.remove_layer(diff_id)
        for digest in store.blob_digests():
            if digest not in blobs:
                store.remove_blob(digest)
