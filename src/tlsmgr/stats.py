"""What the daemon has done: one record, counted where it happens.

The request handler (protocol.py) counts requests by name and the errors
it meets; the server (server.py) counts connections and the errors of its
clients (timeouts, limits, requests a store did not answer in time);
control.snapshot() and the metrics read it.  daemon.py makes the one
record and hands it to both.  The caches keep their own counts
(scache.py), since each is its own.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Stats:
    started: float = field(default_factory=time.monotonic)
    accepted: int = 0                                   # connections, in all
    requests: Counter[bytes] = field(default_factory=Counter)    # by request name
    errors: Counter[str] = field(default_factory=Counter)        # by kind
