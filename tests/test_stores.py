"""The stores behind the session caches: memory and LMDB, one interface."""

import json
import logging
import os
import stat
import subprocess
import sys

import pytest
from conftest import require

from tlsmgr.service.scache import SessionCache
from tlsmgr.stores import Entry, Limits, StoreError, open_store, pack_entry, split_table
from tlsmgr.stores.lmdb import LmdbStore
from tlsmgr.stores.memory import MemoryStore


@pytest.fixture(params=["memory", "lmdb"])
def store(request, tmp_path):
    if request.param == "memory":
        made = MemoryStore()
    else:
        made = LmdbStore(str(tmp_path / "scache"))
    yield made
    made.close()


def test_put_get_replace_delete(store):
    assert store.get(b"a") is None
    store.put(b"a", pack_entry(Entry(10, b"one")))
    store.put(b"b", pack_entry(Entry(11, b"two")))
    assert store.get(b"a") == pack_entry(Entry(10, b"one"))
    store.put(b"a", pack_entry(Entry(12, b"three")))
    assert store.get(b"a") == pack_entry(Entry(12, b"three"))
    assert len(store) == 2
    assert store.delete(b"a") is True
    assert store.get(b"a") is None
    assert store.delete(b"a") is False
    assert len(store) == 1
    store.clear()
    assert store.get(b"b") is None


def test_awkward_ids_and_values(store):
    long_id = b"smtp&" + b"x" * 5000
    store.put(long_id, pack_entry(Entry(1, b"long")))
    store.put(b"", pack_entry(Entry(2, b"empty id")))
    store.put(b"\0nul", pack_entry(Entry(3, b"\0" * 10000)))
    assert store.get(long_id) == pack_entry(Entry(1, b"long"))
    assert store.get(b"smtp&" + b"x" * 4999) is None
    assert store.get(b"") == pack_entry(Entry(2, b"empty id"))
    assert store.get(b"\0nul") == pack_entry(Entry(3, b"\0" * 10000))


def test_incremental_expire_removes_only_old_entries(store):
    # Entries are saved in time order, as the session cache does.
    for i in range(1000):
        store.put(b"old%04d" % i, pack_entry(Entry(100, b"o")))
    for i in range(1000):
        store.put(b"new%04d" % i, pack_entry(Entry(200, b"n")))
    removed_total, steps, done = 0, 0, False
    while not done:
        removed, done = store.expire(150, 64)
        assert len(removed) <= 64
        removed_total += len(removed)
        steps += 1
    assert removed_total == 1000
    assert steps >= 1000 // 64
    assert len(store) == 1000
    assert store.get(b"new0500") == pack_entry(Entry(200, b"n"))
    assert store.get(b"old0500") is None


def test_expire_survives_updates_between_steps(store):
    for i in range(300):
        store.put(b"k%03d" % i, pack_entry(Entry(100, b"x")))
    _, done = store.expire(150, 50)
    store.put(b"k299", pack_entry(Entry(300, b"fresh")))
    store.delete(b"k100")
    while not done:
        _, done = store.expire(150, 50)
    assert len(store) == 1
    assert store.get(b"k299") == pack_entry(Entry(300, b"fresh"))


def test_lmdb_starts_empty_and_private(tmp_path):
    path = str(tmp_path / "scache")
    first = LmdbStore(path)
    first.put(b"a", pack_entry(Entry(1, b"x")))
    first.close()
    assert stat.S_IMODE(os.stat(path + ".lmdb").st_mode) == 0o600
    second = LmdbStore(path)
    assert len(second) == 0 and second.get(b"a") is None
    second.close()


def _on_file(path):
    """The entries an LMDB store's file holds, as another process reads it:
    what is committed, not what is held."""
    code = ("import json, lmdb, sys; env = lmdb.open(sys.argv[1], subdir=False, "
            "readonly=True, lock=False, max_dbs=2); db = env.open_db(b'sessions', "
            "create=False); print(json.dumps(sorted(k.decode() for k, _ in "
            "env.begin(db=db).cursor())))")
    found = subprocess.run([sys.executable, "-c", code, path + ".lmdb"], capture_output=True,
                           text=True, timeout=60, check=True)
    return json.loads(found.stdout)


