"""k-buckets, eviction decision, replacement cache, closest queries, per-contact stats."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from dhtfs.base.ids import ID_BITS, bucket_index, from_int, random_id, to_int
from dhtfs.dht.routing import EWMA_WEIGHT, RoutingTable
from dhtfs.net.network import Contact

OWN = bytes(32)


def contact(i: int) -> Contact:
    return Contact(from_int(i), "h", 1 + i % 60000)


def in_bucket(index: int, n: int) -> list[Contact]:
    """n distinct contacts that fall in OWN's bucket ``index`` (index >= log2(n))."""
    return [contact((1 << index) | j) for j in range(n)]


def check_invariants(rt: RoutingTable) -> None:
    seen: set[bytes] = set()
    for i in range(ID_BITS):
        bucket = rt.bucket_contacts(i)
        repl = rt.replacement_contacts(i)
        assert len(bucket) <= rt.k and len(repl) <= rt.k
        for c in bucket + repl:
            assert c.node_id != rt.own_id
            assert bucket_index(rt.own_id, c.node_id) == i
            assert c.node_id not in seen, "an id appears twice"
            seen.add(c.node_id)


def test_update_fills_then_reports_least_recently_seen() -> None:
    rt = RoutingTable(OWN, k=4, ping_interval=0)
    cs = in_bucket(10, 6)
    for c in cs[:4]:
        assert rt.update(c) is None
    assert rt.update(cs[4]) == cs[0]            # full: ping the oldest
    rt.update(cs[0])                            # it answered: now most recent
    assert rt.update(cs[5]) == cs[1]
    assert [c.node_id for c in rt.bucket_contacts(10)] == [
        c.node_id for c in (cs[1], cs[2], cs[3], cs[0])
    ]
    assert rt.replacement_contacts(10) == [cs[4], cs[5]]
    check_invariants(rt)


def test_eviction_pings_are_throttled_per_bucket() -> None:
    now = [0.0]
    rt = RoutingTable(OWN, k=2, clock=lambda: now[0], ping_interval=30)
    a, b, c, d = in_bucket(9, 4)
    rt.update(a)
    rt.update(b)
    assert rt.update(c) == a
    now[0] = 10.0
    assert rt.update(d) is None                 # checked 10 s ago: no new ping
    assert rt.replacement_contacts(9) == [c, d]
    now[0] = 31.0
    assert rt.update(d) == a


def test_remove_promotes_most_recent_replacement() -> None:
    rt = RoutingTable(OWN, k=2)
    a, b, c, d = in_bucket(8, 4)
    for x in (a, b, c, d):
        rt.update(x)
    assert rt.replacement_contacts(8) == [c, d]
    assert rt.remove(a.node_id)
    assert rt.bucket_contacts(8) == [b, d]
    assert rt.replacement_contacts(8) == [c]
    assert not rt.remove(a.node_id)
    assert rt.remove(c.node_id)                 # removing a replacement just drops it
    assert rt.replacement_contacts(8) == []
    check_invariants(rt)


def test_replacement_cache_is_bounded_and_keeps_newest() -> None:
    rt = RoutingTable(OWN, k=2)
    cs = in_bucket(12, 10)
    for c in cs:
        rt.update(c)
    assert rt.replacement_contacts(12) == cs[-2:]


def test_own_id_is_never_stored() -> None:
    rt = RoutingTable(OWN, k=2)
    assert rt.update(Contact(OWN, "h", 1)) is None
    assert len(rt) == 0 and OWN not in rt


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 300)), max_size=200), st.integers(1, 6))
def test_bucket_invariants_under_random_operations(ops: list[tuple[bool, int]], k: int) -> None:
    """Whatever the sequence of sightings and removals, buckets stay within k, contacts sit in
    the right bucket, and no id is both in a bucket and in a replacement cache."""
    rt = RoutingTable(OWN, k=k, ping_interval=0)
    for add, n in ops:
        c = contact(n + 1)
        if add:
            oldest = rt.update(c)
            if oldest is not None:
                assert oldest in rt.bucket_contacts(bucket_index(OWN, c.node_id))
                assert c in rt.replacement_contacts(bucket_index(OWN, c.node_id))
            else:
                assert c.node_id in rt
        else:
            rt.remove(c.node_id)
            assert c.node_id not in rt
        check_invariants(rt)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 300), st.integers(1, 30))
