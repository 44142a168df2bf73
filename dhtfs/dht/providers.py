"""Provider records: which nodes said they hold a key, until when (paper 2.5's republished
values, as libp2p's provider records have them).

ADD_PROVIDER names the caller (authenticated), plus at most a few replica hints
(``dhtfs.net.rpc``); each record lives ``min(ttl, provider_ttl)`` seconds, and holders
republish theirs before that (``dhtfs.dht.node``). Invariants: at most ``rpc.MAX_CONTACTS - 1``
records per key (room for the answering node itself), the oldest announcement going first; a
re-announcement moves a record to the newest place.
"""

from __future__ import annotations

import trio

from dhtfs.net import rpc
from dhtfs.net.network import Contact


class ProviderRecords:
    """Key → provider node ID → (contact, expiry time), on the trio thread."""

    def __init__(self, provider_ttl: float) -> None:
        self.provider_ttl = provider_ttl
        self._records: dict[bytes, dict[bytes, tuple[Contact, float]]] = {}

    def add(self, key: bytes, provider: Contact, ttl: float) -> None:
        """Record ``provider`` for ``key`` until now + min(ttl, provider_ttl)."""
        recs = self._records.setdefault(key, {})
        recs.pop(provider.node_id, None)
        recs[provider.node_id] = (provider, trio.current_time() + min(ttl, self.provider_ttl))
        while len(recs) > rpc.MAX_CONTACTS - 1:
            del recs[next(iter(recs))]          # oldest announcement goes first

    def of(self, key: bytes) -> list[Contact]:
        """The unexpired providers recorded for ``key``."""
        now = trio.current_time()
        recs = self._records.get(key)
        return [c for c, exp in recs.values() if exp > now] if recs else []

    def expire(self) -> int:
        """Drop expired provider records; returns how many went."""
        now = trio.current_time()
        dropped = 0
        for key in list(self._records):
            recs = self._records[key]
            for nid in [n for n, (_, exp) in recs.items() if exp <= now]:
                del recs[nid]
                dropped += 1
            if not recs:
                del self._records[key]
        return dropped

    def values(self) -> list[dict[bytes, tuple[Contact, float]]]:
        """Each key's records (provider node ID → (contact, expiry)), for inspection."""
        return list(self._records.values())
