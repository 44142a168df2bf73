"""``dhtfs chunk put|get|providers|peers|status``: talk to a running node's control socket.

What these store, fetch and locate are blocks (content-addressed by SHA-256, see
``docs/architecture.md``); the verb, its help and its output keep the first name, "chunk",
as the CLI and the control socket's keys are frozen.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import trio

from dhtfs.base.config import DEFAULT_STATE_ROOT
from dhtfs.base.errors import ConfigError
from dhtfs.net.control import CONTROL_SOCKET_NAME, ControlClient


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chunk", help="store, fetch and locate chunks through a running node")
    p.add_argument("--state", type=Path, default=DEFAULT_STATE_ROOT / "default",
                   help="the node's state directory (its control socket lives there)")
    csub = p.add_subparsers(dest="chunk_command", metavar="ACTION", required=True)
    put = csub.add_parser("put", help="store FILE (at most one chunk) and print its id")
    put.add_argument("file", type=Path)
    put.set_defaults(func=cmd_put)
    get = csub.add_parser("get", help="fetch chunk ID (hex) to stdout or --out")
    get.add_argument("id")
    get.add_argument("--out", type=Path)
    get.set_defaults(func=cmd_get)
    prov = csub.add_parser("providers", help="list the nodes that provide chunk ID")
    prov.add_argument("id")
    prov.set_defaults(func=cmd_providers)
    status = csub.add_parser("status", help="the node's id, address, peers, chunks")
    status.set_defaults(func=cmd_status)


def _call(args: argparse.Namespace, method: str, call_args: dict[str, Any]) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        client = await ControlClient.connect(args.state / CONTROL_SOCKET_NAME)
        try:
            return await client.call(method, call_args)
        finally:
            await client.aclose()

    return trio.run(go)


def _block_id(text: str) -> bytes:
    try:
        cid = bytes.fromhex(text)
    except ValueError:
        cid = b""
    if len(cid) != 32:
        raise ConfigError(f"chunk id {text!r}: expected 64 hex digits")
    return cid


def cmd_put(args: argparse.Namespace) -> int:
    try:
        data = args.file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{args.file}: {exc.strerror}") from None
    ans = _call(args, "put", {"data": data})
    print(f"{ans['id'].hex()} replicas={ans['replicas']} complete={ans['complete']}")
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    data = _call(args, "get", {"id": _block_id(args.id)})["data"]
    if args.out:
        args.out.write_bytes(data)
    else:
        sys.stdout.buffer.write(data)
    return 0


def cmd_providers(args: argparse.Namespace) -> int:
    for node_id, host, port in _call(args, "providers", {"id": _block_id(args.id)})["providers"]:
        print(f"{node_id.hex()} {host}:{port}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    ans = _call(args, "status", {})
    print(f"node_id={ans['node_id'].hex()} listen={ans['listen']} peers={ans['peers']} "
          f"chunks={ans['chunks']}")
    return 0
