"""Caches on a real redis-server: a fleet's shared sessions and ticket keys,
caps under load, and a Redis that goes away and comes back."""

import asyncio
import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest
import redis
from conftest import require
from helpers.harness import REDIS_NEEDED, REDIS_SERVER, redis_available, start_ours, wait_for
from helpers.remote import Blocking

from tlsmgr.admin.client import TlsmgrClient
from tlsmgr.stores import EVICTIONS_PER_SAVE, Entry, Limits, StoreError, pack_entry
from tlsmgr.stores.lmdb import LmdbStore
from tlsmgr.stores.memory import MemoryStore
from tlsmgr.stores.redis import (
    RedisSettings,
    RedisStore,
    Refused,
    describe_error,
    parse_url,
)
from tlsmgr.util.pending import gather

pytestmark = pytest.mark.redis


def fleet_params(redis_server, data, **extra):
    table = "redis:" + redis_server.url
    return dict(data_directory=data, smtpd_tls_session_cache_database=table,
                smtp_tls_session_cache_database=table,
                tlsmgr_redis_key_prefix="fleet%d:" % os.getpid(), **extra)


def host(tmp_path, name, redis_server, **extra):
    directory = tmp_path / name
    (directory / "data").mkdir(parents=True)
    return start_ours(directory, **fleet_params(redis_server, directory / "data", **extra))


def test_the_server_that_answers_is_the_one_asked_for(redis_server):
    """The Redis tests run against TLSMGR_REDIS_SERVER when it names one
    (valkey-server in the Debian 13 root): that server answers them."""
    info = redis_server.client().info("server")
    assert os.path.realpath(info["executable"]) == os.path.realpath(REDIS_SERVER), info
    assert ("valkey_version" in info) == ("valkey" in os.path.basename(REDIS_SERVER)), info


# The store itself.

def test_store_put_get_delete_and_ttl(redis_server):
    store = Blocking(RedisStore(redis_server.url, "smtpd", RedisSettings("unit:"),
                                timeout=3600))
    store.put(b"id\0binary", pack_entry(Entry(1000, b"session bytes")))
    assert store.get(b"id\0binary") == pack_entry(Entry(1000, b"session bytes"))
    assert store.counts() == (1, len(b"id\0binary") + len(b"session bytes"))
    ttl = redis_server.client().ttl(b"{unit:smtpd}:s:id\0binary")
    assert 3595 <= ttl <= 3601                     # Redis expires it by itself
    assert store.delete(b"id\0binary") is True
    assert store.delete(b"id\0binary") is False
    assert store.get(b"id\0binary") is None
    assert store.counts() == (0, 0)


def test_store_keeps_within_limits_oldest_out_first(redis_server):
    store = Blocking(RedisStore(redis_server.url, "smtp", RedisSettings("caps:"),
                                timeout=3600))
    limits = Limits(entries=10, bytes=2000)
    trimmed = [store.save(b"k%02d" % i, pack_entry(Entry(1000 + i, b"x" * 100)), limits,
                          cutoff=1005) for i in range(30)]
    entries, size = store.counts()
    assert entries == 10 and size <= 2000
    assert store.get(b"k00") is None and store.get(b"k29") is not None
    assert sum(t.expired for t in trimmed) == 5        # saved before the cutoff
    assert sum(t.evicted for t in trimmed) == 15
    store.save(b"big", pack_entry(Entry(2000, b"y" * 1500)), limits, cutoff=0)
    assert store.counts()[1] <= 2000 and store.get(b"big") is not None


def store_of(kind, tmp_path, redis_server, prefix):
    """A store of each kind, answering at once (Blocking) for the tests."""
    if kind == "redis":
        return Blocking(RedisStore(redis_server.url, "smtpd", RedisSettings(prefix),
                                   timeout=3600))
    return Blocking(LmdbStore(str(tmp_path / "scache")) if kind == "lmdb" else MemoryStore())


