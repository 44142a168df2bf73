"""The directory of a ``dhtfs swarm``: its layout, ``swarm.json``, its lock, and the mount
options kept in it. Nothing here starts, stops or asks a node anything (``dhtfs.commands.swarm``
does, ``dhtfs.commands.swarmprocs`` knows the processes and mounts).

Layout, all made by ``dhtfs swarm up`` (DIR must be new, empty, or a swarm made by it)::

    DIR/swarm.json   {"nodes": [{"name", "host", "port", "state", "mountpoint", "cert", "key",
                                 "ca"}, ...]}
    DIR/ca/          ca.key ca.crt
    DIR/nodeI/       nodeI.crt nodeI.key  state/  mnt/

and the extra mount options kept for later runs: DIR/mount-options (every node's) and
DIR/nodeI/mount-options (node I's own, after them).

Invariants:
- node I listens on 127.0.0.(10+I), loopback only; everything but its port follows from DIR
  and I (paths are taken from the layout, so a moved DIR still works);
- swarm.json is written whole (temp file + rename); ``load_swarm`` refuses a DIR that is not
  empty and holds none, and a swarm.json that does not match the layout;
- one command per DIR at a time (``locked``: flock on DIR, bounded wait).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dhtfs.base.errors import ConfigError
from dhtfs.commands.swarmprocs import POLL
from dhtfs.net.control import CONTROL_SOCKET_NAME
from dhtfs.trust import pki

SWARM_FILE = "swarm.json"
FIRST_HOST = 10  # node I listens on 127.0.0.(FIRST_HOST + I)
MAX_NODES = 255 - FIRST_HOST  # up to 127.0.0.254
FULL_MESH_MAX = 20  # swarms up to this size wait until every node knows every other
LOCK_SECONDS = 120.0


@dataclass(slots=True)
class Node:
    """One node of the swarm; everything but ``port`` follows from DIR and the index."""

    name: str
    host: str
    port: int
    state: Path
    mountpoint: Path
    cert: Path
    key: Path
    ca: Path

    @classmethod
    def at(cls, root: Path, index: int) -> Node:
        name = f"node{index}"
        base = root / name
        return cls(name, f"127.0.0.{FIRST_HOST + index}", 0, base / "state", base / "mnt",
                   base / f"{name}.crt", base / f"{name}.key", root / "ca" / pki.CA_CERT_NAME)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def log(self) -> Path:
        return self.state / "dhtfs.log"

    @property
    def control(self) -> Path:
        return self.state / CONTROL_SOCKET_NAME

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "host": self.host, "port": self.port,
                "state": str(self.state), "mountpoint": str(self.mountpoint),
                "cert": str(self.cert), "key": str(self.key), "ca": str(self.ca)}


# -- swarm.json and the lock -----------------------------------------------------------------


def swarm_root(path: Path) -> Path:
    """``path`` made absolute with symlinks resolved (as /proc/mounts shows mount points)."""
    root = path.expanduser().resolve()
    if "," in str(root):
        raise ConfigError(f"{root}: a swarm directory cannot contain ',' (mount options do)")
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{root} is not a directory")
    return root


def load_swarm(root: Path) -> list[Node] | None:
    """The recorded nodes; None when ``root`` is missing or empty. Refuses anything else."""
    path = root / SWARM_FILE
    if not path.exists():
        if root.is_dir() and any(root.iterdir()):
            raise ConfigError(f"{root} is not empty and has no {SWARM_FILE}: not a swarm made by "
                              "'dhtfs swarm up' (use a new or empty directory)")
        return None
    try:
        data = json.loads(path.read_text())
        items = data["nodes"]
        if not isinstance(items, list):
            raise TypeError("'nodes' is not a list")
        return [_node_from_json(root, i, item) for i, item in enumerate(items)]
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path} is not a swarm file made by 'dhtfs swarm up' "
                          f"({type(exc).__name__}: {exc})") from None


def _node_from_json(root: Path, index: int, item: Any) -> Node:
    """The layout's node ``index`` with the recorded port; the recorded name and host must be
    the layout's (paths are taken from the layout, so a moved DIR still works)."""
    node = Node.at(root, index)
    if not isinstance(item, dict):
        raise TypeError(f"node {index} is not an object")
    if item["name"] != node.name or item["host"] != node.host:
        raise ValueError(f"node {index} should be {node.name} on {node.host}")
    port = item["port"]
    if type(port) is not int or not 0 <= port < 65536:
        raise ValueError(f"{node.name}: bad port {port!r}")
    node.port = port
    return node


