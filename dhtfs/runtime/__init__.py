"""Running a node: the one assembly of a mount or headless node, its tasks and signals.

Holds assembly (the one node assembly: transport, Kademlia node, disk cache, op-log
replication, collection, repair, discovery, metrics, control socket), joining (the one rejoin
rule), mountnode and mountcontrol (what a mount adds: the namespace side, its control methods),
headless (a node without a mount), localfs (a mount's state directory and the filesystem
built over it), service (a mount's process: FUSE loop, signals, shutdown) and metrics
(Prometheus).

May import: every layer below (not ``dhtfs.commands``, not ``dhtfs.sim``).
"""
