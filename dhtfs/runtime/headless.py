"""A storage node without a mount: transport + Kademlia node + encrypted chunk store.

``run(config)`` is what ``dhtfs node`` runs. Start-up order (each step fails with a one-line
``DhtfsError`` before anything listens): identity (certificate chains to the CA, key matches),
state directory (0700), master key (+ key check), chunk store, then in one nursery: listener,
node, control socket, a readiness line, bootstrap (retried while the table is empty),
maintenance, the disk cache's eviction, repair, the op log. SIGTERM/SIGINT cancel the
nursery; ``run`` then returns 0.

Readiness: once listening and bootstrapped, one line on stdout (flushed)::

    ready node_id=<64 hex> listen=<host>:<port> control=<path>

``listen`` is the real port (``--listen HOST:0`` binds an ephemeral one).
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable

import trio

from dhtfs.base.config import Config, parse_metrics_address
from dhtfs.base.errors import ConfigError
from dhtfs.blocks import verify
from dhtfs.blocks.node import BlockNode
from dhtfs.blocks.reclaim import Reclaimer
from dhtfs.blocks.repair import Repairer
from dhtfs.dht.discovery import Discovery
from dhtfs.dht.revocations import start_revocation
from dhtfs.net.control import CONTROL_SOCKET_NAME, ControlServer
from dhtfs.net.transport import Transport
from dhtfs.oplog.logstore import SqliteLogStore
from dhtfs.oplog.membership import MEMBERS_FILE, Membership
from dhtfs.oplog.membership import control_methods as membership_methods
from dhtfs.oplog.replicator import METHODS as LOG_METHODS
from dhtfs.oplog.replicator import LogReplicator, Signatures
from dhtfs.store.blockstore import BlockStore
from dhtfs.store.diskcache import DiskCache, file_size
from dhtfs.store.statedir import open_block_store, prepare_state_dir
from dhtfs.trust import pki
from dhtfs.trust.identity import configured_identity

log = logging.getLogger(__name__)

JOIN_RETRY_SECONDS = 5.0
LOG_DB_NAME = "oplog.db"


def parse_address(text: str, what: str, *, default_port: int | None = None) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) → (host, port); ConfigError naming ``what``."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        if default_port is None:
            raise ConfigError(f"{what}={text!r}: expected HOST:PORT")
        host, port_text = text, str(default_port)
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"{what}={text!r}: port must be a number") from None
    if not 0 <= port < 65536 or not host:
        raise ConfigError(f"{what}={text!r}: expected HOST:PORT with a port below 65536")
    return host, port


def load_identity(config: Config) -> pki.Identity:
    """A headless node has no private swarm: it needs the three identity keys."""
    identity = configured_identity(config)
    if identity is None:
        raise ConfigError("node needs ca, cert, cert_key (see: dhtfs ca init / ca issue)")
    return identity


def open_store(config: Config) -> BlockStore:
    prepare_state_dir(config.state_dir)
    return open_block_store(config.state_dir, config.key)


async def keep_joined(node: BlockNode, seeds: list[tuple[str, int]]) -> None:
    """Bootstrap again while the routing table is empty (e.g. seeds started after us)."""
    while True:
        await trio.sleep(JOIN_RETRY_SECONDS)
        if len(node.routing) == 0:
            await node.join_addresses(seeds)


async def serve_node(
    config: Config,
    *,
    announce: Callable[[str], None] | None = None,
    handle_signals: bool = True,
) -> int:
    """Run the node until SIGTERM/SIGINT (or cancellation). Returns the exit status."""
    identity = load_identity(config)
    store = open_store(config)
    host, port = parse_address(config.listen or "0.0.0.0:0", "listen")
    seeds = [parse_address(b, "bootstrap") for b in config.bootstrap]
    transport = Transport(identity, host, port)
    async with trio.open_nursery() as nursery:
        if handle_signals:
            nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
        local = await nursery.start(transport.serve)
        node = BlockNode(transport, store, replicas=config.replicas)
        transport.handler = node.handle
        revocations = start_revocation(nursery, node, transport, identity.ca_cert,
                                       config.state_dir, config.crl)
        cache = await trio.to_thread.run_sync(lambda: DiskCache(  # stats every cached block
            config.state_dir, config.cache_disk, size_of=file_size(store.path_of),
            remove=store.remove, responsible=node.responsible_for, pending=lambda _cid: False))
        node.on_cached = cache.add
        node.on_served = cache.touch
        node.on_placed = cache.forget
        repairer = Repairer(node, interval=config.repair_interval)
        # The replicated op log too, so a returning mount can catch up from this node when
        # no other mount is up.
        log_store = SqliteLogStore(config.state_dir / LOG_DB_NAME)
        members = Membership(identity.node_id, config.state_dir / MEMBERS_FILE,
                             member_timeout=config.member_timeout,
                             peer_cert=transport.peer_cert)
        replicator = LogReplicator(
            node, log_store, Signatures(identity), fold_interval=config.fold_interval,
            membership=members,
            revoked=lambda n: (der := log_store.cert(n) or members.certs.get(n)) is not None
            and revocations.is_revoked(der),
        )
        for method in LOG_METHODS:
            node.services[method] = replicator.handle
        # No namespace here: collection asks a caught-up mount (see dhtfs.blocks.reclaim).
        reclaimer = Reclaimer(node, config.gc_grace, log_vector=log_store.vector,
                              on_removed=cache.forget)
        control_path = config.state_dir / CONTROL_SOCKET_NAME
        discovery = (Discovery.for_node(node, identity, host)
                     if config.discovery is not False else None)

        async def oplog(args: dict) -> dict:
            return {
                "vector": [[o, s] for o, s in log_store.vector().items()],
                "trimmed": [[o, s] for o, s in log_store.folded().items()],
                "entries": log_store.db.execute("SELECT count(*) FROM entries").fetchone()[0],
            }

        async def status(args: dict) -> dict:
            c = node.contact
            chunks = await trio.to_thread.run_sync(lambda: sum(1 for _ in store.ids()))
            return {"node_id": c.node_id, "listen": f"{c.host}:{c.port}", "chunks": chunks,
                    **transport.addresses(),
                    "peers": len(node.routing), "cache": cache.status(),
                    "collection": reclaimer.status(),
                    "repair": {"passes": repairer.passes, "pushed": repairer.pushed},
                    "discovery": discovery.status() if discovery else {},
                    "metrics": "{}:{}".format(*metrics.address)
                    if metrics and metrics.address else ""}

        async def fsck(args: dict) -> dict:  # blocks only: a headless node has no namespace
            if args.get("namespace"):
                return {"objects": 0, "links": 0, "extents": 0, "referenced": 0, "held": 0,
                        "problems": [], "headless": True}
            return await verify.control(node, store, args)

        metrics = None
        if config.metrics:  # Prometheus (dhtfs.runtime.metrics): no FUSE requests here
            from dhtfs.runtime.metrics import Metrics

            def snapshot() -> dict:
                return {
                    "blocks": {"cached": cache.added, "evicted": cache.evicted,
                               "repaired": repairer.pushed, "reclaimed": reclaimer.reclaimed},
                    "network": {"received": transport.bytes_received,
                                "sent": transport.bytes_sent},
                    "cache_bytes": cache.bytes, "peers": len(node.routing),
                }

            metrics = Metrics(snapshot)
            node.on_rpc, node.on_lookup = metrics.rpc, metrics.lookup
            nursery.start_soon(metrics.serve, *parse_metrics_address(config.metrics))

        extra = {"oplog": oplog, "status": status, "fsck": fsck,
                 **membership_methods(replicator)}
        await nursery.start(ControlServer([node], extra=extra).serve, control_path)
        if seeds:
            size = await node.join_addresses(seeds)
            log.info("bootstrapped: %d contacts", size)
            nursery.start_soon(keep_joined, node, seeds)
        if discovery is not None:  # LAN peers of the swarm by mDNS
            nursery.start_soon(discovery.run)
        nursery.start_soon(node.run_maintenance)
        nursery.start_soon(cache.run)
        nursery.start_soon(repairer.run)
        nursery.start_soon(reclaimer.run)
        nursery.start_soon(replicator.run)
        line = f"ready node_id={identity.node_id.hex()} listen={local.host}:{local.port} " \
               f"control={control_path}"
        log.info("%s", line)
        (announce or _print)(line)
    return 0


def _print(line: str) -> None:
    print(line, flush=True)


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received %s, stopping", signal.Signals(signum).name)
            scope.cancel()
            return


def run(config: Config) -> int:
    """Blocking entry for ``dhtfs node``."""
    status = trio.run(serve_node, config)
    sys.stdout.flush()
    return status


__all__ = ["parse_address", "run", "serve_node"]
