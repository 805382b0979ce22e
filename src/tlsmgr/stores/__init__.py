"""Where sessions are kept: one small interface, several stores; imports util, observe.

The session cache (service/scache.py) speaks only to :class:`Store`; which store
serves a cache is decided once, at start, from the cache's main.cf
``type:name`` value by :func:`open_store`.  A store keeps, per cache id,
the time the entry was saved and the session bytes; it never looks inside
the session.

Table types and the stores that serve them:

=====================================  ==========================================
``memory:`` (any name)                  in-process memory (stores/memory.py)
``btree:``, ``hash:``, ``lmdb:``,       one LMDB file at ``PATH.lmdb``
``sdbm:`` + ``PATH``                    (stores/lmdb.py)
``redis:`` + URL                        a cache shared by a fleet (stores/redis.py)
=====================================  ==========================================
"""

from __future__ import annotations

import struct
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, NamedTuple

from ..observe.snapshot import Health
from ..util.pending import MaybeLater
from .redis_url import redact_url

if TYPE_CHECKING:
    from .redis import RedisSettings


class Entry(NamedTuple):
    """One cache entry: when it was saved (seconds since the epoch) and what."""

    timestamp: int
    session: bytes


# How a store keeps an entry in one bytes value: the timestamp, 8 bytes
# big-endian (so that, as bytes, stamps sort as times: LMDB's age index
# and Redis's stored values rely on it), then the session.
STAMP = struct.Struct(">q")

# Writes a store has not committed yet (Store.uncommitted_writes) are committed within this
# many seconds of the first, by the server's loop (server.py): under load
# a group then holds the updates of many turns of the loop, and an idle
# daemon holds none for long.
COMMIT_WITHIN = 0.001


def pack_entry(entry: Entry) -> bytes:
    return STAMP.pack(entry.timestamp) + entry.session


def unpack_entry(value: bytes | memoryview) -> Entry:
    return Entry(STAMP.unpack_from(value)[0], bytes(value[STAMP.size:]))


# A store over its limits by more than one entry (a preserved file or a
# Redis cache of millions, after the limits were lowered) is brought
# within them this many entries an update, so that no update waits for a
# million removals: 64 take about a millisecond in LMDB.
EVICTIONS_PER_SAVE = 64


class Limits(NamedTuple):
    """How large a cache may grow: entries, and bytes of ids and sessions.
    0 means no limit."""

    entries: int = 0
    bytes: int = 0


class Trimmed(NamedTuple):
    """What making room removed: entries past their time, and live ones."""

    expired: int = 0
    evicted: int = 0


# What nearly every save() trims: made once, as a NamedTuple's own
# constructor is a Python call.
NOTHING_TRIMMED = Trimmed()


class Store(ABC):
    """The interface every session store provides, as the session cache
    (scache.py) uses it.

    Entries arrive stamped with the current time, so a store keeps them in
    time order and can always find its oldest entry: cleanup and eviction
    both start there.

    A store on the network answers later (``remote``): its methods return
    a pending.Later of what a local store returns, and fail with
    StoreError in it.  A local store answers at once, or raises StoreError.
    """

    # True for a store whose answers come later, over the network: the
    # compiled path (fastpath.py) leaves its requests to the pure path.
    remote = False

    # Entries removed per cleanup step: few enough that a step takes about
    # a millisecond, so that requests interleave with a long pass.
    cleanup_batch = 256

    @abstractmethod
    def get(self, cache_id: bytes) -> MaybeLater[bytes | None]:
        """The entry saved under cache_id, expired or not, as pack_entry()
        makes it, or None.  Packed, not an Entry: every lookup asks, and
        making the Entry would cost as much as the rest of the lookup."""

    @abstractmethod
    def save(self, cache_id: bytes, packed: bytes, limits: Limits,
             cutoff: int) -> MaybeLater[Trimmed]:
        """Put an entry, packed as pack_entry() makes it (as get() gives
        it back), replacing any entry under the same id; then remove the
        oldest entries until the store is within its limits, at most
        EVICTIONS_PER_SAVE of them: expired ones (saved before cutoff) are
        the oldest, so they go first."""

    @abstractmethod
    def delete(self, cache_id: bytes) -> MaybeLater[bool]:
        """Remove an entry; True when there was one."""

    @abstractmethod
    def expire(self, cutoff: int, budget: int) -> MaybeLater[tuple[list[Entry], bool]]:
        """Remove up to ``budget`` entries saved before ``cutoff``.

        One step of an incremental cleanup pass: returns the entries removed
        (those the store still has the sessions of) and whether no expired
        entry is left.
        """

    @abstractmethod
    def clear(self) -> MaybeLater[int]:
        """Remove every entry; return how many there were."""

    @abstractmethod
    def stamps(self, offset: int, limit: int) -> MaybeLater[list[tuple[bytes, int]]]:
        """The ids of at most ``limit`` entries with their timestamps,
        oldest first, after the ``offset`` oldest."""

    @abstractmethod
    def counts(self) -> MaybeLater[tuple[int, int]]:
        """The entries held, expired ones included, and their bytes (ids
        plus sessions)."""

    def commit(self) -> None:
        """Commit the uncommitted writes (stores/lmdb.py commits them together);
        nothing for a store that writes at once.  Raises StoreError, the
        uncommitted writes lost, when that fails."""

    @property
    def uncommitted_writes(self) -> int:
        """How many writes wait for commit()."""
        return 0

    def close(self) -> MaybeLater[None]:
        """Commit what is held; release files and connections."""
        return None

    def health(self) -> Health | None:
        """How a store on the network is doing (stores/redis.py), for the
        stats; None for a local store."""
        return None


