#!/usr/bin/env python3
"""File-system benchmark: dhtfs, tmpfs and bindfs-over-tmpfs side by side, in one run.

Usage (as root, from the repo root, with the venv's interpreter)::

    .venv/bin/python scripts/bench/fs.py [--quick] [--runs N] [--only dhtfs,tmpfs,bindfs]
                                         [--size-mib M] [--files F]

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

The dhtfs state directory (the chunk store) is on its own tmpfs, so disk speed does not enter;
the figures are the file system's own overhead. Targets run interleaved within each run
(run 1: dhtfs, tmpfs, bindfs; run 2: ...), so background noise spreads over all of them.
``--quick``: 64 MiB and 500 files (instead of 256 MiB and 2,000), 3 runs; 1-2 minutes.

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
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import signal
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

from tests.mounting import MOUNT, Mount, cleanup, is_mounted, wait_for  # noqa: E402

MiB = 1024 * 1024
MB = 1000 * 1000
FILE_SIZE = 4096
FILES_PER_DIR = 100
TARGETS = ("dhtfs", "tmpfs", "bindfs")
UNITS = {
    "seq_write": "MB/s",
    "seq_read_cold": "MB/s",
    "seq_read_warm": "MB/s",
    "cp": "files/s",
    "ls": "entries/s",
    "rm": "files/s",
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
        wait_for(lambda: is_mounted(self.mountpoint), f"bindfs at {self.mountpoint}", 10)

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
                chunk = data[off : off + MiB]
                while chunk:
                    chunk = chunk[os.write(fd, chunk) :]
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


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_target(
    target: Target, params: Params, data: memoryview, tree: Path, ndirs: int
) -> tuple[dict[str, float], dict[str, float]]:
    """One run on a fresh mount of ``target``.

    Returns (figure suffix → value, figure suffix → CPU seconds the daemon used in that step;
    the latter only for targets with a daemon we started, i.e. dhtfs).
    """
    out: dict[str, float] = {}
    cpu: dict[str, float] = {}

    def step(key: str, amount: float, fn: Callable[[], float]) -> None:
        pid = target.daemon_pid()
        before = process_cpu(pid) if pid else 0.0
        out[key] = amount / fn()
        if pid:
            cpu[key] = process_cpu(pid) - before

    target.setup()
    try:
        big = target.root / "big"
        size_mb = params.size / MB
        step("seq_write", size_mb, lambda: seq_write(big, data))
        target.cold()
        step("seq_read_cold", size_mb, lambda: seq_read(big, data))
        step("seq_read_warm", size_mb, lambda: seq_read(big, data))
        dest = target.root / "tree"
        step("cp", params.nfiles, lambda: timed_cmd(["cp", "-r", str(tree), str(dest)]))
        step("ls", params.nfiles + ndirs, lambda: timed_cmd(["ls", "-lR", str(dest)]))
        step("rm", params.nfiles, lambda: timed_cmd(["rm", "-rf", str(dest)]))
        if dest.exists():
            raise BenchError(f"{dest} still exists after rm -rf")
    finally:
        target.teardown()
    return out, cpu


def header(params: Params) -> None:
    note(
        f"dhtfs fs benchmark: nproc={os.cpu_count()} kernel={platform.release()} "
        f"python={platform.python_version()} size={params.size // MiB} MiB "
        f"files={params.nfiles}x{FILE_SIZE} B ({FILES_PER_DIR}/dir) runs={params.runs} "
        f"targets={','.join(params.only)}"
    )
    note("MB = 10^6 bytes; each figure is the median of the runs listed above it")
    note(
        "seq_read_cold: after dhtfs restart / bindfs remount + drop_caches; "
        "ls: right after cp on the same mount; dhtfs state on its own tmpfs"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="64 MiB and 500 files")
    p.add_argument("--runs", type=int, default=3, help="runs per target (default 3)")
    p.add_argument("--only", default=",".join(TARGETS), help="comma-separated targets")
    p.add_argument("--size-mib", type=int, help="sequential file size in MiB")
    p.add_argument("--files", type=int, help="number of 4 KiB files for cp/ls/rm")
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
    if os.geteuid() != 0:
        print("fs.py: must run as root (mounts tmpfs, drops caches)", file=sys.stderr)
        return 1
    if "dhtfs" in only and not Path(MOUNT).exists():
        print(f"fs.py: {MOUNT} not found; run with the venv's python", file=sys.stderr)
        return 1
    if "bindfs" in only and shutil.which("bindfs") is None:
        print("fs.py: bindfs not installed", file=sys.stderr)
        return 1
    params = Params(size_mib * MiB, nfiles, args.runs, only)

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
            data = memoryview(os.urandom(params.size))
            tree = src / "tree"
            ndirs = make_tree(tree, nfiles)
            make: dict[str, Callable[[Path], Target]] = {
                "dhtfs": DhtfsTarget,
                "tmpfs": TmpfsTarget,
                "bindfs": BindfsTarget,
            }
            targets = [make[name](work) for name in only]
            results: dict[str, list[float]] = {}
            for i in range(1, params.runs + 1):
                for target in targets:
                    figures, cpu = bench_target(target, params, data, tree, ndirs)
                    for key, value in figures.items():
                        name = f"{target.name}_{key}"
                        results.setdefault(name, []).append(value)
                        extra = f" (daemon cpu {cpu[key]:.2f} s)" if key in cpu else ""
                        note(f"run {i} {name}={value:.1f} {UNITS[key]}{extra}")
            for key in UNITS:
                for target in targets:
                    name = f"{target.name}_{key}"
                    print(f"figure: {name}={statistics.median(results[name]):.1f} {UNITS[key]}")
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
