"""Forget records (``dhtfs.oplog.membership``): merging is order-insensitive, cuts rise to what
a node holds, persistence, silence, naming a node; and ``member_timeout`` in the config."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest

from dhtfs.base.config import Config, apply_options
from dhtfs.base.errors import ConfigError
from dhtfs.oplog.folding import Folding
from dhtfs.oplog.logstore import MemoryLogStore
from dhtfs.oplog.membership import Membership, records_from_wire, resolve

A, B, C, X = (bytes([i]) * 32 for i in (1, 2, 3, 9))


def test_merge_is_a_semilattice() -> None:
    """Any order, any repetition of the same records gives the same result."""
    rng = random.Random(1)
    records = [
        {X: (1, False, 5)}, {X: (1, False, 7)}, {X: (1, True, 7)}, {X: (2, False, 9)},
        {C: (1, False, 2)}, {C: (1, False, 1)},
    ]
    results = set()
    for order in itertools.permutations(records):
        m = Membership(A)
        for rec in [*order, *rng.sample(records, 3)]:
            m.merge(rec, {})
        results.add(tuple(sorted(m.records.items())))
    assert results == {((C, (1, False, 2)), (X, (2, False, 9)))}


def test_learning_raises_the_cut_to_what_is_held_and_refuses_past_it() -> None:
    m = Membership(A)
    m.merge({X: (1, False, 3)}, {X: 5})
    assert m.cut(X) == 5  # entries of X this node applied stay everywhere
    assert not m.refuses(X, 5) and m.refuses(X, 6)
    m.merge({X: (1, True, 5)}, {X: 5})
    assert not m.is_forgotten(X) and not m.refuses(X, 6)
    assert m.forget(X, 8, "again") == (2, False, 8)  # a new epoch


def test_own_record_and_rejoin(tmp_path: Path) -> None:
    told = []
    m = Membership(A, tmp_path / "members.json")
    m.on_forgotten = lambda: told.append(True)
    assert m.forget(A, 1, "self") is None  # never itself
    m.merge({A: (1, False, 4)}, {A: 9})
    assert told and m.is_forgotten(A) and m.cut(A) == 4  # its own cut is not raised
    assert m.rejoined() == (1, True, 4)
    again = Membership(A, tmp_path / "members.json")  # persisted
    assert again.records == {A: (1, True, 4)}


def test_malformed_wire_items_are_skipped() -> None:
    good = [X, 1, False, 3]
    assert records_from_wire([good, [b"x", 1, False, 3], [X, 0, False, 1], "junk", [X]]) == {
        X: (1, False, 3)}
    assert records_from_wire(None) == {}


def test_folding_leaves_out_a_forgotten_member_only_once_every_other_knew() -> None:
    store = MemoryLogStore(A)
    fold = Folding(store, A)
    for node in (B, C, X):
        fold.member(node)
    fold.membership.forget(X, 0, "test")
    fold.report(B, {}, None, frozenset({(X, 1)}))
    fold.report(C, {}, None, frozenset())  # C has not heard of it yet
    assert fold.required() == {B, C, X}
    fold.report(C, {}, None, frozenset({(X, 1)}))
    assert fold.required() == {B, C}


def test_silence_counts_only_while_others_are_heard(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr("dhtfs.oplog.membership._now", lambda: now[0])
    m = Membership(A, member_timeout=10.0)
    m.heard(B)
    m.heard(X)
    now[0] = 105.0
    m.heard(B)
    now[0] = 112.0
    assert m.silent([B, X]) == [X]  # B heard 7 s ago, X 12 s ago
    now[0] = 200.0
    assert m.silent([B, X]) == []  # nobody heard for long: this node is the cut-off one
    assert Membership(A, member_timeout=0).silent([B, X]) == []


def test_resolve_by_prefix_and_name() -> None:
    ids = {bytes.fromhex("ab" * 32): "laptop", bytes.fromhex("ac" + "00" * 31): None}
    assert resolve("ab", ids) == bytes.fromhex("ab" * 32)
    assert resolve("laptop", ids) == bytes.fromhex("ab" * 32)
    with pytest.raises(ValueError, match="several"):
        resolve("a", ids)
    with pytest.raises(ValueError, match="not a member"):
        resolve("ff", ids)


def test_member_timeout_option() -> None:
    assert Config().member_timeout == 7 * 86400
    assert apply_options(Config(), {"member_timeout": "3600"}).member_timeout == 3600
    assert apply_options(Config(), {"member_timeout": "off"}).member_timeout == 0
    assert apply_options(Config(), {"member-timeout": "0"}).member_timeout == 0
    with pytest.raises(ConfigError, match="member_timeout"):
        apply_options(Config(), {"member_timeout": "soon"})
    with pytest.raises(ConfigError, match="member_timeout"):
        apply_options(Config(), {"member_timeout": "-1"})
