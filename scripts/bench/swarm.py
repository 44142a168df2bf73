#!/usr/bin/env python3
"""Swarm benchmark: how fast a change on one mount shows on another, and what replication
costs the writer, with a single-node mount measured in the same run as the reference.

Usage (as root, from the repo root, with the venv's interpreter)::

    .venv/bin/python scripts/bench/swarm.py [--quick] [--runs N] [--changes C] [--files F]
                                            [--size-mib M] [--state-on disk|tmpfs]
                                            [--no-git] [--no-sim] [--with-tahoe]

Prints ``figure: NAME=VALUE UNIT`` lines (VALUE: the median over runs; each run is printed
first as a ``# `` line). Per run, on a fresh 3-node swarm (``dhtfs swarm up --nodes 3``, nodes
on 127.0.0.10-12) and a fresh single-node mount, every state directory in a fresh directory
under ``/var/tmp`` (the root ext4 here, where ``/var/lib/dhtfs`` would be); ``--state-on
tmpfs``: on a tmpfs instead (where fsync is free: not where users run it):

* ``visible_{create,write,rename,delete}_{p50,p95}``: C changes of each kind on node A (create
  an empty file; write a new size into an existing file and close it; rename; unlink), each
  timed from just before the call on A until ``stat`` on node B shows it (polled every
  0.2 ms), in ms. Targets: p50 <= 20 ms, p95 <= 100 ms on loopback. (Syncthing, the tool
  people use to keep trees in step, waits 10 s by default before it even sends a change.)
* ``cp_swarm`` / ``cp_single``: ``cp -r`` of F files of 4 KiB (100 per directory) into node A
  and into the single-node mount, files/s; ``cp_ratio`` = swarm / single (target >= 0.8:
  replication must not slow the writer).
* ``cp_visible_all``: from the end of that cp until node B has applied every op of it (its
  op-log vector equals A's; then the tree is checked file by file), seconds (target <= 1).
* ``replicated_write`` / ``single_write``: SIZE MiB of random data written with 1 MiB writes,
  then ``fsync``, timed from open to the fsync's return, in MB/s: on a client-only mount
  (``storage=false``) joined to the 3 nodes, R=3 (fsync returns once every block is fsynced
  on all three storage nodes), and on the single-node mount (fsync: on this node's disk).
  ``remote_read_cold``: that file read (1 MiB reads) on a second client-only mount, which
  holds none of it: every block fetched from the storage nodes, verified; MB/s. Targets
  (issue 10): replicated write >= 150 MB/s, cold remote read >= 250 MB/s.
  ``replicated_write_cpu`` / ``remote_read_cold_cpu``: CPU time (user + system, all threads)
  the writing (reading) client and the 3 storage nodes used meanwhile, ms per MB: the work
  per byte, which moves far less than MB/s when other jobs share the machine.
* ``git_clone_swarm``: ``git clone -q --no-hardlinks file://SRC`` of the synthetic source
  repository (``_gitsrc.py``: 4,700 entries, 41 MB; quarter size with ``--quick``) into node A,
  seconds; ``git_clone_swarm_cpu``: the CPU seconds the 3 nodes used meanwhile. References in
  the same run, in this order before it: ``git_clone_single`` (the single-node mount),
  ``git_clone_bindfs`` (bindfs over a directory on the same disk), ``git_clone_disk`` (that
  directory); ``git_clone_swarm_vs_bindfs``: the ratio (target <= 1.5).
  ``git_status_other_node``: from the end of the clone on A until ``git status --porcelain``
  in the clone on node B has returned clean (empty): B's clone is polled (its ``.git/index``
  present, then ``git status`` run again until clean), seconds (target <= 2);
  ``git_status_other_node_cmd``: how long that last, clean ``git status`` itself took.
  ``--no-git`` skips these.
* with ``--with-tahoe``, after the above: ``tahoe_put`` / ``tahoe_get``, the issue's
  reference, Tahoe-LAFS 2-of-4 on a loopback grid (introducer, 4 storage nodes, 1 client)
  putting and getting a file of the same SIZE, in MB/s, same number of runs
  (``scripts/bench/tahoe_ref.py``; installs tahoe-lafs from PyPI into its own venv on first
  use).
* the simulator's dissemination figures (``scripts/bench/oplog_sim.py``), unless ``--no-sim``.

``--quick``: 1 run of 100 changes per kind, 500 files and 64 MiB, the quarter-size git
repository, simulator in quick mode; a few minutes here. Every mount and daemon it starts is
removed in ``finally`` blocks.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import (
    REPO,
    BenchError,
    BindfsTarget,
    PlainTarget,
    Target,
    mount_tmpfs,
    umount_tmpfs,
    work_dir,
)
from _gitsrc import describe_source, git, source_repo

from testkit import swarmctl
from testkit.mounting import Mount
from testkit.observe import control, listing, member_options
from testkit.wait import wait_until

FILE_SIZE = 4096
FILES_PER_DIR = 100


def note(text: str) -> None:
    print(f"# {text}", flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def poll(condition, timeout: float = 30.0) -> None:
    end = time.perf_counter() + timeout
    while not condition():
        if time.perf_counter() > end:
            raise TimeoutError("a change did not show within 30 s")
        time.sleep(0.0002)


def _exists(path: Path) -> bool:
    try:
        os.stat(path)
        return True
    except FileNotFoundError:
        return False


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return -1


def visibility(a: Path, b: Path, changes: int) -> dict[str, list[float]]:
    """ms from a change on ``a`` until ``stat`` on ``b`` shows it, per kind."""
    (a / "vis").mkdir()
    poll(lambda: _exists(b / "vis"))
    out: dict[str, list[float]] = {"create": [], "write": [], "rename": [], "delete": []}
    for i in range(changes):
        src, dst = a / "vis" / f"f{i}", b / "vis" / f"f{i}"
        t = time.perf_counter()
        src.touch()
        poll(lambda dst=dst: _exists(dst))
        out["create"].append(time.perf_counter() - t)
        size = 100 + i
        t = time.perf_counter()
        src.write_bytes(b"x" * size)
        poll(lambda dst=dst, n=size: _size(dst) == n)
        out["write"].append(time.perf_counter() - t)
        moved, moved_b = a / "vis" / f"m{i}", b / "vis" / f"m{i}"
        t = time.perf_counter()
        os.rename(src, moved)
        poll(lambda m=moved_b: _exists(m))
        out["rename"].append(time.perf_counter() - t)
        t = time.perf_counter()
        moved.unlink()
        poll(lambda m=moved_b: not _exists(m))
        out["delete"].append(time.perf_counter() - t)
    return {k: [s * 1000 for s in v] for k, v in out.items()}


def make_tree(root: Path, nfiles: int) -> None:
    for i in range(nfiles):
        d = root / f"d{i // FILES_PER_DIR:03d}"
        if i % FILES_PER_DIR == 0:
            d.mkdir(parents=True)
        (d / f"f{i:05d}").write_bytes(os.urandom(FILE_SIZE))


def timed_cp(src: Path, dst: Path) -> float:
    t = time.perf_counter()
    subprocess.run(["cp", "-r", str(src), str(dst)], check=True)
    return time.perf_counter() - t


def timed_write_fsync(path: Path, data: memoryview) -> float:
    """Seconds to write ``data`` in 1 MiB writes and fsync it (open to fsync's return)."""
    began = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for offset in range(0, len(data), 1 << 20):
            os.write(fd, data[offset : offset + (1 << 20)])
        os.fsync(fd)
        return time.perf_counter() - began
    finally:
        os.close(fd)


def timed_read(path: Path, data: memoryview) -> float:
    """Seconds to read ``path`` whole in 1 MiB reads; it must equal ``data``."""
    began = time.perf_counter()
    got = bytearray()
    with open(path, "rb", buffering=0) as fh:
        while part := fh.read(1 << 20):
            got += part
    seconds = time.perf_counter() - began
    if got != data:
        raise RuntimeError(f"{path}: read back differs from what was written")
    return seconds


def replicated_and_seen(writer: Any, reader: Any, data: memoryview) -> Path:
    """After the writer's fsync of ``big``: check no block is left to replicate (else the
    fsync returned too early), wait until the reader's mount shows the written version; its
    path there."""
    pending = control(writer.state, "status")["replication"]["pending"]
    if pending:
        raise RuntimeError(f"fsync returned with {pending} blocks not replicated")
    big = reader.mountpoint / "big"
    wait_until(lambda: big.exists() and big.stat().st_size == len(data),
               "the written version on the reading client")
    return big


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by the processes ``pids`` (all their threads)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / os.sysconf("SC_CLK_TCK")


def vector(state: Path) -> dict[bytes, int]:
    return {o: s for o, s in control(state, "oplog")["vector"]}


def git_clone_into(dest: Path, src: Path) -> float:
    """Seconds for ``git clone -q --no-hardlinks file://src dest``."""
    began = time.perf_counter()
    git("clone", "-q", "--no-hardlinks", f"file://{src}", str(dest))
    return time.perf_counter() - began


def reference_clone(target: Target, src: Path) -> float:
    """Seconds of a git clone into a fresh ``target`` (torn down after)."""
    target.setup()
    try:
        return git_clone_into(target.root / "clone", src)
    finally:
        target.teardown()


def clean_status_on(clone: Path, timeout: float = 300.0) -> tuple[int, float]:
    """Poll ``clone`` (on another node) until ``git status --porcelain`` there prints nothing;
    → (status runs, seconds of the last one). Raises TimeoutError past ``timeout``."""
    end = time.perf_counter() + timeout
    runs = 0
    while time.perf_counter() < end:
        if (clone / ".git" / "index").exists():
            runs += 1
            began = time.perf_counter()
            try:
                out = git("status", "--porcelain", cwd=clone)
            except BenchError:
                out = "failed"
            if not out.strip():
                return runs, time.perf_counter() - began
        time.sleep(0.05)
    raise TimeoutError(f"git status in {clone} not clean within {timeout} s ({runs} runs)")


def git_figures(work: Path, src: Path, single: Mount, a: Path, b: Path, pids: list[int],
                store: str) -> dict[str, float]:
    """The git clone figures (see the module docstring): references first, then the swarm."""
    fig = {"git_clone_single": git_clone_into(single.mountpoint / "clone", src)}
    fig["git_clone_bindfs"] = reference_clone(BindfsTarget(work, store), src)
    fig["git_clone_disk"] = reference_clone(PlainTarget(work, store), src)
    used = cpu_seconds(pids)
    fig["git_clone_swarm"] = git_clone_into(a / "clone", src)
    done = time.perf_counter()
    fig["git_clone_swarm_cpu"] = cpu_seconds(pids) - used
    fig["git_clone_swarm_vs_bindfs"] = fig["git_clone_swarm"] / fig["git_clone_bindfs"]
    runs, fig["git_status_other_node_cmd"] = clean_status_on(b / "clone")
    fig["git_status_other_node"] = time.perf_counter() - done
    note(f"git status on node B: clean after {runs} run(s)")
    return fig


def one_run(
    work: Path, tree: Path, nfiles: int, changes: int, data: memoryview, src: Path | None,
    store: str,
) -> dict[str, float]:
    fig: dict[str, float] = {}
    root = work / "swarm"
    single = Mount(work / "single-mnt", work / "single-state")
    clients: list[Mount] = []
    try:
        nodes = swarmctl.up(root, 3)
        a, b = nodes[0], nodes[1]
        vis = visibility(a.mountpoint, b.mountpoint, changes)
        for kind, ms in vis.items():
            fig[f"visible_{kind}_p50"] = statistics.median(ms)
            fig[f"visible_{kind}_p95"] = percentile(ms, 0.95)
        single.start()
        # Interleaved: single, swarm (each a fresh target directory).
        fig["cp_single"] = nfiles / timed_cp(tree, single.mountpoint / "tree")
        seconds = timed_cp(tree, a.mountpoint / "tree")
        done = time.perf_counter()
        fig["cp_swarm"] = nfiles / seconds
        fig["cp_ratio"] = fig["cp_swarm"] / fig["cp_single"]
        target = vector(a.state)
        wait_until(lambda: vector(b.state) == target, "b to apply a's ops", 120)
        fig["cp_visible_all"] = time.perf_counter() - done
        shown = [p for p in listing(b.mountpoint / "tree") if p.count("/") == 1]
        if len(shown) != nfiles:
            raise RuntimeError(f"b shows {len(shown)} of {nfiles} files")
        if src is not None:
            pids = [n.pid for n in nodes if n.pid]
            fig.update(git_figures(work, src, single, a.mountpoint, b.mountpoint, pids, store))
        mb = len(data) / 1e6
        fig["single_write"] = mb / timed_write_fsync(single.mountpoint / "big", data)
        seeds = "bootstrap=" + "+".join(n.address for n in nodes)
        for i in range(2):
            clients.append(Mount(work / f"client{i}-mnt", work / f"client{i}-state", options=[
                *member_options(root / "ca", f"client{i}", work / f"client{i}"),
                f"listen=127.0.0.{40 + i}:0", seeds, "storage=false"]))
            clients[-1].start()
        writer, reader = clients
        wait_until(lambda: control(writer.state, "status")["peers"] >= 3, "the client joined")
        # CPU per MB written or read, beside the rates: steadier than MB/s on a shared machine.
        storage = [n.pid for n in nodes if n.pid]
        used = cpu_seconds([writer.proc.pid, *storage])
        fig["replicated_write"] = mb / timed_write_fsync(writer.mountpoint / "big", data)
        fig["replicated_write_cpu"] = (cpu_seconds([writer.proc.pid, *storage]) - used) / mb * 1e3
        big = replicated_and_seen(writer, reader, data)
        used = cpu_seconds([reader.proc.pid, *storage])
        fig["remote_read_cold"] = mb / timed_read(big, data)
        fig["remote_read_cold_cpu"] = (cpu_seconds([reader.proc.pid, *storage]) - used) / mb * 1e3
        reads = control(reader.state, "status")["reads"]
        if reads["local"]:
            raise RuntimeError(f"the reading client had {reads['local']} blocks locally")
    finally:
        single.close()
        take_down(clients, root)
    return fig


def take_down(clients: list[Mount], root: Path) -> None:
    """Close the client mounts, then bring the swarm under ``root`` down (killing what is
    left)."""
    for client in clients:
        client.close()
    with contextlib.suppress(Exception):
        swarmctl.down(root)
    swarmctl.kill_all(root)


UNITS = {"cp_swarm": "files/s", "cp_single": "files/s", "cp_ratio": "x", "cp_visible_all": "s",
         "single_write": "MB/s", "replicated_write": "MB/s", "remote_read_cold": "MB/s",
         "replicated_write_cpu": "ms/MB", "remote_read_cold_cpu": "ms/MB",
         "git_clone_single": "s", "git_clone_bindfs": "s", "git_clone_disk": "s",
         "git_clone_swarm": "s", "git_clone_swarm_cpu": "s", "git_clone_swarm_vs_bindfs": "x",
         "git_status_other_node": "s", "git_status_other_node_cmd": "s"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--runs", type=int)
    p.add_argument("--changes", type=int)
    p.add_argument("--files", type=int)
    p.add_argument("--size-mib", type=int)
    p.add_argument("--state-on", choices=("disk", "tmpfs"), default="disk",
                   help="where state directories are (default: disk, under /var/tmp)")
    p.add_argument("--no-git", action="store_true", help="skip the git clone figures")
    p.add_argument("--no-sim", action="store_true")
    p.add_argument("--with-tahoe", action="store_true",
                   help="also run the Tahoe-LAFS reference (scripts/bench/tahoe_ref.py)")
    args = p.parse_args(argv)
    runs = args.runs or (1 if args.quick else 3)
    changes = args.changes or 100
    nfiles = args.files or (500 if args.quick else 2000)
    data = memoryview(os.urandom((args.size_mib or (64 if args.quick else 256)) << 20))
    if os.geteuid() != 0:
        print("swarm.py: run as root (it mounts)", file=sys.stderr)
        return 1
    results: list[dict[str, float]] = []
    try:
        src = None if args.no_git else source_repo(args.quick)
        with work_dir("dhtfs-bench-swarm-") as work:
            note(f"state directories on {'a tmpfs' if args.state_on == 'tmpfs' else work}")
            if src is not None:
                note(describe_source(src))
            if args.state_on == "tmpfs":
                work = work / "tmpfs"
                mount_tmpfs(work)
            try:
                tree = work / "src"
                make_tree(tree, nfiles)
                for run in range(runs):
                    run_dir = work / f"run{run}"
                    run_dir.mkdir()
                    fig = one_run(run_dir, tree, nfiles, changes, data, src, args.state_on)
                    note(f"run {run + 1}: " + " ".join(f"{k}={v:.3g}" for k, v in fig.items()))
                    results.append(fig)
                    shutil.rmtree(run_dir, ignore_errors=True)  # one run's state at a time
            finally:
                if args.state_on == "tmpfs":
                    umount_tmpfs(work)
    except (BenchError, RuntimeError, TimeoutError) as exc:
        print(f"swarm.py: error: {exc}", file=sys.stderr)
        return 1
    for key in results[0]:
        value = statistics.median(r[key] for r in results)
        unit = UNITS.get(key, "ms")
        print(f"figure: {key}={value:.4g} {unit}", flush=True)
    if args.with_tahoe:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import tahoe_ref  # here: only --with-tahoe needs it

        try:
            figures = tahoe_ref.measure(len(data), runs)
        except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
            print(f"swarm.py: tahoe reference failed: {exc}", file=sys.stderr)
            return 1
        print("\n".join(tahoe_ref.figure_lines(figures)), flush=True)
    if not args.no_sim:
        sim = subprocess.run(
            [sys.executable, str(REPO / "scripts/bench/oplog_sim.py"),
             *(["--quick"] if args.quick else [])],
            capture_output=True, text=True, check=False,
        )
        sys.stdout.write(sim.stdout)
        if sim.returncode != 0:
            print(f"swarm.py: simulator failed: {sim.stderr.strip()[-500:]}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
