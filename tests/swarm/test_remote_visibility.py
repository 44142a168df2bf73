"""Every kind of change made on one mount shows on another at once, although the kernel
keeps entries and attributes for ``ENTRY_TIMEOUT`` / ``ATTR_TIMEOUT`` (10 s) without asking:
the remote op invalidates what the kernel cached (``dhtfs.fs.remote``).

Node B first looks at the state before each change (so that its kernel caches the entry,
the attributes and the pages), then node A makes the change, and B must show it well within
the timeouts (the waits for a change end at ``VISIBLE`` seconds, less than the timeouts,
so a missing invalidation fails the test).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dhtfs.fs.attributes import ATTR_TIMEOUT, ENTRY_TIMEOUT
from testkit import swarmctl
from testkit.observe import control
from testkit.wait import wait_until

pytestmark = [pytest.mark.mount, pytest.mark.slow]
VISIBLE = 8.0
"""How long a change may take to show on the other node (each is seen in milliseconds)."""


def gone(path: Path) -> bool:
    try:
        os.lstat(path)
    except FileNotFoundError:
        return True
    return False


def test_every_kind_of_remote_change_shows_at_once(tmp_path: Path) -> None:
    assert min(ENTRY_TIMEOUT, ATTR_TIMEOUT) > VISIBLE  # only an invalidation can pass
    with swarmctl.running_swarm(tmp_path / "swarm", 2) as (a, b):
        wait_until(lambda: control(b.state, "status")["peers"] >= 1, "b joined")
        A, B = a.mountpoint, b.mountpoint

        def seen(what: str, before: Callable[[], Any], change: Callable[[], None],
                 after: Callable[[], Any]) -> None:
            wait_until(before, f"b to see the state before: {what}")
            before()  # and once more, so that b's kernel holds it
            change()
            wait_until(after, f"b to see: {what}", timeout=VISIBLE)

        (A / "d").mkdir()
        (A / "d" / "f").write_bytes(b"one")
        f = B / "d" / "f"
        seen("new content of the same size",
             lambda: f.read_bytes() == b"one",
             lambda: (A / "d" / "f").write_bytes(b"two"),
             lambda: f.read_bytes() == b"two")
        seen("a truncate", lambda: f.stat().st_size == 3,
             lambda: os.truncate(A / "d" / "f", 1), lambda: f.stat().st_size == 1)
        seen("a grown file and its blocks",
             lambda: f.stat().st_size == 1,
             lambda: (A / "d" / "f").write_bytes(os.urandom(300_000)),
             lambda: f.stat().st_size == 300_000 and f.stat().st_blocks * 512 >= 300_000)
        seen("a chmod", lambda: stat.S_IMODE(f.stat().st_mode) == 0o644,
             lambda: os.chmod(A / "d" / "f", 0o600),
             lambda: stat.S_IMODE(f.stat().st_mode) == 0o600)
        seen("a utime", lambda: f.stat().st_mtime_ns != 10**18,
             lambda: os.utime(A / "d" / "f", ns=(10**18, 10**18)),
             lambda: f.stat().st_mtime_ns == 10**18)
        with open(f, "rb"):  # a file open on b reports its open file's times: those too
            seen("a utime of a file open there", lambda: f.stat().st_mtime_ns == 10**18,
                 lambda: os.utime(A / "d" / "f", ns=(2 * 10**18, 2 * 10**18)),
                 lambda: f.stat().st_mtime_ns == 2 * 10**18)
        ctime = f.stat().st_ctime_ns
        seen("an xattr", lambda: os.listxattr(f) == [],
             lambda: os.setxattr(A / "d" / "f", "user.k", b"v"),
             lambda: os.getxattr(f, "user.k") == b"v" and f.stat().st_ctime_ns != ctime)
        seen("a hard link", lambda: f.stat().st_nlink == 1 and gone(B / "g"),
             lambda: os.link(A / "d" / "f", A / "g"),
             lambda: f.stat().st_nlink == 2 and (B / "g").stat().st_ino == f.stat().st_ino)
        seen("an unlink", lambda: (B / "g").stat().st_nlink == 2,
             lambda: os.unlink(A / "d" / "f"),
             lambda: gone(f) and (B / "g").stat().st_nlink == 1)
        seen("a rename", lambda: (B / "g").exists() and gone(B / "d" / "h"),
             lambda: os.rename(A / "g", A / "d" / "h"),
             lambda: gone(B / "g") and (B / "d" / "h").stat().st_size == 300_000)
        seen("a rename over a file", lambda: (B / "d" / "h").stat().st_nlink == 1,
             lambda: ((A / "x").write_bytes(b"x"), os.rename(A / "x", A / "d" / "h")),
             lambda: (B / "d" / "h").read_bytes() == b"x" and gone(B / "x"))
        seen("a mkdir", lambda: (B / "d").stat().st_nlink == 2 and gone(B / "d" / "e"),
             lambda: (A / "d" / "e").mkdir(),
             lambda: (B / "d").stat().st_nlink == 3 and (B / "d" / "e").is_dir())
        seen("an rmdir", lambda: (B / "d" / "e").is_dir(),
             lambda: (A / "d" / "e").rmdir(),
             lambda: gone(B / "d" / "e") and (B / "d").stat().st_nlink == 2)
        seen("a symlink", lambda: gone(B / "d" / "s"),
             lambda: os.symlink("h", A / "d" / "s"),
             lambda: os.readlink(B / "d" / "s") == "h")
        seen("a directory's mtime", lambda: (B / "d").stat().st_mtime_ns > 0,
             lambda: os.utime(A / "d", ns=(10**18, 10**18)),
             lambda: (B / "d").stat().st_mtime_ns == 10**18)
