"""The FUSE face: the kernel's requests turned into namespace ops and block reads/writes.

Holds operations (the pyfuse3 handlers), inodes (kernel inode numbers for global IDs), files
(file contents: buffers, sealing, reads), buffers, xattrs, remote (kernel cache invalidation
for ops from other nodes), compaction and fsck (the namespace's invariants).

May import: ``dhtfs.base``, ``dhtfs.net``, ``dhtfs.store``, ``dhtfs.blocks``, ``dhtfs.meta``.
"""
