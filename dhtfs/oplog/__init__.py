"""The replicated op log: signed entries of every node, gossiped until all hold all.

Knows nothing of what an entry means. Holds replicator (``LogReplicator``, which ties the
sides together and answers the LOG_* RPCs), its sides gossip (push), accept (authenticating
and accepting entries), antientropy (push-pull rounds, gap filling, the folding beat) and
snapshots (for nodes behind what was folded; rejoining), shared (what the sides share),
entries (log entries, their chain links and wire form), signing, logstore (the store
protocols, the in-memory and SQLite stores; a mount's store is ``dhtfs.meta.replica``), folding
(members' reports and folding of stable history) and membership (forgotten members).

May import: ``dhtfs.base``, ``dhtfs.trust``, ``dhtfs.net``, ``dhtfs.dht``.
"""
