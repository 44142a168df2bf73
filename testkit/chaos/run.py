"""One chaos run: a swarm of N mounts (the last one client-only, ``storage=false``), one worker
thread per mount running its seeded ops on the shared tree, faults injected meanwhile, then
the checks of ``checker``. ``run_chaos`` always brings the swarm down and unmounts its disks.

Replay: the seed fixes every node's sequence of ops (and their data), the faults (kind, node,
how far into the run, how long) and the pauses between ops; the interleaving itself depends on
timing, as in any concurrency test, so a failure may need a few runs of its seed to recur.
"""

from __future__ import annotations

import errno
import random
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from dhtfs.commands.swarmprocs import is_live, mounted
from testkit import swarmctl
from testkit.chaos import checker, faults, workload
from testkit.chaos.model import CHANGES_CONTENT, DIRS, Op
from testkit.observe import control

MIB = 1 << 20
SLOW = 5.0  # a call longer than this (seconds) is listed in the details


@dataclass
class ChaosConfig:
    seed: int
    nodes: int = 3                       # node0..node{N-2} store, the last is a client
    ops: int = 150                       # per node
    faults: dict[str, int] = field(default_factory=lambda: {"kill": 1, "partition": 1,
                                                             "disk": 1})
    pace: float = 0.08                   # mean pause between two ops of a node, seconds
    hold: tuple[float, float] = (2.0, 5.0)  # how long a fault stays, seconds
    options: str | None = None           # mount options of every node (-o)
    disk_size: int = 64 * MIB
    disk_fs: str = "ext4"                # or tmpfs
    converge_timeout: float = 120.0
    margin: float = 3.0                  # an op of another node is seen within this, seconds
    deadline: float = 30.0               # the smaller of read_deadline / replication_deadline
    op_timeout: float = 180.0            # a call longer than this is a hang


@dataclass
class Unexpected:
    """One unexpected outcome, with everything needed to find it again."""

    seed: int
    node: int
    op: str
    path: str
    error: str
    time: float
    detail: str = ""

    def describe(self) -> str:
        return (f"seed={self.seed} node{self.node} t={self.time:.2f}s {self.op} {self.path}: "
                f"{self.error}" + (f" ({self.detail})" if self.detail else ""))


@dataclass
class Report:
    config: ChaosConfig
    ops: list[Op] = field(default_factory=list)
    windows: list[faults.Window] = field(default_factory=list)
    scheduled: list[faults.Fault] = field(default_factory=list)
    unexpected: list[Unexpected] = field(default_factory=list)
    outcomes: Counter = field(default_factory=Counter)
    converge_seconds: float | None = None
    diff: list[str] = field(default_factory=list)
    stable: int = 0
    losses: list[checker.Loss] = field(default_factory=list)
    harness_errors: list[str] = field(default_factory=list)
    log_errors: dict[str, Counter] = field(default_factory=dict)
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return (not self.unexpected and self.converge_seconds is not None and not self.losses
                and not self.harness_errors)

    def figures(self) -> list[str]:
        c = self.config
        injected = Counter(w.kind for w in self.windows)
        lines = [
            f"figure: chaos_seed={c.seed} seed",
            f"figure: chaos_nodes={c.nodes} nodes",
            f"figure: chaos_ops={len(self.ops)} ops",
            f"figure: chaos_ops_failed_race={self.outcomes['race']} ops",
            f"figure: chaos_ops_excused={sum(v for k, v in self.outcomes.items() if k.startswith('excused'))} ops",  # noqa: E501
            f"figure: chaos_faults={len(self.windows)} faults",
        ]
        lines += [f"figure: chaos_faults_{k}={injected.get(k, 0)} faults" for k in faults.KINDS]
        lines += [
            f"figure: chaos_unexpected_errors={len(self.unexpected)} errors",
            f"figure: chaos_converged={int(self.converge_seconds is not None)} bool",
        ]
        if self.converge_seconds is not None:
            lines.append(f"figure: chaos_converge_time={self.converge_seconds:.2f} s")
        lines += [
            f"figure: chaos_stable_files_checked={self.stable} files",
            f"figure: chaos_acknowledged_lost={len(self.losses)} files",
            f"figure: chaos_log_errors={sum(sum(c.values()) for c in self.log_errors.values())} lines",  # noqa: E501
            f"figure: chaos_run_time={self.elapsed:.1f} s",
        ]
        return lines

    def details(self) -> list[str]:
        out = [f"# fault scheduled: {f.describe()}" for f in self.scheduled]
        out += [f"# fault window: {w.describe()}" for w in self.windows]
        out += [f"# outcome {k}: {v}" for k, v in sorted(self.outcomes.items())]
        by_kind = Counter((u.op.split()[0], u.error) for u in self.unexpected)
        out += [f"# unexpected {op} {err}: {n} times" for (op, err), n in sorted(by_kind.items())]
        out += [f"# UNEXPECTED {u.describe()}" for u in self.unexpected]
        slow = sorted((o for o in self.ops if o.end - o.start > SLOW), key=lambda o: o.start)
        out += [f"# slow call {o.end - o.start:.1f}s at t={o.start:.2f}s: {o.describe()}"
                for o in slow]
        out += [f"# DIVERGED {d}" for d in self.diff]
        out += [f"# LOST {loss.describe()}" for loss in self.losses]
        out += [f"# HARNESS {h}" for h in self.harness_errors]
        out += [f"# log {name}: {n} ERROR lines: {msg}" for name, c in self.log_errors.items()
                for msg, n in c.most_common(5)]
        return out


