"""Layer unpacking: OCI layer rules, and crafted tars that try to write outside."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from registry.runtime.errors import LayerRejected
from registry.runtime.unpack import read_layer_info, symlink_escapes, unpack_layer
from runtime.imaging import (
    Entry,
    Layer,
    directory,
    file,
    hardlink,
    sha256,
    symlink,
    tar_bytes,
)

ROOT = os.geteuid() == 0


def unpack(
    tmp_path: Path, entries: list[Entry], compression: str = "none", privileged: bool | None = None
) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    layer = Layer(tar_bytes(entries), compression)
    blob = tmp_path / "blob"
    blob.write_bytes(layer.blob)
    dest = tmp_path / "layer"
    _, diff_id = unpack_layer(blob, dest, privileged)
    assert diff_id == sha256(layer.tar)
    return dest


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_compressions_unpack_to_the_same_tree_and_diff_id(tmp_path: Path, compression: str) -> None:
    dest = unpack(tmp_path, [directory("etc"), file("etc/motd", "hello\n")], compression)
    assert (dest / "fs/etc/motd").read_text() == "hello\n"


def test_modes_links_and_metadata(tmp_path: Path) -> None:
    dest = unpack(
        tmp_path,
        [
            directory("bin", 0o755),
            file("bin/tool", b"#!x", 0o4755, uid=12, gid=34),
            hardlink("bin/tool2", "bin/tool"),
            symlink("bin/sh", "/bin/tool"),
            directory("ro", 0o555),
            file("ro/inside", "x", 0o400),
            Entry("pipe", "fifo", mode=0o600),
        ],
    )
    fs = dest / "fs"
    st = os.lstat(fs / "bin/tool")
    assert os.readlink(fs / "bin/sh") == "/bin/tool"
    assert os.lstat(fs / "bin/tool2").st_ino == st.st_ino
    assert stat.S_IMODE(os.lstat(fs / "ro").st_mode) == 0o555
    assert (fs / "ro/inside").read_text() == "x"
    assert stat.S_ISFIFO(os.lstat(fs / "pipe").st_mode)
    assert int(os.lstat(fs / "bin").st_mtime) == 1_700_000_000
    if ROOT:
        assert stat.S_IMODE(st.st_mode) == 0o4755
        assert (st.st_uid, st.st_gid) == (12, 34)


@pytest.mark.skipif(not ROOT, reason="devices and ownership need root")
def test_devices_only_when_privileged(tmp_path: Path) -> None:
    dev = Entry("dev/null", "chr", mode=0o666, devmajor=1, devminor=3)
    dest = unpack(tmp_path / "a", [directory("dev"), dev], privileged=True)
    st = os.lstat(dest / "fs/dev/null")
    assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1
    dest = unpack(tmp_path / "b", [directory("dev"), dev], privileged=False)
    assert not os.path.lexists(dest / "fs/dev/null")
    assert read_layer_info(dest).skipped == ["dev/null"]


def test_whiteouts_and_opaque_dirs_are_recorded(tmp_path: Path) -> None:
    dest = unpack(
        tmp_path,
        [
            directory("etc"),
            file("etc/.wh.gone"),
            directory("var"),
            file("var/.wh..wh..opq"),
            file("var/kept", "k"),
            file(".wh..wh.plnk"),
        ],
    )
    info = read_layer_info(dest)
    assert info.whiteouts == ["etc/gone"]
    assert info.opaque_dirs == ["var"]
    fs = dest / "fs"
    assert not os.path.lexists(fs / "etc/.wh.gone")
    assert not os.path.lexists(fs / "var/.wh..wh..opq")
    if ROOT:  # overlayfs markers
        st = os.lstat(fs / "etc/gone")
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
        assert os.getxattr(fs / "var", "trusted.overlay.opaque") == b"y"


def test_later_entries_replace_earlier_ones(tmp_path: Path) -> None:
    dest = unpack(
        tmp_path,
        [file("a", "one"), file("a", "two"), directory("d"), file("d/x"), file("d", "now a file")],
    )
    assert (dest / "fs/a").read_text() == "two"
    assert (dest / "fs/d").read_text() == "now a file"


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([file("../escape", "x")], "'..'"),
        ([file("a/../../escape", "x")], "'..'"),
        ([file("/abs-escape", "x")], "absolute"),
        ([symlink("link", "/OUTSIDE"), file("link/evil", "x")], "symlink"),
        ([symlink("link", "../../../../OUTSIDE")], "outside"),
        ([directory("d"), symlink("d/up", "../../OUTSIDE")], "outside"),
        ([hardlink("hl", "../OUTSIDE/target")], "'..'"),
        ([hardlink("hl", "/etc/passwd")], "absolute"),
        ([hardlink("hl", "missing")], "no such entry"),
        ([symlink("s", "/OUTSIDE"), hardlink("hl", "s/target")], "outside the layer"),
        ([file(".wh...", "")], "names no file"),
    ],
)
def test_crafted_layers_are_refused_and_write_nothing_outside(
    tmp_path: Path, entries: list[Entry], message: str
) -> None:
    outside = tmp_path / "OUTSIDE"
    outside.mkdir()
    (outside / "target").write_text("precious")
    # Relative names resolve from the layer dir; the absolute ones point at OUTSIDE too.
    fixed = [
        Entry(
            e.name.replace("/OUTSIDE", str(outside)),
            e.kind,
            e.data,
            e.target.replace("/OUTSIDE", str(outside)) if e.target.startswith("/") else e.target,
            e.mode,
        )
        for e in entries
    ]
    workdir = tmp_path / "deep" / "er"
    workdir.mkdir(parents=True)
    with pytest.raises(LayerRejected, match=message):
        unpack(workdir, fixed)
    assert sorted(os.listdir(outside)) == ["target"]
    assert (outside / "target").read_text() == "precious"
    assert os.stat(outside / "target").st_nlink == 1
    assert not (tmp_path / "abs-escape").exists() and not Path("/abs-escape").exists()
    assert not (tmp_path / "deep" / "escape").exists()


def test_absolute_symlinks_inside_the_container_are_fine(tmp_path: Path) -> None:
    dest = unpack(tmp_path, [symlink("etc-link", "/etc"), symlink("rel", "a/../b")])
    assert os.readlink(dest / "fs/etc-link") == "/etc"


def test_overlay_xattrs_in_a_layer_are_not_applied(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("d")
        info.type = tarfile.DIRTYPE
        info.pax_headers = {"SCHILY.xattr.trusted.overlay.opaque": "y"}
        tar.addfile(info)
    blob = tmp_path / "blob"
    blob.write_bytes(buf.getvalue())
    unpack_layer(blob, tmp_path / "layer")
    with pytest.raises(OSError):
        os.getxattr(tmp_path / "layer/fs/d", "trusted.overlay.opaque")


def test_garbage_is_refused(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"\x1f\x8b" + os.urandom(200))
    with pytest.raises(LayerRejected):
        unpack_layer(blob, tmp_path / "layer")


def test_symlink_escape_rule() -> None:
    assert symlink_escapes(("a",), "../x")
    assert not symlink_escapes(("a", "b"), "../x")
    assert not symlink_escapes(("a",), "/../../x")
