"""``dhtfs status``, ``dhtfs peers``, ``dhtfs stat PATH``: what a running node is doing.

``status`` and ``peers`` ask the node's control socket (found from a PATH on its mount, by
default the current directory, or from ``--state DIR``); ``stat`` reads the ``user.dhtfs.*``
xattrs the mount serves for PATH (its extents; its providers, which the mount looks up in the
DHT, at most ``dhtfs.runtime.mountnode.LOCATE_DEADLINE`` seconds). Human tables by default,
``--json`` for scripts; see ``dhtfs.commands.target`` for the exit status.

Blocks held by kind: ``origin`` (written here, waiting for
replication: the replication backlog), ``cached`` (the disk cache's index), ``swarm`` (the
rest: held as one of the R closest nodes, or written here and already replicated).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import stat as statmod
import time
from pathlib import Path
from typing import Any

from dhtfs.base.errors import DhtfsError
from dhtfs.commands.target import (
    EXIT_HELP,
    Control,
    add_target,
    control_socket,
    exits_3_without_node,
    ms_text,
    plain,
    print_json,
    print_table,
    size_text,
    socket_of,
)
from dhtfs.net.addresses import advertised_text

STATUS_TIMEOUT = 30.0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="the node: ID, swarm, address, peers, blocks, backlog",
                       description="What the node at PATH (or --state DIR) is doing.",
                       epilog=EXIT_HELP)
    add_target(p)
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("peers", help="the node's peers: address, ID, RTT, last seen, penalties",
                       description="The peers in the routing table of the node at PATH (or "
                       "--state DIR): RTT is an EWMA of every RPC's round trip; last seen: "
                       "seconds since it last answered or called; penalties: answers that "
                       "failed verification.", epilog=EXIT_HELP)
    add_target(p)
    p.set_defaults(func=cmd_peers)
    p = sub.add_parser("stat", help="a file's blocks, replicas and providers (with RTT)",
                       description="How the file PATH on a dhtfs mount is stored: its blocks, "
                       "how many nodes announce each, and those providers with the RTT "
                       "measured to each.", epilog=EXIT_HELP)
    p.add_argument("path", type=Path, help="a file on a dhtfs mount")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(func=cmd_stat)


# -- status ------------------------------------------------------------------------------------


def blocks_by_kind(st: dict[str, Any]) -> dict[str, int]:
    total = int(st.get("chunks", 0))
    origin = int(st.get("replication", {}).get("pending", 0))
    cached = int(st.get("cache", {}).get("blocks", 0))
    return {"total": total, "origin": origin, "cached": cached,
            "swarm": max(0, total - origin - cached)}


@exits_3_without_node
def cmd_status(args: argparse.Namespace) -> int:
    with Control(socket_of(args)) as ctl:
        st = ctl.call("status", timeout=STATUS_TIMEOUT)
    st["blocks"] = blocks_by_kind(st)
    if args.json:
        print_json(st)
        return 0
    rows: list[list[str]] = [["node ID", plain(st["node_id"])]]
    if st.get("swarm"):
        rows.append(["swarm", st["swarm"]])
    if bound := st.get("bound"):
        rows.append(["listen", ", ".join(bound)])
        rows.append(["advertised", advertised_text(st.get("advertised") or {})])
    else:  # a node from before these fields
        rows.append(["listen", st["listen"]])
    if st.get("mountpoint"):
        rows.append(["mount", f"{st['mountpoint']} (pid {st.get('pid')})"])
    rows.append(["peers", str(st["peers"])])
    b = st["blocks"]
    rows.append(["blocks", f"{b['total']} held: {b['origin']} origin (waiting for "
                 f"replication), {b['cached']} cached, {b['swarm']} for the swarm"])
    if cache := st.get("cache"):
        rows.append(["cache", f"{cache['blocks']} blocks, {size_text(cache['bytes'])} of "
                     f"{size_text(cache['capacity'])} ({cache['evicted']} evicted)"])
    if rep := st.get("replication"):
        rows.append(["replication", f"backlog {rep['pending']} blocks "
                     f"({size_text(rep['pending_bytes'])}), {rep['replicated']} placed, "
                     f"{rep['incomplete']} short of replicas"])
    if log := st.get("oplog"):
        rows.append(["op log", f"{log['ops']} ops from {log['origins']} origins; lag "
                     f"{log['lag']} ops (missing here, as the peers last reported)"])
    if rp := st.get("repair"):
        rows.append(["repair", f"{rp['passes']} passes, {rp['pushed']} blocks pushed"])
    if co := st.get("collection"):
        rows.append(["collection", f"{co['passes']} passes, {co['marked']} blocks marked "
                     f"unreferenced, {co['reclaimed']} reclaimed"])
    if d := st.get("discovery"):
        rows.append(["discovery", f"{d.get('state', 'on')}: {d.get('found', 0)} found on the "
                     f"LAN, {d.get('joined', 0)} joined, {d.get('ignored_foreign', 0)} "
                     f"announcements of other swarms ignored"])
    else:
        rows.append(["discovery", "off"])
    if st.get("crl"):
        rows.append(["revocation", f"list number {st['crl']}; {st.get('refusals', 0)} "
                     f"handshakes refused"])
    if st.get("metrics"):
        rows.append(["metrics", f"http://{st['metrics']}/metrics"])
    if gw := st.get("http"):
        ttfb = gw["ttfb_seconds"]
        mean = ttfb["sum"] / ttfb["count"] * 1000 if ttfb["count"] else 0.0
        answered = ", ".join(f"{n} x {code}" for code, n in gw["requests"].items()) or "none"
        scheme = "https" if gw.get("tls") else "http"
        rows.append(["http", f"{scheme}://{gw['address']}/ (read-only): requests {answered}; "
                     f"{size_text(gw['bytes_sent'])} sent; first byte after {mean:.1f} ms "
                     f"on average; {gw['connections']} connections open"])
    print_table(["", ""], rows, header=False)
    return 0


# -- peers -------------------------------------------------------------------------------------


@exits_3_without_node
def cmd_peers(args: argparse.Namespace) -> int:
    with Control(socket_of(args)) as ctl:
        answer = ctl.call("peers", timeout=STATUS_TIMEOUT)
    peers = []
    for p in answer["peers"]:
        node_id, host, port, rtt, penalties = p[:5]
        peers.append({"node_id": plain(node_id), "address": f"{host}:{port}",
                      "rtt_ms": None if rtt is None else round(rtt * 1000, 3),
                      "last_seen_s": None if len(p) < 6 or p[5] is None else round(p[5], 3),
                      "penalties": penalties})
    peers.sort(key=lambda d: (d["rtt_ms"] is None, d["rtt_ms"] or 0.0, d["node_id"]))
    if args.json:
        print_json({"peers": peers})
        return 0
    rows = [[d["address"], d["node_id"], ms_text(None if d["rtt_ms"] is None
                                                 else d["rtt_ms"] / 1000),
             "-" if d["last_seen_s"] is None else f"{d['last_seen_s']:.1f} s ago",
             str(d["penalties"])] for d in peers]
    print_table(["ADDRESS", "NODE ID", "RTT (EWMA)", "LAST SEEN", "PENALTIES"], rows,
                title=f"{len(peers)} peers")
    return 0


# -- stat --------------------------------------------------------------------------------------


def _xattr(path: Path, name: str) -> bytes | None:
    """A ``user.dhtfs.*`` value; None when it is too large for an xattr (E2BIG/ERANGE)."""
    try:
        return os.getxattr(path, name)
    except FileNotFoundError:
        raise DhtfsError(f"{path}: no such file or directory") from None
    except OSError as exc:
        if exc.errno in (errno.E2BIG, errno.ERANGE):
            return None
        control_socket(path)  # NoNode when PATH is not on a dhtfs mount
        raise DhtfsError(f"{path}: cannot read {name}: {exc.strerror}") from None


def _providers_by_control(path: Path, blocks: list[str]) -> dict[str, list[list[Any]]]:
    """Providers of ``blocks`` through the control socket (for a file whose list does not
    fit in an xattr), with the RTT the node measured to each."""
    with Control(control_socket(path)) as ctl:
        rtts = {bytes(p[0]).hex(): p[3] for p in ctl.call("peers")["peers"]}
        out = {}
        for block in blocks:
            provs = ctl.call("providers", {"id": bytes.fromhex(block)})["providers"]
            out[block] = [[bytes(n).hex(), f"{h}:{p}",
                           None if rtts.get(bytes(n).hex()) is None
                           else round(rtts[bytes(n).hex()] * 1000, 3)]
                          for n, h, p in provs]
    return out


@exits_3_without_node
def cmd_stat(args: argparse.Namespace) -> int:
    path: Path = args.path
    try:
        st = path.stat()
    except FileNotFoundError:
        raise DhtfsError(f"{path}: no such file or directory") from None
    raw = _xattr(path, "user.dhtfs.extents")
    if raw is None:
        raise DhtfsError(f"{path}: too many extents to list through an xattr (64 KiB)")
    extents = json.loads(raw)
    obj = (_xattr(path, "user.dhtfs.id") or b"").decode()
    blocks = list(dict.fromkeys(e[2] for e in extents))
    t0 = time.monotonic()
    raw = _xattr(path, "user.dhtfs.providers")
    found = ({b: provs for b, provs in json.loads(raw)} if raw is not None
             else _providers_by_control(path, blocks))
    elapsed = time.monotonic() - t0
    used: dict[str, int] = {}
    for _off, length, block, _boff in extents:
        used[block] = used.get(block, 0) + length
    doc = {
        "path": str(path), "id": obj, "size": st.st_size, "kind": _kind(st.st_mode),
        "extents": extents, "lookup_seconds": round(elapsed, 3),
        "blocks": [{"id": b, "bytes": used[b], "replicas": len(found.get(b, [])),
                    "providers": [{"node_id": n, "address": a, "rtt_ms": r}
                                  for n, a, r in found.get(b, [])]} for b in blocks],
    }
    if args.json:
        print_json(doc)
        return 0
    counts = [d["replicas"] for d in doc["blocks"]]
    summary = (f"{path}: {doc['kind']}, {st.st_size} bytes in {len(extents)} extents of "
               f"{len(blocks)} blocks")
    if counts:
        summary += f"; replicas per block {min(counts)}..{max(counts)}"
    rows = [[d["id"], str(d["bytes"]), str(d["replicas"]),
             "\n".join(f"{p['node_id'][:16]} {p['address']} "
                       f"{'-' if p['rtt_ms'] is None else format(p['rtt_ms'], '.2f') + ' ms'}"
                       for p in d["providers"]) or "-"] for d in doc["blocks"]]
    print(summary)
    if rows:
        print_table(["BLOCK", "BYTES", "REPLICAS", "PROVIDERS (node, address, RTT)"], rows)
    return 0


def _kind(mode: int) -> str:
    if statmod.S_ISREG(mode):
        return "regular file"
    if statmod.S_ISDIR(mode):
        return "directory"
    if statmod.S_ISLNK(mode):
        return "symbolic link"
    return "special file"


__all__ = ["cmd_peers", "cmd_stat", "cmd_status"]
