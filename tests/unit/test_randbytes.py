"""Buffered CSPRNG output: right sizes, never handed out twice, not shared across fork."""

from __future__ import annotations

import os

from dhtfs.base.randbytes import BLOCK_BYTES, random_bytes


def test_sizes_and_no_repeats_across_blocks() -> None:
    values = [random_bytes(n) for _ in range(2000) for n in (12, 16, 32)]
    assert [len(v) for v in values[:3]] == [12, 16, 32]
    assert len(set(values)) == len(values)  # > 100 KiB handed out: many refills, no repeat
    assert len(random_bytes(BLOCK_BYTES)) == BLOCK_BYTES  # larger than a slice: straight


def test_a_forked_child_does_not_reuse_the_parents_buffer() -> None:
    random_bytes(16)  # the parent now holds a partly used block
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its next value, exit at once
        os.write(write_end, random_bytes(16))
        os._exit(0)
    os.close(write_end)
    child_value = os.read(read_end, 16)
    os.close(read_end)
    os.waitpid(pid, 0)
    assert len(child_value) == 16 and child_value != random_bytes(16)
