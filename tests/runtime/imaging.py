"""Building test images in Python: tar layers, configs, manifests, pushed over HTTP."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
import zstandard

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
BUSYBOX = "/bin/busybox"
_APPLET_NAMES = (
    "sh cat echo env id ls sleep hostname pwd test touch mkdir rm head tr wc kill ps stat "
    "whoami true false printf grep chown mount cp dd seq yes readlink umount ln"
)
APPLETS = tuple(_APPLET_NAMES.split())


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Entry:
    name: str
    kind: str = "file"  # file, dir, symlink, hardlink, chr, fifo
    data: bytes = b""
    target: str = ""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    devmajor: int = 0
    devminor: int = 0


def file(
    name: str, data: bytes | str = b"", mode: int = 0o644, uid: int = 0, gid: int = 0
) -> Entry:
    raw = data.encode() if isinstance(data, str) else data
    return Entry(name, "file", raw, mode=mode, uid=uid, gid=gid)


def directory(name: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> Entry:
    return Entry(name, "dir", mode=mode, uid=uid, gid=gid)


def symlink(name: str, target: str) -> Entry:
    return Entry(name, "symlink", target=target, mode=0o777)


def hardlink(name: str, target: str) -> Entry:
    return Entry(name, "hardlink", target=target)


def tar_bytes(entries: Iterable[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.mode, info.uid, info.gid, info.mtime = e.mode, e.uid, e.gid, 1_700_000_000
            if e.kind == "file":
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
                continue
            info.type = {
                "dir": tarfile.DIRTYPE,
                "symlink": tarfile.SYMTYPE,
                "hardlink": tarfile.LNKTYPE,
                "chr": tarfile.CHRTYPE,
                "fifo": tarfile.FIFOTYPE,
            }[e.kind]
            info.linkname = e.target
            info.devmajor, info.devminor = e.devmajor, e.devminor
            tar.addfile(info)
    return buf.getvalue()


def busybox_entries(extra_applets: Iterable[str] = ()) -> list[Entry]:
    with open(BUSYBOX, "rb") as f:
        binary = f.read()
    out = [directory("bin"), file("bin/busybox", binary, 0o755)]
    out += [symlink(f"bin/{a}", "busybox") for a in (*APPLETS, *extra_applets)]
    out += [
        directory("etc"),
        file(
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\n"
            "app:x:1000:1000:app:/home/app:/bin/sh\n"
            "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        ),
        file(
            "etc/group",
            "root:x:0:\nwheel:x:10:root,app\napp:x:1000:\nstaff:x:50:app\nnogroup:x:65534:\n",
        ),
        directory("root", 0o700),
        directory("home"),
        directory("home/app", uid=1000, gid=1000),
        directory("tmp", 0o1777),
    ]
    return out


@dataclass
class Layer:
    tar: bytes
    compression: str = "gzip"  # gzip, zstd, none

    @property
    def blob(self) -> bytes:
        if self.compression == "gzip":
            return gzip.compress(self.tar, compresslevel=1, mtime=0)
        if self.compression == "zstd":
            return zstandard.ZstdCompressor().compress(self.tar)
        return self.tar

    @property
    def media_type(self) -> str:
        return {
            "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
            "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
            "none": "application/vnd.oci.image.layer.v1.tar",
        }[self.compression]


@dataclass
class Image:
    layers: list[Layer]
    config: dict[str, Any] = field(default_factory=dict)
    architecture: str = "amd64"
    os: str = "linux"

    def config_bytes(self) -> bytes:
        doc = {
            "architecture": self.architecture,
            "os": self.os,
            "created": "2024-01-01T00:00:00Z",
            "config": self.config,
            "rootfs": {"type": "layers", "diff_ids": [sha256(la.tar) for la in self.layers]},
        }
        return json.dumps(doc).encode()


class Pusher:
    """Pushes blobs and manifests to a registry with plain HTTP calls."""

    def __init__(
        self,
        base_url: str,
        auth: tuple[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=30, auth=auth, headers=headers)

    def close(self) -> None:
        self.http.close()

    def blob(self, repo: str, data: bytes, digest: str | None = None) -> str:
        digest = digest or sha256(data)
        start = self.http.post(f"/v2/{repo}/blobs/uploads/")
        assert start.status_code == 202, start.text
        location = start.headers["Location"]
        sep = "&" if "?" in location else "?"
        done = self.http.put(
            f"{location}{sep}digest={digest}",
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert done.status_code == 201, done.text
        return digest

    def manifest(self, repo: str, ref: str, doc: dict[str, Any] | bytes, media_type: str) -> str:
        body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        put = self.http.put(
            f"/v2/{repo}/manifests/{ref}", content=body, headers={"Content-Type": media_type}
        )
        assert put.status_code == 201, put.text
        return sha256(body)

    def image_manifest(
        self, repo: str, image: Image, media_type: str = OCI_MANIFEST
    ) -> tuple[dict[str, Any], bytes]:
        config = image.config_bytes()
        self.blob(repo, config)
        layers = []
        for layer in image.layers:
            blob = layer.blob
            self.blob(repo, blob)
            layer_type = layer.media_type
            if media_type == DOCKER_MANIFEST:
                layer_type = "application/vnd.docker.image.rootfs.diff.tar.gzip"
            layers.append({"mediaType": layer_type, "digest": sha256(blob), "size": len(blob)})
        config_type = (
            "application/vnd.docker.container.image.v1+json"
            if media_type == DOCKER_MANIFEST
            else "application/vnd.oci.image.config.v1+json"
        )
        doc = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {"mediaType": config_type, "digest": sha256(config), "size": len(config)},
            "layers": layers,
        }
        return doc, json.dumps(doc).encode()

    def image(self, repo: str, tag: str, image: Image, media_type: str = OCI_MANIFEST) -> str:
        _, body = self.image_manifest(repo, image, media_type)
        return self.manifest(repo, tag, body, media_type)

    def index(self, repo: str, tag: str, images: list[Image]) -> str:
        entries = []
        for img in images:
            _, body = self.image_manifest(repo, img)
            digest = self.manifest(repo, sha256(body), body, OCI_MANIFEST)
            entries.append(
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": digest,
                    "size": len(body),
                    "platform": {"architecture": img.architecture, "os": img.os},
                }
            )
        doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
        return self.manifest(repo, tag, doc, OCI_INDEX)
