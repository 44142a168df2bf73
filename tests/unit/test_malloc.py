"""``tune_malloc``: freed megabyte buffers are reused instead of faulted in again."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import os, resource, sys
from dhtfs.base.malloc import tune_malloc
if sys.argv[1] == "tuned":
    assert tune_malloc()
src = os.urandom(1 << 20)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
before = faults()
for _ in range(50):
    live = [bytes(bytearray(src)) for _ in range(8)]  # 8 MiB in flight, as sealing does
    del live
print(faults() - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    )
    return int(out.stdout)


def test_tuned_malloc_reuses_freed_megabyte_buffers() -> None:
    default, tuned = _faults("default"), _faults("tuned")
    pages_moved = 50 * 8 * 2 * 256  # 50 rounds x 8 buffers x (bytearray + bytes) x 256 pages
    assert default > pages_moved // 4  # glibc's defaults fault most of them in again
    assert tuned < pages_moved // 20
