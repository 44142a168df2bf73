"""The ``dhtfs`` command line: one module per command group.

May import: any layer except ``dhtfs.sim``.
"""
