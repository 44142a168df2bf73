"""Drive ``dhtfs swarm`` from tests and benchmarks: up, down, kill one node, restart.

Every call is a subprocess under a timeout (``python -m dhtfs.cli swarm ...``), so a hung
daemon fails the test instead of hanging it. ``running_swarm`` always runs ``down`` (and, if
that fails, kills what is left), so no test leaves a mount or a daemon behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dhtfs.commands.swarm import SWARM_FILE
from dhtfs.commands.swarmprocs import daemon_pids, lazy_unmount, process_alive
from testkit.env import REPO, child_env
from testkit.wait import wait_until

TIMEOUT = 240.0  # one swarm command (``up`` waits at most ~3 x 60 s itself)
KILL_SECONDS = 15.0


class SwarmError(RuntimeError):
    """A ``dhtfs swarm`` command failed; the message holds its stderr."""


@dataclass(frozen=True)
class NodeInfo:
    """One node as ``dhtfs swarm up --json`` describes it."""

    name: str
    host: str
    port: int
    mountpoint: Path
    state: Path
    log: Path
    control: Path
    pid: int | None
    peers: int | None
    node_id: str | None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> NodeInfo:
        return cls(d["name"], d["host"], int(d["port"]), Path(d["mountpoint"]),
                   Path(d["state"]), Path(d["log"]), Path(d["control"]), d.get("pid"),
                   d.get("peers"), d.get("node_id"))


def run_cli(*args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    """``python -m dhtfs.cli ARGS`` without the system config; never raises on exit status."""
    return subprocess.run([sys.executable, "-m", "dhtfs.cli", *args], cwd=REPO, env=child_env(),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout, check=False)


def up(root: Path, n: int | None = None, options: str | None = None,
       node_options: dict[str, str] | None = None) -> list[NodeInfo]:
    """``dhtfs swarm up --json [--nodes n] [-o options] [--node-options NAME:OPTS...] root``:
    start what is not mounted, wait, describe."""
    argv = ["swarm", "up", "--json", *(["--nodes", str(n)] if n is not None else []),
            *(["-o", options] if options is not None else []),
            *(a for name, opts in (node_options or {}).items()
              for a in ("--node-options", f"{name}:{opts}")), str(root)]
    res = run_cli(*argv)
    if res.returncode != 0:
        raise SwarmError(f"swarm up exited {res.returncode}: {res.stderr.strip()}")
    return [NodeInfo.from_json(d) for d in json.loads(res.stdout)["nodes"]]


def restart(root: Path) -> list[NodeInfo]:
    """Start every node of ``root`` that is not mounted (e.g. after ``kill``)."""
    return up(root)


def down(root: Path) -> None:
    res = run_cli("swarm", "down", str(root))
    if res.returncode != 0:
        raise SwarmError(f"swarm down exited {res.returncode}: {res.stderr.strip()}")


def recorded(root: Path) -> dict[str, dict[str, Any]]:
    """The nodes of ``root/swarm.json`` by name."""
    nodes = json.loads((root / SWARM_FILE).read_text())["nodes"]
    return {n["name"]: n for n in nodes}


def kill(root: Path, name: str) -> list[int]:
    """SIGKILL the daemon of node ``name`` and remove the stale mount; returns the pids."""
    mountpoint = Path(recorded(root)[name]["mountpoint"])
    pids = daemon_pids(mountpoint)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_gone(pids)
    lazy_unmount(mountpoint)
    return pids


def wait_gone(pids: list[int], timeout: float = KILL_SECONDS) -> None:
    wait_until(lambda: not any(process_alive(p) for p in pids), f"processes {pids} to exit",
               timeout)


def kill_all(root: Path) -> None:
    """Last resort: SIGKILL every node's daemon, unmount lazily (no ``dhtfs`` involved)."""
    with contextlib.suppress(OSError, ValueError, KeyError):
        for name in recorded(root):
            with contextlib.suppress(OSError, TimeoutError):
                kill(root, name)


@contextlib.contextmanager
def running_swarm(root: Path, n: int, options: str | None = None,
                  node_options: dict[str, str] | None = None) -> Iterator[list[NodeInfo]]:
    """An ``n``-node swarm in ``root`` for the ``with`` block; always brought down after."""
    try:
        yield up(root, n, options, node_options)
    finally:
        try:
            down(root)
        except (SwarmError, subprocess.TimeoutExpired):
            kill_all(root)
            raise
