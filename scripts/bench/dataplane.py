#!/usr/bin/env python3
"""Data-plane benchmark: CPU per replicated MB written and per remote MB read, per process.

Usage (as root, from the repo root, with the venv's interpreter)::

    .venv/bin/python scripts/bench/dataplane.py [--quick] [--runs N] [--size-mib M]
                                                [--state-dir DIR] [--profile]

Per run, on a fresh 3-node swarm (``dhtfs swarm up --nodes 3``, storage mounts on
127.0.0.10-12) with two client-only mounts (``storage=false``) joined to it, every state
directory on the real disk (under ``--state-dir``, default ``/var/tmp``):

* ``replicated_write``: SIZE MiB of random data written in 1 MiB writes to the first client,
  then ``fsync`` (it returns once every block is fsynced on its R=3 storage nodes), MB/s;
  ``replicated_write_cpu``: CPU (user + system, all threads) of the writing client and the
  three storage daemons meanwhile, ms per MB; ``replicated_write_cpu_client`` and
  ``replicated_write_cpu_storage`` (the three storage daemons' mean) split it.
* ``remote_read_cold``: that file read in 1 MiB reads on the second client, which holds none
  of it (checked), MB/s; ``remote_read_cold_cpu`` (reader + storage daemons),
  ``remote_read_cold_cpu_client``, ``remote_read_cold_cpu_storage`` (mean per storage daemon).
* the reference, same run, same disk: ``disk_write`` (the same bytes written and fsynced
  to a plain file beside the state directories) and its ``disk_write_cpu``.

``--client-options O,...``: more mount options of both clients (``chunk_size=4194304``: the
effect of 4 MiB blocks). ``--profile`` runs py-spy (``.venv/bin/py-spy``, ``pip install
py-spy``; ``--perf``: perf, its split by shared object and symbol) on the writing client and
on one storage daemon during the write, and on the reader and one storage daemon during the
read; the flame data (``--format raw``, collapsed stacks) goes to
``--state-dir/dataplane-prof/`` and the top frames are printed as ``# `` lines.

Prints ``figure: NAME=VALUE UNIT`` lines (the median over runs; each run first as a ``# ``
line). ``--quick``: 1 run of 64 MiB. Every mount and daemon is removed in ``finally``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from testkit import swarmctl  # noqa: E402
from testkit.mounting import Mount  # noqa: E402
from testkit.observe import control, member_options  # noqa: E402
from testkit.wait import wait_until  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from swarm import (  # noqa: E402
    cpu_seconds,
    replicated_and_seen,
    take_down,
    timed_read,
    timed_write_fsync,
)

MIB = 1 << 20


def note(text: str) -> None:
    print(f"# {text}", flush=True)


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


class Profiler:
    """py-spy (``--profile``) or perf (``--perf``) on some processes while a ``with`` block
    runs."""

    def __init__(self, out: Path | None, label: str, pids: dict[str, int],
                 tool: str = "py-spy") -> None:
        self.out, self.label, self.pids, self.tool = out, label, pids, tool
        self.procs: list[tuple[str, Path, subprocess.Popen]] = []

    def __enter__(self) -> Profiler:
        if self.out is None:
            return self
        spy = Path(sys.executable).parent / "py-spy"
        for name, pid in self.pids.items():
            path = self.out / f"{self.label}-{name}.{'perf' if self.tool == 'perf' else 'txt'}"
            argv = (["perf", "record", "-e", "cpu-clock", "-F", "999", "-g", "-p", str(pid),
                     "-o", str(path)] if self.tool == "perf" else
                    [str(spy), "record", "--pid", str(pid), "--format", "raw", "--threads",
                     "--rate", "200", "--nonblocking", "-o", str(path)])
            self.procs.append((name, path, subprocess.Popen(
                argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
        time.sleep(1.0)  # the profiler attaches
        return self

    def __exit__(self, *exc: object) -> None:
        for name, path, proc in self.procs:
            proc.send_signal(2)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
            if self.tool == "perf":
                perf_summary(f"{self.label} {name}", path)
            else:
                summarize(f"{self.label} {name}", path)


def perf_summary(title: str, path: Path, top: int = 30) -> None:
    """Print perf's split of the samples by shared object, then its top symbols."""
    for sort, n in (("dso", 12), ("dso,sym", top)):
        res = subprocess.run(["perf", "report", "-i", str(path), "--no-children", "--sort",
                              sort, "--stdio", "-g", "none"],
                             capture_output=True, text=True, check=False)
        lines = [ln for ln in res.stdout.splitlines() if ln.strip() and not ln.startswith("#")]
        note(f"{title}: by {sort}:")
        for ln in lines[:n]:
            note("  " + ln.strip())