def test_lmdb_holds_writes_until_a_commit_or_enough_of_them(tmp_path):
    import tlsmgr.stores.lmdb as module
    path = str(tmp_path / "scache")
    store = LmdbStore(path)
    store.put(b"a", pack_entry(Entry(1, b"x")))
    store.put(b"b", pack_entry(Entry(1, b"y")))
    store.delete(b"b")
    # Seen by lookups and counts at once, on the file only once committed.
    assert store.get(b"a") == pack_entry(Entry(1, b"x")) and store.get(b"b") is None
    assert (len(store), store.uncommitted_writes) == (1, 3)
    assert store.stamps(0, 10) == [(b"a", 1)]
    assert _on_file(path) == []
    store.commit()
    assert store.uncommitted_writes == 0 and _on_file(path) == ["a"]
    for i in range(module._UNCOMMITTED_AT_MOST):        # as many as a group holds
        store.put(b"n%02d" % i, pack_entry(Entry(2, b"z")))
    assert store.uncommitted_writes == 0 and len(_on_file(path)) == 1 + module._UNCOMMITTED_AT_MOST
    store.put(b"last", pack_entry(Entry(3, b"z")))
    store.close()                                # commits what is held
    assert "last" in _on_file(path)


def test_lmdb_held_writes_that_cannot_be_committed_are_counted_out(tmp_path, caplog):
    import lmdb

    from tlsmgr.service.scache import SessionCache
    store = LmdbStore(str(tmp_path / "scache"))
    cache = SessionCache("smtpd", store, 3600)
    cache.update(b"kept", b"s")
    cache.commit()
    cache.update(b"lost", b"session")

    class FailingCommit:                         # as when the disk is full
        def __init__(self, txn):
            self.txn = txn
            self.put = txn.put
            self.abort = txn.abort

        def commit(self):
            self.txn.abort()
            raise lmdb.DiskError("No space left on device")

    store._writer = FailingCommit(store._writer)
    cache.commit()
    assert (len(store), store.size, store.uncommitted_writes) == (1, len(b"kept") + 1, 0)
    assert cache.lookup(b"lost") is None and cache.lookup(b"kept") == b"s"
    assert cache.store_errors == 1
    assert "cannot save smtpd TLS sessions" in caplog.text
    assert "No space left on device (1 uncommitted updates lost)" in caplog.text
    cache.close()


@pytest.fixture
def small_filesystem(tmp_path):
    """A 256 KiB tmpfs, unmounted whatever the test did."""
    require(os.geteuid() == 0, "root, to mount a small tmpfs")
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs",
                    str(mountpoint)], check=True, timeout=30)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False, timeout=30)


def test_lmdb_on_a_full_filesystem_says_what_it_lost_and_serves_what_it_has(
        small_filesystem, caplog):
    path = str(small_filesystem / "scache")
    cache = SessionCache("smtpd", LmdbStore(path), 3600)
    saved = []
    for i in range(5000):                        # 1.5 MB into 256 KiB
        cache_id = b"id%04d" % i
        if not cache.update(cache_id, os.urandom(300)):
            break
        saved.append(cache_id)
    else:
        pytest.fail("the file system never filled up")
    assert cache.store_errors == 1
    assert "cannot save smtpd TLS session: " in caplog.text
    # (LMDB says "Input/output error" for the short write.)
    assert "scache.lmdb: mdb_txn_commit: " in caplog.text
    assert "(64 uncommitted updates lost)" in caplog.text
    # What the file holds is what the cache counts and finds; the rest is gone.
    on_file = _on_file(path)
    assert len(cache.store) == len(on_file) > 0
    assert all(cache.lookup(cache_id) is not None for cache_id in map(str.encode, on_file))
    assert all(cache.lookup(cache_id) is None for cache_id in saved[len(on_file):])
    cache.close()


def test_lmdb_replaces_a_damaged_file(tmp_path):
    path = tmp_path / "scache"
    (tmp_path / "scache.lmdb").write_bytes(b"this is not an lmdb file" * 100)
    store = LmdbStore(str(path))
    store.put(b"a", pack_entry(Entry(1, b"x")))
    assert store.get(b"a") == pack_entry(Entry(1, b"x"))
    store.close()


def test_lmdb_grows_past_its_initial_map(tmp_path, monkeypatch):
    import tlsmgr.stores.lmdb as module
    monkeypatch.setattr(module, "_INITIAL_MAP_SIZE", 1 << 20)
    store = LmdbStore(str(tmp_path / "scache"))
    for i in range(200):
        store.put(b"%d" % i, pack_entry(Entry(1, b"v" * 20000)))     # 4 MB into a 1 MB map
        # Lookups between the writes: their transaction is open as the map grows.
        assert store.get(b"%d" % i) == pack_entry(Entry(1, b"v" * 20000))
    assert len(store) == 200
    assert store.get(b"0") == pack_entry(Entry(1, b"v" * 20000))
    store.close()