def run_chaos(config: ChaosConfig, workdir: Path) -> Report:
    """Run ``config`` in ``workdir`` (a fresh directory); never leaves a mount or daemon."""
    report = Report(config)
    root = workdir / "swarm"
    disks: dict[int, faults.SmallDisk] = {}
    t_start = time.monotonic()
    try:
        _run(config, root, workdir, disks, report)
    finally:
        try:
            swarmctl.down(root)
        except Exception as exc:  # reported, then the last resort
            report.harness_errors.append(f"swarm down: {exc}")
            swarmctl.kill_all(root)
        logs = workdir / "logs"  # the state of a small disk goes with it: keep the logs
        logs.mkdir(exist_ok=True)
        for log in root.glob("node*/state/dhtfs.log"):
            shutil.copy(log, logs / f"{log.parent.parent.name}.log")
        for disk in disks.values():
            disk.close()
        report.elapsed = time.monotonic() - t_start
    return report


def _run(config: ChaosConfig, root: Path, workdir: Path, disks: dict[int, faults.SmallDisk],
         report: Report) -> None:
    n = config.nodes
    if n < 2:
        raise ValueError("a chaos run needs at least 2 nodes (1 storage + 1 client)")
    client = f"node{n - 1}"
    # node0 first; then the others' state directories on small disks of their own (the
    # bootstrap node keeps an ordinary one), then the rest of the swarm.
    swarmctl.up(root, 1, config.options)
    if config.faults.get("disk"):
        for i in range(1, n):
            disks[i] = faults.SmallDisk(workdir / f"node{i}-disk", config.disk_size,
                                        config.disk_fs)
            disks[i].mount(root / f"node{i}" / "state")
    infos = swarmctl.up(root, n, config.options, {client: "storage=false"})
    mounts = [info.mountpoint for info in infos]
    for d in DIRS:
        (mounts[0] / d).mkdir()
    conv = checker.wait_converged(mounts, 60)
    if conv.seconds is None:
        raise RuntimeError(f"the initial tree did not reach every mount: {conv.diff}")

    t0 = time.monotonic()
    clock = workload.now_since(t0)
    up = [threading.Event() for _ in range(n)]
    for u in up:
        u.set()
    stop = threading.Event()
    lock = threading.Lock()
    ops: list[Op] = report.ops
    current: dict[int, tuple[Op | None, float]] = {}
    crashed: list[str] = []
    total = n * config.ops

    origin = {info.node_id: i for i, info in enumerate(infos)}

    def vector(i: int) -> dict[int, int] | None:
        """Node i's op-log version vector by node index; None if it does not answer."""
        try:
            answer = control(infos[i].state, "oplog")
        except Exception:  # a node being killed: no evidence, the checker falls back
            return None
        return {origin[o.hex()]: seq for o, seq in answer["vector"] if o.hex() in origin}

    def recover(i: int, op: Op) -> bool:
        """Node i's daemon exited on its own: report it (its log's last error), remount it
        once no fault is in force on it (a full disk freed), go on. False if it won't."""
        window = faults.Window("crash", i, op.end)
        report.windows.append(window)
        up[i].clear()
        last = ", ".join(_error_lines(infos[i].log, last=True)) or "no ERROR line"
        report.unexpected.append(Unexpected(
            config.seed, i, "daemon exited", "-", "mount gone", op.end,
            f"not killed by the harness; first seen after {op.describe()}; log: {last}"))
        while any(w.node == i and w.end is None and w is not window for w in report.windows):
            if stop.is_set():
                return False
            time.sleep(0.1)
        if not mounted(mounts[i]):  # what calls left in the bare mount point directory
            for leftover in mounts[i].iterdir():
                if leftover.is_dir() and not leftover.is_symlink():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)
        try:
            swarmctl.restart(root)
        except Exception as exc:  # reported: the run goes on without this node
            crashed.append(f"node{i} could not be remounted after it exited: {exc}")
            return False
        window.end = clock()
        window.note = "daemon exited by itself, remounted by the harness"
        up[i].set()
        return True

    def worker(i: int) -> None:
        pace = random.Random(f"pace:{config.seed}:{i}")
        for index, spec in enumerate(workload.specs(config.seed, i, config.ops)):
            while not up[i].wait(0.5):
                if stop.is_set():
                    return
            if stop.is_set():
                return
            view = vector(i) if spec.fsync or spec.kind == "fsync" else None
            current[i] = (None, time.monotonic())
            op = workload.run_op(mounts[i], config.seed, i, index, spec, clock)
            current.pop(i, None)
            op.view = view
            if op.kind in CHANGES_CONTENT and op.effect != "none":
                after = vector(i)
                op.seq = after.get(i) if after is not None else None
            with lock:
                ops.append(op)
            if up[i].is_set() and not is_live(mounts[i]):
                # The daemon went away under this call (a daemon that exits unmounts: the
                # call may even have run on the bare directory): its outcome means nothing.
                op.effect, op.fsynced, op.view = "unknown", None, None
                op.note = "the mount went away during the call"
                if not recover(i, op):
                    return
            time.sleep(pace.expovariate(1 / config.pace) if config.pace > 0 else 0)

    schedule = faults.schedule(config.seed, n, config.faults, config.hold, sorted(disks))
    report.scheduled = schedule
    injector = faults.Injector(root, [i.name for i in infos], [i.state for i in infos],
                               disks, clock, up)
    report.windows = injector.windows

    def inject() -> None:
        for fault in schedule:
            while len(ops) < fault.at * total:
                if stop.is_set() or not any(t.is_alive() for t in threads):
                    break
                time.sleep(0.05)
            if stop.is_set():
                return
            injector.run(fault)
            if injector.failures:
                return

    threads = [threading.Thread(target=worker, args=(i,), name=f"chaos-node{i}", daemon=True)
               for i in range(n)]
    for t in threads:
        t.start()
    fault_thread = threading.Thread(target=inject, name="chaos-faults", daemon=True)
    fault_thread.start()
    hung = _watch([*threads, fault_thread], current, config.op_timeout)
    if hung:
        stop.set()
        report.harness_errors.append(hung)
        return  # the finally of run_chaos kills the daemons, which ends the stuck calls
    report.harness_errors += injector.failures + crashed
    injector.heal_all()

    for op in ops:
        outcome = checker.classify(op, report.windows, config.deadline)
        report.outcomes[outcome] += 1
        if outcome == "unexpected":
            report.unexpected.append(Unexpected(
                config.seed, op.node, f"{op.kind} (at {op.step})", " -> ".join(op.paths),
                errno.errorcode.get(op.errno or 0, str(op.errno)), op.start,
                "; ".join(checker.active(report.windows, op.start, op.end))))

    conv = checker.wait_converged(mounts, config.converge_timeout)
    report.converge_seconds = conv.seconds
    report.diff = conv.diff
    now = clock()
    for (node, path, code), count in sorted(conv.read_errors.items()):
        report.unexpected.append(Unexpected(
            config.seed, node, "check-read", path, errno.errorcode.get(code, str(code)), now,
            f"while checking convergence, seen {count} times"))
    stable = checker.stable_writes(ops, report.windows, config.margin)
    report.stable = len(stable)
    report.losses = checker.check_stable(mounts, stable)
    for info in infos:
        report.log_errors[info.name] = _error_lines(info.log)


def _watch(threads: list[threading.Thread], current: dict[int, tuple[Op | None, float]],
           limit: float) -> str | None:
    """Wait for ``threads``; a description of the first call stuck past ``limit`` s."""
    while any(t.is_alive() for t in threads):
        for i, (_, started) in list(current.items()):
            if time.monotonic() - started > limit:
                return f"node{i}: a call has not returned after {limit:.0f}s (hang)"
        for t in threads:
            t.join(0.2)
    return None


def _error_lines(log: Path, last: bool = False) -> Counter:
    """The ``msg`` of every ERROR line of a node's log, counted (``last``: only the last)."""
    found: Counter = Counter()
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return found
    for line in text.splitlines():
        if " level=ERROR " in line:
            msg = line.partition(' msg="')[2].partition('"')[0] or line[:120]
            if last:
                found.clear()
            found[msg] += 1
    return found
