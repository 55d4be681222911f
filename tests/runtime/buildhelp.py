"""Helpers for the build tests: a busybox base in our registry, contexts, running `build`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from registry.runtime.images import ImageIndex, ImageRecord
from registry.runtime.store import Store
from runtime.imaging import Image, Layer, Pusher, busybox_entries, tar_bytes
from runtime.runner import cli

EXTRA_APPLETS = ("sort", "find", "xargs", "chmod", "mv", "sha256sum", "cut", "sed", "touch",
                 "basename", "uname", "date", "du", "tar", "mknod")


def push_base(pusher: Pusher, repo: str = "build/busybox", tag: str = "latest") -> str:
    """A busybox image (with `app` user 1000 and groups) pushed to `repo:tag`."""
    layer = Layer(tar_bytes(busybox_entries(EXTRA_APPLETS)))
    config = {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
              "Cmd": ["sh"]}
    pusher.image(repo, tag, Image([layer], config))
    return f"{repo}:{tag}"


def write_context(folder: Path, files: dict[str, str | bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return folder


def build(context: Path, *flags: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return cli("build", *flags, str(context), timeout=timeout)


def config_of(store: Store, ref: str) -> tuple[ImageRecord, dict[str, Any]]:
    record = ImageIndex(store).get(ref)
    return record, json.loads(store.read_blob(record.id))


def run_in(image: str, script: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return cli("run", "--rm", "--network", "none", "--entrypoint", "", *flags, image,
               "sh", "-c", script, timeout=120)