def test_a_flush_of_a_preserved_file_that_fills_its_map_grows_the_map(tmp_path, monkeypatch):
    # Freeing every page takes new pages for LMDB's free list, in the
    # commit: a kept file that fills its map, as one of millions may, must
    # grow the map there too, not lose the flush (MDB_MAP_FULL at 5M).
    import tlsmgr.stores.lmdb as module
    monkeypatch.setattr(module, "_INITIAL_MAP_SIZE", 8 << 20)
    path = tmp_path / "scache"
    store = LmdbStore(str(path))
    count = 0
    while os.path.getsize(str(path) + ".lmdb") < (8 << 20) - 2 * 4096:
        store.put(b"%06d" % count, pack_entry(Entry(1, b"v" * 300)))
        store.commit()
        count += 1
    store.close()
    store = LmdbStore(str(path), preserve=True)
    assert store.clear() == count
    store.commit()
    store.put(b"after", pack_entry(Entry(1, b"x")))
    store.close()
    assert len(LmdbStore(str(path), preserve=True)) == 1


def test_lmdb_in_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="cannot open cache file"):
        LmdbStore(str(tmp_path / "no" / "such" / "scache"))


@pytest.mark.parametrize("spec", ["btree:X", "hash:X", "lmdb:X", "sdbm:X"])
def test_file_table_types_open_lmdb(tmp_path, spec):
    store = open_store(spec.replace("X", str(tmp_path / "c")))
    assert isinstance(store, LmdbStore)
    assert os.path.exists(tmp_path / "c.lmdb")
    store.close()


def test_memory_and_bad_types():
    assert isinstance(open_store("memory:"), MemoryStore)
    with pytest.raises(StoreError, match="unsupported dictionary type: cdb"):
        open_store("cdb:/x")
    with pytest.raises(ValueError, match='expecting "type:name"'):
        split_table("/var/lib/postfix/smtpd_scache")


def test_session_cache_cleanup_in_steps(tmp_path):
    now = [1000]
    cache = SessionCache("smtpd", MemoryStore(), 120, clock=lambda: now[0])
    for i in range(1000):
        cache.update(b"%d" % i, b"s")
    now[0] += 121
    cache.update(b"fresh", b"s")
    cache.start_cleanup()
    steps = 0
    while cache.cleanup_active:
        cache.cleanup_step()
        steps += 1
    assert steps > 1                       # incremental, not one long stall
    assert len(cache.store) == 1
    assert cache.lookup(b"fresh") == b"s"


def test_session_cache_limits_count_and_report_evictions(caplog):
    caplog.set_level(logging.INFO, logger="tlsmgr")
    now = [1000]
    cache = SessionCache("smtp", MemoryStore(), 120, clock=lambda: now[0],
                         limits=Limits(entries=3))
    for i in range(3):
        cache.update(b"%d" % i, b"s")
    now[0] += 200                                  # those three have expired
    for i in range(3, 10):
        cache.update(b"%d" % i, b"s")
    assert len(cache.store) == 3
    assert (cache.expired, cache.evicted) == (3, 4)
    assert caplog.text.count("smtp TLS session cache is full") == 1
    now[0] += 61
    cache.update(b"late", b"s")
    assert caplog.text.count("smtp TLS session cache is full") == 2
    # Since the first line: 2 more expired, 4 live, and one live for "late".
    assert "made room by removing 2 expired and 5 live entries in 61 seconds" in caplog.text


@pytest.mark.parametrize("kind", ["memory", "lmdb"])
def test_byte_limit(tmp_path, kind):
    store = MemoryStore() if kind == "memory" else LmdbStore(str(tmp_path / "c"))
    limits = Limits(bytes=1000)
    for i in range(50):
        store.save(b"%02d" % i, pack_entry(Entry(i, b"x" * 98)), limits, cutoff=0)
    assert len(store) == 10 and store.size == 1000
    assert store.get(b"39") is None and store.get(b"40") == pack_entry(Entry(40, b"x" * 98))
    store.close()


