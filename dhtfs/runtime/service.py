"""One mount = one process = one ``trio.run`` = one nursery (no task outside it).

``open_state`` opens the state directory (exclusive lock, master key, chunk store, namespace,
swarm identity); ``serve`` starts the swarm node (``dhtfs.runtime.swarmnode``: listener, Kademlia,
op-log replication, control socket; joined and caught up under deadlines), mounts, reports
readiness, and serves FUSE requests until unmounted or told to stop by SIGTERM/SIGINT. On the
way out it flushes every open file, hands the last ops to peers (bounded), then unmounts, so
no stale "Transport endpoint is not connected" mount is left behind by a clean stop.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import trio

from dhtfs.base import systemd
from dhtfs.base.config import Config
from dhtfs.base.errors import ConfigError
from dhtfs.fs.buffers import PlaintextCache
from dhtfs.fs.compaction import Compactor
from dhtfs.fs.files import FileContents
from dhtfs.fs.inodes import InodeMap
from dhtfs.fs.operations import Operations
from dhtfs.meta.journal import OpJournal
from dhtfs.meta.namespace import Namespace, connect
from dhtfs.meta.tree import Tree, bind_origin
from dhtfs.runtime.swarmnode import SwarmNode
from dhtfs.store.blockstore import BlockStore
from dhtfs.store.statedir import open_block_store, prepare_state_dir
from dhtfs.trust import pki
from dhtfs.trust.identity import load_or_create_identity

log = logging.getLogger(__name__)



@dataclass
class LocalFilesystem:
    """Everything a mount serves from, opened from the state directory."""

    config: Config
    lock_fd: int
    store: BlockStore
    namespace: Namespace
    tree: Tree
    inodes: InodeMap
    contents: FileContents
    operations: Operations
    identity: pki.Identity

    def close(self) -> None:
        self.namespace.commit()
        self.namespace.db.close()
        if self.namespace.journal is not None:
            self.namespace.journal.close()
        os.close(self.lock_fd)


def open_state(config: Config) -> LocalFilesystem:
    """Open (creating if needed) the state directory; ConfigError/KeyFileError on problems."""
    state = config.state_dir
    prepare_state_dir(state)
    lock_fd = os.open(state / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock_fd)
        raise ConfigError(
            f"state directory {state} is in use by another dhtfs process "
            "(one mount per state directory; use -o state=DIR for another)"
        ) from None
    try:
        identity = load_or_create_identity(config)
        store = open_block_store(state, config.key)
        db = connect(state / "namespace.db")
        os.chmod(state / "namespace.db", 0o600)
        namespace = Namespace(db)
        namespace.journal = OpJournal(state / "ops.journal")
        replayed = namespace.replay_journal()
        if replayed:
            log.warning(
                "replayed %d namespace ops from the journal: the last run did not stop cleanly",
                replayed,
            )
        tree = Tree(namespace, bind_origin(namespace, identity.node_id))
        inodes = InodeMap(db)
        contents = FileContents(
            store,
            PlaintextCache(config.cache_size),
            config.chunk_size,
            commit=lambda of: (0, b""),
            committed=namespace.chunk_pieces,
        )
        operations = Operations(tree, contents, inodes, str(state))
        contents._commit = operations._commit_content
    except BaseException:
        os.close(lock_fd)
        raise
    return LocalFilesystem(
        config, lock_fd, store, namespace, tree, inodes, contents, operations, identity
    )


def referenced_chunks(fs: LocalFilesystem) -> set[bytes]:
    """Chunks that a named object, or an object the kernel or a handle still holds, uses."""
    refs: set[bytes] = set(fs.namespace.linked_blocks())
    for obj in fs.inodes.known_objects():
        refs.update(fs.namespace.blocks_of(obj))
    for of in fs.contents.open_files.values():
        refs.update(of.stored_blocks())
    return refs


def collect_garbage(fs: LocalFilesystem, grace_seconds: float) -> int:
    """Delete chunk files nothing references and older than the grace period; returns count."""
    refs = referenced_chunks(fs)
    cutoff = time.time() - grace_seconds
    removed = 0
    for block_id in list(fs.store.ids()):
        if block_id in refs:
            continue
        try:
            if fs.store.path_of(block_id).stat().st_mtime > cutoff:
                continue
        except FileNotFoundError:
            continue
        fs.store.remove(block_id)
        removed += 1
    if removed:
        log.info("garbage collection removed %d unreferenced chunks", removed)
    return removed


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


async def _stop_on_signal(task_status=trio.TASK_STATUS_IGNORED) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        task_status.started()
        async for signum in signals:
            log.warning("received %s: flushing and unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            return


async def _commit_loop(fs: LocalFilesystem, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Commit metadata changes at most ``commit_interval`` after the first of them (group
    commit: a burst of creates, renames or unlinks shares one WAL commit; the op journal
    protects them meanwhile)."""
    opened = trio.Event()

    def on_begin() -> None:
        opened.set()

    fs.namespace.on_begin = on_begin
    task_status.started()
    try:
        while True:
            await opened.wait()
            opened = trio.Event()
            await trio.sleep(fs.config.commit_interval)
            try:
                fs.namespace.commit()
            except sqlite3.Error as exc:  # the next handler's commit reports it as EIO
                log.error("committing metadata failed: %s", exc)
    finally:
        fs.namespace.on_begin = None


