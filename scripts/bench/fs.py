#!/usr/bin/env python3
"""File-system benchmark: dhtfs, tmpfs and bindfs-over-tmpfs side by side, in one run.

Usage (as root, from the repo root, with the venv's interpreter)::

    .venv/bin/python scripts/bench/fs.py [--quick] [--runs N] [--only dhtfs,tmpfs,bindfs]
                                         [--size-mib M] [--files F] [--writes W] [--pairs P]
                                         [--steps seq,tree,rand,fsync,op]

Prints one line per figure, ``figure: NAME=VALUE UNIT`` (e.g. ``figure: dhtfs_seq_write=412.3
MB/s``); VALUE is the median over the runs, and every individual run is printed first as a
``# `` comment line. MB = 10^6 bytes. Per run and target, on a fresh mount:

* ``seq_write``: SIZE bytes of random data (generated once, held in memory) written with
  1 MiB ``os.write`` calls, then ``os.fsync`` and close; timed from open to close.
* ``seq_read_cold``: the file read back in 1 MiB ``readinto`` calls after a cold start: dhtfs
  is stopped (SIGTERM, clean exit required) and restarted, bindfs is unmounted and mounted
  again, and the kernel caches are dropped (``echo 3 > /proc/sys/vm/drop_caches``) for all
  three (for tmpfs that evicts nothing: tmpfs lives in the page cache). Verified afterwards.
* ``seq_read_warm``: the same read again, same mount.
* ``cp``: ``cp -r`` of a tree of F files of 4 KiB (distinct random contents; 100 files per
  subdirectory) from a tmpfs source into the target, in files/s. No sync afterwards.
* ``ls``: ``ls -lR > /dev/null`` of the copied tree right after the cp, same mount, no cache
  dropping (so the kernel's dentry/attr caches are as the cp left them), in entries/s where
  entries = files + subdirectories.
* ``rm``: ``rm -rf`` of the tree, in files/s.
* ``rand_write``: a 64 MiB file is written sequentially (1 MiB writes of random data, then
  fsync and close; untimed), opened again (``O_WRONLY``, untimed), then W random 4 KiB
  ``os.pwrite`` calls at random 4 KiB-aligned offsets (distinct random data, generated
  beforehand) and close; in writes/s, timed from the first write to the close.
* ``write_fsync_64m``: in that 64 MiB file, P times one 4 KiB ``os.pwrite`` at a random aligned
  offset followed by ``os.fsync`` (one file descriptor); the median of the P (write + fsync)
  pairs in milliseconds (the figure is then the median of the runs' medians).
* ``write_fsync_4g``: the same in a 4 GiB file made sparse with ``os.truncate`` and given 1 MiB
  of content (256 KiB at each of 4 offsets spread over the file, then fsync; untimed).
* ``op_bytes_4k_in_4g`` (dhtfs only): the size in bytes of the namespace op(s) that one 4 KiB
  write + close into the 4 GiB file produce: the newest op timestamp in the state directory's
  ``namespace.db`` (``oplog`` table, opened read-only) is noted after an fsync, then one
  ``pwrite`` + close, then an fsync on a fresh descriptor (which commits the namespace), then
  the ``oplog`` rows newer than the mark are polled (5 s deadline) until a content op shows
  up; the figure is the total ``len(body)`` of the new ops that change content.

The dhtfs state directory (the block store) is on its own tmpfs, so disk speed does not enter;
the figures are the file system's own overhead. Targets run interleaved within each run
(run 1: dhtfs, tmpfs, bindfs; run 2: ...), so background noise spreads over all of them.
``--quick``: 64 MiB and 500 files (instead of 256 MiB and 2,000), W=500 random writes (instead
of 2,000) and P=50 write+fsync pairs (instead of 200), 3 runs; well under 2 minutes (16 s
on 2 cores when these steps were added). ``--steps``
runs only some groups of steps: ``seq`` (seq_write, seq_read_cold, seq_read_warm), ``tree``
(cp, ls, rm), ``rand`` (rand_write), ``fsync`` (write_fsync_64m, write_fsync_4g), ``op``
(op_bytes_4k_in_4g); all by default.

Fails loudly (exit status 1 and a one-line message on stderr) if a mount fails; every mount it
makes (tmpfs, bindfs, dhtfs) is removed in ``finally`` blocks, lazily if need be.

Reference numbers measured earlier on this machine kind (2 cores):

=====================================  =========  =========  =========  =============
target                                 write      warm read  cp         ls -lR
=====================================  =========  =========  =========  =============
pure-Python pyfuse3 passthrough/tmpfs  420 MB/s   1260 MB/s  1176 f/s   1020 entries/s
bindfs over tmpfs                      647 MB/s   1928 MB/s  3479 f/s   5115 entries/s
dhtfs targets                          >=400      >=1000     >=1500     >=3000
=====================================  =========  =========  =========  =============

Targets for the small-write figures (issue: random writes into a large file):

* ``dhtfs_rand_write`` >= 0.5 x ``bindfs_rand_write``;
* ``dhtfs_write_fsync_64m`` and ``dhtfs_write_fsync_4g`` <= 1 ms (median per write + fsync
  pair), and equal to each other: the cost of a small write must not grow with the file size;
* ``dhtfs_op_bytes_4k_in_4g`` <= 1 KiB (1024 bytes): the op a small write produces must not
  grow with the file size either.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from testkit.env import MOUNT  # noqa: E402
from testkit.mounting import Mount, cleanup, is_mounted  # noqa: E402
from testkit.wait import wait_until  # noqa: E402

KiB = 1024
MiB = 1024 * 1024
GiB = 1024 * MiB
MB = 1000 * 1000
FILE_SIZE = 4096
BLOCK = 4096  # rand_write / write_fsync write size and alignment
RAND_FILE_SIZE = 64 * MiB
SPARSE_FILE_SIZE = 4 * GiB
SPARSE_PIECES = 4  # pieces of content written into the sparse file (1 MiB in all)
OP_DEADLINE = 5.0  # seconds to wait for the content op to show in the oplog table
FILES_PER_DIR = 100
TARGETS = ("dhtfs", "tmpfs", "bindfs")
UNITS = {
    "seq_write": "MB/s",
    "seq_read_cold": "MB/s",
    "seq_read_warm": "MB/s",
    "cp": "files/s",
    "ls": "entries/s",
    "rm": "files/s",
    "rand_write": "writes/s",
    "write_fsync_64m": "ms",
    "write_fsync_4g": "ms",
    "op_bytes_4k_in_4g": "bytes",
}
DECIMALS = {"ms": 3, "bytes": 0}  # figure precision by unit (default 1)
STEPS = {
    "seq": ("seq_write", "seq_read_cold", "seq_read_warm"),
    "tree": ("cp", "ls", "rm"),
    "rand": ("rand_write",),
    "fsync": ("write_fsync_64m", "write_fsync_4g"),
    "op": ("op_bytes_4k_in_4g",),
}


class BenchError(Exception):
    """A mount or a benchmark step failed; the message is printed as is."""


def note(text: str) -> None:
    print(f"# {text}", flush=True)


def run(cmd: list[str], **kwargs: object) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise BenchError(f"{' '.join(cmd)} exited {proc.returncode}: {' | '.join(detail[-3:])}")


def mounts_under(work: Path) -> list[Path]:
    """Mount points at or below ``work`` (normally none left when we are done)."""
    with open("/proc/mounts") as fh:
        points = [Path(line.split()[1]) for line in fh]
    return [m for m in points if m == work or work in m.parents]


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as fh:
        fh.write("3\n")


# --- mounts -----------------------------------------------------------------------------


def mount_tmpfs(path: Path, size: str = "4g") -> None:
    path.mkdir(parents=True, exist_ok=True)
    run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)])
    if not is_mounted(path):
        raise BenchError(f"tmpfs at {path}: mount succeeded but it is not in /proc/mounts")


def umount_tmpfs(path: Path) -> None:
    if is_mounted(path):
        proc = subprocess.run(["umount", str(path)], capture_output=True, check=False)
        if proc.returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@dataclass
class Bindfs:
    """``bindfs -o big_writes SRC MNT`` (drops ``big_writes`` if this bindfs rejects it)."""

    source: Path
    mountpoint: Path
    options: list[str] = field(default_factory=lambda: ["big_writes"])

    def start(self) -> None:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        cmd = ["bindfs", *(["-o", ",".join(self.options)] if self.options else [])]
        proc = subprocess.run(
            [*cmd, str(self.source), str(self.mountpoint)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0 and "big_writes" in self.options:
            note(f"bindfs rejected -o big_writes ({proc.stderr.strip()}); mounting without it")
            self.options.remove("big_writes")
            return self.start()
        if proc.returncode != 0:
            raise BenchError(f"bindfs exited {proc.returncode}: {proc.stderr.strip()}")
        wait_until(lambda: is_mounted(self.mountpoint), f"bindfs at {self.mountpoint}", 10)

    def stop(self) -> None:
        if is_mounted(self.mountpoint):
            run(["fusermount3", "-u", str(self.mountpoint)])

    def cleanup(self) -> None:
        cleanup(self.mountpoint)


class Target:
    """One file system under test: ``setup``, ``cold`` (remount/drop caches), ``teardown``."""

    name: str
    root: Path

    def setup(self) -> None:
        raise NotImplementedError

    def cold(self) -> None:
        raise NotImplementedError

    def teardown(self) -> None:
        raise NotImplementedError

    def daemon_pid(self) -> int | None:
        """The pid of the daemon serving the mount, when we started it ourselves."""
        return None

    def namespace_db(self) -> Path | None:
        """The dhtfs namespace database (SQLite) behind the mount; None for other targets."""
        return None


class TmpfsTarget(Target):
    name = "tmpfs"

    def __init__(self, work: Path) -> None:
        self.root = work / "tmpfs"

    def setup(self) -> None:
        mount_tmpfs(self.root)

    def cold(self) -> None:
        drop_caches()

    def teardown(self) -> None:
        umount_tmpfs(self.root)


class BindfsTarget(Target):
    name = "bindfs"

    def __init__(self, work: Path) -> None:
        self.back = work / "bindfs-back"
        self.root = work / "bindfs"
        self.bindfs = Bindfs(self.back, self.root)

    def setup(self) -> None:
        mount_tmpfs(self.back)
        self.bindfs.start()

    def cold(self) -> None:
        self.bindfs.stop()
        drop_caches()
        self.bindfs.start()

    def teardown(self) -> None:
        try:
            self.bindfs.stop()
        finally:
            self.bindfs.cleanup()
            umount_tmpfs(self.back)


class DhtfsTarget(Target):
    name = "dhtfs"

    def __init__(self, work: Path) -> None:
        self.statefs = work / "dhtfs-statefs"
        self.root = work / "dhtfs"
        self.mount = Mount(self.root, self.statefs / "state")

    def _start(self) -> None:
        try:
            self.mount.start()
        except (RuntimeError, TimeoutError) as exc:
            raise BenchError(f"dhtfs mount failed: {exc} {self.mount.log_text()[-2000:]}") from exc

    def _stop(self) -> None:
        status = self.mount.stop()
        if status != 0:
            raise BenchError(f"mount.dhtfs exited {status}: {self.mount.log_text()[-2000:]}")

    def setup(self) -> None:
        mount_tmpfs(self.statefs)
        self._start()

    def daemon_pid(self) -> int | None:
        proc = self.mount.proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def namespace_db(self) -> Path | None:
        return self.mount.state / "namespace.db"

    def cold(self) -> None:
        self._stop()
        drop_caches()
        self._start()

    def teardown(self) -> None:
        try:
            self._stop()
        except Exception:
            self.mount.kill()
            raise
        finally:
            cleanup(self.root)
            umount_tmpfs(self.statefs)


# --- workloads ----------------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def seq_write(path: Path, data: memoryview) -> float:
    def go() -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for off in range(0, len(data), MiB):
                rest = data[off : off + MiB]
                while rest:
                    rest = rest[os.write(fd, rest) :]
            os.fsync(fd)
        finally:
            os.close(fd)

    return timed(go)


def seq_read(path: Path, data: memoryview) -> float:
    buf = bytearray(len(data))
    view = memoryview(buf)

    def go() -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            off = 0
            while True:
                n = os.readv(fd, [view[off : off + MiB]])
                if n == 0:
                    break
                off += n
        finally:
            os.close(fd)
        if off != len(data):
            raise BenchError(f"{path}: read {off} bytes, wrote {len(data)}")

    elapsed = timed(go)
    if buf != data:
        raise BenchError(f"{path}: read back different contents")
    return elapsed


def write_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def fsync_path(path: Path) -> None:
    """``fsync`` on a fresh read-only descriptor (dhtfs: commits its namespace)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_rand_file(path: Path) -> None:
    """RAND_FILE_SIZE bytes of random data, written sequentially in 1 MiB writes; fsynced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for off in range(0, RAND_FILE_SIZE, MiB):
            write_all(fd, os.urandom(MiB), off)
        os.fsync(fd)
    finally:
        os.close(fd)


def make_sparse_file(path: Path) -> None:
    """A SPARSE_FILE_SIZE file (``os.truncate``) with 1 MiB of random content in SPARSE_PIECES
    pieces spread over it; fsynced. Never holds more than the 1 MiB in memory."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.truncate(fd, SPARSE_FILE_SIZE)
        piece = MiB // SPARSE_PIECES
        stride = (SPARSE_FILE_SIZE - piece) // (SPARSE_PIECES - 1) // BLOCK * BLOCK
        for i in range(SPARSE_PIECES):
            write_all(fd, os.urandom(piece), i * stride)
        os.fsync(fd)
    finally:
        os.close(fd)
    if os.stat(path).st_size != SPARSE_FILE_SIZE:
        raise BenchError(f"{path}: size {os.stat(path).st_size}, expected {SPARSE_FILE_SIZE}")


