"""The chaos harness (testkit/chaos): a short run against a real swarm, and its checker
on hand-made histories.

The run: 2 storage mounts and 1 client-only mount, each running seeded random ops on one
small shared tree, one node SIGKILLed and remounted, one cut off and healed, one disk filled
and freed; asserts zero unexpected errors, convergence to one tree, and no acknowledged loss.
Replay a failure with ``.venv/bin/python scripts/chaos.py --seed S --ops 150 --faults ...``
(the seed and the command are in the failure message). ``DHTFS_CHAOS_SEED`` picks another seed.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from dhtfs.commands.swarmdir import Node
from dhtfs.commands.swarmdir import is_client as _is_client
from dhtfs.commands.swarmdir import join_targets as _join_targets
from testkit.chaos import ChaosConfig, run_chaos
from testkit.chaos.checker import classify, stable_writes
from testkit.chaos.faults import Window, schedule
from testkit.chaos.model import Op, touches
from testkit.chaos.workload import specs

SEED = int(os.environ.get("DHTFS_CHAOS_SEED", "1"))


@pytest.mark.slow
@pytest.mark.mount
def test_chaos_short_run_no_unexpected_error_converges_loses_nothing(tmp_path: Path) -> None:
    config = ChaosConfig(seed=SEED, nodes=3, ops=150,
                         faults={"kill": 1, "partition": 1, "disk": 1})
    report = run_chaos(config, tmp_path)
    summary = "\n".join([*report.details(), *report.figures()])
    replay = (f"replay: .venv/bin/python scripts/chaos.py --seed {SEED} --ops 150 "
              f"--faults kill=1,partition=1,disk=1")
    assert not report.unexpected, f"{summary}\n{replay}"
    assert not report.harness_errors, f"{summary}\n{replay}"
    assert report.converge_seconds is not None, f"{summary}\n{replay}"
    assert not report.losses, f"{summary}\n{replay}"
    assert len(report.ops) == 3 * 150, summary
    assert {w.kind for w in report.windows} == {"kill", "partition", "disk"}, summary


# -- the checker on hand-made histories (no mount) --------------------------------------------


def op(node: int, index: int, kind: str, *paths: str, start: float, end: float,
       err: int | None = None, effect: str = "done", **kw) -> Op:
    return Op(node, index, kind, paths, start, end, err, "", effect, **kw)


def test_classify_allows_race_errnos_and_excuses_only_inside_fault_windows() -> None:
    kill = Window("kill", 1, 10.0, 15.0)
    disk = Window("disk", 2, 20.0, 25.0)
    cut = Window("partition", 0, 30.0, 70.0)
    windows = [kill, disk, cut]
    assert classify(op(0, 0, "rename", "a", "b", start=1, end=2, err=errno.ENOTEMPTY),
                    windows, 30) == "race"
    assert classify(op(0, 0, "rename", "a", "b", start=1, end=2, err=errno.ESTALE),
                    windows, 30) == "unexpected"
    # read may not return EEXIST (the set is per op, not the union)
    assert classify(op(0, 0, "read", "f0", start=1, end=2, err=errno.EEXIST),
                    windows, 30) == "unexpected"
    assert classify(op(1, 0, "read", "f0", start=14, end=16, err=errno.ENOTCONN),
                    windows, 30).startswith("excused")
    assert classify(op(1, 0, "read", "f0", start=16, end=17, err=errno.ENOTCONN),
                    windows, 30) == "unexpected"
    assert classify(op(2, 0, "overwrite", "f0", start=24, end=26, err=errno.ENOSPC),
                    windows, 30).startswith("excused")
    assert classify(op(1, 0, "overwrite", "f0", start=24, end=26, err=errno.ENOSPC),
                    windows, 30) == "unexpected"
    # EIO on a node cut off: only once the deadline has passed
    assert classify(op(0, 0, "read", "f0", start=31, end=62, err=errno.EIO),
                    windows, 30).startswith("excused")
    assert classify(op(0, 0, "read", "f0", start=31, end=32, err=errno.EIO),
                    windows, 30) == "unexpected"
    assert classify(op(1, 0, "read", "f0", start=31, end=62, err=errno.EIO),
                    windows, 30) == "unexpected"


def test_touches_covers_the_path_and_its_ancestors_only_for_changes() -> None:
    assert touches(op(0, 0, "rename", "a", "c", start=0, end=1), "a/f0")
    assert touches(op(0, 0, "rename", "b/f1", "a/f0", start=0, end=1), "a/f0")
    assert not touches(op(0, 0, "rename", "ab", "c", start=0, end=1), "a/f0")
    assert not touches(op(0, 0, "chmod", "a/f0", start=0, end=1), "a/f0")
    assert not touches(op(0, 0, "unlink", "a/f0", start=0, end=1, err=errno.ENOENT,
                          effect="none"), "a/f0")
    assert touches(op(0, 0, "overwrite", "a/f0", start=0, end=1, err=errno.ENOSPC,
                      effect="unknown"), "a/f0")


def test_stable_writes_need_every_other_change_seen_before_the_fsync() -> None:
    w = op(0, 5, "overwrite", "a/f0", start=10, end=11, fsynced=(3, "x"), view={1: 7})
    seen = op(1, 2, "rename", "b", "a", start=5, end=6, seq=7)       # node0 had applied it
    unseen = op(1, 3, "rename", "b", "a", start=5, end=6, seq=8)     # node0 had not
    later = op(2, 0, "unlink", "a/f0", start=12, end=13)
    unrelated = op(2, 1, "unlink", "b/f0", start=12, end=13)
    assert stable_writes([w, seen, unrelated], [], 3.0) == [w]
    assert stable_writes([w, unseen], [], 3.0) == []
    assert stable_writes([w, later], [], 3.0) == []
    # no vector samples: the margin rule, voided by a fault in between
    old = op(1, 1, "unlink", "a/f0", start=1, end=2)
    assert stable_writes([w, old], [], 3.0) == [w]
    assert stable_writes([w, old], [Window("partition", 2, 3.0, 4.0)], 3.0) == []
    assert stable_writes([w, op(1, 1, "unlink", "a/f0", start=8, end=9)], [], 3.0) == []


def test_a_seed_fixes_the_ops_and_the_faults() -> None:
    assert specs(7, 1, 50) == specs(7, 1, 50)
    assert specs(7, 1, 50) != specs(8, 1, 50)
    counts = {"kill": 1, "partition": 2, "disk": 1}
    assert schedule(7, 3, counts, (2, 5), [1, 2]) == schedule(7, 3, counts, (2, 5), [1, 2])
    faults = schedule(7, 3, counts, (2, 5), [1, 2])
    assert sorted(f.kind for f in faults) == ["disk", "kill", "partition", "partition"]
    assert all(f.node in (1, 2) for f in faults if f.kind == "disk")


def test_swarm_join_targets_count_storage_peers_only(tmp_path: Path) -> None:
    nodes = [Node.at(tmp_path, i) for i in range(3)]
    options = {"node0": ["replicas=2"], "node1": [], "node2": ["replicas=2", "storage=false"]}
    assert _is_client(options["node2"]) and not _is_client(options["node0"])
    assert not _is_client(["storage=false", "storage=true"])
    assert _join_targets(nodes, options) == {"node0": 1, "node1": 1, "node2": 2}
    assert _join_targets(nodes, {n.name: [] for n in nodes}) == {n.name: 2 for n in nodes}
