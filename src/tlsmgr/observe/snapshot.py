"""The stats snapshot: the one schema that the stats request's JSON,
tlsmgr-ctl's text and its watch, and the metrics all read.

control.snapshot() makes one from the daemon's state; to_json() is what
the stats request sends (docs/OPERATIONS.md describes it), and
from_json() reads it back in tlsmgr-ctl.  Each part is the record its
owner fills: a cache's (CacheStats, by service/scache.py), a store's
health (Health, by stores/redis.py), a histogram's buckets (Buckets).
They are kept here, below the layers that fill them, so that the schema
is read in one place.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .histogram import Buckets

# How a lookup of a key by name went (the stats, docs/OPERATIONS.md): the
# current key or the one before it, one only the fleet's Redis had, a
# name no host has (hosts disagree on keys, or keys rotate too fast), one
# past its decrypt window, or Redis could not be asked.
OUTCOMES = ("found_current", "found_previous", "found_fleet", "unknown", "expired",
            "unavailable")


@dataclass(frozen=True)
class Health:
    """How a store on the network is doing, as its breaker sees it
    (stores/redis.py), for the stats: where it is, whether it is asked,
    what went wrong last, and how long its round trips take."""

    endpoint: str
    paused: bool                   # not asked now: unreachable, probed every second
    paused_since: int | None       # Unix time
    last_error: str
    failures: int                  # times it became unreachable
    recoveries: int                # times a probe found it back
    round_trips: Buckets

    @classmethod
    def from_json(cls, found: dict[str, Any]) -> Health:
        return cls(found["endpoint"], found["paused"], found["paused_since"],
                   found["last_error"], found["failures"], found["recoveries"],
                   Buckets.from_json(found["round_trips"]))


@dataclass(frozen=True)
class CacheStats:
    """What a cache reports in the stats (docs/OPERATIONS.md): entries and
    bytes as its store counts them (-1 when it cannot), and what it did."""

    entries: int
    bytes: int
    hits: int
    misses: int
    updates: int
    deletes: int
    expired: int
    evicted: int
    unopened: int                  # entries read from Redis whose seal did not open
    hit_ratio: float
    redis: Health | None = None    # a store on the network: how it is doing

    @classmethod
    def from_json(cls, found: dict[str, Any]) -> CacheStats:
        redis = found.get("redis")
        return cls(found["entries"], found["bytes"], found["hits"], found["misses"],
                   found["updates"], found["deletes"], found["expired"], found["evicted"],
                   found["unopened"], found["hit_ratio"],
                   None if redis is None else Health.from_json(redis))


@dataclass(frozen=True)
class TicketKeyStats:
    count: int                     # keys held
    current_age: int | None        # seconds, of the current key
    rotations: int                 # keys made or taken on
    shared: bool                   # the fleet's, through Redis
    unopened: int                  # keys read from Redis whose seal did not open
    lookups: dict[str, int]        # tktkey requests: "current", or how a lookup by name went
    redis: Health | None = None    # the fleet's Redis, for the keys

    @classmethod
    def from_json(cls, found: dict[str, Any]) -> TicketKeyStats:
        redis = found.get("redis")
        return cls(found["count"], found["current_age"], found["rotations"], found["shared"],
                   found["unopened"], dict(found["lookups"]),
                   None if redis is None else Health.from_json(redis))


@dataclass(frozen=True)
class PrngStats:
    reseeds: int
    exchange_updates: int


@dataclass(frozen=True)
class ConnectionStats:
    now: int                       # open
    total: int                     # accepted since start


@dataclass(frozen=True)
class Snapshot:
    uptime: float                  # seconds
    fast_path: str                 # "compiled" or "pure"
    caches: dict[str, CacheStats]  # the enabled ones, by type
    ticket_keys: TicketKeyStats
    prng: PrngStats
    connections: ConnectionStats
    requests: dict[str, int]       # by name, those asked
    errors: dict[str, int]         # by kind, those met
    latency: dict[str, Buckets]    # by request name, those answered

    def to_json(self) -> dict[str, Any]:
        """The stats request's JSON: as asdict(), without the "redis" of a
        part that has none."""
        def without_empty_redis(found: Any) -> Any:
            if isinstance(found, dict):
                return {key: without_empty_redis(value) for key, value in found.items()
                        if not (key == "redis" and value is None)}
            if isinstance(found, (list, tuple)):
                return [without_empty_redis(value) for value in found]
            return found
        return dict(without_empty_redis(dataclasses.asdict(self)))

    @classmethod
    def from_json(cls, found: dict[str, Any]) -> Snapshot:
        """A snapshot as the stats request sent it; KeyError, TypeError or
        ValueError when it is not one."""
        return cls(found["uptime"], found["fast_path"],
                   {label: CacheStats.from_json(cache) for label, cache in found["caches"].items()},
                   TicketKeyStats.from_json(found["ticket_keys"]),
                   PrngStats(**found["prng"]), ConnectionStats(**found["connections"]),
                   dict(found["requests"]), dict(found["errors"]),
                   {name: Buckets.from_json(histogram)
                    for name, histogram in found["latency"].items()})
