"""``dhtfs status`` names the address the node's socket is really bound to and the address it
advertises, so an operator following the README's second-machine steps is not misled (a
wildcard listener used to show as ``127.0.0.1``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testkit.mounting import Mount
from testkit.swarmctl import run_cli

pytestmark = pytest.mark.mount


def listening_ports(host_hex: str) -> set[int]:
    """Ports in LISTEN state (``0A``) bound to ``host_hex`` (as /proc/net/tcp spells it)."""
    ports = set()
    with open("/proc/net/tcp") as fh:
        next(fh)
        for line in fh:
            fields = line.split()
            host, port = fields[1].split(":")
            if host == host_hex and fields[3] == "0A":
                ports.add(int(port, 16))
    return ports


def status(state: Path) -> tuple[dict, dict[str, str]]:
    res = run_cli("status", "--state", str(state), "--json", timeout=60)
    assert res.returncode == 0, res.stderr
    table_res = run_cli("status", "--state", str(state), timeout=60)
    assert table_res.returncode == 0, table_res.stderr
    table = dict(line.split(None, 1) for line in
                 table_res.stdout.replace("node ID", "node_ID").splitlines() if " " in line)
    return json.loads(res.stdout), table


def test_wildcard_listener_shows_as_bound_and_advertises_interfaces(tmp_path: Path) -> None:
    m = Mount(tmp_path / "mnt", tmp_path / "state", ["listen=0.0.0.0:0"]).start()
    try:
        st, table = status(m.state)
        port = st["advertised"]["port"]
        assert st["bound"] == [f"0.0.0.0:{port}"]
        assert port in listening_ports("00000000")  # the socket really is on every interface
        assert table["listen"] == f"0.0.0.0:{port}"
        candidates = st["advertised"]["candidates"]
        assert all(not c.startswith("127.") and c.endswith(f":{port}") for c in candidates)
        for c in candidates:
            assert c in table["advertised"]
    finally:
        m.close()


def test_one_address_listener_advertises_it(tmp_path: Path) -> None:
    m = Mount(tmp_path / "mnt", tmp_path / "state", ["listen=127.0.0.1:0"]).start()
    try:
        st, table = status(m.state)
        port = st["advertised"]["port"]
        assert port in listening_ports("0100007F")
        assert st["bound"] == [f"127.0.0.1:{port}"]
        assert st["advertised"]["address"] == f"127.0.0.1:{port}"
        assert table["listen"] == table["advertised"] == f"127.0.0.1:{port}"
    finally:
        m.close()
