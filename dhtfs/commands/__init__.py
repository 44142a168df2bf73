"""The ``dhtfs`` command line: one module per command group.

Holds ca (``dhtfs ca``: the swarm CA, issuing and revoking certificates), chunk (``dhtfs
chunk``: put/get blocks through a running node), fsck, node (``dhtfs node``: a headless node),
status (``dhtfs status``, ``peers``, ``stat``), swarm (``dhtfs swarm up|down``: N mounts on
this machine), forget (``dhtfs swarm forget``), sync; and what they share: target (finding a
running node and calling its control socket, output helpers), swarmdir (a swarm directory's
layout, ``swarm.json`` and lock) and swarmprocs (processes and mounts of ``dhtfs swarm``).

May import: any layer except ``dhtfs.sim``.
"""
