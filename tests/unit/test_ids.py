"""The XOR metric and bucket arithmetic (Kademlia paper, 2.1-2.2)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dhtfs.base.ids import (
    ID_BITS,
    ID_BYTES,
    bucket_index,
    distance,
    from_int,
    random_id,
    random_id_in_bucket,
    to_int,
)

ids = st.binary(min_size=ID_BYTES, max_size=ID_BYTES)


@given(ids)
def test_distance_to_self_is_zero(a: bytes) -> None:
    assert distance(a, a) == 0


@given(ids, ids)
def test_distance_symmetric_and_positive(a: bytes, b: bytes) -> None:
    assert distance(a, b) == distance(b, a)
    assert (distance(a, b) == 0) == (a == b)


@given(ids, ids, ids)
def test_triangle_inequality(a: bytes, b: bytes, c: bytes) -> None:
    assert distance(a, c) <= distance(a, b) + distance(b, c)


@given(ids, st.integers(min_value=0, max_value=2**ID_BITS - 1))
def test_unidirectional(a: bytes, d: int) -> None:
    """Exactly one point lies at distance d from a: a XOR d."""
    b = from_int(to_int(a) ^ d)
    assert distance(a, b) == d


@given(ids, ids)
def test_bucket_index_brackets_distance(a: bytes, b: bytes) -> None:
    if a == b:
        with pytest.raises(ValueError):
            bucket_index(a, b)
        return
    i = bucket_index(a, b)
    assert 0 <= i < ID_BITS
    assert 2**i <= distance(a, b) < 2 ** (i + 1)
    assert bucket_index(b, a) == i


@given(ids, st.integers(min_value=0, max_value=ID_BITS - 1), st.integers(0, 2**32))
def test_random_id_in_bucket_lands_in_that_bucket(own: bytes, index: int, seed: int) -> None:
    rid = random_id_in_bucket(own, index, random.Random(seed))
    assert len(rid) == ID_BYTES
    assert bucket_index(own, rid) == index


def test_random_id_in_bucket_rejects_bad_index() -> None:
    with pytest.raises(ValueError):
        random_id_in_bucket(bytes(32), ID_BITS)


def test_random_id_in_bucket_is_spread() -> None:
    rng = random.Random(1)
    own = random_id(rng)
    seen = {random_id_in_bucket(own, 200, rng) for _ in range(50)}
    assert len(seen) == 50


def test_int_round_trip_and_order() -> None:
    rng = random.Random(2)
    for _ in range(100):
        a = random_id(rng)
        assert from_int(to_int(a)) == a
    assert to_int(b"\x00" * 31 + b"\x01") == 1
    assert to_int(b"\x80" + b"\x00" * 31) == 2**255
