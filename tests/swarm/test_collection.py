"""Tier 5: blocks no live file version references are reclaimed on every storage node, the
headless one included (it asks a caught-up mount); referenced blocks, and the blocks of a file
still open for writing (renewed with HOLD), are kept. Real processes on 127.0.0.x."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from dhtfs.trust import pki
from testkit.mounting import Mount
from testkit.nodeproc import Swarm
from testkit.observe import blocks_of, control, holds, member_options, write_fsynced
from testkit.wait import wait_until

pytestmark = [pytest.mark.mount, pytest.mark.slow]
MIB = 1 << 20
GRACE = 2.0


def passes(state: Path) -> int:
    return int(control(state, "status")["collection"]["passes"])


def test_unreferenced_blocks_go_everywhere_referenced_and_open_ones_stay(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    pki.init_ca(ca)
    cert, key, node_id = pki.issue_node_cert(ca, "storage", tmp_path / "storage")
    headless = Swarm(tmp_path / "headless")
    mounts: list[Mount] = []
    try:
        h = headless.start(pki.Identity(ca / "ca.crt", cert, key, node_id), "127.0.0.30", [],
                           extra=["-o", f"gc_grace={GRACE}"])
        Swarm.wait([h])
        for name, ip in (("a", 31), ("b", 32)):
            mounts.append(Mount(tmp_path / f"{name}-mnt", tmp_path / f"{name}-state", options=[
                *member_options(ca, name, tmp_path / name), f"listen=127.0.0.{ip}:0",
                f"bootstrap={h.address}", f"gc_grace={GRACE}"]).start())
        a, b = mounts
        states = [h.state, a.state, b.state]
        wait_until(lambda: all(control(s, "status")["peers"] >= 2 for s in states), "peers")
        kept, gone = os.urandom(3 * MIB), os.urandom(3 * MIB)
        write_fsynced(a.mountpoint / "kept", kept)
        write_fsynced(a.mountpoint / "gone", gone)
        kept_blocks = blocks_of(a.mountpoint / "kept")
        gone_blocks = blocks_of(a.mountpoint / "gone")
        for block in kept_blocks + gone_blocks:  # R=3 on 3 nodes: on each of them
            assert all(holds(s, block) for s in states), block[:12]
        # b writes a file and keeps it open, unflushed: no op references its blocks (full
        # chunks, pushed to the replicas as they fill up), only b's HOLDs keep them.
        open_data = os.urandom(3 * MIB + 1000)
        open_blocks = [hashlib.sha256(open_data[i : i + MIB]).hexdigest()
                       for i in range(0, 3 * MIB, MIB)]
        with open(b.mountpoint / "open", "wb") as fh:
            fh.write(open_data)
            wait_until(lambda: all(holds(s, blk) for s in states for blk in open_blocks),
                       "the blocks of the open file's full chunks on every node")
            (a.mountpoint / "gone").unlink()
            wait_until(lambda: not any(holds(s, blk) for s in states for blk in gone_blocks),
                       "the deleted file's blocks reclaimed on every node", 90)
            # Several full passes later (each at least a grace period after the open file's
            # blocks were written), they are still everywhere.
            start = {s: passes(s) for s in states}
            wait_until(lambda: all(passes(s) >= start[s] + 4 for s in states),
                       "four more collection passes on every node", 90)
            for block in kept_blocks + open_blocks:
                assert all(holds(s, block) for s in states), block[:12]
        f = a.mountpoint / "open"
        wait_until(lambda: f.exists() and f.stat().st_size == len(open_data), "b's file on a")
        assert f.read_bytes() == open_data
        assert (b.mountpoint / "kept").read_bytes() == kept
        assert control(h.state, "status")["collection"]["reclaimed"] >= len(gone_blocks)
    finally:
        for m in mounts:
            m.close()
        headless.close()
