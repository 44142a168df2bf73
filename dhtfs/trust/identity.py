"""A node's swarm identity: configured (``ca``, ``cert``, ``cert_key``), or a private swarm.

With none of the three keys a mount makes its own swarm in ``<state>/swarm/``: a CA
(``ca.key``, ``ca.crt``) and this node's certificate (``node.key``, ``node.crt``), private keys
0600 in the 0700 state directory. Other machines join it with certificates issued from that CA
(``dhtfs ca issue <state>/swarm NAME``). Invariant: a node never runs without a certificate
that chains to its swarm's CA; the three keys are given together or not at all.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from dhtfs.base.config import Config
from dhtfs.base.errors import ConfigError
from dhtfs.trust import pki

log = logging.getLogger(__name__)

PRIVATE_SWARM_DIR = "swarm"
NODE_NAME = "node"


def configured_identity(config: Config) -> pki.Identity | None:
    """The identity named by the config, or None when it names none (ConfigError if only
    some of ``ca``, ``cert``, ``cert_key`` are given, or they do not fit together)."""
    given = {k: getattr(config, k) for k in ("ca", "cert", "cert_key")}
    if not any(given.values()):
        return None
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise ConfigError(
            f"joining a swarm needs ca, cert and cert_key together; missing {', '.join(missing)}"
        )
    assert config.ca and config.cert and config.cert_key
    return pki.Identity.load(config.ca, config.cert, config.cert_key)


def private_swarm_identity(state: Path) -> pki.Identity:
    """This node's identity in its own private swarm under ``state``, created if missing."""
    ca_dir = state / PRIVATE_SWARM_DIR
    ca_cert = ca_dir / pki.CA_CERT_NAME
    if not ca_cert.exists():
        pki.init_ca(ca_dir, name=f"dhtfs private swarm {os.urandom(4).hex()}")
        log.info("created a private swarm CA in %s", ca_dir)
    cert, key = ca_dir / f"{NODE_NAME}.crt", ca_dir / f"{NODE_NAME}.key"
    if not cert.exists():
        pki.issue_node_cert(ca_dir, NODE_NAME, ca_dir)
    for path in (ca_cert, cert):  # nothing in a state directory is for other users
        os.chmod(path, 0o600)
    return pki.Identity.load(ca_cert, cert, key)


def load_or_create_identity(config: Config) -> pki.Identity:
    return configured_identity(config) or private_swarm_identity(config.state_dir)
