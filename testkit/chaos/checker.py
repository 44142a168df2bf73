"""The checks of a chaos run, on its history (every ``Op``) and on the mounts afterwards.

1. **Errnos.** Every errno a call returned is one its kind allows for a race (``ALLOWED``), or
   is excused by a fault in force on that node during the call, and only then:
   - any errno, for a call overlapping the window in which its node was killed and remounted;
   - ENOSPC, for a call on the node whose disk was full, overlapping that window; and for an
     ``fsync`` on any node from the window's start until ``FULL_MARK_SECONDS`` after its end
     (a replica that refused a block for want of space is no target for that long, and an
     fsync whose blocks have nowhere else to go says ENOSPC);
   - EIO, for a call on a node cut off (partition) that lasted at least the read or
     replication deadline (the documented way a read or fsync with no reachable copy ends).
   Anything else (EIO, ESTALE, ENOTCONN... on a node that is up) is unexpected.
2. **Convergence.** Once the workload has stopped and every fault is undone, every mount
   shows the identical tree (path, type, mode, size, SHA-256 of the content, link target)
   within a bound, polled; the time it took is reported. Reads done by this check that fail
   are unexpected errors too (a node that is up must read what it shows).
3. **No acknowledged loss.** A file whose ``fsync`` returned (content read back right after
   it on the same descriptor) and that nobody changed afterwards reads back with exactly that
   content on every mount. "Nobody changed it": no other op that may have changed the path
   or one of its ancestors (see ``model.touches``) is later or concurrent. An op O of another
   node counts as before the write W only if W's node had applied it when W started: its
   version vector sampled before W covers O's node's own count sampled after O. Without
   those samples, only if O ended ``margin`` seconds before W started and no fault was in
   force anywhere in between. Otherwise W is not checked (a file renamed or replaced by
   another node is not "lost").
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from testkit.chaos.faults import Window
from testkit.chaos.model import ALLOWED, Op, touches

Tree = dict[str, tuple[str, int, int | None, str | None]]


FULL_MARK_SECONDS = 60.0
"""How long a writer takes a peer that refused a block for want of space as full
(``dhtfs.dht.protocol.FULL_SECONDS``)."""


def classify(op: Op, windows: Sequence[Window], deadline: float) -> str:
    """``ok``, ``race`` (an allowed errno), ``excused: WHY`` or ``unexpected``."""
    if op.errno is None:
        return "ok"
    if op.errno in ALLOWED[op.kind]:
        return "race"
    mine = [w for w in windows if w.node == op.node and w.overlaps(op.start, op.end)]
    if any(w.kind == "kill" for w in mine):
        return "excused: node killed meanwhile"
    if op.errno == errno.ENOSPC and any(w.kind == "disk" for w in mine):
        return "excused: disk full"
    if (op.errno == errno.ENOSPC and op.step == "fsync"
            and any(w.kind == "disk" and w.overlaps(op.start - FULL_MARK_SECONDS, op.end)
                    for w in windows)):
        return "excused: a replica's disk full"
    if (op.errno == errno.EIO and any(w.kind == "partition" for w in mine)
            and op.end - op.start >= deadline):
        return "excused: cut off past the deadline"
    return "unexpected"


def active(windows: Sequence[Window], start: float, end: float) -> list[str]:
    return [w.describe() for w in windows if w.overlaps(start, end)]


def _entry(path: Path) -> tuple[str, int, int | None, str | None]:
    st = path.lstat()
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        return ("link", mode, None, os.readlink(path))
    if stat.S_ISDIR(st.st_mode):
        return ("dir", mode, None, None)
    if stat.S_ISREG(st.st_mode):
        return ("file", mode, st.st_size, hashlib.sha256(path.read_bytes()).hexdigest())
    return (f"other {stat.S_IFMT(st.st_mode):o}", mode, None, None)


def snapshot(mount: Path) -> tuple[Tree, list[tuple[str, int]]]:
    """The tree under ``mount`` and the (path, errno) of every entry that could not be read."""
    tree: Tree = {}
    errors: list[tuple[str, int]] = []

    def walk(rel: str) -> None:
        try:
            names = sorted(os.listdir(mount / rel))
        except OSError as exc:
            errors.append((rel or ".", exc.errno or 0))
            return
        for name in names:
            child = f"{rel}/{name}" if rel else name
            try:
                tree[child] = _entry(mount / child)
            except OSError as exc:
                errors.append((child, exc.errno or 0))
                continue
            if tree[child][0] == "dir":
                walk(child)

    walk("")
    return tree, errors


@dataclass
class Convergence:
    seconds: float | None            # None: not converged within the bound
    trees: list[Tree]
    read_errors: dict[tuple[int, str, int], int]  # (node, path, errno) -> times seen
    diff: list[str]


def wait_converged(mounts: Sequence[Path], timeout: float,
                   alive: Callable[[], None] | None = None) -> Convergence:
    """Poll every mount's tree until all are equal and readable, up to ``timeout`` s."""
    t0 = time.monotonic()
    read_errors: dict[tuple[int, str, int], int] = {}
    while True:
        shots = [snapshot(m) for m in mounts]
        trees = [t for t, _ in shots]
        for i, (_, errs) in enumerate(shots):
            for path, code in errs:
                if code != errno.ENOENT:  # a name going away between listdir and lstat
                    read_errors[(i, path, code)] = read_errors.get((i, path, code), 0) + 1
        clean = all(not errs for _, errs in shots)
        if clean and all(t == trees[0] for t in trees):
            return Convergence(time.monotonic() - t0, trees, read_errors, [])
        if time.monotonic() - t0 > timeout:
            return Convergence(None, trees, read_errors, tree_diff(trees))
        if alive is not None:
            alive()
        time.sleep(0.2)


