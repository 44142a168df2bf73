"""Node.handle never fails with anything but RemoteError, whatever the arguments."""

from __future__ import annotations

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from dhtfs.base.errors import RemoteError
from dhtfs.base.ids import sha256_id
from dhtfs.blocks.node import BlockNode
from dhtfs.net import rpc
from dhtfs.net.network import Contact
from dhtfs.sim.network import SimWorld
from dhtfs.sim.store import MemoryStore

ID = st.one_of(st.binary(min_size=32, max_size=32), st.binary(max_size=40))
SCALAR = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=8),
    st.binary(max_size=40), ID,
)
VALUE = st.recursive(SCALAR, lambda v: st.lists(v, max_size=4), max_leaves=10)
ARGS = st.one_of(
    st.dictionaries(
        st.sampled_from(["target", "key", "id", "data", "ttl", "replicas", "x"]), VALUE,
        max_size=4,
    ),
    VALUE,
)


def make_node() -> tuple[BlockNode, Contact]:
    world = SimWorld(seed=1)
    ep = world.endpoint(bytes(range(32)))
    node = BlockNode(ep, MemoryStore(), offload_threshold=None)
    world.attach(ep, node.handle)
    return node, Contact(bytes(32), "sim", 999)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([*sorted(rpc.METHODS), "BOGUS"]), ARGS)
def test_handle_answers_or_raises_remote_error(method: str, args: object) -> None:
    node, caller = make_node()

    async def run() -> None:
        try:
            answer = await node.handle(caller, method, args)  # type: ignore[arg-type]
        except RemoteError:
            return
        assert isinstance(answer, dict)

    trio.run(run)


def test_valid_requests_round_trip() -> None:
    node, caller = make_node()
    data = b"some block"
    cid = sha256_id(data)

    async def run() -> None:
        assert await node.handle(caller, rpc.PUT_BLOCK, {"id": cid, "data": data}) == {
            "stored": True
        }
        assert await node.handle(caller, rpc.PUT_BLOCK, {"id": cid, "data": data}) == {
            "stored": False
        }
        assert await node.handle(caller, rpc.GET_BLOCK, {"id": cid}) == {"data": data}
        other = Contact(bytes([7]) * 32, "h", 5)
        await node.handle(
            caller, rpc.ADD_PROVIDER,
            {"key": cid, "ttl": 60.0, "replicas": [rpc.contact_to_wire(other)]},
        )
        ans = await node.handle(caller, rpc.FIND_PROVIDERS, {"key": cid})
        provs = rpc.ans_contacts(ans, "providers", rpc.FIND_PROVIDERS)
        assert {p.node_id for p in provs} == {node.id, caller.node_id, other.node_id}
        found = rpc.ans_contacts(
            await node.handle(other, rpc.FIND_NODE, {"target": cid}), "contacts", "FIND_NODE"
        )
        assert [c.node_id for c in found] == [caller.node_id]   # the asker is left out
        await trio.sleep(61)
        ans = await node.handle(caller, rpc.FIND_PROVIDERS, {"key": cid})
        provs = rpc.ans_contacts(ans, "providers", rpc.FIND_PROVIDERS)
        assert [p.node_id for p in provs] == [node.id]      # the records expired

    trio.run(run, clock=trio.testing.MockClock(autojump_threshold=0))
