"""The Kademlia DHT: node IDs in a routing table, lookups, providers and placement.

Holds node (one Kademlia node: RPC dispatch, RTT policy, providers, lookups, placement),
routing (k-buckets), lookup (iterative lookups, alpha in flight), results (what puts, gets and
value lookups report) and discovery (mDNS: peers of the same CA on the LAN).

May import: ``dhtfs.base``, ``dhtfs.trust``, ``dhtfs.net``.
"""