def tree_diff(trees: Sequence[Tree], limit: int = 20) -> list[str]:
    out = []
    for path in sorted(set().union(*trees)):
        seen = [t.get(path) for t in trees]
        if any(s != seen[0] for s in seen):
            out.append(f"{path}: " + " | ".join(f"node{i}={_short(s)}" for i, s in
                                                 enumerate(seen)))
    return out[:limit] + ([f"... {len(out) - limit} more"] if len(out) > limit else [])


def _short(entry: tuple | None) -> str:
    if entry is None:
        return "absent"
    kind, mode, size, content = entry
    return f"{kind} {mode:o}" + (f" {size}B" if size is not None else "") + (
        f" {content[:10]}" if content else "")


def stable_writes(ops: Sequence[Op], windows: Sequence[Window], margin: float) -> list[Op]:
    """The fsynced writes nobody changed afterwards (see the module docstring)."""
    out = []
    for w in ops:
        if w.fsynced is None or w.effect != "done":
            continue
        path = w.paths[0]
        if all(_before(o, w, windows, margin) for o in ops
               if o is not w and touches(o, path)):
            out.append(w)
    return out


def _before(o: Op, w: Op, windows: Sequence[Window], margin: float) -> bool:
    if o.node == w.node:
        return o.index < w.index
    if o.end >= w.start:
        return False
    if o.seq is not None and w.view is not None:
        return w.view.get(o.node, 0) >= o.seq
    if o.end + margin > w.start:
        return False
    return not any(win.overlaps(o.start, w.start) for win in windows)


@dataclass
class Loss:
    op: Op
    node: int
    found: str

    def describe(self) -> str:
        size, digest = self.op.fsynced or (0, "")
        return (f"{self.op.paths[0]} fsynced by node{self.op.node} op#{self.op.index} "
                f"({size}B {digest[:10]}): node{self.node} shows {self.found}")


def check_stable(mounts: Sequence[Path], stable: Sequence[Op]) -> list[Loss]:
    """Every stable write reads back exactly on every mount."""
    losses = []
    for w in stable:
        size, digest = w.fsynced or (0, "")
        if w.note:
            losses.append(Loss(w, w.node, f"on its own descriptor after fsync: {w.note}"))
        for i, mount in enumerate(mounts):
            path = mount / w.paths[0]
            try:
                if not stat.S_ISREG(path.lstat().st_mode):
                    losses.append(Loss(w, i, "not a regular file"))
                    continue
                data = path.read_bytes()
            except OSError as exc:
                losses.append(Loss(w, i, errno.errorcode.get(exc.errno or 0, str(exc))))
                continue
            if (len(data), hashlib.sha256(data).hexdigest()) != (size, digest):
                zeros = _zero_run(data)
                losses.append(Loss(w, i, f"{len(data)}B {hashlib.sha256(data).hexdigest()[:10]}"
                                   + (f", {zeros} zero bytes at the end" if zeros else "")))
    return losses


def _zero_run(data: bytes) -> int:
    return len(data) - len(data.rstrip(b"\0"))
