"""A node's local state on disk: blocks, their key, free space and the files that index them.

Holds blockstore (sealed, content-addressed block files), masterkey (the at-rest key),
space (free space as dhtfs counts it: ENOSPC before anything is acknowledged), idset
(append-only ID sets: replication backlog, cache index), diskcache (copies held beyond R, LRU)
and statedir (opening a state directory). Nothing here touches the network.

May import: ``dhtfs.base``.
"""
