#!/usr/bin/env python3
"""FUSE requests per ``git clone`` into a swarm mount, and what ``git status`` costs on
another node after it: this code and a reference checkout side by side, in one run.

Usage (as root, from the repo root, with the venv's interpreter)::

    .venv/bin/python scripts/bench/git_requests.py [--quick] [--runs N] [--files F]
        [--ref PATH] [--state-root DIR]

Per run and target, on a fresh 2-node swarm (``testkit.swarmctl``, ``-o metrics``) whose state
directories are under ``--state-root`` (default /var/tmp: the real disk):

* a source repository of F files (``--quick``: 200, else 1,000; 1 to 4 KiB each, 20 per
  directory, one commit) is made once, outside any mount;
* ``git clone --no-local`` of it onto node A's mount; node A's FUSE requests during the clone
  (``dhtfs_fuse_op_seconds_count`` summed over kinds, scraped before and after) give
  ``clone_requests`` and ``clone_requests_per_file``; the mount's CPU (utime + stime of its
  processes) gives ``clone_cpu_ms_per_file``;
* git re-reads every "racily clean" file (its mtime in the second the index was written:
  every file of a fast clone) at the next ``git status``, on any node; so, in the next
  second, one ``git status`` on A (its ``read`` requests: ``status_a_reads``) writes an index
  without racy entries;
* once node B shows the clone (every file's size and mtime as on A), ``git status
  --porcelain`` on node B: its FUSE requests (``status_b_requests``), the ``read`` requests
  among them (``status_b_reads``: git re-reads a file whose stat data differ from its
  index), the wall time and B's CPU;
* ``LATER`` (2 s) after that, ``ls -lR`` of the clone on node B: its FUSE requests
  (``ls_b_requests``; what the kernel still holds from the status needs none).

``--ref PATH``: a checkout of the reference code (e.g. ``git worktree add /tmp/ref main``),
run through the same venv with ``PYTHONPATH=PATH`` (the venv's editable finder comes after
it), its figures prefixed ``ref_``; this code's are prefixed ``dhtfs_``. Targets alternate
within each run. Every figure is the median of the runs, each run printed first as a ``# ``
line; ``figure: NAME=VALUE UNIT``. Request counts do not depend on the machine's load;
seconds do (the CPU figure beside them says how busy the mount was).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.append(str(REPO))  # after PYTHONPATH: a --ref checkout comes first

from ab_runs import run_side_by_side  # noqa: E402 (scripts/bench, the script's folder)

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "gc.auto=0"]
PER_DIR = 20
LATER = 2.0
"""Seconds between B's git status and its ``ls -lR`` (past a 1 s attribute timeout)."""


def git(cwd: Path, *args: str) -> str:
    return subprocess.run([*GIT, *args], cwd=cwd, check=True, capture_output=True, text=True,
                          timeout=1800).stdout


def make_source(root: Path, files: int) -> Path:
    src = root / "source"
    src.mkdir()
    git(src, "init", "-q")
    rng = random.Random(18)
    for i in range(files):
        d = src / f"dir{i // PER_DIR:03d}"
        d.mkdir(exist_ok=True)
        (d / f"file{i:05d}.c").write_bytes(rng.randbytes(rng.randrange(1024, 4096)))
    git(src, "add", "-A")
    git(src, "commit", "-q", "-m", "source")
    return src


