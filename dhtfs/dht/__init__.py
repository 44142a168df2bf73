"""The Kademlia DHT: node IDs in a routing table, lookups, provider records and upkeep.

Holds node (one Kademlia node: lookups, joining, provider announcements, upkeep), protocol
(its calls with RTT bookkeeping, the RPC policy, the answers to requests and the registry of
upper layers' methods), providers (provider records), routing (k-buckets), lookup (iterative
lookups, alpha in flight), results (what puts, gets and value lookups report), revocations
(revocation lists spreading between nodes) and discovery (mDNS: peers of the same CA on the
LAN). What a node holds is the upper layer's (``dhtfs.blocks.node``).

May import: ``dhtfs.base``, ``dhtfs.trust``, ``dhtfs.net``.
"""
