"""XOR-distance orderings of node ids, as the simulator tests check lookups against them."""

from __future__ import annotations

from dhtfs.base.ids import to_int
from dhtfs.net.network import Contact


def ids_of(contacts: list[Contact]) -> list[bytes]:
    return [c.node_id for c in contacts]


def xor_sorted(ids: list[bytes], target: bytes) -> list[bytes]:
    t = to_int(target)
    return sorted(ids, key=lambda i: to_int(i) ^ t)
