"""The namespace: the tree as SQLite rows changed only by ops, and the ops as a log.

Holds ops (the op format and hybrid logical clock), namespace (applying ops, group commit),
schema, objectrows, undo, versions (file content versions and extents), extents (piece lists),
journal (the op journal), tree (POSIX checks that emit one op), history (the log, folding,
snapshots) and replica (the namespace as an op-log store). Knows nothing of FUSE or inodes.

May import: ``dhtfs.base``, ``dhtfs.oplog``.
"""