def test_closest_matches_brute_force(seed: int, n: int, count: int) -> None:
    rng = random.Random(seed)
    own = random_id(rng)
    rt = RoutingTable(own, k=20)
    for _ in range(n):
        rt.update(Contact(random_id(rng), "h", 1))
    target = random_id(rng)
    got = rt.closest(target, count)
    everyone = sorted(rt.contacts(), key=lambda c: to_int(c.node_id) ^ to_int(target))
    assert got == everyone[:count]


def test_closest_excludes() -> None:
    rt = RoutingTable(OWN, k=20)
    cs = [contact(i) for i in range(1, 10)]
    for c in cs:
        rt.update(c)
    got = rt.closest(cs[0].node_id, 3, exclude=[cs[0].node_id])
    assert cs[0] not in got and len(got) == 3


def test_ewma_failures_and_eviction_threshold() -> None:
    rt = RoutingTable(OWN, k=20, max_failures=2)
    c = contact(5)
    rt.update(c)
    rt.record_rtt(c.node_id, 0.1)
    assert rt.rtt(c.node_id) == 0.1
    rt.record_rtt(c.node_id, 0.2)
    assert abs(rt.rtt(c.node_id) - (EWMA_WEIGHT * 0.2 + (1 - EWMA_WEIGHT) * 0.1)) < 1e-12
    assert not rt.record_failure(c.node_id)
    rt.record_rtt(c.node_id, 0.1)               # a success resets the streak
    assert not rt.record_failure(c.node_id)
    assert rt.record_failure(c.node_id)


def test_stats_are_bounded() -> None:
    rt = RoutingTable(OWN, k=20, max_stats=10)
    for i in range(1, 30):
        rt.record_rtt(from_int(i), 0.1)
    assert rt.stats(from_int(1)) is None and rt.stats(from_int(29)) is not None


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.one_of(st.none(), st.floats(0.001, 5.0)), st.integers(0, 2)),
        min_size=1,
        max_size=15,
    )
)
def test_rank_providers(spec: list[tuple[float | None, int]]) -> None:
    """Known RTT ascending, then unknown RTT, then penalized; input order breaks ties."""
    rt = RoutingTable(OWN, k=20)
    provs = [contact(i + 1) for i in range(len(spec))]
    for c, (rtt, pen) in zip(provs, spec, strict=True):
        if rtt is not None:
            rt.record_rtt(c.node_id, rtt)
        for _ in range(pen):
            rt.penalize(c.node_id)
    ranked = rt.rank_providers(provs)
    assert sorted(ranked, key=lambda c: c.node_id) == sorted(provs, key=lambda c: c.node_id)

    def cls(c: Contact) -> int:
        rtt, pen = spec[provs.index(c)]
        return 2 if pen else (1 if rtt is None else 0)

    classes = [cls(c) for c in ranked]
    assert classes == sorted(classes)
    known = [spec[provs.index(c)][0] for c in ranked if cls(c) == 0]
    assert known == sorted(known)
    unknown = [provs.index(c) for c in ranked if cls(c) == 1]
    assert unknown == sorted(unknown)


def test_stale_buckets_and_touch() -> None:
    now = [0.0]
    rt = RoutingTable(OWN, k=20, clock=lambda: now[0])
    assert rt.stale_buckets(10) == []
    rt.update(contact(1 << 250))
    now[0] = 100.0
    stale = rt.stale_buckets(10)
    assert stale == list(range(250, ID_BITS))
    rt.touch_target(from_int((1 << 252) | 7))
    assert 252 not in rt.stale_buckets(10)
    assert rt.stale_buckets(1000) == []
