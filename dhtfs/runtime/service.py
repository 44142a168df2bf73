"""One mount = one process = one ``trio.run`` = one nursery (no task outside it).

``mount.dhtfs`` opens the state directory first (``dhtfs.runtime.localfs.open_state_dir``:
exclusive lock, master key, block store, namespace, swarm identity); ``serve`` then builds the
mount's node (``dhtfs.runtime.mountnode``: listener, Kademlia, op-log replication, control
socket, the filesystem over them; joined and caught up under deadlines), mounts, reports
readiness, and serves FUSE requests until unmounted or told to stop by SIGTERM/SIGINT. On the
way out it flushes every open file, hands the last ops to peers (bounded), then unmounts, so
no stale "Transport endpoint is not connected" mount is left behind by a clean stop.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path

import pyfuse3
import trio

from dhtfs.base import systemd
from dhtfs.base.config import Config
from dhtfs.base.errors import ConfigError
from dhtfs.runtime.assembly import stop_on_signal
from dhtfs.runtime.localfs import LocalFilesystem, StateDir, held_blocks, remove_unreferenced
from dhtfs.runtime.mountnode import MountNode, open_mount_node

log = logging.getLogger(__name__)


def readahead_kib(chunk_size: int) -> int:
    """Read-ahead for a mount: one chunk (at least 1 MiB, the largest FUSE read request;
    at most 4 MiB), instead of the kernel's 128 KiB, which cuts sequential reads into eight
    requests per chunk and keeps only one chunk fetch ahead of the reader."""
    return min(max(chunk_size // 1024, 1024), 4096)


def set_readahead(mountpoint: Path, kib: int) -> bool:
    """Set the read-ahead of the FUSE mount at ``mountpoint`` (its bdi in sysfs).

    FUSE's init reply can only lower the default, so this is set once the kernel has the
    reply. Found via /proc/self/mountinfo, not stat(), which would be a request to this very
    process. False (and a debug log) if it cannot be set.
    """
    target = str(mountpoint)
    try:
        with open("/proc/self/mountinfo") as fh:
            for line in fh:
                fields = line.split()
                path = fields[4].encode().decode("unicode_escape")  # \040 for a space
                if path == target:
                    bdi = Path("/sys/class/bdi") / fields[2] / "read_ahead_kb"
                    bdi.write_text(str(kib))
                    return True
    except OSError as exc:
        log.debug("could not set read-ahead of %s: %s", mountpoint, exc)
        return False
    log.debug("could not set read-ahead of %s: not in /proc/self/mountinfo", mountpoint)
    return False


def fuse_options(config: Config) -> set[str]:
    options = set(pyfuse3.default_options)
    options |= {f"fsname=dhtfs:{config.swarm}", "subtype=dhtfs", "default_permissions"}
    if config.allow_other:
        options.add("allow_other")
    if config.debug:
        options.add("debug")
    return options


async def _commit_loop(fs: LocalFilesystem, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Commit metadata changes at most ``commit_interval`` after the first of them (group
    commit: a burst of creates, renames or unlinks shares one WAL commit; the op journal
    protects them meanwhile). The namespace rings ``opened`` as each transaction opens (it was
    built with it: ``dhtfs.runtime.localfs``); rings before the loop starts are forgotten."""
    opened = fs.namespace.opened
    assert opened is not None, "a mount's namespace is built with its commit doorbell"
    opened.clear()
    task_status.started()
    while True:
        await opened.wait()
        opened.clear()
        await trio.sleep(fs.config.commit_interval)
        try:
            fs.namespace.commit()
        except sqlite3.Error as exc:  # the next handler's commit reports it as EIO
            log.error("committing metadata failed: %s", exc)


CHECKPOINT_SECONDS = 2.0
"""How long after a journaled fsync the fsync journal's contents are made durable in their
own files (a durable point) and its lap ends: often enough to keep the journal short, rare
enough that a burst of small fsyncs shares one."""


