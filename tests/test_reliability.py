"""Hostile input, stalled clients, crashes: the daemon keeps serving and
loses nothing (issue 6).  Each test runs the real daemon stand-alone and
drives it over its socket; none asserts a timing, only what a client or an
administrator would see."""

import os
import pwd
import resource
import selectors
import threading
import time

import pytest
from conftest import require
from helpers.harness import (
    closed_by_server,
    connect,
    handshake,
    kill_during_write_storm,
    postfix_dirs,
    process_memory,
    request,
    send_oversized_request,
    start_ours,
    wait_for,
)

from tlsmgr.admin.client import TlsmgrClient
from tlsmgr.wire.attr import Decoder, encode

SEED = encode([("request", "seed"), ("size", 32)])
MiB = 1 << 20


def healthy(daemon) -> bool:
    with connect(daemon.socket_path) as sock:
        handshake(sock)
        status, (name, value) = request(sock, SEED)
        return status == (b"status", b"0") and name == b"seed" and len(value) > 40


@pytest.fixture
def daemon(tmp_path):
    started = start_ours(tmp_path, data_directory=tmp_path,
                         smtpd_tls_session_cache_database="lmdb:%s/smtpd_scache" % tmp_path)
    yield started
    started.stop()


def test_standalone_as_root_makes_private_files_as_mail_owner_and_runs_as_it(tmp_path):
    require(os.geteuid() == 0, "root, which hands its files to mail_owner "
                               "(run the tests as root)")
    dirs = postfix_dirs(tmp_path)
    data = dirs["data_directory"]
    started = start_ours(tmp_path, mail_owner="postfix", **dirs,
                         smtpd_tls_session_cache_database="lmdb:%s/smtpd_scache" % data)
    try:
        with TlsmgrClient(str(started.socket_path)) as client:
            assert client.update("smtpd", "id", b"session") == 0
        postfix = pwd.getpwnam("postfix")
        made = [data / "prng_exch", data / "smtpd_scache.lmdb",
                data / "smtpd_scache.lmdb-lock", started.socket_path]
        for path in made:
            info = path.stat()
            assert (path.name, info.st_uid, oct(info.st_mode & 0o777)) == \
                (path.name, postfix.pw_uid, "0o600")
        with open("/proc/%d/status" % started.process.pid) as status:
            uids = next(line for line in status if line.startswith("Uid:")).split()[1:]
        assert uids == [str(postfix.pw_uid)] * 4
    finally:
        started.stop()


def test_over_a_thousand_concurrent_connections_are_all_answered(daemon):
    count = 1500
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    require(min(hard, 4096) >= count + 100,
            "an open files hard limit of %d or more (it is %d)" % (count + 100, hard))
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    socks = []
    try:
        for _ in range(count):
            socks.append(connect(daemon.socket_path))
        # All connected at once; now every one asks, and every one is answered.
        for sock in socks:
            handshake(sock)
            sock.sendall(SEED)
        answered = 0
        with selectors.DefaultSelector() as selector:
            decoders = {}
            for sock in socks:
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ)
                decoders[sock] = Decoder()
            deadline = time.monotonic() + 30
            while answered < count and time.monotonic() < deadline:
                for key, _ in selector.select(1):
                    data = key.fileobj.recv(4096)
                    assert data, "a connection was closed"
                    for message in decoders[key.fileobj].feed(data):
                        assert message[0] == (b"status", b"0")
                        answered += 1
                    selector.unregister(key.fileobj)
        assert answered == count
    finally:
        for sock in socks:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert healthy(daemon)


def test_past_the_connection_limit_the_longest_idle_is_closed(tmp_path):
    daemon = start_ours(tmp_path, data_directory=tmp_path, tlsmgr_connection_limit="20")
    idle = []
    try:
        for _ in range(20):
            idle.append(connect(daemon.socket_path))
            handshake(idle[-1])
        # Five more clients arrive and stay: each is served, and room is
        # made for it by closing the connection idle longest.
        for _ in range(5):
            idle.append(connect(daemon.socket_path))
            handshake(idle[-1])
            assert request(idle[-1], SEED)[0] == (b"status", b"0")
        assert [closed_by_server(sock, 5) for sock in idle[:5]] == [True] * 5
        assert not any(closed_by_server(sock, 0.1) for sock in idle[5:])
        assert "connection limit 20 reached (tlsmgr_connection_limit)" in daemon.log
        assert daemon.log.count("connection limit 20 reached") == 1   # rate-limited
    finally:
        for sock in idle:
            sock.close()
        daemon.stop()


