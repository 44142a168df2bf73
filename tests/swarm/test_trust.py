"""Who may change the tree: only members of the swarm's CA, and only with their own ops.

A mount with a certificate from another CA sees nothing and stores nothing; an op whose
signature does not verify, or whose body claims another node, is dropped everywhere, and the
peer that relayed it is penalized.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
import trio

from dhtfs.meta.ops import ROOT_OBJ, Op, encode_op, new_id
from dhtfs.net.transport import Transport
from dhtfs.oplog import replicator as oplog
from dhtfs.oplog.entries import chain_link, chain_start
from dhtfs.oplog.replicator import Signatures
from dhtfs.trust import pki
from testkit import swarmctl
from testkit.mounting import Mount
from testkit.observe import control, listing, member_options, wait_converged
from testkit.wait import wait_until

pytestmark = [pytest.mark.mount, pytest.mark.slow]


def _create_op(node: bytes, name: bytes) -> Op:
    obj, now = new_id(), time.time_ns()
    return Op(now, node, (
        {"c": "mkobj", "obj": obj, "kind": 0o100000, "mode": 0o644, "uid": 0, "gid": 0,
         "rdev": 0, "target": None, "time": now},
        {"c": "link", "link": new_id(), "parent": ROOT_OBJ, "name": name, "obj": obj},
    ))


def _head(state: Path, origin: bytes) -> bytes:
    """The chain link of ``origin``'s last op in the namespace at ``state`` (read-only)."""
    db = sqlite3.connect(f"file:{state / 'namespace.db'}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT link FROM oplog WHERE node=? ORDER BY seq DESC LIMIT 1",
                         (origin,)).fetchone()
    finally:
        db.close()
    return row[0] if row else chain_start(origin)


def _cert_der(path: Path) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return pki.load_cert(path).public_bytes(serialization.Encoding.DER)


def test_foreign_ca_mount_sees_and_stores_nothing(tmp_path: Path) -> None:
    root = tmp_path / "swarm"
    with swarmctl.running_swarm(root, 2) as nodes:
        a, b = (n.mountpoint for n in nodes)
        (a / "secret.txt").write_bytes(b"members only\n")
        foreign_ca = tmp_path / "foreign-ca"
        pki.init_ca(foreign_ca)
        intruder = Mount(tmp_path / "intruder-mnt", tmp_path / "intruder-state", options=[
            *member_options(foreign_ca, "intruder", tmp_path / "intruder"),
            "listen=127.0.0.40:0", f"bootstrap={nodes[0].address}+{nodes[1].address}",
        ])
        intruder.start()
        try:
            (intruder.mountpoint / "planted").write_bytes(b"from outside")
            (a / "after").write_bytes(b"written after the intruder came")
            wait_until(lambda: (b / "after").exists(), "a's file on b")
            assert control(intruder.state, "status")["peers"] == 0
            assert sorted(listing(intruder.mountpoint)) == ["planted"]
            chunks = intruder.state / "chunks"
            held = [p for p in chunks.rglob("*") if p.is_file()]
            assert len(held) == 1  # its own file's block, nothing of the swarm's
            wait_converged([n.state for n in nodes])
            assert "planted" not in listing(a) and "planted" not in listing(b)
            assert "TLS handshake failed" in intruder.log_text()
        finally:
            intruder.close()


def test_forged_ops_are_dropped_and_their_relay_penalized(tmp_path: Path) -> None:
    root = tmp_path / "swarm"
    with swarmctl.running_swarm(root, 2) as nodes:
        victim = nodes[0]
        victim_id = control(victim.state, "status")["node_id"]
        cert, key, forger_id = pki.issue_node_cert(root / "ca", "forger", tmp_path / "forger")
        ident = pki.Identity(root / "ca" / "ca.crt", cert, key, forger_id)
        signer = Signatures(ident)
        victim_cert = _cert_der(root / victim.name / f"{victim.name}.crt")

        forged_as_victim = _create_op(victim_id, b"forged-as-victim")
        body = encode_op(forged_as_victim)
        vector = {o: s for o, s in control(victim.state, "oplog")["vector"]}
        next_seq = vector.get(victim_id, 0) + 1  # what the victim's next op would be
        victim_head = _head(victim.state, victim_id)  # the chain the forgery must extend
        claims_other = encode_op(_create_op(victim_id, b"claims-another-node"))
        legit = encode_op(_create_op(forger_id, b"legit-from-forger"))

        async def inject() -> list[dict]:
            transport = Transport(ident, "127.0.0.41", 0)
            answers = []
            async with trio.open_nursery() as nursery:
                await nursery.start(transport.serve)
                host, port = victim.host, victim.port
                contact = await transport.contact_at(host, port, timeout=10)
                certs = [[victim_id, victim_cert], [forger_id, signer.own_cert]]
                # 1. the victim's origin, signed with the forger's key;
                # 2. the forger's origin and signature, but the op inside names the victim;
                # 3. a valid op of the forger's own (a member may write).
                # (a signature covers the entry's chain link: see dhtfs.oplog.signing)
                victim_link = chain_link(victim_head, next_seq, body)
                forger_link = chain_link(chain_start(forger_id), 1, claims_other)
                for entries in (
                    [[victim_id, next_seq, body, signer.sign(victim_id, next_seq, victim_link)]],
                    [[forger_id, 1, claims_other, signer.sign(forger_id, 1, forger_link)]],
                ):
                    answers.append(await transport.call(
                        contact, oplog.LOG_PUSH, {"entries": entries, "certs": certs},
                        timeout=10))
                legit_link = chain_link(chain_start(forger_id), 1, legit)
                nxt = [[forger_id, 1, legit, signer.sign(forger_id, 1, legit_link)]]
                answers.append(await transport.call(
                    contact, oplog.LOG_PUSH, {"entries": nxt, "certs": certs}, timeout=10))
                nursery.cancel_scope.cancel()
            return answers

        answers = trio.run(inject)
        assert answers[0] == {"accepted": 0}
        assert answers[1] == {"accepted": 0}
        assert answers[2] == {"accepted": 1}
        for n in nodes:
            wait_until(lambda n=n: (n.mountpoint / "legit-from-forger").exists(),
                       f"the member's valid op on {n.name}")
            names = set(listing(n.mountpoint))
            assert "forged-as-victim" not in names and "claims-another-node" not in names
        peers = control(victim.state, "peers")["peers"]
        penalties = {bytes(p[0]): p[4] for p in peers}
        assert penalties.get(forger_id, 0) >= 1
        wait_converged([n.state for n in nodes])
