"""``mount.dhtfs [SPEC] MOUNTPOINT [-o opts] [-f] [--config FILE]``: the mount(8) helper.

Without ``-f`` the process forks: the child (the daemon) mounts and serves; the parent waits on
a readiness pipe and exits 0 once the mount is live, or prints the child's one-line error and
exits 1. Problems with input or config are one line on stderr and exit status 1, never a
traceback. A stale mount left by a daemon killed with SIGKILL is cleaned up with a warning.

As mount(8)'s helper (``mount -t dhtfs SPEC DIR -o OPTS``, an fstab line): SPEC names the
swarm, best as ``dhtfs:SWARM`` (the mount's source as the kernel lists it, so ``mount -a``
sees an fstab line is mounted already); a bare ``SWARM`` works too, ``none``/``dhtfs`` mean
the default swarm. ``-s``/``-n``/``-v`` and ``-t TYPE`` are accepted.

Under systemd the unit runs ``-f`` (the daemon is the main process: its sd_notify
READY=1/STATUS=/STOPPING=1 need only ``NotifyAccess=main``), and logs go to the journal.
The daemon logs an ``event=start`` and an ``event=stop status=N`` line even when quiet.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import trio

from dhtfs import __version__
from dhtfs.base.config import Config, load_config, parse_mount_options
from dhtfs.base.errors import DhtfsError
from dhtfs.base.logs import capture_native_stderr, event, setup_logging
from dhtfs.base.malloc import tune_malloc
from dhtfs.runtime.localfs import open_state_dir
from dhtfs.runtime.service import check_mountpoint, serve

log = logging.getLogger("dhtfs.mount")

RUN_DIR = Path("/run/dhtfs")
PROG = "mount.dhtfs"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=PROG, description="Mount a dhtfs swarm (single node by default)."
    )
    p.add_argument("spec_or_mountpoint", metavar="[SPEC] MOUNTPOINT", nargs="+")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPTS")
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    p.add_argument("--config", type=Path, help="TOML config file")
    # Flags mount(8) may pass: sloppy, no-mtab, verbose, type.
    p.add_argument("-s", "-n", action="store_true", dest="ignored")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("-t", dest="fstype")
    args = p.parse_args(argv)
    if len(args.spec_or_mountpoint) > 2:
        p.error("expected [SPEC] MOUNTPOINT")
    return args


def build_config(args: argparse.Namespace) -> tuple[Config, Path]:
    positional = args.spec_or_mountpoint
    spec = positional[0] if len(positional) == 2 else None
    mountpoint = Path(positional[-1])
    options: dict[str, object] = {}
    for text in args.options:
        options.update(parse_mount_options(text))
    config_path = args.config
    if "config" in options:
        config_path = Path(str(options.pop("config")))
    if spec and spec not in ("dhtfs", "none") and "swarm" not in options:
        options["swarm"] = spec.removeprefix("dhtfs#").removeprefix("dhtfs:")
    if args.verbose:
        options.setdefault("debug", True)
    return load_config(config_path, options), mountpoint


def _clean_stale_mount(mountpoint: Path) -> None:
    try:
        os.stat(mountpoint)
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            return
        log.warning("%s: removing the stale mount left by a dead daemon", mountpoint)
        subprocess.run(
            ["fusermount3", "-u", "-z", str(mountpoint)],
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )


def _record_mount(mountpoint: Path, config: Config) -> Path | None:
    """Note the daemon's pid for umount.dhtfs (best effort)."""
    try:
        RUN_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = RUN_DIR / (str(mountpoint).strip("/").replace("/", "-") or "root")
        path = path.with_suffix(".json")
        path.write_text(
            json.dumps(
                {"pid": os.getpid(), "mountpoint": str(mountpoint), "state": str(config.state_dir)}
            )
        )
        return path
    except OSError:
        return None


def _deliberate(group: BaseExceptionGroup) -> BaseException:
    """The first ``DhtfsError`` in a nursery's exception group (a one-line error for the
    user), else the group itself."""
    match, _rest = group.split(DhtfsError)
    while isinstance(match, BaseExceptionGroup):
        match = match.exceptions[0]
    return match if match is not None else group


def run_daemon(config: Config, mountpoint: Path, ready_fd: int | None) -> int:
    """Open state, mount, serve; report readiness or a one-line error on ``ready_fd``."""
    reported = False

    def report(message: str) -> None:
        nonlocal reported
        if ready_fd is not None and not reported:
            reported = True
            try:
                os.write(ready_fd, message.encode())
            finally:
                os.close(ready_fd)

    record = None
    status = 1
    tune_malloc()
    os.umask(0o077)  # state files (db, WAL, logs) are root-only; FUSE modes come from requests
    event("start", f"dhtfs {__version__} starting", mountpoint=mountpoint,
          swarm=config.swarm, state=config.state_dir, version=__version__)
    try:
        state = open_state_dir(config)
        try:
            record = _record_mount(mountpoint, config)
            try:
                trio.run(serve, state, mountpoint, lambda: report("ok"))
            except BaseExceptionGroup as group:
                raise _deliberate(group) from None
        finally:
            state.close()
    except DhtfsError as exc:
        log.error("%s", exc)
        report(f"error {exc}")
        return 1
    except Exception as exc:
        log.exception("dhtfs daemon failed")
        report(f"error {type(exc).__name__}: {exc}")
        return 1
    else:
        status = 0
    finally:
        if record is not None:
            record.unlink(missing_ok=True)
        event("stop", "dhtfs stopped" if status == 0 else "dhtfs stopped with an error",
              mountpoint=mountpoint, status=status)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config, mountpoint = build_config(args)
        _clean_stale_mount(mountpoint)
        mountpoint = check_mountpoint(mountpoint)
    except DhtfsError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    if args.foreground:
        capture_native_stderr()
        setup_logging(config.debug)
        return run_daemon(config, mountpoint, None)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the daemon
        os.close(read_fd)
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.umask(0o077)  # before the log file is created
        capture_native_stderr()  # libfuse's messages go to the log file too
        setup_logging(config.debug, file=config.state_dir / "dhtfs.log")
        os._exit(run_daemon(config, mountpoint, write_fd))
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        answer = pipe.read().decode(errors="replace")
    if answer == "ok":
        return 0
    message = (
        answer.removeprefix("error ")
        if answer
        else (f"the daemon exited before mounting; see {config.state_dir / 'dhtfs.log'}")
    )
    print(f"{PROG}: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
