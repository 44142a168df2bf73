"""The simulator: the real DHT and op-log code over an in-memory network with virtual time.

May import: ``dhtfs.base``, ``dhtfs.net``, ``dhtfs.dht``, ``dhtfs.store``, ``dhtfs.blocks``,
``dhtfs.oplog``.
"""
