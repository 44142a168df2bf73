"""``dhtfs sync [PATH]``: wait until what was written is on its replicas.

PATH a file: fsync it (which, on a swarm mount, returns once the blocks it got since its last
fsync are on their R nodes, or fails by the mount's ``replication_deadline``). PATH a
directory (default: the current one) on a dhtfs mount: wait for that mount's whole
replication backlog, with a progress line on a terminal, up to ``--timeout`` seconds. The mount
is found through the ``user.dhtfs.control`` xattr, which names its control socket.

Exit status: 0 when done; 1 (one line on stderr) when PATH is not on a dhtfs mount, the
mount does not answer, or the backlog is not empty by the deadline.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import trio

from dhtfs.base.errors import DhtfsError
from dhtfs.commands.target import control_socket
from dhtfs.net.control import ControlClient

POLL_SECONDS = 0.2


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sync", help="wait until what was written is on its replicas")
    p.add_argument("path", type=Path, nargs="?", default=Path("."),
                   help="a file (fsync it) or a directory on a dhtfs mount (its whole backlog)")
    p.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                   help="give up after this long (default 600)")
    p.set_defaults(func=cmd_sync)


def cmd_sync(args: argparse.Namespace) -> int:
    path: Path = args.path
    if path.is_file():
        return _sync_file(path)
    return trio.run(_drain, control_socket(path), args.timeout)


def _sync_file(path: Path) -> int:
    control_socket(path)  # a clear error off a dhtfs mount
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise DhtfsError(f"cannot open {path}: {exc.strerror}") from None
    try:
        os.fsync(fd)
    except OSError as exc:
        raise DhtfsError(f"{path}: fsync failed ({exc.strerror}); see the mount's log") from None
    finally:
        os.close(fd)
    return 0


async def _drain(socket: Path, timeout: float) -> int:
    client = await ControlClient.connect(socket)
    tty = sys.stderr.isatty()
    began = time.monotonic()
    first: int | None = None
    try:
        while True:
            status: dict[str, Any] = (await client.call("status"))["replication"]
            pending, left = int(status["pending"]), int(status["pending_bytes"])
            first = pending if first is None else max(first, pending)
            if tty:
                done = (first - pending) / first if first else 1.0
                bar = "#" * int(done * 30)
                sys.stderr.write(f"\rreplicating [{bar:<30}] {pending} blocks, "
                                 f"{left / 2**20:.1f} MiB to go ")
                sys.stderr.flush()
            if pending == 0:
                if tty:
                    sys.stderr.write("\n")
                return 0
            if time.monotonic() - began > timeout:
                if tty:
                    sys.stderr.write("\n")
                raise DhtfsError(f"{pending} blocks ({left} bytes) still wait for their "
                                 f"replicas after {timeout:.0f}s; see the mount's log")
            await trio.sleep(POLL_SECONDS)
    finally:
        await client.aclose()
