"""Real headless node processes on 127.0.0.x for the loopback tests (and their cleanup)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from dhtfs.trust.pki import Identity
from testkit.env import REPO, child_env
from testkit.wait import wait_until

READY = re.compile(r"ready node_id=([0-9a-f]{64}) listen=([0-9.]+):(\d+) control=(\S+)")


@dataclass
class NodeProc:
    """One ``dhtfs node`` process."""

    name: str
    proc: subprocess.Popen[bytes]
    state: Path
    out: Path
    err: Path
    node_id: bytes = b""
    host: str = ""
    port: int = 0
    control: Path = field(default_factory=Path)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def log(self) -> str:
        return self.err.read_text(errors="replace")

    def poll_ready(self) -> bool:
        """True once the readiness line is out; raises if the process died first."""
        m = READY.search(self.out.read_text(errors="replace"))
        if m:
            self.node_id = bytes.fromhex(m.group(1))
            self.host, self.port = m.group(2), int(m.group(3))
            self.control = Path(m.group(4))
            return True
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited {self.proc.returncode}: {self.log()[-2000:]}")
        return False


class Swarm:
    """Starts node processes; ``close`` kills every one of them (call it in a finalizer)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.nodes: list[NodeProc] = []

    def start(self, ident: Identity, host: str, bootstrap: list[str], *, extra: list[str] = ()
              ) -> NodeProc:
        name = f"node{len(self.nodes)}"
        state = self.root / name
        state.mkdir(parents=True)
        out, err = state.with_suffix(".out"), state.with_suffix(".err")
        argv = [sys.executable, "-m", "dhtfs.cli", "-v", "node", "--state", str(state),
                "--ca", str(ident.ca_cert), "--cert", str(ident.cert), "--key", str(ident.key),
                "--listen", f"{host}:0", "--master-key", "ephemeral", *extra]
        for b in bootstrap:
            argv += ["--bootstrap", b]
        env = child_env(PYTHONPATH=str(REPO))
        with out.open("wb") as o, err.open("wb") as e:
            proc = subprocess.Popen(argv, stdout=o, stderr=e, cwd=REPO, env=env,
                                    stdin=subprocess.DEVNULL)
        node = NodeProc(name, proc, state, out, err)
        self.nodes.append(node)
        return node

    @staticmethod
    def wait(nodes: list[NodeProc], timeout: float = 60.0) -> None:
        """Poll until every node printed its readiness line (or fail at the deadline)."""
        pending = list(nodes)

        def all_ready() -> bool:
            pending[:] = [n for n in pending if not n.poll_ready()]
            return not pending

        try:
            wait_until(all_ready, "the nodes' readiness lines", timeout, interval=0.05)
        except TimeoutError:
            raise TimeoutError(f"not ready after {timeout}s: {[n.name for n in pending]}") from None

    def stop(self, node: NodeProc, timeout: float = 10.0) -> int:
        """SIGTERM, wait for a clean exit; SIGKILL past ``timeout``. Returns the exit status."""
        if node.proc.poll() is None:
            node.proc.send_signal(signal.SIGTERM)
            try:
                node.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()
        return node.proc.returncode

    def close(self) -> None:
        for n in self.nodes:
            if n.proc.poll() is None:
                n.proc.send_signal(signal.SIGTERM)
        end = time.monotonic() + 5
        for n in self.nodes:
            try:
                n.proc.wait(max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                n.proc.kill()
                n.proc.wait()
