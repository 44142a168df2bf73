"""``dhtfs ca init DIR`` and ``dhtfs ca issue DIR NAME [--out DIR]``."""

from __future__ import annotations

import argparse
from pathlib import Path

from dhtfs.node import pki


def register(sub: argparse._SubParsersAction) -> None:
    ca = sub.add_parser("ca", help="create the swarm CA and issue node certificates")
    ca_sub = ca.add_subparsers(dest="ca_command", metavar="ACTION", required=True)
    init = ca_sub.add_parser("init", help="create a new swarm CA in DIR")
    init.add_argument("dir", type=Path)
    init.set_defaults(func=cmd_init)
    issue = ca_sub.add_parser("issue", help="issue a node key + certificate signed by the CA")
    issue.add_argument("dir", type=Path, help="the CA directory (ca.key, ca.crt)")
    issue.add_argument("name", help="node name: writes NAME.key and NAME.crt")
    issue.add_argument("--out", type=Path, help="where to write them (default: the CA dir)")
    issue.set_defaults(func=cmd_issue)


def cmd_init(args: argparse.Namespace) -> int:
    cert = pki.init_ca(args.dir)
    print(f"created swarm CA {cert} (keep {args.dir / pki.CA_KEY_NAME} secret)")
    return 0


def cmd_issue(args: argparse.Namespace) -> int:
    cert, key, node_id = pki.issue_node_cert(args.dir, args.name, args.out)
    print(f"issued {cert} and {key} node_id={node_id.hex()}")
    return 0
