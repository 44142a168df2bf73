"""What the chaos workload does and what it may see: the small shared tree, one op record per
call, and the errnos each kind of op may return when it races with other nodes.

The tree is deliberately tiny (a handful of directory and file names) so that nodes collide
all the time: the same names are created, renamed, removed and written from every mount.

Invariants:
- every ``Op`` is one call (or one short sequence on one descriptor: open, write, fsync,
  read back, close) on one mount, by one worker; ``start``/``end`` are seconds since the run
  began (one monotonic clock for every worker and the fault injector);
- ``effect`` is ``"none"`` only when the call failed at its first step with a race errno
  (nothing changed), ``"done"`` when every step succeeded, ``"unknown"`` otherwise (a failure
  half-way, a node killed under the call): the checker treats unknown as "may have changed";
- ``fsynced`` is (size, sha256) of what the file held, read back on the same descriptor
  right after its ``fsync`` returned;
- ``seq``/``view`` come from the node's op-log version vector (control socket), sampled
  outside ``start``..``end``: after a call, the node's own count bounds the call's ops from
  above; before a call, what the node had applied from each origin.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

# The shared tree: directories that ops create, remove and rename (into each other too),
# and where files live.
DIRS = ("a", "b", "c", "a/b", "b/c", "a/b/c")
PARENTS = ("", "a", "b", "a/b", "b/c")
NAMES = ("f0", "f1", "f2", "l0")
FILES = tuple(f"{p}/{n}" if p else n for p in PARENTS for n in NAMES)
# Symlink targets never resolve inside the tree ("nowhere" is never created), so no call
# reaches another path through a link: a write through one fails with ENOENT.
LINK_TARGETS = ("nowhere/t0", "nowhere/t1", "../nowhere/t2")
MODES = (0o600, 0o640, 0o644, 0o755, 0o400)
CONFLICT = ".conflict-"

E = errno
# Errnos an op may return because another node changed the tree under it (POSIX meanings).
ALLOWED: dict[str, frozenset[int]] = {
    "create": frozenset({E.EEXIST, E.ENOENT, E.ENOTDIR}),           # O_CREAT|O_EXCL
    "overwrite": frozenset({E.ENOENT, E.ENOTDIR, E.EISDIR}),        # O_CREAT|O_TRUNC
    "append": frozenset({E.ENOENT, E.ENOTDIR, E.EISDIR}),           # O_APPEND, no create
    "truncate": frozenset({E.ENOENT, E.ENOTDIR, E.EISDIR}),
    "read": frozenset({E.ENOENT, E.ENOTDIR, E.EISDIR}),
    "fsync": frozenset({E.ENOENT, E.ENOTDIR, E.EISDIR}),
    "rename": frozenset({E.ENOENT, E.EEXIST, E.ENOTEMPTY, E.ENOTDIR, E.EISDIR, E.EINVAL}),
    "unlink": frozenset({E.ENOENT, E.ENOTDIR, E.EISDIR}),
    "mkdir": frozenset({E.EEXIST, E.ENOENT, E.ENOTDIR}),
    "rmdir": frozenset({E.ENOENT, E.ENOTDIR, E.ENOTEMPTY, E.EEXIST}),
    "symlink": frozenset({E.EEXIST, E.ENOENT, E.ENOTDIR}),
    "chmod": frozenset({E.ENOENT, E.ENOTDIR}),
    "cleanup": frozenset({E.ENOENT, E.ENOTDIR, E.EISDIR, E.ENOTEMPTY, E.EEXIST}),
}
# The union the issue allows for races; every per-op set above is inside it.
RACE_ERRNOS = frozenset({E.ENOENT, E.EEXIST, E.ENOTEMPTY, E.ENOTDIR, E.EISDIR, E.EINVAL})
# Ops that can change what a path names or holds (read, chmod and fsync do not change bytes).
CHANGES_CONTENT = frozenset({"create", "overwrite", "append", "truncate", "rename", "unlink",
                             "mkdir", "rmdir", "symlink", "cleanup"})


@dataclass
class Op:
    """One call of the workload and what it returned."""

    node: int
    index: int                     # its place in its node's sequence (the seed decides it)
    kind: str
    paths: tuple[str, ...]         # relative to the mount; rename: (src, dst)
    start: float = 0.0
    end: float = 0.0
    errno: int | None = None
    step: str = ""                 # the call that failed: open, write, fsync, read, close...
    effect: str = "none"           # none | done | unknown (see the module docstring)
    fsynced: tuple[int, str] | None = None
    wrote: str | None = None       # sha256 of the bytes written by create/overwrite
    note: str = ""
    # Happened-before evidence from the nodes' op-log version vectors (None: not sampled):
    # ``seq``, this node's own op count right after the call (an upper bound of the call's
    # op sequence number); ``view``, by node index, the ops this node had applied just
    # before the call started.
    seq: int | None = None
    view: dict[int, int] | None = None

    def describe(self) -> str:
        what = " -> ".join(self.paths)
        err = errno.errorcode.get(self.errno, str(self.errno)) if self.errno else "ok"
        return f"node{self.node} op#{self.index} {self.kind} {what}: {err}" + (
            f" at {self.step}" if self.step else "")


def is_under(path: str, top: str) -> bool:
    """``path`` is ``top`` or inside it."""
    return path == top or path.startswith(top + "/")


def touches(op: Op, path: str) -> bool:
    """``op`` may have changed what ``path`` names or holds: it changed ``path`` itself or
    one of its ancestors (renamed, removed, replaced, created over it)."""
    if op.kind not in CHANGES_CONTENT or op.effect == "none":
        return False
    return any(is_under(path, p) for p in op.paths)
