#!/usr/bin/env python3
"""File-system benchmark: dhtfs with its state directory on the real disk, bindfs over a
directory on the same disk and that plain disk directory, side by side in one run, with the
CPU each rate cost beside it.

Usage (as root, from the repo root, with the venv's interpreter)::

    .venv/bin/python scripts/bench/fs.py [--quick] [--runs N] [--only dhtfs,bindfs,disk]
                                         [--state-on disk|tmpfs|both] [--size-mib M]
                                         [--files F] [--writes W] [--pairs P]
                                         [--steps seq,tree,rand,fsync,op]

Prints one line per figure, ``figure: NAME=VALUE UNIT`` (e.g. ``figure: dhtfs_seq_write=412.3
MB/s``); VALUE is the median over the runs, and every individual run is printed first as a
``# `` comment line. MB = 10^6 bytes.

Targets (``--only`` picks among the kinds; ``--state-on`` where their storage is):

* ``dhtfs``: a single-node ``mount.dhtfs`` whose state directory is a fresh directory under
  ``/var/tmp`` (the root ext4 here, where ``/var/lib/dhtfs`` would be);
* ``bindfs``: ``bindfs -f -o big_writes`` over a fresh directory on that same disk;
* ``disk``: that plain ext4 directory, no FUSE (the floor);
* with ``--state-on tmpfs`` (or ``both``, as a second column): ``dhtfs_tmpfs`` (state on a
  tmpfs of its own), ``bindfs_tmpfs`` (over a tmpfs) and ``tmpfs``: the figures earlier
  versions of this script printed as ``dhtfs_*``, ``bindfs_*`` and ``tmpfs_*``.

Per run and target, on a fresh mount and an empty backing directory:

* ``seq_write``: SIZE bytes of random data (generated once, held in memory) written with
  1 MiB ``os.write`` calls, then ``os.fsync`` and close; timed from open to close.
* ``seq_read_cold``: the file read back in 1 MiB reads after a cold start: dhtfs is stopped
  (SIGTERM, clean exit required) and restarted, bindfs is unmounted and mounted again, and the
  kernel caches are dropped (``sync; echo 3 > /proc/sys/vm/drop_caches``) for every target.
  Verified afterwards.
* ``seq_read_warm``: the same read again, same mount.
* ``cp``: ``cp -r`` of a tree of F files of 4 KiB (distinct random contents; 100 files per
  subdirectory) from a tmpfs source into the target, in files/s. No sync afterwards.
* ``ls``: ``ls -lR > /dev/null`` of the copied tree right after the cp, same mount, no cache
  dropping, in entries/s where entries = files + subdirectories.
* ``rm``: ``rm -rf`` of the tree, in files/s.
* ``rand_write``: a 64 MiB file is written sequentially (untimed, fsynced), opened again, then
  W random 4 KiB ``os.pwrite`` calls at random 4 KiB-aligned offsets and close; in writes/s,
  timed from the first write to the close. Offsets are seeded by run: the same for every
  target of a run.
* ``write_fsync_64m``: in that 64 MiB file, P times one 4 KiB ``os.pwrite`` at a random aligned
  offset followed by ``os.fsync``; the median of the P pairs in ms (the figure: the median of
  the runs' medians).
* ``write_fsync_4g``: the same in a 4 GiB sparse file (``os.truncate``) holding 1 MiB of
  content (256 KiB at each of 4 offsets spread over it; untimed).
* ``op_bytes_4k_in_4g`` (dhtfs only): the bytes of the namespace op(s) one 4 KiB write + close
  into the 4 GiB file produces, read from ``namespace.db`` (``oplog``, read-only): the mark is
  the newest op once the group commit settled after an fsync (a small fsync need not commit
  SQLite), then the ops past it that show up (5 s deadline).

CPU beside every figure: ``NAME_cpu`` is the CPU (user + system, all threads, from
``/proc/PID/stat``) the daemon serving the mount (dhtfs, bindfs) used during that step;
``NAME_client_cpu`` is the CPU of this process and the children it waited for (``cp``,
``ls``, ``rm``) during the step, which holds the kernel's work on the client's side (for
``disk``: the whole file system's). Units: ms/MB for byte rates, ms/op for the others (an op:
a file, an entry, a write, a write + fsync pair); the step's window includes its small
untimed preparation (e.g. drawing the random offsets). The kernel counts CPU in 10 ms ticks:
a step's CPU figure is only as fine as 10 ms over its amount of work. A busy machine moves
MB/s far more than these. ``NAME_vs_bindfs`` figures: the ratio of the dhtfs median to the
bindfs median.

Targets run interleaved within each run (run 1: dhtfs, bindfs, disk; run 2: ...), so
background noise spreads over all of them. ``--quick``: 64 MiB and 500 files (instead of
256 MiB and 2,000), W=500 random writes (instead of 2,000), P=50 write + fsync pairs (instead
of 200), 3 runs. ``--steps`` runs only some groups: ``seq`` (seq_write, seq_read_cold,
seq_read_warm), ``tree`` (cp, ls, rm), ``rand`` (rand_write), ``fsync`` (write_fsync_64m,
write_fsync_4g), ``op`` (op_bytes_4k_in_4g); all by default.

Fails loudly (exit status 1 and a one-line message on stderr) if a mount fails; every mount it
makes is removed in ``finally`` blocks, lazily if need be, and the work directory under
``/var/tmp`` (``DHTFS_BENCH_DIR`` overrides) is deleted.

Targets (issue 18, on the disk, bindfs over the same disk in the same run): seq_write >= 1.7 x
bindfs, ls >= 1.5 x bindfs, rand_write >= 0.5 x bindfs, write_fsync_64m and write_fsync_4g
<= 1 ms and equal to each other, op_bytes_4k_in_4g <= 1 KiB.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from _common import (
    KINDS,
    MB,
    BenchError,
    Figures,
    GiB,
    MiB,
    Target,
    check_tools,
    fmt,
    guarded,
    make_targets,
    measured,
    mount_tmpfs,
    note,
    parse_targets,
    timed_cmd,
    work_dir,
)

FILE_SIZE = 4096
BLOCK = 4096  # rand_write / write_fsync write size and alignment
RAND_FILE_SIZE = 64 * MiB
SPARSE_FILE_SIZE = 4 * GiB
SPARSE_PIECES = 4  # pieces of content written into the sparse file (1 MiB in all)
OP_DEADLINE = 5.0  # seconds to wait for the content op to show in the oplog table
FILES_PER_DIR = 100
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
STEPS = {
    "seq": ("seq_write", "seq_read_cold", "seq_read_warm"),
    "tree": ("cp", "ls", "rm"),
    "rand": ("rand_write",),
    "fsync": ("write_fsync_64m", "write_fsync_4g"),
    "op": ("op_bytes_4k_in_4g",),
}


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


SETTLE = 0.3


def op_bytes(path: Path, db_path: Path, rng: random.Random) -> tuple[float, str]:
    """Bytes of the content op(s) one 4 KiB write + close into ``path`` produces (see the
    module docstring); → (bytes, a description of the new ops for the ``# `` line)."""
    from dhtfs.meta.ops import decode_op  # here: the rest of the bench does not need dhtfs

    fsync_path(path)
    # An fsync need not commit SQLite (the fsync journal holds small ones): the mark is the
    # newest op once the group commit has caught up (the same twice, SETTLE seconds apart).
    mark, deadline = -1, time.monotonic() + OP_DEADLINE
    while time.monotonic() < deadline:
        newest = read_oplog(db_path, None)
        now = newest[0][0] if newest else 0
        if now == mark:
            break
        mark = now
        time.sleep(SETTLE)
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


@dataclass
class Params:
    size: int
    nfiles: int
    runs: int
    writes: int = 2000
    pairs: int = 200
    steps: list[str] = field(default_factory=lambda: list(STEPS))

    def figures(self, target: Target) -> list[str]:
        """The figure suffixes this run measures for ``target``, in print order."""
        keys = {key for group in self.steps for key in STEPS[group]}
        if target.kind != "dhtfs":
            keys.discard("op_bytes_4k_in_4g")
        return [key for key in UNITS if key in keys]


def bench_target(target: Target, params: Params, data: memoryview, tree: Path, ndirs: int,
                 figs: Figures, run_no: int) -> None:
    """One run on a fresh mount of ``target``: its figures (and their CPU) into ``figs``, one
    ``# run`` line each. Random offsets are seeded by run and step (the same for every target
    of a run)."""
    wanted = set(params.figures(target))

    def measure(key: str, fn: Callable[[], float], amount: float, cpu_unit: str,
                per_second: bool = True, detail: str = "") -> None:
        """``fn`` returns seconds (``per_second``: the figure is amount / seconds) or the
        figure itself; its CPU is charged per ``amount`` units of work."""
        if key not in wanted:
            return
        box: list[float] = []
        cost = measured(target, lambda: box.append(fn()))
        value = amount / box[0] if per_second else box[0]
        unit = UNITS[key]
        figs.add(f"{target.name}_{key}", value, unit)
        if unit != "bytes":  # op_bytes: a size, not work
            figs.add_cost(target.name, key, cost, amount, cpu_unit)
        cpu = [f"daemon cpu {cost.daemon:.2f} s"] if cost.daemon is not None else []
        cpu += [f"client cpu {cost.client:.2f} s"] + ([detail] if detail else [])
        note(f"run {run_no} {target.name}_{key}={fmt(value, unit)} {unit} ({'; '.join(cpu)})")

    def rng(key: str) -> random.Random:
        return random.Random(f"{run_no}/{key}")

    pairs = params.pairs
    target.setup()
    try:
        if "seq" in params.steps:
            big = target.root / "big"
            size_mb = params.size / MB
            measure("seq_write", lambda: seq_write(big, data), size_mb, "ms/MB")
            target.cold()
            measure("seq_read_cold", lambda: seq_read(big, data), size_mb, "ms/MB")
            measure("seq_read_warm", lambda: seq_read(big, data), size_mb, "ms/MB")
        if "tree" in params.steps:
            dest = target.root / "tree"
            n = params.nfiles
            measure("cp", lambda: timed_cmd(["cp", "-r", str(tree), str(dest)]), n, "ms/op")
            measure("ls", lambda: timed_cmd(["ls", "-lR", str(dest)]), n + ndirs, "ms/op")
            measure("rm", lambda: timed_cmd(["rm", "-rf", str(dest)]), n, "ms/op")
            if dest.exists():
                raise BenchError(f"{dest} still exists after rm -rf")
        if {"rand", "fsync"} & set(params.steps):
            file64 = target.root / "rand64m"
            make_rand_file(file64)
            writes = params.writes
            measure("rand_write", lambda: rand_write(file64, rng("rand_write"), writes),
                    writes, "ms/op")
            measure("write_fsync_64m", lambda: write_fsync(file64, rng("fsync_64m"), pairs),
                    pairs, "ms/op", per_second=False)
        if {"fsync", "op"} & set(params.steps):
            file4g = target.root / "sparse4g"
            make_sparse_file(file4g)
            measure("write_fsync_4g", lambda: write_fsync(file4g, rng("fsync_4g"), pairs),
                    pairs, "ms/op", per_second=False)
            db = target.namespace_db()
            if db is not None and "op_bytes_4k_in_4g" in wanted:
                detail: list[str] = []

                def op() -> float:
                    value, text = op_bytes(file4g, db, rng("op"))
                    detail.append(text)
                    return value

                measure("op_bytes_4k_in_4g", op, 1, "ms/op", per_second=False)
                note(f"run {run_no} op_bytes_4k_in_4g: {detail[0]}")
    finally:
        target.teardown()


def header(params: Params, names: list[str]) -> None:
    note(
        f"dhtfs fs benchmark: nproc={os.cpu_count()} kernel={platform.release()} "
        f"python={platform.python_version()} size={params.size // MiB} MiB "
        f"files={params.nfiles}x{FILE_SIZE} B ({FILES_PER_DIR}/dir) runs={params.runs} "
        f"targets={','.join(names)} rand_write={params.writes}x{BLOCK} B in "
        f"{RAND_FILE_SIZE // MiB} MiB write_fsync={params.pairs} pairs "
        f"steps={','.join(params.steps)}"
    )
    note("MB = 10^6 bytes; each figure is the median of the runs listed above it; "
         "state/backing directories on the disk under /var/tmp unless named *tmpfs*")
    note("*_cpu: the daemon's CPU; *_client_cpu: this process's and its children's CPU; "
         "per MB or per op (file, entry, write, write + fsync pair)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--quick", action="store_true", help="64 MiB and 500 files")
    p.add_argument("--runs", type=int, default=3, help="runs per target (default 3)")
    p.add_argument("--only", default=",".join(KINDS), help="comma-separated kinds")
    p.add_argument("--state-on", default="disk", help="disk (default), tmpfs or both")
    p.add_argument("--size-mib", type=int, help="sequential file size in MiB")
    p.add_argument("--files", type=int, help="number of 4 KiB files for cp/ls/rm")
    p.add_argument("--writes", type=int, help="random 4 KiB writes for rand_write")
    p.add_argument("--pairs", type=int, help="write+fsync pairs for write_fsync_*")
    p.add_argument("--steps", default=",".join(STEPS),
                   help=f"comma-separated step groups (default all: {','.join(STEPS)})")
    args = p.parse_args(argv)
    try:
        kinds, stores = parse_targets(args.only, args.state_on)
    except ValueError as exc:
        p.error(str(exc))
    if args.runs < 1:
        p.error("--runs must be at least 1")
    size_mib = args.size_mib or (64 if args.quick else 256)
    nfiles = args.files or (500 if args.quick else 2000)
    writes = args.writes or (500 if args.quick else 2000)
    pairs = args.pairs or (50 if args.quick else 200)
    if min(size_mib, nfiles, writes, pairs) < 1:
        p.error("--size-mib, --files, --writes and --pairs must be positive")
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown or not steps:
        p.error(f"--steps: unknown step(s) {unknown}; choose from {','.join(STEPS)}")
    steps = [s for s in STEPS if s in steps]
    why = check_tools(kinds)
    if why:
        print(f"fs.py: {why}", file=sys.stderr)
        return 1
    params = Params(size_mib * MiB, nfiles, args.runs, writes, pairs, steps)

    def body() -> None:
        with work_dir("dhtfs-bench-fs-") as work:
            targets = make_targets(work, kinds, stores)
            header(params, [t.name for t in targets])
            src = work / "src"
            mount_tmpfs(src)  # the cp source: read from memory, the same for every target
            data = memoryview(os.urandom(params.size if "seq" in steps else 0))
            tree = src / "tree"
            ndirs = make_tree(tree, nfiles) if "tree" in steps else 0
            figs = Figures()
            for i in range(1, params.runs + 1):
                for target in targets:
                    bench_target(target, params, data, tree, ndirs, figs, i)
            figs.print(list(UNITS), [t.name for t in targets])

    return guarded("fs.py", body)

if __name__ == "__main__":
    sys.exit(main())
