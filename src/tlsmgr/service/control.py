"""Control requests: what an administrator may ask of a running daemon.

An extension of the tlsmgr protocol, in its own attribute lists; Postfix's
clients never send these requests, so nothing changes for them.

    stats                    -> status, stats (a JSON text: see snapshot())
    flush, cache_type        -> status, removed (entries)
    rotate_keys              -> status, keyname (of a new ticket key, current
                                from now; the last one still decrypts)
    list, cache_type[, limit[, offset]]
                             -> status, list (a JSON array of {"id", "age"},
                                the oldest first, after the offset oldest;
                                never session bytes; at most LIST_MAX: a
                                client pages through more, as
                                TlsmgrClient.list() does)

Only a peer whose uid is root's, mail_owner's or the daemon's own may send
them: each connection learns its peer's uid (SO_PEERCRED) when it is made
(connection.py, Connection.privileged), and protocol.py refuses the
others with status -2 and a warning.
"""

from __future__ import annotations

import functools
import json
import time
import types
from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..observe.snapshot import ConnectionStats, PrngStats, Snapshot, TicketKeyStats
from ..util import log
from ..util.pending import MaybeLater, gather, then
from ..wire.attr import Message, encode
from ..wire.requests import (
    CONTROL,
    FLUSH,
    LIST,
    ROTATE_KEYS,
    STAT_ERR,
    STAT_OK,
    STATS,
    check_answered,
    failed_reply,
)

if TYPE_CHECKING:
    from ..observe.snapshot import CacheStats
    from ..observe.stats import Stats
    from .handlers import ClientRequests
    from .prng import Prng
    from .protocol import Handler, Scanner
    from .scache import SessionCache

# Ids listed at most, whatever the request says: as many take a few ms of
# the loop's time (their JSON, and redis-py's parsing of Redis's answer,
# 11 us an entry without hiredis), in which no other request is answered.
LIST_MAX = 250


@dataclass(frozen=True)
class Sources:
    """What the stats report reads, each part from its owner."""

    client: ClientRequests             # the caches' timeouts, the ticket keys
    stats: Stats                       # requests, errors
    caches: Sequence[SessionCache]     # the enabled ones
    prng: Prng
    connections: Sized                 # the open ones
    fast_path: str                     # "compiled" or "pure" (fastpath.py)


def snapshot(sources: Sources) -> MaybeLater[Snapshot]:
    """Everything the stats request and the metrics report; later when a
    store on the network is asked for its size."""
    return then(gather([cache.stats() for cache in sources.caches]),
                functools.partial(_snapshot, sources))


def _snapshot(sources: Sources, cache_stats: list[CacheStats]) -> Snapshot:
    tickets = sources.client.tickets
    ring = tickets.ring
    now = time.time()
    stats = sources.stats
    stats.settle()
    errors = dict(stats.errors)
    store_errors = sum(cache.store_errors for cache in sources.caches)
    if store_errors:
        errors["store"] = store_errors
    return Snapshot(
        uptime=round(time.monotonic() - stats.started, 3),
        fast_path=sources.fast_path,
        caches={cache.label: found for cache, found in zip(sources.caches, cache_stats)},
        ticket_keys=TicketKeyStats(
            count=len(ring.keys),
            current_age=None if ring.rotated_at is None else round(now - ring.rotated_at),
            rotations=ring.rotations, shared=tickets.shared, unopened=tickets.unopened,
            lookups={outcome: count for outcome, count in sorted(stats.ticket_lookups.items())
                     if count},
            redis=tickets.health()),
        prng=PrngStats(sources.prng.reseeds, sources.prng.exchange_updates),
        connections=ConnectionStats(len(sources.connections), stats.accepted),
        requests={name.decode(): count for name, count in sorted(stats.requests.items())
                  if count},
        errors=dict(sorted(errors.items())),
        latency={name.decode(): histogram.snapshot()
                 for name, histogram in sorted(stats.latency.items()) if sum(histogram.counts)})


class Control:
    """Answers the control requests of one daemon: from what the stats
    report reads, and the caches and ticket keys of the client requests."""

    def __init__(self, sources: Sources, scanner: Scanner):
        self.sources = sources
        self.client = sources.client
        self.scanner = scanner

    def handlers(self) -> dict[bytes, Handler]:
        """The handler of each control request."""
        return {name: types.MethodType(handler, self) for name, handler in _HANDLERS.items()}

    def _stats(self, message: Message) -> MaybeLater[bytes]:
        self.scanner.scan(message, 1, STATS.reads)
        return then(snapshot(self.sources), lambda stats: encode(
            [("status", STAT_OK), ("stats", json.dumps(stats.to_json(), separators=(",", ":")))]))

    def _flush(self, message: Message) -> MaybeLater[bytes]:
        [cache_type] = self.scanner.scan(message, 1, FLUSH.reads)
        cache = self.client.cache(cache_type, "flush")
        return then(cache.flush() if cache is not None else -1, _flushed)

    def _rotate_keys(self, message: Message) -> bytes:
        self.scanner.scan(message, 1, ROTATE_KEYS.reads)
        tickets = self.client.tickets
        if tickets.shared:
            # The fleet agrees on its keys through Redis, period by period;
            # one host's new key would not decrypt on the others.
            log.warn("rotate_keys: session ticket keys are shared by the fleet through "
                     "Redis and change every half smtpd session cache timeout: not rotated")
            return failed_reply(b"rotate_keys", STAT_ERR)
        timeout = self.client.timeouts.get(b"smtpd", 0)
        if timeout <= 0:                            # no tickets without the smtpd cache
            return failed_reply(b"rotate_keys", STAT_ERR)
        key = tickets.ring.rotate(timeout)
        log.info("session ticket key rotated on request")
        return encode([("status", STAT_OK), ("keyname", key.name)])

    def _list(self, message: Message) -> MaybeLater[bytes]:
        [cache_type] = self.scanner.scan(message, 1, LIST.reads, more=True)
        # The optional limit and offset: as many as were sent.
        sent = len(message) - 1 - len(LIST.reads)
        optional = self.scanner.scan(message, 1 + len(LIST.reads), LIST.optional[:max(0, sent)])
        defaults = [LIST_MAX, 0]
        limit, offset = optional + defaults[len(optional):]
        cache = self.client.cache(cache_type, "list")
        if cache is None:
            return failed_reply(b"list", STAT_ERR)
        return then(cache.ages(max(0, offset), min(max(0, limit), LIST_MAX)), _listed)


def _flushed(removed: int) -> bytes:
    if removed < 0:                                 # disabled, or the store failed
        return failed_reply(b"flush", STAT_ERR)
    return encode([("status", STAT_OK), ("removed", removed)])


def _listed(entries: list[tuple[bytes, int]]) -> bytes:
    text = json.dumps([{"id": cache_id.decode("utf-8", "backslashreplace"), "age": age}
                       for cache_id, age in entries], separators=(",", ":"))
    return encode([("status", STAT_OK), ("list", text)])


# Who answers each control request: every one the table has, and no other.
_HANDLERS: dict[bytes, Callable[[Control, Message], MaybeLater[bytes]]] = {
    STATS.name: Control._stats, FLUSH.name: Control._flush,
    ROTATE_KEYS.name: Control._rotate_keys, LIST.name: Control._list,
}
check_answered(CONTROL, frozenset(_HANDLERS), "control.Control")
