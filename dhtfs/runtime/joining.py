"""Joining the swarm and staying joined: the one rejoin rule of mounts and headless nodes.

Addresses come as ``HOST:PORT`` (``[v6]:PORT`` too); a ``bootstrap=`` address without a port
takes ``DEFAULT_PORT`` (mounts and headless nodes alike), a ``listen=`` address needs one.

Invariants:
- the configured ``bootstrap=`` addresses are tried first (their failures are warnings), then
  the ones remembered from earlier runs (``PeerMemory``: they may be long gone, so quietly);
- a join at start-up takes at most ``JOIN_DEADLINE`` seconds: a node never hangs on the
  network; it goes on without peers and retries in the background;
- every ``JOIN_RETRY_SECONDS`` the node joins again whenever its routing table lost peers heard
  from lately (all of them, or some: after a partition heals, peers that dropped this node
  would not call it back), and it remembers its peers every ``PEER_CACHE_INTERVAL`` (at most
  ``PEER_CACHE`` of them), so it rejoins after a restart even where no bootstrap address is
  configured.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable

import trio

from dhtfs.base.config import DEFAULT_PORT
from dhtfs.base.errors import ConfigError
from dhtfs.blocks.replication import LIVE_SECONDS
from dhtfs.dht.node import Node

log = logging.getLogger(__name__)

JOIN_DEADLINE = 15.0
JOIN_RETRY_SECONDS = 5.0
PEER_CACHE = 64
PEER_CACHE_INTERVAL = 60.0

Address = tuple[str, int]


def parse_address(text: str, what: str, *, default_port: int | None = None) -> Address:
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


def seed_addresses(bootstrap: list[str]) -> list[Address]:
    """The configured ``bootstrap=`` addresses (a missing port is ``DEFAULT_PORT``)."""
    return [parse_address(b, "bootstrap", default_port=DEFAULT_PORT) for b in bootstrap]


class PeerMemory:
    """Where a node keeps the addresses of its peers between runs: nowhere (a headless node:
    its seeds are configured). A mount keeps them in its namespace (``NamespacePeers``)."""

    def load(self) -> set[Address]:
        return set()

    def save(self, peers: list[Address]) -> None:
        pass


class NamespacePeers(PeerMemory):
    """A mount's peers, in its namespace's ``meta`` key ``peers`` (JSON ``[[host, port]]``)."""

    def __init__(self, meta_get: Callable[[str], bytes | None],
                 meta_set: Callable[[str, bytes], None]) -> None:
        self._get = meta_get
        self._set = meta_set

    def load(self) -> set[Address]:
        raw = self._get("peers")
        try:
            return {(str(h), int(p)) for h, p in json.loads(raw)} if raw else set()
        except (ValueError, TypeError):
            return set()

    def save(self, peers: list[Address]) -> None:
        self._set("peers", json.dumps(peers).encode())


class Joiner:
    """Joins ``node`` through the seeds and remembered peers, and keeps it joined (see the
    module docstring)."""

    def __init__(self, node: Node, seeds: list[Address], memory: PeerMemory) -> None:
        self.node = node
        self.seeds = seeds
        self.memory = memory
        self.known = memory.load()

    def remembered(self, own: Address) -> int:
        """How many peers other than ``own`` this node knows before joining: its seeds and
        the peers remembered from its last run (``BlockReplicator.remembered``)."""
        return len((set(self.seeds) | self.known) - {own})

    def candidates(self) -> list[Address]:
        """The seeds, then the remembered peers (each once)."""
        return list(dict.fromkeys([*self.seeds, *sorted(self.known)]))

    async def join(self) -> None:
        """One join at start-up, at most ``JOIN_DEADLINE`` seconds (a warning if no seed
        answered: the node goes on, ``keep_joined`` retries)."""
        node = self.node
        if not self.candidates():
            return
        with trio.move_on_after(JOIN_DEADLINE) as scope:
            if self.seeds:
                await node.join_addresses(self.seeds)
            if not len(node.routing) and self.known:
                await node.join_addresses(sorted(self.known), quiet=True)
            log.info("joined the swarm: %d contacts", len(node.routing))
        if self.seeds and (scope.cancelled_caught or len(node.routing) == 0):
            log.warning("could not join through any bootstrap address (see above) "
                        "within %.0fs; going on anyway, retrying in the background",
                        JOIN_DEADLINE)

    def remember_peers(self) -> None:
        """Keep the addresses of the peers known now for the next run (``PEER_CACHE`` at
        most). A full disk makes it a warning, tried again next time: never fatal."""
        self.known.update(c.address for c in self.node.routing.contacts())
        if len(self.known) > PEER_CACHE:
            self.known = set(sorted(self.known)[:PEER_CACHE])
        try:
            self.memory.save(sorted(self.known))
        except (sqlite3.Error, OSError) as exc:
            log.warning("could not remember peer addresses (%s); tried again in %gs",
                        exc, PEER_CACHE_INTERVAL)

    async def keep_joined(self) -> None:
        """Join again whenever the routing table lost peers heard from lately; remember
        peers every ``PEER_CACHE_INTERVAL``. Until cancelled."""
        node = self.node
        last_saved = trio.current_time()
        while True:
            await trio.sleep(JOIN_RETRY_SECONDS)
            degraded = len(node.routing) < node.recent_peers(LIVE_SECONDS) or not len(node.routing)
            if degraded and (seeds := self.candidates()):
                await node.join_addresses(seeds, quiet=True)
            if trio.current_time() - last_saved >= PEER_CACHE_INTERVAL:
                last_saved = trio.current_time()
                self.remember_peers()
