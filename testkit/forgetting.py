"""The steps of the forget experiment: with one member away, files are made and deleted on a
live node; the live state directories keep every op and block while the member is
remembered, and shrink back once it is forgotten. tests/swarm/test_forget.py checks it with
2,000 files; scripts/forget_figure.py measures it with 20,000.
"""

from __future__ import annotations

import os
from pathlib import Path

from testkit import swarmctl
from testkit.observe import control, dir_size, wait_converged


def cut_off_last(root: Path, nodes: list[swarmctl.NodeInfo]) -> list[int]:
    """Wait until ``nodes`` converge, SIGKILL the last one; the others' state sizes (bytes)."""
    wait_converged([n.state for n in nodes])
    swarmctl.kill(root, nodes[-1].name)
    return [dir_size(n.state) for n in nodes[:-1]]


def create_and_delete(directory: Path, files: int) -> None:
    """Make ``directory`` with ``files`` small files, delete them all, remove it."""
    directory.mkdir()
    for i in range(files):
        (directory / f"f{i}").write_bytes(os.urandom(64) + b"%d" % i)
    for i in range(files):
        (directory / f"f{i}").unlink()
    directory.rmdir()


def collect(states: list[Path]) -> list[int]:
    """Collect garbage now (no grace) on every node; their state sizes (bytes)."""
    for s in states:
        control(s, "gc", {"grace": 0})
    return [dir_size(s) for s in states]


def fold_and_collect(states: list[Path]) -> list[int]:
    """Fold what can be folded, then ``collect``."""
    for s in states:
        control(s, "fold")
    return collect(states)
