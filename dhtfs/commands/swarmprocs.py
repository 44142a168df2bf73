"""Processes and mounts of ``dhtfs swarm`` (and its test helper): is a mount point mounted,
stale or live; which daemon serves it; waiting for and killing processes; lazy unmounts.

Invariant: nothing here blocks without a deadline; a hung FUSE daemon makes ``stat`` of its
mount point hang, so that call runs in an abandoned daemon thread under ``STAT_SECONDS``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

STAT_SECONDS = 5.0  # stat() of a mount point
UMOUNT_SECONDS = 30.0  # one umount.dhtfs (or fusermount3)
EXIT_SECONDS = 15.0  # a daemon's exit after its unmount, before SIGKILL
POLL = 0.1
_OCTAL = re.compile(r"\\([0-7]{3})")


def mounted(mountpoint: Path) -> bool:
    """``mountpoint`` is in /proc/mounts (live or stale)."""
    with open("/proc/mounts") as fh:
        targets = [fields[1] for fields in map(str.split, fh) if len(fields) > 1]
    # /proc/mounts writes space, tab, newline and backslash as octal escapes
    return str(mountpoint) in (_OCTAL.sub(lambda m: chr(int(m[1], 8)), t) for t in targets)


def stat_errno(mountpoint: Path, seconds: float = STAT_SECONDS) -> int | None:
    """The errno of ``stat(mountpoint)`` (0: it worked), or None when there is no answer
    within ``seconds``: a hung daemon blocks the call, so it runs in an abandoned daemon
    thread."""
    result: list[int] = []

    def probe() -> None:
        try:
            os.stat(mountpoint)
            result.append(0)
        except OSError as exc:
            result.append(exc.errno or -1)

    thread = threading.Thread(target=probe, name="stat-probe", daemon=True)
    thread.start()
    thread.join(seconds)
    return result[0] if result else None


def stale(mountpoint: Path) -> bool:
    """The daemon behind the mount died (the kernel answers ENOTCONN)."""
    return stat_errno(mountpoint) == errno.ENOTCONN


def is_live(mountpoint: Path) -> bool:
    """Mounted and not stale (a hung daemon counts as live: its status calls time out)."""
    return mounted(mountpoint) and not stale(mountpoint)


def lazy_unmount(mountpoint: Path) -> None:
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=UMOUNT_SECONDS, check=False)


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie counts as exited."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def daemon_pids(mountpoint: Path) -> list[int]:
    """Live ``mount.dhtfs`` processes for ``mountpoint`` (the daemon keeps the mount helper's
    command line), found the way ``pgrep -f`` would."""
    target = os.fsencode(mountpoint)
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        if target in argv and any(os.path.basename(a) == b"mount.dhtfs" for a in argv):
            pid = int(entry.name)
            if pid != os.getpid() and process_alive(pid):
                found.append(pid)
    return found


def wait_gone(pids: Sequence[int], seconds: float) -> list[int]:
    """Wait until every pid has exited or ``seconds`` passed; returns those still alive."""
    deadline = time.monotonic() + seconds
    alive = [p for p in pids if process_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(POLL)
        alive = [p for p in alive if process_alive(p)]
    return alive


def kill(pids: Sequence[int]) -> list[int]:
    """SIGKILL ``pids``; returns those that still have not exited after a bounded wait."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return wait_gone(pids, EXIT_SECONDS)
