"""An ``fsstress``-like op mixer (fsstress itself, from LTP/xfstests, has no Debian package
here and none on PyPI): P processes, each running N seeded random ops in its own
subdirectory ``pI`` of one tree, as fsstress does (``fsstress -d DIR -p P -n N``).

Each process keeps, as fsstress does, the lists of the files, directories and symlinks it
made, picks the op by weight and its operands among what it made, and counts an op that
fails (ENOENT, ENOTEMPTY, EINVAL...) as done with an error; an op with nothing to act on (no
file yet) is skipped. The op mix is fsstress's default frequencies (``ops[]`` in
``fsstress.c``), minus the XFS-only ops (allocsp, freesp, resvsp, unresvsp, bulkstat,
attr_*), with these mappings:

========== ====== ===================================================================
op         weight what it does here
========== ====== ===================================================================
creat      4      ``open(O_CREAT|O_EXCL)`` a new file in a random own directory, close
mknod      2      ``mknod(S_IFREG)`` a new empty file (fsstress: a character device)
write      8      fsstress's write 4 + dwrite 4 (O_DIRECT, buffered here): open, one
                  ``pwrite`` of 1 B-64 KiB at a random offset below 1 MiB, close
read       5      fsstress's read 1 + dread 4: open, one ``pread`` of up to 64 KiB at a
                  random offset within the file, close
mkdir      2      a new directory
rmdir      1      a random own directory (ENOTEMPTY counts as an error, as in fsstress)
rename     2      a random file, symlink or directory to a new name in a random directory
unlink     1      a random file or symlink
link       1      a hard link to a random file, new name in a random directory
symlink    2      a new symlink whose target is a random own path
readlink   1      a random symlink
truncate   2      a random file to a random size below 1 MiB
fsync      1      open a random file, ``fsync``, close
fdatasync  1      open a random file, ``fdatasync``, close
getdents   1      ``os.listdir`` of a random directory
stat       1      ``lstat`` of a random entry
chown      3      ``lchown`` of a random entry to a random uid/gid below 1000
chmod      1      ``chmod`` of a random file or directory (not in fsstress's default mix)
sync       1      ``sync()`` (global, as in fsstress)
========== ====== ===================================================================

Determinism: process I of seed S draws everything from ``random.Random(f"fsstress:S:I")``;
the same file system behaviour gives the same sequence of calls.
"""

from __future__ import annotations

import errno
import json
import os
import random
import stat
from pathlib import Path

MIX = {
    "creat": 4, "mknod": 2, "write": 8, "read": 5, "mkdir": 2, "rmdir": 1, "rename": 2,
    "unlink": 1, "link": 1, "symlink": 2, "readlink": 1, "truncate": 2, "fsync": 1,
    "fdatasync": 1, "getdents": 1, "stat": 1, "chown": 3, "chmod": 1, "sync": 1,
}
MAX_OFFSET = 1 << 20
MAX_IO = 64 * 1024
PATTERN = random.Random("fsstress-data").randbytes(MAX_IO + 4096)