def random_offsets(rng: random.Random, file_size: int, n: int) -> list[int]:
    return [rng.randrange(file_size // BLOCK) * BLOCK for _ in range(n)]


def rand_write(path: Path, rng: random.Random, nwrites: int) -> float:
    """Seconds for ``nwrites`` random 4 KiB pwrites into ``path`` plus the close."""
    offsets = random_offsets(rng, os.stat(path).st_size, nwrites)
    data = memoryview(os.urandom(nwrites * BLOCK))
    fd = os.open(path, os.O_WRONLY)
    closed = False
    try:
        t0 = time.perf_counter()
        for i, off in enumerate(offsets):
            if os.pwrite(fd, data[i * BLOCK : (i + 1) * BLOCK], off) != BLOCK:
                raise BenchError(f"{path}: short write at {off}")
        closed = True
        os.close(fd)
        return time.perf_counter() - t0
    finally:
        if not closed:
            os.close(fd)


def write_fsync(path: Path, rng: random.Random, npairs: int) -> float:
    """Median milliseconds of ``npairs`` (random 4 KiB pwrite + fsync) pairs in ``path``."""
    offsets = random_offsets(rng, os.stat(path).st_size, npairs)
    data = memoryview(os.urandom(npairs * BLOCK))
    times: list[float] = []
    fd = os.open(path, os.O_WRONLY)
    try:
        for i, off in enumerate(offsets):
            t0 = time.perf_counter()
            if os.pwrite(fd, data[i * BLOCK : (i + 1) * BLOCK], off) != BLOCK:
                raise BenchError(f"{path}: short write at {off}")
            os.fsync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
    return statistics.median(times) * 1000


def read_oplog(db_path: Path, after_ts: int | None) -> list[tuple[int, bytes]]:
    """``(ts, body)`` of the committed ``oplog`` rows newer than ``after_ts`` (None: only the
    newest row), newest first; the database is opened read-only (it is in WAL mode)."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5.0)
    try:
        if after_ts is None:
            query, args = "SELECT ts, body FROM oplog ORDER BY ts DESC LIMIT 1", ()
        else:
            query, args = "SELECT ts, body FROM oplog WHERE ts > ? ORDER BY ts DESC", (after_ts,)
        return [(ts, bytes(body)) for ts, body in db.execute(query, args)]
    finally:
        db.close()


def op_bytes(path: Path, db_path: Path, rng: random.Random) -> tuple[float, str]:
    """Bytes of the content op(s) one 4 KiB write + close into ``path`` produces (see the
    module docstring); → (bytes, a description of the new ops for the ``# `` line)."""
    from dhtfs.meta.ops import decode_op  # here: the rest of the bench does not need dhtfs

    fsync_path(path)  # commits whatever the earlier steps left in the open transaction
    newest = read_oplog(db_path, None)
    mark = newest[0][0] if newest else 0
    fd = os.open(path, os.O_WRONLY)
    try:
        write_all(fd, os.urandom(BLOCK), random_offsets(rng, SPARSE_FILE_SIZE, 1)[0])
    finally:
        os.close(fd)
    fsync_path(path)
    deadline = time.monotonic() + OP_DEADLINE
    while True:
        rows = read_oplog(db_path, mark)
        kinds: list[str] = []
        total = 0
        for _ts, body in rows:
            op_kinds = [str(change.get("c")) for change in decode_op(body).changes]
            kinds.append("+".join(op_kinds))
            if any(kind.startswith("content") for kind in op_kinds):
                total += len(body)
        if total:
            sizes = ", ".join(f"{k} {len(b)} B" for k, (_ts, b) in zip(kinds, rows, strict=True))
            return float(total), f"{len(rows)} new op(s): {sizes}"
        if time.monotonic() > deadline:
            raise BenchError(
                f"no content op in {db_path} within {OP_DEADLINE} s of a 4 KiB write + close "
                f"(new ops: {kinds or 'none'})"
            )
        time.sleep(0.02)


def make_tree(root: Path, nfiles: int) -> int:
    """``nfiles`` files of 4 KiB, distinct random contents, 100 per subdirectory; → #dirs."""
    ndirs = 0
    for i in range(nfiles):
        sub = root / f"d{i // FILES_PER_DIR:03d}"
        if i % FILES_PER_DIR == 0:
            sub.mkdir(parents=True)
            ndirs += 1
        (sub / f"f{i:05d}").write_bytes(os.urandom(FILE_SIZE))
    return ndirs


def timed_cmd(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    with open(os.devnull, "w") as null:
        proc = subprocess.run(cmd, stdout=null, stderr=subprocess.PIPE, text=True, check=False)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()[:500]}")
    return elapsed


@dataclass
class Params:
    size: int
    nfiles: int
    runs: int
    only: list[str]
    writes: int = 2000
    pairs: int = 200
    steps: list[str] = field(default_factory=lambda: list(STEPS))

    def figures(self, target: str) -> list[str]:
        """The figure suffixes this run measures for ``target``, in print order."""
        keys = {key for group in self.steps for key in STEPS[group]}
        if target != "dhtfs":
            keys.discard("op_bytes_4k_in_4g")
        return [key for key in UNITS if key in keys]


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_target(
    target: Target, params: Params, data: memoryview, tree: Path, ndirs: int, run_no: int = 1
) -> tuple[dict[str, float], dict[str, float], dict[str, str]]:
    """One run on a fresh mount of ``target``.

    Returns (figure suffix → value, figure suffix → CPU seconds the daemon used in that step,
    the latter only for targets with a daemon we started, i.e. dhtfs; figure suffix → extra
    detail for the run's ``# `` line). Random offsets are seeded by run and step, so every
    target of a run writes at the same offsets.
    """
    out: dict[str, float] = {}
    cpu: dict[str, float] = {}
    detail: dict[str, str] = {}
    wanted = set(params.figures(target.name))

    def measure(key: str, fn: Callable[[], float]) -> None:
        if key not in wanted:
            return
        pid = target.daemon_pid()
        before = process_cpu(pid) if pid else 0.0
        out[key] = fn()
        if pid:
            cpu[key] = process_cpu(pid) - before

    def step(key: str, amount: float, fn: Callable[[], float]) -> None:
        measure(key, lambda: amount / fn())

    def rng(key: str) -> random.Random:
        return random.Random(f"{run_no}/{key}")

    pairs = params.pairs
    target.setup()
    try:
        if "seq" in params.steps:
            big = target.root / "big"
            size_mb = params.size / MB
            step("seq_write", size_mb, lambda: seq_write(big, data))
            target.cold()
            step("seq_read_cold", size_mb, lambda: seq_read(big, data))
            step("seq_read_warm", size_mb, lambda: seq_read(big, data))
        if "tree" in params.steps:
            dest = target.root / "tree"
            step("cp", params.nfiles, lambda: timed_cmd(["cp", "-r", str(tree), str(dest)]))
            step("ls", params.nfiles + ndirs, lambda: timed_cmd(["ls", "-lR", str(dest)]))
            step("rm", params.nfiles, lambda: timed_cmd(["rm", "-rf", str(dest)]))
            if dest.exists():
                raise BenchError(f"{dest} still exists after rm -rf")
        if {"rand", "fsync"} & set(params.steps):
            file64 = target.root / "rand64m"
            make_rand_file(file64)
            writes = params.writes
            step("rand_write", writes, lambda: rand_write(file64, rng("rand_write"), writes))
            measure("write_fsync_64m", lambda: write_fsync(file64, rng("fsync_64m"), pairs))
        if {"fsync", "op"} & set(params.steps):
            file4g = target.root / "sparse4g"
            make_sparse_file(file4g)
            measure("write_fsync_4g", lambda: write_fsync(file4g, rng("fsync_4g"), pairs))
            db = target.namespace_db()
            if db is not None and "op_bytes_4k_in_4g" in wanted:

                def op() -> float:
                    value, detail["op_bytes_4k_in_4g"] = op_bytes(file4g, db, rng("op"))
                    return value

                measure("op_bytes_4k_in_4g", op)
    finally:
        target.teardown()
    return out, cpu, detail


def fmt(value: float, unit: str) -> str:
    return f"{value:.{DECIMALS.get(unit, 1)}f}"


def header(params: Params) -> None:
    note(
        f"dhtfs fs benchmark: nproc={os.cpu_count()} kernel={platform.release()} "
        f"python={platform.python_version()} size={params.size // MiB} MiB "
        f"files={params.nfiles}x{FILE_SIZE} B ({FILES_PER_DIR}/dir) runs={params.runs} "
        f"targets={','.join(params.only)} rand_write={params.writes}x{BLOCK} B in "
        f"{RAND_FILE_SIZE // MiB} MiB write_fsync={params.pairs} pairs "
        f"steps={','.join(params.steps)}"
    )
    note("MB = 10^6 bytes; each figure is the median of the runs listed above it")
    note(
        "seq_read_cold: after dhtfs restart / bindfs remount + drop_caches; "
        "ls: right after cp on the same mount; dhtfs state on its own tmpfs"
    )
    note(
        "write_fsync_*: median ms per (4 KiB pwrite + fsync) pair within a run; "
        "op_bytes_4k_in_4g: bytes of the content op of one 4 KiB write + close (dhtfs only)"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="64 MiB and 500 files")
    p.add_argument("--runs", type=int, default=3, help="runs per target (default 3)")
    p.add_argument("--only", default=",".join(TARGETS), help="comma-separated targets")
    p.add_argument("--size-mib", type=int, help="sequential file size in MiB")
    p.add_argument("--files", type=int, help="number of 4 KiB files for cp/ls/rm")
    p.add_argument("--writes", type=int, help="random 4 KiB writes for rand_write")
    p.add_argument("--pairs", type=int, help="write+fsync pairs for write_fsync_*")
    p.add_argument(
        "--steps",
        default=",".join(STEPS),
        help=f"comma-separated step groups (default all: {','.join(STEPS)})",
    )
    args = p.parse_args(argv)
    only = [t.strip() for t in args.only.split(",") if t.strip()]
    unknown = sorted(set(only) - set(TARGETS))
    if unknown or not only:
        p.error(f"--only: unknown target(s) {unknown}; choose from {','.join(TARGETS)}")
    if args.runs < 1:
        p.error("--runs must be at least 1")
    size_mib = args.size_mib or (64 if args.quick else 256)
    nfiles = args.files or (500 if args.quick else 2000)
    if size_mib < 1 or nfiles < 1:
        p.error("--size-mib and --files must be positive")
    writes = args.writes or (500 if args.quick else 2000)
    pairs = args.pairs or (50 if args.quick else 200)
    if writes < 1 or pairs < 1:
        p.error("--writes and --pairs must be positive")
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown or not steps:
        p.error(f"--steps: unknown step(s) {unknown}; choose from {','.join(STEPS)}")
    steps = [s for s in STEPS if s in steps]
    if os.geteuid() != 0:
        print("fs.py: must run as root (mounts tmpfs, drops caches)", file=sys.stderr)
        return 1
    if "dhtfs" in only and not Path(MOUNT).exists():
        print(f"fs.py: {MOUNT} not found; run with the venv's python", file=sys.stderr)
        return 1
    if "bindfs" in only and shutil.which("bindfs") is None:
        print("fs.py: bindfs not installed", file=sys.stderr)
        return 1
    params = Params(size_mib * MiB, nfiles, args.runs, only, writes, pairs, steps)

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    header(params)
    work = Path(tempfile.mkdtemp(prefix="dhtfs-bench-"))
    src = work / "src"
    try:
        with contextlib.ExitStack() as stack:
            mount_tmpfs(src)
            stack.callback(umount_tmpfs, src)
            data = memoryview(os.urandom(params.size if "seq" in steps else 0))
            tree = src / "tree"
            ndirs = make_tree(tree, nfiles) if "tree" in steps else 0
            make: dict[str, Callable[[Path], Target]] = {
                "dhtfs": DhtfsTarget,
                "tmpfs": TmpfsTarget,
                "bindfs": BindfsTarget,
            }
            targets = [make[name](work) for name in only]
            results: dict[str, list[float]] = {}
            for i in range(1, params.runs + 1):
                for target in targets:
                    figures, cpu, detail = bench_target(target, params, data, tree, ndirs, i)
                    for key, value in figures.items():
                        name = f"{target.name}_{key}"
                        results.setdefault(name, []).append(value)
                        extras = [f"daemon cpu {cpu[key]:.2f} s"] if key in cpu else []
                        extras += [detail[key]] if key in detail else []
                        extra = f" ({'; '.join(extras)})" if extras else ""
                        note(f"run {i} {name}={fmt(value, UNITS[key])} {UNITS[key]}{extra}")
            for key in UNITS:
                for target in targets:
                    name = f"{target.name}_{key}"
                    if name in results:
                        value = fmt(statistics.median(results[name]), UNITS[key])
                        print(f"figure: {name}={value} {UNITS[key]}")
    except BenchError as exc:
        print(f"fs.py: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fs.py: interrupted; mounts removed", file=sys.stderr)
        return 130
    finally:
        for m in sorted(mounts_under(work), key=lambda m: len(m.parts), reverse=True):
            cleanup(m)  # FUSE: fusermount3 -u -z
            umount_tmpfs(m)
        if any(mounts_under(work)):
            print(f"fs.py: could not unmount everything under {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
