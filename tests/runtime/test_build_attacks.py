"""A hostile build context, hostile archives and hostile base images, against the builder.

Canaries live in the test's own temporary folder: `canary/secret.txt` must never be read
into an image, `trap/` must stay empty, and nothing else of the machine is touched (links
to /etc are only ever read through, and must not even be that)."""

from __future__ import annotations

import io
import tarfile
import uuid
from pathlib import Path

import pytest

from registry.runtime.store import Store
from runtime.buildhelp import build, run_in, write_context
from runtime.imaging import (
    Image,
    Layer,
    Pusher,
    busybox_entries,
    directory,
    symlink,
    tar_bytes,
)
from runtime.runner import ROOT

from support.server import RegistryServer

pytestmark = pytest.mark.requires(ROOT, "building needs root")
SECRET = "the host's secret"


@pytest.fixture
def canaries(tmp_path: Path) -> tuple[Path, Path]:
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "secret.txt").write_text(SECRET)
    (canary / "passwd").write_text("evil:x:4242:4242::/:/bin/sh\n")
    (canary / "group").write_text("evil:x:4242:\n")
    trap = tmp_path / "trap"
    trap.mkdir()
    return canary, trap


@pytest.fixture
def hostile_base(registry_server: RegistryServer, pusher: Pusher,
                 canaries: tuple[Path, Path]) -> str:
    """Busybox whose /app, /src and account files are absolute links to host paths."""
    canary, trap = canaries
    name = f"attack/base-{uuid.uuid4().hex[:12]}"
    entries = [e for e in busybox_entries() if e.name not in ("etc/passwd", "etc/group")]
    entries += [symlink("app", str(trap)), symlink("src", str(canary)),
                symlink("etc/passwd", str(canary / "passwd")),
                symlink("etc/group", str(canary / "group"))]
    pusher.image(name, "v1", Image([Layer(tar_bytes(entries))],
                                   {"Env": ["PATH=/bin"], "Cmd": ["sh"]}))
    return f"{registry_server.host}/{name}:v1"


def assert_untouched(canaries: tuple[Path, Path]) -> None:
    canary, trap = canaries
    assert sorted(p.name for p in canary.iterdir()) == ["group", "passwd", "secret.txt"]
    assert (canary / "secret.txt").read_text() == SECRET
    assert list(trap.iterdir()) == []


@pytest.mark.parametrize("source", ["outside/secret.txt", "outside", "etc-link/passwd",
                                    "up/canary/secret.txt", "/../canary/secret.txt",
                                    "sub/../../canary/secret.txt"])
def test_context_sources_stay_in_the_context(
        source: str, hostile_base: str, store: Store, tmp_path: Path,
        canaries: tuple[Path, Path]) -> None:
    canary, _ = canaries
    context = write_context(tmp_path / "ctx", {
        "Dockerfile": f"FROM {hostile_base}\nCOPY {source} /stolen\n", "sub/x": "x"})
    (context / "outside").symlink_to(canary)
    (context / "etc-link").symlink_to("/etc")
    (context / "up").symlink_to("../../..")
    done = build(context)
    assert done.returncode == 1
    assert ("file not found in build context" in done.stderr
            or "forbidden path outside the build context" in done.stderr), done.stderr
    assert_untouched(canaries)


def test_symlinks_in_the_context_are_copied_as_links(
        hostile_base: str, store: Store, tmp_path: Path, canaries: tuple[Path, Path],
        registry_server: RegistryServer) -> None:
    canary, _ = canaries
    context = write_context(tmp_path / "ctx", {
        "Dockerfile": f"FROM {hostile_base}\nCOPY . /all/\nCOPY tree /tree/\n",
        "tree/plain": "plain"})
    (context / "outside").symlink_to(canary)
    (context / "tree" / "secret").symlink_to(canary / "secret.txt")
    ref = f"{registry_server.host}/attack/links:v1"
    done = build(context, "-t", ref)
    assert done.returncode == 0, done.stderr
    out = run_in(ref, "readlink /all/outside; readlink /tree/secret; "
                      "cat /tree/secret /all/outside/*; cat /tree/plain")
    assert out.stdout.splitlines() == [str(canary), str(canary / "secret.txt"), "plain"]
    assert SECRET not in out.stdout
    assert_untouched(canaries)


def evil_tar(kind: str, trap: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        def add(name: str, type_: bytes = tarfile.REGTYPE, link: str = "",
                data: bytes = b"pwned") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = type_, link
            info.size = len(data) if type_ == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if type_ == tarfile.REGTYPE else None)

        if kind == "dotdot":
            add("ok.txt")
            add("../escape.txt")
        elif kind == "absolute":
            add(str(trap / "abs.txt"))
        elif kind == "through-symlink":
            add("link", tarfile.SYMTYPE, str(trap))
            add("link/pwned")
        elif kind == "hardlink":
            add("hard", tarfile.LNKTYPE, "/etc/passwd")
        elif kind == "whiteout":
            add(".wh.bin")
    return buffer.getvalue()


