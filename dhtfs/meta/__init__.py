"""The namespace: the tree as SQLite rows changed only by ops, and the ops as a log.

Modules, lowest first (each imports only modules above it in this list):

- ``ops`` (the op format and hybrid logical clock), ``extents`` (a chunk's piece list: ranges
  of blocks), ``journal`` (the op journal);
- ``schema``: the tables, the ``objects`` row type, opening a database and upgrading an older
  state directory;
- ``rows``: reading the tables through caches (``NamespaceRows``);
- ``undo``: one op's writes with their before-images, and putting those back;
- ``versions``: the rules of content changes (file versions, conflict copies);
- ``changes``: the rules of every other change (``TreeChanges``);
- ``namespace``: ``Namespace``, applying ops in order with group commit;
- ``history`` (the log, folding, snapshots), ``tree`` (POSIX checks that emit one op) and
  ``replica`` (the namespace as an op-log store).

Knows nothing of FUSE or inodes.

May import: ``dhtfs.base``, ``dhtfs.oplog``.
"""
