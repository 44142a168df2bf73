"""``open(O_CREAT)`` without ``O_EXCL`` never fails with EEXIST, even when this mount's kernel
still holds a "no such name" entry for a file another node has just created (its invalidation
not in yet): the chaos harness saw EEXIST from a plain ``open(..., "w")`` on a client mount.

The race is made deterministic by holding the reader's kernel invalidations back (the
control socket's ``faults {"invalidate": false}``). Real processes on 127.0.0.x.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from testkit import swarmctl
from testkit.observe import control
from testkit.wait import wait_until

pytestmark = [pytest.mark.mount, pytest.mark.slow]


def ops(state: Path) -> int:
    return control(state, "status")["ops"]


def test_create_over_a_name_created_elsewhere_opens_it(tmp_path: Path) -> None:
    root = tmp_path / "swarm"
    with swarmctl.running_swarm(root, 2) as (a, b):
        wait_until(lambda: control(b.state, "status")["peers"] >= 1, "b joined")
        control(b.state, "faults", {"invalidate": False})
        try:
            for i in range(5):  # each round: a fresh name, cached as missing on b
                target = f"f{i}"
                with pytest.raises(FileNotFoundError):
                    os.stat(b.mountpoint / target)  # b's kernel caches "no such name" (1 s)
                (a.mountpoint / target).write_bytes(b"written on a")
                wait_until(lambda: ops(b.state) >= ops(a.state), "a's create applied on b",
                           timeout=30)
                fd = os.open(b.mountpoint / target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    os.write(fd, b"written on b")
                finally:
                    os.close(fd)
                assert (b.mountpoint / target).read_bytes() == b"written on b"
        finally:
            control(b.state, "faults", {"invalidate": True})
        for i in range(5):
            path = a.mountpoint / f"f{i}"
            wait_until(lambda path=path: path.read_bytes() == b"written on b",
                       "b's write of the file it opened reaches a", timeout=30)
