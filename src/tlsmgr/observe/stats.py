"""What the daemon has done: one record, counted where it happens.

The request handler (protocol.py) counts requests by name and the errors
it meets; the compiled path (_fastpath.c) counts the requests it answers
in C and adds them in when settle() is called; the server (server.py) and
each connection (connection.py) count connections and the errors of
clients (timeouts, limits, requests a store did not answer in time).
control.snapshot() and the metrics read it, after settle().  daemon.py
makes the one record and gives it to the request handlers and the server.
The caches keep their own counts (scache.py), since each is its own.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..wire.attr import Message
from .histogram import LATENCY_BOUNDS, Histogram
from .snapshot import OUTCOMES


@dataclass
class Stats:
    started: float = field(default_factory=time.monotonic)
    accepted: int = 0                                   # connections, in all
    # By request name: a plain dict, with a zero for every name the handler
    # knows (known_requests()), since a Counter costs twice as much to count
    # into, on every request's path.
    requests: dict[bytes, int] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)        # by kind
    # tktkey requests: "current" (no name), or how a lookup by name went
    # (snapshot.OUTCOMES); zeros too, as for requests.
    ticket_lookups: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("current", *OUTCOMES), 0))
    # From a request read whole to its reply written, by request name (the
    # names the handler knows; any other is b"unknown").
    latency: dict[bytes, Histogram] = field(default_factory=dict)
    # Requests and latencies counted elsewhere, where it costs less (the
    # compiled path's: fastpath.py), each added in here by its function.
    kept_elsewhere: list[Callable[[], None]] = field(default_factory=list)

    def settle(self) -> None:
        """Add in what is counted elsewhere: whoever reads requests or
        latency calls this first."""
        for add_in in self.kept_elsewhere:
            add_in()

    def add_answered(self, name: bytes, answered: int, observed: list[int],
                     seconds: float) -> None:
        """Requests answered elsewhere (the compiled path's), added in:
        how many, their count by latency bucket, and their latencies' sum."""
        self.requests[name] = self.requests.get(name, 0) + answered
        histogram = self.latency[name]
        for bucket, count in enumerate(observed):
            histogram.counts[bucket] += count
        histogram.sum += seconds

    def known_requests(self, names: Iterable[bytes]) -> None:
        for name in (*names, b"unknown"):
            self.requests.setdefault(name, 0)
            self.latency.setdefault(name, Histogram())

    def replied(self, messages: list[Message], since: float, now: float) -> None:
        """Requests read at since were answered at now."""
        # On every request's path: Histogram.observe() written out, once.
        latency, seconds = self.latency, now - since
        bucket = bisect.bisect_left(LATENCY_BOUNDS, seconds)
        for message in messages:
            histogram = latency.get(message[0][1]) if message else None
            if histogram is None:
                histogram = latency[b"unknown"]
            histogram.counts[bucket] += 1
            histogram.sum += seconds
