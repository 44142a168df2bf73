"""LAN discovery by mDNS / DNS-SD (zeroconf): announce this node, find and join the swarm's
other nodes on the LAN with no bootstrap address configured (a task in the node's nursery:
see dhtfs.runtime.service).

What is announced: a ``_dhtfs._tcp.local.`` service named ``dhtfs-<first 16 hex digits of
the node ID>``, SRV port = the listen port, A/AAAA records = the listen address, and TXT
records ``id`` (node ID, 64 hex digits), ``ca`` (SHA-256 of the swarm CA certificate's DER,
64 hex digits) and ``v`` (``PROTOCOL_VERSION``).

Which interfaces:
- a specific listen IP: zeroconf is bound to that interface only (``interfaces=[ip]``) and
  that one address is announced (so a node in a network namespace uses that namespace's
  interface, and a node on one LAN never speaks mDNS on another);
- a wildcard listen (``0.0.0.0``, the default; ``::``): every non-loopback address of that
  family on the machine, each interface announcing them all;
- a loopback listen (``127.x``, ``::1``): discovery stays off. No LAN can reach that node, and
  nodes on one machine join through bootstrap addresses (as ``dhtfs swarm up`` does), so
  mDNS over ``lo`` would add nothing but chatter between unrelated local swarms.

When (``discovery=``, wired by the mount and the headless node): ``on``/``off`` as given;
``auto`` (the default) is on for every node except a private swarm of one — a zero-config
mount (its own fresh CA) with no bootstrap address and no peer remembered from an earlier
run. Such a node has nobody to find (no other node holds a certificate of its CA) and nobody
who could use its announcement, so speaking on whatever network the machine is on (a laptop in
a café) would only tell that network a stable ID for nothing. Once another node has joined it
(peers remembered), it announces and browses like any member from its next start, so members
find it again after an address change; ``discovery=on`` makes it announce from the first start
(a second machine given a certificate of its CA then finds it with no bootstrap address).
``discovery=off``: silent (WAN-only setups, or a LAN that should not see the node).

Invariants:
- only announcements of this swarm (``ca`` equal to ours, ``v`` ours) from another node ID are
  dialed; announcements of other swarms are counted (``ignored_foreign``), logged once per
  foreign CA, and never dialed. An announcement is an unauthenticated hint: dialing it is an
  ordinary mutually authenticated connection (``Network.contact_at``), so a forged one costs a
  failed handshake, never a member;
- zeroconf runs on its own threads (its asyncio loop, the ``ServiceBrowser`` thread). Their
  callbacks reach trio only through a bounded memory channel, by
  ``trio.from_thread.run_sync(send.send_nowait, ...)``: when the channel is full the event is
  dropped (``dropped``), when trio is gone it is dropped silently. No trio object is touched
  from those threads;
- every blocking zeroconf call (open, register, close) runs in ``trio.to_thread.run_sync``
  under a deadline; cancellation closes zeroconf (shielded, bounded), which unregisters the
  service: peers get goodbye records and forget this node at once;
- a failure to start (no multicast-capable interface, port 5353 unusable) is a warning and
  the node carries on without discovery; discovery never takes a node down.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import socket
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from cryptography.hazmat.primitives import hashes

from dhtfs.trust import pki

if TYPE_CHECKING:
    from zeroconf import ServiceBrowser, ServiceInfo, ServiceStateChange, Zeroconf

    from dhtfs.dht.node import Node

log = logging.getLogger(__name__)

SERVICE_TYPE = "_dhtfs._tcp.local."
PROTOCOL_VERSION = "1"
QUEUE_SIZE = 64  # announcements waiting for trio; past it they are dropped (and counted)
INFO_TIMEOUT_MS = 3000  # resolving one announced service (SRV/TXT/A), on the browser thread
OPEN_DEADLINE = 10.0
REGISTER_DEADLINE = 10.0
CLOSE_DEADLINE = 5.0
JOIN_DEADLINE = 15.0
RETRY_SECONDS = 10.0  # announced peers of the swarm not (or no longer) in the routing table
JOINS_AT_ONCE = 4
MAX_PEERS = 1024  # announced peers remembered; more are ignored (a LAN is not that big)
MAX_FOREIGN_LOGGED = 256

Address = tuple[str, int]
JoinFn = Callable[[list[Address]], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class Announcement:
    """One browser event, as the zeroconf thread hands it to trio."""

    name: str
    addresses: tuple[str, ...] = ()
    port: int = 0
    txt: Mapping[str, str] = field(default_factory=dict)
    removed: bool = False


def ca_fingerprint(ca_cert: Path) -> str:
    """SHA-256 (hex) of the DER of the swarm CA certificate: the swarm's name on the LAN."""
    return pki.load_cert(ca_cert).fingerprint(hashes.SHA256()).hex()


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def dialable(address: str) -> bool:
    """Whether a peer's announced address is worth dialing from the LAN: not loopback,
    unspecified or multicast, and not an IPv6 link-local one (it needs a scope)."""
    ip = _ip(address)
    return ip is not None and not (ip.is_loopback or ip.is_unspecified or ip.is_multicast
                                   or (ip.version == 6 and ip.is_link_local))


