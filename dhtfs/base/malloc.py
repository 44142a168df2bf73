"""glibc malloc tuning for processes that move megabyte-sized buffers.

pyfuse3 hands every write request over as a fresh ``bytes`` object, and blocks are sealed,
sent and received as fresh megabyte buffers. With glibc's defaults those are either mmap'd
(above the 128 KiB threshold) or trimmed from the top of the heap as soon as they are freed,
so the next buffer page-faults its memory in again: for a 256 MiB write, 130,000+ faults and
about a third of the daemon's CPU time. Raising the mmap and trim thresholds keeps freed
buffers in the heap for reuse. The cost: up to TRIM_THRESHOLD of free heap stays resident.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # allocations below this come from the heap
TRIM_THRESHOLD = 128 * 1024 * 1024  # free heap kept for reuse before returning it to the OS


def tune_malloc() -> bool:
    """Apply the thresholds above; False (and no change) where the libc has no mallopt."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.debug("no mallopt in this libc: malloc left at its defaults")
        return False
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
    return ok
