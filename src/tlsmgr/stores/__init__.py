"""Storage for TLS session caches: one small interface, several stores.

The session cache (scache.py) speaks only to :class:`Store`; which store
serves a cache is decided once, at start, from the cache's main.cf
``type:name`` value by :func:`open_store`.  A store keeps, per cache id,
the time the entry was saved and the session bytes; it never looks inside
the session.

Table types and the stores that serve them:

=====================================  ==========================================
``memory:`` (any name)                  in-process memory (stores/memory.py)
``btree:``, ``hash:``, ``lmdb:``,       one LMDB file at ``PATH.lmdb``
``sdbm:`` + ``PATH``                    (stores/lmdb.py)
=====================================  ==========================================
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NamedTuple


class Entry(NamedTuple):
    """One cache entry: when it was saved (seconds since the epoch) and what."""

    timestamp: int
    session: bytes


class Store(ABC):
    """The interface every session store provides."""

    @abstractmethod
    def get(self, cache_id: bytes) -> Entry | None:
        """The entry saved under cache_id, expired or not, or None."""

    @abstractmethod
    def put(self, cache_id: bytes, entry: Entry) -> None:
        """Save an entry, replacing any entry under the same id.

        Entries arrive stamped with the current time, so in time order; a
        store may rely on that to find expired entries quickly.
        """

    @abstractmethod
    def delete(self, cache_id: bytes) -> bool:
        """Remove an entry; True when there was one."""

    @abstractmethod
    def expire(self, cutoff: int, budget: int) -> tuple[list[Entry], bool]:
        """Remove up to ``budget`` entries saved before ``cutoff``.

        One step of an incremental cleanup pass: returns the entries removed
        and whether the pass is complete.  The next call after a complete
        pass starts a new one.
        """

    @abstractmethod
    def __len__(self) -> int:
        """The number of entries, expired ones included."""

    def close(self) -> None:
        """Release files and connections."""


class StoreError(Exception):
    """A store could not be opened or used; the message says why."""


FILE_TYPES = ("btree", "hash", "lmdb", "sdbm")
MEMORY_TYPE = "memory"


def split_table(spec: str) -> tuple[str, str]:
    """Split ``type:name``; raises ValueError when there is no type."""
    kind, sep, name = spec.partition(":")
    if not sep or not kind:
        raise ValueError('expecting "type:name" form instead of "%s"' % spec)
    return kind, name


def open_store(spec: str) -> Store:
    """Open the store for a ``type:name`` table, empty (caches start empty)."""
    kind, name = split_table(spec)
    if kind == MEMORY_TYPE:
        from .memory import MemoryStore
        return MemoryStore()
    if kind in FILE_TYPES:
        from .lmdb import LmdbStore
        return LmdbStore(name)
    raise StoreError("unsupported dictionary type: %s" % kind)
