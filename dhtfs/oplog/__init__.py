"""The replicated op log: signed entries of every node, gossiped until all hold all.

Knows nothing of what an entry means. Holds replicator (push, pull, anti-entropy,
snapshots), entries (log entries, their chain links and wire form), signing, logstore (the
in-memory store; a mount's store is ``dhtfs.meta.replica``), folding (members' reports and
folding of stable history) and membership (forgotten members).

May import: ``dhtfs.base``, ``dhtfs.trust``, ``dhtfs.net``, ``dhtfs.dht``.
"""