def test_stalled_and_dribbling_clients_are_closed_and_delay_no_one(tmp_path):
    daemon = start_ours(tmp_path, data_directory=tmp_path, ipc_timeout="2s")
    stalled, dribbler = connect(daemon.socket_path), connect(daemon.socket_path)
    stop = threading.Event()

    def dribble():
        # Never idle, never done: one byte of an endless name every 0.2 s.
        try:
            while not stop.wait(0.2):
                dribbler.send(b"x")
        except OSError:
            pass

    try:
        stalled.sendall(b"request\0upd")            # half a request, then nothing
        dribbling = threading.Thread(target=dribble)
        dribbling.start()
        # Meanwhile another client is served as usual.
        with connect(daemon.socket_path) as client:
            handshake(client)
            for _ in range(20):
                assert request(client, SEED)[0] == (b"status", b"0")
        assert closed_by_server(stalled, 10)
        assert closed_by_server(dribbler, 10)
        stop.set()
        dribbling.join(5)
        wait_for(lambda: daemon.log.count("request not complete after 2 seconds "
                                          "(ipc_timeout) -- closing connection") == 2,
                 what="two warnings naming the timeout")
        assert "client pid %d uid %d" % (os.getpid(), os.geteuid()) in daemon.log
    finally:
        stop.set()
        stalled.close()
        dribbler.close()
        daemon.stop()


def test_a_64_mib_message_is_refused_and_memory_stays_at_baseline(daemon):
    pid = daemon.process.pid
    for _ in range(3):
        assert healthy(daemon)
    before = process_memory(pid)
    with connect(daemon.socket_path) as sock:
        handshake(sock)
        sent = send_oversized_request(sock, 64 * MiB)
        assert closed_by_server(sock, 10)
    assert sent < 64 * MiB, "the daemon read all of a 64 MiB message"
    wait_for(lambda: "request exceeds tlsmgr_request_size_limit (65536 bytes)"
                     in daemon.log, what="the warning")
    assert "client pid %d" % os.getpid() in daemon.log
    assert healthy(daemon)
    after = process_memory(pid)
    # Never more than a read buffer or two above what it used before.
    assert after["VmHWM"] - before["VmHWM"] < 8 * MiB
    assert after["VmRSS"] - before["VmRSS"] < 4 * MiB


