"""Tier 5: Prometheus metrics (``-o metrics=127.0.0.1:0``) scraped during a real workload on
two loopback nodes: the counters the workload must move do move."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from testkit import swarmctl
from testkit.nodeproc import Swarm
from testkit.observe import control, write_fsynced
from testkit.wait import wait_until

pytestmark = [pytest.mark.mount, pytest.mark.slow]
MIB = 1 << 20


def scrape(state: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the node's /metrics: (name, sorted labels) → value."""
    address = control(state, "status")["metrics"]
    assert address.startswith("127.0.0.1:"), address
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_with_the_workload(tmp_path: Path) -> None:
    with swarmctl.running_swarm(tmp_path / "swarm", 2, "metrics=127.0.0.1:0") as nodes:
        writer, reader = nodes
        wait_until(lambda: all(control(n.state, "status")["peers"] >= 1 for n in nodes)
                   and all(control(n.state, "status")["metrics"] for n in nodes),
                   "peers and metrics endpoints")
        w0, r0 = scrape(writer.state), scrape(reader.state)
        data = os.urandom(3 * MIB)
        write_fsynced(writer.mountpoint / "f", data)
        f = reader.mountpoint / "f"
        wait_until(lambda: f.exists() and f.stat().st_size == len(data), "f on the reader")
        assert f.read_bytes() == data
        w1, r1 = scrape(writer.state), scrape(reader.state)

        def grew(before: dict, after: dict, name: str, by: float = 1, **labels: str) -> None:
            old, new = value(before, name, **labels), value(after, name, **labels)
            assert new - old >= by, (name, labels, old, new)

        grew(w0, w1, "dhtfs_rpc_seconds_count", method="PUT_CHUNK", outcome="ok", by=3)
        grew(w0, w1, "dhtfs_fuse_op_seconds_count", op="write", outcome="ok")
        grew(w0, w1, "dhtfs_fuse_op_seconds_count", op="fsync", outcome="ok")
        grew(w0, w1, "dhtfs_blocks_total", event="stored", by=3)
        grew(w0, w1, "dhtfs_blocks_total", event="replicated", by=3)
        grew(r0, r1, "dhtfs_fuse_op_seconds_count", op="read", outcome="ok")
        grew(w0, w1, "dhtfs_lookup_hops_count")  # placing the blocks looked up their closest
        grew(w0, w1, "dhtfs_network_bytes_total", direction="sent", by=3 * MIB)
        grew(r0, r1, "dhtfs_network_bytes_total", direction="received", by=1)
        assert value(w1, "dhtfs_peers") >= 1
        assert value(w1, "dhtfs_replication_backlog_blocks") == 0
        # The reader holds the blocks too (R=3 on 2 nodes): it read them locally.
        assert value(r1, "dhtfs_fuse_op_seconds_bucket", op="read", outcome="ok", le="+Inf") \
            == value(r1, "dhtfs_fuse_op_seconds_count", op="read", outcome="ok")


def test_a_headless_node_serves_metrics_too(tmp_path: Path) -> None:
    from dhtfs.trust import pki

    ca = tmp_path / "ca"
    pki.init_ca(ca)
    swarm = Swarm(tmp_path / "nodes")
    try:
        idents = []
        for name in ("n0", "n1"):
            cert, key, node_id = pki.issue_node_cert(ca, name, tmp_path / name)
            idents.append(pki.Identity(ca / "ca.crt", cert, key, node_id))
        first = swarm.start(idents[0], "127.0.0.70", [])
        Swarm.wait([first])
        # The second joins through the first: its bootstrap lookups are RPCs of its own.
        second = swarm.start(idents[1], "127.0.0.71", [first.address],
                             extra=["-o", "metrics=127.0.0.1:0"])
        Swarm.wait([second])
        wait_until(lambda: control(second.state, "status")["peers"] >= 1, "the first node")
        samples = scrape(second.state)
        assert value(samples, "dhtfs_peers") >= 1
        assert sum(v for (name, _), v in samples.items()
                   if name == "dhtfs_rpc_seconds_count") >= 1
    finally:
        swarm.close()
