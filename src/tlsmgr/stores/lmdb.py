"""The on-disk store: one LMDB file, for btree:, hash:, lmdb: and sdbm: tables.

Postfix's own table types for these names are replaced by one LMDB file at
``PATH.lmdb`` (and its lock file ``PATH.lmdb-lock``): LMDB is crash-safe
by construction and readers never block the writer.  The file is made
anew at start, as the stock daemon truncates its cache files, so nothing
from a previous run (or a damaged file) is ever read.  Durability across a
crash is not wanted, so writes are not synced.

Cache ids that LMDB cannot take as keys (empty, or longer than its key
limit) are stored under a digest of the id.
"""

from __future__ import annotations

import hashlib
import os
import struct

import lmdb

from . import Entry, Store, StoreError

_STAMP = struct.Struct("<q")
_INITIAL_MAP_SIZE = 1 << 30          # address space, not disk: the file is sparse
_DIGEST_PREFIX = b"\0sha256:"

SUFFIX = ".lmdb"


class LmdbStore(Store):

    def __init__(self, path: str):
        self.path = path + SUFFIX
        for stale in (self.path, self.path + "-lock"):
            try:
                os.unlink(stale)
            except FileNotFoundError:
                pass
            except OSError as err:
                raise StoreError("cannot remove old cache file %s: %s"
                                 % (stale, err.strerror)) from None
        try:
            self._env = lmdb.open(self.path, subdir=False, map_size=_INITIAL_MAP_SIZE,
                                  sync=False, metasync=False, readahead=False,
                                  max_dbs=0, mode=0o600)
        except lmdb.Error as err:
            raise StoreError("cannot open cache file %s: %s" % (self.path, err)) from None
        self._max_key = self._env.max_key_size()
        self._cleanup_from: bytes | None = None

    def _key(self, cache_id: bytes) -> bytes:
        if 0 < len(cache_id) <= self._max_key and cache_id[:1] != b"\0":
            return cache_id
        return _DIGEST_PREFIX + hashlib.sha256(cache_id).digest()

    def get(self, cache_id: bytes) -> Entry | None:
        try:
            with self._env.begin(buffers=True) as txn:
                value = txn.get(self._key(cache_id))
                if value is None:
                    return None
                return Entry(_STAMP.unpack_from(value)[0], bytes(value[_STAMP.size:]))
        except lmdb.Error as err:
            raise StoreError("%s: %s" % (self.path, err)) from None

    def _write(self, operation):
        # LMDB's map has a fixed size: when it fills up, double it and retry.
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    return operation(txn)
            except lmdb.MapFullError:
                self._env.set_mapsize(self._env.info()["map_size"] * 2)
            except lmdb.Error as err:
                raise StoreError("%s: %s" % (self.path, err)) from None

    def put(self, cache_id: bytes, entry: Entry) -> None:
        value = _STAMP.pack(entry.timestamp) + entry.session
        self._write(lambda txn: txn.put(self._key(cache_id), value))

    def delete(self, cache_id: bytes) -> bool:
        return self._write(lambda txn: txn.delete(self._key(cache_id)))

    def expire(self, cutoff: int, budget: int) -> tuple[list[Entry], bool]:
        return self._write(lambda txn: self._expire(txn, cutoff, budget))

    def _expire(self, txn, cutoff: int, budget: int) -> tuple[list[Entry], bool]:
        removed = []
        cursor = txn.cursor()
        start = self._cleanup_from
        more = cursor.set_range(start) if start is not None else cursor.first()
        for _ in range(budget):
            if not more:
                self._cleanup_from = None
                return removed, True
            value = cursor.value()
            timestamp = _STAMP.unpack_from(value)[0]
            if timestamp < cutoff:
                removed.append(Entry(timestamp, bytes(value[_STAMP.size:])))
                cursor.delete()             # moves to the next entry, if any
                more = bool(cursor.key())
            else:
                more = cursor.next()
        self._cleanup_from = bytes(cursor.key()) if more else None
        return removed, not more

    def __len__(self) -> int:
        return self._env.stat()["entries"]

    def close(self) -> None:
        self._env.close()
