"""The DHT node: identity, transport, Kademlia routing and lookups, the encrypted chunk store.

Invariant: nothing under ``dhtfs.node`` imports ``dhtfs.fs``.
"""
