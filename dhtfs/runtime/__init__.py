"""Running a node: the one assembly of a mount or headless node, its tasks and signals.

Holds service (a mount's process: state, FUSE loop, shutdown), swarmnode (a node's network
side), headless (a node without a mount) and metrics (Prometheus).

May import: every layer below (not ``dhtfs.commands``, not ``dhtfs.sim``).
"""
