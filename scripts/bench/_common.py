"""Shared parts of the file-system benchmarks (``fs.py``, ``devwork.py``, ``swarm.py``).

What is here: the targets (a dhtfs mount, bindfs over a directory, the plain directory),
each with its backing store on the real disk (a fresh directory under ``/var/tmp``, which is
the root ext4 here, where ``/var/lib/dhtfs`` would be) or, as an optional second column, on a
tmpfs; CPU accounting (the daemon's from ``/proc/PID/stat``, the client's from ``getrusage``
of this process and its waited-for children); FUSE request counts from a dhtfs mount's
Prometheus endpoint; figure printing (``figure: NAME=VALUE UNIT``, medians of the runs).

Invariants: every mount a target makes is removed in its ``teardown`` (lazily if need be) and
``work_dir`` removes whatever is still mounted below the work directory on the way out; a
target's ``setup`` gives a fresh, empty file system (dhtfs: a new state directory).
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from testkit.mounting import Mount, cleanup, is_mounted  # noqa: E402
from testkit.wait import wait_until  # noqa: E402

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
MB = 1000 * 1000
# On the root ext4 here (where /var/lib/dhtfs would be); DHTFS_BENCH_DIR overrides it (tests).
DISK_BASE = Path(os.environ.get("DHTFS_BENCH_DIR", "/var/tmp"))
KINDS = ("dhtfs", "bindfs", "disk")  # --only names; "disk" is the plain directory
STORES = ("disk", "tmpfs")


class BenchError(Exception):
    """A mount or a benchmark step failed; the message is printed as is."""


def note(text: str) -> None:
    print(f"# {text}", flush=True)


def run(cmd: list[str], **kwargs: object) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise BenchError(f"{' '.join(cmd)} exited {proc.returncode}: {' | '.join(detail[-3:])}")


def timed_cmd(cmd: list[str], cwd: Path | None = None) -> float:
    """Seconds ``cmd`` took (stdout discarded); BenchError if it failed."""
    t0 = time.perf_counter()
    with open(os.devnull, "w") as null:
        proc = subprocess.run(cmd, stdout=null, stderr=subprocess.PIPE, text=True, check=False,
                              cwd=cwd)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()[:500]}")
    return elapsed


def mounts_under(work: Path) -> list[Path]:
    """Mount points at or below ``work``."""
    with open("/proc/mounts") as fh:
        points = [Path(line.split()[1]) for line in fh]
    return [m for m in points if m == work or work in m.parents]


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as fh:
        fh.write("3\n")


def mount_tmpfs(path: Path, size: str = "6g") -> None:
    path.mkdir(parents=True, exist_ok=True)
    run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)])
    if not is_mounted(path):
        raise BenchError(f"tmpfs at {path}: mount succeeded but it is not in /proc/mounts")


def umount_tmpfs(path: Path) -> None:
    if is_mounted(path):
        proc = subprocess.run(["umount", str(path)], capture_output=True, check=False)
        if proc.returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


# --- CPU ----------------------------------------------------------------------------------


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def client_cpu() -> float:
    """User + system CPU seconds of this process and its waited-for children so far (the
    client side of a workload: this script's own calls, ``cp``, ``ls``, ``git``, workers)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


@dataclass
class Cost:
    """What one measured step cost: wall seconds, the daemon's and the client's CPU seconds
    (``daemon`` is None for a target without a daemon, i.e. the plain directory)."""

    seconds: float
    daemon: float | None
    client: float


def measured(target: Target, fn: Callable[[], object]) -> Cost:
    """Run ``fn`` and return its wall time and the CPU it cost ``target``'s daemon and us."""
    pid = target.daemon_pid()
    d0, c0 = (process_cpu(pid) if pid else 0.0), client_cpu()
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    c1 = client_cpu()
    daemon = process_cpu(pid) - d0 if pid else None
    return Cost(seconds, daemon, c1 - c0)


# --- targets ------------------------------------------------------------------------------


class Target:
    """One file system under test: ``setup`` (fresh), ``cold`` (remount, drop caches),
    ``teardown``; ``root`` is where the workload runs."""

    name: str
    kind: str
    root: Path

    def setup(self) -> None:
        raise NotImplementedError

    def cold(self) -> None:
        raise NotImplementedError

    def teardown(self) -> None:
        raise NotImplementedError

    def daemon_pid(self) -> int | None:
        """The pid of the daemon serving the mount (None: no daemon, the plain directory)."""
        return None

    def namespace_db(self) -> Path | None:
        """The dhtfs namespace database (SQLite) behind the mount; None for other targets."""
        return None

    def fuse_requests(self) -> dict[str, int] | None:
        """FUSE requests served so far by kind (dhtfs with metrics on); None otherwise."""
        return None


class Backing:
    """A directory on the disk (fresh under the work directory) or on a tmpfs of its own."""

    def __init__(self, path: Path, store: str) -> None:
        self.path, self.store = path, store

    def make(self) -> None:
        if self.store == "tmpfs":
            mount_tmpfs(self.path)
        else:
            self.path.mkdir(parents=True)

    def remove(self) -> None:
        if self.store == "tmpfs":
            umount_tmpfs(self.path)
        shutil.rmtree(self.path, ignore_errors=True)


class PlainTarget(Target):
    """The backing directory itself: ext4 (``disk``) or a tmpfs (``tmpfs``)."""

    kind = "disk"

    def __init__(self, work: Path, store: str) -> None:
        self.name = store
        self.backing = Backing(work / f"plain-{store}", store)
        self.root = self.backing.path

    def setup(self) -> None:
        self.backing.make()

    def cold(self) -> None:
        drop_caches()

    def teardown(self) -> None:
        self.backing.remove()


class DaemonTarget(Target):
    """A FUSE mount served by a daemon we start (``_start``) and stop (``_stop``) over a
    ``backing`` directory: cold = stop, drop the caches, start again."""

    backing: Backing

    def _start(self) -> None:
        raise NotImplementedError

    def _stop(self) -> None:
        raise NotImplementedError

    def setup(self) -> None:
        self.backing.make()
        self._start()

    def cold(self) -> None:
        self._stop()
        drop_caches()
        self._start()


class BindfsTarget(DaemonTarget):
    """``bindfs -f -o big_writes BACKING MNT`` (drops ``big_writes`` if rejected); we start
    the daemon in the foreground ourselves, so its pid is ours to measure."""

    kind = "bindfs"

    def __init__(self, work: Path, store: str) -> None:
        self.name = "bindfs" if store == "disk" else "bindfs_tmpfs"
        self.backing = Backing(work / f"bindfs-back-{store}", store)
        self.root = work / f"bindfs-{store}"
        self.options = ["big_writes"]
        self.proc: subprocess.Popen[bytes] | None = None

    def _start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        opts = ["-o", ",".join(self.options)] if self.options else []
        log = self.root.parent / f"{self.root.name}.log"
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(["bindfs", "-f", *opts, str(self.backing.path),
                                          str(self.root)], stdout=out, stderr=out)
        proc = self.proc
        wait_until(lambda: is_mounted(self.root) or proc.poll() is not None,
                   f"bindfs at {self.root}", 10)
        if proc.poll() is not None:
            text = log.read_text(errors="replace").strip()
            if "big_writes" in self.options:
                note(f"bindfs rejected -o big_writes ({text}); mounting without it")
                self.options.remove("big_writes")
                return self._start()
            raise BenchError(f"bindfs exited {proc.returncode}: {text}")

    def _stop(self) -> None:
        if is_mounted(self.root):
            run(["fusermount3", "-u", str(self.root)])
        if self.proc is not None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def daemon_pid(self) -> int | None:
        proc = self.proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def teardown(self) -> None:
        try:
            self._stop()
        finally:
            cleanup(self.root)
            self.backing.remove()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape_fuse_requests(port: int) -> dict[str, int]:
    """``dhtfs_fuse_op_seconds_count`` of the endpoint on ``port``, summed by ``op``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("dhtfs_fuse_op_seconds_count{"):
            labels, value = line[len("dhtfs_fuse_op_seconds_count{"):].split("} ")
            op = dict(part.split("=", 1) for part in labels.split(","))["op"].strip('"')
            out[op] = out.get(op, 0) + int(float(value))
    return out


class DhtfsTarget(DaemonTarget):
    """A single-node dhtfs mount whose state directory is on the disk or on a tmpfs; with
    ``metrics``, its Prometheus endpoint on a free loopback port (FUSE request counts)."""

    kind = "dhtfs"

    def __init__(self, work: Path, store: str, metrics: bool = False) -> None:
        self.name = "dhtfs" if store == "disk" else "dhtfs_tmpfs"
        self.backing = Backing(work / f"dhtfs-state-{store}", store)
        self.root = work / f"dhtfs-{store}"
        self.port = free_port() if metrics else None
        options = [f"metrics=127.0.0.1:{self.port}"] if self.port else []
        self.mount = Mount(self.root, self.backing.path / "state", options=options)

    def _start(self) -> None:
        try:
            self.mount.start()
        except (RuntimeError, TimeoutError) as exc:
            raise BenchError(f"dhtfs mount failed: {exc} {self.mount.log_text()[-2000:]}") from exc

    def _stop(self) -> None:
        status = self.mount.stop()
        if status != 0:
            raise BenchError(f"mount.dhtfs exited {status}: {self.mount.log_text()[-2000:]}")

    def daemon_pid(self) -> int | None:
        proc = self.mount.proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def namespace_db(self) -> Path | None:
        return self.mount.state / "namespace.db"

    def fuse_requests(self) -> dict[str, int] | None:
        if self.port is None:
            return None
        port = self.port
        wait_until(lambda: _answers(port), "the metrics endpoint", 30)
        return scrape_fuse_requests(port)

    def teardown(self) -> None:
        try:
            self._stop()
        except Exception:
            self.mount.kill()
            raise
        finally:
            cleanup(self.root)
            self.backing.remove()


def _answers(port: int) -> bool:
    try:
        scrape_fuse_requests(port)
        return True
    except OSError:
        return False


def make_targets(work: Path, kinds: list[str], stores: list[str],
                 metrics: bool = False) -> list[Target]:
    """The targets in run order: per store (disk first), dhtfs, bindfs, the plain one."""
    out: list[Target] = []
    for store in stores:
        for kind in kinds:
            if kind == "dhtfs":
                out.append(DhtfsTarget(work, store, metrics))
            elif kind == "bindfs":
                out.append(BindfsTarget(work, store))
            else:
                out.append(PlainTarget(work, store))
    return out


def parse_targets(only: str, state_on: str) -> tuple[list[str], list[str]]:
    """``--only`` kinds and ``--state-on`` stores (``disk``, ``tmpfs``, ``both``)."""
    kinds = [k.strip() for k in only.split(",") if k.strip()]
    if not kinds or set(kinds) - set(KINDS):
        raise ValueError(f"--only: choose from {','.join(KINDS)}")
    if state_on not in (*STORES, "both"):
        raise ValueError("--state-on: disk, tmpfs or both")
    stores = list(STORES) if state_on == "both" else [state_on]
    return [k for k in KINDS if k in kinds], stores


def check_tools(kinds: list[str]) -> str | None:
    """Why the benchmark cannot run here, or None."""
    from testkit.env import MOUNT

    if os.geteuid() != 0:
        return "must run as root (mounts, drops caches)"
    if "dhtfs" in kinds and not Path(MOUNT).exists():
        return f"{MOUNT} not found; run with the venv's python"
    if "bindfs" in kinds and shutil.which("bindfs") is None:
        return "bindfs not installed"
    return None


def guarded(script: str, body: Callable[[], None]) -> int:
    """Run a benchmark's ``body``: exit status 0, or 1 with a one-line error (BenchError),
    or 130 when interrupted (the mounts are removed by ``work_dir`` on the way out)."""
    try:
        body()
    except BenchError as exc:
        print(f"{script}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{script}: interrupted; mounts removed", file=sys.stderr)
        return 130
    return 0


@contextlib.contextmanager
def work_dir(prefix: str) -> Iterator[Path]:
    """A fresh directory under DISK_BASE; on exit everything mounted below it is unmounted
    (lazily if need be) and it is removed. SIGTERM/SIGHUP become KeyboardInterrupt."""

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=DISK_BASE))
    try:
        yield work
    finally:
        for m in sorted(mounts_under(work), key=lambda m: len(m.parts), reverse=True):
            cleanup(m)  # FUSE: fusermount3 -u -z
            umount_tmpfs(m)
        if any(mounts_under(work)):
            print(f"could not unmount everything under {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


# --- figures ------------------------------------------------------------------------------


SUFFIXES = ("", "_cpu", "_client_cpu", "_requests")
DECIMALS = {"ms": 3, "bytes": 0, "requests": 0, "ms/op": 3, "s": 2}


def fmt(value: float, unit: str) -> str:
    return f"{value:.{DECIMALS.get(unit, 1)}f}"


class Figures:
    """Every run's values by figure name; printed as medians, in the order first recorded."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {}
        self.units: dict[str, str] = {}

    def add(self, name: str, value: float, unit: str) -> None:
        self.values.setdefault(name, []).append(value)
        self.units[name] = unit

    def add_cost(self, target: str, key: str, cost: Cost, amount: float, unit: str) -> None:
        """CPU figures of a step beside its rate: ``T_KEY_cpu`` (the daemon's) and
        ``T_KEY_client_cpu`` (ours and our children's), each per ``amount`` units of work in
        ``unit`` (``ms/MB``, ``ms/op``; ``s``: CPU seconds of the whole step)."""
        scale = 1.0 if unit == "s" else 1000.0 / amount
        if cost.daemon is not None:
            self.add(f"{target}_{key}_cpu", cost.daemon * scale, unit)
        self.add(f"{target}_{key}_client_cpu", cost.client * scale, unit)

    def median(self, name: str) -> float:
        return statistics.median(self.values[name])

    def print(self, keys: list[str], targets: list[str]) -> None:
        """Medians, key by key (each target's figure, then its CPU and request figures; others
        after), then ``dhtfs_KEY_vs_bindfs``: the ratio of the medians (and of dhtfs with its
        state on a tmpfs to bindfs over a tmpfs) for every KEY."""
        order = [f"{t}_{k}{s}" for k in keys for t in targets for s in SUFFIXES]
        names = [n for n in order if n in self.units]
        names += [n for n in self.units if n not in names]
        for name in names:
            unit = self.units[name]
            print(f"figure: {name}={fmt(self.median(name), unit)} {unit}", flush=True)
        ratios = [k for k in keys if self.units.get(f"dhtfs_{k}") not in ("bytes", "requests")]
        for key in ratios:
            for d, b in (("dhtfs", "bindfs"), ("dhtfs_tmpfs", "bindfs_tmpfs")):
                dn, bn = f"{d}_{key}", f"{b}_{key}"
                if dn in self.values and bn in self.values and self.median(bn):
                    ratio = self.median(dn) / self.median(bn)
                    print(f"figure: {d}_{key}_vs_{b}={ratio:.2f} x", flush=True)
