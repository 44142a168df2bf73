"""Members that are gone (real processes on 127.0.0.x): a member that never returns holds
folding of the op log back until it is forgotten (``dhtfs swarm forget``, or automatically
once revoked or silent past ``member_timeout``); a forgotten node that comes back rejoins with
a snapshot, and the change it made while cut off reaches everyone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from testkit import swarmctl
from testkit.forgetting import collect, create_and_delete, cut_off_last, fold_and_collect
from testkit.observe import control, listing, unfolded, wait_converged
from testkit.wait import wait_until

pytestmark = [pytest.mark.mount, pytest.mark.slow]

MIB = 1024 * 1024


def forgotten(state: Path) -> set[str]:
    return {bytes(n).hex() for n in control(state, "oplog")["forgotten"]}


def test_a_forgotten_node_rejoins_with_the_change_it_made_while_cut_off(
    tmp_path: Path
) -> None:
    root = tmp_path / "swarm"
    with swarmctl.running_swarm(root, 3, options="fold_interval=1") as (a, b, c):
        live = [a.state, b.state]
        for i in range(20):
            (a.mountpoint / f"early-{i}").write_text(f"early {i}\n")
        (c.mountpoint / "from-c").write_text("c, before\n")
        wait_converged([a.state, b.state, c.state])
        # c makes a change nobody sees, then dies.
        control(c.state, "isolate", {"on": True})
        (c.mountpoint / "while-cut-off").write_text("made while cut off\n")
        (c.mountpoint / "from-c").write_text("c, changed while cut off\n")
        swarmctl.kill(root, c.name)
        for i in range(10):
            (a.mountpoint / f"early-{i}").unlink()
            (b.mountpoint / f"late-{i}").write_text(f"late {i}\n")
        wait_converged(live)
        # Not forgotten: c holds folding back on a and b.
        for s in live:
            control(s, "fold")
            assert unfolded(s) > 0
        assert c.node_id is not None
        res = swarmctl.run_cli("swarm", "forget", c.node_id[:12], "--state", str(a.state))
        assert res.returncode == 0, res.stderr
        assert "forgot" in res.stdout
        wait_until(lambda: all(forgotten(s) == {c.node_id} for s in live),
                   "both live nodes to know c is forgotten")
        wait_until(lambda: all(unfolded(s) == 0 for s in live), "a and b to fold", 60)
        assert control(a.state, "oplog")["fold_ts"] > 0
        # c comes back: it rejoins with a snapshot, its change made again as new ops.
        swarmctl.restart(root)
        wait_converged([a.state, b.state, c.state], timeout=60)
        for m in (a, b, c):
            assert (m.mountpoint / "while-cut-off").read_text() == "made while cut off\n"
            assert (m.mountpoint / "from-c").read_text() == "c, changed while cut off\n"
            assert not (m.mountpoint / "early-3").exists()
            assert (m.mountpoint / "late-9").read_text() == "late 9\n"
        assert listing(a.mountpoint) == listing(c.mountpoint)
        assert "rejoined with the snapshot" in c.log.read_text()
        wait_until(lambda: all(forgotten(s) == set() for s in (a.state, b.state, c.state)),
                   "c a member again everywhere")
        # And folding goes on with c among the members.
        (c.mountpoint / "after").write_text("after\n")
        wait_converged([a.state, b.state, c.state])
        wait_until(lambda: all(unfolded(s) == 0 for s in (a.state, b.state, c.state)),
                   "all three to fold", 60)


def test_an_absent_member_forgotten_lets_the_state_shrink_back(tmp_path: Path) -> None:
    """2,000 files created and deleted with a member away: the state directories grow and
    stay grown while it is remembered, and come back near their start once it is forgotten
    (by its certificate's common name). ``scripts/forget_figure.py`` runs it with 20,000."""
    files = int(os.environ.get("DHTFS_FORGET_FILES", "2000"))
    root = tmp_path / "swarm"
    with swarmctl.running_swarm(root, 3, options="fold_interval=1") as (a, b, c):
        live = [a.state, b.state]
        start = cut_off_last(root, [a, b, c])
        create_and_delete(a.mountpoint / "many", files)
        wait_converged(live, timeout=120)
        kept = fold_and_collect(live)
        res = swarmctl.run_cli("swarm", "forget", c.name, "--state", str(b.state))
        assert res.returncode == 0, res.stderr
        wait_until(lambda: all(unfolded(s) == 0 for s in live), "a and b to fold", 120)
        end = collect(live)
        print(f"files={files} start={start} remembered={kept} forgotten={end}")
        for s, k, e in zip(start, kept, end, strict=True):
            assert k > s + files * 1024, (s, k)  # remembered: every op and block is kept
            assert e < s + 2 * MIB, (s, k, e)  # forgotten: back near the start


@pytest.mark.parametrize("how", ["member_timeout", "revocation"])
def test_a_member_is_forgotten_automatically(tmp_path: Path, how: str) -> None:
    root = tmp_path / "swarm"
    options = "fold_interval=1" + (",member_timeout=8" if how == "member_timeout" else "")
    with swarmctl.running_swarm(root, 3, options=options) as (a, b, c):
        live = [a.state, b.state]
        (c.mountpoint / "from-c").write_text("c\n")  # c is an origin: its cert is known
        wait_converged([a.state, b.state, c.state])
        swarmctl.kill(root, c.name)
        for i in range(5):
            (a.mountpoint / f"f{i}").write_text(f"{i}\n")
        if how == "revocation":
            res = swarmctl.run_cli("ca", "revoke", str(root / "ca"),
                                   swarmctl.recorded(root)[c.name]["cert"])
            assert res.returncode == 0, res.stderr
            crl = (root / "ca" / "crl.pem").read_bytes()
            assert control(a.state, "crl", {"crl": crl})["adopted"] is True
        wait_until(lambda: all(forgotten(s) == {c.node_id} for s in live),
                   f"c forgotten by {how}", 60)
        wait_converged(live)
        wait_until(lambda: all(unfolded(s) == 0 for s in live), "a and b to fold", 60)
        assert "forgot member" in a.log.read_text() + b.log.read_text()
