"""Prometheus metrics (``-o metrics=127.0.0.1:PORT``), with the official ``prometheus-client``.

Off by default; when on, an HTTP endpoint on a loopback address serves ``/metrics``:

============================================ =================================================
``dhtfs_rpc_seconds{method,outcome}``        outgoing RPCs by method and outcome (ok, refused:
                                             the peer answered an error, failed: no answer),
                                             latency histogram (its ``_count`` counts them)
``dhtfs_lookup_hops`` / ``..._queries``      Kademlia lookups: hops and queries of each
``dhtfs_fuse_op_seconds{op,outcome}``        FUSE requests by kind (ok, error), latency
``dhtfs_blocks_total{event}``                blocks stored (written here), replicated (got
                                             their R copies), fetched (from the swarm),
                                             cached, evicted, repaired (copies pushed),
                                             reclaimed (collected)
``dhtfs_replication_backlog_{blocks,bytes}`` blocks written here still waiting for replicas
``dhtfs_cache_bytes`` / ``dhtfs_store_blocks`` cached copies on disk; blocks in the store
``dhtfs_oplog_lag_ops{peer}``                ops a peer last reported that this node lacks
``dhtfs_peers``                              contacts in the routing table
``dhtfs_network_bytes_total{direction}``     bytes received and sent on peer connections
``dhtfs_http_requests_total{status}``         HTTP gateway (``-o http``) requests by status;
``dhtfs_http_sent_bytes_total``               its body bytes sent; its time to first byte
``dhtfs_http_first_byte_seconds``             (a summary: ``_count`` and ``_sum``)
============================================ =================================================

Invariants:
- the HTTP server runs on its own thread (``prometheus_client.start_http_server``). Counters
  and histograms updated on the trio thread are thread-safe objects of the library; every
  value read from the node's own state at scrape time is read on the trio thread
  (``trio.from_thread.run_sync`` with the loop's token, bounded by ``SNAPSHOT_DEADLINE``),
  never from the server's thread;
- only loopback addresses are accepted (the numbers describe the node and its peers: a
  reverse proxy or an SSH tunnel exposes them further, on purpose);
- ``prometheus_client`` is imported only when metrics are on (start-up time of every mount).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import trio

log = logging.getLogger(__name__)

SNAPSHOT_DEADLINE = 5.0
LATENCY_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)
Snapshot = dict[str, Any]


class Metrics:
    """The node's metrics: event hooks (``rpc``, ``lookup``, ``fuse_op``) and the scrape-time
    ``snapshot`` of its counters (see the module docstring)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Histogram

        self.registry = CollectorRegistry()
        self.rpc_seconds = Histogram(
            "dhtfs_rpc_seconds", "Outgoing RPCs by method and outcome, latency in seconds",
            ["method", "outcome"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.lookup_hops = Histogram(
            "dhtfs_lookup_hops", "Kademlia lookups: sequential hops of each",
            buckets=(1, 2, 3, 4, 5, 6, 8, 10, 15), registry=self.registry)
        self.lookup_queries = Histogram(
            "dhtfs_lookup_queries", "Kademlia lookups: queries of each",
            buckets=(1, 2, 3, 5, 10, 20, 40, 80), registry=self.registry)
        self.fuse_seconds = Histogram(
            "dhtfs_fuse_op_seconds", "FUSE requests by kind and outcome, latency in seconds",
            ["op", "outcome"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self._snapshot: Callable[[], Snapshot] | None = None  # given to ``serve``
        self._token: trio.lowlevel.TrioToken | None = None
        self.registry.register(_SnapshotCollector(self))
        self.address: tuple[str, int] | None = None
        self._server: Any = None

    # -- events (trio thread) ------------------------------------------------------------------

    def rpc(self, method: str, outcome: str, seconds: float) -> None:
        self.rpc_seconds.labels(method, outcome).observe(seconds)

    def lookup(self, hops: int, queries: int) -> None:
        self.lookup_hops.observe(hops)
        self.lookup_queries.observe(queries)

    def fuse_op(self, op: str, ok: bool, seconds: float) -> None:
        self.fuse_seconds.labels(op, "ok" if ok else "error").observe(seconds)

    # -- serving -------------------------------------------------------------------------------

    async def serve(self, snapshot: Callable[[], Snapshot], host: str, port: int) -> None:
        """Serve ``/metrics`` until cancelled (the server thread is shut down then); each
        scrape reads ``snapshot()`` on the trio thread."""
        from prometheus_client import start_http_server

        self._snapshot = snapshot
        self._token = trio.lowlevel.current_trio_token()
        try:
            server, _thread = await trio.to_thread.run_sync(
                lambda: start_http_server(port, addr=host, registry=self.registry))
        except OSError as exc:
            log.error("cannot serve metrics on %s:%d: %s; going on without them", host, port,
                      exc.strerror or exc)
            return
        self._server = server
        self.address = (host, server.server_address[1])
        log.info("metrics on http://%s:%d/metrics", *self.address)
        try:
            await trio.sleep_forever()
        finally:
            threading.Thread(target=server.shutdown, daemon=True).start()
            server.server_close()

    def read_snapshot(self) -> Snapshot | None:
        """The node's counters, read on the trio thread (called from the server's)."""
        if self._token is None or self._snapshot is None:
            return None
        try:
            return trio.from_thread.run_sync(self._snapshot, trio_token=self._token)
        except (trio.RunFinishedError, RuntimeError) as exc:
            log.debug("metrics snapshot failed: %r", exc)
            return None


class _SnapshotCollector:
    """Turns ``Metrics.read_snapshot()`` into metric families at each scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Any]:
        return []  # values exist only at scrape time; nothing to check at registration

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            SummaryMetricFamily,
        )

        snap = self.metrics.read_snapshot()
        if snap is None:
            return
        blocks = CounterMetricFamily("dhtfs_blocks", "Blocks by event", labels=["event"])
        for event, value in snap.get("blocks", {}).items():
            blocks.add_metric([event], value)
        yield blocks
        net = CounterMetricFamily("dhtfs_network_bytes", "Bytes on peer connections",
                                  labels=["direction"])
        for direction, value in snap.get("network", {}).items():
            net.add_metric([direction], value)
        yield net
        for name, doc in (
            ("replication_backlog_blocks", "Blocks written here still waiting for replicas"),
            ("replication_backlog_bytes", "Bytes written here still waiting for replicas"),
            ("cache_bytes", "Cached copies on disk, bytes"),
            ("store_blocks", "Blocks in the store"),
            ("peers", "Contacts in the routing table"),
        ):
            if name in snap:
                yield GaugeMetricFamily(f"dhtfs_{name}", doc, value=snap[name])
        lag = GaugeMetricFamily("dhtfs_oplog_lag_ops",
                                "Ops a peer last reported that this node lacks", labels=["peer"])
        for peer, value in snap.get("oplog_lag", {}).items():
            lag.add_metric([peer], value)
        yield lag
        if gateway := snap.get("http"):
            requests = CounterMetricFamily("dhtfs_http_requests", "HTTP gateway requests by "
                                           "status", labels=["status"])
            for status, value in gateway["requests"].items():
                requests.add_metric([status], value)
            yield requests
            yield CounterMetricFamily("dhtfs_http_sent_bytes", "HTTP gateway body bytes sent",
                                      value=gateway["bytes_sent"])
            ttfb = gateway["ttfb_seconds"]
            yield SummaryMetricFamily("dhtfs_http_first_byte_seconds", "HTTP gateway: time "
                                      "from a request's head to the response's head",
                                      count_value=ttfb["count"], sum_value=ttfb["sum"])
