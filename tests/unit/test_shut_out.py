"""A peer shut out of the swarm (its certificate revoked) stays out of routing: a request or
an answer already under way when the revocation list arrived does not bring it back."""

from __future__ import annotations

import trio

from dhtfs.blocks.node import BlockNode
from dhtfs.net import rpc
from dhtfs.net.network import Contact
from dhtfs.sim.network import SimWorld
from dhtfs.sim.store import MemoryStore


def make_node() -> BlockNode:
    world = SimWorld(seed=1)
    ep = world.endpoint(bytes(range(32)))
    node = BlockNode(ep, MemoryStore(), offload_threshold=None)
    world.attach(ep, node.handle)
    return node


def test_a_request_from_a_shut_out_peer_does_not_bring_it_back() -> None:
    node = make_node()
    revoked, member = Contact(b"\x01" * 32, "sim", 7), Contact(b"\x02" * 32, "sim", 7)

    async def run() -> None:
        await node.handle(revoked, rpc.PING, {})
        await node.handle(member, rpc.PING, {})
        assert revoked.node_id in node.routing and member.node_id in node.routing
        node.shut_out_peer(revoked.node_id)         # what adopting a revocation list does
        await node.handle(revoked, rpc.PING, {})    # it was under way when the list came
        await node.handle(member, rpc.PING, {})
        assert revoked.node_id not in node.routing
        assert member.node_id in node.routing
        assert revoked.node_id not in node.seen_at

    trio.run(run)