async def _checkpoint_loop(fs: LocalFilesystem) -> None:
    """A durable point ``CHECKPOINT_SECONDS`` after the first journaled fsync since the last
    one (``FileContents.checkpoint``). A failure (a full disk) is logged; the journal keeps
    what it holds, and the next fsync or checkpoint tries again."""
    due = fs.contents.checkpoint_due
    while True:
        await due.wait()
        due.clear()
        await trio.sleep(CHECKPOINT_SECONDS)
        try:
            await fs.contents.checkpoint(fs.namespace)
        except (OSError, sqlite3.Error) as exc:
            log.error("making the fsync journal's blocks and ops durable failed: %s; they "
                      "stay in the journal", exc)


async def serve(state: StateDir, mountpoint: Path, ready: Callable[[], None]) -> None:
    """Join the swarm, mount, call ``ready()``, serve until unmounted or signalled, then
    flush, hand the last ops to peers, and unmount."""
    # Nothing is being written before the mount: a node that never had peers collects what
    # nothing references at once. Any other waits for the swarm's rules (dhtfs.blocks.reclaim:
    # it may hold blocks of versions whose ops have not reached it yet).
    ns = state.namespace
    alone = (
        not state.config.bootstrap
        and ns.meta_get("peers") is None
        and set(ns.vector) <= {state.identity.node_id}
    )
    if alone:
        remove_unreferenced(state.store, held_blocks(state), grace_seconds=0)
    async with trio.open_nursery() as nursery:
        systemd.notify("STATUS=joining swarm")
        kib = readahead_kib(state.config.chunk_size)
        # The kernel applies FUSE_INIT's reply after Operations.init() returns; a task
        # started from init() runs after that reply is written.
        swarm = await open_mount_node(nursery, state, mountpoint, after_init=lambda: (
            nursery.start_soon(trio.to_thread.run_sync, set_readahead, mountpoint, kib)))
        await swarm.start(nursery)
        systemd.notify("STATUS=mounting")
        await _serve_mount(swarm.fs, mountpoint, ready, swarm)
        nursery.cancel_scope.cancel()


async def _serve_mount(
    fs: LocalFilesystem,
    mountpoint: Path,
    ready: Callable[[], None],
    swarm: MountNode,
) -> None:
    try:
        pyfuse3.init(fs.operations, str(mountpoint), fuse_options(fs.config))
    except RuntimeError as exc:
        raise ConfigError(f"cannot mount on {mountpoint}: {exc}") from None
    unmounted = False
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(stop_on_signal, pyfuse3.terminate, "flushing and unmounting",
                                (signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
            await nursery.start(_commit_loop, fs)
            nursery.start_soon(_checkpoint_loop, fs)
            if fs.operations.compactor is not None:
                nursery.start_soon(fs.operations.compactor.run)
            ready()
            systemd.notify(f"READY=1\nSTATUS=mounted, {len(swarm.node.routing)} peers")
            try:
                await pyfuse3.main()
            finally:
                systemd.notify("STOPPING=1\nSTATUS=flushing open files")
                with trio.CancelScope(shield=True), trio.move_on_after(60):
                    await _flush_all(fs)
                fs.namespace.commit()
                with trio.CancelScope(shield=True):
                    backlog = swarm.block_replicator.pending
                    systemd.notify(f"STATUS=flushing {backlog} blocks")
                    await swarm.drain_replication()
                    await swarm.push_remaining()
            nursery.cancel_scope.cancel()
        pyfuse3.close(unmount=True)
        unmounted = True
    finally:
        if not unmounted:
            pyfuse3.close(unmount=True)


async def _flush_all(fs: LocalFilesystem) -> None:
    for of in list(fs.contents.open_files.values()):
        try:
            await fs.contents.flush(of)
        except Exception as exc:  # keep flushing the others
            log.error("flushing a file at shutdown failed: %s", exc)


def check_mountpoint(mountpoint: Path) -> Path:
    """Resolve and validate a mount point; ConfigError with a one-line reason otherwise."""
    try:
        st = os.stat(mountpoint)
    except FileNotFoundError:
        raise ConfigError(f"mount point {mountpoint} does not exist (mkdir -p it first)") from None
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise ConfigError(
                f"{mountpoint} holds a stale mount whose daemon died; "
                f"run: fusermount3 -u {mountpoint}"
            ) from None
        raise ConfigError(f"cannot use mount point {mountpoint}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"mount point {mountpoint} is not a directory")
    resolved = mountpoint.resolve()
    if os.path.ismount(resolved):
        raise ConfigError(f"{resolved} is already a mount point (umount it first)")
    return resolved