class Worker:
    """One fsstress process's state: its root and the entries it made (relative paths)."""

    def __init__(self, root: Path, seed: int, index: int) -> None:
        self.root = root
        self.rng = random.Random(f"fsstress:{seed}:{index}")
        self.files: list[str] = []
        self.dirs: list[str] = [""]
        self.links: list[str] = []
        self.counter = 0
        self.done: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.skipped = 0

    def path(self, rel: str) -> str:
        return str(self.root / rel) if rel else str(self.root)

    def new_name(self, prefix: str) -> str:
        self.counter += 1
        parent = self.rng.choice(self.dirs)
        return f"{parent}/{prefix}{self.counter}" if parent else f"{prefix}{self.counter}"

    def pick(self, *lists: list[str]) -> str | None:
        pool = [x for lst in lists for x in lst]
        return self.rng.choice(pool) if pool else None

    def run(self, count: int) -> None:
        kinds = list(MIX)
        weights = [MIX[k] for k in kinds]
        for kind in self.rng.choices(kinds, weights, k=count):
            try:
                acted = getattr(self, f"op_{kind}")()
            except OSError as exc:
                self.errors[kind] = self.errors.get(kind, 0) + 1
                if exc.errno in (errno.EIO, errno.ENOTCONN):
                    raise
                continue
            if acted is False:
                self.skipped += 1
            else:
                self.done[kind] = self.done.get(kind, 0) + 1

    # -- ops: return False when there was nothing to act on ----------------------------------

    def op_creat(self) -> None:
        rel = self.new_name("f")
        os.close(os.open(self.path(rel), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        self.files.append(rel)

    def op_mknod(self) -> None:
        rel = self.new_name("c")
        os.mknod(self.path(rel), stat.S_IFREG | 0o644)
        self.files.append(rel)

    def op_write(self) -> bool | None:
        rel = self.pick(self.files)
        if rel is None:
            return False
        size = self.rng.randrange(1, MAX_IO + 1)
        offset = self.rng.randrange(MAX_OFFSET)
        start = self.rng.randrange(4096)
        fd = os.open(self.path(rel), os.O_WRONLY)
        try:
            os.pwrite(fd, PATTERN[start:start + size], offset)
        finally:
            os.close(fd)
        return None

    def op_read(self) -> bool | None:
        rel = self.pick(self.files)
        if rel is None:
            return False
        fd = os.open(self.path(rel), os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            os.pread(fd, self.rng.randrange(1, MAX_IO + 1), self.rng.randrange(max(1, size)))
        finally:
            os.close(fd)
        return None

    def op_mkdir(self) -> None:
        rel = self.new_name("d")
        os.mkdir(self.path(rel))
        self.dirs.append(rel)

    def op_rmdir(self) -> bool | None:
        rel = self.pick(self.dirs[1:])
        if rel is None:
            return False
        os.rmdir(self.path(rel))
        self.dirs.remove(rel)
        return None

    def op_rename(self) -> bool | None:
        rel = self.pick(self.files, self.links, self.dirs[1:])
        if rel is None:
            return False
        new = self.new_name(rel.rsplit("/", 1)[-1][0])
        if rel in self.dirs and (new + "/").startswith(rel + "/"):
            raise OSError(errno.EINVAL, "rename into itself")  # counted, as fsstress's
        os.rename(self.path(rel), self.path(new))
        for lst in (self.files, self.links, self.dirs):
            for i, x in enumerate(lst):
                if x == rel:
                    lst[i] = new
                elif x.startswith(rel + "/"):
                    lst[i] = new + x[len(rel):]
        return None

    def op_unlink(self) -> bool | None:
        rel = self.pick(self.files, self.links)
        if rel is None:
            return False
        os.unlink(self.path(rel))
        (self.files if rel in self.files else self.links).remove(rel)
        return None

    def op_link(self) -> bool | None:
        rel = self.pick(self.files)
        if rel is None:
            return False
        new = self.new_name("f")
        os.link(self.path(rel), self.path(new))
        self.files.append(new)
        return None

    def op_symlink(self) -> None:
        rel = self.new_name("l")
        os.symlink(self.pick(self.files, self.dirs) or "nowhere", self.path(rel))
        self.links.append(rel)

    def op_readlink(self) -> bool | None:
        rel = self.pick(self.links)
        if rel is None:
            return False
        os.readlink(self.path(rel))
        return None

    def op_truncate(self) -> bool | None:
        rel = self.pick(self.files)
        if rel is None:
            return False
        os.truncate(self.path(rel), self.rng.randrange(MAX_OFFSET))
        return None

    def _sync_one(self, data_only: bool) -> bool | None:
        rel = self.pick(self.files)
        if rel is None:
            return False
        fd = os.open(self.path(rel), os.O_WRONLY)
        try:
            (os.fdatasync if data_only else os.fsync)(fd)
        finally:
            os.close(fd)
        return None

    def op_fsync(self) -> bool | None:
        return self._sync_one(False)

    def op_fdatasync(self) -> bool | None:
        return self._sync_one(True)

    def op_getdents(self) -> None:
        os.listdir(self.path(self.rng.choice(self.dirs)))

    def op_stat(self) -> bool | None:
        rel = self.pick(self.files, self.links, self.dirs)
        os.lstat(self.path(rel or ""))
        return None

    def op_chown(self) -> bool | None:
        rel = self.pick(self.files, self.links, self.dirs[1:])
        if rel is None:
            return False
        os.lchown(self.path(rel), self.rng.randrange(1000), self.rng.randrange(1000))
        return None

    def op_chmod(self) -> bool | None:
        rel = self.pick(self.files, self.dirs[1:])
        if rel is None:
            return False
        mode = self.rng.choice((0o644, 0o600, 0o755, 0o700)) if rel in self.files else 0o755
        os.chmod(self.path(rel), mode)
        return None

    def op_sync(self) -> None:
        os.sync()


def run_fsstress(tree: Path, procs: int, nops: int, seed: int, report: Path) -> dict[str, int]:
    """``procs`` forked processes x ``nops`` ops in ``tree/pI``; waits for all (so their CPU
    is in this process's RUSAGE_CHILDREN). Returns the ops done, errors and skips summed over
    the processes; raises RuntimeError if a process died or saw EIO/ENOTCONN."""
    tree.mkdir()
    pids = []
    for i in range(procs):
        (tree / f"p{i}").mkdir()
        pid = os.fork()
        if pid == 0:  # the child: run, write its counts, leave without cleanup handlers
            status = 0
            worker = Worker(tree / f"p{i}", seed, i)
            try:
                worker.run(nops)
            except BaseException as exc:  # reported to the parent
                worker.errors["fatal"] = 1
                worker.errors[f"fatal: {exc!r}"[:200]] = 1
                status = 1
            (report / f"p{i}.json").write_text(json.dumps(
                {"done": worker.done, "errors": worker.errors, "skipped": worker.skipped}))
            os._exit(status)
        pids.append(pid)
    failed = []
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        if status != 0:
            failed.append(pid)
    totals: dict[str, int] = {"ops": 0, "errors": 0, "skipped": 0}
    fatal = []
    for i in range(procs):
        counts = json.loads((report / f"p{i}.json").read_text())
        totals["ops"] += sum(counts["done"].values())
        totals["errors"] += sum(counts["errors"].values())
        totals["skipped"] += counts["skipped"]
        fatal += [k for k in counts["errors"] if k.startswith("fatal: ")]
    if failed:
        raise RuntimeError(f"fsstress processes {failed} failed: {fatal}")
    return totals
