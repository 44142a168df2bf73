"""Logs: one structured event per line, quiet by default, verbose with -o debug, no secrets.

The format tests call ``dhtfs.base.logs`` directly; the others mount for real and read what the
daemon wrote (``<state>/dhtfs.log`` in daemon mode, stderr with ``-f``).
"""

from __future__ import annotations

import base64
import logging
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from dhtfs.base.logs import KeyValueFormatter, quote
from testkit.env import MOUNT, UMOUNT
from testkit.mounting import cleanup, is_mounted
from testkit.shell import ENV, sh
from testkit.wait import wait_until

PAIR = re.compile(r'([A-Za-z_][\w.-]*)=("(?:[^"\\]|\\.)*"|[^\s"]*)(?: |$)')
REQUIRED = ("ts", "level", "logger", "pid", "msg")


def parse(line: str) -> dict[str, str]:
    """One logfmt line as a dict; fails the test if the line is not logfmt through and
    through."""
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(line):
        m = PAIR.match(line, pos)
        assert m, f"not key=value at {line[pos:]!r} in {line!r}"
        value = m.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(x[0-9a-f]{2}|.)", _unescape, value[1:-1])
        fields[m.group(1)] = value
        pos = m.end()
    for key in REQUIRED:
        assert key in fields, f"no {key}= in {line!r}"
    return fields


def _unescape(m: re.Match[str]) -> str:
    code = m.group(1)
    if code.startswith("x") and len(code) == 3:
        return chr(int(code[1:], 16))
    return {"n": "\n", "r": "\r", "t": "\t"}.get(code, code)


def events(text: str) -> list[dict[str, str]]:
    return [parse(line) for line in text.splitlines() if line]


def record(msg: str, *args: object, exc: bool = False, **fields: object) -> str:
    """``msg % args`` formatted as the daemon formats it."""
    exc_info = None
    if exc:
        try:
            raise ValueError("bad\nthing")
        except ValueError:
            exc_info = sys.exc_info()
    rec = logging.LogRecord("dhtfs.test", logging.WARNING, __file__, 1, msg, args, exc_info)
    if fields:
        rec.fields = fields
    return KeyValueFormatter().format(rec)


# -- the format ------------------------------------------------------------------------------


def test_one_event_per_line() -> None:
    """Spaces, quotes, newlines, control characters and tracebacks stay on one line, as
    quoted logfmt values that read back to what was logged."""
    text = 'a "quoted"\nsecond line\twith\x01control and \\ backslash'
    line = record("%s", text, exc=True, event="start", path="/mnt/my swarm")
    assert "\n" not in line
    ev = parse(line)
    assert ev["msg"] == text
    assert ev["level"] == "WARNING" and ev["logger"] == "dhtfs.test"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", ev["ts"])
    assert ev["event"] == "start" and ev["path"] == "/mnt/my swarm"
    assert ev["exc"].startswith("Traceback") and "ValueError: bad\nthing" in ev["exc"]
    assert quote("plain/value:1") == "plain/value:1" and quote("") == '""'
    assert quote("a=b") == '"a=b"'


def test_bytes_and_private_keys_are_never_formatted() -> None:
    """The safety net: a bytes argument is logged as its length; a PEM private key block
    (in a message, a field or a traceback) as [private key redacted]."""
    secret = b"\x01\x02secret-bytes"
    line = record("stored %s and %r", secret, bytearray(secret))
    assert "secret-bytes" not in line and f"<{len(secret)} bytes>" in line
    pem = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMG\n-----END PRIVATE KEY-----\n"
    line = record("loaded %s", pem, key=pem)
    assert "PRIVATE KEY" not in line and "MIGHAgEAMBMG" not in line
    assert "[private key redacted]" in line


def test_journald_priority_prefix(tmp_path: Path) -> None:
    """On the journal's stream (JOURNAL_STREAM names stderr's dev:inode, as systemd sets it
    for a service) each line starts with its syslog priority; elsewhere it does not. Quiet
    by default: INFO is not logged, the lifecycle events are."""
    code = (
        "import logging\n"
        "from dhtfs.base.logs import event, setup_logging\n"
        "setup_logging(False)\n"
        "log = logging.getLogger('dhtfs.test')\n"
        "log.info('not shown'); log.warning('disk nearly full'); log.error('disk full')\n"
        "event('start', 'starting', mountpoint='/mnt/x')\n"
    )
    journal = tmp_path / "journal"
    for on_journal in (True, False):
        with open(journal, "w") as out:
            st = os.fstat(out.fileno())
            env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
            if not on_journal:
                env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino + 1}"
            subprocess.run([sys.executable, "-c", code], stderr=out, env=env, check=True)
        lines = journal.read_text().splitlines()
        if on_journal:
            assert [ln[:3] for ln in lines] == ["<4>", "<3>", "<6>"], lines
            lines = [ln[3:] for ln in lines]
        evs = [parse(ln) for ln in lines]
        assert [e["msg"] for e in evs] == ["disk nearly full", "disk full", "starting"]
        assert evs[2]["event"] == "start" and evs[2]["logger"] == "dhtfs.lifecycle"


