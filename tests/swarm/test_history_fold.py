"""History does not grow forever: what every node has seen is folded, unlinked files are
collected, the state directory returns near its starting size; a node that joins after the
fold receives a snapshot plus the tail."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from dhtfs.trust import pki
from testkit.mounting import Mount
from testkit.observe import control, dir_size, listing, member_options, wait_converged
from testkit.wait import wait_until

pytestmark = [pytest.mark.mount, pytest.mark.slow]

FILES = 20_000
MIB = 1024 * 1024


@contextlib.contextmanager
def mounts(tmp: Path, names: list[str], *, seeds: list[Mount] = ()) -> Iterator[list[Mount]]:
    """Mounts of one swarm (CA in tmp/ca) that fold every second, each bootstrapping to the
    ones before it and to ``seeds``; always stopped afterwards."""
    ca = tmp / "ca"
    if not ca.exists():
        pki.init_ca(ca)
    started: list[Mount] = []
    try:
        for i, name in enumerate(names):
            peers = [*seeds, *started]
            options = [*member_options(ca, name, tmp / name),
                       f"listen=127.0.0.{70 + len(list(tmp.glob('*-state'))) + i}:0",
                       "fold_interval=1"]
            if peers:
                addrs = "+".join(control(p.state, "status")["listen"] for p in peers)
                options.append(f"bootstrap={addrs}")
            started.append(Mount(tmp / f"{name}-mnt", tmp / f"{name}-state", options).start())
        yield started
    finally:
        for m in started:
            m.close()


def unfolded(m: Mount) -> int:
    return control(m.state, "oplog")["unfolded"]


def test_write_and_delete_many_files_leaves_the_state_near_its_start(tmp_path: Path) -> None:
    with mounts(tmp_path, ["a", "b"]) as (a, b):
        start = [dir_size(m.state) for m in (a, b)]
        root = a.mountpoint / "many"
        root.mkdir()
        for i in range(FILES):
            (root / f"f{i}").write_bytes(os.urandom(64) + b"%d" % i)
        wait_converged([a.state, b.state], timeout=120)
        grown = [dir_size(m.state) for m in (a, b)]
        for i in range(FILES):
            (root / f"f{i}").unlink()
        root.rmdir()
        wait_converged([a.state, b.state], timeout=120)
        for m in (a, b):
            wait_until(lambda m=m: unfolded(m) == 0, f"{m.state.name} to fold", 60)
            control(m.state, "gc", {"grace": 0})
        end = [dir_size(m.state) for m in (a, b)]
        for s, g, e in zip(start, grown, end, strict=True):
            assert g > s + 10 * MIB  # the files took room while they lived
            assert e < s + 2 * MIB, (s, g, e)  # and it came back


def test_a_node_joining_after_the_fold_gets_snapshot_and_tail(tmp_path: Path) -> None:
    with mounts(tmp_path, ["a", "b"]) as (a, b):
        for i in range(300):
            (a.mountpoint / f"early-{i}").write_bytes(b"early %d\n" % i)
        (b.mountpoint / "from-b").write_bytes(b"b")
        for i in range(100):
            (a.mountpoint / f"early-{i}").unlink()
        wait_converged([a.state, b.state])
        wait_until(lambda: unfolded(a) == 0 and unfolded(b) == 0, "a and b to fold")
        (a.mountpoint / "tail").write_bytes(b"after the fold")  # an unfolded op
        with mounts(tmp_path, ["c"], seeds=[a]) as (c,):
            # All but the tail was folded away on a and b: c has it from a snapshot.
            assert listing(c.mountpoint) == listing(a.mountpoint)
            assert (c.mountpoint / "early-150").read_bytes() == b"early 150\n"
            wait_converged([a.state, b.state, c.state])
            (c.mountpoint / "from-c").write_bytes(b"c")
            wait_until(lambda: (b.mountpoint / "from-c").exists(), "c's file on b")
