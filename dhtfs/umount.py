"""``umount.dhtfs MOUNTPOINT``: unmount (every file was flushed at its close), then wait,
bounded, for the daemon to finish and exit.

umount(8) runs it for a dhtfs mount as ``/sbin/umount.fuse.dhtfs`` (the mount's type is
``fuse.dhtfs``; setup.sh links it), with ``-n``/``-l``/``-f``/``-v``/``-r`` and possibly
``-t TYPE``, so a plain ``umount DIR`` returns once the daemon has flushed, handed its
replication backlog on (bounded) and exited, as ``umount.dhtfs DIR`` does. umount(8) (2.38)
reads the type from mountinfo only for a mount it has a utab entry for, i.e. one mounted
through mount(8) with a userspace option such as ``_netdev`` (fstab, the systemd units);
for any other it takes statfs()'s type, plain "fuse", finds no helper and only unmounts.
Then, as with ``umount -i``, the kernel's unmount still makes the daemon flush, drain and
exit 0 on its own, but umount returns at once.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from dhtfs.mount import RUN_DIR

PROG = "umount.dhtfs"
# The daemon may spend up to 60 s flushing open files, 60 s finishing replication and 5 s
# handing its last ops to peers (dhtfs.runtime.service, dhtfs.runtime.assembly).
WAIT_SECONDS = 150.0


def daemon_pid(mountpoint: Path) -> int | None:
    """The pid mount.dhtfs recorded for ``mountpoint``, if any."""
    for record in RUN_DIR.glob("*.json") if RUN_DIR.is_dir() else []:
        try:
            data = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        if data.get("mountpoint") == str(mountpoint):
            return int(data["pid"])
    return None


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie counts as exited."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has finished; its reaping is up to init, which may take its time
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description="Flush and unmount a dhtfs mount.")
    p.add_argument("mountpoint", type=Path)
    p.add_argument("-l", "--lazy", action="store_true", help="detach even if busy")
    p.add_argument("-v", "-n", "-f", "-r", action="store_true", dest="ignored")
    p.add_argument("-t", dest="fstype", help="filesystem type (as umount(8) passes it)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    mountpoint = Path(os.path.abspath(args.mountpoint))
    pid = daemon_pid(mountpoint)
    cmd = ["fusermount3", "-u"] + (["-z"] if args.lazy else []) + [str(mountpoint)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"
        print(f"{PROG}: {reason}", file=sys.stderr)
        return 1
    if pid is not None:
        deadline = time.monotonic() + WAIT_SECONDS
        while process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if process_alive(pid):
            print(f"{PROG}: unmounted, but daemon {pid} is still finishing", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
