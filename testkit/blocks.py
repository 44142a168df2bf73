"""Where a file's blocks are, seen from outside a running swarm: the block ids a file
refers to (its ``user.dhtfs.extents`` xattr), whether a node's state directory holds one, the
nodes XOR-closest to it, and a write that returns once replicated (fsync).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from testkit import swarmctl


def blocks_of(path: Path) -> list[str]:
    return sorted({e[2] for e in json.loads(os.getxattr(path, "user.dhtfs.extents"))})


def holds(state: Path, block: str) -> bool:
    return (state / "chunks" / block[:2] / block[2:]).is_file()


def closest(nodes: list[swarmctl.NodeInfo], block: str, r: int) -> list[str]:
    key = int(block, 16)
    assert all(n.node_id for n in nodes)
    return sorted(
        (n.name for n in nodes), key=lambda name: int(by_name(nodes)[name].node_id, 16) ^ key
    )[:r]


def by_name(nodes: list[swarmctl.NodeInfo]) -> dict[str, swarmctl.NodeInfo]:
    return {n.name: n for n in nodes}


def write_fsynced(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and fsync it (on a swarm mount: replicated on return)."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
