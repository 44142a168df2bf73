"""The seeded workload: which op each node runs next (decided by the seed alone, never by what
earlier calls returned, so a seed replays the same sequence of calls), and running one op on
a mount into an ``Op`` record.

Data written is ``seed/node/index`` plus seeded random bytes: every write is distinct, so a
hash names the write that produced it.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from testkit.chaos.model import (
    ALLOWED,
    CONFLICT,
    DIRS,
    FILES,
    LINK_TARGETS,
    MODES,
    PARENTS,
    Op,
)

WEIGHTS = {
    "create": 8, "overwrite": 12, "append": 8, "truncate": 5, "read": 8, "fsync": 6,
    "rename_file": 10, "rename_dir": 9, "unlink": 6, "mkdir": 6, "rmdir": 4, "symlink": 4,
    "chmod": 4, "cleanup": 2,
}
FSYNC_CHANCE = 0.4  # of a create / overwrite / append
LARGE_CHANCE = 0.04  # a write of 0.5-2 MiB (whole chunks: replicated as written)


@dataclass(frozen=True)
class Spec:
    """What to do: the op's kind, its paths and, for writes, its size and whether to fsync."""

    kind: str
    paths: tuple[str, ...]
    size: int = 0
    fsync: bool = False
    mode: int = 0


def node_rng(seed: int, node: int) -> random.Random:
    return random.Random(f"chaos:{seed}:{node}")


def specs(seed: int, node: int, count: int) -> list[Spec]:
    """The ``count`` ops node ``node`` runs for ``seed`` (pure function of its arguments)."""
    rng = node_rng(seed, node)
    kinds = list(WEIGHTS)
    weights = [WEIGHTS[k] for k in kinds]
    out = []
    for _ in range(count):
        kind = rng.choices(kinds, weights)[0]
        size = (rng.randrange(512 * 1024, 2 * 1024 * 1024) if rng.random() < LARGE_CHANCE
                else rng.randrange(0, 16 * 1024))
        fsync = rng.random() < FSYNC_CHANCE
        if kind == "rename_file":
            src = rng.choice(FILES)
            dst = rng.choice(FILES) if rng.random() < 0.85 else rng.choice(DIRS)
            out.append(Spec("rename", (src, dst)))
        elif kind == "rename_dir":
            out.append(Spec("rename", (rng.choice(DIRS), rng.choice(DIRS))))
        elif kind in ("mkdir", "rmdir"):
            out.append(Spec(kind, (rng.choice(DIRS),)))
        elif kind == "cleanup":
            out.append(Spec(kind, (rng.choice(PARENTS),), size=rng.randrange(1 << 30)))
        elif kind == "symlink":
            out.append(Spec(kind, (rng.choice(FILES),), size=rng.randrange(len(LINK_TARGETS))))
        elif kind == "chmod":
            path = rng.choice(FILES) if rng.random() < 0.8 else rng.choice(DIRS)
            out.append(Spec(kind, (path,), mode=rng.choice(MODES)))
        elif kind == "truncate":
            out.append(Spec(kind, (rng.choice(FILES),), size=rng.randrange(0, 20 * 1024)))
        else:
            out.append(Spec(kind, (rng.choice(FILES),), size=size, fsync=fsync))
    return out


def payload(seed: int, node: int, index: int, size: int) -> bytes:
    head = b"seed=%d node=%d op=%d\n" % (seed, node, index)
    body = random.Random(f"data:{seed}:{node}:{index}").randbytes(max(0, size - len(head)))
    return (head + body)[:max(size, len(head))]


class _Failed(Exception):
    def __init__(self, step: str, exc: OSError) -> None:
        super().__init__(step)
        self.step, self.exc = step, exc


def _step(name: str, fn: Callable[[], object]) -> object:
    try:
        return fn()
    except OSError as exc:
        raise _Failed(name, exc) from None


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    parts, offset = [], 0
    while offset < size:
        data = os.pread(fd, min(1 << 20, size - offset), offset)
        if not data:
            break
        parts.append(data)
        offset += len(data)
    return b"".join(parts)


