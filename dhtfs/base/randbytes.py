"""Public random values (nonces, object and link IDs) from the kernel's CSPRNG, in blocks.

``os.urandom`` is one getrandom(2) system call per call, several per file written; this module
fetches 4 KiB at a time and hands it out in slices.

Invariants: every byte returned is kernel CSPRNG output returned once; buffers are per thread
(no lock); a process forked from this one starts with none (``os.register_at_fork``), so parent
and child never share a value. Not for keys: a buffer holds values before they are used, so
anything secret (master keys) still comes straight from ``os.urandom``.
"""

from __future__ import annotations

import os
import threading

BLOCK_BYTES = 4096


class _Buffer(threading.local):
    def __init__(self) -> None:
        self.data = b""
        self.pos = 0


_buffer = _Buffer()


def _forget_after_fork() -> None:
    global _buffer
    _buffer = _Buffer()


os.register_at_fork(after_in_child=_forget_after_fork)


def random_bytes(n: int) -> bytes:
    """``n`` fresh random bytes, as ``os.urandom(n)`` would give."""
    buf = _buffer
    start = buf.pos
    end = start + n
    if end > len(buf.data):
        if n > BLOCK_BYTES // 4:
            return os.urandom(n)
        buf.data = os.urandom(BLOCK_BYTES)
        start, end = 0, n
    buf.pos = end
    return buf.data[start:end]
