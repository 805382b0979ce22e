"""The in-process memory store, for ``memory:`` cache tables.

Entries are kept in the order they were saved (an update moves an entry
to the end), so the oldest entry is always first: cleanup and eviction
pop from the front without ever walking the whole cache.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict

from . import STAMP, Entry, LocalStore, unpack_entry


class MemoryStore(LocalStore):

    def __init__(self) -> None:
        self._entries: OrderedDict[bytes, bytes] = OrderedDict()
        self._size = 0

    def get(self, cache_id: bytes) -> bytes | None:
        return self._entries.get(cache_id)

    def put(self, cache_id: bytes, packed: bytes) -> None:
        self.delete(cache_id)
        self._entries[cache_id] = packed
        self._size += len(cache_id) + len(packed) - STAMP.size

    def delete(self, cache_id: bytes) -> bool:
        value = self._entries.pop(cache_id, None)
        if value is None:
            return False
        self._size -= len(cache_id) + len(value) - STAMP.size
        return True

    def pop_oldest(self) -> Entry | None:
        if not self._entries:
            return None
        cache_id, value = self._entries.popitem(last=False)
        self._size -= len(cache_id) + len(value) - STAMP.size
        return unpack_entry(value)

    def expire(self, cutoff: int, budget: int) -> tuple[list[Entry], bool]:
        removed: list[Entry] = []
        while self._entries and len(removed) < budget:
            if STAMP.unpack_from(next(iter(self._entries.values())))[0] >= cutoff:
                return removed, True
            popped = self.pop_oldest()
            if popped is not None:                  # it is: the loop saw an entry
                removed.append(popped)
        return removed, not self._entries

    def clear(self) -> int:
        removed = len(self._entries)
        self._entries.clear()
        self._size = 0
        return removed

    def stamps(self, offset: int, limit: int) -> list[tuple[bytes, int]]:
        return [(cache_id, STAMP.unpack_from(value)[0]) for cache_id, value
                in itertools.islice(self._entries.items(), offset, offset + limit)]

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        return self._size
