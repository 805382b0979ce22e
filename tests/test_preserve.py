"""tlsmgr_preserve_sessions: the caches on disk and the ticket keys across
a restart and a kill -9, stand-alone; with the default, neither, as with
the stock daemon; what is too old, damaged or half-written is never used.
(tests/test_postfix.py does the same under real Postfix, across
"postfix reload" and kill -9.)"""

import os
import signal
import time

import pytest
from helpers.harness import start_ours, wait_for
from test_stores import _on_file

from tlsmgr.admin.client import TlsmgrClient
from tlsmgr.service.keyfile import NAME, KeyFile
from tlsmgr.service.tickets import KEY_SIZE, TicketKey, TicketKeyRing

TIMEOUT = 3600


def params(workdir, preserve="yes", **extra):
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    return {"data_directory": data, "tlsmgr_preserve_sessions": preserve,
            "smtpd_tls_session_cache_database": "lmdb:%s/smtpd_scache" % data,
            "smtp_tls_session_cache_database": "btree:%s/smtp_scache" % data, **extra}


def session_and_key(daemon):
    with TlsmgrClient(str(daemon.socket_path)) as client:
        assert client.update("smtpd", "sess1", b"made before") == 0
        assert client.update("smtp", "relay1", b"made before too") == 0
        status, key = client.tktkey()
        assert status == 0
    return key


def what_resumes(daemon, key):
    with TlsmgrClient(str(daemon.socket_path)) as client:
        return (client.lookup("smtpd", "sess1"), client.lookup("smtp", "relay1"),
                client.tktkey(key.name), client.tktkey())


@pytest.mark.parametrize("end", ["stop", "kill -9"])
def test_sessions_and_ticket_keys_survive_a_restart(tmp_path, end):
    first = start_ours(tmp_path, **params(tmp_path))
    key = session_and_key(first)
    if end == "stop":
        first.stop()
    else:
        # Updates are committed within COMMIT_WITHIN of being answered, and
        # a kill -9 may take that last millisecond's (docs/RELIABILITY.md):
        # what survives it is what reached the files.
        data = str(tmp_path / "data")
        wait_for(lambda: (_on_file(data + "/smtpd_scache"), _on_file(data + "/smtp_scache"))
                 == (["sess1"], ["relay1"]), what="the updates to reach the cache files")
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(10)
    again = start_ours(tmp_path, **params(tmp_path))
    try:
        sessions, relay, by_name, current = what_resumes(again, key)
        assert sessions == (0, b"made before") and relay == (0, b"made before too")
        assert by_name == (0, key) and current == (0, key)      # it goes on issuing
        saved = tmp_path / "data" / NAME
        assert oct(saved.stat().st_mode & 0o777) == "0o600"
        assert saved.stat().st_uid == os.geteuid()
    finally:
        again.stop()


def test_by_default_nothing_survives_and_the_key_file_goes(tmp_path):
    first = start_ours(tmp_path, **params(tmp_path))
    key = session_and_key(first)
    first.stop()
    assert (tmp_path / "data" / NAME).exists()
    again = start_ours(tmp_path, **params(tmp_path, preserve="no"))
    try:
        sessions, relay, by_name, current = what_resumes(again, key)
        assert sessions == (-1, b"") and relay == (-1, b"")
        assert by_name == (-1, None) and current[1] != key
        assert not (tmp_path / "data" / NAME).exists()           # no key left on disk
        assert "removed saved ticket keys %s" % (tmp_path / "data" / NAME) in again.log
    finally:
        again.stop()


def saved_ring(directory, *keys):
    saved = KeyFile(str(directory))
    saved.save(list(keys))
    saved.close()


def a_key(expires):
    return TicketKey(os.urandom(16), os.urandom(32), os.urandom(32), expires)


