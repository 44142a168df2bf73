"""Iterative node lookup (Kademlia paper, section 2.3), alpha queries continuously in flight.

The engine is shared by FIND_NODE and FIND_PROVIDERS; it knows nothing of the wire: the caller
passes ``query(contact, timeout) -> Answer``.

Algorithm:
- the shortlist starts with the initiator's closest known contacts;
- up to ``alpha`` queries are *active* at any time. When one answers (or fails, or overruns its
  adaptive timeout) the closest not-yet-queried contact among the k closest seen is queried at
  once — there are no lock-step rounds (the paper's "the initiator can begin the next round
  before all alpha of the previous round have answered", taken to its limit, as libp2p does);
- adaptive timeout: a query that has not answered after ``soft_timeout(contact)`` (from its RTT
  EWMA, clamped) stops holding a slot and stops counting towards termination — it is treated
  as failed for now, so one silent peer costs at most its soft timeout, never the lookup's
  deadline. The call itself continues until ``hard_timeout``; a late answer is still used;
- narrow mode (``hedge`` given; FIND_VALUE uses it): while the closest contact not yet asked
  is closer to the target than every node that has answered, it is asked *alone*: a further
  query starts only once every query in flight has overrun its ``hedge(contact)`` delay (then
  at most ``alpha`` in flight, as above). A value lives on the nodes closest to its key, so
  the closest contact known is a holder whenever any known contact is: the other alpha - 1
  queries of a wide round could only cost RPCs there, never save a round trip. Once the
  lookup has converged (a node that answered is at least as close as every contact left to
  ask) it goes alpha-wide;
- termination: the k closest contacts seen (excluding failed and slow ones) have all answered
  (when every contact left is slow, their late answers are awaited up to ``hard_timeout``: a
  swarm of slow peers is slow, not empty), or ``stop(contact, answer)`` says so after an answer
  carrying something (FIND_PROVIDERS stops early, see ``Node.find_providers``), or no candidates
  remain. Outstanding calls are cancelled on return.

Hops: every shortlist entry remembers the hop level at which it was learned (0 for the
initiator's own routing table, h for a contact returned by a query at level h); a query sent to
an entry of level h is at level h + 1. A lookup's hop count is the level of the query that
produced its result: for FIND_PROVIDERS the first query that returned providers, for FIND_NODE
the query to the closest node found (its answer confirms it). So a target already in our own
routing table is 1 hop away; ``hops`` counts sequential RPCs, not RPCs in total (``queries``).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from dhtfs.base.errors import NetworkError
from dhtfs.base.ids import to_int
from dhtfs.net.network import Contact

NEW, ACTIVE, SLOW, DONE, FAILED = range(5)


@dataclass(slots=True)
class Answer:
    """One peer's answer to a lookup query."""

    contacts: list[Contact]
    found: Any = None          # e.g. providers for FIND_PROVIDERS; None when not found


@dataclass(slots=True)
class LookupResult:
    """The outcome of one lookup."""

    closest: list[Contact]              # the k closest contacts that answered, closest first
    found: list[Any] = field(default_factory=list)   # non-None ``Answer.found`` values
    hops: int = 0                       # see the module docstring
    queries: int = 0                    # RPCs sent
    failures: int = 0                   # RPCs that failed or timed out (hard)
    slow: int = 0                       # RPCs that overran their adaptive timeout
    abandoned: list[Contact] = field(default_factory=list)  # slow, never answered


class _Entry:
    __slots__ = ("contact", "dist", "hedge_deadline", "hop", "soft_deadline", "state")

    def __init__(self, contact: Contact, dist: int, hop: int) -> None:
        self.contact = contact
        self.dist = dist
        self.hop = hop
        self.state = NEW
        self.soft_deadline = math.inf
        self.hedge_deadline = -math.inf


Query = Callable[[Contact, float], Awaitable[Answer]]


