"""Durations counted by bucket: the latency of requests (stats.py) and of
Redis's round trips (stores/redis.py).  It imports nothing of the
package, so that any layer may count in one."""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

# Upper bounds of the latency buckets, in seconds: 10 µs to 1 s, in steps
# of 1, 2.5 and 5 (Prometheus's "le": a bucket counts what is at most it).
LATENCY_BOUNDS = tuple(m * 10.0 ** e for e in range(-5, 0) for m in (1, 2.5, 5)) + (1.0,)


class Histogram:
    """Counts of durations by bucket, and their sum, in seconds."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BOUNDS) + 1)     # the last: over 1 s
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BOUNDS, seconds)] += 1
        self.sum += seconds

    def snapshot(self) -> Buckets:
        """The buckets as Prometheus has them: cumulative, by upper bound."""
        buckets: list[tuple[float | str, int]] = []
        total = 0
        for bound, count in zip((*LATENCY_BOUNDS, float("inf")), self.counts):
            total += count
            buckets.append((bound if bound != float("inf") else "+Inf", total))
        return Buckets(total, round(self.sum, 6), buckets)


@dataclass(frozen=True)
class Buckets:
    """A Histogram as the stats report it: how many, their sum, and the
    cumulative count at each upper bound (the last "+Inf")."""

    count: int
    sum: float
    buckets: list[tuple[float | str, int]]

    @classmethod
    def from_json(cls, found: dict[str, Any]) -> Buckets:
        return cls(found["count"], found["sum"],
                   [(bound, cumulative) for bound, cumulative in found["buckets"]])
