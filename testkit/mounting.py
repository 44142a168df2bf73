"""Real mounts in subprocesses for tests: start, wait until live, always clean up.

One ``mount.dhtfs -f`` process per mount (pyfuse3 allows one filesystem per process). Waiting
is polling ``/proc/mounts`` under a deadline (``testkit.wait``), never a fixed sleep; the daemon
gets ``testkit.env.child_env()``.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from dhtfs.umount import daemon_pid, process_alive
from testkit.env import MOUNT, child_env
from testkit.wait import DEADLINE, wait_until


def is_mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/mounts") as fh:
        return any(line.split()[1] == target for line in fh)


@dataclass
class Mount:
    """A live dhtfs mount served by ``proc`` (``mount.dhtfs -f``)."""

    mountpoint: Path
    state: Path
    options: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    log: Path | None = None
    prefix: list[str] = field(default_factory=list)  # e.g. ["nsenter", "--net=/run/netns/X"]

    def start(self) -> Mount:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.log = self.state.parent / f"{self.state.name}.log"
        opts = ",".join([f"state={self.state}", *self.options])
        env = child_env()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*self.prefix, MOUNT, str(self.mountpoint), "-f", "-o", opts],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        try:
            wait_until(
                lambda: is_mounted(self.mountpoint) or self.proc.poll() is not None,
                f"mount of {self.mountpoint}",
            )
        except TimeoutError:
            self.kill()
            raise
        if self.proc.poll() is not None:
            raise RuntimeError(f"mount.dhtfs exited {self.proc.returncode}: {self.log_text()}")
        return self

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log and self.log.exists() else ""

    def stop(self, timeout: float = DEADLINE) -> int:
        """Unmount cleanly (SIGTERM → flush → unmount); returns the daemon's exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise
        cleanup(self.mountpoint)
        return self.proc.returncode

    def close(self) -> None:
        """Test teardown: unmount cleanly, or, if that fails, kill and clean up."""
        try:
            self.stop()
        except Exception:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the daemon and remove the stale mount it leaves."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(DEADLINE)
        cleanup(self.mountpoint)


def cleanup(mountpoint: Path) -> None:
    """Unmount whatever is (still) at ``mountpoint``; lazily if it is stale or busy."""
    if is_mounted(mountpoint):
        subprocess.run(
            ["fusermount3", "-u", "-z", str(mountpoint)],
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )


def unmount_and_reap(mountpoint: Path, timeout: float = 20.0) -> None:
    """``cleanup``, then wait for the daemon that served ``mountpoint`` to exit (SIGKILL past
    ``timeout``), so no test leaves a daemon behind."""
    pid = daemon_pid(mountpoint) if is_mounted(mountpoint) else None
    cleanup(mountpoint)
    if pid is not None:
        try:
            wait_until(lambda: not process_alive(pid), f"daemon {pid} to exit", timeout=timeout)
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
