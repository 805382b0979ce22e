"""The stats snapshot: the one schema that the stats request's JSON,
tlsmgr-ctl's text and its watch, and the metrics all read.

control.snapshot() makes one from the daemon's state; to_json() is what
the stats request sends (docs/OPERATIONS.md describes it), and
from_json() reads it back in tlsmgr-ctl.  Each part is its owner's
record: a cache's (scache.CacheStats), a store's health (stores.Health),
a histogram's buckets (histogram.Buckets).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .histogram import Buckets
from .scache import CacheStats
from .stores import Health


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