@pytest.mark.parametrize("kind", ["redis", "lmdb", "memory"])
def test_a_store_far_over_its_limits_is_trimmed_a_bounded_number_an_update(
        tmp_path, redis_server, kind):
    # As after the limits were lowered under a cache of millions: no update
    # waits for them all to go; each takes a bounded share.
    store = store_of(kind, tmp_path, redis_server, "over:")
    for i in range(300):
        store.save(b"k%03d" % i, pack_entry(Entry(1000 + i, b"x")), Limits(), cutoff=0)
    limits = Limits(entries=10)
    first = store.save(b"new0", pack_entry(Entry(2000, b"x")), limits, cutoff=0)
    assert first.evicted == EVICTIONS_PER_SAVE and store.counts()[0] == 301 - EVICTIONS_PER_SAVE
    for n in range(1, 6):
        store.save(b"new%d" % n, pack_entry(Entry(2000 + n, b"x")), limits, cutoff=0)
    assert store.counts()[0] == 10                     # within its limits again
    assert store.get(b"k290") is None and store.get(b"k299") is not None    # oldest out first


@pytest.mark.parametrize("kind", ["redis", "lmdb", "memory"])
def test_every_store_lists_a_page_after_an_offset_oldest_first(tmp_path, redis_server, kind):
    store = store_of(kind, tmp_path, redis_server, "pages:")
    for i in range(10):
        store.save(b"k%d" % i, pack_entry(Entry(1000 + i, b"x")), Limits(), cutoff=0)
    assert store.stamps(3, 4) == [(b"k%d" % i, 1000 + i) for i in range(3, 7)]
    assert store.stamps(8, 5) == [(b"k8", 1008), (b"k9", 1009)]
    assert store.stamps(10, 5) == [] and store.stamps(0, 0) == []


def test_store_fails_fast_while_redis_is_down(redis_server):
    store = Blocking(RedisStore(redis_server.url, "smtpd", RedisSettings("down:"),
                                timeout=3600))
    redis_server.stop()
    with pytest.raises(StoreError, match="Redis unix://"):
        store.get(b"a")
    with pytest.raises(StoreError, match="unreachable .*probed every second"):
        store.get(b"a")                               # no network this time
    redis_server.start()
    # The probe notices it back within about a second.
    wait_for(lambda: _works(store), timeout=3, what="the store to try Redis again")


def test_a_full_redis_refuses_writes_and_still_serves_reads(redis_server):
    store = Blocking(RedisStore(redis_server.url, "smtpd", RedisSettings("full:"),
                                timeout=3600))
    store.put(b"kept", pack_entry(Entry(1, b"session")))
    redis_server.client().config_set("maxmemory-policy", "noeviction")
    redis_server.client().config_set("maxmemory", 1)
    try:
        for _ in range(30):                           # updates and lookups alternate
            with pytest.raises(Refused, match=r"^Redis unix://\S+: OutOfMemoryError: "
                               r"command not allowed when used memory > 'maxmemory'$"):
                store.put(b"new", pack_entry(Entry(2, b"session")))
            assert store.get(b"kept") == pack_entry(Entry(1, b"session"))
    finally:
        redis_server.client().config_set("maxmemory", 0)


def test_a_wrong_password_is_reported_as_such(redis_server):
    redis_server.client().config_set("requirepass", "right")
    try:
        for password in ("", "wrong"):
            store = Blocking(RedisStore(redis_server.url, "smtpd", RedisSettings("auth:", password),
                               timeout=3600))
            for _ in range(3):                        # never taken for an outage
                with pytest.raises(Refused) as refused:
                    store.get(b"a")
                assert re.search(r"AuthenticationError: .*\(as user default, with %s\)$"
                                 % ("the password of tlsmgr_redis_password" if password
                                    else "no password"),
                                 str(refused.value)), refused.value
    finally:
        redis.Redis.from_url(redis_server.url, password="right").config_set("requirepass", "")


@pytest.mark.parametrize("url, kind, nodes, service, db", [
    ("redis+cluster://10.0.0.1:7000,10.0.0.2:7001,node3", "cluster",
     (("10.0.0.1", 7000), ("10.0.0.2", 7001), ("node3", 6379)), "", 0),
    ("redis+sentinel://:secret@s1:26380,s2,s3:26381/pool/2", "sentinel",
     (("s1", 26380), ("s2", 26379), ("s3", 26381)), "pool", 2),
    ("redis://:pw@127.0.0.1:6380/1", "server", (), "", 0),
])
def test_urls_name_several_seed_nodes(url, kind, nodes, service, db):
    endpoint = parse_url(url)
    assert (endpoint.kind, endpoint.nodes, endpoint.service, endpoint.db) == \
        (kind, nodes, service, db)
    assert "secret" not in endpoint.name and "pw@" not in endpoint.name


