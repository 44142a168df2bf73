"""A mount's state directory opened, and the filesystem objects built over it.

``open_state_dir`` opens the state directory (exclusive lock, swarm identity, block store,
namespace with its op journal replayed, tree, inode map): everything that needs no network.
``build_filesystem`` then builds the file contents and the FUSE handlers with their
collaborators (``SwarmParts``: where blocks not stored here come from, where sealed blocks go,
the replication backlog's backpressure; ``None`` for a node alone), so each object has what it
needs from its constructor on. ``open_state`` does both for a node alone (tests, tools).

Invariants: one process per state directory (``flock`` on ``lock``); the namespace and its
files are root-only (0600).
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from dhtfs.base.config import Config
from dhtfs.base.errors import BlockCorrupt, ConfigError
from dhtfs.base.periodic import Doorbell
from dhtfs.fs.buffers import PlaintextCache
from dhtfs.fs.files import FileContents
from dhtfs.fs.inodes import InodeMap
from dhtfs.fs.operations import Operations
from dhtfs.meta.journal import OpJournal
from dhtfs.meta.namespace import Namespace
from dhtfs.meta.schema import connect
from dhtfs.meta.tree import Tree, bind_origin
from dhtfs.store.blockstore import ID_BYTES, BlockStore
from dhtfs.store.statedir import open_block_store, prepare_state_dir
from dhtfs.store.syncjournal import BLOCK, SyncJournal
from dhtfs.trust import pki
from dhtfs.trust.identity import load_or_create_identity

log = logging.getLogger(__name__)


@dataclass
class StateDir:
    """A state directory opened and locked: everything a mount has before the network."""

    config: Config
    lock_fd: int
    store: BlockStore
    namespace: Namespace
    tree: Tree
    inodes: InodeMap
    identity: pki.Identity
    sync_journal: SyncJournal

    def close(self) -> None:
        """Commit, make what the fsync journal holds durable in its own files, close."""
        try:
            settle_journals(self.sync_journal, self.store, self.namespace)
        finally:
            self.sync_journal.close()
            self.namespace.db.close()
            if self.namespace.journal is not None:
                self.namespace.journal.close()
            os.close(self.lock_fd)


def settle_journals(journal: SyncJournal, store: BlockStore,
                    namespace: Namespace) -> tuple[int, int, int]:
    """Replay what the fsync journal holds (blocks written back unless their files hold
    those bytes, ops the namespace lacks applied: both idempotent), then what the op journal
    holds (it may follow on from the fsync journal's ops: power loss, then a crash), commit
    once (which empties the op journal: only now is all of it in the tables), make it all
    durable (block files and WAL fsynced) and clear the fsync journal;
    → (blocks written back, ops applied from each journal). At start (a crash or power loss
    left records) and at a clean stop."""
    blocks: list[bytes] = []
    ops: list[bytes] = []
    op_journal = namespace.journal.records() if namespace.journal is not None else []
    restored = 0
    for kind, body in journal.records():
        if kind == BLOCK:
            block_id, blob = body[:ID_BYTES], body[ID_BYTES:]
            try:
                restored += store.put_sealed(block_id, blob)
                blocks.append(block_id)
            except BlockCorrupt as exc:
                log.error("fsync journal: block %s does not open (%s); not restored",
                          block_id.hex()[:16], exc)
        else:
            ops.append(body)
    synced = namespace.replay_records(ops)
    replayed = namespace.replay_records(op_journal)
    namespace.commit()
    store.sync(blocks)
    namespace.sync_wal()
    journal.clear()
    return restored, synced, replayed


@dataclass
class LocalFilesystem(StateDir):
    """Everything a mount serves from: its state directory, file contents, FUSE handlers."""

    contents: FileContents
    operations: Operations


@dataclass
class SwarmParts:
    """What a swarm mount's contents and handlers are built with (``FileContents`` and
    ``Operations`` say what each does)."""

    fetch: Callable[[bytes, tuple[bytes, ...]], Awaitable[bytes]]
    locate: Callable[[list[bytes]], Awaitable[dict[bytes, list[list[Any]]]]]
    on_sealed: Callable[[bytes, int, bytes], None]
    on_local_read: Callable[[bytes], None]
    backlog_full: Callable[[], bool]
    admit: Callable[[], Awaitable[None]]
    make_room: Callable[[int], Awaitable[int]]
    replicate: Callable[[list[bytes]], Awaitable[list[bytes]]]
    short_of_space: Callable[[], bool]
    observe: Callable[[str, bool, float], None] | None = None


def open_state_dir(config: Config) -> StateDir:
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
        # ``opened``: the commit loop's (dhtfs.runtime.service); ``written``: the op log's.
        namespace = Namespace(db, OpJournal(state / "ops.journal"), opened=Doorbell())
        sync_journal = SyncJournal(state / "sync.journal")
        restored, synced, replayed = settle_journals(sync_journal, store, namespace)
        if restored or synced:
            log.warning("restored %d blocks and %d namespace ops from the fsync journal: the "
                        "machine lost power or the last run did not stop cleanly",
                        restored, synced)
        if replayed:
            log.warning(
                "replayed %d namespace ops from the journal: the last run did not stop cleanly",
                replayed,
            )
        tree = Tree(namespace, bind_origin(namespace, identity.node_id), written=Doorbell())
        inodes = InodeMap(db)
    except BaseException:
        os.close(lock_fd)
        raise
    return StateDir(config, lock_fd, store, namespace, tree, inodes, identity, sync_journal)


def build_filesystem(
    state: StateDir,
    swarm: SwarmParts | None = None,
    *,
    nursery: trio.Nursery | None = None,
    compact: bool = False,
    after_init: Callable[[], None] | None = None,
) -> LocalFilesystem:
    """The file contents and FUSE handlers over ``state`` (a node alone when ``swarm`` is
    None; ``nursery`` runs background sealing; ``compact``: compaction after local writes)."""
    config = state.config
    parts: dict[str, Any] = {} if swarm is None else {
        "fetch": swarm.fetch, "on_sealed": swarm.on_sealed,
        "on_local_read": swarm.on_local_read, "backlog_full": swarm.backlog_full,
        "admit": swarm.admit, "make_room": swarm.make_room,
    }
    contents = functools.partial(
        FileContents, state.store, PlaintextCache(config.cache_size), config.chunk_size,
        committed=state.namespace.chunk_pieces, nursery=nursery,
        sync_journal=state.sync_journal, **parts,
    )
    operations = Operations(
        state.tree, state.inodes, str(config.state_dir), contents, compact=compact,
        after_init=after_init,
        **({} if swarm is None else {
            "observe": swarm.observe, "locate": swarm.locate, "replicate": swarm.replicate,
            "swarm_short_of_space": swarm.short_of_space,
        }),
    )
    return LocalFilesystem(config, state.lock_fd, state.store, state.namespace, state.tree,
                           state.inodes, state.identity, state.sync_journal,
                           operations.contents, operations)


def open_state(config: Config) -> LocalFilesystem:
    """The state directory opened as a node alone would serve it (no swarm)."""
    return build_filesystem(open_state_dir(config))


def held_blocks(state: StateDir) -> set[bytes]:
    """Blocks that a named object, or an object the kernel still holds, uses."""
    refs: set[bytes] = set(state.namespace.linked_blocks())
    for obj in state.inodes.known_objects():
        refs.update(state.namespace.blocks_of(obj))
    return refs


def referenced_blocks(fs: LocalFilesystem) -> set[bytes]:
    """Blocks that a named object, or an object the kernel or a handle still holds, uses."""
    refs = held_blocks(fs)
    for of in fs.contents.open_files.values():
        refs.update(of.stored_blocks())
    return refs


def collect_garbage(fs: LocalFilesystem, grace_seconds: float) -> int:
    """Delete block files nothing references and older than the grace period; returns count."""
    return remove_unreferenced(fs.store, referenced_blocks(fs), grace_seconds)


def remove_unreferenced(store: BlockStore, refs: set[bytes], grace_seconds: float) -> int:
    """Delete the block files not in ``refs`` and older than the grace period; returns count."""
    cutoff = time.time() - grace_seconds
    removed = 0
    for block_id in list(store.ids()):
        if block_id in refs:
            continue
        try:
            if store.path_of(block_id).stat().st_mtime > cutoff:
                continue
        except FileNotFoundError:
            continue
        store.remove(block_id)
        removed += 1
    if removed:
        log.info("garbage collection removed %d unreferenced blocks", removed)
    return removed
