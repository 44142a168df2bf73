"""Many real ``BlockNode``s on one ``SimWorld``: spawn, join, kill, replace, and ground truth.

Two ways to fill routing tables:
- ``join``: the real protocol — the node bootstraps from seed contacts (PING, lookup of its own
  ID, refresh of every bucket beyond its nearest neighbour). Used by the tests and for every
  node that joins during churn.
- ``seed_tables`` (an *oracle* shortcut for 10,000-node benchmarks, where real joins would take
  long in one Python process): each node's buckets are filled directly with up to k nodes
  drawn uniformly from that bucket's ID range among live nodes — the table a node would hold
  after joining and refreshing every bucket in a stable network. No RTTs are known afterwards.
  Lookups, RPCs and everything measured after seeding run the real node code.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterable
from typing import Any

import trio

from dhtfs.base.ids import ID_BITS, random_id, to_int
from dhtfs.blocks.node import BlockNode
from dhtfs.net.network import Contact
from dhtfs.sim.network import SimWorld
from dhtfs.sim.store import MemoryStore


class Swarm:
    """Nodes of one simulated swarm. ``nursery`` hosts their maintenance tasks, each in its own
    cancel scope so that ``kill`` stops exactly that node's tasks."""

    def __init__(
        self,
        world: SimWorld,
        nursery: trio.Nursery,
        *,
        seed: int = 0,
        maintenance: bool = False,
        **node_kwargs: Any,
    ) -> None:
        self.world = world
        self.nursery = nursery
        self.rng = random.Random(seed)
        self.maintenance = maintenance
        self.node_kwargs = {"offload_threshold": None, "cache_when_idle": False, **node_kwargs}
        self.nodes: dict[bytes, BlockNode] = {}     # alive nodes
        self._scopes: dict[bytes, trio.CancelScope] = {}

    # -- membership ----------------------------------------------------------------------------

    async def spawn(
        self, node_id: bytes | None = None, *, node_cls: type[BlockNode] = BlockNode
    ) -> BlockNode:
        """A new node, attached to the world (and its maintenance started if enabled)."""
        nid = node_id if node_id is not None else random_id(self.rng)
        ep = self.world.endpoint(nid)
        node = node_cls(ep, MemoryStore(), rng=random.Random(self.rng.getrandbits(64)),
                        **self.node_kwargs)
        self.world.attach(ep, node.handle)
        self.nodes[nid] = node
        if self.maintenance:
            self._scopes[nid] = await self.nursery.start(self._maintain, node)
        return node

    async def _maintain(self, node: BlockNode, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await node.run_maintenance()

    def kill(self, node_id: bytes) -> None:
        """The node dies silently: its endpoint goes away and its tasks are cancelled."""
        self.world.kill(node_id)
        self.nodes.pop(node_id, None)
        scope = self._scopes.pop(node_id, None)
        if scope is not None:
            scope.cancel()

    def random_alive(self, count: int = 1, exclude: Iterable[bytes] = ()) -> list[BlockNode]:
        skip = set(exclude)
        pool = [n for nid, n in self.nodes.items() if nid not in skip]
        return self.rng.sample(pool, min(count, len(pool)))

    async def join(self, node: BlockNode, seeds: int = 3) -> int:
        """Bootstrap ``node`` through up to ``seeds`` random live nodes (the real protocol)."""
        others = self.random_alive(seeds, exclude=(node.id,))
        return await node.bootstrap([o.contact for o in others])

    async def grow(self, count: int, seeds: int = 3) -> list[BlockNode]:
        """Add ``count`` nodes one after another, each joining by the real protocol."""
        added = []
        for _ in range(count):
            node = await self.spawn()
            if len(self.nodes) > 1:
                await self.join(node, seeds)
            added.append(node)
        return added

    def seed_tables(self) -> None:
        """Oracle-fill every live node's buckets (see the module docstring)."""
        ids = sorted(self.nodes, key=to_int)
        ints = [to_int(i) for i in ids]
        contacts = [self.nodes[i].contact for i in ids]
        n = len(ints)
        k = next(iter(self.nodes.values())).k if n else 0
        for pos, x in enumerate(ints):
            node = self.nodes[ids[pos]]
            near = min(
                [x ^ ints[p] for p in (pos - 1, pos + 1) if 0 <= p < n], default=0
            )
            lowest = near.bit_length() - 1 if near else ID_BITS
            for i in range(ID_BITS - 1, lowest - 1, -1):
                lo = ((x >> i) ^ 1) << i
                a = bisect.bisect_left(ints, lo)
                b = bisect.bisect_left(ints, lo + (1 << i))
                if a == b:
                    continue
                picks = range(a, b) if b - a <= k else self.rng.sample(range(a, b), k)
                for p in picks:
                    node.routing.add_seed(contacts[p])

    # -- ground truth --------------------------------------------------------------------------

    def true_closest(self, target: bytes, count: int) -> list[Contact]:
        """The ``count`` live nodes XOR-closest to ``target``."""
        t = to_int(target)
        best = sorted(self.nodes, key=lambda nid: to_int(nid) ^ t)[:count]
        return [self.nodes[nid].contact for nid in best]
