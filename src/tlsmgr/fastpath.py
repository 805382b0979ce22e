"""The common requests answered in one compiled call, where it is built.

Nearly every read from a tlsmgr client is one whole, well-formed lookup,
update, delete, tktkey or seed request.  _fastpath.c reads such a request,
counts it, answers it as protocol.Tlsmgr does (a cache request by the
cache's own method, its reply joined from protocol.CACHE_REPLIES; tktkey
and seed by the reply function the pure path calls too), writes the reply
and records its latency, all in one call from Connection.data_received():
a dozen Python calls fewer per request.  It counts in C, and adds its
counts into stats.Stats when they are read (Stats.settle()).  What it is
not sure of, it leaves untouched to the pure path (connection.py,
attr.py, protocol.py), which reads the same bytes from the start.

``pip install .`` compiles it where a C compiler and Python's headers are
at hand, and leaves it out otherwise (setup.py); the daemon then runs on
the pure path alone, with the same replies, counts and log lines
(tests/test_fastpath.py holds the two to that).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .protocol import CACHE_REPLIES, Tlsmgr
from .stats import LATENCY_BOUNDS

# answer(data, write, since): True if data was one whole request, answered
# (its reply given to write(), its latency counted from since); False if
# nothing was done, and the pure path is to read data.
Answer = Callable[[bytes, Callable[[bytes], object], float], bool]

try:
    from ._fastpath import FastPath
except ImportError:               # not built: the pure path alone
    COMPILED = False
else:
    COMPILED = True


def answerer(tlsmgr: Tlsmgr, size_limit: int) -> Answer | None:
    """The compiled answer() for tlsmgr's requests, or None when it is not
    built.  Requests that may be answered later, on the network, are left
    to the pure path: those on a cache whose store is remote (Redis), and
    tktkey when any is (the fleet's keys)."""
    if not COMPILED:
        return None
    caches = {cache_type: cache for cache_type, cache in tlsmgr.caches.items()
              if cache is not None and not cache.store.remote}
    # Only what answers at once: a reply that comes later is the pure path's.
    replies: dict[str, Callable[..., Any]] = {"seed": tlsmgr.seed_reply}
    if not tlsmgr.any_remote:
        replies["tktkey"] = tlsmgr.key_reply
    stats = tlsmgr.stats
    path = FastPath(size_limit, stats.requests, stats.latency, LATENCY_BOUNDS, caches,
                    CACHE_REPLIES, replies, tlsmgr.failure)
    stats.kept_elsewhere.append(path.settle)
    return path.answer
