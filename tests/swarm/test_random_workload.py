"""Random concurrent changes on every mount, with nodes cut off and healed meanwhile: all
mounts end with the same tree, and every file a writer saw acknowledged (closed without an
error, never removed by anyone) is still there with its content (or kept as a conflict copy).
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
from pathlib import Path

import pytest

from testkit import swarmctl
from testkit.observe import control, listing, wait_converged

pytestmark = [pytest.mark.mount, pytest.mark.slow]

STEPS = 250
DIRS = ["", "a", "b", "a/c"]


def workload(root: Path, seed: int, acknowledged: dict[str, bytes]) -> None:
    """Random creates, overwrites, mkdirs, renames, unlinks and xattrs under ``root``.
    Files named ``keep-*`` are only ever written once by their own writer and never removed
    or renamed: those must survive anywhere."""
    rng = random.Random(seed)
    for step in range(STEPS):
        d = root / rng.choice(DIRS)
        kind = rng.random()
        with contextlib.suppress(OSError):  # races with the other writers are expected
            if kind < 0.15:
                d.mkdir(parents=True, exist_ok=True)
            elif kind < 0.45:
                (d / f"shared-{rng.randrange(6)}").write_bytes(os.urandom(rng.randrange(5000)))
            elif kind < 0.6:
                names = [p for p in d.iterdir() if p.name.startswith("shared")]
                if names:
                    src = rng.choice(names)
                    os.rename(src, root / rng.choice(DIRS) / f"shared-{rng.randrange(6)}")
            elif kind < 0.7:
                names = [p for p in d.iterdir() if p.name.startswith("shared") and p.is_file()]
                if names:
                    rng.choice(names).unlink()
            elif kind < 0.8:
                names = [p for p in d.iterdir() if p.is_file()]
                if names:
                    os.setxattr(rng.choice(names), "user.step", b"%d" % step)
            else:
                data = b"seed %d step %d\n" % (seed, step)
                path = root / f"keep-{seed}-{step}"
                path.write_bytes(data)
                acknowledged[path.name] = data


def test_random_concurrent_changes_with_partitions_converge(tmp_path: Path) -> None:
    with swarmctl.running_swarm(tmp_path / "swarm", 3) as nodes:
        for n in nodes[:1]:
            for sub in ("a", "b", "a/c"):
                (n.mountpoint / sub).mkdir(parents=True, exist_ok=True)
        wait_converged([n.state for n in nodes])
        acknowledged: list[dict[str, bytes]] = [{} for _ in nodes]
        writers = [
            threading.Thread(target=workload, args=(n.mountpoint, i, acknowledged[i]))
            for i, n in enumerate(nodes)
        ]
        for w in writers:
            w.start()
        rng = random.Random(7)
        cut = None
        while any(w.is_alive() for w in writers):  # cut one node off, heal, cut another...
            if cut is not None:
                control(cut.state, "isolate", {"on": False})
            cut = rng.choice(nodes)
            control(cut.state, "isolate", {"on": True})
            for w in writers:
                w.join(0.3)
        control(cut.state, "isolate", {"on": False})
        wait_converged([n.state for n in nodes], timeout=60)
        trees = [listing(n.mountpoint) for n in nodes]
        assert trees[0] == trees[1] == trees[2]
        for acked in acknowledged:
            for name, data in acked.items():
                assert (nodes[0].mountpoint / name).read_bytes() == data