async def iterative_lookup(
    target: bytes,
    start: list[Contact],
    query: Query,
    *,
    own_id: bytes,
    k: int = 20,
    alpha: int = 3,
    soft_timeout: Callable[[Contact], float] = lambda c: 1.0,
    hard_timeout: float = 5.0,
    stop: Callable[[Contact, Answer], bool] | None = None,
    settle: int = 0,
    on_settled: Callable[[list[Contact]], None] | None = None,
    hedge: Callable[[Contact], float] | None = None,
) -> LookupResult:
    """Run one iterative lookup for ``target``; see the module docstring.

    ``on_settled(contacts)`` is called once, as soon as the ``settle`` closest contacts seen
    (not failed nor slow) have all answered: none of them named anyone closer, so they are the
    ``settle`` closest the lookup will end with unless a farther node's late answer names a
    closer one. The lookup goes on to its k closest meanwhile. If the lookup ends first (fewer
    nodes than ``settle``), it is called at the end with the closest found.

    ``hedge(contact)``: narrow mode (see the module docstring), the delay after which a query
    to ``contact`` no longer holds back the next one.

    ``query`` must raise ``NetworkError`` on failure and must honour its timeout argument.
    Contacts with ``own_id`` are never queried nor returned.
    """
    t = to_int(target)
    entries: dict[bytes, _Entry] = {}
    order: list[_Entry] = []          # kept sorted by distance; grows as contacts are learned
    result = LookupResult(closest=[])
    best_done = math.inf              # distance of the closest node that answered
    found_hop: int | None = None
    stopped = False

    def learn(c: Contact, hop: int) -> bool:
        if c.node_id == own_id or c.node_id in entries:
            return False
        e = _Entry(c, to_int(c.node_id) ^ t, hop)
        entries[c.node_id] = e
        order.append(e)
        return True

    for c in start:
        learn(c, 0)
    order.sort(key=lambda e: e.dist)

    max_outstanding = 4 * alpha + k
    active: set[_Entry] = set()       # queried, not answered, within their soft timeout
    send, recv = trio.open_memory_channel[tuple[_Entry, Answer | None]](max_outstanding)
    outstanding = 0

    async def run_query(e: _Entry) -> None:
        try:
            ans: Answer | None = await query(e.contact, hard_timeout)
        except NetworkError:
            ans = None
        await send.send((e, ans))

    async with trio.open_nursery() as nursery:
        while True:
            # The k closest that are not failed/slow; done when all of them answered.
            window: list[_Entry] = []
            for e in order:
                if e.state in (FAILED, SLOW):
                    continue
                window.append(e)
                if len(window) >= k:
                    break
            if on_settled is not None:
                head = window[:settle]
                if len(head) == settle and all(e.state == DONE for e in head):
                    on_settled([e.contact for e in head])
                    on_settled = None
            next_hedge = math.inf
            if not stopped:
                now = trio.current_time()
                for e in window:
                    if len(active) >= alpha or outstanding >= max_outstanding:
                        break
                    if e.state == NEW:
                        if hedge is not None and e.dist < best_done:
                            # narrow: wait while a query in flight is within its hedge delay
                            fresh = [a.hedge_deadline for a in active if a.hedge_deadline > now]
                            if fresh:
                                next_hedge = min(fresh)
                                break
                            e.hedge_deadline = now + hedge(e.contact)
                        e.state = ACTIVE
                        e.soft_deadline = now + soft_timeout(e.contact)
                        active.add(e)
                        outstanding += 1
                        result.queries += 1
                        nursery.start_soon(run_query, e)
            if stopped or (window and all(e.state == DONE for e in window)):
                break
            if not active and outstanding == 0:
                break       # nothing in flight and nothing left to ask
            # (Every contact left is slow: they are all there is, so their late answers are
            # awaited, each until its hard timeout, instead of ending with nothing.)
            wake = min(next_hedge, min((e.soft_deadline for e in active), default=math.inf))
            got = None
            with trio.move_on_at(wake):
                got = await recv.receive()
            if got is None:
                now = trio.current_time()
                for e in [e for e in active if e.soft_deadline <= now]:
                    e.state = SLOW
                    active.discard(e)
                    result.slow += 1
                continue
            while got is not None:
                e, ans = got
                outstanding -= 1
                active.discard(e)
                if ans is None:
                    e.state = FAILED
                    result.failures += 1
                else:
                    e.state = DONE
                    best_done = min(best_done, e.dist)
                    added = False
                    for c in ans.contacts:
                        added |= learn(c, e.hop + 1)
                    if added:
                        order.sort(key=lambda x: x.dist)
                    if ans.found is not None:
                        result.found.append(ans.found)
                        if found_hop is None:
                            found_hop = e.hop + 1
                        if stop is not None and stop(e.contact, ans):
                            stopped = True
                try:
                    got = recv.receive_nowait()
                except trio.WouldBlock:
                    got = None
        nursery.cancel_scope.cancel()

    result.abandoned = [e.contact for e in order if e.state == SLOW]
    closest = [e for e in order if e.state == DONE][:k]
    result.closest = [e.contact for e in closest]
    if on_settled is not None:
        on_settled(result.closest[:settle])
    if found_hop is not None:
        result.hops = found_hop
    elif closest:
        result.hops = closest[0].hop + 1
    return result