async def serve(fs: LocalFilesystem, mountpoint: Path, ready: Callable[[], None]) -> None:
    """Join the swarm, mount, call ``ready()``, serve until unmounted or signalled, then
    flush, hand the last ops to peers, and unmount."""
    # Nothing is being written before the mount: a node that never had peers collects what
    # nothing references at once. Any other waits for the swarm's rules (dhtfs.blocks.reclaim:
    # it may hold blocks of versions whose ops have not reached it yet).
    ns = fs.namespace
    alone = (
        not fs.config.bootstrap
        and ns.meta_get("peers") is None
        and set(ns.vector) <= {fs.identity.node_id}
    )
    if alone:
        collect_garbage(fs, grace_seconds=0)
    async with trio.open_nursery() as nursery:
        swarm = SwarmNode(fs, fs.identity)
        swarm.mountpoint = mountpoint
        systemd.notify("STATUS=joining swarm")
        await swarm.start(nursery)
        systemd.notify("STATUS=mounting")
        await _serve_mount(fs, mountpoint, ready, swarm)
        nursery.cancel_scope.cancel()


async def _serve_mount(
    fs: LocalFilesystem,
    mountpoint: Path,
    ready: Callable[[], None],
    swarm: SwarmNode,
) -> None:
    try:
        pyfuse3.init(fs.operations, str(mountpoint), fuse_options(fs.config))
    except RuntimeError as exc:
        raise ConfigError(f"cannot mount on {mountpoint}: {exc}") from None
    unmounted = False
    try:
        async with trio.open_nursery() as nursery:
            fs.contents.nursery = nursery
            # The kernel applies FUSE_INIT's reply after Operations.init() returns; a task
            # started from init() runs after that reply is written.
            kib = readahead_kib(fs.config.chunk_size)
            fs.operations.after_init = lambda: nursery.start_soon(
                trio.to_thread.run_sync, set_readahead, mountpoint, kib
            )
            await nursery.start(_stop_on_signal)
            await nursery.start(_commit_loop, fs)
            compactor = Compactor(fs.tree, fs.contents)
            fs.operations.on_content = compactor.changed
            nursery.start_soon(compactor.run)
            ready()
            peers = len(swarm.node.routing) if swarm.node is not None else 0
            systemd.notify(f"READY=1\nSTATUS=mounted, {peers} peers")
            try:
                await pyfuse3.main()
            finally:
                systemd.notify("STOPPING=1\nSTATUS=flushing open files")
                with trio.CancelScope(shield=True), trio.move_on_after(60):
                    await _flush_all(fs)
                fs.namespace.commit()
                with trio.CancelScope(shield=True):
                    backlog = swarm.block_replicator.pending if swarm.block_replicator else 0
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
    import stat as stat_mod

    if not stat_mod.S_ISDIR(st.st_mode):
        raise ConfigError(f"mount point {mountpoint} is not a directory")
    resolved = mountpoint.resolve()
    if os.path.ismount(resolved):
        raise ConfigError(f"{resolved} is already a mount point (umount it first)")
    return resolved