def test_lmdb_resident_memory_does_not_grow_with_entries(tmp_path):
    # In a fresh process, so that nothing else moves its memory.
    import json
    import subprocess
    import sys
    code = """
import json, os
from tlsmgr.stores import Entry, pack_entry
from tlsmgr.stores.lmdb import LmdbStore
def rss():
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) * 1024 for l in status if l.startswith("VmRSS"))
store = LmdbStore(%r)
session = os.urandom(300)
for i in range(5000):
    store.put(b"%%064x" %% i, pack_entry(Entry(i, session)))
before = rss()
for i in range(5000, 100000):
    store.put(b"%%064x" %% i, pack_entry(Entry(i, session)))
print(json.dumps({"grown": rss() - before, "entries": len(store)}))
""" % str(tmp_path / "scache")
    result = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                       text=True, check=True, timeout=120).stdout)
    assert result["entries"] == 100000
    assert result["grown"] < 4 * 1024 * 1024      # 95000 more entries, ~35 MB of data


# A preserved file: checked at start in a time that does not grow with it.

def _preserved(path, entries):
    store = LmdbStore(path)
    for i in range(entries):
        store.put(b"id%06d" % i, pack_entry(Entry(1000 + i, b"session %d" % i)))
    store.close()
    return LmdbStore(path, preserve=True)


def test_lmdb_preserved_totals_come_back(tmp_path):
    path = str(tmp_path / "scache")
    first = LmdbStore(path)
    for i in range(500):
        first.put(b"id%06d" % i, pack_entry(Entry(1000 + i, b"session %d" % i)))
    first.delete(b"id000007")
    counted = (len(first), first.size)
    first.close()
    again = LmdbStore(path, preserve=True)
    assert (len(again), again.size) == counted and counted[0] == 499
    assert again.get(b"id000499") == pack_entry(Entry(1499, b"session 499"))
    again.close()


def test_lmdb_totals_count_the_write_that_commits_its_group(tmp_path):
    import tlsmgr.stores.lmdb as module
    path = str(tmp_path / "scache")
    store = LmdbStore(path)
    for i in range(module._UNCOMMITTED_AT_MOST):       # the last one commits the group
        store.put(b"id%d" % i, pack_entry(Entry(1, b"s")))
    assert store.uncommitted_writes == 0
    store._env.close()                          # as a kill -9 would leave it, nothing held
    assert len(LmdbStore(path, preserve=True)) == module._UNCOMMITTED_AT_MOST


def test_lmdb_damaged_entry_in_a_preserved_file_is_a_miss_and_removed(tmp_path, caplog):
    import lmdb
    path = str(tmp_path / "scache")
    _preserved(path, 100).close()
    env = lmdb.open(path + ".lmdb", subdir=False, max_dbs=3)
    with env.begin(write=True) as txn:                   # torn in the middle of the file
        txn.put(b"id000050", b"\x01\x02", db=env.open_db(b"sessions", txn=txn))
    env.close()
    store = LmdbStore(path, preserve=True)     # not read through at start: it is not seen
    cache = SessionCache("smtpd", store, 3600, clock=lambda: 2000)
    assert cache.lookup(b"id000050") is None
    assert cache.lookup(b"id000051") == b"session 51"
    assert store.get(b"id000050") is None and cache.unopened == 1
    assert "entry id000050 of 2 bytes, too short to be one -- treated as a miss" in caplog.text
    store.close()


def test_lmdb_cleanup_goes_past_an_index_entry_whose_session_is_gone(tmp_path):
    import lmdb

    from tlsmgr.stores import STAMP
    path = str(tmp_path / "scache")
    _preserved(path, 100).close()
    env = lmdb.open(path + ".lmdb", subdir=False, max_dbs=3)
    with env.begin(write=True) as txn:                   # damage the start does not see
        sessions = env.open_db(b"sessions", txn=txn)
        txn.delete(b"id000050", db=sessions)             # its index entry stays,
        txn.put(b"orphan", STAMP.pack(5) + b"s", db=sessions)   # the counts equal
        txn.put(b"id000060", STAMP.pack(1) + b"another age", db=sessions)
    env.close()
    store = LmdbStore(path, preserve=True)
    assert len(store) == 100
    expired, done = store.expire(10**9, 1000)
    assert done and store.stamps(0, 10) == []
    assert len(expired) == 99                            # id000050's session was gone
    store.close()


def test_lmdb_preserved_file_without_totals_is_made_anew(tmp_path, caplog):
    import lmdb
    path = str(tmp_path / "scache")
    _preserved(path, 10).close()
    env = lmdb.open(path + ".lmdb", subdir=False, max_dbs=3)
    with env.begin(write=True) as txn:                   # as an earlier version left it
        txn.delete(b"totals", db=env.open_db(b"meta", txn=txn))
    env.close()
    store = LmdbStore(path, preserve=True)
    assert len(store) == 0 and store.get(b"id000001") is None
    assert "no totals: made by an earlier version): removed, starting anew" in caplog.text
    store.close()