@pytest.mark.parametrize("url", ["redis+sentinel://s1:26379", "redis+cluster://:7000",
                                 "redis+cluster://h:port", "nonsense://x"])
def test_bad_urls_are_one_clear_error(url):
    with pytest.raises(StoreError, match="^bad Redis URL %s: " % re.escape(url)):
        parse_url(url)


def test_redis_py_dumps_are_cut_to_one_short_line():
    from redis.sentinel import MasterNotFoundError
    dump = "No master found for 'pool' : {%s}" % ", ".join(
        "Redis<ConnectionPool<Connection<host=h%d,port=26379,db=0>>>: 'Error 111'" % n
        for n in range(40))
    assert describe_error(MasterNotFoundError(dump)) == \
        "MasterNotFoundError: No master found for 'pool'"
    assert len(describe_error(redis.ResponseError("x" * 5000))) <= 160
    assert describe_error(redis.TimeoutError()) == "TimeoutError"


def test_what_waiting_clients_ask_in_one_turn_goes_in_one_pipeline(redis_server):
    # 64 updates and 64 lookups issued in one turn of the loop, as by 128
    # waiting connections: one round trip, and each its own answer.
    store = RedisStore(redis_server.url, "smtpd", RedisSettings("pipe:"), timeout=3600)
    batches = []
    exchange = store.link._exchange

    async def counted(batch):
        batches.append(len(batch))
        await exchange(batch)

    store.link._exchange = counted

    async def scenario():
        # The first: its script sent whole, as Redis does not know it yet.
        await store.save(b"first", pack_entry(Entry(1, b"s")), Limits(), 0)
        saved = [store.save(b"id%d" % i, pack_entry(Entry(1000 + i, b"s%d" % i)), Limits(), 0)
                 for i in range(64)]
        found = [store.get(b"id%d" % i) for i in range(64)]
        await asyncio.gather(*saved)
        answers = await asyncio.gather(*found)
        await store.close()
        return answers

    answers = asyncio.run(scenario())
    assert answers == [pack_entry(Entry(1000 + i, b"s%d" % i)) for i in range(64)]
    assert batches == [1, 1, 128], batches


def _works(store):
    store.idle(0.1)                 # the probe runs meanwhile
    try:
        store.put(b"a", pack_entry(Entry(1, b"s")))
        return True
    except StoreError:
        return False


# Two daemons, two hosts of one fleet.

def test_many_clients_waiting_on_redis_are_answered_by_one_thread(tmp_path, redis_server):
    # 32 clients at once, each waiting on Redis for every request: all are
    # answered, by the event loop's thread alone (no worker threads).
    daemon = host(tmp_path, "a", redis_server)
    errors = []

    def client(n):
        try:
            with TlsmgrClient(str(daemon.socket_path)) as c:
                for i in range(50):
                    assert c.update("smtpd", "c%d-%d" % (n, i), b"s%d" % i) == 0
                    assert c.lookup("smtpd", "c%d-%d" % (n, i)) == (0, b"s%d" % i)
        except Exception as err:
            errors.append(err)

    clients = [threading.Thread(target=client, args=(n,)) for n in range(32)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(60)
    assert not errors, errors[:3]
    assert os.listdir("/proc/%d/task" % daemon.process.pid) == [str(daemon.process.pid)]


def test_two_hosts_share_sessions_and_ticket_keys(tmp_path, redis_server):
    first, second = (host(tmp_path, name, redis_server) for name in ("a", "b"))
    try:
        with TlsmgrClient(str(first.socket_path)) as a, \
                TlsmgrClient(str(second.socket_path)) as b:
            assert a.update("smtpd", "sess1", b"made on a") == 0
            assert b.lookup("smtpd", "sess1") == (0, b"made on a")
            assert b.update("smtp", "relay1", b"made on b") == 0
            assert a.lookup("smtp", "relay1") == (0, b"made on b")
            assert b.delete("smtpd", "sess1") == 0
            assert a.lookup("smtpd", "sess1") == (-1, b"")
            status, key_a = a.tktkey()
            status_b, key_b = b.tktkey()
            assert status == status_b == 0 and key_a == key_b
            assert b.tktkey(key_a.name) == (0, key_a)
    finally:
        first.stop()
        second.stop()


def test_ticket_keys_survive_a_daemon_restart(tmp_path, redis_server):
    first = host(tmp_path, "a", redis_server)
    with TlsmgrClient(str(first.socket_path)) as a:
        _, key = a.tktkey()
    first.stop()
    again = start_ours(tmp_path / "a", **fleet_params(redis_server, tmp_path / "a" / "data"))
    try:
        with TlsmgrClient(str(again.socket_path)) as a:
            assert a.tktkey() == (0, key)
            assert a.tktkey(key.name) == (0, key)
    finally:
        again.stop()


def storm(path, prefix, count, size=300):
    def writer(n):
        with TlsmgrClient(str(path)) as client:
            for i in range(count):
                assert client.update("smtpd", "%s-%d-%d" % (prefix, n, i), b"s" * size) == 0
    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)


