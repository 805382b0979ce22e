"""Prometheus metrics over HTTP, when tlsmgr_metrics_listen is set.

Imported only then.  The numbers are those of the stats request
(control.snapshot()), served at
/metrics by prometheus-client's HTTP server in a thread of its own.  Each
scrape asks the event loop for a snapshot, so that nothing is read while
the loop changes it.  The server is bound at start-up, before the daemon
gives up root and enters its jail; by default to loopback only.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from . import log
from .control import Control, snapshot

if TYPE_CHECKING:
    from .server import Server

_LISTEN = re.compile(r"(?:(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]]+)):)?(?P<port>\d+)")
_SCRAPE_TIMEOUT = 5.0

# Per cache: (metric, stats key, help); counters end in _total.
_CACHE_GAUGES = (("tlsmgr_cache_entries", "entries", "Entries in the TLS session cache"),
                 ("tlsmgr_cache_bytes", "bytes", "Bytes of ids and sessions in the cache"))
_CACHE_COUNTERS = (
    ("tlsmgr_cache_hits", "hits", "Lookups that found a session"),
    ("tlsmgr_cache_misses", "misses", "Lookups that found none (or an expired one)"),
    ("tlsmgr_cache_updates", "updates", "Sessions saved"),
    ("tlsmgr_cache_deletes", "deletes", "Sessions removed by delete requests"),
    ("tlsmgr_cache_expired", "expired", "Entries removed because they were too old"),
    ("tlsmgr_cache_evicted", "evicted", "Live entries removed to stay within the limits"),
    ("tlsmgr_cache_unopened", "unopened",
     "Entries read from Redis whose seal did not open (counted as misses too)"),
)


def parse_listen(value: str) -> tuple[str, int]:
    """(host, port) of a tlsmgr_metrics_listen value: PORT, HOST:PORT or
    [IPv6]:PORT; the host is 127.0.0.1 when not given."""
    match = _LISTEN.fullmatch(value.strip())
    if match is None or not 0 < int(match["port"]) < 65536:
        log.fatal("parameter tlsmgr_metrics_listen: bad value: %s (expected PORT, "
                  "HOST:PORT or [IPv6]:PORT)", value)
    return match["v6"] or match["host"] or "127.0.0.1", int(match["port"])


class Collector:
    """What each scrape reports, asked of the server's event loop."""

    def __init__(self, control: Control, server: Server):
        self.control = control
        self.server = server
        self._warn = log.RateLimitedWarning()

    async def _snapshot(self, loop: asyncio.AbstractEventLoop) -> dict[str, Any]:
        sources = self.control.sources
        if sources.tlsmgr.any_blocking:     # a store on the network: not in the loop
            return await loop.run_in_executor(self.server.workers, snapshot, sources)
        return snapshot(sources)

    def collect(self) -> Iterator[Metric]:
        loop = self.server.loop
        if loop is None:
            return
        # The loop busy or gone (the daemon stopping): an empty scrape and a
        # warning, never a traceback from the HTTP thread.
        snapshot_coroutine = self._snapshot(loop)
        try:
            future = asyncio.run_coroutine_threadsafe(snapshot_coroutine, loop)
        except RuntimeError as err:
            snapshot_coroutine.close()
            self._warn("metrics: no snapshot from the event loop: %s", err)
            return
        try:
            stats = future.result(_SCRAPE_TIMEOUT)
        except Exception as err:
            future.cancel()
            self._warn("metrics: no snapshot from the event loop: %s",
                       err or type(err).__name__)
            return
        yield GaugeMetricFamily("tlsmgr_uptime_seconds", "Seconds since the daemon started",
                                value=stats["uptime"])
        for name, key, text in _CACHE_GAUGES:
            family = GaugeMetricFamily(name, text, labels=["cache"])
            for label, cache in stats["caches"].items():
                family.add_metric([label], cache[key])
            yield family
        for name, key, text in _CACHE_COUNTERS:
            counter = CounterMetricFamily(name, text, labels=["cache"])
            for label, cache in stats["caches"].items():
                counter.add_metric([label], cache[key])
            yield counter
        keys = stats["ticket_keys"]
        yield GaugeMetricFamily("tlsmgr_ticket_keys", "Session ticket keys held",
                                value=keys["count"])
        if keys["current_age"] is not None:
            yield GaugeMetricFamily("tlsmgr_ticket_key_age_seconds",
                                    "Age of the current session ticket key",
                                    value=keys["current_age"])
        lookups = CounterMetricFamily(
            "tlsmgr_ticket_key_lookups", "tktkey requests: the current key, or how a "
            "lookup by name went", labels=["outcome"])
        for outcome, count in keys["lookups"].items():
            lookups.add_metric([outcome], count)
        yield lookups
        yield CounterMetricFamily("tlsmgr_ticket_keys_unopened",
                                  "Ticket keys read from Redis whose seal did not open",
                                  value=keys["unopened"])
        yield CounterMetricFamily("tlsmgr_ticket_key_rotations",
                                  "Session ticket keys made or taken on", value=keys["rotations"])
        yield CounterMetricFamily("tlsmgr_prng_reseeds", "PRNG reseeds from the entropy source",
                                  value=stats["prng"]["reseeds"])
        yield CounterMetricFamily("tlsmgr_prng_exchange_updates",
                                  "Rewrites of the PRNG exchange file",
                                  value=stats["prng"]["exchange_updates"])
        yield GaugeMetricFamily("tlsmgr_connections", "Client connections open",
                                value=stats["connections"]["now"])
        yield CounterMetricFamily("tlsmgr_connections_accepted", "Client connections accepted",
                                  value=stats["connections"]["total"])
        requests = CounterMetricFamily("tlsmgr_requests", "Requests answered, by name",
                                       labels=["request"])
        for request, count in stats["requests"].items():
            requests.add_metric([request], count)
        yield requests
        errors = CounterMetricFamily("tlsmgr_errors", "Errors, by kind", labels=["kind"])
        for kind, count in stats["errors"].items():
            errors.add_metric([kind], count)
        yield errors
        durations = HistogramMetricFamily(
            "tlsmgr_request_duration_seconds",
            "From a request read whole to its reply written, by request name",
            labels=["request"])
        for request, histogram in stats["latency"].items():
            add_histogram(durations, [request], histogram)
        yield durations
        yield from redis_health(stats)


