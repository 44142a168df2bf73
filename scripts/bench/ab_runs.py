"""Running one benchmark's measurement for this code and for a reference checkout side by
side: each run of each target is a child process (``script --one-run ...``) whose last
stdout line is a JSON object of figures; the reference runs through the same venv with
``PYTHONPATH=<checkout>`` (the venv's editable finder comes after it). Targets alternate
within each run, so background load spreads over both. The child's ``# `` lines are passed
on; the figures printed are the medians over the runs, ``figure: TARGET_NAME=VALUE UNIT``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path


def run_side_by_side(script: str, child_args: list[str], ref: Path | None, runs: int,
                     units: dict[str, str]) -> int:
    """Run ``script --one-run *child_args`` ``runs`` times per target (``dhtfs``: this code;
    ``ref``: the checkout ``ref``, if any) and print the figures; the exit status."""
    repo = Path(script).resolve().parents[2]
    targets = {"dhtfs": None} | ({"ref": ref.resolve()} if ref else {})
    results: dict[str, list[dict[str, float]]] = {t: [] for t in targets}
    for run in range(runs):
        for target, path in targets.items():
            env = dict(os.environ)
            if path is not None:
                env["PYTHONPATH"] = str(path)
            done = subprocess.run([sys.executable, script, "--one-run", *child_args], env=env,
                                  capture_output=True, text=True, timeout=3600, cwd=path or repo)
            if done.returncode != 0:
                print(done.stdout, done.stderr, file=sys.stderr)
                return 1
            lines = done.stdout.splitlines()
            figures = json.loads(lines[-1])
            print(f"# run {run + 1} {target}:",
                  json.dumps({k: round(v, 3) for k, v in figures.items()}))
            for line in lines:
                if line.startswith("#"):
                    print(line)
            results[target].append(figures)
    for target, measured in results.items():
        for name, unit in units.items():
            value = statistics.median(r[name] for r in measured)
            print(f"figure: {target}_{name}={value:.3f} {unit}")
    return 0