def test_native_stderr_becomes_events() -> None:
    """What C code writes to fd 2 (libfuse's trace and its "fuse: ..." errors) comes out as
    logger=libfuse events; Python's own stderr still works."""
    code = (
        "import ctypes, os, sys, time\n"
        "from dhtfs.base.logs import capture_native_stderr, setup_logging\n"
        "capture_native_stderr(); setup_logging(True)\n"
        "libc = ctypes.CDLL(None)\n"
        "stderr = ctypes.c_void_p.in_dll(libc, 'stderr')\n"
        "libc.fprintf(stderr, b'unique: 2, opcode: INIT (26)\\n')\n"
        "libc.fflush(stderr)\n"
        "os.write(2, b'fuse: bad mount point\\n')\n"
        "time.sleep(0.3); print('python', file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[-1] == "python"
    evs = [parse(ln) for ln in lines[:-1]]
    assert [(e["logger"], e["level"], e["msg"]) for e in evs] == [
        ("libfuse", "DEBUG", "unique: 2, opcode: INIT (26)"),
        ("libfuse", "WARNING", "fuse: bad mount point"),
    ]


# -- real mounts -----------------------------------------------------------------------------


@pytest.fixture
def mnt(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "log-mnt"
    path.mkdir()
    try:
        yield path
    finally:
        cleanup(path)


def _use(mnt: Path, name: str, data: bytes) -> None:
    """Write, read back, rename, xattrs: the requests a session makes."""
    (mnt / "d").mkdir(exist_ok=True)
    (mnt / "d" / name).write_bytes(data)
    assert (mnt / "d" / name).read_bytes() == data
    os.setxattr(mnt / "d" / name, "user.note", data[:100])
    assert os.getxattr(mnt / "d" / name, "user.note") == data[:100]
    for attr in os.listxattr(mnt / "d" / name):
        os.getxattr(mnt / "d" / name, attr)
    os.rename(mnt / "d" / name, mnt / "d" / f"{name}.moved")
    os.rename(mnt / "d" / f"{name}.moved", mnt / "d" / name)


@pytest.mark.mount
def test_quiet_by_default(mnt: Path, tmp_path: Path) -> None:
    """Without debug a session logs its start and stop events, and otherwise warnings and
    errors only (no INFO or DEBUG line; none of libfuse's trace); every line is a structured
    event."""
    state = tmp_path / "state"
    sh([MOUNT, mnt, "-o", f"state={state},listen=127.0.0.1:0"], timeout=60)
    _use(mnt, "f", os.urandom(300_000))
    sh([UMOUNT, mnt], timeout=160)
    evs = events((state / "dhtfs.log").read_text())
    lifecycle = [(e.get("event"), e.get("status")) for e in evs if e["logger"] == "dhtfs.lifecycle"]
    assert lifecycle == [("start", None), ("stop", "0")], evs
    assert evs[0]["event"] == "start" and evs[-1]["event"] == "stop"
    assert evs[0]["mountpoint"] == str(mnt) and evs[0]["state"] == str(state)
    others = [e for e in evs if e["logger"] != "dhtfs.lifecycle"]
    assert all(e["level"] in ("WARNING", "ERROR", "CRITICAL") for e in others), others
    assert len(others) <= 2, others  # a quiet session (a shutdown race may log one error)


@pytest.mark.mount
def test_debug_log_has_no_secrets(mnt: Path, tmp_path: Path) -> None:
    """A -o debug session (daemon mode: the log file; then -f: stderr, libfuse's trace
    included) that writes, reads and sets xattrs on a file holding a unique marker logs a
    lot, all structured, and never the marker, the master key (raw, hex, base64), a
    private key of the swarm identity, or "PRIVATE KEY"."""
    state = tmp_path / "state"
    marker = f"dhtfs-log-marker-{uuid.uuid4().hex}"
    data = (marker.encode() + b"\n") * 40_000  # ~2 MiB: several chunks
    opts = f"state={state},listen=127.0.0.1:0,debug"
    mounted = sh([MOUNT, mnt, "-o", opts], timeout=60)
    _use(mnt, "f", data)
    _use(mnt, "small", marker.encode())
    sh([UMOUNT, mnt], timeout=160)
    stderr_log = tmp_path / "stderr.log"
    with open(stderr_log, "wb") as err:
        proc = subprocess.Popen([MOUNT, "-f", mnt, "-o", opts], stderr=err, env=ENV)
    try:
        wait_until(lambda: is_mounted(mnt) or proc.poll() is not None, "the -f mount")
        assert (mnt / "d" / "f").read_bytes() == data
        _use(mnt, "g", data[:70_000])
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(160) == 0
    texts = {str(p): p.read_bytes() for p in state.rglob("*.log")}
    texts["stderr"] = stderr_log.read_bytes()
    texts["mount.dhtfs output"] = (mounted.stdout + mounted.stderr).encode()
    assert len(texts) == 3, texts.keys()  # dhtfs.log is the one log file in the state dir

    key = (state / "master.key").read_bytes()
    secrets = {
        "marker": marker.encode(),
        "marker (hex)": marker.encode().hex().encode(),
        "master key": key,
        "master key (hex)": key.hex().encode(),
        "master key (HEX)": key.hex().upper().encode(),
        "master key (base64)": base64.b64encode(key).rstrip(b"="),
        "master key (urlsafe base64)": base64.urlsafe_b64encode(key).rstrip(b"="),
        "PEM": b"PRIVATE KEY",
    }
    for pem in sorted((state / "swarm").glob("*.key")):
        body = pem.read_bytes()
        scalar = load_pem_private_key(body, None).private_numbers().private_value  # type: ignore[union-attr]
        secrets[f"{pem.name} (private scalar)"] = f"{scalar:064x}".encode()
        for i, line in enumerate(body.splitlines()[2:-1]):  # past the common ASN.1 prefix
            secrets[f"{pem.name} line {i + 2}"] = line
    for where, text in texts.items():
        for what, secret in secrets.items():
            assert secret not in text, f"{what} found in {where}"

    log = texts[str(state / "dhtfs.log")].decode()
    for where in (log, texts["stderr"].decode()):
        evs = events(where)
        assert sum(e["level"] == "DEBUG" for e in evs) > 10  # verbose: debug is on
        assert {"start", "stop"} <= {e.get("event") for e in evs}
    assert any(e["logger"] == "libfuse" for e in events(texts["stderr"].decode()))
