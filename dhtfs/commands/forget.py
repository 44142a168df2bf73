"""``dhtfs swarm forget NODE [PATH|--state DIR]``: stop waiting for a member that is gone.

Folding of the op log waits for every member's report; a member that never returns (a machine
thrown away, a node re-created under a new certificate) holds it back forever. This asks the
running node at PATH (a path on its mount, default the current directory) or ``--state DIR``
to forget NODE (a node ID or a unique prefix of one, as ``dhtfs peers``/``status`` show them,
or its certificate's common name). The decision spreads with the op log to every node
(``dhtfs.oplog.membership``); folding resumes everywhere once every member has heard of it. A
forgotten node that comes back rejoins with a snapshot; its changes nobody saw are made again.

Plain socket client (``dhtfs.commands.target``): no trio at start-up.
"""

from __future__ import annotations

import argparse
import sys

from dhtfs.base.errors import DhtfsError
from dhtfs.commands.target import EXIT_HELP, Control, add_target, exits_3_without_node, socket_of


def add_parser(ssub: argparse._SubParsersAction) -> None:
    """Register ``forget`` under ``dhtfs swarm``."""
    p = ssub.add_parser(
        "forget", help="forget a member that is gone, so that history folding resumes",
        description="Forget the member NODE (a node ID, a unique prefix of one, or its "
        "certificate's common name) on the swarm of the node at PATH (or --state DIR). Every "
        "node learns it within seconds and stops waiting for NODE before folding history. "
        "If NODE comes back, it rejoins with a snapshot and its unseen changes are applied "
        "again as new ops.", epilog=EXIT_HELP)
    p.add_argument("node", help="node ID (or unique prefix), or certificate common name")
    add_target(p)
    p.set_defaults(func=cmd_forget)


@exits_3_without_node
def cmd_forget(args: argparse.Namespace) -> int:
    with Control(socket_of(args)) as ctl:
        try:
            ans = ctl.call("forget", {"node": args.node})
        except DhtfsError as exc:
            raise DhtfsError(str(exc).rpartition("forget: ")[2]) from None
    node = ans["node"].hex()
    name = f" ({ans['name']})" if ans.get("name") else ""
    if args.json:
        import json

        print(json.dumps({"node": node, "name": ans.get("name"), "cut": ans.get("cut"),
                          "new": ans.get("new")}))
        return 0
    if ans.get("new"):
        print(f"forgot {node}{name}: the swarm keeps its first {ans.get('cut')} ops; "
              f"folding resumes once every member has heard (seconds)")
    else:
        print(f"{node}{name} was forgotten already", file=sys.stderr)
    return 0
