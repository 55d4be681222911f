"""An overlay upper directory as a layer: tar entries by the OCI rules, reproducible, and
stored so that the unpacked layer is the very tree the blob unpacks to."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from registry.runtime.errors import BuildFailure
from registry.runtime.layerdiff import commit_upper
from registry.runtime.store import Store
from registry.runtime.unpack import read_layer_info, unpack_layer
from runtime.runner import ROOT

pytestmark = pytest.mark.requires(ROOT, "whiteouts and trusted xattrs need root")
CAP = b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"


def make_upper(root: Path) -> Path:
    """What a RUN could leave: new, changed and deleted entries of every kind."""
    upper = root / "upper"
    (upper / "etc").mkdir(parents=True)
    (upper / "etc" / "conf").write_text("conf\n")
    os.chown(upper / "etc" / "conf", 1000, 50)
    os.chmod(upper / "etc" / "conf", 0o640)
    os.mknod(upper / "etc" / "removed", stat.S_IFCHR | 0o600, os.makedev(0, 0))
    (upper / "opaque").mkdir()
    os.setxattr(upper / "opaque", "trusted.overlay.opaque", b"y")
    os.setxattr(upper / "etc", "trusted.overlay.origin", b"\x00fake")
    (upper / "opaque" / "fresh").write_text("fresh")
    (upper / "bin").mkdir()
    (upper / "bin" / "tool").write_bytes(b"\x7fELF tool")
    os.chmod(upper / "bin" / "tool", 0o4755)
    os.setxattr(upper / "bin" / "tool", "security.capability", CAP)
    os.setxattr(upper / "bin" / "tool", "user.note", b"kept")
    os.link(upper / "bin" / "tool", upper / "bin" / "alias")
    (upper / "bin" / "sh").symlink_to("busybox")
    os.mkfifo(upper / "pipe", 0o600)
    os.mknod(upper / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    for path in sorted(upper.rglob("*"), reverse=True):
        os.utime(path, (1_700_000_000, 1_700_000_000), follow_symlinks=False)
    return upper


def entries(store: Store, digest: str) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(store.blob_path(digest).read_bytes()))
                      ) as tar:
        return tar.getmembers()


def test_upper_becomes_a_layer_by_the_oci_rules(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    result = commit_upper(store, make_upper(tmp_path))
    assert result is not None
    members = {m.name: m for m in entries(store, result.digest)}
    assert list(members) == [
        "bin", "bin/alias", "bin/sh", "bin/tool", "etc", "etc/conf", "etc/.wh.removed", "null",
        "opaque", "opaque/.wh..wh..opq", "opaque/fresh", "pipe"]
    alias, tool = members["bin/alias"], members["bin/tool"]
    assert alias.isreg() and tool.islnk() and tool.linkname == "bin/alias"
    assert alias.mode == 0o4755 and alias.mtime == 1_700_000_000
    assert alias.pax_headers["SCHILY.xattr.security.capability"].encode(
        "utf-8", "surrogateescape") == CAP
    assert alias.pax_headers["SCHILY.xattr.user.note"] == "kept"
    assert not any("trusted" in k for m in members.values() for k in m.pax_headers)
    conf = members["etc/conf"]
    assert (conf.uid, conf.gid, conf.mode, conf.uname, conf.gname) == (1000, 50, 0o640, "", "")
    whiteout = members["etc/.wh.removed"]
    assert whiteout.isreg() and whiteout.size == 0 and whiteout.mode == 0o600
    assert members["opaque/.wh..wh..opq"].isreg()
    assert members["bin/sh"].issym() and members["bin/sh"].linkname == "busybox"
    assert members["pipe"].isfifo() and members["null"].ischr()
    assert (members["null"].devmajor, members["null"].devminor) == (1, 3)

    info = read_layer_info(store.layer_dir(result.diff_id))
    assert info.whiteouts == ["etc/removed"] and info.opaque_dirs == ["opaque"]
    fs = store.layer_dir(result.diff_id) / "fs"
    assert os.getxattr(fs / "opaque", "trusted.overlay.opaque") == b"y"
    assert "trusted.overlay.origin" not in os.listxattr(fs / "etc")
    assert not (tmp_path / "upper").exists()

    # the blob unpacks (by the hostile-layer rules) to the same tree and the same diff id
    again, diff_id = unpack_layer(store.blob_path(result.digest), tmp_path / "unpacked")
    assert diff_id == result.diff_id and again.whiteouts == info.whiteouts
    assert tree(tmp_path / "unpacked" / "fs") == tree(fs)


def tree(root: Path) -> dict[str, tuple[int, int, int, int, bytes]]:
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        data = path.read_bytes() if stat.S_ISREG(st.st_mode) else b""
        marker = stat.S_ISCHR(st.st_mode) and st.st_rdev == 0  # a whiteout: no time of its own
        times = 0 if marker else int(st.st_mtime)
        out[str(path.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, times, data)
    return out


def test_same_tree_same_layer_and_nothing_is_no_layer(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    first = commit_upper(store, make_upper(tmp_path / "one"))
    second = commit_upper(store, make_upper(tmp_path / "two"))
    assert first is not None and second is not None
    assert (first.diff_id, first.digest) == (second.diff_id, second.digest)
    assert len(store.layer_ids()) == 1
    (tmp_path / "empty").mkdir()
    assert commit_upper(store, tmp_path / "empty") is None


def test_overlay_renames_that_a_layer_cannot_say_are_refused(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "moved").mkdir(parents=True)
    os.setxattr(upper / "moved", "trusted.overlay.redirect", b"/old")
    with pytest.raises(BuildFailure, match="redirect_dir"):
        commit_upper(Store(tmp_path / "store"), upper)
