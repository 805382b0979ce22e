"""Prometheus metrics over HTTP, when tlsmgr_metrics_listen is set.

Imported only then.  The numbers are those of the stats request
(control.snapshot()), served at /metrics on the daemon's own event loop
(httpd.py); prometheus-client only writes them out as text.  Each scrape
takes its snapshot on the loop, so that nothing is read while the loop
changes it.  The socket is bound at start-up, before the daemon gives up
root and enters its jail, by default to loopback only; the server serves
it once its loop runs.

The port is open to every local user (docs/OPERATIONS.md): what scrapers may
take of the daemon is bounded by the METRICS_ constants.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Callable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest

try:
    from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
except ImportError:     # older (Debian 12 has 0.16): the same text format, its one
    from prometheus_client.exposition import CONTENT_TYPE_LATEST as CONTENT_TYPE_PLAIN_0_0_4

from ..observe.histogram import Buckets
from ..observe.snapshot import CacheStats, Snapshot
from ..service.control import Control, Sources, snapshot
from ..util import log
from ..util.pending import Later
from . import httpd
from .server import Server, SideListener

# What scrapers, any local user among them, may take of the daemon.  The
# listener and its connections are among the descriptors that the server
# keeps aside from its clients' (server.py: _RESERVED_FILES).
METRICS_CONNECTIONS = 16    # at once; one more is closed as soon as it is accepted
METRICS_DEADLINE = 5.0      # seconds from accept(2) to close, whatever was sent or read
METRICS_HEAD_LIMIT = 8192   # bytes of request line and headers
METRICS_BACKLOG = 16        # connections the kernel queues for accept(2)
# How long a scrape waits for a snapshot from the network: within
# METRICS_DEADLINE, so that it is told so (503) before it is closed.
_SNAPSHOT_WITHIN = 3.0

_PATHS = frozenset({b"/", b"/metrics"})
_LISTEN = re.compile(r"(?:(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]]+)):)?(?P<port>\d+)")

# Per cache: (metric, its value in a cache's stats, help); counters end in _total.
CacheMetric = tuple[str, Callable[[CacheStats], float], str]
_CACHE_GAUGES: tuple[CacheMetric, ...] = (
    ("tlsmgr_cache_entries", lambda cache: cache.entries, "Entries in the TLS session cache"),
    ("tlsmgr_cache_bytes", lambda cache: cache.bytes, "Bytes of ids and sessions in the cache"),
)
_CACHE_COUNTERS: tuple[CacheMetric, ...] = (
    ("tlsmgr_cache_hits", lambda cache: cache.hits, "Lookups that found a session"),
    ("tlsmgr_cache_misses", lambda cache: cache.misses,
     "Lookups that found none (or an expired one)"),
    ("tlsmgr_cache_updates", lambda cache: cache.updates, "Sessions saved"),
    ("tlsmgr_cache_deletes", lambda cache: cache.deletes, "Sessions removed by delete requests"),
    ("tlsmgr_cache_expired", lambda cache: cache.expired,
     "Entries removed because they were too old"),
    ("tlsmgr_cache_evicted", lambda cache: cache.evicted,
     "Live entries removed to stay within the limits"),
    ("tlsmgr_cache_unopened", lambda cache: cache.unopened,
     "Entries read from Redis whose seal did not open (counted as misses too)"),
)


def parse_listen(value: str) -> tuple[str, int]:
    """(host, port) of a tlsmgr_metrics_listen value: PORT, HOST:PORT or
    [IPv6]:PORT; the host is 127.0.0.1 when not given."""
    match = _LISTEN.fullmatch(value.strip())
    if match is None or not 0 < int(match["port"]) < 65536:
        raise ValueError("parameter tlsmgr_metrics_listen: bad value: %s (expected PORT, "
                         "HOST:PORT or [IPv6]:PORT)" % value)
    return match["v6"] or match["host"] or "127.0.0.1", int(match["port"])


class Collector:
    """The metric families of one snapshot (control.snapshot()), as
    prometheus-client collects them."""

    def __init__(self, stats: Snapshot):
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self.stats
        yield GaugeMetricFamily("tlsmgr_uptime_seconds", "Seconds since the daemon started",
                                value=stats.uptime)
        for name, value, text in _CACHE_GAUGES:
            family = GaugeMetricFamily(name, text, labels=["cache"])
            for label, cache in stats.caches.items():
                family.add_metric([label], value(cache))
            yield family
        for name, value, text in _CACHE_COUNTERS:
            counter = CounterMetricFamily(name, text, labels=["cache"])
            for label, cache in stats.caches.items():
                counter.add_metric([label], value(cache))
            yield counter
        keys = stats.ticket_keys
        yield GaugeMetricFamily("tlsmgr_ticket_keys", "Session ticket keys held",
                                value=keys.count)
        if keys.current_age is not None:
            yield GaugeMetricFamily("tlsmgr_ticket_key_age_seconds",
                                    "Age of the current session ticket key",
                                    value=keys.current_age)
        lookups = CounterMetricFamily(
            "tlsmgr_ticket_key_lookups", "tktkey requests: the current key, or how a "
            "lookup by name went", labels=["outcome"])
        for outcome, count in keys.lookups.items():
            lookups.add_metric([outcome], count)
        yield lookups
        yield CounterMetricFamily("tlsmgr_ticket_keys_unopened",
                                  "Ticket keys read from Redis whose seal did not open",
                                  value=keys.unopened)
        yield CounterMetricFamily("tlsmgr_ticket_key_rotations",
                                  "Session ticket keys made or taken on", value=keys.rotations)
        yield CounterMetricFamily("tlsmgr_prng_reseeds", "PRNG reseeds from the entropy source",
                                  value=stats.prng.reseeds)
        yield CounterMetricFamily("tlsmgr_prng_exchange_updates",
                                  "Rewrites of the PRNG exchange file",
                                  value=stats.prng.exchange_updates)
        yield GaugeMetricFamily("tlsmgr_connections", "Client connections open",
                                value=stats.connections.now)
        yield CounterMetricFamily("tlsmgr_connections_accepted", "Client connections accepted",
                                  value=stats.connections.total)
        requests = CounterMetricFamily("tlsmgr_requests", "Requests answered, by name",
                                       labels=["request"])
        for request, count in stats.requests.items():
            requests.add_metric([request], count)
        yield requests
        errors = CounterMetricFamily("tlsmgr_errors", "Errors, by kind", labels=["kind"])
        for kind, count in stats.errors.items():
            errors.add_metric([kind], count)
        yield errors
        durations = HistogramMetricFamily(
            "tlsmgr_request_duration_seconds",
            "From a request read whole to its reply written, by request name",
            labels=["request"])
        for request, histogram in stats.latency.items():
            add_histogram(durations, [request], histogram)
        yield durations
        yield from redis_health(stats)


def add_histogram(family: HistogramMetricFamily, labels: list[str],
                  histogram: Buckets) -> None:
    family.add_metric(labels, [(bound if bound == "+Inf" else repr(bound), count)
                               for bound, count in histogram.buckets],
                      sum_value=histogram.sum)


def redis_health(stats: Snapshot) -> Iterator[Metric]:
    """The fleet's Redis, for each cache on it and for the ticket keys."""
    users = {label: cache.redis for label, cache in stats.caches.items()
             if cache.redis is not None}
    if stats.ticket_keys.redis is not None:
        users["tickets"] = stats.ticket_keys.redis
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
        info.add_metric([label, health.endpoint], 1)
        paused.add_metric([label], int(health.paused))
        if health.paused_since is not None:
            since.add_metric([label], health.paused_since)
        failures.add_metric([label], health.failures)
        recoveries.add_metric([label], health.recoveries)
        add_histogram(trips, [label], health.round_trips)
    yield from (info, paused, since, failures, recoveries, trips)


