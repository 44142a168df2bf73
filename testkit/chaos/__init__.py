"""A concurrency harness in the spirit of Jepsen: seeded random concurrent ops from several
mounts on one small shared tree, with node kills, partitions and a full disk injected
mid-run, then checks (``checker``): only race errnos, convergence to one tree, no
acknowledged loss. ``run_chaos(ChaosConfig(seed=...), workdir)`` returns a ``Report``.

Modules: ``model`` (the tree, op records, allowed errnos), ``workload`` (seeded op sequences,
running one op), ``faults`` (fault schedule, injector, small disks), ``checker`` (the
checks), ``run`` (one run, its report and figures).
"""

from testkit.chaos.run import ChaosConfig, Report, run_chaos

__all__ = ["ChaosConfig", "Report", "run_chaos"]
