"""``dhtfs ca init DIR``, ``dhtfs ca issue DIR NAME [--out DIR]``, ``dhtfs ca revoke DIR NAME``
and ``dhtfs ca list DIR``."""

from __future__ import annotations

import argparse
from pathlib import Path

from dhtfs.base.errors import ConfigError
from dhtfs.trust import pki, revocation


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
    revoke = ca_sub.add_parser(
        "revoke", help="add a node's certificate to the swarm's revocation list (DIR/crl.pem)")
    revoke.add_argument("dir", type=Path, help="the CA directory (ca.key, ca.crt)")
    revoke.add_argument("name", help="node name (DIR/NAME.crt) or the path of its certificate")
    revoke.set_defaults(func=cmd_revoke)
    listing = ca_sub.add_parser("list", help="show the certificates the CA has revoked")
    listing.add_argument("dir", type=Path, help="the CA directory")
    listing.set_defaults(func=cmd_list)


def cmd_init(args: argparse.Namespace) -> int:
    cert = pki.init_ca(args.dir)
    print(f"created swarm CA {cert} (keep {args.dir / pki.CA_KEY_NAME} secret)")
    return 0


def cmd_issue(args: argparse.Namespace) -> int:
    cert, key, node_id = pki.issue_node_cert(args.dir, args.name, args.out)
    print(f"issued {cert} and {key} node_id={node_id.hex()}")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    cert = Path(args.name)
    if not (cert.suffix == ".crt" and cert.exists()):
        cert = args.dir / f"{args.name}.crt"
    if not cert.exists():
        raise ConfigError(f"no certificate {cert}: give the node's name in {args.dir} or the "
                          f"path of its .crt")
    path, number = revocation.revoke(args.dir, cert)
    print(f"revoked {cert}: revocation list number {number} in {path}. Give it to any node "
          f"(-o crl=PATH, re-read when the file changes): nodes pass a newer list on to each "
          f"other, and drop the peers it revokes")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    number, revoked = revocation.list_revoked(args.dir)
    print(f"revocation list number {number}: {len(revoked)} revoked")
    for serial, when in revoked:
        print(f"  serial {serial:x}  revoked {when:%Y-%m-%d %H:%M} UTC")
    return 0