def run_op(mount: Path, seed: int, node: int, index: int, spec: Spec,
           clock: Callable[[], float]) -> Op:
    """Run ``spec`` on ``mount`` and return its record (``start``/``end`` from ``clock``)."""
    op = Op(node, index, spec.kind, spec.paths)
    p = [mount / x for x in spec.paths]
    first = True  # still at the first step: a failure there changed nothing
    fd: int | None = None
    op.start = clock()
    try:
        if spec.kind in ("create", "overwrite", "append", "fsync"):
            flags = {"create": os.O_CREAT | os.O_EXCL, "overwrite": os.O_CREAT | os.O_TRUNC,
                     "append": os.O_APPEND, "fsync": 0}[spec.kind]
            flags |= os.O_RDWR if (spec.fsync or spec.kind == "fsync") else os.O_WRONLY
            fd = _step("open", lambda: os.open(p[0], flags | os.O_CLOEXEC, 0o644))
            first = False
            data = b""
            if spec.kind != "fsync":
                data = payload(seed, node, index, spec.size)
                view = memoryview(data)
                while view:
                    n = _step("write", lambda v=view: os.write(fd, v[: 1 << 20]))
                    view = view[n:]
                if spec.kind != "append":
                    op.wrote = hashlib.sha256(data).hexdigest()
            if spec.fsync or spec.kind == "fsync":
                _step("fsync", lambda: os.fsync(fd))
                back = _step("read", lambda: _read_all(fd))
                op.fsynced = (len(back), hashlib.sha256(back).hexdigest())
                if spec.kind in ("create", "overwrite") and back != data:
                    op.note = f"read back {len(back)} bytes, not the {len(data)} just written"
            closing, fd = fd, None
            _step("close", lambda: os.close(closing))
        elif spec.kind == "read":
            fd = _step("open", lambda: os.open(p[0], os.O_RDONLY | os.O_CLOEXEC))
            _step("read", lambda: _read_all(fd) if os.fstat(fd).st_size else os.read(fd, 1))
            closing, fd = fd, None
            _step("close", lambda: os.close(closing))
        elif spec.kind == "truncate":
            _step("truncate", lambda: os.truncate(p[0], spec.size))
        elif spec.kind == "rename":
            _step("rename", lambda: os.rename(p[0], p[1]))
        elif spec.kind == "unlink":
            _step("unlink", lambda: os.unlink(p[0]))
        elif spec.kind == "mkdir":
            _step("mkdir", lambda: os.mkdir(p[0]))
        elif spec.kind == "rmdir":
            _step("rmdir", lambda: os.rmdir(p[0]))
        elif spec.kind == "symlink":
            _step("symlink", lambda: os.symlink(LINK_TARGETS[spec.size], p[0]))
        elif spec.kind == "chmod":
            _step("chmod", lambda: os.chmod(p[0], spec.mode))
        elif spec.kind == "cleanup":
            _cleanup(op, mount, spec)
        else:
            raise ValueError(f"unknown op kind {spec.kind!r}")
        op.effect = "done"
    except _Failed as failed:
        op.errno, op.step = failed.exc.errno, failed.step
        op.effect = "none" if first and op.errno in ALLOWED[spec.kind] else "unknown"
    finally:
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
        op.end = clock()
    return op


def _cleanup(op: Op, mount: Path, spec: Spec) -> None:
    """Remove one conflict copy (``NAME.conflict-...``) of directory ``spec.paths[0]``, chosen
    by the seed among those there now: a file is unlinked, a directory removed if empty."""
    parent = mount / spec.paths[0]
    names = sorted(n for n in _step("listdir", lambda: os.listdir(parent)) if CONFLICT in n)
    if not names:
        return
    name = names[spec.size % len(names)]
    rel = f"{spec.paths[0]}/{name}" if spec.paths[0] else name
    op.paths = (rel,)
    target = parent / name
    try:
        os.unlink(target)
    except IsADirectoryError:
        _step("rmdir", lambda: os.rmdir(target))
    except OSError as exc:
        raise _Failed("unlink", exc) from None


def now_since(t0: float) -> Callable[[], float]:
    return lambda: time.monotonic() - t0