def cpu_seconds(mountpoint: Path) -> float:
    from dhtfs.commands.swarmprocs import daemon_pids

    total = 0
    for pid in daemon_pids(mountpoint):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def requests(state: Path) -> dict[str, float]:
    """op → FUSE requests answered so far (ok or not)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from testkit.observe import control

    address = control(state, "status")["metrics"]
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=30) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "dhtfs_fuse_op_seconds_count":
                out[s.labels["op"]] = out.get(s.labels["op"], 0) + s.value
    return out


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def stat_view(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for d, _dirs, names in os.walk(root):
        for n in names:
            st = os.lstat(os.path.join(d, n))
            out[os.path.relpath(os.path.join(d, n), root)] = (st.st_mtime_ns, st.st_size)
    return out


def one_run(src: Path, files: int, state_root: Path) -> dict[str, float]:
    """One target's figures (this process runs the target's code)."""
    from testkit import swarmctl
    from testkit.observe import control
    from testkit.wait import wait_until

    root = Path(tempfile.mkdtemp(prefix="git-requests-", dir=state_root))
    try:
        with swarmctl.running_swarm(root / "swarm", 2, "metrics=127.0.0.1:0") as (a, b):
            wait_until(lambda: all(control(n.state, "status")["metrics"] for n in (a, b))
                       and control(b.state, "status")["peers"] >= 1, "the swarm", timeout=60)
            r0, c0, t0 = requests(a.state), cpu_seconds(a.mountpoint), time.perf_counter()
            git(a.mountpoint, "clone", "-q", "--no-local", str(src), "clone")
            t1, c1, r1 = time.perf_counter(), cpu_seconds(a.mountpoint), requests(a.state)
            clone = delta(r1, r0)
            print("#   clone requests by kind:", json.dumps(dict(sorted(clone.items()))))
            # git re-reads every "racily clean" file (mtime in the second its index was
            # written: all of a fast clone) at its next status, wherever: once on A, in a
            # later second, so that the index B gets is not racy.
            time.sleep(max(0.0, math.floor(time.time()) + 1.05 - time.time()))
            a0 = requests(a.state)
            git(a.mountpoint / "clone", "status", "--porcelain")
            refresh = delta(requests(a.state), a0)
            on_a = stat_view(a.mountpoint / "clone")
            there = b.mountpoint / "clone"
            wait_until(lambda: there.is_dir() and stat_view(there) == on_a,
                       "node B to show the clone", timeout=600)
            s0, cb0, u0 = requests(b.state), cpu_seconds(b.mountpoint), time.perf_counter()
            out = git(there, "status", "--porcelain")
            u1, cb1, s1 = time.perf_counter(), cpu_seconds(b.mountpoint), requests(b.state)
            status = delta(s1, s0)
            print("#   status-on-B requests by kind:", json.dumps(dict(sorted(status.items()))))
            assert out == "", out
            time.sleep(LATER)
            l0 = requests(b.state)
            subprocess.run(["ls", "-lR", str(there)], check=True, stdout=subprocess.DEVNULL)
            listing = delta(requests(b.state), l0)
            print("#   ls -lR on B requests by kind:", json.dumps(dict(sorted(listing.items()))))
            return {
                "clone_requests": sum(clone.values()),
                "clone_requests_per_file": sum(clone.values()) / files,
                "clone_seconds": t1 - t0,
                "clone_cpu_ms_per_file": (c1 - c0) * 1000 / files,
                "status_b_requests": sum(status.values()),
                "status_b_reads": status.get("read", 0),
                "status_b_seconds": u1 - u0,
                "status_b_cpu_ms": (cb1 - cb0) * 1000,
                "status_a_reads": refresh.get("read", 0),
                "ls_b_requests": sum(listing.values()),
            }
    finally:
        shutil.rmtree(root, ignore_errors=True)


UNITS = {"clone_requests": "requests", "clone_requests_per_file": "requests/file",
         "clone_seconds": "s", "clone_cpu_ms_per_file": "ms/file",
         "status_b_requests": "requests", "status_b_reads": "requests",
         "status_b_seconds": "s", "status_b_cpu_ms": "ms", "status_a_reads": "requests",
         "ls_b_requests": "requests"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--files", type=int)
    p.add_argument("--ref", type=Path, help="a checkout of the reference code")
    p.add_argument("--state-root", type=Path, default=Path("/var/tmp"))
    p.add_argument("--one-run", type=Path, help=argparse.SUPPRESS)  # internal: the source
    args = p.parse_args()
    files = args.files or (200 if args.quick else 1000)
    if args.one_run is not None:
        print(json.dumps(one_run(args.one_run, files, args.state_root)), flush=True)
        return 0
    work = Path(tempfile.mkdtemp(prefix="git-requests-src-", dir=args.state_root))
    try:
        src = make_source(work, files)
        return run_side_by_side(__file__, [str(src), "--files", str(files), "--state-root",
                                           str(args.state_root)], args.ref, args.runs, UNITS)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
