#!/usr/bin/env python3
"""Developer workloads: an fsstress-like op mix and a ``git clone`` + ``git status``, on dhtfs
with its state directory on the real disk, bindfs over the same disk and the plain disk
directory, side by side in one run, with the CPU each cost.

Usage (as root, from the repo root, with the venv's interpreter)::

    .venv/bin/python scripts/bench/devwork.py [--quick] [--runs N] [--only dhtfs,bindfs,disk]
                                              [--state-on disk|tmpfs|both] [--procs P]
                                              [--ops N] [--steps fsstress,git]

Prints ``figure: NAME=VALUE UNIT`` lines (the median over the runs; each run is printed first
as a ``# `` line). Targets as in ``fs.py`` (``dhtfs``: state directory under ``/var/tmp``, the
root ext4; ``bindfs`` over a directory on the same disk; ``disk``: that directory; with
``--state-on tmpfs``/``both`` the ``*_tmpfs``/``tmpfs`` column too). Each workload runs on a
fresh mount; targets run interleaved within each run.

* ``fsstress``: P processes x N seeded random ops (default 8 x 5,000, fsstress's ``-p 8 -n
  5000``) in one tree, each process in its own subdirectory; seconds from the first fork to
  the last process's exit. The op mix (fsstress's default frequencies) is documented in
  ``_fsstress.py``; real fsstress is packaged neither in Debian nor on PyPI.
* ``git_clone``: ``git clone -q --no-hardlinks file://SRC`` of a synthetic source repository
  into the target, seconds. SRC (``_gitsrc.py``: made once and kept in
  ``/var/tmp/dhtfs-bench-gitsrc-*``, on the disk) is deterministic: 4,400 files in 300 nested
  directories (4,700 entries), 41 MB, like xfstests' tree; one commit.
* ``git_status``: ``git status --porcelain`` in the clone right after it (warm caches), in
  seconds; it must print nothing (a clean tree), else the run says so. ``git_status_again``:
  a second one.

Beside each: ``NAME_cpu`` (the daemon's CPU seconds during the step, from ``/proc/PID/stat``:
dhtfs, bindfs) and ``NAME_client_cpu`` (CPU seconds of this process and the children it waited
for: the fsstress processes, git). For dhtfs (metrics on, ``-o metrics=127.0.0.1:PORT``),
``dhtfs_NAME_requests``: the FUSE requests the mount served during the step, from its
``dhtfs_fuse_op_seconds_count`` counters (every handler call, by kind; the kinds are printed
in the run's ``# `` line; the metrics cost the mount a few microseconds per request).
``dhtfs_NAME_vs_bindfs``: the ratio of the medians.

``--quick``: 8 x 500 ops and a quarter-size repository (1,100 files, ~10 MB); 3 runs.
Targets (issue 18): fsstress <= 2 x bindfs; git clone <= 1.5 x bindfs.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
from pathlib import Path

from _common import (
    KINDS,
    BenchError,
    Figures,
    Target,
    check_tools,
    fmt,
    guarded,
    make_targets,
    measured,
    note,
    parse_targets,
    work_dir,
)
from _fsstress import MIX, run_fsstress
from _gitsrc import describe_source, git, source_repo

STEP_KEYS = {"fsstress": ["fsstress"], "git": ["git_clone", "git_status", "git_status_again"]}


def requests_delta(before: dict[str, int] | None, after: dict[str, int] | None) -> dict[str, int]:
    if before is None or after is None:
        return {}
    delta = {op: n - before.get(op, 0) for op, n in after.items()}
    return {op: n for op, n in sorted(delta.items(), key=lambda kv: -kv[1]) if n}


def step(target: Target, key: str, fn, figs: Figures, run_no: int, extra: str = "") -> None:
    """Run ``fn`` (a workload) on ``target``; record seconds, CPU and (dhtfs) FUSE requests."""
    before = target.fuse_requests()
    cost = measured(target, fn)
    delta = requests_delta(before, target.fuse_requests())
    name = f"{target.name}_{key}"
    figs.add(name, cost.seconds, "s")
    figs.add_cost(target.name, key, cost, 1, "s")
    text = [f"daemon cpu {cost.daemon:.2f} s"] if cost.daemon is not None else []
    text.append(f"client cpu {cost.client:.2f} s")
    if delta:
        figs.add(f"{name}_requests", sum(delta.values()), "requests")
        top = ", ".join(f"{op} {n}" for op, n in list(delta.items())[:8])
        text.append(f"{sum(delta.values())} FUSE requests: {top}")
    note(f"run {run_no} {name}={fmt(cost.seconds, 's')} s ({'; '.join(text)}){extra}")


def run_fsstress_on(target: Target, procs: int, nops: int, figs: Figures, run_no: int,
                    work: Path) -> None:
    report = work / f"fsstress-report-{target.name}-{run_no}"
    report.mkdir()
    counts: dict[str, int] = {}
    target.setup()
    try:
        step(target, "fsstress",
             lambda: counts.update(run_fsstress(target.root / "t", procs, nops, 1, report)),
             figs, run_no)
        note(f"run {run_no} {target.name}_fsstress: {counts}")
    except RuntimeError as exc:
        raise BenchError(f"{target.name} fsstress: {exc}") from exc
    finally:
        target.teardown()
        shutil.rmtree(report, ignore_errors=True)


def run_git_on(target: Target, src: Path, figs: Figures, run_no: int) -> None:
    clone = target.root / "clone"
    target.setup()
    try:
        step(target, "git_clone",
             lambda: git("clone", "-q", "--no-hardlinks", f"file://{src}", str(clone)),
             figs, run_no)
        for key in ("git_status", "git_status_again"):
            out: list[str] = []
            step(target, key, lambda out=out: out.append(git("status", "--porcelain", cwd=clone)),
                 figs, run_no)
            if out[0].strip():
                lines = out[0].splitlines()
                note(f"run {run_no} {target.name}_{key}: NOT CLEAN, {len(lines)} lines, "
                     f"first: {lines[:3]}")
    finally:
        target.teardown()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--quick", action="store_true", help="8 x 500 ops, quarter-size repo")
    p.add_argument("--runs", type=int, default=3, help="runs per target (default 3)")
    p.add_argument("--only", default=",".join(KINDS), help="comma-separated kinds")
    p.add_argument("--state-on", default="disk", help="disk (default), tmpfs or both")
    p.add_argument("--procs", type=int, default=8, help="fsstress processes (default 8)")
    p.add_argument("--ops", type=int, help="ops per fsstress process (default 5000)")
    p.add_argument("--steps", default="fsstress,git", help="fsstress,git (default both)")
    args = p.parse_args(argv)
    try:
        kinds, stores = parse_targets(args.only, args.state_on)
    except ValueError as exc:
        p.error(str(exc))
    steps = [s for s in STEP_KEYS if s in args.steps.split(",")]
    if not steps or args.runs < 1 or args.procs < 1:
        p.error("--steps: fsstress and/or git; --runs and --procs positive")
    nops = args.ops or (500 if args.quick else 5000)
    why = check_tools(kinds)
    if why:
        print(f"devwork.py: {why}", file=sys.stderr)
        return 1

    def body() -> None:
        src = source_repo(args.quick) if "git" in steps else None
        with work_dir("dhtfs-bench-dev-") as work:
            targets = make_targets(work, kinds, stores, metrics=True)
            note(f"dhtfs developer workloads: nproc={os.cpu_count()} "
                 f"kernel={platform.release()} python={platform.python_version()} "
                 f"runs={args.runs} targets={','.join(t.name for t in targets)} "
                 f"steps={','.join(steps)} fsstress={args.procs}x{nops} ops "
                 f"mix={','.join(f'{k}:{w}' for k, w in MIX.items())}")
            if src is not None:
                note(describe_source(src))
            note("state/backing directories on the disk under /var/tmp unless named *tmpfs*; "
                 "*_cpu: the daemon's CPU s; *_client_cpu: ours and our children's CPU s")
            figs = Figures()
            for i in range(1, args.runs + 1):
                for target in targets:
                    if "fsstress" in steps:
                        run_fsstress_on(target, args.procs, nops, figs, i, work)
                    if src is not None:
                        run_git_on(target, src, figs, i)
            figs.print([k for s in steps for k in STEP_KEYS[s]], [t.name for t in targets])

    return guarded("devwork.py", body)


if __name__ == "__main__":
    sys.exit(main())
