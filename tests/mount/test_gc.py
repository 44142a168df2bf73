"""Blocks that no file references any more are collected; shared (deduplicated) ones are not."""

from __future__ import annotations

import json
import os

import xattr

from testkit.mounting import Mount


def block_ids(path: os.PathLike) -> list[str]:
    return [c for c in json.loads(xattr.getxattr(str(path), "user.dhtfs.chunks")) if c]


def stored(mount: Mount) -> set[str]:
    root = mount.state / "chunks"
    return {d.name + f.name for d in root.iterdir() if d.is_dir() for f in d.iterdir()}


def test_deleted_file_blocks_are_collected_at_mount_shared_ones_kept(mount: Mount) -> None:
    mnt = mount.mountpoint
    shared = os.urandom(1024 * 1024)
    (mnt / "a").write_bytes(shared + os.urandom(1024 * 1024))
    (mnt / "b").write_bytes(shared)  # the same first chunk: stored once
    a_chunks, b_chunks = block_ids(mnt / "a"), block_ids(mnt / "b")
    assert a_chunks[0] == b_chunks[0]
    assert set(a_chunks) | set(b_chunks) <= stored(mount)
    (mnt / "a").unlink()
    assert mount.stop() == 0
    mount.start()
    left = stored(mount)
    assert a_chunks[1] not in left  # only the deleted file used it
    assert b_chunks[0] in left  # still used by b
    assert (mnt / "b").read_bytes() == shared
