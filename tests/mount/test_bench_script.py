"""The benchmark script runs end to end on dhtfs and prints well-formed figure lines.

Not a timed test: tiny sizes, one run, and no assertion on the values beyond "positive".
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.mount

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "bench" / "fs.py"
FIGURE = re.compile(
    r"^figure: (\w+)=(\d+(?:\.\d+)?) (MB/s|files/s|entries/s|writes/s|ms|bytes|ms/MB|ms/op)$"
)
RATES = {
    f"dhtfs_{name}"
    for name in (
        "seq_write",
        "seq_read_cold",
        "seq_read_warm",
        "cp",
        "ls",
        "rm",
        "rand_write",
        "write_fsync_64m",
        "write_fsync_4g",
    )
}
# Beside every rate, the daemon's CPU and the client's (per MB or per op).
EXPECTED = RATES | {"dhtfs_op_bytes_4k_in_4g"} | {
    f"{name}{cpu}" for name in RATES for cpu in ("_cpu", "_client_cpu")
}


def mounts_under(root: Path) -> list[str]:
    with open("/proc/mounts") as fh:
        return [line for line in fh if line.split()[1].startswith(f"{root}/")]


def test_quick_dhtfs_figures(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--runs",
            "1",
            "--only",
            "dhtfs",
            "--size-mib",
            "8",
            "--files",
            "50",
            "--writes",
            "50",
            "--pairs",
            "10",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "DHTFS_BENCH_DIR": str(tmp_path)},  # its mounts live under tmp_path
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    figures: dict[str, float] = {}
    for line in proc.stdout.splitlines():
        if line.startswith("# ") or not line:
            continue
        match = FIGURE.match(line)
        assert match, f"malformed line: {line!r}"
        figures[match[1]] = float(match[2])
    assert set(figures) == EXPECTED
    assert all(figures[name] > 0 for name in RATES | {"dhtfs_op_bytes_4k_in_4g"}), figures
    assert not mounts_under(tmp_path)
