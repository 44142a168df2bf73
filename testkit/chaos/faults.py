"""Faults injected into a running swarm, and when each was in force.

- ``kill``: SIGKILL of a node's daemon (its stale mount removed), held down a while, then
  mounted again (``dhtfs swarm up``), which waits until it has rejoined;
- ``partition``: the node's transport cut off (the control socket's ``isolate`` switch: every
  call fails, connections drop), then healed;
- ``disk``: the node's state directory sits on a small filesystem of its own (``SmallDisk``, a
  loop-mounted ext4 image or a size-limited tmpfs); a ballast file beside the state fills it to
  the last byte, then is removed.

A ``Window`` is the time a fault was in force on its node, from just before it started until
it was fully undone (the node remounted and rejoined, the switch off, the ballast gone).
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from testkit import swarmctl
from testkit.observe import control
from testkit.smalldisk import make_small_fs

MIB = 1 << 20
KINDS = ("kill", "partition", "disk")


@dataclass
class Fault:
    """One scheduled fault: ``kind`` on node ``node`` once ``at`` of all ops are done, held
    ``hold`` seconds."""

    kind: str
    node: int
    at: float
    hold: float

    def describe(self) -> str:
        return f"{self.kind} node{self.node} at {self.at:.0%} of the ops for {self.hold:.1f}s"


@dataclass
class Window:
    kind: str
    node: int
    start: float
    end: float | None = None  # None while in force (or never undone)
    note: str = ""

    def overlaps(self, start: float, end: float) -> bool:
        return self.start <= end and (self.end is None or start <= self.end)

    def describe(self) -> str:
        end = f"{self.end:.2f}" if self.end is not None else "never"
        return f"{self.kind} node{self.node} [{self.start:.2f}s, {end}s]" + (
            f" ({self.note})" if self.note else "")


def schedule(seed: int, nodes: int, counts: dict[str, int], hold: tuple[float, float],
             disk_nodes: list[int]) -> list[Fault]:
    """The faults of a run, in the order they start (a pure function of the arguments). Kills
    and partitions hit any node; a full disk, one of ``disk_nodes``."""
    rng = random.Random(f"faults:{seed}")
    kinds = [k for k in KINDS for _ in range(counts.get(k, 0))]
    rng.shuffle(kinds)
    ats = sorted(rng.uniform(0.1, 0.7) for _ in kinds)
    out = []
    for kind, at in zip(kinds, ats, strict=True):
        node = rng.choice(disk_nodes) if kind == "disk" else rng.randrange(nodes)
        out.append(Fault(kind, node, at, rng.uniform(*hold)))
    return out


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


class SmallDisk:
    """A filesystem of ``size`` bytes at ``base/disk`` for one node's state directory, which is
    bind-mounted from ``base/disk/state`` onto the node's state path; ``fill`` writes a
    ballast file (``base/disk/ballast``) until the disk is full, ``free`` removes it."""

    def __init__(self, base: Path, size: int, fs: str = "ext4") -> None:
        self.base, self.size, self.fs = base, size, fs
        self.disk = base / "disk"
        self.ballast = self.disk / "ballast"
        self.bound: Path | None = None

    def mount(self, state: Path) -> None:
        self.disk.mkdir(parents=True, exist_ok=True)
        if self.fs == "ext4":
            make_small_fs(self.base / "disk.img", self.disk, self.size)
        elif self.fs == "tmpfs":
            _run("mount", "-t", "tmpfs", "-o", f"size={self.size},mode=0700", "tmpfs",
                 str(self.disk))
        else:
            raise ValueError(f"disk filesystem {self.fs!r}: expected ext4 or tmpfs")
        (self.disk / "state").mkdir(mode=0o700, exist_ok=True)
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        _run("mount", "--bind", str(self.disk / "state"), str(state))
        self.bound = state

    def fill(self) -> int:
        """Write the ballast until ENOSPC; the bytes it took."""
        written = 0
        block = b"\xa5" * MIB
        fd = os.open(self.ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (MIB, 4096, 512):  # down to the last few bytes
                while True:
                    try:
                        written += os.write(fd, block[:size])
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
            with contextlib.suppress(OSError):
                os.fsync(fd)
        finally:
            os.close(fd)
        return written

    def free(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.ballast.unlink()

    def available(self) -> int:
        st = os.statvfs(self.disk)
        return st.f_bavail * st.f_frsize

    def close(self) -> None:
        """Unmount both (lazily if busy); call after the node's daemon is gone."""
        for path in (self.bound, self.disk):
            if path is not None and os.path.ismount(path):
                res = subprocess.run(["umount", str(path)], capture_output=True, check=False)
                if res.returncode != 0:
                    subprocess.run(["umount", "-l", str(path)], capture_output=True,
                                   check=False)
        with contextlib.suppress(FileNotFoundError):
            (self.base / "disk.img").unlink()


class Injector:
    """Runs faults against the swarm in ``root`` and records their windows. ``up[i]`` is set
    while node i is mounted (a worker waits on it before each op)."""

    def __init__(self, root: Path, names: list[str], states: list[Path],
                 disks: dict[int, SmallDisk], clock, up) -> None:
        self.root, self.names, self.states, self.disks = root, names, states, disks
        self.clock, self.up = clock, up
        self.windows: list[Window] = []
        self.failures: list[str] = []  # a fault that could not be undone (a finding)

    def run(self, fault: Fault) -> None:
        window = Window(fault.kind, fault.node, self.clock())
        self.windows.append(window)
        try:
            getattr(self, f"_{fault.kind}")(fault, window)
        except Exception as exc:  # reported in failures, never swallowed
            self.failures.append(f"{fault.describe()}: {type(exc).__name__}: {exc}")
            return
        window.end = self.clock()

    def _kill(self, fault: Fault, window: Window) -> None:
        self.up[fault.node].clear()
        swarmctl.kill(self.root, self.names[fault.node])
        time.sleep(fault.hold)  # the node stays down this long (the fault, not a poll)
        started = time.monotonic()
        swarmctl.restart(self.root)
        window.note = f"remount and rejoin took {time.monotonic() - started:.1f}s"
        self.up[fault.node].set()

    def _partition(self, fault: Fault, window: Window) -> None:
        control(self.states[fault.node], "isolate", {"on": True})
        time.sleep(fault.hold)
        control(self.states[fault.node], "isolate", {"on": False})

    def _disk(self, fault: Fault, window: Window) -> None:
        disk = self.disks[fault.node]
        taken = disk.fill()
        window.note = f"ballast {taken / MIB:.1f} MiB, {disk.available()} bytes left"
        time.sleep(fault.hold)
        disk.free()

    def heal_all(self) -> None:
        """Undo whatever a failed fault left: no node isolated, no ballast, every node up."""
        for state in self.states:
            with contextlib.suppress(Exception):
                control(state, "isolate", {"on": False})
        for disk in self.disks.values():
            disk.free()
        if not all(u.is_set() for u in self.up):
            swarmctl.restart(self.root)
            for u in self.up:
                u.set()
