"""Tier 5: the disk cache (``-o cache_disk``) on real processes (127.0.0.x).

A client mount that reads and writes more than its cache holds stays under the limit and still
reads every byte right; storage nodes with a small cache evict only extra copies, so every
block stays on each of its R XOR-closest nodes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from testkit import swarmctl
from testkit.mounting import Mount
from testkit.observe import blocks_of, closest, control, holds, member_options, write_fsynced
from testkit.wait import wait_until

pytestmark = [pytest.mark.mount, pytest.mark.slow]
MIB = 1 << 20


def stored_bytes(state: Path) -> int:
    """Bytes of the block files in a state directory's store."""
    root = state / "chunks"
    return sum(f.stat().st_size for d in root.iterdir() if d.is_dir() for f in d.iterdir())


def cache_status(state: Path) -> dict:
    return control(state, "status")["cache"]


def test_a_client_cache_stays_under_its_limit_reading_and_writing_more(tmp_path: Path) -> None:
    root = tmp_path / "swarm"
    capacity = 6 * MIB
    with swarmctl.running_swarm(root, 3) as nodes:
        seeds = "bootstrap=" + "+".join(n.address for n in nodes)
        client = Mount(tmp_path / "c-mnt", tmp_path / "c-state", options=[
            *member_options(root / "ca", "client", tmp_path / "c"),
            "listen=127.0.0.40:0", seeds, "storage=false", f"cache_disk={capacity}"])
        try:
            client.start()
            wait_until(lambda: control(client.state, "status")["peers"] >= 3, "the swarm")
            writer = nodes[0]
            data = os.urandom(24 * MIB)
            write_fsynced(writer.mountpoint / "big", data)
            f = client.mountpoint / "big"
            wait_until(lambda: f.exists() and f.stat().st_size == len(data),
                       "the written version on the client")
            assert f.read_bytes() == data
            # Fetched blocks are written to the cache when the node is idle, and evicted by
            # a task of their own: the store comes back under the limit shortly after.
            wait_until(lambda: cache_status(client.state)["evicted"] > 0
                       and cache_status(client.state)["bytes"] <= capacity
                       and stored_bytes(client.state) <= capacity,
                       "eviction down to the limit")
            # Read again: evicted blocks come back from the swarm, byte-identical.
            assert f.read_bytes() == data
            # The client's own writes: once replicated, its copies are cache too.
            mine = os.urandom(16 * MIB)
            write_fsynced(client.mountpoint / "mine", mine)
            wait_until(lambda: cache_status(client.state)["bytes"] <= capacity
                       and stored_bytes(client.state) <= capacity,
                       "the client's written blocks evicted down to the limit")
            for block in blocks_of(client.mountpoint / "mine"):
                assert all(holds(n.state, block) for n in nodes), block[:12]
            assert (writer.mountpoint / "mine").read_bytes() == mine
            assert (client.mountpoint / "mine").read_bytes() == mine
        finally:
            client.close()


def test_storage_nodes_never_evict_what_they_hold_for_the_swarm(tmp_path: Path) -> None:
    capacity = 3 * MIB
    with swarmctl.running_swarm(tmp_path / "swarm", 4,
                                f"replicas=2,cache_disk={capacity}") as nodes:
        writer, reader = nodes[0], nodes[3]
        wait_until(lambda: all(control(n.state, "status")["peers"] >= 3 for n in nodes),
                   "every peer known")
        data = os.urandom(16 * MIB)
        write_fsynced(writer.mountpoint / "f", data)
        blocks = blocks_of(writer.mountpoint / "f")
        f = reader.mountpoint / "f"
        wait_until(lambda: f.exists() and f.stat().st_size == len(data), "the version")
        assert f.read_bytes() == data
        for n in (writer, reader):  # the writer's extra copies, the reader's fetched ones
            wait_until(lambda n=n: cache_status(n.state)["evicted"] > 0
                       and cache_status(n.state)["bytes"] <= capacity, f"eviction on {n.name}")
        for block in blocks:
            for name in closest(nodes, block, 2):
                assert holds(swarmctl_node(nodes, name).state, block), (block[:12], name)
        assert f.read_bytes() == data


def swarmctl_node(nodes: list[swarmctl.NodeInfo], name: str) -> swarmctl.NodeInfo:
    return next(n for n in nodes if n.name == name)