def test_a_client_that_never_reads_its_replies_costs_bounded_memory(daemon):
    pid = daemon.process.pid
    assert healthy(daemon)
    before = process_memory(pid)
    flood = SEED * (MiB // len(SEED))
    sent = 0
    with connect(daemon.socket_path) as sock:
        sock.settimeout(2)
        try:
            while sent < 64 * MiB:                # stops when the daemon stops reading
                sent += sock.send(flood)
        except TimeoutError:
            pass
        # Replies pile up in the socket buffers, not in the daemon; others
        # are answered meanwhile.
        assert sent < 64 * MiB
        assert healthy(daemon)
        grown = process_memory(pid)["VmHWM"] - before["VmHWM"]
    assert grown < 16 * MiB
    assert healthy(daemon)


def test_sigkill_under_a_write_storm_then_a_clean_restart(tmp_path):
    params = dict(data_directory=tmp_path,
                  smtpd_tls_session_cache_database="lmdb:%s/smtpd_scache" % tmp_path,
                  smtp_tls_session_cache_database="btree:%s/smtp_scache" % tmp_path)
    exchange = tmp_path / "prng_exch"
    expected_files = {"prng_exch", "smtpd_scache.lmdb", "smtpd_scache.lmdb-lock",
                      "smtp_scache.lmdb", "smtp_scache.lmdb-lock"}
    for round_ in range(3):
        daemon = start_ours(tmp_path, **params)
        kill_during_write_storm(daemon, "id-%d" % round_)
        assert exchange.stat().st_size == 1024
        assert {p.name for p in tmp_path.iterdir() if p.is_file()} <= \
            expected_files | {"tlsmgr.log", "tlsmgr.sock"}

        again = start_ours(tmp_path, **params)
        try:
            with TlsmgrClient(str(again.socket_path)) as client:
                # It starts clean, as the stock daemon does: an empty cache
                # (a miss is status -1).
                assert client.lookup("smtpd", "id-%d-0-1" % round_)[0] == -1
                assert client.update("smtpd", "after", b"restart") == 0
                assert client.lookup("smtpd", "after") == (0, b"restart")
            assert exchange.stat().st_size == 1024
            assert "Traceback" not in again.log
        finally:
            again.stop()
        assert exchange.stat().st_size == 1024


def bad_exchange_directory(tmp_path):
    (tmp_path / "prng_exch").mkdir()
    return "fatal: cannot open PRNG exchange file %s/prng_exch: Is a directory" % tmp_path


def bad_exchange_garbage(tmp_path):
    (tmp_path / "prng_exch").write_bytes(b"\xff" * 7)
    return None


def bad_exchange_huge(tmp_path):
    (tmp_path / "prng_exch").write_bytes(os.urandom(10 * 1024))
    return None


def bad_cache_garbage(tmp_path):
    (tmp_path / "smtpd_scache.lmdb").write_bytes(os.urandom(8192))
    (tmp_path / "smtpd_scache.lmdb-lock").write_bytes(b"\0" * 100)
    return None


def bad_cache_directory(tmp_path):
    (tmp_path / "smtpd_scache.lmdb").mkdir()
    return "warning: lmdb:%s/smtpd_scache is unavailable. cannot remove old cache file " \
           "%s/smtpd_scache.lmdb: Is a directory: the smtpd TLS session cache is off " \
           "(fix smtpd_tls_session_cache_database)" % (tmp_path, tmp_path)


@pytest.mark.parametrize("make_bad", [
    bad_exchange_directory, bad_exchange_garbage, bad_exchange_huge,
    bad_cache_garbage, bad_cache_directory])
def test_a_damaged_file_is_repaired_or_its_cache_is_off(tmp_path, make_bad):
    # What cannot be repaired turns its cache off with one warning, as in
    # the stock daemon: smtpd goes on, without resuming sessions.  Only
    # the PRNG exchange file is fatal, as it is there.
    warning = make_bad(tmp_path)
    started = start_ours(tmp_path, wait=False, data_directory=tmp_path,
                         smtpd_tls_session_cache_database="lmdb:%s/smtpd_scache" % tmp_path)
    try:
        if warning is not None and "fatal:" in warning:
            # As in the stock daemon, which cannot do without it.
            assert started.process.wait(20) == 1
            assert started.log.strip().endswith(warning), started.log
            return
        wait_for(started.connectable, what="tlsmgr to listen")
        assert healthy(started)
        with TlsmgrClient(str(started.socket_path)) as client:
            if warning is None:
                assert client.update("smtpd", "id", b"s") == 0
                assert client.lookup("smtpd", "id") == (0, b"s")
            else:
                assert client.policy("smtpd") == (0, 0, 3600)       # not cachable
                assert client.tktkey()[0] == 0                     # tickets still
        started.stop()
        assert (tmp_path / "prng_exch").stat().st_size == 1024
        lines = [line for line in started.log.splitlines() if "warning:" in line]
        if warning is not None:
            assert len(lines) == 1 and lines[0].endswith(warning), started.log
        assert "Traceback" not in started.log and "fatal:" not in started.log
    finally:
        started.stop()


@pytest.mark.parametrize("table, problem", [
    ("btree:/nonexistent-dir/smtpd_scache", "No such file or directory"),
    ("lmdb:/nonexistent-dir/smtpd_scache", "No such file or directory"),
    ("cdb:/var/lib/postfix/smtpd_scache", "unsupported dictionary type: cdb"),
])
def test_an_unusable_cache_is_off_with_one_warning(tmp_path, table, problem):
    # As in the stock daemon: a warning, and smtpd goes on without it.
    started = start_ours(tmp_path, data_directory=tmp_path,
                         smtpd_tls_session_cache_database=table,
                         smtp_tls_session_cache_database="memory:")
    try:
        with TlsmgrClient(str(started.socket_path)) as client:
            assert client.policy("smtpd") == (0, 0, 3600)
            assert client.lookup("smtpd", "id")[0] == -2             # as a cache that is off
            assert client.tktkey()[0] == 0
            assert client.update("smtp", "id", b"s") == 0           # the others serve
    finally:
        assert started.stop() == 0
    [line] = [line for line in started.log.splitlines() if line.strip()]
    assert line.startswith("tlsmgr: warning: %s is unavailable. " % table), line
    assert problem in line and "the smtpd TLS session cache is off" in line, line


@pytest.mark.parametrize("text", [
    b"\x00\x9f\xff garbage \x80\n", b"=\n", b"\xff\xfe\x00\n", b"ipc_timeout = \xff\n"])
def test_a_damaged_main_cf_is_one_fatal_line(tmp_path, text):
    started = start_ours(tmp_path, wait=False, main_cf=text)
    try:
        assert started.process.wait(20) == 1
        lines = [line for line in started.log.splitlines() if "fatal:" in line]
        assert len(lines) == 1, started.log
        assert "main.cf, line 1" in lines[0] or "ipc_timeout" in lines[0]
        assert "Traceback" not in started.log
    finally:
        started.stop()                  # should it have started after all


def test_unfinished_requests_are_bounded_in_total(tmp_path):
    daemon = start_ours(tmp_path, data_directory=tmp_path,
                        tlsmgr_client_buffer_limit="200000")
    stalled = []
    try:
        # Four clients each leave 60 KB of a request unfinished: the fourth
        # goes over 200000 bytes in all, and the oldest is closed for it.
        for _ in range(4):
            sock = connect(daemon.socket_path)
            handshake(sock)
            sock.sendall(b"request\0update\0session\0" + b"A" * 60000)
            stalled.append(sock)
            time.sleep(0.05)
        assert closed_by_server(stalled[0], 5)
        assert not any(closed_by_server(sock, 0.1) for sock in stalled[1:])
        wait_for(lambda: "over tlsmgr_client_buffer_limit (200000): closing the connection "
                         "of client pid %d" % os.getpid() in daemon.log, what="the warning")
        assert "which has held 60" in daemon.log
        assert healthy(daemon)
    finally:
        for sock in stalled:
            sock.close()
        daemon.stop()


def test_a_flood_of_bad_requests_neither_floods_the_log_nor_holds_others_up(daemon):
    with connect(daemon.socket_path) as flooder, connect(daemon.socket_path) as client:
        handshake(flooder)
        handshake(client)
        flooder.sendall(b"\0" * 65536)           # 65536 empty requests
        for _ in range(5):
            assert request(client, SEED)[0] == (b"status", b"0")
        replies, decoder = [], Decoder()
        while len(replies) < 65536:
            replies += decoder.feed(flooder.recv(1 << 20))
        assert set(replies) == {((b"status", b"4294967294"),)}
        # A while later, the next warning says how many were suppressed.
        time.sleep(0.2)
        assert request(flooder, b"bogus\0\0\0")[0] == (b"status", b"4294967294")
    assert healthy(daemon)
    warnings = daemon.log.count("missing attribute request in input from")
    assert 100 <= warnings < 1000
    assert "more like it in the last" in daemon.log


def test_replies_a_client_does_not_read_count_against_the_buffer_limit(tmp_path):
    daemon = start_ours(tmp_path, data_directory=tmp_path, tlsmgr_client_buffer_limit="65536",
                        smtpd_tls_session_cache_database="memory:")
    try:
        with TlsmgrClient(str(daemon.socket_path)) as client:
            assert client.update("smtpd", "big", os.urandom(40000)) == 0
        lookup = encode([("request", "lookup"), ("cache_type", "smtpd"), ("cache_id", "big")])
        with connect(daemon.socket_path) as greedy:
            greedy.settimeout(1)
            try:
                for _ in range(2000):             # 100 MB of replies, never read
                    greedy.sendall(lookup)
            except (TimeoutError, BrokenPipeError, ConnectionResetError):
                pass
            assert closed_by_server(greedy, 10)
        wait_for(lambda: "over tlsmgr_client_buffer_limit (65536)" in daemon.log,
                 what="the warning")
        assert healthy(daemon)
    finally:
        daemon.stop()