def test_caps_hold_under_a_write_storm_from_two_hosts(tmp_path, redis_server):
    limits = dict(tlsmgr_smtpd_cache_entry_limit=200, tlsmgr_smtpd_cache_size_limit=50000)
    first = host(tmp_path, "a", redis_server, **limits)
    second = host(tmp_path, "b", redis_server, **limits)
    try:
        both = [threading.Thread(target=storm, args=(d.socket_path, name, 150))
                for d, name in ((first, "a"), (second, "b"))]
        for thread in both:
            thread.start()
        for thread in both:
            thread.join(180)
        client = redis_server.client()
        tag = "{fleet%d:smtpd}" % os.getpid()
        assert client.zcard(tag + ":age") <= 50000 // 300   # the byte cap bites first
        assert int(client.get(tag + ":bytes")) <= 50000
        assert len(client.keys(tag + ":s:*")) == client.zcard(tag + ":age")
        with TlsmgrClient(str(first.socket_path)) as a:
            assert a.lookup("smtpd", "a-0-0") == (-1, b"")   # the oldest went first
        wait_for(lambda: "TLS session cache is full" in first.log + second.log,
                 what="an eviction report")
    finally:
        first.stop()
        second.stop()


@pytest.mark.parametrize("table", ["memory:", "lmdb:{data}/smtpd_scache"])
def test_caps_hold_for_local_stores(tmp_path, table):
    data = tmp_path / "data"
    data.mkdir()
    daemon = start_ours(tmp_path, data_directory=data,
                        smtpd_tls_session_cache_database=table.format(data=data),
                        tlsmgr_smtpd_cache_entry_limit=100, tlsmgr_smtpd_cache_size_limit=20000)
    try:
        storm(daemon.socket_path, "w", 100)
        with TlsmgrClient(str(daemon.socket_path)) as client:
            present = sum(client.lookup("smtpd", "w-%d-%d" % (n, i))[0] == 0
                          for n in range(8) for i in range(100))
        assert 0 < present <= 100 and present * (300 + 6) <= 20000 + 400
        # Hundreds of evictions, one line: at most one a minute.
        assert daemon.log.count("smtpd TLS session cache is full") == 1
    finally:
        daemon.stop()


# Redis going away.

def test_redis_outage_is_survived(tmp_path, redis_server):
    daemon = host(tmp_path, "a", redis_server)
    try:
        with TlsmgrClient(str(daemon.socket_path)) as client:
            assert client.update("smtpd", "before", b"s") == 0
            _, shared_key = client.tktkey()
            redis_server.stop()
            for _ in range(20):
                assert client.seed(16)[0] == 0
                assert client.policy("smtpd") == (0, 1, 3600)
                assert client.lookup("smtpd", "before") == (-1, b"")      # a miss
                assert client.update("smtpd", "during", b"s") == -1       # fails
            # The fleet's key of this period, remembered: still issued, and
            # its tickets still decrypt here.
            assert client.tktkey() == (0, shared_key)
            assert client.tktkey(shared_key.name) == (0, shared_key)
            warnings = re.findall(r"warning: cannot (save|look up) smtpd TLS session",
                                  daemon.log)
            assert 1 <= len(warnings) <= 2                                 # rate-limited
            redis_server.start()
            wait_for(lambda: client.update("smtpd", "after", b"back") == 0, timeout=40,
                     what="sharing to come back")
            assert client.lookup("smtpd", "after") == (0, b"back")
            assert client.tktkey() == (0, shared_key)                     # the fleet's again
        assert len(re.findall(r"Redis \S+ answers again, after \d+ seconds",
                              daemon.log)) == 1, daemon.log
    finally:
        daemon.stop()


