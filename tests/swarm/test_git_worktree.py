"""A working tree made on one node is one git can use at once on another (issue 18): after a
commit of ~200 files on node A, ``git status`` on node B finds it clean from ``lstat`` alone.

git compares each file's ``st_ino``, mtime, ctime, size, uid and gid with what its index
recorded (on A); a file whose stat data differ is read and hashed again. So B must report the
same inode number (``dhtfs.fs.inodes.stable_number``) and the same times and size as A. The
proof that B read no file: ``git diff-files`` (which compares stat data only and lists every
file whose stat data differ, without reading it) lists nothing, and B's FUSE ``read`` and
``open`` requests during ``git status`` (``dhtfs_fuse_op_seconds_count``, ``-o metrics``)
stay far below one per file (git still reads its own index, HEAD and tree objects).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from testkit import swarmctl
from testkit.observe import control
from testkit.wait import wait_until
from tests.swarm.test_metrics import scrape, value

pytestmark = [pytest.mark.mount, pytest.mark.slow]

FILES = 200
DIRS = 10
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "core.fsmonitor=false",
       "-c", "core.untrackedCache=false", "-c", "gc.auto=0"]


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run([*GIT, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          check=True)
    return done.stdout


def fuse_requests(state: Path, op: str) -> float:
    return value(scrape(state), "dhtfs_fuse_op_seconds_count", op=op, outcome="ok")


def tree_of(root: Path) -> dict[str, tuple[int, int, int]]:
    """path → (st_ino, st_mtime_ns, st_size) of every file under ``root``, .git included."""
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            out[os.path.relpath(os.path.join(dirpath, name), root)] = (
                st.st_ino, st.st_mtime_ns, st.st_size)
    return out


def test_git_status_on_another_node_needs_only_lstat(tmp_path: Path) -> None:
    with swarmctl.running_swarm(tmp_path / "swarm", 2, "metrics=127.0.0.1:0") as nodes:
        a, b = nodes
        wait_until(lambda: all(control(n.state, "status")["metrics"] for n in nodes),
                   "metrics endpoints")
        repo = a.mountpoint / "repo"
        repo.mkdir()
        git(repo, "init", "-q")
        # Files older than the index git writes below: none is "racily clean" (an entry whose
        # mtime is not older than the index is re-read by every later git status).
        past = time.time_ns() - 60 * 10**9
        for i in range(FILES):
            d = repo / f"d{i % DIRS}"
            d.mkdir(exist_ok=True)
            f = d / f"f{i}.txt"
            f.write_text(f"file {i}\n" * (1 + i % 7))
            os.utime(f, ns=(past, past))
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "files")
        assert git(repo, "status", "--porcelain") == ""
        seen_on_a = tree_of(repo)

        there = b.mountpoint / "repo"
        wait_until(lambda: there.is_dir() and {
            p: (m, s) for p, (_i, m, s) in tree_of(there).items()
        } == {p: (m, s) for p, (_i, m, s) in seen_on_a.items()},
            "node B to show A's tree, .git included", timeout=120)

        reads, opens = fuse_requests(b.state, "read"), fuse_requests(b.state, "open")
        assert git(there, "diff-files", "--name-only") == ""  # stat data alone match
        assert git(there, "status", "--porcelain") == ""
        read_requests = fuse_requests(b.state, "read") - reads
        open_requests = fuse_requests(b.state, "open") - opens
        print(f"git status on B: {open_requests:.0f} opens, {read_requests:.0f} reads")
        assert open_requests < FILES // 4, (open_requests, read_requests)
        assert read_requests < FILES // 4, (open_requests, read_requests)
        # A file's number is the same on both nodes.
        assert {p: i for p, (i, _m, _s) in tree_of(there).items() if ".git" not in p} == {
            p: i for p, (i, _m, _s) in seen_on_a.items() if ".git" not in p}
