"""Tier 5: blocks written on a mount reach the R XOR-closest nodes (real processes on
127.0.0.x): ``fsync`` returns only once they are there; a writer killed right after
``close`` resumes the replication when it restarts, and the file is then readable from the
replicas alone; an ``fsync`` that cannot reach the replicas fails with EIO by its deadline.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from dhtfs.trust import pki
from testkit import swarmctl
from testkit.env import VENV_BIN
from testkit.mounting import Mount
from testkit.observe import (
    blocks_of,
    by_name,
    closest,
    control,
    holds,
    member_options,
    write_fsynced,
)
from testkit.wait import wait_until

pytestmark = [pytest.mark.mount, pytest.mark.slow]
MIB = 1 << 20


def fsynced_file(
    writer: swarmctl.NodeInfo, peers: int, size: int
) -> tuple[Path, bytes, list[str]]:
    """Once ``writer`` knows ``peers`` peers: a file of ``size`` random bytes written and
    fsynced on it; → its path, its bytes and its blocks."""
    wait_until(lambda: control(writer.state, "status")["peers"] >= peers, "the peers known")
    path = writer.mountpoint / "f"
    data = os.urandom(size)
    write_fsynced(path, data)
    return path, data, blocks_of(path)


def backlog(state: Path) -> int:
    return int(control(state, "status")["replication"]["pending"])


def test_fsync_returns_once_each_block_is_on_its_closest_nodes(tmp_path: Path) -> None:
    with swarmctl.running_swarm(tmp_path / "swarm", 5) as nodes:
        writer = nodes[0]
        wait_until(lambda: control(writer.state, "status")["peers"] >= 4, "every peer known")
        f = writer.mountpoint / "f"
        data = os.urandom(3 * MIB)
        with open(f, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
            # Checked at once, no waiting: fsync has returned, so the copies are there.
            blocks = blocks_of(f)
            assert len(blocks) == 3
            for block in blocks:
                want = closest(nodes, block, 3)
                have = sorted(n.name for n in nodes if holds(n.state, block))
                assert set(want) <= set(have), (block[:12], want, have)
                assert set(have) <= set(want) | {writer.name}, (block[:12], want, have)
        assert backlog(writer.state) == 0
        # What the xattrs tell: each block's providers (the 3 closest among them) and count.
        providers = dict(json.loads(os.getxattr(f, "user.dhtfs.providers")))
        replicas = dict(json.loads(os.getxattr(f, "user.dhtfs.replicas")))
        assert sorted(providers) == sorted(replicas) == blocks
        for block in blocks:
            named = {row[0] for row in providers[block]}
            ids = {by_name(nodes)[name].node_id for name in closest(nodes, block, 3)}
            assert ids <= named, block[:12]
            assert replicas[block] == len(named) >= 3
        reader = nodes[4].mountpoint / "f"
        wait_until(lambda: reader.exists() and reader.stat().st_size == len(data),
                   "the file on another node")
        assert reader.read_bytes() == data


def test_writer_killed_after_close_resumes_replication(tmp_path: Path) -> None:
    root = tmp_path / "swarm"
    with swarmctl.running_swarm(root, 4, "replicas=2") as nodes:
        writer, other = nodes[0], nodes[1]
        wait_until(lambda: control(writer.state, "status")["peers"] >= 3, "every peer known")
        (writer.mountpoint / "d").mkdir()
        wait_until(lambda: (other.mountpoint / "d").is_dir(), "the directory on node1")
        # Cut the writer off so its blocks cannot leave before the kill.
        control(writer.state, "isolate", {"on": True})
        data = os.urandom(4 * MIB + 123)
        (writer.mountpoint / "d" / "f").write_bytes(data)  # close() returns: local durability
        assert backlog(writer.state) >= 4
        swarmctl.kill(root, writer.name)
        assert (writer.state / "replication.backlog").stat().st_size > 0
        nodes = swarmctl.restart(root)  # a new process: no longer cut off
        writer = by_name(nodes)["node0"]
        wait_until(lambda: backlog(writer.state) == 0, "the resumed replication")
        blocks = blocks_of(writer.mountpoint / "d" / "f")
        for block in blocks:
            want = closest(nodes, block, 2)
            assert all(holds(by_name(nodes)[name].state, block) for name in want), block[:12]
        # The writer goes; the file is read from the replicas.
        swarmctl.kill(root, writer.name)
        f = other.mountpoint / "d" / "f"
        wait_until(lambda: f.exists() and f.stat().st_size == len(data), "the file on node1")
        assert f.read_bytes() == data


def test_fsync_fails_with_eio_when_replicas_are_out_of_reach(tmp_path: Path) -> None:
    with swarmctl.running_swarm(tmp_path / "swarm", 3, "replication_deadline=3") as nodes:
        writer = nodes[0]
        # The writer knows both peers, then is cut off from them.
        wait_until(lambda: control(writer.state, "status")["peers"] >= 2, "both peers known")
        control(writer.state, "isolate", {"on": True})
        f = writer.mountpoint / "f"
        data = os.urandom(MIB + 5)
        fd = os.open(f, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            began = time.monotonic()
            with pytest.raises(OSError) as failed:
                os.fsync(fd)
            assert failed.value.errno == errno.EIO
            assert time.monotonic() - began < 30  # its deadline, not a hang
            assert f.read_bytes() == data  # safe here all along
            control(writer.state, "isolate", {"on": False})
            wait_until(lambda: control(writer.state, "status")["peers"] >= 2, "the swarm again")
            os.fsync(fd)  # the same blocks, now reachable: the retry succeeds
        finally:
            os.close(fd)
        assert backlog(writer.state) == 0
        assert "did not reach their replicas" in (writer.state / "dhtfs.log").read_text()


def pending_in_backlog_file(path: Path) -> int:
    """Blocks the backlog file still names (``+ID`` records without a later ``-ID``)."""
    blob = path.read_bytes()
    pending: set[bytes] = set()
    for i in range(0, len(blob) - len(blob) % 33, 33):
        (pending.add if blob[i : i + 1] == b"+" else pending.discard)(blob[i + 1 : i + 33])
    return len(pending)


def test_unmount_waits_for_the_backlog(tmp_path: Path) -> None:
    """``umount.dhtfs`` right after writing: the daemon replicates what is left before it
    exits, so nothing waits in the backlog and every block is on its closest nodes."""
    with swarmctl.running_swarm(tmp_path / "swarm", 3, "replicas=2") as nodes:
        writer = nodes[0]
        wait_until(lambda: control(writer.state, "status")["peers"] >= 2, "both peers known")
        f = writer.mountpoint / "f"
        f.write_bytes(os.urandom(8 * MIB))
        blocks = blocks_of(f)
        res = subprocess.run([str(VENV_BIN / "umount.dhtfs"), str(writer.mountpoint)],
                             capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        assert pending_in_backlog_file(writer.state / "replication.backlog") == 0
        for block in blocks:
            for name in closest(nodes, block, 2):
                assert holds(by_name(nodes)[name].state, block), (block[:12], name)


def test_dhtfs_sync_waits_for_the_backlog_and_says_when_it_cannot(tmp_path: Path) -> None:
    """``dhtfs sync DIR`` returns once the mount's backlog is empty; cut off, it fails by its
    ``--timeout`` with one line; ``dhtfs sync FILE`` fsyncs the file; off a dhtfs mount it
    says so."""
    dhtfs = str(VENV_BIN / "dhtfs")
    with swarmctl.running_swarm(tmp_path / "swarm", 3, "replication_deadline=2") as nodes:
        writer = nodes[0]
        wait_until(lambda: control(writer.state, "status")["peers"] >= 2, "both peers known")
        control(writer.state, "isolate", {"on": True})
        (writer.mountpoint / "f").write_bytes(os.urandom(2 * MIB))
        res = subprocess.run([dhtfs, "sync", "--timeout", "2", str(writer.mountpoint)],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 1
        assert "still wait for their replicas" in res.stderr and res.stderr.count("\n") == 1
        control(writer.state, "isolate", {"on": False})
        wait_until(lambda: control(writer.state, "status")["peers"] >= 2, "the swarm again")
        res = subprocess.run([dhtfs, "sync", str(writer.mountpoint)], capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        assert backlog(writer.state) == 0
        res = subprocess.run([dhtfs, "sync", str(writer.mountpoint / "f")],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
    res = subprocess.run([dhtfs, "sync", str(tmp_path)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 1 and "not on a dhtfs mount" in res.stderr


def test_reads_are_counted_by_source_and_come_from_holders(tmp_path: Path) -> None:
    """A node reads the blocks it holds from its store and fetches the others (verified)
    from nodes that hold them; its control socket counts each read by where it came from."""
    with swarmctl.running_swarm(tmp_path / "swarm", 4, "replicas=2") as nodes:
        writer = nodes[0]
        _, data, blocks = fsynced_file(writer, 3, 6 * MIB)
        # The reader: the node (not the writer) that holds the fewest of them.
        reader = min(nodes[1:], key=lambda n: sum(holds(n.state, b) for b in blocks))
        missing = [b for b in blocks if not holds(reader.state, b)]
        assert missing, "every node holds every block: nothing to fetch"
        f = reader.mountpoint / "f"
        wait_until(lambda: f.exists() and f.stat().st_size == len(data), "the file on the reader")
        assert f.read_bytes() == data
        reads = control(reader.state, "status")["reads"]
        assert reads["remote"] == len(missing)
        assert reads["local"] == len(blocks) - len(missing)
        assert sum(reads["by_source"].values()) == len(missing)
        holders = {n.node_id for n in nodes for b in missing if holds(n.state, b)} - {
            reader.node_id
        }
        assert set(reads["by_source"]) <= holders | {"inline"}


def test_a_full_backlog_holds_writers_back_for_a_bounded_time(tmp_path: Path) -> None:
    """Cut off, a writer that fills ``replication_backlog`` waits (backpressure), but only
    up to ``replication_deadline`` per write, then writes on (logged): nothing hangs, nothing
    is lost, and the backlog drains once the peers are back."""
    options = "replication_backlog=2M,replication_deadline=2"
    with swarmctl.running_swarm(tmp_path / "swarm", 3, options) as nodes:
        writer = nodes[0]
        wait_until(lambda: control(writer.state, "status")["peers"] >= 2, "both peers known")
        control(writer.state, "isolate", {"on": True})
        # One file after another: each close stores its block, so by the fourth the
        # backlog (3 MiB) is over its 2 MiB and that file's first write waits.
        files = {f"f{i}": os.urandom(MIB) for i in range(5)}
        for name, data in files.items():
            (writer.mountpoint / name).write_bytes(data)
        log_text = (writer.state / "dhtfs.log").read_text()
        assert "replication backlog still over" in log_text
        status = control(writer.state, "status")["replication"]
        assert status["pending"] >= 5 and status["pending_bytes"] >= 5 * MIB
        control(writer.state, "isolate", {"on": False})
        wait_until(lambda: backlog(writer.state) == 0, "the backlog to drain", 90)
        for name, data in files.items():
            path = nodes[1].mountpoint / name
            wait_until(lambda p=path: p.exists() and p.stat().st_size == MIB, f"{name} on node1")
            assert path.read_bytes() == data


def test_lost_holders_are_replaced_by_repair(tmp_path: Path) -> None:
    """5 nodes, R=3: SIGKILL two nodes; every file still reads byte-identical, and repair
    brings every block back to 3 copies on its 3 closest live nodes (the live node that
    lacked some of them receives them, pushed by the holders)."""
    root = tmp_path / "swarm"
    with swarmctl.running_swarm(root, 5, "repair_interval=1") as nodes:
        writer = nodes[0]
        _, data, blocks = fsynced_file(writer, 4, 8 * MIB)
        # Keep alive the writer, the node holding the fewest blocks (it must receive the
        # rest) and one more to read with; kill the two others.
        others = sorted(nodes[1:], key=lambda n: sum(holds(n.state, b) for b in blocks))
        short, reader, gone = others[0], others[1], others[2:]
        lacking = [b for b in blocks if not holds(short.state, b)]
        assert lacking, "the node holding the fewest blocks holds them all"
        for node in gone:
            swarmctl.kill(root, node.name)
        f = reader.mountpoint / "f"
        wait_until(lambda: f.exists() and f.stat().st_size == len(data), "the file on a live node")
        assert f.read_bytes() == data
        wait_until(lambda: all(holds(short.state, b) for b in blocks),
                   "repair to give the short node every block", 120)
        assert (short.mountpoint / "f").read_bytes() == data


def test_client_only_mounts_store_nothing_for_others(tmp_path: Path) -> None:
    """``-o storage=false``: a client mount writes through the swarm (fsync: every block on
    its 3 closest storage nodes, never on a client), is in no storage node's routing table,
    and another client reads the file byte-identical, every block from the swarm."""
    root = tmp_path / "swarm"
    with swarmctl.running_swarm(root, 3) as nodes:
        seeds = "bootstrap=" + "+".join(n.address for n in nodes)
        clients = [
            Mount(tmp_path / f"c{i}-mnt", tmp_path / f"c{i}-state", options=[
                *member_options(root / "ca", f"client{i}", tmp_path / f"c{i}"),
                f"listen=127.0.0.{40 + i}:0", seeds, "storage=false"])
            for i in range(2)
        ]
        try:
            for client in clients:
                client.start()
            writer, reader = clients
            wait_until(lambda: control(writer.state, "status")["peers"] >= 3, "the swarm")
            data = os.urandom(5 * MIB)
            write_fsynced(writer.mountpoint / "f", data)
            blocks = blocks_of(writer.mountpoint / "f")
            for block in blocks:
                assert all(holds(n.state, block) for n in nodes), block[:12]
            assert all(control(n.state, "status")["peers"] == 2 for n in nodes)
            f = reader.mountpoint / "f"
            # A client pulls the ops it lacks (nobody pushes to it): wait for this version.
            wait_until(lambda: f.exists() and f.stat().st_size == len(data),
                       "the written version on the other client")
            assert f.read_bytes() == data
            reads = control(reader.state, "status")["reads"]
            assert reads["remote"] == len(blocks) and reads["local"] == 0
            assert set(reads["by_source"]) <= {n.node_id for n in nodes}
        finally:
            for client in clients:
                client.close()


def test_a_client_dialed_at_its_real_port_is_still_no_replica(tmp_path: Path) -> None:
    """A client-only mount listens (so a bootstrap address can reach it) but advertises port
    0. A storage node that dials it at its real port (``dhtfs swarm up`` restarts a node with
    every recorded address as bootstrap) must still not route to it nor place blocks on it:
    it did, and a client's full disk then failed other nodes' fsyncs."""
    root = tmp_path / "swarm"
    with swarmctl.running_swarm(root, 3, node_options={"node2": "storage=false"}) as nodes:
        storage0, storage1, client = nodes
        swarmctl.kill(root, "node0")
        swarmctl.restart(root)  # node0 bootstraps to node1 and to the client's real port
        wait_until(lambda: control(storage0.state, "status")["peers"] >= 1, "node0 rejoined")
        peers = {p[0].hex() if isinstance(p[0], bytes) else p[0]
                 for p in control(storage0.state, "peers")["peers"]}
        assert client.node_id not in peers and storage1.node_id in peers, peers
        data = os.urandom(3 * MIB)
        write_fsynced(storage0.mountpoint / "f", data)
        for block in blocks_of(storage0.mountpoint / "f"):
            assert holds(storage1.state, block) and not holds(client.state, block), block[:12]


def test_a_restarted_node_whose_peers_are_out_of_reach_is_not_alone(tmp_path: Path) -> None:
    """A node restarted while the peers it knew are down must not call its own copy enough:
    its fsync fails with EIO by the deadline (the same rule as a node cut off mid-run)."""
    ca = tmp_path / "ca"
    pki.init_ca(ca)
    mounts = [
        Mount(tmp_path / f"{n}-mnt", tmp_path / f"{n}-state", options=[
            *member_options(ca, n, tmp_path / n), f"listen=127.0.0.{50 + i}:0",
            "replication_deadline=3"])
        for i, n in enumerate("abc")
    ]
    a, b, c = mounts
    try:
        b.start()
        c.start()
        peers = [control(m.state, "status")["listen"] for m in (b, c)]
        a.options.append("bootstrap=" + "+".join(peers))
        a.start()
        wait_until(lambda: control(a.state, "status")["peers"] >= 2, "a knows b and c")
        assert a.stop() == 0
        assert b.stop() == 0 and c.stop() == 0
        a.start()
        assert control(a.state, "status")["peers"] == 0
        fd = os.open(a.mountpoint / "f", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.write(fd, os.urandom(MIB))
            with pytest.raises(OSError) as failed:
                os.fsync(fd)
            assert failed.value.errno == errno.EIO
        finally:
            os.close(fd)
    finally:
        for m in mounts:
            m.close()