class LocalStore(Store):
    """A store in this process or its files: it answers at once, and makes
    room and expires entries from its oldest."""

    @abstractmethod
    def get(self, cache_id: bytes) -> bytes | None:
        """As Store.get(), at once."""

    @abstractmethod
    def put(self, cache_id: bytes, packed: bytes) -> None:
        """Save an entry, replacing any entry under the same id."""

    @abstractmethod
    def delete(self, cache_id: bytes) -> bool:
        """As Store.delete(), at once."""

    @abstractmethod
    def pop_oldest(self) -> Entry | None:
        """Remove and return the entry saved longest ago."""

    @abstractmethod
    def __len__(self) -> int:
        """The number of entries, expired ones included."""

    @property
    @abstractmethod
    def size(self) -> int:
        """The bytes held: ids plus sessions."""

    @abstractmethod
    def clear(self) -> int:
        """As Store.clear(), at once."""

    @abstractmethod
    def stamps(self, offset: int, limit: int) -> list[tuple[bytes, int]]:
        """As Store.stamps(), at once."""

    def counts(self) -> tuple[int, int]:
        return len(self), self.size

    def save(self, cache_id: bytes, packed: bytes, limits: Limits, cutoff: int) -> Trimmed:
        self.put(cache_id, packed)
        expired = evicted = 0
        while (expired + evicted < EVICTIONS_PER_SAVE
               and ((limits.entries and len(self) > limits.entries)
                    or (limits.bytes and self.size > limits.bytes))):
            removed = self.pop_oldest()
            if removed is None:
                break
            if removed.timestamp < cutoff:
                expired += 1
            else:
                evicted += 1
        return Trimmed(expired, evicted) if expired or evicted else NOTHING_TRIMMED

    @abstractmethod
    def expire(self, cutoff: int, budget: int) -> tuple[list[Entry], bool]:
        """As Store.expire(), at once."""

    def close(self) -> None:
        """Commit what is held; release files."""


class StoreError(Exception):
    """A store could not be opened or used; the message says why."""


class CannotOpen(StoreError):
    """An entry the store holds but cannot vouch for (its seal does not
    open: stores/redis.py with tlsmgr_fleet_secret_file); it is absent to
    the caller, and the message says why."""


FILE_TYPES = ("btree", "hash", "lmdb", "sdbm")
MEMORY_TYPE = "memory"
REDIS_TYPE = "redis"


def split_table(spec: str) -> tuple[str, str]:
    """Split ``type:name``; raises ValueError when there is no type."""
    kind, sep, name = spec.partition(":")
    if not sep or not kind:
        raise ValueError('expecting "type:name" form instead of "%s"' % spec)
    return kind, name


def redact_table(spec: str) -> str:
    """A ``type:name`` table as it may be shown: a redis: table's URL
    without its secrets (redis_url.py)."""
    kind, sep, name = spec.partition(":")
    return kind + sep + redact_url(name) if kind == REDIS_TYPE else spec


def open_store(spec: str, label: str = "", timeout: int = 0,
               redis_settings: RedisSettings | None = None, preserve: bool = False) -> Store:
    """Open the store for a ``type:name`` table.  Local stores start empty,
    as the stock daemon's caches do, unless a file is to be preserved
    (tlsmgr_preserve_sessions); a Redis cache is the fleet's and is kept.
    ``label`` and ``timeout`` are the cache's; ``redis_settings`` the
    main.cf Redis parameters (stores/redis.py)."""
    kind, name = split_table(spec)
    if kind == MEMORY_TYPE:
        from .memory import MemoryStore
        return MemoryStore()
    if kind in FILE_TYPES:
        from .lmdb import LmdbStore
        return LmdbStore(name, preserve)
    if kind == REDIS_TYPE:
        from .redis import RedisSettings, RedisStore
        return RedisStore(name, label, redis_settings or RedisSettings(), timeout)
    raise StoreError("unsupported dictionary type: %s" % kind)
