"""``dhtfs swarm up`` / ``down``: a swarm of real mounting nodes on 127.0.0.x, and bad input."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from dhtfs.commands.swarmprocs import daemon_pids, is_live, process_alive
from testkit import swarmctl
from testkit.mounting import is_mounted

LINE = re.compile(r"^(node\d+)\s+(/\S+)\s+(127\.0\.0\.\d+):(\d+)$")


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    """A swarm directory that is brought down (or killed) whatever the test did."""
    path = tmp_path / "swarm"
    try:
        yield path
    finally:
        if (path / "swarm.json").exists():
            try:
                swarmctl.down(path)
            except Exception:
                swarmctl.kill_all(path)
                raise


def one_line_error(res) -> str:
    """The single ``dhtfs: error: ...`` line of a failed command (exit status 1)."""
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dhtfs: error: "), res.stderr
    assert "Traceback" not in res.stderr
    return lines[0]


@pytest.mark.slow
@pytest.mark.mount
def test_up_three_nodes_then_down(root: Path) -> None:
    res = swarmctl.run_cli("swarm", "up", "--nodes", "3", str(root))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 3, res.stdout
    printed = {}
    for i, line in enumerate(lines):
        m = LINE.match(line)
        assert m, line
        name, mountpoint, host, port = m.groups()
        assert (name, host) == (f"node{i}", f"127.0.0.{10 + i}")
        assert Path(mountpoint) == root / name / "mnt"
        assert is_live(Path(mountpoint))
        printed[name] = int(port)

    recorded = swarmctl.recorded(root)
    assert sorted(recorded) == ["node0", "node1", "node2"]
    for name, node in recorded.items():
        assert node["port"] == printed[name] and node["port"] > 0
        assert node["host"] == f"127.0.0.{10 + int(name[4:])}"
        assert node["mountpoint"] == str(root / name / "mnt")
        assert node["state"] == str(root / name / "state")
        assert node["ca"] == str(root / "ca" / "ca.crt")
        for key in ("cert", "key", "ca"):
            assert Path(node[key]).is_file()

    # up on a running swarm starts nothing and describes it
    nodes = swarmctl.up(root)
    assert [(n.name, n.port) for n in nodes] == [(k, v) for k, v in printed.items()]
    pids = [n.pid for n in nodes]
    assert all(isinstance(p, int) and process_alive(p) for p in pids), pids
    assert all(n.peers is not None and n.peers >= 2 for n in nodes), nodes
    assert len({n.node_id for n in nodes}) == 3

    swarmctl.down(root)
    for n in nodes:
        assert not is_mounted(n.mountpoint)
        assert daemon_pids(n.mountpoint) == []
    assert not any(process_alive(p) for p in pids), pids
    res = swarmctl.run_cli("swarm", "down", str(root))  # idempotent
    assert res.returncode == 0, res.stderr


@pytest.mark.slow
@pytest.mark.mount
def test_killed_node_restarts_alone_on_its_port(root: Path) -> None:
    with swarmctl.running_swarm(root, 3) as nodes:
        before = {n.name: n for n in nodes}
        killed = swarmctl.kill(root, "node1")
        assert killed and not any(process_alive(p) for p in killed)
        assert not is_mounted(before["node1"].mountpoint)

        after = {n.name: n for n in swarmctl.restart(root)}
        assert all(is_live(n.mountpoint) for n in after.values())
        assert after["node1"].address == before["node1"].address
        assert after["node1"].pid not in (None, before["node1"].pid)
        for name in ("node0", "node2"):  # untouched
            assert after[name].pid == before[name].pid
            assert after[name].address == before[name].address
        assert json.loads((root / "swarm.json").read_text())["nodes"][1]["port"] == (
            before["node1"].port
        )

        # a whole swarm brought down comes back on the same addresses
        swarmctl.down(root)
        again = swarmctl.up(root)
        assert [n.address for n in again] == [before[n.name].address for n in again]
        assert all(is_live(n.mountpoint) for n in again)


def test_up_refuses_zero_nodes(tmp_path: Path) -> None:
    target = tmp_path / "swarm"
    assert "--nodes 0" in one_line_error(
        swarmctl.run_cli("swarm", "up", "--nodes", "0", str(target))
    )
    assert not target.exists()


def test_up_refuses_a_regular_file(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("not a swarm\n")
    assert "not a directory" in one_line_error(
        swarmctl.run_cli("swarm", "up", "--nodes", "2", str(target))
    )
    assert target.read_text() == "not a swarm\n"


def test_up_and_down_refuse_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("mine\n")
    one_line_error(swarmctl.run_cli("swarm", "up", "--nodes", "2", str(tmp_path)))
    one_line_error(swarmctl.run_cli("swarm", "down", str(tmp_path)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.txt"]


def test_up_refuses_a_bad_swarm_file(tmp_path: Path) -> None:
    (tmp_path / "swarm.json").write_text('{"nodes": [{"name": "x"}]}')
    assert "swarm.json" in one_line_error(swarmctl.run_cli("swarm", "up", str(tmp_path)))


def test_up_needs_nodes_for_a_new_directory(tmp_path: Path) -> None:
    assert "--nodes" in one_line_error(swarmctl.run_cli("swarm", "up", str(tmp_path / "new")))
