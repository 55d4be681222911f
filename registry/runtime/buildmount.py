"""Work on a stage's filesystem without a container: an overlay in a throwaway namespace.

A COPY, an ADD or a WORKDIR changes the stage's files from the builder itself: a forked
child enters a mount namespace of its own (so nothing it mounts is seen by the host, and
everything goes when it exits), mounts the overlay of the stage's layers with the step's
own upper directory, and calls the step's function with that root. `--from` sources are
mounted alongside, read-only. The parent gets the child's `RuntimeFailure` back as a
`BuildFailure` with the same message.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from registry.runtime import linux
from registry.runtime.errors import BuildFailure, RuntimeFailure
from registry.runtime.rootfs import mount_overlay

MAX_REPORT = 64 * 1024


@dataclass(frozen=True)
class Overlay:
    """Layer folders (`fs/`, bottom first) to mount at `folder/rootfs`, with `folder/upper`
    taking the writes."""

    lowers: Sequence[Path]
    folder: Path
    readonly: bool = False

    @property
    def rootfs(self) -> Path:
        return self.folder / "rootfs"

    @property
    def upper(self) -> Path:
        return self.folder / "upper"

    def mount(self) -> None:
        empty = self.folder / "empty"
        empty.mkdir(mode=0o755, parents=True, exist_ok=True)
        stack = list(reversed(self.lowers)) or [empty]
        flags = linux.MS_RDONLY if self.readonly else 0
        mount_overlay(stack, self.upper, self.folder / "work", self.rootfs, flags)


def in_overlays(overlays: Sequence[Overlay], work: Callable[[], None]) -> None:
    """Mount `overlays` in a child's own mount namespace, run `work` there, and wait."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child leaves by os._exit
        code = 1
        try:
            os.close(read_fd)
            linux.unshare(linux.CLONE_NEWNS)
            linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
            for overlay in overlays:
                overlay.mount()
            work()
            code = 0
        except RuntimeFailure as exc:
            _write(write_fd, exc.message)
        except OSError as exc:
            _write(write_fd, f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
        except BaseException as exc:
            _write(write_fd, f"unexpected failure: {exc!r}")
        finally:
            os._exit(code)
    os.close(write_fd)
    chunks = []
    try:
        while chunk := os.read(read_fd, MAX_REPORT):
            chunks.append(chunk)
    finally:
        os.close(read_fd)
        _, status = os.waitpid(pid, 0)
    message = b"".join(chunks).decode("utf-8", "replace")
    if message or os.waitstatus_to_exitcode(status) != 0:
        raise BuildFailure(message or f"the step's helper exited with status {status}")


def _write(fd: int, message: str) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, message.encode()[:MAX_REPORT])
