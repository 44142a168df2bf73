"""The routing table: k-buckets with least-recently-seen eviction (Kademlia paper, 2.2 and 4.1).

One bucket per bit of distance (``ids.bucket_index``); each holds at most ``k`` contacts ordered
from least- to most-recently seen, plus a replacement cache of at most ``k`` candidates
(section 4.1) that were seen while the bucket was full.

Invariants:
- our own ID is never in the table; a node ID appears in at most one place (bucket *or* its
  replacement cache);
- ``len(bucket) <= k`` and ``len(replacements) <= k``; a bucket's contacts all have that
  bucket's index;
- when a full bucket sees a new contact, the table does not evict on its own: ``update``
  returns the least-recently-seen contact and the node decides (it pings it; if the ping fails
  it calls ``remove``, which promotes the most recent replacement, else ``update`` moves the
  old contact to the tail). The newcomer waits in the replacement cache meanwhile. Live old
  contacts are preferred, which is what makes Kademlia resistant to flushing (section 2.2).

Per-contact statistics (kept for any contact we have exchanged RPCs with, in or out of the
table, bounded by ``max_stats``): RTT EWMA, consecutive failures, and a penalty count for peers
that served bytes not matching their hash. ``rank_providers`` orders by them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from dhtfs.base.ids import ID_BITS, bucket_index, to_int
from dhtfs.net.network import Contact

EWMA_WEIGHT = 0.3
"""Weight of a new RTT sample in the EWMA (new = w * sample + (1 - w) * old)."""


@dataclass(slots=True)
class ContactStats:
    """What we measured about one peer."""

    rtt_ewma: float | None = None
    failures: int = 0           # consecutive failed calls; reset by any success
    penalties: int = 0          # answers that failed verification (bad bytes); never reset


class Bucket:
    """One k-bucket: contacts least-recently seen first, plus a replacement cache."""

    __slots__ = ("contacts", "last_ping", "last_touched", "replacements")

    def __init__(self, now: float) -> None:
        self.contacts: OrderedDict[bytes, Contact] = OrderedDict()
        self.replacements: OrderedDict[bytes, Contact] = OrderedDict()
        self.last_touched = now
        self.last_ping = float("-inf")

    def __len__(self) -> int:
        return len(self.contacts)


class RoutingTable:
    """k-buckets around ``own_id``. See the module docstring for invariants."""

    def __init__(
        self,
        own_id: bytes,
        *,
        k: int = 20,
        clock: Callable[[], float] | None = None,
        max_failures: int = 2,
        max_stats: int = 4096,
        ping_interval: float = 30.0,
    ) -> None:
        self.own_id = own_id
        self.k = k
        self.max_failures = max_failures
        self.max_stats = max_stats
        self.ping_interval = ping_interval
        self._clock = clock or (lambda: 0.0)
        self._own_int = to_int(own_id)
        self._buckets: list[Bucket | None] = [None] * ID_BITS
        self._indices: list[int] = []          # indices of the buckets created so far
        self._stats: OrderedDict[bytes, ContactStats] = OrderedDict()
        self._created: float | None = None    # set on first use (may be built outside trio)

    # -- membership ----------------------------------------------------------------------------

    def _bucket(self, index: int, create: bool = True) -> Bucket | None:
        b = self._buckets[index]
        if b is None and create:
            self._created_at()
            b = self._buckets[index] = Bucket(self._clock())
            self._indices.append(index)
        return b

    def update(self, contact: Contact) -> Contact | None:
        """Record that ``contact`` was just seen alive.

        Returns ``None`` when the contact is now in its bucket (as most recently seen), or the
        bucket's least-recently-seen contact when the bucket is full: the caller should ping it
        and then call ``remove(oldest)`` (no answer) or ``update(oldest)`` (answered). The new
        contact is kept in the replacement cache meanwhile. A full bucket asks for at most one
        such ping per ``ping_interval`` seconds (else ``None``, the newcomer still cached), so
        a busy node does not ping once per stranger: in a 1,000-node simulation with churn,
        unthrottled eviction pings outnumbered every other RPC.
        """
        if contact.node_id == self.own_id:
            return None
        index = bucket_index(self.own_id, contact.node_id)
        b = self._bucket(index)
        assert b is not None
        nid = contact.node_id
        if nid in b.contacts:
            b.contacts.move_to_end(nid)
            b.contacts[nid] = contact          # the address may have changed
            return None
        if len(b.contacts) < self.k:
            b.replacements.pop(nid, None)
            b.contacts[nid] = contact
            return None
        b.replacements.pop(nid, None)
        b.replacements[nid] = contact
        while len(b.replacements) > self.k:
            b.replacements.popitem(last=False)
        now = self._clock()
        if now - b.last_ping < self.ping_interval:
            return None                 # this bucket's oldest was checked moments ago
        b.last_ping = now
        return next(iter(b.contacts.values()))

    def add_seed(self, contact: Contact) -> bool:
        """Insert without the liveness protocol (simulator seeding); False if the bucket is full."""
        if contact.node_id == self.own_id:
            return False
        b = self._bucket(bucket_index(self.own_id, contact.node_id))
        assert b is not None
        if contact.node_id in b.contacts or len(b.contacts) >= self.k:
            return False
        b.contacts[contact.node_id] = contact
        return True

    def remove(self, node_id: bytes) -> bool:
        """Drop a contact; the most recently seen replacement takes its place. True if present."""
        if node_id == self.own_id:
            return False
        b = self._bucket(bucket_index(self.own_id, node_id), create=False)
        if b is None:
            return False
        if b.replacements.pop(node_id, None) is not None:
            return True
        if b.contacts.pop(node_id, None) is None:
            return False
        if b.replacements:
            nid, c = b.replacements.popitem(last=True)
            b.contacts[nid] = c
        return True

    def __contains__(self, node_id: bytes) -> bool:
        if node_id == self.own_id:
            return False
        b = self._buckets[bucket_index(self.own_id, node_id)]
        return b is not None and node_id in b.contacts

    def get(self, node_id: bytes) -> Contact | None:
        if node_id == self.own_id:
            return None
        b = self._buckets[bucket_index(self.own_id, node_id)]
        return None if b is None else b.contacts.get(node_id)

    def __len__(self) -> int:
        return sum(len(b) for b in self._buckets if b is not None)

    def contacts(self) -> list[Contact]:
        """Every contact in the buckets (not the replacement caches)."""
        return [c for b in self._buckets if b is not None for c in b.contacts.values()]

    def bucket_contacts(self, index: int) -> list[Contact]:
        b = self._buckets[index]
        return [] if b is None else list(b.contacts.values())

    def replacement_contacts(self, index: int) -> list[Contact]:
        b = self._buckets[index]
        return [] if b is None else list(b.replacements.values())

    # -- queries -------------------------------------------------------------------------------

    def closest(
        self,
        target: bytes,
        count: int | None = None,
        exclude: Iterable[bytes] = (),
        *,
        with_replacements: bool = False,
    ) -> list[Contact]:
        """The ``count`` (default k) known contacts XOR-closest to ``target``, closest first.

        ``with_replacements``: the replacement caches count too (our own lookups start from
        every live contact we know: a full bucket's contacts are the first that joined its
        range, often bunched around one refresh target, while the nodes seen since wait in its
        replacement cache; FIND_NODE answers to others keep to the buckets proper).

        Bucket j holds contacts c with 2**j <= d(own, c) < 2**(j+1); their distances to the
        target, D ^ d(own, c) with D = d(own, target), then fill the aligned interval
        [((D >> j) ^ 1) << j, + 2**j). These intervals are disjoint, so walking the buckets in
        order of interval start visits contacts in distance bands, and only as many buckets as
        needed for ``count`` contacts are sorted.
        """
        n = self.k if count is None else count
        if n <= 0:
            return []
        t = to_int(target)
        dd = self._own_int ^ t
        skip = set(exclude)
        buckets = self._buckets
        order = sorted(self._indices, key=lambda j: ((dd >> j) ^ 1) << j)
        out: list[Contact] = []
        for j in order:
            b = buckets[j]
            assert b is not None
            if not b.contacts:
                continue
            band = [c for c in b.contacts.values() if c.node_id not in skip]
            if with_replacements and b.replacements:
                band.extend(c for c in b.replacements.values() if c.node_id not in skip)
            band.sort(key=lambda c: int.from_bytes(c.node_id, "big") ^ t)
            out.extend(band)
            if len(out) >= n:
                break
        return out[:n]

    # -- refresh bookkeeping (section 2.3) -----------------------------------------------------

    def _created_at(self) -> float:
        if self._created is None:
            self._created = self._clock()
        return self._created

    def touch_bucket(self, index: int) -> None:
        """Mark bucket ``index`` as refreshed now (a lookup in its range just ran)."""
        b = self._bucket(index)
        assert b is not None
        b.last_touched = self._clock()

    def touch_target(self, target: bytes) -> None:
        """A lookup for ``target`` ran: the bucket ``target`` falls in counts as refreshed."""
        if target != self.own_id:
            self.touch_bucket(bucket_index(self.own_id, target))

    def stale_buckets(self, max_age: float) -> list[int]:
        """Buckets not touched for ``max_age`` seconds, from the nearest non-empty one outward.

        Buckets closer than our nearest non-empty bucket are left alone: the lookup of our own
        ID (done at join) already covers them, and in a network of N nodes only about
        log2(N) buckets can hold anyone.
        """
        now = self._clock()
        nonempty = [i for i, b in enumerate(self._buckets) if b is not None and b.contacts]
        if not nonempty:
            return []
        out = []
        for i in range(nonempty[0], ID_BITS):
            b = self._buckets[i]
            last = b.last_touched if b is not None else self._created_at()
            if now - last >= max_age:
                out.append(i)
        return out

    # -- per-contact statistics ----------------------------------------------------------------

    def stats(self, node_id: bytes) -> ContactStats | None:
        return self._stats.get(node_id)

    def _stats_for(self, node_id: bytes) -> ContactStats:
        s = self._stats.get(node_id)
        if s is None:
            s = self._stats[node_id] = ContactStats()
            if len(self._stats) > self.max_stats:
                self._stats.popitem(last=False)
        else:
            self._stats.move_to_end(node_id)
        return s

    def record_rtt(self, node_id: bytes, rtt: float) -> None:
        """A successful RPC took ``rtt`` seconds: feed the EWMA, clear the failure streak."""
        s = self._stats_for(node_id)
        old = s.rtt_ewma
        s.rtt_ewma = rtt if old is None else EWMA_WEIGHT * rtt + (1 - EWMA_WEIGHT) * old
        s.failures = 0

    def record_failure(self, node_id: bytes) -> bool:
        """A call failed (timeout, unreachable). True once the contact should be evicted
        (``max_failures`` in a row); the caller then calls ``remove``."""
        s = self._stats_for(node_id)
        s.failures += 1
        return s.failures >= self.max_failures

    def penalize(self, node_id: bytes) -> None:
        """The peer served bytes that do not hash to their ID: rank it last from now on."""
        self._stats_for(node_id).penalties += 1

    def rtt(self, node_id: bytes) -> float | None:
        s = self._stats.get(node_id)
        return None if s is None else s.rtt_ewma

    def rank_providers(self, providers: Iterable[Contact]) -> list[Contact]:
        """Providers in the order to try them: unpenalized with known RTT (fastest first), then
        unknown RTT (in the given order), then those whose last call failed (a provider that
        went silent keeps its last good RTT, but must not be tried first again), then
        penalized ones (fewest penalties first). The sort is stable, so ties keep their
        input order."""

        def key(c: Contact) -> tuple[int, int, float]:
            s = self._stats.get(c.node_id)
            if s is None:
                return (0, 1, 0.0)
            if s.penalties:
                return (2, s.penalties, 0.0)
            if s.failures:
                return (1, s.failures, 0.0)
            if s.rtt_ewma is None:
                return (0, 1, 0.0)
            return (0, 0, s.rtt_ewma)

        return sorted(providers, key=key)
