"""The on-disk store: one LMDB file, for btree:, hash:, lmdb: and sdbm: tables.

Postfix's own table types for these names are replaced by one LMDB file at
``PATH.lmdb`` (and its lock file ``PATH.lmdb-lock``): LMDB is crash-safe
by construction and readers never block the writer.  Besides the sessions
by id, the file holds an index of the ids by age, so that the oldest entry
is found at once for cleanup and eviction, and the totals (entries and
bytes) as of the last commit.  The file is made anew at start, as the
stock daemon truncates its cache files, so nothing from a previous run
(or a damaged file) is ever read; unless it is to be preserved
(tlsmgr_preserve_sessions), when it is opened and checked in a time that
does not grow with it (_check()), and a damaged one is removed and made
anew.  Durability across a crash is
not wanted, so writes are not synced, and they are committed in groups
(_UNCOMMITTED_AT_MOST below): after a crash the file holds what the last committed
transactions wrote, which LMDB keeps consistent.

Cache ids that LMDB cannot take as keys (empty, or longer than its key
limit) are stored under a digest of the id.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import itertools
import os
import struct
from collections.abc import Callable
from typing import Any, TypeVar

import lmdb

from ..util import log
from ..util.leftovers import remove_damaged_copies
from . import STAMP, Entry, LocalStore, StoreError, unpack_entry

T = TypeVar("T")

_INITIAL_MAP_SIZE = 1 << 30          # address space, not disk: the file is sparse
_DIGEST_PREFIX = b"\0sha256:"
# The entries and bytes of the sessions, in the meta table, written with
# every commit: a file kept from before need not be read through to know.
_TOTALS_KEY = b"totals"
_TOTALS = struct.Struct(">QQ")

SUFFIX = ".lmdb"


class _Damaged(Exception):
    """A cache file kept from before that does not hold together."""


class LmdbStore(LocalStore):

    # Each removal rewrites pages of two B-trees (copy-on-write): with a
    # million entries, 64 in one transaction take about a millisecond.
    cleanup_batch = 64

    def __init__(self, path: str, preserve: bool = False):
        self.path = path + SUFFIX
        remove_damaged_copies(self.path)
        if not preserve:
            self._remove_files()
        # Counted here, not asked of LMDB: the file is ours alone, and the
        # limits are checked at every update.
        self._count = 0
        self._size = 0
        try:
            self._open()
            if preserve:
                self._count, self._size = self._check()
        except (lmdb.Error, _Damaged) as err:
            if not preserve:
                raise StoreError("cannot open cache file %s: %s"
                                 % (self.path, self._why(err))) from None
            self._remove_damaged(err)
            try:
                self._open()
            except lmdb.Error as again:
                raise StoreError("cannot open cache file %s: %s"
                                 % (self.path, self._why(again))) from None
        self._map = _mapping(os.path.abspath(self.path))
        self._writes = 0

    def _why(self, err: Exception) -> str:
        """An error without the path that py-lmdb puts first."""
        return str(err).removeprefix(self.path + ": ")

    def _remove_files(self) -> None:
        for stale in (self.path, self.path + "-lock"):
            try:
                os.unlink(stale)
            except FileNotFoundError:
                pass
            except OSError as err:
                raise StoreError("cannot remove old cache file %s: %s"
                                 % (stale, err.strerror)) from None

    def _open(self) -> None:
        self._env = lmdb.open(self.path, subdir=False, map_size=_INITIAL_MAP_SIZE,
                              sync=False, metasync=False, readahead=False,
                              max_dbs=3, mode=0o600)
        # Sessions by id, the same ids by age (timestamp + id, no value),
        # and the totals.
        self._sessions = self._env.open_db(b"sessions")
        self._ages = self._env.open_db(b"ages")
        self._meta = self._env.open_db(b"meta")
        self._max_key = self._env.max_key_size() - STAMP.size
        # The write transaction that holds writes until commit(), and what
        # they were, to be done again if the map must grow (_write()).
        self._writer: Any = None
        self._uncommitted: list[Callable[[Any], object]] = []
        self._counts_before = (0, 0)        # _count, _size without the uncommitted writes
        # The transaction lookups read in (get()): the writer while writes
        # are uncommitted, else a read-only one shared between writes.
        self._lookups: Any = None

    def _check(self) -> tuple[int, int]:
        """The entries and bytes of a file kept from before, checked in a
        time that does not grow with it, so that a cache of millions is
        served at once after a restart: the two tables hold as many
        entries as the totals say, and the ends of the age index name
        entries of the same age.  An entry that does not hold together is
        found when it is read (SessionCache), and is a miss.  Raises
        _Damaged (or lmdb.Error) when the file is not sound."""
        with self._env.begin(buffers=True) as txn:
            count = txn.stat(self._sessions)["entries"]
            indexed = txn.stat(self._ages)["entries"]
            if indexed != count:
                raise _Damaged("%d entries, %d in the age index" % (count, indexed))
            totals = txn.get(_TOTALS_KEY, db=self._meta)
            if totals is None or len(totals) != _TOTALS.size:
                if count:
                    raise _Damaged("no totals: made by an earlier version")
                return 0, 0
            entries, size = _TOTALS.unpack(totals)
            if entries != count:
                raise _Damaged("%d entries, %d in the totals" % (count, entries))
            cursor = txn.cursor(db=self._ages)
            for end in (cursor.first, cursor.last):
                if end():
                    key = bytes(cursor.key())
                    value = txn.get(key[STAMP.size:], db=self._sessions)
                    if value is None or bytes(value[:STAMP.size]) != key[:STAMP.size]:
                        raise _Damaged("entry %r is not in its index" % key[STAMP.size:][:40])
        return count, size

    def _remove_damaged(self, err: Exception) -> None:
        # Not set aside: a copy would keep its session secrets on disk for good.
        try:
            self._env.close()
        except AttributeError:
            pass                                  # never opened
        self._remove_files()
        log.warn("cache file %s is damaged (%s): removed, starting anew", self.path, err)

    def _key(self, cache_id: bytes) -> bytes:
        # An id that starts with NUL could pass for a digest (_DIGEST_PREFIX).
        if 0 < len(cache_id) <= self._max_key and cache_id[0]:
            return cache_id
        return _DIGEST_PREFIX + hashlib.sha256(cache_id).digest()

    def _read(self, operation: Callable[[Any], T]) -> T:
        try:
            if self._writer is not None:            # what is uncommitted must be seen
                return operation(self._writer)
            with self._env.begin(buffers=True) as txn:
                return operation(txn)
        except lmdb.Error as err:
            raise StoreError("%s: %s" % (self.path, err)) from None

    def _write(self, operation: Callable[[Any], T], counted: Callable[[T], None]) -> T:
        """Do operation in the write transaction, hold it, and count what
        it did (counted, given its result) before the group may be
        committed: the totals committed with it must include it."""
        try:
            if self._writer is None:
                self._counts_before = (self._count, self._size)
                self._begin_writes()
            while True:
                try:
                    result = operation(self._writer)
                    break
                except lmdb.MapFullError:
                    self._grow_and_replay()
        except lmdb.Error as err:
            lost = self._drop_uncommitted()
            raise StoreError("%s: %s%s" % (self.path, err, lost)) from None
        self._uncommitted.append(operation)
        counted(result)
        if len(self._uncommitted) >= _UNCOMMITTED_AT_MOST:
            self.commit()
        return result

    def _begin_writes(self) -> None:
        self._end_lookups()
        self._writer = self._lookups = self._env.begin(write=True, db=self._sessions)

    def _grow_and_replay(self) -> None:
        # LMDB's map has a fixed size: when it fills up, in a write or in
        # the commit (which writes the free list: large after a flush or a
        # cleanup of millions), double it (only when no transaction is
        # open), and do again in a new transaction what the failed one did.
        while True:
            self._writer.abort()
            self._writer = self._lookups = None
            self._env.set_mapsize(self._env.info()["map_size"] * 2)
            self._map = _mapping(os.path.abspath(self.path))     # it moved
            self._begin_writes()
            try:
                for write in self._uncommitted:
                    write(self._writer)
                return
            except lmdb.MapFullError:
                continue

    def _drop_uncommitted(self) -> str:
        """Abort the uncommitted writes, their counts with them; what was lost."""
        if self._writer is None:
            return ""
        self._writer.abort()
        self._writer = self._lookups = None
        lost, self._uncommitted = len(self._uncommitted), []
        self._count, self._size = self._counts_before
        return " (%d uncommitted updates lost)" % lost if lost else ""

    @property
    def uncommitted_writes(self) -> int:
        return len(self._uncommitted)

    def commit(self) -> None:
        if self._writer is None:
            return
        uncommitted = len(self._uncommitted)
        try:
            while True:
                try:
                    self._writer.put(_TOTALS_KEY, _TOTALS.pack(self._count, self._size),
                                     db=self._meta)
                    self._writer.commit()
                    break
                except lmdb.MapFullError:
                    self._grow_and_replay()
        except lmdb.Error as err:
            self._drop_uncommitted()
            raise StoreError("%s: %s (%d uncommitted updates lost)" % (self.path, err,
                                                                   uncommitted)) from None
        self._writer = self._lookups = None
        self._uncommitted = []

    def get(self, cache_id: bytes) -> bytes | None:
        # Every lookup comes here.  They share one transaction: the writer
        # while writes are uncommitted, else a read-only one begun by the first
        # lookup after a commit, for LMDB's begin and abort cost more than
        # a lookup.  Held between writes, it pins only the snapshot that is
        # the newest anyway.  Values are read as bytes: a copy of a few
        # hundred bytes costs less than LMDB's buffer and a copy out of it.
        key = self._key(cache_id)
        try:
            lookups = self._lookups
            if lookups is None:
                lookups = self._lookups = self._env.begin(db=self._sessions)
            value: bytes | None = lookups.get(key)
        except lmdb.Error as err:
            raise StoreError("%s: %s" % (self.path, err)) from None
        return value

    def _end_lookups(self) -> None:
        if self._lookups is not None and self._lookups is not self._writer:
            self._lookups.abort()            # a read-only one: nothing to commit
        self._lookups = None

    def put(self, cache_id: bytes, packed: bytes) -> None:
        key = self._key(cache_id)

        def put(txn: Any) -> bytes | None:
            old = self._remove(txn, key)
            txn.put(key, packed)                 # the writer's own table: sessions
            txn.put(packed[:STAMP.size] + key, b"", db=self._ages)
            return old
        def counted(old: bytes | None) -> None:
            self._count_removed(key, old)
            self._count += 1
            self._size += len(key) + len(packed) - STAMP.size
        self._write(put, counted)
        # Only updates grow what the map has touched; cleanup shrinks it,
        # and releasing then would make lookups fault the tree back in.
        self._writes += 1
        if self._writes % _RELEASE_EVERY == 0:
            _release(self._map)

    def _remove(self, txn: Any, key: bytes) -> bytes | None:
        """Remove an entry in a write transaction; the entry, packed."""
        packed: bytes | None = txn.pop(key)
        if packed is not None:
            txn.delete(packed[:STAMP.size] + key, db=self._ages)
        return packed

    def _remove_indexed(self, txn: Any, index_key: bytes) -> tuple[bytes, bytes | None]:
        """Remove the entry an age index key names; the key and the entry.
        The index key goes whatever it names: in a damaged file (which the
        start does not read through) it may name a session that is gone,
        or that has another age, and left it would stop cleanup there."""
        key = index_key[STAMP.size:]
        packed = self._remove(txn, key)
        if packed is None or packed[:STAMP.size] != index_key[:STAMP.size]:
            txn.delete(index_key, db=self._ages)     # not the one _remove() took
        return key, packed

    def _count_removed(self, key: bytes, removed: bytes | None) -> None:
        # The counts change once an operation has run, not before: done
        # again after the map grew, it must not count twice.  Held writes
        # that are lost take their counts with them (_drop_uncommitted()).
        if removed is not None:
            self._count -= 1
            self._size -= len(key) + len(removed) - STAMP.size

    def delete(self, cache_id: bytes) -> bool:
        key = self._key(cache_id)
        removed = self._write(lambda txn: self._remove(txn, key),
                              functools.partial(self._count_removed, key))
        return removed is not None

    def pop_oldest(self) -> Entry | None:
        def pop_oldest(txn: Any) -> tuple[bytes, bytes | None]:
            cursor = txn.cursor(db=self._ages)
            if not cursor.first():
                return b"", None
            return self._remove_indexed(txn, bytes(cursor.key()))
        key, removed = self._write(pop_oldest, lambda found: self._count_removed(*found))
        return None if removed is None else unpack_entry(removed)

    def expire(self, cutoff: int, budget: int) -> tuple[list[Entry], bool]:
        # One transaction for the whole step, walking the age index.
        def expire(txn: Any) -> tuple[list[tuple[bytes, bytes | None]], bool]:
            removed: list[tuple[bytes, bytes | None]] = []
            cursor = txn.cursor(db=self._ages)
            while len(removed) < budget and cursor.first():
                stamp = cursor.key()[:STAMP.size]
                if STAMP.unpack(stamp)[0] >= cutoff:
                    return removed, True
                removed.append(self._remove_indexed(txn, bytes(cursor.key())))
            return removed, not cursor.first()
        def counted(found: tuple[list[tuple[bytes, bytes | None]], bool]) -> None:
            for key, packed in found[0]:
                self._count_removed(key, packed)
        removed, done = self._write(expire, counted)
        return [unpack_entry(packed) for _, packed in removed if packed is not None], done

    def clear(self) -> int:
        def clear(txn: Any) -> None:
            txn.drop(self._sessions, delete=False)
            txn.drop(self._ages, delete=False)
        removed = self._count

        def counted(_: None) -> None:
            self._count = self._size = 0
        self._write(clear, counted)
        return removed

    def stamps(self, offset: int, limit: int) -> list[tuple[bytes, int]]:
        # Ids too awkward for an LMDB key show as their digest.
        def stamps(txn: Any) -> list[tuple[bytes, int]]:
            keys = txn.cursor(db=self._ages).iternext(values=False)
            return [(bytes(key[STAMP.size:]), STAMP.unpack(key[:STAMP.size])[0])
                    for key in itertools.islice(keys, offset, offset + limit)]
        return self._read(stamps)

    def __len__(self) -> int:
        return self._count

    @property
    def size(self) -> int:
        return self._size

    def close(self) -> None:
        try:
            self.commit()
        finally:
            self._end_lookups()
            self._env.close()


# Writes are kept uncommitted in one write transaction and committed together: by the
# server, soon after the first (COMMIT_WITHIN in stores/__init__.py), or
# here once this many are uncommitted.  A commit costs more than the writes it
# commits (pwrite(2) of each page they dirtied, LMDB's free list, the meta
# page); a crash loses what was uncommitted, which a cache can spare.
_UNCOMMITTED_AT_MOST = 64


# Every so many updates, the pages of the map that this process touched are
# given back: they are the kernel's page cache of the file, and stay there,
# but the daemon's resident memory then does not grow with the cache.
_RELEASE_EVERY = 1024
_MADV_DONTNEED = 4
_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


def _mapping(path: str) -> tuple[int, int] | None:
    """Where LMDB mapped the file: (start, length), found in /proc/self/maps
    (None when that cannot be read, as inside a chroot jail)."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].rstrip("\n") == path:
                    start, end = (int(bound, 16) for bound in fields[0].split("-"))
                    return start, end - start
    except OSError:
        pass
    return None


def _release(mapping: tuple[int, int] | None) -> None:
    if mapping is not None:
        _libc.madvise(mapping[0], mapping[1], _MADV_DONTNEED)

