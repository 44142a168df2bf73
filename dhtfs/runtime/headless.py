"""A storage node without a mount: the node assembly (``dhtfs.runtime.assembly``) over an
encrypted block store, with its own op-log store.

``run(config)`` is what ``dhtfs node`` runs. Start-up order (each step fails with a one-line
``DhtfsError`` before anything listens): identity (certificate chains to the CA, key matches),
state directory (0700), master key (+ key check), block store, then in one nursery: listener,
node, the assembly's start (control socket, tasks, the join, bounded and retried as a
mount's), a readiness line. SIGTERM/SIGINT cancel the nursery; ``run`` then returns 0.

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

from dhtfs.base.config import Config
from dhtfs.base.errors import ConfigError
from dhtfs.blocks import verify
from dhtfs.net.control import CONTROL_SOCKET_NAME
from dhtfs.net.network import Message
from dhtfs.oplog.logstore import SqliteLogStore
from dhtfs.runtime.assembly import (
    CacheNotices,
    ControlMethod,
    NodeAssembly,
    load_cache,
    open_network,
    stop_on_signal,
)
from dhtfs.runtime.joining import Joiner, PeerMemory, seed_addresses
from dhtfs.runtime.metrics import Metrics
from dhtfs.store.blockstore import BlockStore
from dhtfs.store.statedir import open_block_store, prepare_state_dir
from dhtfs.trust import pki
from dhtfs.trust.identity import configured_identity

log = logging.getLogger(__name__)

LOG_DB_NAME = "oplog.db"
DEFAULT_LISTEN = "0.0.0.0:0"


def load_identity(config: Config) -> pki.Identity:
    """A headless node has no private swarm: it needs the three identity keys."""
    identity = configured_identity(config)
    if identity is None:
        raise ConfigError("node needs ca, cert, cert_key (see: dhtfs ca init / ca issue)")
    return identity


def open_store(config: Config) -> BlockStore:
    prepare_state_dir(config.state_dir)
    return open_block_store(config.state_dir, config.key)


class HeadlessNode(NodeAssembly):
    """A node without a mount: its op log in its own store (``LOG_DB_NAME``), so a returning
    mount can catch up from it when no other mount is up; no namespace, so collection asks a
    caught-up mount (``dhtfs.blocks.reclaim``) and ``fsck`` checks blocks only."""

    async def _oplog(self, args: Message) -> Message:
        log_store = self.log_store
        assert isinstance(log_store, SqliteLogStore)
        return {
            "vector": [[o, s] for o, s in log_store.vector().items()],
            "trimmed": [[o, s] for o, s in log_store.folded().items()],
            "entries": log_store.db.execute("SELECT count(*) FROM entries").fetchone()[0],
        }

    async def _fsck(self, args: Message) -> Message:  # blocks only: no namespace here
        if args.get("namespace"):
            return {"objects": 0, "links": 0, "extents": 0, "referenced": 0, "held": 0,
                    "problems": [], "headless": True}
        return await verify.control(self.node, self.store, args)

    def control_methods(self) -> dict[str, ControlMethod]:
        return {**super().control_methods(), "oplog": self._oplog, "fsck": self._fsck}


async def serve_node(
    config: Config,
    *,
    announce: Callable[[str], None] | None = None,
    handle_signals: bool = True,
) -> int:
    """Run the node until SIGTERM/SIGINT (or cancellation). Returns the exit status."""
    if config.http:
        raise ConfigError(f"http={config.http}: a headless node holds no namespace to serve "
                          "over HTTP yet; use it on a mount")
    identity = load_identity(config)
    store = open_store(config)
    seeds = seed_addresses(config.bootstrap)
    async with trio.open_nursery() as nursery:
        if handle_signals:
            nursery.start_soon(stop_on_signal, nursery.cancel_scope.cancel, "stopping",
                               (signal.SIGTERM, signal.SIGINT))
        metrics = Metrics() if config.metrics else None
        notices = CacheNotices()
        transport, node, revocations = await open_network(
            nursery, config, identity, store, DEFAULT_LISTEN, notices, metrics=metrics)
        cache = await load_cache(config, store, node, lambda _cid: False, notices)
        headless = HeadlessNode(
            config, identity, store, transport, node, cache, revocations,
            SqliteLogStore(config.state_dir / LOG_DB_NAME), Joiner(node, seeds, PeerMemory()),
            metrics=metrics, discover=config.discovery is not False,
        )
        await headless.start(nursery)
        local = transport.local
        line = f"ready node_id={identity.node_id.hex()} listen={local.host}:{local.port} " \
               f"control={config.state_dir / CONTROL_SOCKET_NAME}"
        log.info("%s", line)
        (announce or _print)(line)
    return 0


def _print(line: str) -> None:
    print(line, flush=True)


def run(config: Config) -> int:
    """Blocking entry for ``dhtfs node``."""
    status = trio.run(serve_node, config)
    sys.stdout.flush()
    return status


__all__ = ["HeadlessNode", "run", "serve_node"]