def save_swarm(root: Path, nodes: Sequence[Node]) -> None:
    tmp = root / f".{SWARM_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"nodes": [n.to_json() for n in nodes]}, indent=2) + "\n")
    os.replace(tmp, root / SWARM_FILE)


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """Hold an exclusive flock on the directory ``root`` (the fd is not inherited)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        deadline = time.monotonic() + LOCK_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ConfigError(f"{root}: another 'dhtfs swarm' command still holds it "
                                      f"after {LOCK_SECONDS:.0f}s") from None
                time.sleep(POLL)
        yield
    finally:
        os.close(fd)


# -- mount options and join targets ----------------------------------------------------------


MANAGED_OPTIONS = ("state", "ca", "cert", "cert_key", "listen", "bootstrap")
OPTIONS_FILE = "mount-options"


def extra_options(root: Path, given: str | None, flag: str = "-o") -> list[str]:
    """The extra mount options: ``given`` (then kept in ``root``), else those kept before."""
    path = root / OPTIONS_FILE
    if given is not None:
        items = [o.strip() for o in given.split(",") if o.strip()]
        for item in items:
            if item.split("=", 1)[0].strip().replace("-", "_") in MANAGED_OPTIONS:
                raise ConfigError(f"{flag} {item}: 'swarm up' sets "
                                  f"{', '.join(MANAGED_OPTIONS)} itself")
        path.write_text(",".join(items) + "\n")
        return items
    if path.exists():
        return [o for o in path.read_text().strip().split(",") if o]
    return []


def node_options(root: Path, nodes: Sequence[Node], given: Sequence[str],
                 common: Sequence[str]) -> dict[str, list[str]]:
    """Each node's mount options: ``common`` then its own (``--node-options NODE:OPTS``, kept
    in DIR/NODE/mount-options, else those kept before)."""
    by_name = {n.name: n for n in nodes}
    own: dict[str, str] = {}
    for spec in given:
        name, sep, opts = spec.partition(":")
        if not sep or name not in by_name:
            raise ConfigError(f"--node-options {spec}: expected NODE:OPTS with NODE one of "
                              f"{', '.join(by_name)}")
        own[name] = opts
    return {n.name: [*common, *extra_options(n.state.parent, own.get(n.name),
                                             "--node-options")] for n in nodes}


def is_client(options: Sequence[str]) -> bool:
    """``storage=false`` (the last ``storage`` option wins, as for mount.dhtfs)."""
    value = "true"
    for item in options:
        key, sep, val = item.partition("=")
        if key.strip().replace("-", "_") == "storage":
            value = val.strip().lower() if sep else "true"
    return value in ("0", "false", "no", "off")


def joined_target(count: int) -> int:
    """Peers each node of a ``count``-node swarm must know before ``up`` returns."""
    return count - 1 if count <= FULL_MESH_MAX else 1


def join_targets(nodes: Sequence[Node], options: dict[str, list[str]]) -> dict[str, int]:
    """Peers each node must know before ``up`` returns: storage nodes count only the other
    storage nodes (a client is in nobody's routing table), a client every storage node."""
    storage = sum(not is_client(options[n.name]) for n in nodes)
    return {n.name: (min(storage, joined_target(storage + 1)) if is_client(options[n.name])
                     else joined_target(storage)) for n in nodes}

