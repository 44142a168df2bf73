"""The simulator: the real DHT and op-log code over an in-memory network with virtual time.

Holds network (``SimNetwork``, the ``Network`` seam in memory, and ``SimWorld``: latency,
loss, partitions), store (``MemoryStore``, a block store in memory), swarm (many real
``BlockNode``s: spawn, join, kill, ground truth) and oplog (the op log's replicator on a
simulated swarm: churn, and how each op spreads).

May import: ``dhtfs.base``, ``dhtfs.net``, ``dhtfs.dht``, ``dhtfs.store``, ``dhtfs.blocks``,
``dhtfs.oplog``.
"""
