"""One node's assembly, mount or headless: transport, Kademlia node, revocation, disk cache,
op-log replicator, collection, repair, discovery, metrics, control socket, joining.

Built in dependency order by ``open_network`` (listen, node, revocation) and ``load_cache``
(the disk cache's index, in a worker thread), then ``NodeAssembly`` takes them with the
role's own parts (a mount's block replicator and namespace log, a headless node's log store)
in its constructor. A mount (``dhtfs.runtime.mountnode``) and a headless node
(``dhtfs.runtime.headless``) are each one subclass: they add control methods, status and
metrics keys, and tasks; everything else, the rejoin rule (``dhtfs.runtime.joining``) and the
signal handling included, is here once.

Every object gets its collaborators in its constructor, none is patched afterwards. Where two
need each other, a small object made before both stands between them: ``Inbound`` (the
transport serves before the node that answers its requests exists: the node is built on its
local contact) and ``CacheNotices`` (the node and the block replicator tell the disk cache,
whose index is loaded after them and asks them what is held for the swarm).

Start-up (``start``), each step under a deadline, so a node never hangs on the network: the
control socket, Kademlia maintenance, the cache's eviction, metrics, collection, the op-log
replicator, discovery, a join through ``bootstrap=`` and remembered addresses (retried in the
background), then block replication (after the join: a backlog placed on an empty routing
table would count one copy as enough) and repair.
"""

from __future__ import annotations

import errno
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from dhtfs.base.config import Config, parse_metrics_address
from dhtfs.base.errors import ConfigError, RemoteError
from dhtfs.base.periodic import Doorbell
from dhtfs.blocks.node import BlockNode
from dhtfs.blocks.reclaim import LocalRefs, Reclaimer
from dhtfs.blocks.repair import Repairer
from dhtfs.blocks.replication import BlockReplicator
from dhtfs.dht.discovery import Discovery
from dhtfs.dht.revocations import start_revocation
from dhtfs.net.control import CONTROL_SOCKET_NAME, ControlServer
from dhtfs.net.network import Contact, Message, RequestHandler
from dhtfs.net.transport import Transport
from dhtfs.oplog.membership import MEMBERS_FILE, Membership
from dhtfs.oplog.membership import control_methods as membership_methods
from dhtfs.oplog.replicator import METHODS as LOG_METHODS
from dhtfs.oplog.replicator import LogReplicator, LogStore, Signatures
from dhtfs.runtime.joining import Joiner, parse_address
from dhtfs.runtime.metrics import Metrics
from dhtfs.store.blockstore import BlockStore
from dhtfs.store.diskcache import DiskCache, file_size
from dhtfs.trust import pki
from dhtfs.trust.revocation import RevocationList

log = logging.getLogger(__name__)

DISCOVERY_SETTLE = 2.0  # a member with no reachable address waits this long for LAN peers
SHUTDOWN_PUSH_DEADLINE = 5.0
SHUTDOWN_REPLICATION_DEADLINE = 60.0

ControlMethod = Callable[[Message], Awaitable[Message]]


class Inbound:
    """The transport's request handler, made before the node that answers the requests: the
    transport serves first (the node is built on its local contact), with ``handle``; once
    the node is built, ``open_network`` names its handler (``answer_with``, once). Until then
    a request gets a "node is not ready" ERROR answer, as a transport without a handler
    gives."""

    def __init__(self) -> None:
        self._answer: RequestHandler | None = None

    def answer_with(self, handler: RequestHandler) -> None:
        self._answer = handler

    async def handle(self, caller: Contact, method: str, args: Message) -> Message:
        answer = self._answer
        if answer is None:
            raise RemoteError("node is not ready")
        return await answer(caller, method, args)


class CacheNotices:
    """What the block node and a mount's block replicator tell the disk cache, made before
    all three: the cache is loaded last (its index asks the node which blocks it is
    responsible for, and the replicator which are pending), so the node and the replicator are
    given these methods, and ``load_cache`` names the cache once loaded (``deliver_to``).
    Notices before that are dropped: the cache's index, read from disk, is what it knows."""

    def __init__(self) -> None:
        self._cache: DiskCache | None = None

    def deliver_to(self, cache: DiskCache) -> None:
        self._cache = cache

    def cached(self, block_id: bytes, size: int) -> None:
        """A block newly cached here (``BlockNode.on_cached``)."""
        if self._cache is not None:
            self._cache.add(block_id, size)

    def served(self, block_id: bytes) -> None:
        """A block served from here (``BlockNode.on_served``): the most recently used."""
        if self._cache is not None:
            self._cache.touch(block_id)

    def placed(self, block_id: bytes) -> None:
        """A block pushed here (``BlockNode.on_placed``): now one of its R holders, not a
        cached copy."""
        if self._cache is not None:
            self._cache.forget(block_id)

    def placed_elsewhere(self, block_id: bytes) -> None:
        """A block written here whose R copies are all on other nodes
        (``BlockReplicator.on_placed_elsewhere``): the copy here is a cached one."""
        if self._cache is not None:
            self._cache.add(block_id)


