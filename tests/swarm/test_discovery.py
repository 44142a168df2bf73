"""LAN discovery (``dhtfs.dht.discovery``).

Units: the trio side of ``Discovery`` fed from a foreign thread exactly as zeroconf's browser
thread feeds it (``post``): the swarm filter, the bounded channel, a withdrawal.

A LAN: network namespaces of the test's own (a hub namespace with a bridge, four node
namespaces each with a veth on it, addresses in 10.77.0.0/24 that exist only in there), three
mounts of swarm A and one of swarm B, none with a bootstrap address. The daemons run under
``nsenter --net`` (network namespace only: the FUSE mounts and control sockets stay visible
here, unlike ``ip netns exec``, which also makes a new mount namespace). mDNS never touches
the host's own interfaces: every zeroconf is bound to its namespace's veth.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from dhtfs.dht.discovery import (
    PROTOCOL_VERSION,
    QUEUE_SIZE,
    Announcement,
    Discovery,
    announced_addresses,
    dialable,
)
from dhtfs.trust import pki
from testkit.mounting import Mount
from testkit.observe import control, member_options
from testkit.wait import wait_until

ME = bytes(range(32))
PEER = bytes([7]) * 32
CA = "ab" * 32
OTHER_CA = "cd" * 32


def txt(node_id: bytes, ca: str = CA, v: str = PROTOCOL_VERSION) -> dict[str, str]:
    return {"id": node_id.hex(), "ca": ca, "v": v}


def make(joins: list[list[tuple[str, int]]], connected: set[bytes]) -> Discovery:
    async def join(addresses: list[tuple[str, int]]) -> None:
        joins.append(addresses)
        connected.add(PEER)  # the dial worked: the peer is in the routing table now

    return Discovery(node_id=ME, ca=CA, host="10.9.9.1", port=7000, join=join,
                     connected=connected.__contains__)


async def test_posts_from_a_foreign_thread_are_filtered_then_joined() -> None:
    joins: list[list[tuple[str, int]]] = []
    connected: set[bytes] = set()
    d = make(joins, connected)
    stranger = bytes([9]) * 32
    posts = [
        Announcement("foreign", ("10.9.9.3",), 7001, txt(stranger, ca=OTHER_CA)),
        Announcement("foreign-again", ("10.9.9.4",), 7001, txt(bytes([8]) * 32, ca=OTHER_CA)),
        Announcement("me", ("10.9.9.1",), 7000, txt(ME)),
        Announcement("garbled", ("10.9.9.5",), 7001, {"id": "zz", "ca": CA, "v": "1"}),
        Announcement("future", ("10.9.9.6",), 7001, txt(stranger, v="99")),
        Announcement("loopback-only", ("127.0.0.1",), 7001, txt(stranger)),
        Announcement("peer", ("10.9.9.2", "127.0.0.1", "fe80::1"), 7002, txt(PEER)),
        Announcement("peer", ("10.9.9.2",), 7002, txt(PEER)),  # the same again: nothing new
    ]
    async with trio.open_nursery() as nursery:
        await nursery.start(d.process)
        await trio.to_thread.run_sync(lambda: [d.post(a) for a in posts])
        with trio.fail_after(5):
            while d.joined < 1:
                await trio.sleep(0.01)
        assert joins == [[("10.9.9.2", 7002)]]  # loopback and scope-less link-local dropped
        assert (d.found, d.ignored_foreign, d.malformed, d.incompatible) == (1, 2, 1, 1)
        assert d.status()["foreign_swarms"] == 1 and d.status()["lan_peers"] == 1
        assert await d.settle(0.1)  # a peer of the swarm is connected
        await trio.to_thread.run_sync(d.post, Announcement("peer", removed=True))
        await trio.to_thread.run_sync(d.post, Announcement("foreign", removed=True))
        with trio.fail_after(5):
            while d.withdrawn < 1:
                await trio.sleep(0.01)
        assert d.status()["lan_peers"] == 0 and d.withdrawn == 1
        nursery.cancel_scope.cancel()


async def test_a_full_channel_drops_and_a_finished_trio_is_ignored() -> None:
    d = make([], set())
    d._token = trio.lowlevel.current_trio_token()  # as ``process`` sets it; nobody consumes
    ann = Announcement("peer", ("10.9.9.2",), 7002, txt(PEER))
    await trio.to_thread.run_sync(lambda: [d.post(ann) for _ in range(QUEUE_SIZE + 5)])
    assert d.dropped == 5

    # A post once its trio run has finished is dropped quietly, never raised in the thread.
    def after_the_run() -> None:
        async def grab() -> trio.lowlevel.TrioToken:
            return trio.lowlevel.current_trio_token()

        d._token = trio.run(grab)
        d.post(ann)

    await trio.to_thread.run_sync(after_the_run)
    assert d.dropped == 5


def test_only_dialable_addresses_are_dialed() -> None:
    assert dialable("10.1.2.3") and dialable("2001:db8::1") and dialable("169.254.1.1")
    for bad in ("127.0.0.1", "0.0.0.0", "::1", "::", "224.0.0.251", "fe80::1", "nonsense"):
        assert not dialable(bad), bad


async def test_what_a_listen_address_announces() -> None:
    assert await announced_addresses("10.77.0.1") == (["10.77.0.1"], "")
    for loop in ("127.0.0.20", "::1"):
        addresses, why = await announced_addresses(loop)
        assert addresses == [] and "loopback" in why
    wildcard, _ = await announced_addresses("0.0.0.0")  # read from the interfaces, nothing sent
    assert all(dialable(a) and ":" not in a for a in wildcard)


async def test_a_loopback_node_stays_off_the_lan() -> None:
    d = Discovery(node_id=ME, ca=CA, host="127.0.0.5", port=7000, join=lambda _a: trio.sleep(0))
    with trio.fail_after(5):
        await d.run()  # returns at once: no zeroconf, no socket
    assert d.status()["state"].startswith("off: listening on loopback")
    with trio.fail_after(1):
        assert await d.settle(10) is False  # at once, not after 10 s


# -- a LAN of network namespaces ---------------------------------------------------------------

_runs = itertools.count()
SUBNET = "10.77.0"


@dataclass
class Lan:
    namespaces: list[str]  # one per node; node i has SUBNET.(i+1)

    def address(self, i: int) -> str:
        return f"{SUBNET}.{i + 1}"

    def prefix(self, i: int) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.namespaces[i]}"]


def ip(*args: str) -> None:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if res.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {res.stderr.strip()}")


@pytest.fixture
def lan() -> Iterator[Lan]:
    """A bridge in a hub namespace and four node namespaces on it; all deleted afterwards."""
    if shutil.which("ip") is None or shutil.which("nsenter") is None:
        pytest.skip("needs ip(8) and nsenter(1) to build a network of namespaces")
    tag = f"dhtfsd{os.getpid()}x{next(_runs)}"
    hub, nodes = f"{tag}hub", [f"{tag}n{i}" for i in range(4)]
    created: list[str] = []
    try:
        try:
            ip("netns", "add", hub)
        except RuntimeError as exc:
            pytest.skip(f"network namespaces cannot be created here: {exc}")
        created.append(hub)
        ip("-n", hub, "link", "set", "lo", "up")
        ip("-n", hub, "link", "add", "br0", "type", "bridge")
        ip("-n", hub, "link", "set", "br0", "up")
        for i, ns in enumerate(nodes):
            ip("netns", "add", ns)
            created.append(ns)
            ip("link", "add", "eth0", "netns", ns, "type", "veth",
               "peer", "name", f"p{i}", "netns", hub)
            ip("-n", hub, "link", "set", f"p{i}", "master", "br0")
            ip("-n", hub, "link", "set", f"p{i}", "up")
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "addr", "add", f"{SUBNET}.{i + 1}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
        yield Lan(nodes)
    finally:
        for ns in reversed(created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def status(m: Mount) -> dict:
    return control(m.state, "status")


@pytest.mark.mount
@pytest.mark.slow
def test_three_nodes_find_each_other_and_ignore_another_swarm(lan: Lan, tmp_path: Path) -> None:
    ca_a, ca_b = tmp_path / "ca-a", tmp_path / "ca-b"
    pki.init_ca(ca_a)
    pki.init_ca(ca_b)

    def node(i: int, ca: Path, name: str, host: str | None = None) -> Mount:
        return Mount(tmp_path / f"{name}-mnt", tmp_path / f"{name}-state", [
            *member_options(ca, name, tmp_path / name), f"listen={host or lan.address(i)}:0",
            "discovery=on",  # over the test harness's off (testkit/env.py)
        ], prefix=lan.prefix(i))

    # a2 listens on the wildcard address: it announces its namespace's interface, not lo.
    a = [node(0, ca_a, "a0"), node(1, ca_a, "a1"), node(2, ca_a, "a2", "0.0.0.0")]
    b = node(3, ca_b, "b")
    started: list[Mount] = []
    try:
        for m in [*a, b]:
            started.append(m.start())

        def logs() -> str:
            return "\n".join(f"--- {m.log}\n{m.log_text()[-3000:]}" for m in started)

        for m in a:
            try:
                wait_until(lambda m=m: status(m)["peers"] >= 2, f"{m.mountpoint} to find 2 peers",
                           60)
            except TimeoutError as exc:
                raise AssertionError(f"{exc}\n{logs()}") from None
        data = os.urandom(1_500_000)  # two blocks
        (a[0].mountpoint / "found-by-mdns").write_bytes(data)
        for m in a[1:]:
            wait_until(lambda m=m: (m.mountpoint / "found-by-mdns").read_bytes() == data,
                       f"the file on {m.mountpoint}", 60)

        # B sees the three A announcements and ignores them; A's see B's and ignore it.
        wait_until(lambda: status(b)["discovery"]["ignored_foreign"] >= 3, "B to see A's", 30)
        for m in a:
            wait_until(lambda m=m: status(m)["discovery"]["ignored_foreign"] >= 1,
                       f"{m.mountpoint} to see B", 30)
        sb = status(b)
        assert sb["peers"] == 0, logs()
        assert sb["discovery"]["found"] == 0 and sb["discovery"]["joined"] == 0
        assert sb["discovery"]["foreign_swarms"] == 1
        assert not (b.mountpoint / "found-by-mdns").exists()
        for i, m in enumerate(a):
            st = status(m)
            assert st["peers"] == 2, st  # the other two A's, never B
            assert st.get("refusals", 0) == 0, logs()  # B never dialed anyone
            d = st["discovery"]
            port = st["listen"].rpartition(":")[2]
            assert d["state"] == "on" and d["announced"] == [f"{lan.address(i)}:{port}"], d
            assert d["found"] >= 2 and d["foreign_swarms"] == 1 and d["malformed"] == 0
        # No bootstrap anywhere: every first contact of a2 and a1 was a discovery join.
        assert sum(status(m)["discovery"]["joined"] for m in a) >= 2

        # "auto": a zero-config mount (a private swarm of one) stays off the LAN.
        lonely = Mount(tmp_path / "lonely-mnt", tmp_path / "lonely-state", [
            f"listen={lan.address(3)}:0", "discovery=auto"], prefix=lan.prefix(3))
        started.append(lonely.start())
        assert status(lonely)["discovery"] == {} and status(lonely)["peers"] == 0

        # A node that stops withdraws its announcement: the others forget it at once.
        assert a[2].stop() == 0
        for m in a[:2]:
            wait_until(lambda m=m: status(m)["discovery"]["withdrawn"] >= 1,
                       f"{m.mountpoint} to see a2 withdraw", 30)
    finally:
        for m in reversed(started):
            m.close()
