"""dhtfs: a FUSE filesystem backed by a Kademlia DHT content-delivery network.

Package layout (README, Layout): ``dhtfs.node`` is a content store and a replicated log and
knows nothing of files; ``dhtfs.fs`` turns them into a filesystem; ``dhtfs.sim`` runs the real
node code over an in-memory network with virtual time.
"""

__version__ = "0.1.0"
