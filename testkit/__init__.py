"""The harness shared by the test suite (tests/) and the benchmarks (scripts/): not part of
dhtfs and not installed with it. Scripts put the repository root on ``sys.path``; pytest
finds it through the rootdir (``tests/conftest.py`` loads ``testkit.fixtures``).

Modules, lowest first (each imports only those above it, and ``dhtfs``):

- ``env``: the repository, the venv's tools, the environment of every child process.
- ``wait``: ``wait_until`` (sync) and ``wait_until_async``: poll a condition under a deadline.
- ``mounting``: ``Mount``, one ``mount.dhtfs -f`` process; ``is_mounted``, ``cleanup``.
- ``shell``: run a tool, act as another user, snapshot and build trees.
- ``nodeproc``: headless ``dhtfs node`` processes (``Swarm``, ``NodeProc``).
- ``nodehelpers``: node identities (good and bad), hostile wire peers, XOR orderings of ids.
- ``swarmctl``: drive ``dhtfs swarm`` (up, down, kill, restart).
- ``observe``: look at a running swarm (control calls, listings, convergence, block holders).
- ``forgetting``: the steps of the forget experiment (a member away, files made and deleted).
- ``smalldisk``: a tiny loop-mounted filesystem, to fill a node's disk.
- ``fixtures``: pytest fixtures (CAs, identities, mounts) every test folder can request.
- ``chaos``: the Jepsen-like concurrency harness (tests/swarm/test_chaos.py, scripts/chaos.py).
"""