async def listen(nursery: trio.Nursery, identity: pki.Identity, configured: str,
                 default: str, *, handler: RequestHandler, client: bool) -> Transport:
    """A transport serving in ``nursery`` on ``configured`` (else ``default``; a taken
    default port falls back to any free one, with a warning), answering with ``handler``;
    ``client``: a client-only node (``dhtfs.net.transport``)."""
    text = configured or default
    host, port = parse_address(text, "listen")
    try:
        transport = Transport(identity, host, port, handler=handler, client=client)
        await nursery.start(transport.serve)
        return transport
    except OSError as exc:
        if configured or exc.errno != errno.EADDRINUSE:
            raise ConfigError(f"cannot listen on {text}: {exc.strerror or exc}") from None
    log.warning("port %d is taken; listening on a free port instead (see dhtfs status)", port)
    transport = Transport(identity, host, 0, handler=handler, client=client)
    await nursery.start(transport.serve)
    return transport


async def open_network(
    nursery: trio.Nursery, config: Config, identity: pki.Identity, store: BlockStore,
    default_listen: str, notices: CacheNotices, *, metrics: Metrics | None,
    client: bool = False,
) -> tuple[Transport, BlockNode, RevocationList]:
    """Listen, the Kademlia node over ``store`` (telling ``notices`` and ``metrics``), and the
    revocation list (its tasks and the transport's in ``nursery``)."""
    inbound = Inbound()
    transport = await listen(nursery, identity, config.listen, default_listen,
                             handler=inbound.handle, client=client)
    node = BlockNode(
        transport, store, replicas=config.replicas, fetch_timeout=config.read_deadline,
        client=client, on_cached=notices.cached, on_served=notices.served,
        on_placed=notices.placed,
        on_rpc=metrics.rpc if metrics is not None else None,
        on_lookup=metrics.lookup if metrics is not None else None,
    )
    inbound.answer_with(node.handle)
    revocations = start_revocation(nursery, node, transport, identity.ca_cert,
                                   config.state_dir, config.crl)
    return transport, node, revocations


async def load_cache(config: Config, store: BlockStore, node: BlockNode,
                     pending: Callable[[bytes], bool], notices: CacheNotices) -> DiskCache:
    """The disk cache of copies held for reading (its index stats every cached block: in a
    worker thread); from then on ``notices`` (given to ``node``) reach it: what the node
    caches, serves and now holds for the swarm."""
    cache = await trio.to_thread.run_sync(lambda: DiskCache(
        config.state_dir, config.cache_disk, size_of=file_size(store.path_of),
        remove=store.remove, responsible=node.responsible_for, pending=pending,
    ))
    notices.deliver_to(cache)
    return cache


