"""``dhtfs swarm up --nodes N DIR`` and ``dhtfs swarm down DIR``: N mounting nodes on this
machine (a first look at a swarm; tests and benchmarks use it too). ``dhtfs swarm forget``
(a member that is gone, on any running node) lives in ``dhtfs.commands.forget``.

DIR's layout, ``swarm.json``, lock and kept options are ``dhtfs.commands.swarmdir``'s; the
processes and mounts ``dhtfs.commands.swarmprocs``'s. This module starts and stops the nodes.

Invariants:
- node I listens on 127.0.0.(10+I), loopback only. Its first start binds port 0 and the real
  port (from the control socket's ``status``) is recorded at once, so restarts reuse the
  address;
- swarm.json is written (temp file + rename) before anything else is created and after every
  change: a DIR that a failed ``up`` left is still a swarm, and the next ``up`` completes it
  (missing certificates are issued, existing ones are never replaced);
- ``up`` starts only the nodes that are not mounted (a stale mount of a dead daemon is lazily
  unmounted first), each bootstrapping to every other recorded address; when none runs, the
  first starts alone, then the rest in parallel. It returns once every node answers with at
  least ``joined_target(N)`` peers (with client-only nodes, ``storage=false`` in their own
  options: a storage node waits for the other storage nodes, a client for every storage node);
- ``-o`` options go to every node (kept in DIR/mount-options), ``--node-options NODE:OPTS``
  to one node after them (kept in DIR/NODE/mount-options); both are reused by later runs;
- ``down`` leaves no daemon running and nothing mounted (umount.dhtfs, SIGKILL past a deadline,
  lazy unmount of what is left) and is idempotent;
- one command per DIR at a time (flock on DIR); every wait has a deadline; failures are one
  line naming the node and its log.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import trio

from dhtfs.base.errors import ConfigError, DhtfsError
from dhtfs.commands import forget
from dhtfs.commands.swarmdir import (
    MAX_NODES,
    SWARM_FILE,
    Node,
    extra_options,
    join_targets,
    load_swarm,
    locked,
    node_options,
    save_swarm,
    swarm_root,
)
from dhtfs.commands.swarmprocs import (
    EXIT_SECONDS,
    POLL,
    UMOUNT_SECONDS,
    daemon_pids,
    is_live,
    kill,
    lazy_unmount,
    mounted,
    stale,
    wait_gone,
)
from dhtfs.net.control import ControlClient
from dhtfs.trust import pki

START_SECONDS = 60.0  # one mount.dhtfs until it returns, then its first status answer
JOIN_SECONDS = 60.0  # every node answering with enough peers
STATUS_SECONDS = 5.0  # one control call
REFRESH_EVERY = 3.0  # seconds between bucket refreshes asked of a node short of peers
PARALLEL = 16  # mount.dhtfs / umount.dhtfs processes at once
VENV_BIN = Path(sys.executable).parent


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("swarm", help="run a swarm of mounting nodes on this machine")
    ssub = p.add_subparsers(dest="swarm_command", metavar="ACTION", required=True)
    up = ssub.add_parser(
        "up", help="create and/or start the swarm in DIR",
        description="Start every node of the swarm in DIR that is not mounted (creating DIR, "
        "its CA and node certificates first), then wait until they have joined. Node I "
        "listens on 127.0.0.(10+I) and is mounted at DIR/nodeI/mnt.")
    up.add_argument("--nodes", type=int, metavar="N",
                    help="number of nodes (needed for a new DIR; more than recorded adds nodes)")
    up.add_argument("--json", action="store_true", help="print a JSON document, not a table")
    up.add_argument("-o", dest="options", metavar="OPTS",
                    help="more mount options for every node, e.g. replicas=2 (kept in "
                    "DIR/mount-options: later 'up' runs reuse them unless given -o again)")
    up.add_argument("--node-options", dest="node_options", action="append", default=[],
                    metavar="NODE:OPTS",
                    help="more mount options for one node, after -o's, e.g. "
                    "node2:storage=false for a client-only node (repeatable; kept in "
                    "DIR/NODE/mount-options and reused unless given again for that node)")
    up.add_argument("dir", type=Path)
    up.set_defaults(func=_one_line(cmd_up))
    down = ssub.add_parser("down", help="unmount every node of the swarm in DIR")
    down.add_argument("dir", type=Path)
    down.set_defaults(func=_one_line(cmd_down))
    forget.add_parser(ssub)  # dhtfs.commands.forget: a running node's membership


def _one_line(command: Callable[[argparse.Namespace], int]
              ) -> Callable[[argparse.Namespace], int]:
    """``command`` with file-system errors (a read-only or foreign DIR) as one-line errors."""

    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            raise ConfigError(f"{where}{exc.strerror or exc}") from None

    return run


def _say(message: str) -> None:
    print(f"dhtfs swarm: {message}", file=sys.stderr, flush=True)


# -- files and leftovers ---------------------------------------------------------------------


def _ensure_files(root: Path, nodes: Sequence[Node]) -> None:
    """CA, node certificates and directories, whichever are missing."""
    ca_dir = root / "ca"
    if not (ca_dir / pki.CA_CERT_NAME).exists():
        pki.init_ca(ca_dir)
    for node in nodes:
        if not (node.cert.exists() and node.key.exists()):
            pki.issue_node_cert(ca_dir, node.name, node.cert.parent)
        node.state.mkdir(parents=True, exist_ok=True, mode=0o700)
        _clean_stale(node)
        if not mounted(node.mountpoint):  # (mkdir would stat a mount: a hung one blocks)
            node.mountpoint.mkdir(parents=True, exist_ok=True)


def _clean_stale(node: Node) -> None:
    """Remove a mount whose daemon died, and a daemon whose mount is gone."""
    if mounted(node.mountpoint) and stale(node.mountpoint):
        _say(f"{node.name}: removing the stale mount at {node.mountpoint}")
        lazy_unmount(node.mountpoint)
    if not mounted(node.mountpoint):
        leftovers = daemon_pids(node.mountpoint)
        if leftovers:
            _say(f"{node.name}: killing daemon {leftovers} that has no mount")
            kill(leftovers)


def _run(argv: list[str], seconds: float) -> tuple[int, str]:
    """Run ``argv`` (no config file from /etc) under a deadline; (exit status, last stderr
    line). stderr goes to a file, not a pipe: a daemon child must not keep us waiting."""
    env = {**os.environ, "DHTFS_NO_SYSTEM_CONFIG": "1"}
    with tempfile.TemporaryFile("w+") as err:
        try:
            status = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=err, env=env, timeout=seconds, check=False).returncode
        except subprocess.TimeoutExpired:
            return -1, f"no answer within {seconds:.0f}s"
        except OSError as exc:
            raise ConfigError(f"cannot run {argv[0]}: {exc.strerror}") from None
        err.seek(0)
        lines = err.read().strip().splitlines()
    return status, (lines[-1] if lines else f"exit status {status}")


# -- control socket --------------------------------------------------------------------------


async def _call(node: Node, method: str, seconds: float = STATUS_SECONDS) -> dict[str, Any]:
    with trio.fail_after(seconds):
        client = await ControlClient.connect(node.control)
        try:
            return await client.call(method, timeout=seconds)
        finally:
            await client.aclose()


def _wait_ready(nodes: Sequence[Node], target: int | dict[str, int], seconds: float
                ) -> dict[str, dict[str, Any]]:
    """Poll each node's status until it has ``target`` peers (or its own, by name); record
    ports still 0. Returns the last answers; raises naming the first node that is not ready
    at the deadline or whose mount went away."""
    answers: dict[str, dict[str, Any]] = {}
    waiting = {n.name: "no answer on its control socket" for n in nodes}
    dead: list[Node] = []

    async def one(node: Node, cancel: Callable[[], None]) -> None:
        next_refresh = trio.current_time() + REFRESH_EVERY
        wanted = target if isinstance(target, int) else target[node.name]
        while True:
            try:
                ans = await _call(node, "status")
            except (DhtfsError, OSError, trio.TooSlowError) as exc:
                reason = str(exc) or f"no answer within {STATUS_SECONDS:.0f}s"
                waiting[node.name] = f"control socket: {reason}"
                if not await trio.to_thread.run_sync(is_live, node.mountpoint):
                    dead.append(node)
                    cancel()
                    return
            else:
                answers[node.name] = ans
                port = str(ans.get("listen", "")).rpartition(":")[2]
                if node.port == 0 and port.isdigit():
                    node.port = int(port)
                peers = ans.get("peers") if isinstance(ans.get("peers"), int) else 0
                if peers >= wanted:
                    del waiting[node.name]
                    return
                waiting[node.name] = f"{peers} of {wanted} peers"
                if trio.current_time() >= next_refresh:  # a nudge: look up every bucket now
                    next_refresh = trio.current_time() + REFRESH_EVERY
                    with contextlib.suppress(DhtfsError, OSError, trio.TooSlowError):
                        await _call(node, "refresh", 2 * STATUS_SECONDS)
            await trio.sleep(POLL)

    async def main() -> None:
        with trio.move_on_after(seconds):
            async with trio.open_nursery() as nursery:
                for node in nodes:
                    nursery.start_soon(one, node, nursery.cancel_scope.cancel)

    trio.run(main)
    if dead:
        node = dead[0]
        raise DhtfsError(f"{node.name} is no longer mounted at {node.mountpoint} (its daemon "
                         f"exited?); see {node.log}")
    if waiting:
        node = next(n for n in nodes if n.name in waiting)
        more = f" (and {len(waiting) - 1} more)" if len(waiting) > 1 else ""
        raise DhtfsError(f"{node.name} not ready after {seconds:.0f}s: {waiting[node.name]}"
                         f"{more}; see {node.log}")
    return answers


# -- up --------------------------------------------------------------------------------------


def _start(node: Node, bootstrap: Sequence[str], extra: Sequence[str] = ()) -> str | None:
    """Run ``mount.dhtfs`` for ``node``; None once mounted, else the one-line reason."""
    opts = [f"state={node.state}", f"ca={node.ca}", f"cert={node.cert}",
            f"cert_key={node.key}", f"listen={node.address}", *extra]
    if bootstrap:
        opts.append("bootstrap=" + "+".join(bootstrap))
    argv = [str(VENV_BIN / "mount.dhtfs"), str(node.mountpoint), "-o", ",".join(opts)]
    status, reason = _run(argv, START_SECONDS)
    return None if status == 0 else f"{node.name} did not mount: {reason}; see {node.log}"


def _start_batch(
    root: Path, nodes: Sequence[Node], batch: Sequence[Node], extra: dict[str, list[str]]
) -> None:
    """Start ``batch`` in parallel, each bootstrapping to every other recorded address; record
    the ports they got (also when some failed), then raise the first failure."""
    if not batch:
        return
    boot = {n.name: [o.address for o in nodes if o is not n and o.port] for n in batch}
    with ThreadPoolExecutor(min(PARALLEL, len(batch))) as pool:
        failures = list(pool.map(lambda n: _start(n, boot[n.name], extra[n.name]), batch))
    started = [n for n, failure in zip(batch, failures, strict=True) if failure is None]
    try:
        _wait_ready(started, 0, START_SECONDS)
    finally:
        save_swarm(root, nodes)
    for node in started:
        _say(f"{node.name}: mounted at {node.mountpoint}, listening on {node.address}")
    errors = [f for f in failures if f is not None]
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise DhtfsError(errors[0] + more)


def cmd_up(args: argparse.Namespace) -> int:
    root = swarm_root(args.dir)
    if args.nodes is not None and not 1 <= args.nodes <= MAX_NODES:
        raise ConfigError(f"--nodes {args.nodes}: expected 1 to {MAX_NODES}")
    if load_swarm(root) is None and args.nodes is None:  # refuses a foreign DIR first
        raise ConfigError(f"{root} holds no swarm yet: give --nodes N")
    root.mkdir(parents=True, exist_ok=True)
    with locked(root):
        nodes = load_swarm(root) or []
        count = args.nodes or len(nodes)
        if count < len(nodes):
            raise ConfigError(f"{root} has {len(nodes)} nodes; 'up' cannot remove nodes "
                              f"(run 'dhtfs swarm down', then use a new directory)")
        nodes += [Node.at(root, i) for i in range(len(nodes), count)]
        save_swarm(root, nodes)
        _ensure_files(root, nodes)
        extra = node_options(root, nodes, args.node_options,
                             extra_options(root, args.options))
        todo = [n for n in nodes if not is_live(n.mountpoint)]
        for node in nodes:
            if node not in todo:
                _say(f"{node.name}: already mounted at {node.mountpoint}")
        if todo and len(todo) == len(nodes):  # nothing runs: one node first, for the others
            _start_batch(root, nodes, todo[:1], extra)
            todo = todo[1:]
        _start_batch(root, nodes, todo, extra)
        answers = _wait_ready(nodes, join_targets(nodes, extra), JOIN_SECONDS)
        save_swarm(root, nodes)
    _print_nodes(nodes, answers, args.json)
    return 0


def _print_nodes(nodes: Sequence[Node], answers: dict[str, dict[str, Any]], as_json: bool
                 ) -> None:
    if not as_json:
        width = max(len(n.name) for n in nodes)
        mp_width = max(len(str(n.mountpoint)) for n in nodes)
        for n in nodes:
            print(f"{n.name:<{width}}  {n.mountpoint!s:<{mp_width}}  {n.address}")
        return
    out = []
    for n in nodes:
        ans = answers.get(n.name, {})
        pid = ans.get("pid")
        if not isinstance(pid, int):
            pids = daemon_pids(n.mountpoint)
            pid = pids[0] if pids else None
        node_id = ans.get("node_id")
        out.append({**n.to_json(), "address": n.address, "log": str(n.log),
                    "control": str(n.control), "pid": pid, "peers": ans.get("peers"),
                    "node_id": node_id.hex() if isinstance(node_id, bytes) else None})
    print(json.dumps({"nodes": out}, indent=2))


# -- down ------------------------------------------------------------------------------------


def _stop(node: Node) -> str | None:
    """Unmount ``node`` and make sure its daemon is gone; None when nothing is left."""
    pids = set(daemon_pids(node.mountpoint))
    if mounted(node.mountpoint):
        with contextlib.suppress(DhtfsError, OSError, trio.TooSlowError):
            pid = trio.run(_call, node, "status", 2.0).get("pid")
            if isinstance(pid, int):
                pids.add(pid)
    if not pids and not mounted(node.mountpoint):
        _say(f"{node.name}: not running")
        return None
    note = ""
    if mounted(node.mountpoint):
        status, reason = _run([str(VENV_BIN / "umount.dhtfs"), str(node.mountpoint)],
                              UMOUNT_SECONDS)
        if status != 0:
            note = f" (umount.dhtfs: {reason})"
    survivors = wait_gone(sorted(pids), EXIT_SECONDS)
    if survivors:
        note += f" (killed daemon {survivors} after {EXIT_SECONDS:.0f}s)"
        survivors = kill(survivors)
    if mounted(node.mountpoint):
        lazy_unmount(node.mountpoint)
    if survivors or mounted(node.mountpoint):
        return f"{node.name}: could not stop daemon {survivors} / unmount {node.mountpoint}"
    _say(f"{node.name}: stopped{note}")
    return None


def cmd_down(args: argparse.Namespace) -> int:
    root = swarm_root(args.dir)
    if not (root / SWARM_FILE).is_file():
        raise ConfigError(f"{root}: no {SWARM_FILE}, not a swarm made by 'dhtfs swarm up'")
    with locked(root):
        nodes = load_swarm(root) or []
        if not nodes:
            return 0
        with ThreadPoolExecutor(min(PARALLEL, len(nodes))) as pool:
            errors = [e for e in pool.map(_stop, nodes) if e is not None]
    if errors:
        raise DhtfsError(errors[0] + (f" (and {len(errors) - 1} more)" if len(errors) > 1
                                      else ""))
    return 0
