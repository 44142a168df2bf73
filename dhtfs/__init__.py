"""dhtfs: a FUSE filesystem backed by a Kademlia DHT content-delivery network.

Packages by concept, lowest first (each package's docstring says what it holds and what it may
import; ``tests/unit/test_layering.py`` holds the table; ``docs/architecture.md`` draws it):
``base`` → ``trust`` → ``net`` → ``dht`` → ``store`` → ``blocks`` → ``oplog`` → ``meta`` →
``fs`` → ``gateway`` (the read-only HTTP face) → ``runtime`` → ``commands``; ``sim`` runs
the real DHT and op-log code in memory.
The three entry programs are ``mount`` (``mount.dhtfs``), ``umount`` and ``cli`` (``dhtfs``).
"""

__version__ = "0.1.0"