def test_a_key_past_its_decrypt_window_is_not_loaded(tmp_path):
    now = int(time.time())
    too_old = a_key(now - TIMEOUT // 2 - 1)          # its window ended a second ago
    still_decrypts = a_key(now - 60)                 # issues no more, still decrypts
    (tmp_path / "data").mkdir()
    saved_ring(tmp_path / "data", still_decrypts, too_old)
    daemon = start_ours(tmp_path, **params(tmp_path))
    try:
        with TlsmgrClient(str(daemon.socket_path)) as client:
            assert client.tktkey(too_old.name) == (-1, None)
            assert client.tktkey(still_decrypts.name) == (0, still_decrypts)
            status, current = client.tktkey()
            assert status == 0 and current not in (too_old, still_decrypts)
        # The save that the new key caused left the old one out.
        saved = KeyFile(str(tmp_path / "data"))
        names = {key.name for key in saved.load(10 * TIMEOUT)}
        saved.close()
        assert names == {current.name, still_decrypts.name}
    finally:
        daemon.stop()


def test_a_damaged_key_file_is_removed_and_new_keys_made(tmp_path):
    (tmp_path / "data").mkdir()
    saved_ring(tmp_path / "data", a_key(int(time.time()) + 600))
    path = tmp_path / "data" / NAME
    data = bytearray(path.read_bytes())
    data[20] ^= 1
    path.write_bytes(bytes(data))
    daemon = start_ours(tmp_path, **params(tmp_path))
    try:
        with TlsmgrClient(str(daemon.socket_path)) as client:
            assert client.tktkey()[0] == 0
        assert "warning: saved ticket keys %s are damaged: removed, starting with new keys" \
               % path in daemon.log
        # Never kept aside: it holds keys that decrypt old tickets.
        assert not [p.name for p in path.parent.iterdir() if ".damaged-" in p.name]
    finally:
        daemon.stop()


def test_a_torn_or_half_written_key_file_is_never_used(tmp_path):
    keys = [a_key(int(time.time()) + 600)]
    saved_ring(tmp_path, *keys)
    whole = (tmp_path / NAME).read_bytes()
    for cut in (0, 1, 9, len(whole) // 2, len(whole) - 1):
        (tmp_path / NAME).write_bytes(whole[:cut])
        saved = KeyFile(str(tmp_path))
        assert saved.load(TIMEOUT) == []
        saved.close()
        assert not (tmp_path / NAME).exists()
    # A kill -9 between writing the new file and renaming it: the old file
    # stands, and the half-made one is cleared away at the next start.
    (tmp_path / NAME).write_bytes(whole)
    (tmp_path / (NAME + ".4242.new")).write_bytes(whole[:10])
    saved = KeyFile(str(tmp_path))
    assert saved.load(TIMEOUT) == keys
    assert not (tmp_path / (NAME + ".4242.new")).exists()
    saved.close()


def test_a_key_file_of_any_size_is_read_no_further_than_the_largest_ring(tmp_path,
                                                                       monkeypatch):
    # Start-up does not grow with the file: a key file grown to 4 GiB (a
    # sparse one here) is read as far as eight keys go, found damaged and
    # removed.
    keys = [a_key(int(time.time()) + 600)]
    saved_ring(tmp_path, *keys)
    with open(tmp_path / NAME, "r+b") as grown:
        grown.truncate(4 << 30)
    read, real_read = [], os.read

    def counted_read(fd, size):
        data = real_read(fd, size)
        read.append(len(data))
        return data
    saved = KeyFile(str(tmp_path))
    with monkeypatch.context() as patched:
        patched.setattr(os, "read", counted_read)
        assert saved.load(TIMEOUT) == []
    saved.close()
    assert sum(read) <= 8 + 1 + 8 * KEY_SIZE + 32 + 1
    assert not (tmp_path / NAME).exists()


def test_a_damaged_cache_file_is_removed_and_made_anew(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "smtpd_scache.lmdb").write_bytes(b"not an LMDB file" * 512)
    daemon = start_ours(tmp_path, **params(tmp_path))
    try:
        with TlsmgrClient(str(daemon.socket_path)) as client:
            assert client.update("smtpd", "sess1", b"new") == 0
            assert client.lookup("smtpd", "sess1") == (0, b"new")
        assert "warning: cache file %s is damaged (" % (tmp_path / "data" / "smtpd_scache.lmdb") \
            in daemon.log
        assert "): removed, starting anew" in daemon.log
        assert not list((tmp_path / "data").glob("*.damaged-*"))
        assert "Traceback" not in daemon.log
    finally:
        daemon.stop()


def test_expired_entries_are_left_to_cleanup_not_served(tmp_path):
    first = start_ours(tmp_path, **params(tmp_path, smtpd_tls_session_cache_timeout="120s"))
    with TlsmgrClient(str(first.socket_path)) as client:
        assert client.update("smtpd", "old", b"s") == 0
    first.stop()
    # Older than the timeout, as after a long downtime: 121 s back in time.
    import lmdb

    from tlsmgr.stores import STAMP
    env = lmdb.open(str(tmp_path / "data" / "smtpd_scache.lmdb"), subdir=False, max_dbs=2)
    sessions, ages = env.open_db(b"sessions"), env.open_db(b"ages")
    with env.begin(write=True) as txn:
        value = txn.get(b"old", db=sessions)
        stamp = STAMP.unpack(value[:STAMP.size])[0]
        txn.delete(value[:STAMP.size] + b"old", db=ages)
        old = STAMP.pack(stamp - 121)
        txn.put(b"old", old + value[STAMP.size:], db=sessions)
        txn.put(old + b"old", b"", db=ages)
    env.close()
    again = start_ours(tmp_path, **params(tmp_path, smtpd_tls_session_cache_timeout="120s"))
    try:
        with TlsmgrClient(str(again.socket_path)) as client:
            assert client.lookup("smtpd", "old") == (-1, b"")
            assert client.stats()[1]["caches"]["smtpd"]["entries"] == 0
    finally:
        again.stop()


def test_a_memory_cache_cannot_be_preserved_and_one_warning_says_so(tmp_path):
    daemon = start_ours(tmp_path, **params(tmp_path, smtpd_tls_session_cache_database="memory:"))
    try:
        warnings = [line for line in daemon.log.splitlines() if "warning:" in line]
        assert warnings == [line for line in warnings if "is in memory" in line]
        assert len(warnings) == 1
        assert "tlsmgr_preserve_sessions = yes, but smtpd_tls_session_cache_database " \
               "memory: is in memory: it starts empty at every restart" in warnings[0]
    finally:
        daemon.stop()


def test_a_bad_value_is_a_warning_and_nothing_is_preserved(tmp_path):
    daemon = start_ours(tmp_path, **params(tmp_path, preserve="sometimes"))
    try:
        with TlsmgrClient(str(daemon.socket_path)) as client:
            assert client.tktkey()[0] == 0
        assert "warning: bad boolean configuration: tlsmgr_preserve_sessions = sometimes " \
               "(expected yes or no); using the default, tlsmgr_preserve_sessions = no" \
               in daemon.log
    finally:
        assert daemon.stop() == 0
    assert not (tmp_path / "data" / NAME).exists()


def test_saves_that_meet_leave_the_latest_ring_in_the_file(tmp_path):
    # Saves that meet, from threads rotating at once: whatever the order,
    # the file ends as the ring does, and no save takes another's file
    # from under it (they were racing for one temporary file).
    import threading
    saved = KeyFile(str(tmp_path))
    ring = TicketKeyRing(os.urandom, on_change=saved.save_ring)

    def rotate():
        for _ in range(40):
            ring.rotate(TIMEOUT)

    threads = [threading.Thread(target=rotate) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(saved.load(TIMEOUT), key=lambda k: k.name) == \
        sorted(ring.keys, key=lambda k: k.name)
    assert not list(tmp_path.glob("*.new")) and not list(tmp_path.glob("*.damaged-*"))
    saved.close()