def test_the_end_of_refused_writes_is_logged_too(tmp_path, redis_server):
    # A full Redis refuses writes and serves reads: the breaker stays
    # closed, so "answers again" is never said; that sessions are saved
    # again is, once, with how long and how many were not.
    daemon = host(tmp_path, "a", redis_server)
    try:
        with TlsmgrClient(str(daemon.socket_path)) as client:
            assert client.update("smtpd", "before", b"s") == 0
            redis_server.client().config_set("maxmemory-policy", "noeviction")
            redis_server.client().config_set("maxmemory", 1)
            try:
                for n in range(5):
                    assert client.update("smtpd", "during%d" % n, b"s") == -1
                    assert client.lookup("smtpd", "before") == (0, b"s")
            finally:
                redis_server.client().config_set("maxmemory", 0)
            for n in range(3):
                assert client.update("smtpd", "after%d" % n, b"s") == 0
        lines = re.findall(r"tlsmgr: smtpd TLS sessions are saved again, after \d+ seconds in "
                           r"which (\d+) could not be", daemon.log)
        assert lines == ["5"], daemon.log
    finally:
        daemon.stop()


def test_redis_down_at_start(tmp_path, redis_server):
    redis_server.stop()
    daemon = host(tmp_path, "a", redis_server)
    try:
        with TlsmgrClient(str(daemon.socket_path)) as client:
            assert client.seed(8)[0] == 0
            assert client.lookup("smtpd", "x") == (-1, b"")
            status, local_key = client.tktkey()              # this host's own key
            assert status == 0 and client.tktkey(local_key.name) == (0, local_key)
            redis_server.start()
            wait_for(lambda: client.update("smtpd", "x", b"s") == 0, timeout=40,
                     what="sharing to start")
            assert client.lookup("smtpd", "x") == (0, b"s")
            # The keys have a breaker of their own (in a Cluster they may be
            # on another node): its probe finds Redis back within a second.
            wait_for(lambda: client.tktkey()[1] != local_key, timeout=5,
                     what="the fleet's key")
            status, shared_key = client.tktkey()
            assert status == 0
            stored = redis_server.client().keys("{fleet%d:tickets}:name:*" % os.getpid())
            assert [key.endswith(shared_key.name) for key in stored] == [True]
            assert client.tktkey(local_key.name) == (0, local_key)   # still decrypts
    finally:
        daemon.stop()


def test_a_silent_redis_delays_only_its_own_requests(tmp_path):
    # A Redis that accepts connections and never answers.
    path = str(tmp_path / "silent.sock")
    silent = socket.socket(socket.AF_UNIX)
    silent.bind(path)
    silent.listen(16)
    data = tmp_path / "data"
    data.mkdir()
    daemon = start_ours(tmp_path, data_directory=data,
                        smtpd_tls_session_cache_database="redis:unix://%s" % path,
                        tlsmgr_redis_timeout_ms=2000)
    try:
        with TlsmgrClient(str(daemon.socket_path), timeout=30) as slow, \
                TlsmgrClient(str(daemon.socket_path)) as quick:
            done = []
            waiter = threading.Thread(
                target=lambda: done.append(slow.lookup("smtpd", "x")))
            waiter.start()
            time.sleep(0.2)                       # the lookup is now waiting on Redis
            assert quick.seed(8)[0] == 0          # answered meanwhile
            assert quick.policy("smtpd")[0] == 0
            assert not done                       # the lookup is still waiting
            waiter.join(20)
            assert done == [(-1, b"")]            # a miss, after the bounded wait
    finally:
        daemon.stop()
        silent.close()