def add_histogram(family: HistogramMetricFamily, labels: list[str],
                  histogram: dict[str, Any]) -> None:
    family.add_metric(labels, [(bound if bound == "+Inf" else repr(bound), count)
                               for bound, count in histogram["buckets"]],
                      sum_value=histogram["sum"])


def redis_health(stats: dict[str, Any]) -> Iterator[Metric]:
    """The fleet's Redis, for each cache on it and for the ticket keys."""
    users = {label: cache["redis"] for label, cache in stats["caches"].items()
             if "redis" in cache}
    if "redis" in stats["ticket_keys"]:
        users["tickets"] = stats["ticket_keys"]["redis"]
    if not users:
        return
    info = GaugeMetricFamily("tlsmgr_redis_endpoint", "The Redis endpoint in use (1)",
                             labels=["cache", "endpoint"])
    paused = GaugeMetricFamily("tlsmgr_redis_paused", "1 while Redis is not asked "
                               "(unreachable; probed every second)", labels=["cache"])
    since = GaugeMetricFamily("tlsmgr_redis_paused_since_seconds", "When the pause began "
                              "(Unix time), while paused", labels=["cache"])
    failures = CounterMetricFamily("tlsmgr_redis_failures", "Times Redis became "
                                   "unreachable", labels=["cache"])
    recoveries = CounterMetricFamily("tlsmgr_redis_recoveries", "Times a probe found "
                                     "Redis back", labels=["cache"])
    trips = HistogramMetricFamily("tlsmgr_redis_round_trip_seconds", "Each Redis command, "
                                  "from asking to its answer", labels=["cache"])
    for label, health in users.items():
        info.add_metric([label, health["endpoint"]], 1)
        paused.add_metric([label], int(health["paused"]))
        if health["paused_since"] is not None:
            since.add_metric([label], health["paused_since"])
        failures.add_metric([label], health["failures"])
        recoveries.add_metric([label], health["recoveries"])
        add_histogram(trips, [label], health["round_trips"])
    yield from (info, paused, since, failures, recoveries, trips)


def start(listen: str, control: Control, server: Server) -> None:
    """Serve what control reports, asked of the server's event loop, at
    listen (a tlsmgr_metrics_listen value)."""
    host, port = parse_listen(listen)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(control, server))
    try:
        start_http_server(port, host, registry=registry)
    except OSError as err:
        log.fatal("cannot serve metrics on %s port %d: %s", host, port, err.strerror or err)
    log.info("serving metrics at http://%s:%d/metrics",
             "[%s]" % host if ":" in host else host, port)
