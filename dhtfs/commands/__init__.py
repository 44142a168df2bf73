"""``dhtfs`` command groups; each module has ``register(subparsers)`` (see ``dhtfs.cli``)."""