async def stop_on_signal(stop: Callable[[], None], why: str, signals: tuple[int, ...],
                         task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Call ``stop()`` at the first of ``signals`` (logged with ``why``)."""
    with trio.open_signal_receiver(*signals) as received:
        task_status.started()
        async for signum in received:
            log.warning("received %s: %s", signal.Signals(signum).name, why)
            stop()
            return


class NodeAssembly:
    """One node's network side (see the module docstring). ``control_methods``, ``status``
    and ``metrics_snapshot`` are what a role extends."""

    SETTLE_ON_LAN = False
    """Whether a member of a private swarm that found no peer waits ``DISCOVERY_SETTLE``
    seconds for LAN peers before going on (a mount: it would mount an empty tree)."""

    def __init__(
        self,
        config: Config,
        identity: pki.Identity,
        store: BlockStore,
        transport: Transport,
        node: BlockNode,
        cache: DiskCache,
        revocations: RevocationList,
        log_store: LogStore,
        joiner: Joiner,
        *,
        metrics: Metrics | None,
        discover: bool,
        fold_alone: bool = True,
        block_replicator: BlockReplicator | None = None,
        local_refs: LocalRefs | None = None,
        log_written: Doorbell | None = None,
    ) -> None:
        self.config = config
        self.identity = identity
        self.store = store
        self.transport = transport
        self.node = node
        self.cache = cache
        self.revocations = revocations
        self.log_store = log_store
        self.joiner = joiner
        self.metrics = metrics
        self.block_replicator = block_replicator
        members = Membership(identity.node_id, config.state_dir / MEMBERS_FILE,
                             member_timeout=config.member_timeout,
                             peer_cert=transport.peer_cert)
        self.log_replicator = LogReplicator(
            node, log_store, Signatures(identity), fold_interval=config.fold_interval,
            fold_alone=fold_alone, membership=members,
            revoked=lambda n: (der := log_store.cert(n) or members.certs.get(n)) is not None
            and revocations.is_revoked(der),
            wake=log_written,  # a mount's tree rings it after each op written here
        )
        for method in LOG_METHODS:
            node.services[method] = self.log_replicator.handle
        pending = block_replicator.is_pending if block_replicator else lambda _cid: False
        # A mount answers for its namespace; a headless node asks a caught-up mount.
        self.reclaimer = (
            Reclaimer(node, config.gc_grace, local_refs=local_refs, pending=pending,
                      on_removed=cache.forget) if local_refs is not None
            else Reclaimer(node, config.gc_grace, log_vector=log_store.vector,
                           on_removed=cache.forget))
        # A client holds no copies for the swarm: nothing to repair.
        self.repairer = (Repairer(node, interval=config.repair_interval) if config.storage
                         else None)
        self.discovery = (Discovery.for_node(node, identity, transport.host) if discover
                          else None)

    # -- running -------------------------------------------------------------------------------

    def control_methods(self) -> dict[str, ControlMethod]:
        """The control socket's methods beside the node's own (``dhtfs.net.control``)."""
        return {"status": self.status, **membership_methods(self.log_replicator)}

    async def start(self, nursery: trio.Nursery) -> None:
        """Serve, join (bounded) and start every task in ``nursery`` (module docstring)."""
        config, node = self.config, self.node
        control = ControlServer([node], extra=self.control_methods())
        await nursery.start(control.serve, config.state_dir / CONTROL_SOCKET_NAME)
        nursery.start_soon(node.run_maintenance)
        nursery.start_soon(self.cache.run)
        if self.metrics is not None:
            nursery.start_soon(self.metrics.serve, self.metrics_snapshot,
                               *parse_metrics_address(config.metrics))
        nursery.start_soon(self.reclaimer.run)
        nursery.start_soon(self.log_replicator.run)
        if self.discovery is not None:  # LAN peers of the swarm by mDNS
            nursery.start_soon(self.discovery.run)
        await self.joiner.join()
        if self.SETTLE_ON_LAN and self.discovery and config.ca is not None \
                and not len(node.routing):
            await self.discovery.settle(DISCOVERY_SETTLE)  # start with the tree, if on the LAN
        nursery.start_soon(self.joiner.keep_joined)
        if self.block_replicator is not None:  # after the join (see the module docstring)
            nursery.start_soon(self.block_replicator.run)
        if self.repairer is not None:
            nursery.start_soon(self.repairer.run)

    async def drain_replication(self) -> None:
        """Wait (bounded, progress in the log) for the blocks still to be replicated."""
        if self.block_replicator is None:
            return
        if len(self.node.routing):
            await self.block_replicator.drain(SHUTDOWN_REPLICATION_DEADLINE)
        self.block_replicator.close()

    async def push_remaining(self) -> None:
        """Hand the last ops to peers before the process goes (bounded)."""
        if not len(self.node.routing):
            return
        self.joiner.remember_peers()
        with trio.move_on_after(SHUTDOWN_PUSH_DEADLINE):
            await self.log_replicator.push_pending()

    # -- what the node reports -----------------------------------------------------------------

    async def status(self, args: Message) -> Message:
        """``dhtfs status``: what every node reports."""
        c = self.node.contact
        store = self.store
        metrics = self.metrics
        return {
            "node_id": c.node_id, "listen": f"{c.host}:{c.port}",
            "peers": len(self.node.routing), **self.transport.addresses(),
            "chunks": await trio.to_thread.run_sync(lambda: sum(1 for _ in store.ids())),
            "repair": {"passes": self.repairer.passes, "pushed": self.repairer.pushed}
            if self.repairer else {},
            "cache": self.cache.status(),
            "collection": self.reclaimer.status(),
            "metrics": "{}:{}".format(*metrics.address) if metrics and metrics.address else "",
            "discovery": self.discovery.status() if self.discovery else {},
        }

    def metrics_snapshot(self) -> dict[str, Any]:
        """The counters ``dhtfs.runtime.metrics`` reads at each scrape (on the trio thread;
        cheap: nothing here walks the store)."""
        cache, transport = self.cache, self.transport
        return {
            "blocks": {"cached": cache.added, "evicted": cache.evicted,
                       "repaired": self.repairer.pushed if self.repairer else 0,
                       "reclaimed": self.reclaimer.reclaimed},
            "network": {"received": getattr(transport, "bytes_received", 0),
                        "sent": getattr(transport, "bytes_sent", 0)},
            "cache_bytes": cache.bytes,
            "peers": len(self.node.routing),
        }