def summarize(title: str, path: Path, top: int = 25) -> None:
    """Print the functions with the most samples (self and total) from collapsed stacks."""
    if not path.exists():
        note(f"{title}: no profile")
        return
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        samples += n
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    note(f"{title}: {samples} samples; self:")
    for frame, n in own.most_common(top):
        note(f"  {100 * n / samples:5.1f}% {frame}")
    note(f"{title}: total:")
    for frame, n in total.most_common(top):
        note(f"  {100 * n / samples:5.1f}% {frame}")


def one_run(work: Path, data: memoryview, prof: Path | None, tool: str,
            client_options: list[str]) -> dict[str, float]:
    fig: dict[str, float] = {}
    mb = len(data) / 1e6
    # The reference: the same bytes to a plain file on the same disk, fsynced.
    used = self_cpu()
    fig["disk_write"] = mb / timed_write_fsync(work / "plain", data)
    fig["disk_write_cpu"] = (self_cpu() - used) / mb * 1e3
    (work / "plain").unlink()
    root = work / "swarm"
    clients: list[Mount] = []
    try:
        nodes = swarmctl.up(root, 3)
        seeds = "bootstrap=" + "+".join(n.address for n in nodes)
        for i in range(2):
            clients.append(Mount(work / f"client{i}-mnt", work / f"client{i}-state", options=[
                *member_options(root / "ca", f"client{i}", work / f"client{i}"),
                f"listen=127.0.0.{40 + i}:0", seeds, "storage=false", *client_options]))
            clients[-1].start()
        writer, reader = clients
        for c in clients:
            wait_until(lambda c=c: control(c.state, "status")["peers"] >= 3, "a client joined")
        storage = [n.pid for n in nodes if n.pid]
        if len(storage) != 3:
            raise RuntimeError(f"storage daemons' pids: {storage}")

        def measure(key: str, client: int, work_fn) -> None:
            pids = [client, *storage]
            before = [cpu_seconds([p]) for p in pids]
            fig[key] = mb / work_fn()
            used = [cpu_seconds([p]) - b for p, b in zip(pids, before, strict=True)]
            fig[f"{key}_cpu"] = sum(used) / mb * 1e3
            fig[f"{key}_cpu_client"] = used[0] / mb * 1e3
            fig[f"{key}_cpu_storage"] = sum(used[1:]) / len(storage) / mb * 1e3

        with Profiler(prof, "write", {"writer": writer.proc.pid, "storage": storage[0]}, tool):
            measure("replicated_write", writer.proc.pid,
                    lambda: timed_write_fsync(writer.mountpoint / "big", data))
        big = replicated_and_seen(writer, reader, data)
        with Profiler(prof, "read", {"reader": reader.proc.pid, "storage": storage[0]}, tool):
            measure("remote_read_cold", reader.proc.pid, lambda: timed_read(big, data))
        reads = control(reader.state, "status")["reads"]
        if reads["local"]:
            raise RuntimeError(f"the reading client had {reads['local']} blocks locally")
    finally:
        take_down(clients, root)
    return fig


def unit(key: str) -> str:
    return "ms/MB" if "_cpu" in key else "MB/s"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--runs", type=int)
    p.add_argument("--size-mib", type=int)
    p.add_argument("--state-dir", type=Path, default=Path("/var/tmp"))
    p.add_argument("--profile", action="store_true", help="py-spy the writer, a storage node")
    p.add_argument("--perf", action="store_true", help="perf the writer, a storage node")
    p.add_argument("--client-options", default="",
                   help="more mount options of both clients (e.g. chunk_size=4194304)")
    args = p.parse_args(argv)
    runs = args.runs or (1 if args.quick else 3)
    data = memoryview(os.urandom((args.size_mib or (64 if args.quick else 256)) * MIB))
    if os.geteuid() != 0:
        print("dataplane.py: run as root (it mounts)", file=sys.stderr)
        return 1
    prof = None
    if args.profile or args.perf:
        prof = args.state_dir / "dataplane-prof"
        prof.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="dhtfs-bench-dataplane-", dir=args.state_dir) as tmp:
        for run in range(runs):
            run_dir = Path(tmp) / f"run{run}"
            run_dir.mkdir()
            fig = one_run(run_dir, data, prof, "perf" if args.perf else "py-spy",
                          [o for o in args.client_options.split(",") if o])
            note(f"run {run + 1}: " + " ".join(f"{k}={v:.3g}" for k, v in fig.items()))
            results.append(fig)
            shutil.rmtree(run_dir, ignore_errors=True)
    for key in results[0]:
        value = statistics.median(r[key] for r in results)
        print(f"figure: {key}={value:.4g} {unit(key)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
