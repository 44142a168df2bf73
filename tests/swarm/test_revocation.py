"""Tier 5: revoking a node of a running swarm (real processes on 127.0.0.x).

``dhtfs ca revoke`` writes a CA-signed revocation list; given to one node, it spreads to the
others, which drop the revoked node and refuse it at every handshake from then on: it can
neither receive the tree's changes nor hand its own to anyone.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit import swarmctl
from testkit.observe import control
from testkit.wait import wait_until

pytestmark = [pytest.mark.mount, pytest.mark.slow]


def peer_ids(state: Path) -> set[str]:
    return {bytes(p[0]).hex() for p in control(state, "peers")["peers"]}


def refusals(state: Path) -> int:
    return int(control(state, "status")["refusals"])


def test_a_revoked_node_is_shut_out_of_the_swarm(tmp_path: Path) -> None:
    root = tmp_path / "swarm"
    with swarmctl.running_swarm(root, 4) as nodes:
        *members, revoked = nodes
        states = [n.state for n in nodes]
        wait_until(lambda: all(control(s, "status")["peers"] >= 3 for s in states),
                   "every node knows the three others")
        (members[0].mountpoint / "before").write_text("everyone\n")
        wait_until(lambda: all((n.mountpoint / "before").exists() for n in nodes),
                   "a file on every mount")
        res = swarmctl.run_cli("ca", "revoke", str(root / "ca"),
                               swarmctl.recorded(root)[revoked.name]["cert"])
        assert res.returncode == 0, res.stderr
        crl = (root / "ca" / "crl.pem").read_bytes()
        # One node is given the list; the two others learn it from their peers.
        assert control(members[0].state, "crl", {"crl": crl}) == {"adopted": True, "number": 1}
        assert control(members[1].state, "crl", {"crl": b"junk"})["adopted"] is False
        wait_until(lambda: all(control(m.state, "status").get("crl") == 1 for m in members),
                   "the list on every member", 60)
        wait_until(lambda: all(revoked.node_id not in peer_ids(m.state) for m in members),
                   "the members to drop the revoked node", 60)
        wait_until(lambda: control(revoked.state, "status")["peers"] == 0,
                   "the revoked node to lose every member", 60)
        # For good: nothing under way when the list arrived brings it back.
        assert all(revoked.node_id not in peer_ids(m.state) for m in members)
        # It keeps trying to rejoin, and is refused at the handshake each time.
        base = sum(refusals(m.state) for m in members)
        wait_until(lambda: sum(refusals(m.state) for m in members) > base,
                   "a handshake of the revoked node refused", 60)
        (members[0].mountpoint / "after").write_text("members only\n")
        (revoked.mountpoint / "intruder").write_text("from the revoked node\n")
        wait_until(lambda: all((m.mountpoint / "after").exists() for m in members),
                   "the members' change on every member")
        base = sum(refusals(m.state) for m in members)
        wait_until(lambda: sum(refusals(m.state) for m in members) > base,
                   "another refused handshake after both writes", 60)
        assert not (revoked.mountpoint / "after").exists()
        assert not any((m.mountpoint / "intruder").exists() for m in members)
        assert "revoked by the swarm CA" in members[0].log.read_text() + \
            members[1].log.read_text() + members[2].log.read_text()
