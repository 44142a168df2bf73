"""The ``dhtfs`` command line: CA commands, a TOML-configured node, chunk verbs, bad input."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from dhtfs.trust.pki import Identity, load_cert, node_id_of
from testkit.env import REPO, child_env
from testkit.nodehelpers import make_identity
from testkit.nodeproc import NodeProc, Swarm

ENV = child_env(PYTHONPATH=str(REPO))


def dhtfs(*argv: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "dhtfs.cli", *argv], capture_output=True,
                          cwd=REPO, env=ENV, input=stdin, timeout=60)


def test_ca_init_and_issue(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    r = dhtfs("ca", "init", str(ca))
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE((ca / "ca.key").stat().st_mode) == 0o600
    r = dhtfs("ca", "issue", str(ca), "alpha", "--out", str(tmp_path / "n"))
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE((tmp_path / "n" / "alpha.key").stat().st_mode) == 0o600
    nid = node_id_of(load_cert(tmp_path / "n" / "alpha.crt")).hex()
    assert f"node_id={nid}" in r.stdout.decode()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["ca", "init", "{ca}"], "already exists"),
        (["ca", "issue", "{tmp}/nowhere", "x"], "cannot read certificate"),
        (["node", "--state", "{tmp}/s"], "node needs ca, cert, cert_key"),
        (["node", "--config", "{tmp}/missing.toml"], "does not exist"),
        (["node", "--config", "{tmp}/bad.toml"], "unknown option"),
        (["node", "--ca", "{ca}/ca.crt", "--cert", "{ca}/ca.crt", "--key", "{ca}/ca.key",
          "--state", "{tmp}/s"], "a CA certificate cannot be a node certificate"),
        (["chunk", "--state", "{tmp}/nostate", "status"], "control socket"),
        (["chunk", "--state", "{tmp}", "get", "abc"], "expected 64 hex digits"),
    ],
)
def test_bad_input_is_one_line(tmp_path: Path, swarm_ca: Path, argv: list[str],
                               message: str) -> None:
    (tmp_path / "bad.toml").write_text('colour = "blue"\n')
    args = [a.format(ca=swarm_ca, tmp=tmp_path) for a in argv]
    r = dhtfs(*args)
    err = r.stderr.decode()
    assert r.returncode == 1
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_usage_error_exits_2() -> None:
    r = dhtfs("node", "--no-such-flag")
    assert r.returncode == 2


def test_node_from_toml_and_chunk_verbs(tmp_path: Path, swarm_ca: Path) -> None:
    ident: Identity = make_identity(swarm_ca, tmp_path)
    state = tmp_path / "state"
    config = tmp_path / "node.toml"
    config.write_text(
        f'state = "{state}"\nca = "{ident.ca_cert}"\ncert = "{ident.cert}"\n'
        f'cert_key = "{ident.key}"\nlisten = "127.0.0.50:0"\nkey = ""\n'
    )
    out = tmp_path / "out"
    out.mkdir()
    argv = [sys.executable, "-m", "dhtfs.cli", "node", "--config", str(config)]
    with (out / "o").open("wb") as o, (out / "e").open("wb") as e:
        proc = subprocess.Popen(argv, stdout=o, stderr=e, cwd=REPO, env=ENV)
    swarm = Swarm(tmp_path)
    node = NodeProc("cfg", proc, state, out / "o", out / "e")
    swarm.nodes.append(node)
    try:
        Swarm.wait([node])
        assert node.node_id == ident.node_id and node.host == "127.0.0.50"
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        assert stat.S_IMODE((state / "master.key").stat().st_mode) == 0o600
        assert stat.S_IMODE(node.control.stat().st_mode) == 0o600
        blob = os.urandom(70_000)
        (tmp_path / "blob").write_bytes(blob)
        r = dhtfs("chunk", "--state", str(state), "put", str(tmp_path / "blob"))
        assert r.returncode == 0, r.stderr
        cid = r.stdout.split()[0].decode()
        r = dhtfs("chunk", "--state", str(state), "get", cid)
        assert r.returncode == 0 and r.stdout == blob
        r = dhtfs("chunk", "--state", str(state), "status")
        status = r.stdout.decode()
        assert f"node_id={ident.node_id.hex()}" in status and "chunks=1" in status
        r = dhtfs("chunk", "--state", str(state), "get", "00" * 32)
        assert r.returncode == 1 and "BlockMissing" in r.stderr.decode()
        # nothing but sealed bytes on disk
        sealed = [p for p in (state / "chunks").rglob("*") if p.is_file()]
        assert len(sealed) == 1 and blob[:64] not in sealed[0].read_bytes()
        node.proc.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop too
        assert node.proc.wait(10) == 0
        assert not node.control.exists()
    finally:
        swarm.close()