def interface_addresses(version: int) -> list[str]:
    """Every non-loopback address of IP ``version`` on this machine (IPv6: not link-local)."""
    import ifaddr  # zeroconf's own dependency for the same question

    out: list[str] = []
    for adapter in ifaddr.get_adapters():
        for a in adapter.ips:
            text = a.ip if isinstance(a.ip, str) else a.ip[0]
            ip = _ip(text)
            if ip is not None and ip.version == version and dialable(text) and text not in out:
                out.append(text)
    return out


async def announced_addresses(listen_host: str) -> tuple[list[str], str]:
    """(addresses to announce and bind zeroconf to, why none when empty) for a node listening
    on ``listen_host`` (see the module docstring)."""
    if listen_host in ("", "0.0.0.0", "::"):
        version = 6 if listen_host == "::" else 4
        found = await trio.to_thread.run_sync(interface_addresses, version)
        return found, "" if found else f"no non-loopback IPv{version} interface"
    ip = _ip(listen_host)
    if ip is None:  # a host name: where it resolves
        try:
            infos = await trio.socket.getaddrinfo(listen_host, None, type=socket.SOCK_STREAM)
        except OSError as exc:
            return [], f"cannot resolve {listen_host}: {exc}"
        ip = _ip(str(infos[0][4][0])) if infos else None
        if ip is None:
            return [], f"cannot resolve {listen_host}"
    if ip.is_loopback:
        return [], f"listening on loopback ({ip}): not reachable from a LAN"
    if ip.is_unspecified or ip.is_multicast:
        return [], f"cannot announce {ip}"
    return [str(ip)], ""