class Scrapes:
    """The page of each scrape: a snapshot taken on the event loop, as text."""

    def __init__(self, sources: Sources):
        self.sources = sources
        # A snapshot waiting on the network, for the scrapes meanwhile.
        self._taking: asyncio.Future[Snapshot] | None = None   # as an asyncio one

    async def page(self) -> bytes:
        return generate_latest(Collector(await self._snapshot()))

    async def _snapshot(self) -> Snapshot:
        if self._taking is None:
            taken = snapshot(self.sources)
            if not isinstance(taken, Later):
                return taken
            # A store on the network answers later; the scrapes that come
            # meanwhile share its answer, so that scrapers add no more
            # than one question at a time to what Redis is asked.
            self._taking = asyncio.ensure_future(_awaited(taken))
            self._taking.add_done_callback(self._taken)
        try:
            return await asyncio.wait_for(asyncio.shield(self._taking), _SNAPSHOT_WITHIN)
        except TimeoutError:
            raise TimeoutError("no snapshot within %g seconds" % _SNAPSHOT_WITHIN) from None

    def _taken(self, _: asyncio.Future[Snapshot]) -> None:
        self._taking = None


async def _awaited(later: Later[Snapshot]) -> Snapshot:
    return await later


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket listening at host (its first address) and port."""
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                  flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # A restart need not wait for the last scrapes' TIME_WAIT to end.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(METRICS_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def start(listen: str, control: Control, server: Server) -> None:
    """Bind listen (a tlsmgr_metrics_listen value) now, and have the
    server serve what control reports there once its event loop runs.
    Metrics are not worth stopping mail for: a bad value, or a port that
    cannot be bound, is a warning, and the daemon serves without them."""
    try:
        host, port = parse_listen(listen)
    except ValueError as err:
        log.warn("%s: metrics are not served", err)
        return
    try:
        sock = bind(host, port)
    except OSError as err:
        log.warn("cannot serve metrics on %s port %d: %s: metrics are not served (choose "
                 "another tlsmgr_metrics_listen)", host, port, err.strerror or err)
        return
    site = httpd.Site("metrics", _PATHS, CONTENT_TYPE_PLAIN_0_0_4,
                      Scrapes(control.sources).page,
                      METRICS_CONNECTIONS, METRICS_DEADLINE, METRICS_HEAD_LIMIT)
    server.side_listeners.append(
        SideListener(sock, lambda: httpd.Responder(site), METRICS_BACKLOG))
    log.info("serving metrics at http://%s:%d/metrics",
             "[%s]" % host if ":" in host else host, port)
