"""Looking at a running swarm from a test: control-socket calls, tree listings, convergence,
where a file's blocks are (its ``user.dhtfs.extents`` xattr, the nodes that hold them, the
XOR-closest ones) and a write that returns once replicated (fsync).

Every wait polls a condition under a deadline (``testkit.wait``); nothing sleeps a fixed time.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import trio

from dhtfs.net.control import ControlClient
from dhtfs.trust import pki
from testkit import swarmctl
from testkit.wait import DEADLINE, wait_until


def control(state: Path, method: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    """One control-socket request to the node whose state directory is ``state``."""

    async def call() -> dict[str, Any]:
        client = await ControlClient.connect(state / "control.sock")
        try:
            return await client.call(method, args or {}, timeout=60.0)
        finally:
            await client.aclose()

    return trio.run(call)


def listing(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every path under ``root`` → (kind, mode, size, uid, gid, sha256 of content or link
    target, xattrs), as ordinary tools see them through the mount."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(dirpath) / name
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                content = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                content = None
            xattrs = tuple(sorted(
                (n, os.getxattr(path, n, follow_symlinks=False))
                for n in os.listxattr(path, follow_symlinks=False)
            ))
            size = st.st_size if not stat.S_ISDIR(st.st_mode) else None
            out[str(path.relative_to(root))] = (
                stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), size, st.st_uid,
                st.st_gid, content, xattrs,
            )
    return out


def unfolded(state: Path) -> int:
    return int(control(state, "oplog")["unfolded"])


def digests(states: list[Path]) -> list[str]:
    return [control(s, "digest")["digest"] for s in states]


def vectors(states: list[Path]) -> list[dict[bytes, int]]:
    return [{o: s for o, s in control(st, "oplog")["vector"]} for st in states]


def converged(states: list[Path]) -> bool:
    """Every node holds the same ops and shows the same tree."""
    vs = vectors(states)
    return all(v == vs[0] for v in vs) and len(set(digests(states))) == 1


def wait_converged(states: list[Path], timeout: float = DEADLINE) -> None:
    wait_until(lambda: converged(states), "the nodes to converge", timeout)


def dir_size(path: Path) -> int:
    """Bytes the files under ``path`` take on disk (st_blocks)."""
    return sum(
        (Path(d) / f).lstat().st_blocks * 512 for d, _, files in os.walk(path) for f in files
    )


def member_options(ca_dir: Path, name: str, out: Path) -> list[str]:
    """Mount options (``ca``, ``cert``, ``cert_key``) of a new member of the swarm whose CA
    is in ``ca_dir`` (its certificate and key issued into ``out``)."""
    cert, key, _ = pki.issue_node_cert(ca_dir, name, out)
    return [f"ca={ca_dir / pki.CA_CERT_NAME}", f"cert={cert}", f"cert_key={key}"]


def blocks_of(path: Path) -> list[str]:
    return sorted({e[2] for e in json.loads(os.getxattr(path, "user.dhtfs.extents"))})


def holds(state: Path, block: str) -> bool:
    return (state / "chunks" / block[:2] / block[2:]).is_file()


def closest(nodes: list[swarmctl.NodeInfo], block: str, r: int) -> list[str]:
    key = int(block, 16)
    assert all(n.node_id for n in nodes)
    return sorted(
        (n.name for n in nodes), key=lambda name: int(by_name(nodes)[name].node_id, 16) ^ key
    )[:r]


def by_name(nodes: list[swarmctl.NodeInfo]) -> dict[str, swarmctl.NodeInfo]:
    return {n.name: n for n in nodes}


def write_fsynced(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and fsync it (on a swarm mount: replicated on return)."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
