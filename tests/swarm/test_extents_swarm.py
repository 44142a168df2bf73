"""Tier 5: extents across real mounting nodes (``dhtfs swarm up``, one process each).

Small writes into a big file reach the other mounts as small changes and read back
byte-identical there; two nodes that change different parts of one file concurrently both
keep their bytes in the file (the earlier version also kept as a conflict copy), the same on
every node; compaction on the writer is seen by the others without changing a byte.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from testkit import swarmctl
from testkit.observe import control, listing, wait_converged
from testkit.wait import wait_until

pytestmark = [pytest.mark.mount, pytest.mark.slow]
MIB = 1 << 20


def read(path: Path) -> bytes:
    """The file's bytes from the daemon, not the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        out = bytearray()
        while part := os.read(fd, MIB):
            out += part
        return bytes(out)
    finally:
        os.close(fd)


def test_small_writes_and_compaction_reach_other_mounts(tmp_path: Path) -> None:
    rng = random.Random(9)
    with swarmctl.running_swarm(tmp_path / "swarm", 2) as nodes:
        a, b = (n.mountpoint for n in nodes)
        shadow = bytearray(rng.randbytes(4 * MIB))
        (a / "big").write_bytes(shadow)
        wait_until(lambda: read(b / "big") == shadow, "the file on b")
        fd = os.open(a / "big", os.O_WRONLY)
        try:
            for i in range(300):
                off = rng.randrange(0, 4 * MIB - 4096)
                data = rng.randbytes(rng.choice([1, 512, 4096]))
                os.pwrite(fd, data, off)
                shadow[off : off + len(data)] = data
                if i % 10 == 0:
                    os.fsync(fd)  # a version per fsync: many small pieces per chunk
        finally:
            os.close(fd)
        wait_until(lambda: read(b / "big") == shadow, "the small writes on b")
        # The writer compacts the crowded chunks; b reads the same bytes through new blocks.
        def compacted() -> bool:
            extents = json.loads(os.getxattr(b / "big", "user.dhtfs.extents"))
            return len(extents) <= 4
        wait_until(compacted, "the compaction to reach b")
        assert read(b / "big") == shadow == read(a / "big")
        wait_converged([n.state for n in nodes])


def test_concurrent_writes_to_different_parts_both_survive(tmp_path: Path) -> None:
    with swarmctl.running_swarm(tmp_path / "swarm", 3) as nodes:
        a, b, c = (n.mountpoint for n in nodes)
        base = bytes(range(256)) * 4096  # 1 MiB
        (a / "f").write_bytes(base)
        wait_until(lambda: all(read(m / "f") == base for m in (b, c)), "the base everywhere")
        control(nodes[1].state, "isolate", {"on": True})
        with open(a / "f", "r+b") as fh:
            fh.seek(1000)
            fh.write(b"A" * 5000)
        with open(b / "f", "r+b") as fh:
            fh.seek(500_000)
            fh.write(b"B" * 7000)
        control(nodes[1].state, "isolate", {"on": False})
        wait_converged([n.state for n in nodes])
        both = bytearray(base)
        both[1000:6000] = b"A" * 5000
        both[500_000:507_000] = b"B" * 7000
        only_a, only_b = bytearray(base), bytearray(base)
        only_a[1000:6000] = b"A" * 5000
        only_b[500_000:507_000] = b"B" * 7000
        for m in (a, b, c):
            assert read(m / "f") == both, m
            copies = [p for p in m.iterdir() if p.name.startswith("f.conflict-")]
            assert len(copies) == 1 and read(copies[0]) in (only_a, only_b)
        assert listing(a) == listing(b) == listing(c)
