"""The common requests answered in one compiled call, where it is built.

Nearly every read from a tlsmgr client is one whole, well-formed lookup,
update, delete, tktkey or seed request.  _fastpath.c reads such a request,
counts it, answers it as the pure path does (a cache request by the
cache's own method, its reply joined from parts that protocol.py makes;
tktkey and seed by the reply function the pure path calls too), writes
the reply and records its latency, all in one call from
Connection.data_received(): a dozen Python calls fewer per request.  It
knows the requests only as it is given them here, from the request table
(requests.py).  It counts in C, and hands its counts to stats.Stats when
they are read (Stats.settle()).  What it is
not sure of, it leaves untouched to the pure path (connection.py,
attr.py, protocol.py), which reads the same bytes from the start.

``pip install .`` compiles it where a C compiler and Python's headers are
at hand, and leaves it out otherwise (setup.py); the daemon then runs on
the pure path alone, with the same replies, counts and log lines
(tests/test_fastpath.py holds the two to that).
"""

from __future__ import annotations

from collections.abc import Callable

from ..observe.histogram import LATENCY_BOUNDS
from ..util import log
from ..wire.requests import CACHE_TYPE, SEED_MAX, TABLE
from .protocol import Dispatch
from .tickets import NAME_LENGTH

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


def answerer(dispatch: Dispatch, size_limit: int) -> Answer | None:
    """The compiled answer() for the requests dispatch answers, or None when
    it is not built, or cannot answer as the table says.  It is given each
    request as the table (requests.py) says it, with what
    ClientRequests.compiled_answers() says answers it; requests that may
    be answered later, on the network, are left to the pure path: those
    on a cache whose store is remote (Redis), and tktkey when any is (the
    fleet's keys)."""
    if not COMPILED:
        return None
    client = dispatch.client
    caches = {cache_type: cache for cache_type, cache in client.caches.items()
              if cache is not None and not cache.store.remote}
    requests = []
    for name, (handler, reply_kind, parts) in client.compiled_answers().items():
        reads = TABLE[name].reads
        codes = b"".join(kind.code for _, kind in reads)
        if CACHE_TYPE.code in codes and not caches:
            continue
        requests.append((name, tuple(attribute for attribute, _ in reads), codes, reply_kind,
                         handler, parts))
    stats = dispatch.stats
    try:
        path = FastPath(size_limit, tuple(requests), caches, LATENCY_BOUNDS, NAME_LENGTH,
                        SEED_MAX, stats.add_answered, dispatch.failure)
    except (TypeError, ValueError) as err:
        # The table says what this build of _fastpath.c cannot do: a
        # mistake for the tests to catch, never a reason not to serve.
        log.warn("the compiled path cannot answer as the request table says (%s): "
                 "the pure path answers every request", err)
        return None
    stats.kept_elsewhere.append(path.settle)
    return path.answer
