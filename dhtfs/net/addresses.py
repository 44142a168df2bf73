"""Where a node listens and what it tells peers: the two addresses ``dhtfs status`` shows.

A node binds its listening sockets (``bound``) and, in its HELLO, advertises where peers may
dial it back (``advertised``). They differ on purpose:

- bound to a wildcard (``0.0.0.0``/``::``, the zero-config default): the HELLO names no host,
  so each peer records the address it sees the connection come from; another machine reaches
  this node at one of the machine's interface addresses, listed in ``candidates`` (loopback
  and link-local ones left out: they are no use to another machine);
- bound to one address: that address is advertised as it is;
- a client-only node (``storage=false``) advertises port 0: nobody dials it back or routes to
  it.

No trio here: the control-socket handlers of mounts and headless nodes build the answer.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

log = logging.getLogger(__name__)

WILDCARD_HOSTS = ("", "0.0.0.0", "::")


def host_port(host: str, port: int) -> str:
    """``HOST:PORT``, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def interface_addresses(*, ipv6: bool) -> list[str]:
    """This machine's addresses another machine could dial: no loopback, no link-local.
    Empty if they cannot be listed (``ifaddr``, which zeroconf needs, is missing)."""
    try:
        import ifaddr  # a dependency of zeroconf
    except ImportError:  # pragma: no cover - zeroconf always brings it
        return []
    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            text = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            try:
                addr = ipaddress.ip_address(text)
            except ValueError:
                continue
            if addr.is_loopback or addr.is_link_local or (addr.version == 6 and not ipv6):
                continue
            found.append(text)
    return sorted(set(found), key=lambda a: (":" in a, a))


def describe(bound: list[tuple[str, int]], *, client: bool) -> dict[str, Any]:
    """The ``bound``/``advertised`` part of a status answer for listening sockets ``bound``
    (``(host, port)`` as ``getsockname`` gives them)."""
    port = bound[0][1] if bound else 0
    wildcard = any(host in WILDCARD_HOSTS for host, _ in bound)
    answer: dict[str, Any] = {"bound": [host_port(h, p) for h, p in bound]}
    if client:
        answer["advertised"] = {"address": "", "port": 0, "candidates": [],
                                "note": "client-only: peers never dial this node"}
    elif wildcard:
        ipv6 = any(":" in host for host, _ in bound)
        answer["advertised"] = {
            "address": "", "port": port,
            "candidates": [host_port(a, port) for a in interface_addresses(ipv6=ipv6)],
            "note": "peers record the address this node connects from",
        }
    else:
        host = bound[0][0]
        answer["advertised"] = {"address": host_port(host, port), "port": port,
                                "candidates": [host_port(host, port)], "note": ""}
    return answer


def advertised_text(adv: dict[str, Any]) -> str:
    """One line for ``dhtfs status``: what another machine should use as ``bootstrap=``."""
    if adv.get("port", 0) == 0:
        return adv.get("note") or "nothing (client-only)"
    if adv.get("address"):
        return adv["address"]
    candidates = adv.get("candidates") or []
    where = ", ".join(candidates) if candidates else f"this machine's address, port {adv['port']}"
    return f"{where} (any interface; {adv.get('note', '')})"