def test_sentinel_url_finds_the_master(tmp_path):
    require(redis_available(), REDIS_NEEDED)
    from helpers.harness import free_tcp_port
    port, sentinel_port = free_tcp_port(), free_tcp_port()
    master = subprocess.Popen([REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1",
                               "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    config = tmp_path / "sentinel.conf"
    config.write_text("port %d\nbind 127.0.0.1\nsentinel monitor pool 127.0.0.1 %d 1\n"
                      % (sentinel_port, port))
    sentinel = subprocess.Popen([REDIS_SERVER, str(config), "--sentinel"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        store = Blocking(RedisStore("redis+sentinel://127.0.0.1:%d/pool/0" % sentinel_port, "smtpd",
                           RedisSettings("sentinel:"), timeout=3600))
        wait_for(lambda: _works(store), timeout=20, what="the sentinel to name the master")
        assert store.get(b"a") == pack_entry(Entry(1, b"s"))
    finally:
        for process in (sentinel, master):
            process.terminate()
            process.wait(10)


def test_control_requests_on_a_fleet_cache(tmp_path, redis_server):
    a, b = host(tmp_path, "a", redis_server), host(tmp_path, "b", redis_server)
    try:
        with TlsmgrClient(str(a.socket_path)) as client:
            for i in range(3):
                assert client.update("smtpd", "id%d" % i, b"session %d" % i) == 0
        with TlsmgrClient(str(b.socket_path)) as client:
            # Host b sees the fleet's cache: its entries, listed oldest first.
            status, stats = client.stats()
            assert stats["caches"]["smtpd"]["entries"] == 3
            assert stats["ticket_keys"]["shared"] is True
            status, entries = client.list("smtpd")
            assert status == 0 and [e["id"] for e in entries] == ["id0", "id1", "id2"]
            # Flushing on b empties the cache for a too.
            assert client.flush("smtpd") == (0, 3)
            # Fleet keys are not one host's to rotate.
            assert client.rotate_keys() == (-1, b"")
        with TlsmgrClient(str(a.socket_path)) as client:
            assert client.lookup("smtpd", "id1")[0] == -1
            assert client.stats()[1]["caches"]["smtpd"]["entries"] == 0
        assert "shared by the fleet through Redis" in b.log
    finally:
        a.stop()
        b.stop()


def test_a_flush_of_many_entries_is_answered_when_they_are_gone(tmp_path, redis_server):
    # 60000 entries: hundreds of bounded steps, many times the store's
    # deadline of 150 ms (a control request waits up to ipc_timeout), and
    # deeper than Python's recursion limit had each step been chained to
    # the one before.  What is saved after the flush began stays.
    prefix = "fleet%d:" % os.getpid()
    now = int(time.time())

    async def fill():
        store = RedisStore(redis_server.url, "smtpd", RedisSettings(prefix), timeout=3600)
        for first in range(0, 60000, 2000):
            await gather([store.save(b"id%06d" % i, pack_entry(Entry(now - 10, b"s" * 300)),
                                     Limits(), 0) for i in range(first, first + 2000)])
        await store.save(b"later", pack_entry(Entry(now + 60, b"s")), Limits(), 0)
        await store.close()
    asyncio.run(fill())
    daemon = host(tmp_path, "a", redis_server, tlsmgr_redis_timeout_ms=100,
                  tlsmgr_smtpd_cache_entry_limit=0, tlsmgr_smtpd_cache_size_limit=0)
    try:
        with TlsmgrClient(str(daemon.socket_path), timeout=60) as client:
            assert client.flush("smtpd") == (0, 60000)
            assert client.lookup("smtpd", "later")[0] == 0
            assert client.stats()[1]["caches"]["smtpd"]["entries"] == 1
        assert "smtpd TLS session cache flushed: removed 60000 entries" in daemon.log
        assert "error" not in daemon.log and "warning" not in daemon.log
    finally:
        daemon.stop()


def test_the_clients_made_inside_the_jail_need_no_module_not_loaded_before():
    # Under chroot the Python installation is out of reach: what making a
    # client of each kind, and its first connection, import is imported
    # before the jail.
    script = """
import asyncio, sys
from tlsmgr.runtime import master
master.preload_modules()
from tlsmgr.stores.redis import RedisLink, RedisSettings, parse_url
before = set(sys.modules)
async def asked():
    for url in ("redis://localhost:1/0", "rediss://localhost:1/0", "unix:///nowhere.sock",
                "redis+sentinel://127.0.0.1:1/pool", "redis+cluster://127.0.0.1:1"):
        try:                                  # made, and connecting refused
            await RedisLink(parse_url(url), RedisSettings()).send(("PING",))
        except Exception:
            pass
asyncio.run(asked())
print(sorted(set(sys.modules) - before))
"""
    found = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           timeout=60)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "[]", found.stdout
