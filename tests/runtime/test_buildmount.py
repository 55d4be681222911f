"""Overlays mounted for build steps, in a throwaway mount namespace."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.runtime.buildmount import Overlay, in_overlays
from registry.runtime.errors import BuildFailure, RuntimeFailure
from runtime.runner import ROOT

pytestmark = pytest.mark.requires(ROOT, "mounting needs root")


def test_many_layers_with_long_paths_still_mount(tmp_path: Path) -> None:
    """Mount options end at a page: 70 lower dirs of ~90 characters each are named
    relative to their common folder, and all of them are seen."""
    base = tmp_path / ("layers-" + "x" * 40) / "sha256"
    lowers = []
    for index in range(70):
        fs = base / f"{index:064d}" / "fs"
        fs.mkdir(parents=True)
        (fs / f"file{index}").write_text(str(index))
        (fs / "top").write_text(str(index))
        lowers.append(fs)
    assert len(":".join(str(p) for p in lowers)) > 6000
    overlay = Overlay(lowers, tmp_path / "step")

    def look() -> None:
        root = overlay.rootfs
        names = sorted(p.name for p in root.iterdir())
        if (root / "top").read_text() != "69" or len(names) != 71:
            raise RuntimeFailure(f"wrong merged view: {names[:5]}..., top "
                                 f"{(root / 'top').read_text()}")
        (root / "written").write_text("upper")

    in_overlays([overlay], look)
    assert (overlay.upper / "written").read_text() == "upper"
    assert not (overlay.rootfs / "top").exists()  # unmounted with the helper's namespace


def test_a_failure_in_the_helper_comes_back_as_a_build_failure(tmp_path: Path) -> None:
    def fail() -> None:
        raise RuntimeFailure("the step's own message")

    with pytest.raises(BuildFailure, match=r"^the step's own message$"):
        in_overlays([Overlay([], tmp_path / "step")], fail)