@pytest.mark.parametrize(("kind", "message"), [
    ("dotdot", "contains '..'"),
    ("absolute", "absolute path"),
    ("through-symlink", "goes through the symlink"),
    ("hardlink", "absolute path"),
    ("whiteout", "whiteout entries"),
])
def test_hostile_archives_are_refused(
        kind: str, message: str, hostile_base: str, store: Store, tmp_path: Path,
        canaries: tuple[Path, Path]) -> None:
    _, trap = canaries
    context = write_context(tmp_path / "ctx", {
        "Dockerfile": f"FROM {hostile_base}\nADD evil.tar /unpacked/\n",
        "evil.tar": evil_tar(kind, trap)})
    done = build(context)
    assert done.returncode == 1
    assert "ADD evil.tar" in done.stderr and message in done.stderr, done.stderr
    assert not (tmp_path / "escape.txt").exists()
    assert not list(store.root.rglob("escape.txt"))
    assert_untouched(canaries)


def test_destinations_through_image_symlinks_stay_in_the_image(
        hostile_base: str, store: Store, tmp_path: Path, canaries: tuple[Path, Path],
        registry_server: RegistryServer) -> None:
    _, trap = canaries
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        info = tarfile.TarInfo("from-archive")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"arch"))
    context = write_context(tmp_path / "ctx", {
        "Dockerfile": f"FROM {hostile_base}\nCOPY file.txt /app/file.txt\nCOPY dir /app/dir/\n"
                      "ADD a.tar /app/\nWORKDIR /app/work\nRUN echo ran > made\n",
        "file.txt": "copied", "dir/inner": "inner", "a.tar": archive.getvalue()})
    ref = f"{registry_server.host}/attack/dest:v1"
    done = build(context, "-t", ref)
    assert done.returncode == 0, done.stderr
    assert_untouched(canaries)
    out = run_in(ref, f"cat /app/file.txt /app/dir/inner /app/from-archive {trap}/work/made")
    assert out.stdout == "copiedinnerarchran\n"


def test_chown_reads_the_images_own_account_files(
        hostile_base: str, store: Store, tmp_path: Path, canaries: tuple[Path, Path]) -> None:
    """/etc/passwd is a link to a host file naming `evil`: resolved inside the image, it
    names nothing, so `--chown=evil` finds no such user."""
    context = write_context(tmp_path / "ctx", {
        "Dockerfile": f"FROM {hostile_base}\nCOPY --chown=evil f /f\n", "f": "x"})
    done = build(context)
    assert done.returncode == 1 and "no such user: evil" in done.stderr, done.stderr
    assert_untouched(canaries)


def test_copy_from_an_image_resolves_inside_that_image(
        hostile_base: str, store: Store, tmp_path: Path, canaries: tuple[Path, Path]) -> None:
    context = write_context(tmp_path / "ctx", {
        "Dockerfile": f"FROM {hostile_base} AS evil\nFROM {hostile_base}\n"
                      "COPY --from=evil /src/secret.txt /stolen\n"})
    done = build(context)
    assert done.returncode == 1
    assert "file not found in source image" in done.stderr, done.stderr
    again = write_context(tmp_path / "ctx2", {
        "Dockerfile": f"FROM {hostile_base}\nCOPY --from={hostile_base} /src /stolen/\n"})
    assert build(again).returncode == 1
    assert_untouched(canaries)


def test_an_image_directory_in_the_way_is_replaced_not_followed(
        registry_server: RegistryServer, pusher: Pusher, store: Store, tmp_path: Path,
        canaries: tuple[Path, Path]) -> None:
    """The image has /dest/sub -> trap; the copied folder has a real sub/: the link is
    replaced by a folder, as Docker's untar does, and nothing lands in the trap."""
    _, trap = canaries
    entries = [*busybox_entries(), directory("dest"), symlink("dest/sub", str(trap))]
    pusher.image("attack/inway", "v1", Image([Layer(tar_bytes(entries))], {"Cmd": ["sh"]}))
    context = write_context(tmp_path / "ctx", {
        "Dockerfile": f"FROM {registry_server.host}/attack/inway:v1\nCOPY tree /dest/\n",
        "tree/sub/file": "in the image"})
    ref = f"{registry_server.host}/attack/inway-built:v1"
    done = build(context, "-t", ref)
    assert done.returncode == 0, done.stderr
    assert_untouched(canaries)
    out = run_in(ref, "test -L /dest/sub || cat /dest/sub/file")
    assert out.stdout == "in the image"
