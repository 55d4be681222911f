"""`registry.allocator`: freed upload-sized buffers stay in the heap for the next request."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

# Eight 4 MiB blocks alive at once, then all freed, five times over (an upload's blocks,
# then a pause between chunks); prints the page faults taken from the second pass on.
PROGRAM = """
import resource, sys
from registry.allocator import keep_freed_buffers
if sys.argv[1] == "tuned":
    assert keep_freed_buffers()
def one_pass():
    blocks = [bytearray(4 * 1024 * 1024) for _ in range(8)]
    for block in blocks:
        block[::4096] = b"x" * len(block[::4096])  # touch every page
    del blocks
one_pass()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    one_pass()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, mode],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
    )
    return int(done.stdout.strip())


def test_freed_blocks_are_reused_without_new_page_faults() -> None:
    default, tuned = _faults("default"), _faults("tuned")
    # By default each pass maps (or regrows) and faults in its 32 MiB again: 8,192 pages.
    assert default > 5 * 4_000
    assert tuned < default / 10
