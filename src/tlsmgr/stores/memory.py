"""The in-process memory store, for ``memory:`` cache tables.

Entries are kept in the order they were saved (an update moves an entry
to the end), so the oldest entries are always first: a cleanup step pops
expired entries from the front and stops at the first live one, without
ever walking the whole cache.
"""

from __future__ import annotations

import struct
from collections import OrderedDict

from . import Entry, Store

# Timestamp and session in one bytes object: one allocation per entry.
_STAMP = struct.Struct("<q")


class MemoryStore(Store):

    def __init__(self):
        self._entries: OrderedDict[bytes, bytes] = OrderedDict()

    def get(self, cache_id: bytes) -> Entry | None:
        value = self._entries.get(cache_id)
        if value is None:
            return None
        return Entry(_STAMP.unpack_from(value)[0], value[_STAMP.size:])

    def put(self, cache_id: bytes, entry: Entry) -> None:
        self._entries[cache_id] = _STAMP.pack(entry.timestamp) + entry.session
        self._entries.move_to_end(cache_id)

    def delete(self, cache_id: bytes) -> bool:
        return self._entries.pop(cache_id, None) is not None

    def expire(self, cutoff: int, budget: int) -> tuple[list[Entry], bool]:
        removed = []
        entries = self._entries
        while entries and len(removed) < budget:
            cache_id = next(iter(entries))
            value = entries[cache_id]
            timestamp = _STAMP.unpack_from(value)[0]
            if timestamp >= cutoff:
                return removed, True
            del entries[cache_id]
            removed.append(Entry(timestamp, value[_STAMP.size:]))
        return removed, not entries

    def __len__(self) -> int:
        return len(self._entries)
