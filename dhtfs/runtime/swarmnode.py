"""A mount's swarm node: transport, Kademlia node, op-log replication, chunk placement and
the control socket, all in the mount's one nursery (see dhtfs.runtime.service).

Start-up (``start``), each step under a deadline, so a mount never hangs on the network:
listen (``listen=``; by default ``DEFAULT_LISTEN``, or any free port if that is taken), the
control socket, Kademlia maintenance, the op-log replicator, the kernel invalidator, then a
join through ``bootstrap=`` addresses (retried in the background while the routing table is
empty) and one anti-entropy round with every peer found, so a late joiner mounts with the
whole tree. An unreachable swarm delays a mount by at most ``JOIN_DEADLINE +
CATCH_UP_DEADLINE`` seconds (logged), never forever.

Invariants:
- ops are pushed only once persisted (``Namespace.log_entries`` persists first);
- blocks stored here are replicated to the ``replicas`` XOR-closest nodes by
  ``dhtfs.blocks.replication`` (a backlog that survives a crash; backpressure on writers past
  ``replication_backlog`` bytes); ``fsync`` waits for a file's new blocks to be there (EIO
  after ``replication_deadline``); stopping waits for the backlog (bounded); a reader
  elsewhere that races the replication asks the writer of the version directly
  (``get_chunk`` hints);
- a remote read has a deadline (``-o read_deadline``): while no copy of a block is reachable
  the read waits for one (a version may show here before its writer placed its blocks), and
  past the deadline the reader gets EIO.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from dhtfs.base import systemd
from dhtfs.base.config import DEFAULT_LISTEN, DEFAULT_PORT, parse_metrics_address
from dhtfs.base.errors import BlockError, ConfigError, NamespaceError, NetworkError, RemoteError
from dhtfs.blocks.clientplace import ClientPlacement
from dhtfs.blocks.node import BlockNode
from dhtfs.blocks.reclaim import BATCH as REFS_BATCH
from dhtfs.blocks.reclaim import REFS, Reclaimer
from dhtfs.blocks.repair import Repairer
from dhtfs.blocks.replication import LIVE_SECONDS, BlockReplicator
from dhtfs.blocks.verify import log_lag
from dhtfs.dht.discovery import Discovery
from dhtfs.dht.revocations import start_revocation
from dhtfs.fs.remote import RemoteChanges
from dhtfs.meta.replica import NamespaceLog
from dhtfs.net import rpc
from dhtfs.net.control import CONTROL_SOCKET_NAME, ControlServer
from dhtfs.net.network import Contact, Message
from dhtfs.net.transport import Transport
from dhtfs.oplog.membership import MEMBERS_FILE, Membership
from dhtfs.oplog.membership import control_methods as membership_methods
from dhtfs.oplog.replicator import METHODS as LOG_METHODS
from dhtfs.oplog.replicator import LogReplicator, Signatures
from dhtfs.runtime.headless import parse_address
from dhtfs.store.diskcache import DiskCache, file_size
from dhtfs.trust import pki
from dhtfs.trust.revocation import RevocationList

if TYPE_CHECKING:
    from dhtfs.runtime.metrics import Metrics
    from dhtfs.runtime.service import LocalFilesystem

log = logging.getLogger(__name__)

JOIN_DEADLINE = 15.0
CATCH_UP_DEADLINE = 20.0
SHUTDOWN_PUSH_DEADLINE = 5.0
SHUTDOWN_REPLICATION_DEADLINE = 60.0
LOCATE_DEADLINE = 10.0
JOIN_RETRY_SECONDS = 5.0
PEER_CACHE = 64
DISCOVERY_SETTLE = 2.0  # a member with no reachable address waits this long for LAN peers
PEER_CACHE_INTERVAL = 60.0
REFS_FRESH_SECONDS = 1.0


class SwarmNode:
    """The network side of one mount (see the module docstring)."""

    def __init__(self, fs: LocalFilesystem, identity: pki.Identity) -> None:
        self.fs = fs
        self.identity = identity
        self.transport: Transport | None = None
        self.node: BlockNode | None = None
        self.log_store = NamespaceLog(fs.tree)
        self.log_log_replicator: LogReplicator | None = None
        self.remote = RemoteChanges(fs.namespace, fs.inodes, fs.contents)
        self.log_store.on_remote = self.remote
        self.log_store.on_installed = self.remote.everything_changed
        self.block_replicator: BlockReplicator | None = None
        self.repairer: Repairer | None = None
        self.cache: DiskCache | None = None
        self.reclaimer: Reclaimer | None = None
        self.revocations: RevocationList | None = None
        self.metrics: Metrics | None = None
        self.discovery: Discovery | None = None
        self._refs_cache: tuple[float, set[bytes]] = (-math.inf, set())
        self.reads_by_source: dict[str, int] = {}  # remote reads: provider (hex) or source
        self.mountpoint: Path | None = None
        self._seeds: list[tuple[str, int]] = []
        self._known: set[tuple[str, int]] = set()

    # -- start-up ------------------------------------------------------------------------------

    async def start(self, nursery: trio.Nursery) -> None:
        """Listen, serve, join and catch up (bounded); the tasks live in ``nursery``."""
        config = self.fs.config
        self.transport = await self._listen(nursery, config.listen)
        node = self.node = BlockNode(self.transport, self.fs.store, replicas=config.replicas,
                                     fetch_timeout=config.read_deadline)
        node.client = self.transport.client = not config.storage
        self.transport.handler = node.handle
        self.revocations = start_revocation(nursery, node, self.transport,
                                            self.identity.ca_cert, config.state_dir, config.crl)
        block_replicator = self.block_replicator = BlockReplicator(
            node, config.state_dir / "replication.backlog",
            max_bytes=config.replication_backlog, admit_deadline=config.replication_deadline,
        )
        # Loading the index stats every cached block: in a worker thread.
        cache = self.cache = await trio.to_thread.run_sync(lambda: DiskCache(
            config.state_dir, config.cache_disk, size_of=file_size(self.fs.store.path_of),
            remove=self.fs.store.remove, responsible=node.responsible_for,
            pending=block_replicator.is_pending,
        ))
        node.on_cached = cache.add
        node.on_served = cache.touch
        node.on_placed = cache.forget  # now one of the block's R holders: not a cached copy
        block_replicator.on_placed_elsewhere = cache.add
        signer = Signatures(self.identity)
        revocations = self.revocations
        members = Membership(self.identity.node_id, config.state_dir / MEMBERS_FILE,
                             member_timeout=config.member_timeout,
                             peer_cert=self.transport.peer_cert)
        self.log_replicator = LogReplicator(
            node, self.log_store, signer, fold_interval=config.fold_interval,
            fold_alone=not config.bootstrap and config.ca is None, membership=members,
            revoked=lambda n: (der := self.log_store.cert(n) or members.certs.get(n))
            is not None and revocations.is_revoked(der),
        )
        self.log_store.protected = lambda: (
            self.fs.inodes.known_objects() | set(self.fs.contents.open_files)
        )
        for method in LOG_METHODS:
            node.services[method] = self.log_replicator.handle
        self.fs.tree.on_op = lambda _op: self.log_replicator.notify()
        contents = self.fs.contents
        contents.fetch = self._fetch
        contents.on_sealed = block_replicator.add
        if not config.storage:  # a client's blocks wait for a pause in writing 1 s at most
            hurry = ClientPlacement(block_replicator)
            contents.on_sealed = hurry.sealed
            nursery.start_soon(hurry.run)
        contents.on_local_read = cache.touch
        contents.backlog_full = lambda: block_replicator.full
        contents.admit = block_replicator.admit
        contents.make_room = cache.make_room  # a full disk: cached copies are reclaimable
        self.fs.operations.locate = self.locate
        self.fs.operations.replicate = lambda ids: block_replicator.wait(
            ids, config.replication_deadline
        )
        self.fs.operations.swarm_short_of_space = block_replicator.short_of_space
        control = ControlServer([node], extra={
            "status": self._status, "oplog": self._oplog, "isolate": self._isolate,
            "faults": self._faults, "fsck": self._fsck,
            "sync": self._sync, "digest": self._digest, "fold": self._fold, "gc": self._gc,
            "crl": self._crl, **membership_methods(self.log_replicator),
        })
        await nursery.start(control.serve, config.state_dir / CONTROL_SOCKET_NAME)
        nursery.start_soon(node.run_maintenance)
        nursery.start_soon(cache.run)
        if config.metrics:
            from dhtfs.runtime.metrics import Metrics

            self.metrics = Metrics(self._metrics_snapshot)
            node.on_rpc, node.on_lookup = self.metrics.rpc, self.metrics.lookup
            self.fs.operations.observe = self.metrics.fuse_op
            nursery.start_soon(self.metrics.serve, *parse_metrics_address(config.metrics))
        node.services[REFS] = self._refs
        self.reclaimer = Reclaimer(node, config.gc_grace, local_refs=self._referenced,
                                   pending=block_replicator.is_pending, on_removed=cache.forget)
        nursery.start_soon(self.reclaimer.run)
        nursery.start_soon(self._hold_open_blocks, config.gc_grace / 4)
        nursery.start_soon(self.log_replicator.run)
        self.remote.mountpoint = self.mountpoint
        nursery.start_soon(self.remote.run)
        self._seeds = [parse_address(b, "bootstrap", default_port=DEFAULT_PORT)
                       for b in config.bootstrap]
        self._known = self._cached_peers()
        # LAN peers by mDNS (dhtfs.dht.discovery); "auto": not for a private swarm of one.
        if config.discovery or (config.discovery is None
                                and (config.ca is not None or self._join_candidates())):
            self.discovery = Discovery.for_node(node, self.identity, self.transport.host)
            nursery.start_soon(self.discovery.run)
        own = self.transport.local
        block_replicator.remembered = len((set(self._seeds) | self._known) - {(own.host, own.port)})
        if self._join_candidates():
            with trio.move_on_after(JOIN_DEADLINE) as scope:
                # The configured addresses first (failures are warnings), then the ones
                # remembered from earlier runs (they may be long gone: quietly).
                if self._seeds:
                    await node.join_addresses(self._seeds)
                if not len(node.routing) and self._known:
                    await node.join_addresses(sorted(self._known), quiet=True)
                log.info("joined the swarm: %d contacts", len(node.routing))
            if self._seeds and (scope.cancelled_caught or len(node.routing) == 0):
                log.warning("could not join through any bootstrap address (see above) "
                            "within %.0fs; mounting anyway, retrying in the background",
                            JOIN_DEADLINE)
        if self.discovery and config.ca is not None and not len(node.routing):
            await self.discovery.settle(DISCOVERY_SETTLE)  # mount with the tree, if on the LAN
        nursery.start_soon(self._keep_joined)
        # After the join: a backlog resumed at start must not be placed on a routing table
        # that is still empty (it would count as alone, and call one copy enough).
        nursery.start_soon(block_replicator.run)
        if config.storage:  # a client holds no copies for the swarm: nothing to repair
            self.repairer = Repairer(node, interval=config.repair_interval)
            nursery.start_soon(self.repairer.run)
        if len(node.routing):
            systemd.notify(f"STATUS=catching up with {len(node.routing)} peers")
            with trio.move_on_after(CATCH_UP_DEADLINE):
                gained = await self.log_replicator.sync_all(deadline=CATCH_UP_DEADLINE)
                if gained:
                    log.info("caught up: %d ops from the swarm", gained)
        self.fs.namespace.commit()

    async def _listen(self, nursery: trio.Nursery, listen: str) -> Transport:
        text = listen or DEFAULT_LISTEN
        host, port = parse_address(text, "listen")
        try:
            transport = Transport(self.identity, host, port)
            await nursery.start(transport.serve)
            return transport
        except OSError as exc:
            if listen or exc.errno != errno.EADDRINUSE:
                raise ConfigError(f"cannot listen on {text}: {exc.strerror or exc}") from None
        log.warning("port %d is taken; listening on a free port instead (see dhtfs status)", port)
        transport = Transport(self.identity, host, 0)
        await nursery.start(transport.serve)
        return transport

    # -- staying joined ------------------------------------------------------------------------

    def _cached_peers(self) -> set[tuple[str, int]]:
        """Peer addresses remembered from earlier runs (``meta`` key ``peers``)."""
        raw = self.fs.namespace.meta_get("peers")
        try:
            return {(str(h), int(p)) for h, p in json.loads(raw)} if raw else set()
        except (ValueError, TypeError):
            return set()

    def _join_candidates(self) -> list[tuple[str, int]]:
        return list(dict.fromkeys([*self._seeds, *sorted(self._known)]))

    def remember_peers(self) -> None:
        """Keep the addresses of the peers we know now for the next run (at most
        ``PEER_CACHE``), so a node rejoins after a restart or a long partition even where no
        bootstrap address is configured."""
        if self.node is None:
            return
        self._known.update(c.address for c in self.node.routing.contacts())
        if len(self._known) > PEER_CACHE:
            self._known = set(sorted(self._known)[:PEER_CACHE])
        self.fs.namespace.meta_set("peers", json.dumps(sorted(self._known)).encode())

    async def _keep_joined(self) -> None:
        """Join again through the configured and remembered addresses whenever the routing
        table lost peers heard from lately (all of them, or some: after a partition heals,
        peers that dropped this node would not call it back); remember peers every
        ``PEER_CACHE_INTERVAL``."""
        assert self.node is not None
        node = self.node
        last_saved = trio.current_time()
        while True:
            await trio.sleep(JOIN_RETRY_SECONDS)
            degraded = len(node.routing) < node.recent_peers(LIVE_SECONDS) or not len(node.routing)
            if degraded and (seeds := self._join_candidates()):
                await node.join_addresses(seeds, quiet=True)
            if trio.current_time() - last_saved >= PEER_CACHE_INTERVAL:
                last_saved = trio.current_time()
                self.remember_peers()

    # -- contents ------------------------------------------------------------------------------

    async def _fetch(self, block_id: bytes, hints: tuple[bytes, ...]) -> bytes:
        """A chunk not stored here, from the swarm (verified), within ``read_deadline``:
        while no copy is reachable the read waits for one (``dhtfs.blocks.fetch``), so a
        version shown here before its blocks could be fetched reads once they can."""
        assert self.node is not None
        deadline = self.fs.config.read_deadline
        until = trio.current_time() + deadline
        with trio.move_on_at(until):
            try:
                got = await self.node.get_block_detailed(block_id, hints, until=until)
            except BlockError as exc:
                raise NamespaceError(errno.EIO, str(exc)) from None
            who = got.provider.node_id.hex() if got.provider is not None else got.source
            self.reads_by_source[who] = self.reads_by_source.get(who, 0) + 1
            return got.data
        self.node.arrivals.missed(block_id)
        log.error("chunk %s: no copy could be fetched from the swarm within "
                  "read_deadline=%gs; the read fails with EIO (are its holders up? see dhtfs "
                  "status)", block_id.hex()[:16], deadline)
        raise NamespaceError(errno.EIO, "chunk fetch timed out")

    async def locate(self, blocks: list[bytes]) -> dict[bytes, list[list[Any]]]:
        """Providers of each block (``user.dhtfs.providers``/``replicas``): the unexpired
        provider records the DHT holds (each holder announces itself; this node counts when
        it holds the block), with the RTT measured to each; at most ``LOCATE_DEADLINE``
        seconds in all (blocks not looked up by then show no provider)."""
        assert self.node is not None
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

    # -- collection ----------------------------------------------------------------------------

    def _referenced_now(self) -> set[bytes]:
        """Every block a live version, a held object or an open file's change references
        (computed at most once a second: REFS comes in batches)."""
        from dhtfs.runtime.service import referenced_chunks

        at, refs = self._refs_cache
        if trio.current_time() - at >= REFS_FRESH_SECONDS:
            self.fs.namespace.write_back()
            refs = referenced_chunks(self.fs)
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
        assert self.node is not None
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

    # -- shutdown ------------------------------------------------------------------------------

    async def drain_replication(self) -> None:
        """Wait (bounded, progress in the log) for the blocks still to be replicated."""
        if self.block_replicator is not None and self.node is not None and len(self.node.routing):
            await self.block_replicator.drain(SHUTDOWN_REPLICATION_DEADLINE)
        if self.block_replicator is not None:
            self.block_replicator.close()

    async def push_remaining(self) -> None:
        """Hand the last ops to peers before the process goes (bounded)."""
        if self.log_replicator is None or self.node is None or not len(self.node.routing):
            return
        self.remember_peers()
        with trio.move_on_after(SHUTDOWN_PUSH_DEADLINE):
            await self.log_replicator.push_pending()

    # -- control socket ------------------------------------------------------------------------

    async def _status(self, args: Message) -> Message:
        assert self.node is not None and self.log_replicator is not None
        c = self.node.contact
        vector = self.fs.namespace.vector
        return {
            "node_id": c.node_id, "listen": f"{c.host}:{c.port}", "peers": len(self.node.routing),
            **(self.transport.addresses() if self.transport else {}),
            "pid": os.getpid(), "mountpoint": str(self.mountpoint or ""),
            "swarm": self.fs.config.swarm, "ops": sum(vector.values()), "origins": len(vector),
            "chunks": await trio.to_thread.run_sync(lambda: sum(1 for _ in self.fs.store.ids())),
            "placed": self.block_replicator.replicated if self.block_replicator else 0,
            "replication": self.block_replicator.status() if self.block_replicator else {},
            "reads": {**self.fs.contents.reads, "by_source": dict(self.reads_by_source),
                      "waiting": self.node.arrivals.waiting},
            "repair": {"passes": self.repairer.passes, "pushed": self.repairer.pushed}
            if self.repairer else {},
            "invalidations": self.remote.done,
            "invalidations_pending": self.remote.pending,
            "directories": {"followed": self.remote.followed,
                            "renumbered": self.fs.inodes.renumbered},
            "cache": self.cache.status() if self.cache else {},
            "space": {**self.fs.store.space.status(), "refused_blocks": self.node.refused_full,
                      "full_peers": len(self.node.full_until)},
            "collection": self.reclaimer.status() if self.reclaimer else {},
            "crl": self.revocations.number if self.revocations else 0,
            "refusals": self.transport.refusals if self.transport else 0,
            "metrics": "{}:{}".format(*self.metrics.address)
            if self.metrics and self.metrics.address else "",
            "discovery": self.discovery.status() if self.discovery else {},
            "oplog": log_lag(self.log_replicator.store.vector(), self.log_replicator.fold.reports),
        }

    def _metrics_snapshot(self) -> dict[str, Any]:
        """The counters ``dhtfs.runtime.metrics`` reads at each scrape (on the trio thread; cheap:
        nothing here walks the store)."""
        assert self.node is not None and self.block_replicator is not None
        assert self.cache is not None and self.log_replicator is not None
        rep, cache = self.block_replicator.status(), self.cache.status()
        lag = log_lag(self.log_replicator.store.vector(), self.log_replicator.fold.reports)
        transport = self.transport
        return {
            "blocks": {
                "stored": rep["added"], "replicated": rep["replicated"],
                "fetched": self.fs.contents.reads["remote"], "cached": cache["added"],
                "evicted": cache["evicted"],
                "repaired": self.repairer.pushed if self.repairer else 0,
                "reclaimed": self.reclaimer.reclaimed if self.reclaimer else 0,
            },
            "network": {"received": getattr(transport, "bytes_received", 0),
                        "sent": getattr(transport, "bytes_sent", 0)},
            "replication_backlog_blocks": rep["pending"],
            "replication_backlog_bytes": rep["pending_bytes"],
            "cache_bytes": cache["bytes"],
            "peers": len(self.node.routing),
            "oplog_lag": {p["node_id"].hex()[:16]: p["missing_here"] for p in lag["peers"]},
        }

    async def _fsck(self, args: Message) -> Message:
        """``dhtfs fsck``: a page of blocks checked, repairs, or the namespace's invariants."""
        from dhtfs.fs.fsck import control as fsck

        return await fsck(self.fs, self.node, args)

    async def _oplog(self, args: Message) -> Message:
        assert self.log_replicator is not None
        st = self.log_replicator.stats
        ns = self.fs.namespace
        ns.write_back()
        return {
            "vector": [[o, s] for o, s in ns.vector.items()],
            "stats": {k: getattr(st, k) for k in st.__slots__},
            "unfolded": ns.db.execute("SELECT count(*) FROM oplog").fetchone()[0],
            "fold_ts": ns.fold_ts,
            "members": len(self.log_replicator.fold.members),
            "forgotten": sorted(self.log_replicator.membership.forgotten()),
        }

    async def _isolate(self, args: Message) -> Message:
        assert self.transport is not None
        self.transport.isolate(bool(args.get("on")))
        return {"isolated": self.transport.isolated}

    async def _faults(self, args: Message) -> Message:
        """Test switches of the transport (``Transport.set_faults``), off by default and only
        reachable through this root-only control socket: ``{"delay": seconds, "tamper": bool,
        "mute": bool, "hold": [method, ...]}``, each optional; returns the settings now in
        force. (``"follow": bool`` switches the mount's following of directories moved
        elsewhere, ``"invalidate": bool`` holds its kernel invalidations back: remote.py.)"""
        assert self.transport is not None
        if args.get("follow") is not None:  # following directories moved elsewhere (remote.py)
            self.remote.follow = bool(args["follow"])
        if args.get("invalidate") is not None:  # kernel invalidations held back (remote.py)
            self.remote.hold(not args["invalidate"])
        try:
            return self.transport.set_faults(
                delay=args.get("delay"),
                tamper=None if args.get("tamper") is None else bool(args["tamper"]),
                mute=None if args.get("mute") is None else bool(args["mute"]),
                hold=args.get("hold"),
            )
        except ValueError as exc:
            raise RemoteError(f"faults: {exc}") from None

    async def _crl(self, args: Message) -> Message:
        """Offer a revocation list (``{"crl": bytes}``, PEM or DER; the CA must have signed
        it, and it must be newer); returns whether it was adopted and the number held."""
        assert self.revocations is not None
        data = args.get("crl")
        adopted = isinstance(data, bytes) and self.revocations.offer(data, source="the CLI")
        return {"adopted": adopted, "number": self.revocations.number}

    async def _sync(self, args: Message) -> Message:
        assert self.log_replicator is not None
        return {"gained": await self.log_replicator.sync_all()}

    async def _fold(self, args: Message) -> Message:
        """Fold what every member holds now (instead of at the next ``fold_interval``)."""
        assert self.log_replicator is not None
        return {"folded": self.log_replicator.fold.maybe_fold(),
                "fold_ts": self.fs.namespace.fold_ts}

    async def _gc(self, args: Message) -> Message:
        """Delete chunk files no file references that are older than ``grace`` seconds
        (default: the usual grace period)."""
        from dhtfs.runtime.service import collect_garbage

        grace = args.get("grace", self.fs.config.gc_grace)
        if not isinstance(grace, int | float) or grace < 0:
            raise RemoteError("gc: 'grace' must be a non-negative number of seconds")
        return {"removed": collect_garbage(self.fs, float(grace))}

    async def _digest(self, args: Message) -> Message:
        """A hash of the whole visible tree (names, kinds, modes, sizes, contents' chunk
        lists, object IDs): equal on two nodes exactly when they show the same tree."""
        self.fs.namespace.write_back()
        tree = self.fs.namespace.tree()
        return {"digest": hashlib.sha256(repr(_canonical(tree)).encode()).hexdigest()}


def _canonical(tree: dict[bytes, Any]) -> list[Any]:
    return [
        (name, _canonical(v) if isinstance(v, dict) else v) for name, v in sorted(tree.items())
    ]

