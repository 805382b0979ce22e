"""A TLS session cache: expiry and cleanup on top of a store.

One SessionCache serves one cache type (smtpd, smtp or lmtp).  It stamps
each saved session with the time, never returns an entry older than the
cache timeout (and deletes such an entry when it sees one), and removes
expired entries in the background: a cleanup pass starts once per cache
timeout and runs in small steps between requests, so that no request
waits for it.  The bytes of a session are never interpreted.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ..observe.snapshot import CacheStats
from ..stores import STAMP, CannotOpen, Entry, Limits, Store, StoreError, Trimmed
from ..util import log
from ..util.pending import Later, MaybeLater, recover, then

T = TypeVar("T")
_STORE_ERRORS = (StoreError,)

NO_LIMITS = Limits()

# At most one line a minute about evictions, per cache.
EVICTION_LOG_INTERVAL = 60

_LOG_CACHE_LEVELS = {"2", "3", "4", "5", "6", "7", "8", "9",
                     "debug", "ssl-expert", "ssl-developer", "cache"}
_LOG_OTHER_LEVELS = {"0", "none", "1", "routine", "summary", "untrusted", "peercert",
                     "certmatch", "verbose", "dane", "ssl-debug",
                     "ssl-handshake-packet-dump", "ssl-session-packet-dump", "trace"}


def logs_cache_activity(param: str, level: str) -> bool:
    """Whether a *_tls_loglevel value asks for cache logging, as Postfix's
    tls_log_mask() reads it (level 2 and up, or the "cache" keyword)."""
    wanted = False
    for word in level.replace(",", " ").split():
        word = word.lower()
        if word in _LOG_CACHE_LEVELS:
            wanted = True
        elif word not in _LOG_OTHER_LEVELS:
            log.warn('unknown %s value "%s" in "%s"', param, word, level)
    return wanted


def _ignored(_: object) -> None:
    return None


def describe_limits(limits: Limits) -> str:
    parts = []
    if limits.entries:
        parts.append("%d entries" % limits.entries)
    if limits.bytes:
        parts.append("%d bytes" % limits.bytes)
    return ", ".join(parts) or "none"


class SessionCache:
    """The sessions of one cache type, each valid for ``timeout`` seconds,
    kept within ``limits``: when full, expired entries go first, then the
    oldest."""

    def __init__(self, label: str, store: Store, timeout: int,
                 verbose: bool = False, clock: Callable[[], float] = time.time,
                 limits: Limits = NO_LIMITS):
        self.label = label
        self.store = store
        self.timeout = timeout
        self.verbose = verbose
        self.clock = clock
        self.limits = limits
        self.cleanup_active = False
        self._pass_removed = 0
        self._pass_started = 0.0
        # What it has done, for the stats request and the metrics.
        self.hits = self.misses = 0      # lookups
        self.updates = self.deletes = 0  # that saved, that removed an entry
        self.expired = 0                 # removed because they were too old
        self.evicted = 0                 # removed, still live, to make room
        self.store_errors = 0
        self.unopened = 0                # entries whose seal did not open: misses
        self._unlogged = Trimmed()       # removals not yet reported
        self._logged_at: float | None = None
        self._store_warning = log.RateLimitedWarning()
        self._unopened_warning = log.RateLimitedWarning()   # a writer may cause it at will
        # Since when sessions could not be saved (a Redis refusing writes
        # while it serves reads, a full disk), and how many: so that the
        # end is said too, not only the rate-limited warnings.
        self._unsaved_since: float | None = None
        self._unsaved = 0

    # Each request asks the store, and finishes with its answer: at once
    # for a local store, when it comes for one on the network (pending.py).
    # A store's error, raised or in its Later, is finished with too.

    def lookup(self, cache_id: bytes) -> MaybeLater[bytes | None]:
        """The session saved under cache_id, unless absent or expired."""
        if self.verbose:
            log.info("lookup %s session id=%s", self.label, cache_id.decode(errors="replace"))
        try:
            packed = self.store.get(cache_id)
        except StoreError as err:
            self._not_read(err)
            return None
        if isinstance(packed, Later):
            return then(packed, functools.partial(self._read, cache_id), self._not_read,
                        _STORE_ERRORS)
        return self._read(cache_id, packed)

    def _not_read(self, err: Exception) -> None:
        """A miss: the store failed, or its entry did not open."""
        if isinstance(err, CannotOpen):
            # Never handed to a client: it may have been planted.
            self.unopened += 1
            self._unopened_warning("%s TLS session cache: %s -- treated as a miss",
                                   self.label, err)
        else:
            self._store_error("cannot look up %s TLS session: %s", err)
        self.misses += 1

    def _read(self, cache_id: bytes, packed: bytes | None) -> MaybeLater[bytes | None]:
        if packed is None:
            self.misses += 1
            return None
        if len(packed) < STAMP.size:
            # Damaged where it is kept (a preserved file is not read
            # through at start: stores/lmdb.py): a miss, and removed.
            self._not_read(CannotOpen("entry %s of %d bytes, too short to be one"
                                      % (cache_id.decode(errors="replace")[:64], len(packed))))
            return then(self._remove(cache_id), _ignored)
        # Read here, not made into an Entry: see Store.get().
        (timestamp,) = STAMP.unpack_from(packed)
        if self.verbose:
            log.info("read %s TLS cache entry %s: time=%d [data %d bytes]", self.label,
                     cache_id.decode(errors="replace"), timestamp, len(packed) - STAMP.size)
        if timestamp + self.timeout < int(self.clock()):        # expired
            self.misses += 1
            return then(self._remove(cache_id), self._expired_removed)
        self.hits += 1
        return packed[STAMP.size:]

    def _expired_removed(self, removed: bool) -> None:
        self.expired += removed

    def update(self, cache_id: bytes, session: bytes) -> MaybeLater[bool]:
        """Save a session; True when it was saved."""
        now = int(self.clock())
        if self.verbose:
            name = cache_id.decode(errors="replace")
            log.info("put %s session id=%s [data %d bytes]", self.label, name, len(session))
            log.info("write %s TLS cache entry %s: time=%d [data %d bytes]",
                     self.label, name, now, len(session))
        try:
            trimmed = self.store.save(cache_id, STAMP.pack(now) + session, self.limits,
                                      now - self.timeout)
        except StoreError as err:
            return self._not_saved(err)
        if isinstance(trimmed, Later):
            return then(trimmed, functools.partial(self._saved, now), self._not_saved,
                        _STORE_ERRORS)
        return self._saved(now, trimmed)

    def _saved(self, now: int, trimmed: Trimmed) -> bool:
        self.updates += 1
        if trimmed != (0, 0):
            self._count_trimmed(trimmed, now)
        if self._unsaved_since is not None:
            log.info("%s TLS sessions are saved again, after %d seconds in which %d could "
                     "not be", self.label, round(time.monotonic() - self._unsaved_since),
                     self._unsaved)
            self._unsaved_since, self._unsaved = None, 0
        return True

    def _not_saved(self, err: Exception) -> bool:
        self._store_error("cannot save %s TLS session: %s", err)
        if self._unsaved_since is None:
            self._unsaved_since = time.monotonic()
        self._unsaved += 1
        return False

    def _count_trimmed(self, trimmed: Trimmed, now: float) -> None:
        self.expired += trimmed.expired
        self.evicted += trimmed.evicted
        unlogged = Trimmed(*map(sum, zip(self._unlogged, trimmed)))
        if self._logged_at is None:
            log.info("%s TLS session cache is full (limits: %s): removing the oldest "
                     "entries to make room", self.label, describe_limits(self.limits))
        elif now - self._logged_at < EVICTION_LOG_INTERVAL:
            self._unlogged = unlogged
            return
        else:
            log.info("%s TLS session cache is full (limits: %s): made room by removing "
                     "%d expired and %d live entries in %d seconds", self.label,
                     describe_limits(self.limits), unlogged.expired, unlogged.evicted,
                     now - self._logged_at)
        self._unlogged = Trimmed()
        self._logged_at = now

    def delete(self, cache_id: bytes) -> MaybeLater[bool]:
        """Remove a session; True when there was one."""
        if self.verbose:
            log.info("delete %s session id=%s", self.label, cache_id.decode(errors="replace"))
        return then(self._remove(cache_id), self._deleted)

    def _deleted(self, removed: bool) -> bool:
        self.deletes += removed
        return removed

    def _remove(self, cache_id: bytes) -> MaybeLater[bool]:
        return self._ask(self.store.delete, (cache_id,), "cannot delete %s TLS session: %s",
                         False)

    def _ask(self, method: Callable[..., MaybeLater[T]], args: tuple[Any, ...],
             failed: str, instead: T) -> MaybeLater[T]:
        """What the store's method answers; on its error, a warning (failed,
        with the label and the error) and ``instead``."""
        def store_error(err: Exception) -> T:
            self._store_error(failed, err)
            return instead
        try:
            result = method(*args)
        except StoreError as err:
            return store_error(err)
        return recover(result, store_error, _STORE_ERRORS)

    def _store_error(self, text: str, err: Exception) -> None:
        self.store_errors += 1
        self._store_warning(text, self.label, err)

    def flush(self) -> MaybeLater[int]:
        """Remove every entry (an administrator's request); how many went,
        -1 if the store failed."""
        return then(self._ask(self.store.clear, (), "cannot flush %s TLS session cache: %s",
                              -1), self._flushed)

    def _flushed(self, removed: int) -> int:
        if removed >= 0:
            log.info("%s TLS session cache flushed: removed %d entries", self.label, removed)
        return removed

    def ages(self, offset: int, limit: int) -> MaybeLater[list[tuple[bytes, int]]]:
        """The ids of at most limit entries after the offset oldest, oldest
        first, with their ages in seconds (never the sessions)."""
        now = int(self.clock())
        return then(self._ask(self.store.stamps, (offset, limit),
                              "cannot list %s TLS session cache: %s",
                              list[tuple[bytes, int]]()),
                    lambda stamps: [(cache_id, now - stamp) for cache_id, stamp in stamps])

    def stats(self) -> MaybeLater[CacheStats]:
        """Counts for the stats request; the store is asked for its size."""
        return then(self._ask(self.store.counts, (), "cannot count %s TLS session cache: %s",
                              (-1, -1)), self._stats)

    def _stats(self, counts: tuple[int, int]) -> CacheStats:
        entries, size = counts
        lookups = self.hits + self.misses
        return CacheStats(entries, size, self.hits, self.misses, self.updates, self.deletes,
                          self.expired, self.evicted, self.unopened,
                          self.hits / lookups if lookups else 0.0, self.store.health())

    def start_cleanup(self) -> None:
        """Begin a cleanup pass, unless one is still running."""
        if self.verbose:
            log.info("start TLS %s session cache cleanup", self.label)
        self.cleanup_active = True
        self._pass_removed = 0
        self._pass_started = time.monotonic()

    def cleanup_step(self) -> MaybeLater[list[Entry]]:
        """One bounded step of the running pass; returns what it removed."""
        cutoff = int(self.clock()) - self.timeout
        return then(self._ask(self.store.expire, (cutoff, self.store.cleanup_batch),
                              "%s TLS session cache cleanup: %s", (list[Entry](), True)),
                    self._cleaned)

    def _cleaned(self, outcome: tuple[list[Entry], bool]) -> list[Entry]:
        removed, done = outcome
        self.expired += len(removed)
        self._pass_removed += len(removed)
        if done:
            self.cleanup_active = False
            if self._pass_removed:
                log.info("%s TLS session cache cleanup: removed %d expired entries "
                         "in %.1f seconds", self.label, self._pass_removed,
                         time.monotonic() - self._pass_started)
            elif self.verbose:
                log.info("finished TLS %s session cache cleanup", self.label)
        return removed

    def commit(self) -> None:
        """Commit the updates the store holds back."""
        try:
            self.store.commit()
        except StoreError as err:
            self._store_error("cannot save %s TLS sessions: %s", err)

    def close(self) -> MaybeLater[None]:
        self.commit()
        return self.store.close()
