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


# The same blocks, freed; the resident size (KiB) with them kept, then given back.
GIVE_BACK = """
from registry.allocator import give_back_freed, keep_freed_buffers
assert keep_freed_buffers()
def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4
blocks = [bytearray(4 * 1024 * 1024) for _ in range(8)]
for block in blocks:
    block[::4096] = b"x" * len(block[::4096])
del blocks
kept = resident()
assert give_back_freed()
print(kept, resident())
"""


def test_freed_blocks_are_given_back_on_request() -> None:
    """Kept for the next upload, the blocks still count in the worker's memory until it is
    idle: then `give_back_freed` returns them."""
    done = subprocess.run(
        [sys.executable, "-c", GIVE_BACK], capture_output=True, text=True, check=True,
        cwd=REPO_ROOT,
    )  # fmt: skip
    kept, after = (int(x) for x in done.stdout.split())
    assert kept - after > 24 * 1024, (kept, after)
