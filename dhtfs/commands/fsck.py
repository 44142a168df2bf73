"""``dhtfs fsck [PATH|--state DIR] [--repair] [--json]``: check a mount's node.

The node does the work (control method ``fsck``: ``dhtfs.blocks.verify``, ``dhtfs.fs.fsck``):
every block it stores is read, unsealed (the AES-GCM tag, bound to the block ID) and its
SHA-256 compared with its ID, a page at a time in a worker thread of the node (progress on
stderr when it is a terminal); then the namespace's invariants. ``--repair``: each bad block
is removed and fetched again from peers (verified), and stored back.

Exit status: 0 nothing bad (or all of it repaired); 4 bad blocks left unrepaired or namespace
problems; 3 no node runs there; 1 an error (one line).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dhtfs.commands.target import (
    EXIT_PROBLEMS,
    Control,
    add_target,
    console,
    exits_3_without_node,
    plain,
    print_json,
    print_table,
    size_text,
    socket_of,
)

PAGE = 256  # blocks per request (the node reads and checks them in a worker thread)
REPAIR_BATCH = 16
PAGE_TIMEOUT = 150.0  # the node's own limit per request is 120 s


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fsck", help="verify every stored block and the namespace; --repair bad blocks",
        description="Verify every block the node at PATH (or --state DIR) stores (AES-GCM "
        "tag, SHA-256 against its ID) and the namespace's invariants; with --repair, fetch "
        "bad blocks again from peers.",
        epilog="exit status: 0 clean (or all repaired); 1 error; 2 bad usage; 3 no node "
        "runs at PATH/--state; 4 problems left (bad blocks not repaired, namespace problems)",
    )
    add_target(p)
    p.add_argument("--repair", action="store_true",
                   help="remove bad blocks and fetch them again from peers")
    p.set_defaults(func=cmd_fsck)


def _check_blocks(ctl: Control, show: bool) -> tuple[int, int, list[list[Any]]]:
    """Page through the node's blocks: (checked, bytes, [[id, reason], ...])."""
    checked = size = 0
    bad: list[list[Any]] = []
    after = b""
    progress = task = None
    try:
        while True:
            page = ctl.call("fsck", {"after": after, "limit": PAGE}, timeout=PAGE_TIMEOUT)
            if "total" in page and show:
                from rich.progress import MofNCompleteColumn, Progress

                progress = Progress(*Progress.get_default_columns(), MofNCompleteColumn(),
                                    console=console(stderr=True), transient=True)
                progress.start()
                task = progress.add_task("checking blocks", total=page["total"])
            checked += page["checked"]
            size += page["bytes"]
            bad.extend(page["bad"])
            if progress is not None and task is not None:
                progress.update(task, completed=checked)
            if page["next"] is None:
                return checked, size, bad
            after = page["next"]
    finally:
        if progress is not None:
            progress.stop()


@exits_3_without_node
def cmd_fsck(args: argparse.Namespace) -> int:
    with Control(socket_of(args)) as ctl:
        checked, size, bad = _check_blocks(ctl, show=sys.stderr.isatty() and not args.json)
        namespace = ctl.call("fsck", {"namespace": True}, timeout=PAGE_TIMEOUT)
        repaired: list[list[Any]] = []
        unrepairable: list[list[Any]] = []
        fine: list[bytes] = []
        if args.repair and bad:
            ids = [b[0] for b in bad]
            for i in range(0, len(ids), REPAIR_BATCH):
                got = ctl.call("fsck", {"repair": ids[i : i + REPAIR_BATCH]},
                               timeout=PAGE_TIMEOUT)
                repaired += got["repaired"]
                unrepairable += got["unrepairable"]
                fine += got["fine"]
    fixed = {bytes(r[0]) for r in repaired} | {bytes(f) for f in fine}
    left = [b for b in bad if bytes(b[0]) not in fixed]
    problems = namespace["problems"]
    report = {
        "blocks": {"checked": checked, "bytes": size, "bad": len(bad),
                   "repaired": len(repaired), "unrepairable": len(left) if args.repair else 0,
                   "left": len(left)},
        "bad": [{"id": plain(cid), "reason": why,
                 "repaired_from": next((plain(r[1]) for r in repaired if r[0] == cid), None)}
                for cid, why in bad],
        "unrepairable": [{"id": plain(cid), "reason": why} for cid, why in unrepairable],
        "namespace": namespace,
    }
    if args.json:
        print_json(report)
    else:
        b = report["blocks"]
        rows = [["blocks", f"{b['checked']} checked ({size_text(size)}), {b['bad']} bad, "
                 f"{b['repaired']} repaired, {b['unrepairable']} unrepairable"]]
        for d in report["bad"]:
            fate = (f"repaired from {d['repaired_from'][:16]}" if d["repaired_from"]
                    else "left as it was" if not args.repair else "NOT repaired")
            rows.append(["bad block", f"{d['id']}: {d['reason']}; {fate}"])
        for d in report["unrepairable"]:
            rows.append(["unrepairable", f"{d['id']}: {d['reason']}"])
        if namespace.get("headless"):
            rows.append(["namespace", "none here (a headless node): check it on a mount"])
        else:
            rows.append(["namespace", f"{namespace['objects']} objects, {namespace['links']} "
                         f"names, {namespace['extents']} extent rows: "
                         f"{len(problems) or 'no'} problems; {namespace['referenced']} "
                         f"blocks referenced, {namespace['held']} of them held here"])
        rows += [["problem", p] for p in problems]
        print_table(["", ""], rows, header=False)
        if left and not args.repair:
            print("run again with --repair to fetch the bad blocks from peers",
                  file=sys.stderr)
    return EXIT_PROBLEMS if left or problems else 0
