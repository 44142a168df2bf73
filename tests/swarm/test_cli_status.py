"""``dhtfs status``, ``peers``, ``stat``, ``fsck`` against a live swarm (``dhtfs swarm up``),
each checked against what the test did; plus the pieces they rest on, without a swarm."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from dhtfs.base.config import Config
from dhtfs.blocks import verify
from dhtfs.commands.target import EXIT_NO_NODE, EXIT_PROBLEMS, SOCKET_NAME
from dhtfs.fs.fsck import namespace_problems
from dhtfs.net.control import CONTROL_SOCKET_NAME
from dhtfs.runtime.localfs import open_state
from dhtfs.trust import pki
from testkit import swarmctl
from testkit.observe import control
from testkit.wait import wait_until

MIB = 1024 * 1024
CLI_TIMEOUT = 120.0


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return swarmctl.run_cli(*args, timeout=CLI_TIMEOUT)


def ok_json(*args: str) -> Any:
    res = cli(*args, "--json")
    assert res.returncode == 0, (args, res.returncode, res.stderr)
    return json.loads(res.stdout)


def no_node(res: subprocess.CompletedProcess[str], where: str) -> None:
    """The distinct exit status, one line naming the place, no traceback."""
    assert res.returncode == EXIT_NO_NODE, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dhtfs: error: "), res.stderr
    assert "no node runs at" in lines[0] or "no node runs with" in lines[0] \
        or "no node answers" in lines[0], lines[0]
    assert where in lines[0], lines[0]
    assert res.stdout == ""


def flip_byte(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x40
    with open(path, "r+b") as f:  # same inode, same size: only the content is wrong
        f.write(blob)


def stored_ids(state: Path) -> set[str]:
    return {p.parent.name + p.name for p in (state / "chunks").glob("??/*") if "." not in p.name}


@pytest.mark.mount
@pytest.mark.slow
def test_cli_against_a_live_swarm(tmp_path: Path) -> None:
    root = tmp_path / "swarm"
    with swarmctl.running_swarm(root, 3) as nodes:
        recorded = swarmctl.recorded(root)
        ids = {n.name: pki.node_id_of(pki.load_cert(Path(recorded[n.name]["cert"]))).hex()
               for n in nodes}
        addresses = {n.name: f"{recorded[n.name]['host']}:{recorded[n.name]['port']}"
                     for n in nodes}
        n0, n1, _n2 = nodes
        for n in nodes:
            wait_until(lambda n=n: control(n.state, "status")["peers"] == 2, "a full mesh")

        # -- status: by a path on the mount, and by --state; JSON and the table -----------
        st = ok_json("status", str(n0.mountpoint / "."))
        assert st["node_id"] == ids["node0"] == n0.node_id
        assert st["listen"] == addresses["node0"]
        assert st["peers"] == 2
        assert st["mountpoint"] == str(n0.mountpoint) and st["swarm"]
        assert st["blocks"]["total"] == st["chunks"] == len(stored_ids(n0.state))
        assert st["oplog"]["lag"] >= 0 and st["oplog"]["ops"] == st["ops"]
        res = cli("status", "--state", str(n1.state))
        assert res.returncode == 0, res.stderr
        table = dict(line.split(None, 1) if " " in line else (line, "")
                     for line in res.stdout.replace("node ID", "node_ID").splitlines())
        assert table["node_ID"] == ids["node1"]
        assert table["listen"] == addresses["node1"]
        assert table["peers"] == "2"
        assert table["mount"].startswith(str(n1.mountpoint))

        # -- peers: the other two, with their addresses and RTTs -----------------------------
        # (a peer that called first has no RTT until a call of ours or a keepalive times one)
        wait_until(lambda: all(p[3] is not None for p in control(n0.state, "peers")["peers"]),
                   "RTTs measured to both peers")
        peers = ok_json("peers", str(n0.mountpoint))["peers"]
        assert {p["node_id"]: p["address"] for p in peers} == {
            ids[k]: addresses[k] for k in ("node1", "node2")
        }
        for p in peers:
            assert isinstance(p["rtt_ms"], float) and 0 < p["rtt_ms"] < 5000, p
            assert p["last_seen_s"] is not None and 0 <= p["last_seen_s"] < 120, p
            assert p["penalties"] == 0
        res = cli("peers", str(n0.mountpoint))
        assert res.returncode == 0, res.stderr
        for k in ("node1", "node2"):
            line = next(x for x in res.stdout.splitlines() if ids[k] in x)
            assert line.split()[0] == addresses[k] and " ms" in line, line

        # -- stat: a file written with fsync: its blocks, 3 replicas each -------------------
        data = os.urandom(3 * MIB + 12345)
        path = n0.mountpoint / "f"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        extents = json.loads(os.getxattr(path, "user.dhtfs.extents"))
        blocks = list(dict.fromkeys(e[2] for e in extents))
        assert len(blocks) == 4
        doc = ok_json("stat", str(path))
        assert doc["size"] == len(data) and doc["extents"] == extents
        assert [b["id"] for b in doc["blocks"]] == blocks
        for b in doc["blocks"]:
            assert b["replicas"] == 3, b
            provs = {p["node_id"]: p for p in b["providers"]}
            assert set(provs) == set(ids.values()), b
            for k in ("node1", "node2"):  # the reader's RTT to each other holder
                assert provs[ids[k]]["address"] == addresses[k]
                assert isinstance(provs[ids[k]]["rtt_ms"], float)
        assert sum(b["bytes"] for b in doc["blocks"]) == len(data)
        res = cli("stat", str(path))
        assert res.returncode == 0, res.stderr
        assert f"{len(data)} bytes" in res.stdout
        for block in blocks:
            row = next(x for x in res.stdout.splitlines() if x.startswith(block))
            assert row.split()[2] == "3", row

        # -- fsck: clean; one flipped byte is found, repaired from a peer, clean again ------
        held = stored_ids(n1.state)
        assert set(blocks) <= held
        report = ok_json("fsck", "--state", str(n1.state))
        assert report["blocks"]["checked"] == len(held) and report["blocks"]["bad"] == 0
        assert report["namespace"]["problems"] == []
        assert report["namespace"]["referenced"] >= len(blocks)

        victim = blocks[1]
        flip_byte(n1.state / "chunks" / victim[:2] / victim[2:])
        res = cli("fsck", "--json", "--state", str(n1.state))
        assert res.returncode == EXIT_PROBLEMS, res.stderr
        report = json.loads(res.stdout)
        assert [b["id"] for b in report["bad"]] == [victim]
        assert "tag" in report["bad"][0]["reason"]
        assert report["blocks"]["checked"] == len(held) and report["blocks"]["left"] == 1
        res = cli("fsck", str(n1.mountpoint))  # the table, found from the mount
        assert res.returncode == EXIT_PROBLEMS and victim in res.stdout, res.stdout
        assert "1 bad" in res.stdout and "--repair" in res.stderr

        res = cli("fsck", "--repair", "--json", "--state", str(n1.state))
        assert res.returncode == 0, res.stderr
        report = json.loads(res.stdout)
        assert report["blocks"]["bad"] == 1 and report["blocks"]["repaired"] == 1
        assert report["bad"][0]["repaired_from"] in (ids["node0"], ids["node2"])
        assert report["blocks"]["left"] == 0 and report["unrepairable"] == []
        report = ok_json("fsck", "--state", str(n1.state))
        assert report["blocks"]["bad"] == 0 and report["blocks"]["checked"] == len(held)
        got = control(n1.state, "get", {"id": bytes.fromhex(victim)})
        assert got["source"] == "local" and hashlib.sha256(got["data"]).hexdigest() == victim
        wait_until(lambda: (n1.mountpoint / "f").stat().st_size == len(data), "f on node1")
        assert (n1.mountpoint / "f").read_bytes() == data

    # -- no node there any more: the distinct exit status and one line ---------------------
    no_node(cli("status", str(n0.mountpoint)), str(n0.mountpoint))
    no_node(cli("peers", "--state", str(n0.state)), str(n0.state))
    no_node(cli("fsck", "--state", str(tmp_path / "nowhere")), str(tmp_path / "nowhere"))
    no_node(cli("stat", str(tmp_path)), str(tmp_path))


# -- without a swarm ---------------------------------------------------------------------------


def test_no_node_behind_a_stale_socket_or_off_a_mount(tmp_path: Path) -> None:
    assert SOCKET_NAME == CONTROL_SOCKET_NAME
    stale = tmp_path / "state"
    stale.mkdir()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(stale / SOCKET_NAME))
    sock.close()  # the file stays; nobody listens
    no_node(cli("status", "--state", str(stale)), str(stale / SOCKET_NAME))
    no_node(cli("peers", str(tmp_path)), str(tmp_path))
    no_node(cli("fsck", "--json", str(tmp_path)), str(tmp_path))
    res = cli("stat", str(tmp_path / "missing"))
    assert res.returncode == 1 and "no such file" in res.stderr
    res = cli("status", str(tmp_path), "--state", str(stale))
    assert res.returncode == 1 and "not both" in res.stderr


def test_block_pages_and_checks(tmp_path: Path) -> None:
    lfs = open_state(Config(state=tmp_path / "state"))
    try:
        store = lfs.store
        blobs = [os.urandom(100 + i) for i in range(7)]
        cids = sorted(hashlib.sha256(b).digest() for b in blobs)
        for b in blobs:
            store.put(hashlib.sha256(b).digest(), b)
        root = Path(store.root)
        assert verify.count_ids(root) == 7
        pages, after = [], b""
        while page := verify.page_ids(root, after, 3):
            pages.append(page)
            after = page[-1]
        assert [len(p) for p in pages] == [3, 3, 1] and [c for p in pages for c in p] == cids
        assert verify.check_page(store, cids) == (7, sum(len(b) for b in blobs), [])
        flip_byte(store.path_of(cids[4]))
        checked, _size, bad = verify.check_page(store, cids)
        assert checked == 7 and [b[0] for b in bad] == [cids[4]]
        store.remove(cids[0])  # gone meanwhile: not checked, not bad
        assert verify.check_page(store, cids)[0] == 6
    finally:
        lfs.close()


def test_namespace_invariants_catch_broken_rows(tmp_path: Path) -> None:
    lfs = open_state(Config(state=tmp_path / "state"))
    try:
        db = lfs.namespace.db
        assert namespace_problems(db)[0] == []
        db.execute("INSERT INTO links(link, parent, name, obj, kind, lts, lnode) "
                   "VALUES (?,?,?,?,?,0,?)",
                   (b"l" * 16, bytes(16), b"ghost", b"g" * 16, stat.S_IFREG, b""))
        problems, counts = namespace_problems(db)
        assert counts["links"] == 1
        assert len(problems) == 1 and "ghost" in problems[0] and "does not exist" in problems[0]
    finally:
        lfs.close()


def test_log_lag() -> None:
    a, b = b"a" * 32, b"b" * 32
    lag = verify.log_lag({a: 5, b: 2}, {b"p" * 32: ({a: 7, b: 2}, None),
                                        b"q" * 32: ({a: 1}, 3)})
    assert lag["ops"] == 7 and lag["lag"] == 2
    assert lag["peers"] == [
        {"node_id": b"p" * 32, "missing_here": 2, "missing_there": 0},
        {"node_id": b"q" * 32, "missing_here": 0, "missing_there": 6},
    ]
