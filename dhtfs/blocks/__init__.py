"""The block data plane: blocks reaching their replicas and coming back.

Holds node (``BlockNode``: a DHT node holding blocks, their RPCs, hand-off), placement
(blocks on the R XOR-closest nodes), storage (what the block layer needs of a store and of
the network, as typed interfaces), replication (the backlog and acknowledged copies on the R
XOR-closest nodes), clientplace (a client-only mount's blocks), fetch (reads: nearest provider,
hedging, waiting for a copy), arrivals (what wakes a waiting read), repair, reclaim (collection
of unreferenced blocks) and verify (fsck of a store).

May import: ``dhtfs.base``, ``dhtfs.net``, ``dhtfs.dht``, ``dhtfs.store``.
"""