class Discovery:
    """Announce this node and join the swarm's others found on the LAN (module docstring).

    ``join(addresses)`` dials and joins through the addresses of one announced peer (the
    node's ``join_addresses``); ``connected(node_id)`` tells whether a peer is in the routing
    table already (then it is not dialed again). Counters, for ``status``: ``found`` (this
    swarm's announcements, new or with new addresses), ``joined`` (peers joined through one),
    ``ignored_foreign`` (announcements of other swarms), ``withdrawn`` (this swarm's peers that
    withdrew theirs), ``incompatible`` (this swarm, other protocol version), ``malformed``,
    ``dropped`` (events lost to a full channel)."""

    def __init__(
        self,
        *,
        node_id: bytes,
        ca: str,
        host: str,
        port: int,
        join: JoinFn,
        connected: Callable[[bytes], bool] = lambda _node_id: False,
    ) -> None:
        self.node_id = node_id
        self.ca = ca.lower()
        self.host = host
        self.port = port
        self._join = join
        self._connected = connected
        self.state = "starting"
        self.addresses: list[str] = []
        self.found = self.joined = self.ignored_foreign = self.withdrawn = 0
        self.incompatible = self.malformed = 0
        self.dropped = 0  # written by the zeroconf browser thread only
        self._peers: dict[bytes, tuple[Address, ...]] = {}  # announced now: node ID → addresses
        self._names: dict[str, bytes] = {}  # service name → node ID
        self._busy: set[bytes] = set()
        self._foreign: set[str] = set()
        self._limit = trio.CapacityLimiter(JOINS_AT_ONCE)
        self._met = trio.Event()
        self._send, self._receive = trio.open_memory_channel[Announcement](QUEUE_SIZE)
        self._token: trio.lowlevel.TrioToken | None = None

    @classmethod
    def for_node(cls, node: Node, identity: pki.Identity, listen_host: str) -> Discovery:
        """Discovery for ``node`` (listening on ``listen_host`` as configured)."""
        return cls(
            node_id=identity.node_id, ca=ca_fingerprint(identity.ca_cert), host=listen_host,
            port=node.contact.port,
            join=lambda addresses: node.join_addresses(addresses, quiet=True),
            connected=lambda node_id: node_id in node.routing,
        )

    @property
    def instance(self) -> str:
        return f"dhtfs-{self.node_id.hex()[:16]}"

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state, "announced": [f"{a}:{self.port}" for a in self.addresses],
            "found": self.found, "joined": self.joined, "lan_peers": len(self._peers),
            "ignored_foreign": self.ignored_foreign, "foreign_swarms": len(self._foreign),
            "withdrawn": self.withdrawn, "incompatible": self.incompatible,
            "malformed": self.malformed, "dropped": self.dropped,
        }

    async def settle(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until a peer of this swarm found here is connected;
        at once when discovery is off."""
        with trio.move_on_after(timeout):
            while not self._met.is_set() and self.state in ("starting", "on"):
                with trio.move_on_after(0.05):
                    await self._met.wait()
        return self._met.is_set()

    # -- the trio side -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Announce, browse and join until cancelled; then withdraw (bounded)."""
        addresses, why = await announced_addresses(self.host)
        if not addresses:
            self.state = f"off: {why}"
            log.info("discovery off: %s", why)
            task_status.started()
            return
        self._token = trio.lowlevel.current_trio_token()
        handoff = _Handoff()
        try:
            with trio.fail_after(OPEN_DEADLINE):
                await trio.to_thread.run_sync(self._open, addresses, handoff,
                                              abandon_on_cancel=True)
            zc, browser = handoff.take()
        except BaseException as exc:
            late = handoff.abandon()  # still opening: the thread closes what it opens
            if late is not None:
                with trio.move_on_after(CLOSE_DEADLINE) as scope:
                    scope.shield = True
                    await trio.to_thread.run_sync(_close, *late, abandon_on_cancel=True)
            if not isinstance(exc, Exception):  # Cancelled, KeyboardInterrupt
                raise
            self.state = f"off: {exc or type(exc).__name__}"
            log.warning("discovery off: cannot start mDNS on %s: %s", ", ".join(addresses),
                        exc or type(exc).__name__)
            task_status.started()
            return
        self.addresses = addresses
        self.state = "on"
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._register, zc, self._service_info(addresses))
                await nursery.start(self.process)
                task_status.started()
        finally:
            self._send.close()  # the browser thread's posts now fail at once
            self.state = "stopped"
            with trio.move_on_after(CLOSE_DEADLINE) as scope:
                scope.shield = True
                await trio.to_thread.run_sync(_close, zc, browser, abandon_on_cancel=True)
            if scope.cancelled_caught:
                log.warning("discovery: zeroconf did not close within %.0fs", CLOSE_DEADLINE)

    async def process(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                      ) -> None:
        """The trio side alone (``run`` starts it; tests drive it with ``post``): take the
        announcements posted from any thread, filter, remember, join; until cancelled."""
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._retry, nursery)
            task_status.started()
            async with self._receive:
                async for announcement in self._receive:
                    self.handle(announcement, nursery)

    def _service_info(self, addresses: list[str]) -> ServiceInfo:
        from zeroconf import ServiceInfo

        return ServiceInfo(
            SERVICE_TYPE, f"{self.instance}.{SERVICE_TYPE}", port=self.port,
            properties={"id": self.node_id.hex(), "ca": self.ca, "v": PROTOCOL_VERSION},
            server=f"{self.instance}.local.", parsed_addresses=addresses,
        )

    async def _register(self, zc: Zeroconf, info: ServiceInfo) -> None:
        register = functools.partial(zc.register_service, info, allow_name_change=True)
        with trio.move_on_after(REGISTER_DEADLINE) as scope:
            try:
                await trio.to_thread.run_sync(register, abandon_on_cancel=True)
            except Exception as exc:  # zeroconf's own errors: a warning, never a dead node
                log.warning("discovery: cannot announce %s: %s", info.name, exc)
                return
            log.info("discovery: announcing %s (%s port %d)", info.name,
                     ", ".join(self.addresses), self.port)
        if scope.cancelled_caught:
            log.warning("discovery: announcing took more than %.0fs", REGISTER_DEADLINE)

    def handle(self, ann: Announcement, nursery: trio.Nursery) -> None:
        """One announcement (or withdrawal), on the trio side: filter, remember, join."""
        if ann.removed:
            node_id = self._names.pop(ann.name, None)
            if node_id is not None and self._peers.pop(node_id, None) is not None:
                self.withdrawn += 1
                log.info("discovery: %s withdrew its announcement", node_id.hex()[:16])
            return
        accepted = self.accept(ann)
        if accepted is None:
            return
        node_id, addresses = accepted
        if self._peers.get(node_id) == addresses:
            return
        if node_id not in self._peers and len(self._peers) >= MAX_PEERS:
            return
        self._peers[node_id] = addresses
        self._names[ann.name] = node_id
        self.found += 1
        log.info("discovery: found %s at %s", node_id.hex()[:16],
                 ", ".join(f"{h}:{p}" for h, p in addresses))
        self._maybe_join(nursery, node_id)

    def accept(self, ann: Announcement) -> tuple[bytes, tuple[Address, ...]] | None:
        """(node ID, addresses to dial) of an announcement of another node of this swarm;
        None for any other (counted: foreign, incompatible, malformed; or ourselves)."""
        txt = ann.txt
        ca = str(txt.get("ca") or "").lower()
        try:
            node_id = bytes.fromhex(str(txt.get("id") or ""))
        except ValueError:
            node_id = b""
        if len(node_id) != 32 or len(ca) != 64 or not txt.get("v") or not 0 < ann.port < 65536:
            self.malformed += 1
            return None
        if ca != self.ca:
            self.ignored_foreign += 1
            if ca not in self._foreign and len(self._foreign) < MAX_FOREIGN_LOGGED:
                self._foreign.add(ca)
                log.info("discovery: ignoring %s and any other node of swarm CA %s… "
                         "(not ours, %s…)", ann.name, ca[:16], self.ca[:16])
            return None
        if txt["v"] != PROTOCOL_VERSION:
            self.incompatible += 1
            return None
        if node_id == self.node_id:
            return None
        addresses = tuple((a, ann.port) for a in ann.addresses if dialable(a))
        return (node_id, addresses) if addresses else None

    def _maybe_join(self, nursery: trio.Nursery, node_id: bytes) -> None:
        if node_id in self._busy:
            return
        if self._connected(node_id):
            self._met.set()
            return
        self._busy.add(node_id)
        nursery.start_soon(self._join_one, node_id)

    async def _join_one(self, node_id: bytes) -> None:
        try:
            async with self._limit:
                addresses = self._peers.get(node_id)
                if addresses is None or self._connected(node_id):
                    return
                with trio.move_on_after(JOIN_DEADLINE):
                    await self._join(list(addresses))
                if self._connected(node_id):
                    self.joined += 1
                    self._met.set()
                    log.info("discovery: joined %s", node_id.hex()[:16])
                else:
                    log.debug("discovery: could not join %s at %s (retrying every %.0fs)",
                              node_id.hex()[:16], addresses, RETRY_SECONDS)
        except Exception:  # a join that fails must not take the node down
            log.warning("discovery: joining %s failed", node_id.hex()[:16], exc_info=True)
        finally:
            self._busy.discard(node_id)

    async def _retry(self, nursery: trio.Nursery) -> None:
        """Dial again the announced peers not in the routing table (a failed dial; or a peer
        that dropped out and is back with the same announcement, which raises no event)."""
        while True:
            await trio.sleep(RETRY_SECONDS)
            for node_id in list(self._peers):
                self._maybe_join(nursery, node_id)

    # -- the zeroconf side (its threads) -------------------------------------------------------

    def _open(self, addresses: list[str], handoff: _Handoff) -> None:
        """Worker thread: sockets on ``addresses``' interfaces, zeroconf's loop thread, and
        the browser's thread, handed over through ``handoff`` (or closed, if trio gave up)."""
        from zeroconf import ServiceBrowser, Zeroconf

        zc = Zeroconf(interfaces=list(addresses), use_asyncio=False)
        try:
            browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[self._on_change])
        except BaseException:
            zc.close()
            raise
        if not handoff.give((zc, browser)):
            _close(zc, browser)

    def _on_change(self, zeroconf: Zeroconf, service_type: str, name: str,
                   state_change: ServiceStateChange) -> None:
        """Browser thread: resolve the service (blocking here is allowed) and post it."""
        from zeroconf import ServiceStateChange

        try:
            if state_change is ServiceStateChange.Removed:
                self.post(Announcement(name, removed=True))
                return
            info = zeroconf.get_service_info(service_type, name, timeout=INFO_TIMEOUT_MS)
            if info is None or info.port is None:
                return
            txt = {k: v for k, v in info.decoded_properties.items() if v is not None}
            self.post(Announcement(name, tuple(info.parsed_addresses()), info.port, txt))
        except Exception as exc:  # a closing zeroconf, a garbled record: never kill the thread
            log.debug("discovery: %s: %s", name, exc)

    def post(self, ann: Announcement) -> None:
        """From a foreign (non-trio) thread: hand ``ann`` to the trio side, or drop it."""
        token = self._token
        if token is None:
            return
        try:
            trio.from_thread.run_sync(self._send.send_nowait, ann, trio_token=token)
        except trio.WouldBlock:
            self.dropped += 1
        except (trio.RunFinishedError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass


class _Handoff:
    """What a worker thread opened, for trio to take, unless trio gave up waiting (then the
    thread closes it itself): nothing opened is ever left running."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value: tuple[Zeroconf, ServiceBrowser] | None = None
        self._abandoned = False

    def give(self, value: tuple[Zeroconf, ServiceBrowser]) -> bool:
        with self._lock:
            if self._abandoned:
                return False
            self._value = value
            return True

    def take(self) -> tuple[Zeroconf, ServiceBrowser]:
        with self._lock:
            assert self._value is not None
            return self._value

    def abandon(self) -> tuple[Zeroconf, ServiceBrowser] | None:
        """Give up; what was handed over already (to be closed by the caller), if anything."""
        with self._lock:
            self._abandoned = True
            value, self._value = self._value, None
            return value


def _close(zc: Zeroconf, browser: ServiceBrowser) -> None:
    """Worker thread: withdraw (goodbye records), stop browsing, close the sockets; a failure
    of one step is logged and the next one still runs."""
    for step in (zc.close, browser.cancel):  # close unregisters every service first
        try:
            step()
        except Exception as exc:
            log.debug("discovery: closing zeroconf: %s", exc)


__all__ = ["SERVICE_TYPE", "Announcement", "Discovery", "ca_fingerprint"]
