"""A mount's node: the node assembly (``dhtfs.runtime.assembly``) plus the namespace side.

A mount adds to every node: the namespace's replica of the op log (``NamespaceLog``) and the
kernel invalidations of remote changes (``dhtfs.fs.remote``), reads of blocks not stored here
(``RemoteReads``), the REFS answers and the holds on the blocks of files still open here
(collection, ``dhtfs.blocks.reclaim``), a catch-up with every peer found after the join (a
late joiner mounts with the whole tree), and its control methods.

Invariants:
- ops are pushed only once persisted (``Namespace.log_entries`` persists first);
- blocks stored here are replicated to the ``replicas`` XOR-closest nodes by
  ``dhtfs.blocks.replication`` (a backlog that survives a crash; backpressure on writers past
  ``replication_backlog`` bytes); ``fsync`` waits for a file's new blocks to be there (EIO
  after ``replication_deadline``); stopping waits for the backlog (bounded); a reader
  elsewhere that races the replication asks the writer of the version directly
  (``get_block`` hints);
- a remote read has a deadline (``-o read_deadline``): while no copy of a block is reachable
  the read waits for one (a version may show here before its writer placed its blocks), and
  past the deadline the reader gets EIO;
- an unreachable swarm delays a mount by at most ``JOIN_DEADLINE + CATCH_UP_DEADLINE``
  seconds (logged), never forever.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from dhtfs.base import systemd
from dhtfs.base.config import DEFAULT_LISTEN, Config, parse_http_address
from dhtfs.base.errors import BlockError, ConfigError, NamespaceError, NetworkError
from dhtfs.blocks.clientplace import ClientPlacement
from dhtfs.blocks.node import BlockNode
from dhtfs.blocks.reclaim import BATCH as REFS_BATCH
from dhtfs.blocks.reclaim import REFS
from dhtfs.blocks.replication import BlockReplicator
from dhtfs.blocks.verify import log_lag
from dhtfs.fs.remote import RemoteChanges
from dhtfs.gateway.access import gateway_access
from dhtfs.gateway.routes import Routes
from dhtfs.gateway.server import HttpServer
from dhtfs.meta.replica import NamespaceLog
from dhtfs.net import rpc
from dhtfs.net.network import Contact, Message
from dhtfs.net.transport import Transport
from dhtfs.runtime.assembly import (
    CacheNotices,
    ControlMethod,
    NodeAssembly,
    load_cache,
    open_network,
)
from dhtfs.runtime.joining import Joiner, NamespacePeers, seed_addresses
from dhtfs.runtime.localfs import (
    LocalFilesystem,
    StateDir,
    SwarmParts,
    build_filesystem,
    referenced_blocks,
)
from dhtfs.runtime.metrics import Metrics
from dhtfs.runtime.mountcontrol import MountControl
from dhtfs.store.diskcache import DiskCache
from dhtfs.trust.revocation import RevocationList

log = logging.getLogger(__name__)

CATCH_UP_DEADLINE = 20.0
LOCATE_DEADLINE = 10.0
REFS_FRESH_SECONDS = 1.0


class RemoteReads:
    """Blocks not stored here, from the swarm: a mount's ``FileContents.fetch`` and its
    ``user.dhtfs.providers`` lookups; counts remote reads by where they came from."""

    def __init__(self, node: BlockNode, read_deadline: float) -> None:
        self.node = node
        self.read_deadline = read_deadline
        self.by_source: dict[str, int] = {}  # remote reads: provider (hex) or source

    async def fetch(self, block_id: bytes, hints: tuple[bytes, ...]) -> bytes:
        """A block not stored here, from the swarm (verified), within ``read_deadline``:
        while no copy is reachable the read waits for one (``dhtfs.blocks.fetch``), so a
        version shown here before its blocks could be fetched reads once they can."""
        deadline = self.read_deadline
        until = trio.current_time() + deadline
        with trio.move_on_at(until):
            try:
                got = await self.node.get_block_detailed(block_id, hints, until=until)
            except BlockError as exc:
                raise NamespaceError(errno.EIO, str(exc)) from None
            who = got.provider.node_id.hex() if got.provider is not None else got.source
            self.by_source[who] = self.by_source.get(who, 0) + 1
            return got.data
        self.node.arrivals.missed(block_id)
        log.error("block %s: no copy could be fetched from the swarm within "
                  "read_deadline=%gs; the read fails with EIO (are its holders up? see dhtfs "
                  "status)", block_id.hex()[:16], deadline)
        raise NamespaceError(errno.EIO, "block fetch timed out")

    async def locate(self, blocks: list[bytes]) -> dict[bytes, list[list[Any]]]:
        """Providers of each block (``user.dhtfs.providers``/``replicas``): the unexpired
        provider records the DHT holds (each holder announces itself; this node counts when
        it holds the block), with the RTT measured to each; at most ``LOCATE_DEADLINE``
        seconds in all (blocks not looked up by then show no provider)."""
        node = self.node
        out: dict[bytes, list[list[Any]]] = {}
        limit = trio.CapacityLimiter(8)

        async def one(block: bytes) -> None:
            async with limit:
                found = await node.find_providers(block, stop_early=False)
            rows = []
            for c in found:
                rtt = node.routing.rtt(c.node_id)
                rows.append([c.node_id.hex(), f"{c.host}:{c.port}",
                             None if rtt is None else round(rtt * 1000, 3)])
            out[block] = rows

        with trio.move_on_after(LOCATE_DEADLINE):
            async with trio.open_nursery() as nursery:
                for block in blocks:
                    nursery.start_soon(one, block)
        return out


class MountNode(NodeAssembly):
    """The node of one mount (see the module docstring)."""

    SETTLE_ON_LAN = True

    def __init__(
        self,
        fs: LocalFilesystem,
        mountpoint: Path,
        transport: Transport,
        node: BlockNode,
        cache: DiskCache,
        revocations: RevocationList,
        block_replicator: BlockReplicator,
        reads: RemoteReads,
        joiner: Joiner,
        *,
        metrics: Metrics | None,
        discover: bool,
        placement: ClientPlacement | None = None,
    ) -> None:
        config: Config = fs.config
        self.fs = fs
        self.mountpoint = mountpoint
        self.reads = reads
        self.placement = placement
        self.remote = RemoteChanges(fs.namespace, fs.inodes, fs.contents, mountpoint)
        fs.operations.invalidate = self.remote.changed_here
        log_store = NamespaceLog(
            fs.tree, on_remote=self.remote, on_installed=self.remote.everything_changed,
            protected=lambda: fs.inodes.known_objects() | set(fs.contents.open_files))
        self._refs_cache: tuple[float, set[bytes]] = (-math.inf, set())
        super().__init__(
            config, fs.identity, fs.store, transport, node, cache, revocations, log_store,
            joiner, metrics=metrics, discover=discover,
            fold_alone=not config.bootstrap and config.ca is None,
            block_replicator=block_replicator, local_refs=self._referenced,
            log_written=fs.tree.written,
        )
        self.block_replicator: BlockReplicator = block_replicator
        node.services[REFS] = self._refs
        self.control = MountControl(fs, node, transport, self.log_replicator, self.remote,
                                    revocations)
        # The read-only HTTP gateway (-o http=HOST:PORT, dhtfs.gateway), reading through
        # this mount's file contents (its cache, read-ahead and fetches).
        self.gateway = None
        if config.http:
            host, port = parse_http_address(config.http)
            access = gateway_access(
                host, cert=config.http_cert, key=config.http_key, token=config.http_token,
                node_cert=fs.identity.cert, node_key=fs.identity.key,
                ca_cert=fs.identity.ca_cert, revoked=revocations.is_revoked)
            self.gateway = HttpServer(Routes(fs.tree, fs.contents, os.fsencode(mountpoint)),
                                      host, port, access=access)

    def control_methods(self) -> dict[str, ControlMethod]:
        return {**super().control_methods(), **self.control.methods()}

    async def start(self, nursery: trio.Nursery) -> None:
        """Serve, join and catch up (bounded); the tasks live in ``nursery``."""
        if self.placement is not None:  # a client's blocks wait for a pause in writing 1 s
            nursery.start_soon(self.placement.run)
        nursery.start_soon(self._hold_open_blocks, self.config.gc_grace / 4)
        nursery.start_soon(self.remote.run)
        if self.gateway is not None:
            try:
                await nursery.start(self.gateway.serve)
            except OSError as exc:
                raise ConfigError(f"http={self.config.http}: cannot listen: "
                                  f"{exc.strerror or exc}") from None
        await super().start(nursery)
        if len(self.node.routing):
            systemd.notify(f"STATUS=catching up with {len(self.node.routing)} peers")
            with trio.move_on_after(CATCH_UP_DEADLINE):
                gained = await self.log_replicator.sync_all(deadline=CATCH_UP_DEADLINE)
                if gained:
                    log.info("caught up: %d ops from the swarm", gained)
        self.fs.namespace.commit()

    # -- collection ----------------------------------------------------------------------------

    def _referenced_now(self) -> set[bytes]:
        """Every block a live version, a held object or an open file's change references
        (computed at most once a second: REFS comes in batches)."""
        at, refs = self._refs_cache
        if trio.current_time() - at >= REFS_FRESH_SECONDS:
            self.fs.namespace.write_back()
            refs = referenced_blocks(self.fs)
            self._refs_cache = (trio.current_time(), refs)
        return refs

    async def _referenced(self, candidates: list[bytes]) -> set[bytes]:
        refs = self._referenced_now()
        return {c for c in candidates if c in refs}

    async def _refs(self, caller: Contact, method: str, args: Message) -> Message:
        """REFS (``dhtfs.blocks.reclaim``): which of ``ids`` this mount's namespace references,
        and the op-log vector that answer reflects."""
        ids = rpc.req_ids(args, "ids", method, REFS_BATCH)
        vector = [[o, s] for o, s in self.fs.namespace.vector.items()]
        refs = self._referenced_now()
        return {"referenced": [c for c in ids if c in refs], "vector": vector}

    async def _hold_open_blocks(self, every: float) -> None:
        """Renew, on their holders, the blocks of files still open here (no op references
        them until the file is flushed), so collection elsewhere leaves them alone."""
        node = self.node
        while True:
            await trio.sleep(every)
            blocks: set[bytes] = set()
            for of in list(self.fs.contents.open_files.values()):
                blocks |= of.stored_blocks()
            targets: dict[bytes, tuple[Contact, list[bytes]]] = {}
            for cid in blocks:
                for c in node.routing.closest(cid, node.replicas):
                    targets.setdefault(c.node_id, (c, []))[1].append(cid)
            for peer, ids in targets.values():
                for i in range(0, len(ids), rpc.MAX_HOLD_IDS):
                    with contextlib.suppress(NetworkError):
                        await node.call(peer, rpc.HOLD, {"ids": ids[i : i + rpc.MAX_HOLD_IDS]},
                                        node.rpc_timeout)

    # -- what the mount reports ----------------------------------------------------------------

    async def status(self, args: Message) -> Message:
        vector = self.fs.namespace.vector
        rep, node = self.block_replicator, self.node
        return {
            **await super().status(args),
            "pid": os.getpid(), "mountpoint": str(self.mountpoint or ""),
            "swarm": self.config.swarm, "ops": sum(vector.values()), "origins": len(vector),
            "placed": rep.replicated, "replication": rep.status(),
            "reads": {**self.fs.contents.reads, "by_source": dict(self.reads.by_source),
                      "waiting": node.arrivals.waiting},
            "invalidations": self.remote.done,
            "invalidations_pending": self.remote.pending,
            "directories": {"followed": self.remote.followed,
                            "renumbered": self.fs.inodes.renumbered},
            "space": {**self.fs.store.space.status(), "refused_blocks": node.refused_full,
                      "full_peers": len(node.full_until)},
            "crl": self.revocations.number,
            "refusals": self.transport.refusals,
            "oplog": log_lag(self.log_replicator.store.vector(), self.log_replicator.fold.reports),
            "http": {"address": "{}:{}".format(*self.gateway.address),
                     "tls": self.gateway.access.context is not None,
                     **self.gateway.stats.status()}
            if self.gateway is not None and self.gateway.address else {},
        }

    def metrics_snapshot(self) -> dict[str, Any]:
        snapshot = super().metrics_snapshot()
        rep = self.block_replicator.status()
        lag = log_lag(self.log_replicator.store.vector(), self.log_replicator.fold.reports)
        snapshot["blocks"].update(stored=rep["added"], replicated=rep["replicated"],
                                  fetched=self.fs.contents.reads["remote"])
        return {
            **snapshot,
            "replication_backlog_blocks": rep["pending"],
            "replication_backlog_bytes": rep["pending_bytes"],
            "oplog_lag": {p["node_id"].hex()[:16]: p["missing_here"] for p in lag["peers"]},
            "http": self.gateway.stats.status() if self.gateway is not None else {},
        }


async def open_mount_node(nursery: trio.Nursery, state: StateDir, mountpoint: Path, *,
                          after_init: Callable[[], None]) -> MountNode:
    """Build a mount's node over its opened state directory, each part with its
    collaborators, in dependency order: the network (listening in ``nursery``), the joiner,
    the block replicator, the disk cache, then the filesystem (``dhtfs.runtime.localfs``)
    over them, then the node. ``after_init`` is called when FUSE_INIT is handled."""
    config, store, ns = state.config, state.store, state.namespace
    metrics = Metrics() if config.metrics else None
    notices = CacheNotices()
    transport, node, revocations = await open_network(
        nursery, config, state.identity, store, DEFAULT_LISTEN, notices, metrics=metrics,
        client=not config.storage)
    joiner = Joiner(node, seed_addresses(config.bootstrap),
                    NamespacePeers(ns.meta_get, ns.meta_set))
    own = transport.local
    block_replicator = BlockReplicator(
        node, config.state_dir / "replication.backlog",
        max_bytes=config.replication_backlog, admit_deadline=config.replication_deadline,
        on_placed_elsewhere=notices.placed_elsewhere,
        remembered=joiner.remembered((own.host, own.port)),
    )
    cache = await load_cache(config, store, node, block_replicator.is_pending, notices)
    reads = RemoteReads(node, config.read_deadline)
    # A client's blocks wait for a pause in writing (1 s at most) before their placement.
    placement = None if config.storage else ClientPlacement(block_replicator)
    swarm = SwarmParts(
        fetch=reads.fetch, locate=reads.locate,
        on_sealed=placement.sealed if placement is not None else block_replicator.add,
        on_local_read=cache.touch, backlog_full=lambda: block_replicator.full,
        admit=block_replicator.admit,
        make_room=cache.make_room,  # a full disk: cached copies are reclaimable
        replicate=lambda ids: block_replicator.wait(ids, config.replication_deadline),
        short_of_space=block_replicator.short_of_space,
        observe=metrics.fuse_op if metrics is not None else None,
    )
    fs = build_filesystem(state, swarm, nursery=nursery, compact=True, after_init=after_init)
    # LAN peers by mDNS (dhtfs.dht.discovery); "auto": not for a private swarm of one.
    discover = bool(config.discovery or (
        config.discovery is None and (config.ca is not None or joiner.candidates())))
    return MountNode(fs, mountpoint, transport, node, cache, revocations, block_replicator,
                     reads, joiner, metrics=metrics, discover=discover, placement=placement)
