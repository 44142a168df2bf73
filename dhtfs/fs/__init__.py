"""The FUSE face: the kernel's requests turned into namespace ops and block reads/writes.

Holds operations (the pyfuse3 handlers), errnos (every handler's outcome as an errno),
attributes (stat and statfs replies), xattrs, inodes (kernel inode numbers for global IDs),
files (file contents: writes, truncate, flush), buffers (open files, write buffers, the
plaintext cache), reading (the read path), sealing (blocks sealed, stored and synced), remote
(kernel cache invalidation for ops from other nodes), compaction and fsck (the namespace's
invariants).

May import: ``dhtfs.base``, ``dhtfs.net``, ``dhtfs.store``, ``dhtfs.blocks``, ``dhtfs.meta``.
"""
