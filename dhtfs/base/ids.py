"""256-bit identifiers and the XOR metric (Kademlia paper, section 2.1).

Node IDs and block IDs live in one 256-bit key space. ``distance(a, b) = a XOR b`` read as an
unsigned big-endian integer. It is a metric: ``d(a, a) = 0``, ``d(a, b) > 0`` for ``a != b``,
symmetric, and satisfies the triangle inequality (``a^b ^ b^c = a^c`` and ``x ^ y <= x + y``).
It is also *unidirectional*: for any ``a`` and distance ``Δ`` there is exactly one ``b`` with
``d(a, b) = Δ``, which is why lookups for one key from any start converge on the same nodes.

Bucket index (section 2.2): a contact at distance ``d`` from us falls in bucket
``i = d.bit_length() - 1``, i.e. ``2**i <= d < 2**(i+1)``; bucket 255 covers the half of the
space that differs from us in the first bit, bucket 0 the single ID differing only in the last.
"""

from __future__ import annotations

import hashlib
import random

ID_BITS = 256
ID_BYTES = ID_BITS // 8


def to_int(node_id: bytes) -> int:
    """The ID as an unsigned big-endian integer."""
    return int.from_bytes(node_id, "big")


def from_int(value: int) -> bytes:
    """The 32-byte big-endian encoding of ``value`` (0 <= value < 2**256)."""
    return value.to_bytes(ID_BYTES, "big")


def distance(a: bytes, b: bytes) -> int:
    """XOR distance between two IDs, as an integer."""
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


def bucket_index(own: bytes, other: bytes) -> int:
    """Index of the k-bucket of ``own``'s table that ``other`` belongs in (0..255).

    Raises ``ValueError`` when ``other == own``: a node never holds itself.
    """
    d = distance(own, other)
    if d == 0:
        raise ValueError("a node id has no bucket in its own table")
    return d.bit_length() - 1


def random_id(rng: random.Random | None = None) -> bytes:
    """A uniformly random ID (``rng`` for determinism in tests and the simulator)."""
    r = rng if rng is not None else random.SystemRandom()
    return from_int(r.getrandbits(ID_BITS))


def random_id_in_bucket(own: bytes, index: int, rng: random.Random | None = None) -> bytes:
    """A uniformly random ID whose bucket in ``own``'s table is ``index``.

    Used by bucket refresh (section 2.3): a lookup for a random ID in a bucket's range.
    Postcondition: ``bucket_index(own, result) == index``.
    """
    if not 0 <= index < ID_BITS:
        raise ValueError(f"bucket index out of range: {index}")
    r = rng if rng is not None else random.SystemRandom()
    d = (1 << index) | r.getrandbits(index) if index else 1
    return from_int(to_int(own) ^ d)


def sha256_id(data: bytes | memoryview) -> bytes:
    """The content ID of a block: SHA-256 of its plaintext."""
    return hashlib.sha256(data).digest()
