"""Operating the daemon: stats, flush, rotate-keys, list, the refusal of
unprivileged peers, and the Prometheus metrics, against a running daemon
whose counters were driven by real requests."""

import asyncio
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import require
from helpers.harness import free_tcp_port, postfix_dirs, start_ours, wait_for
from prometheus_client.parser import text_string_to_metric_families

from tlsmgr.admin.client import ClientError, TlsmgrClient
from tlsmgr.admin.ctl import main as ctl_main
from tlsmgr.admin.ctl import read_snapshot, stats_text
from tlsmgr.observe.histogram import Histogram
from tlsmgr.observe.snapshot import Health, Snapshot
from tlsmgr.observe.stats import Stats
from tlsmgr.runtime import metrics
from tlsmgr.runtime.metrics import parse_listen
from tlsmgr.service import fastpath
from tlsmgr.service.control import Sources, snapshot
from tlsmgr.service.handlers import ClientRequests
from tlsmgr.service.prng import Prng
from tlsmgr.service.protocol import Scanner
from tlsmgr.service.scache import SessionCache
from tlsmgr.service.tickets import FleetTicketKeys, TicketKeyRing
from tlsmgr.stores.memory import MemoryStore
from tlsmgr.util.pending import Later, then
from tlsmgr.wire.attr import Decoder, encode

CTL = [sys.executable, "-m", "tlsmgr.admin.ctl"]


@pytest.fixture
def daemon(tmp_path):
    started = start_ours(tmp_path, data_directory=tmp_path,
                         smtpd_tls_session_cache_database="memory:",
                         smtp_tls_session_cache_database="lmdb:%s/smtp_scache" % tmp_path,
                         tlsmgr_metrics_listen=str(free_tcp_port()))
    yield started
    started.stop()


def ctl(daemon, *args) -> subprocess.CompletedProcess:
    return subprocess.run([*CTL, "--socket", str(daemon.socket_path), *args],
                          capture_output=True, text=True, timeout=30)


def drive(daemon):
    """2 updates, 3 hits, 2 misses, 1 delete, 2 seeds, 1 ticket key, and
    one malformed request, on the smtpd cache."""
    with TlsmgrClient(str(daemon.socket_path)) as client:
        assert client.update("smtpd", "one", b"first session") == 0
        assert client.update("smtpd", "two", b"second session") == 0
        for cache_id in ("one", "two", "one"):
            assert client.lookup("smtpd", cache_id)[0] == 0
        for cache_id in ("three", "four"):
            assert client.lookup("smtpd", cache_id)[0] == -1
        assert client.delete("smtpd", "two") == 0
        assert client.seed(16)[0] == 0
        assert client.seed(32)[0] == 0
        assert client.tktkey()[0] == 0
        assert client.request(("request", "seed"), ("size", "many")).status == -2


def test_stats_counts_exactly_what_clients_did(daemon):
    drive(daemon)
    result = ctl(daemon, "stats", "--json")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["caches"]["smtpd"] == {
        "entries": 1, "bytes": len("one") + len("first session"), "hits": 3, "misses": 2,
        "updates": 2, "deletes": 1, "expired": 0, "evicted": 0, "unopened": 0,
        "hit_ratio": 0.6}
    assert stats["caches"]["smtp"]["entries"] == 0
    assert "lmtp" not in stats["caches"]                      # disabled
    assert stats["requests"] == {"delete": 1, "lookup": 5, "seed": 3, "stats": 1,
                                 "tktkey": 1, "update": 2}
    assert stats["errors"] == {"protocol": 1}
    assert stats["ticket_keys"]["count"] == 1
    assert stats["ticket_keys"]["rotations"] == 1
    assert 0 <= stats["ticket_keys"]["current_age"] < 30
    assert stats["prng"]["reseeds"] >= 1 and stats["prng"]["exchange_updates"] >= 1
    # This ctl connection is open; the harness's check that the daemon
    # answers and drive()'s came before.
    assert stats["connections"]["now"] == 1
    assert stats["connections"]["total"] == 3
    assert 0 < stats["uptime"] < 120


def test_stats_reads_well(daemon):
    drive(daemon)
    out = ctl(daemon, "stats").stdout
    assert "smtpd cache: 1 entries, 16 bytes; 3 hits, 2 misses (hit ratio 0.60); " \
           "2 updates, 1 deletes; 0 expired, 0 evicted" in out
    assert "requests: delete 1, lookup 5, seed 3, stats 1, tktkey 1, update 2" in out
    assert "errors: protocol 1" in out
    # Which path answers the common requests: the compiled one where built.
    assert "fast path: %s" % ("compiled" if fastpath.COMPILED else "pure") in out


def test_list_shows_ids_and_ages_never_sessions_and_flush_empties(daemon):
    drive(daemon)
    with TlsmgrClient(str(daemon.socket_path)) as client:
        assert client.update("smtp", "smtp&example.org&host", b"secret bytes") == 0
    listed = ctl(daemon, "list", "smtp")
    assert listed.returncode == 0
    [line] = listed.stdout.splitlines()
    age, cache_id = line.split(" ", 1)
    assert cache_id == "smtp&example.org&host" and 0 <= int(age) < 30
    assert "secret" not in listed.stdout
    entries = json.loads(ctl(daemon, "list", "smtpd", "--json").stdout)
    assert [entry["id"] for entry in entries] == ["one"]
    assert ctl(daemon, "list", "smtpd", "--limit", "0").stdout == ""

    flushed = ctl(daemon, "flush", "smtp")
    assert (flushed.returncode, flushed.stdout) == (0, "status=0 removed=1\n")
    assert ctl(daemon, "list", "smtp").stdout == ""
    with TlsmgrClient(str(daemon.socket_path)) as client:
        assert client.lookup("smtp", "smtp&example.org&host")[0] == -1
        assert client.flush("smtpd") == (0, 1)
        assert client.lookup("smtpd", "one")[0] == -1
        assert client.flush("lmtp") == (-1, 0)                # disabled
        assert client.flush("nosuch")[0] == -2
    assert "smtp TLS session cache flushed: removed 1 entries" in daemon.log


def test_a_long_list_is_asked_for_a_page_at_a_time(daemon):
    # One request lists at most 250 (a few ms of the daemon's loop);
    # tlsmgr-ctl asks for as many pages as --limit needs.
    with TlsmgrClient(str(daemon.socket_path)) as client:
        for i in range(1300):
            assert client.update("smtp", "id%04d" % i, b"s") == 0
        reply = client.request(("request", "list"), ("cache_type", "smtp"), ("limit", 10000))
        assert reply.status == 0 and len(reply.json("list")) == 250
    listed = ctl(daemon, "list", "smtp", "--limit", "1200")
    assert listed.returncode == 0
    assert [line.split()[1] for line in listed.stdout.splitlines()] == [
        "id%04d" % i for i in range(1200)]
    everything = json.loads(ctl(daemon, "list", "smtp", "--limit", "5000", "--json").stdout)
    assert len(everything) == 1300


def test_rotate_keys_makes_a_new_key_and_the_old_one_still_decrypts(daemon):
    with TlsmgrClient(str(daemon.socket_path)) as client:
        status, old = client.tktkey()
        assert status == 0
        rotated = ctl(daemon, "rotate-keys")
        assert rotated.returncode == 0
        printed = re.fullmatch(r"status=0 keyname=([0-9a-f]{32})\n", rotated.stdout)
        assert printed, rotated.stdout
        name = printed[1]
        assert name != old.name.hex()
        # The name printed is the key that now issues tickets.
        assert re.match(r"status=0 name=%s " % name, ctl(daemon, "tktkey").stdout)
        status, new = client.tktkey()
        assert status == 0 and new.name.hex() == name
        assert client.tktkey(old.name) == (0, old)              # still decrypts
        stats = client.stats()[1]
    assert stats["ticket_keys"]["rotations"] == 2
    assert stats["ticket_keys"]["count"] == 2


def test_control_requests_are_refused_to_other_users(daemon):
    require(os.geteuid() == 0, "root, to be another user (run the tests as root)")
    nobody = pwd.getpwnam("nobody")
    postfix_dirs(daemon.socket_path.parent)         # let nobody reach the socket
    os.chmod(daemon.socket_path, 0o666)            # and connect at all
    replies = {}
    for request in ("stats", "rotate_keys", "seed"):
        message = [("request", request)] + ([("size", 8)] if request == "seed" else [])
        replies[request] = as_user(nobody.pw_uid, nobody.pw_gid, daemon.socket_path,
                                   encode(message))
    assert replies["stats"] == ((b"status", b"4294967294"),)
    assert replies["rotate_keys"] == ((b"status", b"4294967294"),)
    assert replies["seed"][0] == (b"status", b"0")          # Postfix's requests are served
    wait_for(lambda: 'refusing control request "stats" from client pid' in daemon.log,
             what="the refusal warning")
    assert "uid %d: only root, mail_owner and the daemon's own user" % nobody.pw_uid \
        in daemon.log
    with TlsmgrClient(str(daemon.socket_path)) as client:  # root is served
        stats = client.stats()[1]
    assert stats["errors"]["refused"] == 2
    assert stats["ticket_keys"]["rotations"] == 0


def test_a_user_who_may_not_open_the_socket_is_told_who_may(tmp_path):
    require(os.geteuid() == 0, "root, to be another user (run the tests as root)")
    # A mail_owner other than the default, so that only main.cf can name it.
    dirs = postfix_dirs(tmp_path)
    shutil.chown(dirs["data_directory"], "mail", "mail")
    daemon = start_ours(tmp_path, mail_owner="mail", data_directory=dirs["data_directory"],
                        queue_directory=tmp_path)
    # Where tlsmgr-ctl looks by default: $queue_directory/private/tlsmgr.
    assert daemon.socket_path == tmp_path / "private" / "tlsmgr"
    conf = str(tmp_path / "conf")
    refused = "tlsmgr-ctl: error: connect to %s: Permission denied: run tlsmgr-ctl as root " \
              "or as the mail_owner" % daemon.socket_path
    assert ctl_as_nobody(conf, "stats") == (2, "", refused + " (mail)\n")
    # With --socket no main.cf is read: Postfix's default mail_owner.
    assert ctl_as_nobody(conf, "--socket", str(daemon.socket_path), "rotate-keys") \
        == (2, "", refused + " (postfix)\n")


def ctl_as_nobody(mail_config: str, *args: str) -> tuple[int, str, str]:
    """tlsmgr-ctl's exit status, standard output and error, run as nobody
    in a child forked from here (not executed: nobody may not reach the
    interpreter, under root's home, say)."""
    nobody = pwd.getpwnam("nobody")
    (out, out_end), (err, err_end) = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:                                    # the child: no pytest here
        status = 127
        try:
            os.close(out)
            os.close(err)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            os.environ["MAIL_CONFIG"] = mail_config
            sys.stdout, sys.stderr = open(out_end, "w"), open(err_end, "w")
            status = ctl_main(list(args))
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException as problem:
            os.write(err_end, repr(problem).encode())
        finally:
            os._exit(status)
    os.close(out_end)
    os.close(err_end)
    with open(out) as stdout, open(err) as stderr:
        printed = stdout.read(), stderr.read()
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), *printed


def as_user(uid: int, gid: int, path, request: bytes):
    """Send one request from a child process running as uid; its reply."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:                                    # the child: no pytest here
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(10)
            sock.connect(str(path))
            received = b""
            sock.sendall(request)
            while len(Decoder().feed(received)) < 2:    # the handshake, then the reply
                data = sock.recv(4096)
                if not data:
                    break
                received += data
            os.write(write_end, received)
        except BaseException as err:
            os.write(write_end, repr(err).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reply:
        data = reply.read()
    os.waitpid(pid, 0)
    messages = Decoder().feed(data)
    assert len(messages) == 2, "the child running as uid %d failed: %s" % (uid, data.decode())
    return messages[1]


def test_metrics_say_what_stats_says(daemon):
    drive(daemon)
    port = int(parse_listen(daemon_param(daemon, "tlsmgr_metrics_listen"))[1])
    wait_for(lambda: "serving metrics at http://127.0.0.1:%d/metrics" % port in daemon.log,
             what="the metrics server")
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as response:
        text = response.read().decode()
    samples = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
               for family in text_string_to_metric_families(text)
               for sample in family.samples}
    smtpd = (("cache", "smtpd"),)
    assert samples["tlsmgr_cache_hits_total", smtpd] == 3
    assert samples["tlsmgr_cache_misses_total", smtpd] == 2
    assert samples["tlsmgr_cache_updates_total", smtpd] == 2
    assert samples["tlsmgr_cache_deletes_total", smtpd] == 1
    assert samples["tlsmgr_cache_entries", smtpd] == 1
    assert samples["tlsmgr_requests_total", (("request", "lookup"),)] == 5
    assert samples["tlsmgr_errors_total", (("kind", "protocol"),)] == 1
    assert samples["tlsmgr_ticket_keys", ()] == 1
    assert samples["tlsmgr_connections", ()] == 0
    assert samples["tlsmgr_connections_accepted_total", ()] == 2   # start-up check, drive()


def daemon_param(daemon, name: str) -> str:
    conf = (daemon.socket_path.parent / "conf" / "main.cf").read_text()
    return next(line.split("=", 1)[1].strip() for line in conf.splitlines()
                if line.startswith(name + " "))


@pytest.mark.parametrize("value,where", [
    ("9187", ("127.0.0.1", 9187)), ("0.0.0.0:80", ("0.0.0.0", 80)),
    ("localhost:9187", ("localhost", 9187)), ("[::1]:9187", ("::1", 9187))])
def test_metrics_listen_forms_and_loopback_by_default(value, where):
    assert parse_listen(value) == where


def test_metrics_off_by_default_and_a_bad_value_is_one_warning(tmp_path):
    started = start_ours(tmp_path, data_directory=tmp_path)
    try:
        assert "metrics" not in started.log
    finally:
        started.stop()
    bad = start_ours(tmp_path / "bad", data_directory=tmp_path, tlsmgr_metrics_listen="host:port")
    try:
        with TlsmgrClient(str(bad.socket_path)) as client:
            assert client.seed(8)[0] == 0
        assert "warning: parameter tlsmgr_metrics_listen: bad value: host:port (expected " \
               "PORT, HOST:PORT or [IPv6]:PORT): metrics are not served" in bad.log
        assert "Traceback" not in bad.log
    finally:
        assert bad.stop() == 0


def test_a_metrics_port_already_taken_is_a_warning(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        started = start_ours(tmp_path, data_directory=tmp_path, tlsmgr_metrics_listen=port)
        with TlsmgrClient(str(started.socket_path)) as client:
            assert client.seed(8)[0] == 0
        assert started.stop() == 0
        assert ("warning: cannot serve metrics on 127.0.0.1 port %d: Address already in use: "
                "metrics are not served (choose another tlsmgr_metrics_listen)" % port
                ) in started.log
    finally:
        taken.close()


def sources_in_process(tmp_path, tickets=None) -> Sources:
    """What a snapshot reads, as a daemon with only the smtpd cache, in
    memory, has it; the ticket keys this host's ring unless given."""
    prng = Prng("", 32, str(tmp_path / "prng_exch"), 3600, 3600)
    cache = SessionCache("smtpd", MemoryStore(), 3600)
    stats = Stats()
    client = ClientRequests({"smtpd": cache, "smtp": None, "lmtp": None},
                            {"smtpd": 3600, "smtp": 3600, "lmtp": 3600}, prng.random_bytes,
                            tickets or TicketKeyRing(prng.random_bytes),
                            Scanner("tlsmgr socket", stats), stats)
    return Sources(client, stats, [cache], prng, set(),
                   "compiled" if fastpath.COMPILED else "pure")


def test_scrapes_at_once_share_one_snapshot_from_the_network_and_wait_a_bounded_time(
        tmp_path, monkeypatch):
    # With a store on the network the snapshot comes later: one for all
    # the scrapes that come meanwhile, each waiting for it at most
    # _SNAPSHOT_WITHIN (then told so: httpd.py answers 503).
    sources = sources_in_process(tmp_path)
    taken = []

    async def scenario():
        release = Later()

        def snapshot_from_afar(_):
            taken.append(1)
            return then(release, lambda _: snapshot(sources))

        monkeypatch.setattr(metrics, "snapshot", snapshot_from_afar)
        scrapes = metrics.Scrapes(sources)
        waited = await asyncio.gather(*(scrapes.page() for _ in range(3)),
                                      return_exceptions=True)
        shared = len(taken)
        release.settle(None)
        return waited, shared, await scrapes.page()

    monkeypatch.setattr(metrics, "_SNAPSHOT_WITHIN", 0.2)
    waited, shared, page = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert [str(err) for err in waited] == ["no snapshot within 0.2 seconds"] * 3
    assert all(isinstance(err, TimeoutError) for err in waited)
    assert shared == 1
    assert b'tlsmgr_cache_entries{cache="smtpd"} 0.0\n' in page


class FleetKeysOnRedis:
    """Where FleetTicketKeys finds the fleet's keys, as far as the stats
    look: how its Redis is doing, as Breaker.health() says it."""

    def __init__(self, paused: bool):
        self.paused = paused

    def health(self):
        return Health("redis://10.0.0.7:6379", self.paused,
                      round(time.time()) if self.paused else None,
                      "ConnectionError: Error 111 connecting to 10.0.0.7:6379. "
                      "Connection refused." if self.paused else "",
                      int(self.paused), 0, Histogram().snapshot())


@pytest.mark.parametrize("paused,whose,redis_state", [
    (False, "(shared by the fleet)", r"reachable \(redis://10\.0\.0\.7:6379\)"),
    (True, "(the fleet's, but Redis is paused: the last fleet key issues tickets for as long "
           "as it decrypts them, then this host's own, which decrypts only here)",
     r"PAUSED since \d\d:\d\d:\d\d: ConnectionError: Error 111 connecting to "
     r"10\.0\.0\.7:6379\. Connection refused\."),
], ids=["shared", "paused"])
def test_stats_text_says_whose_ticket_keys_issue_tickets(tmp_path, paused, whose, redis_state):
    # While Redis is paused the keys are not shared as they were: the
    # fleet's last key goes on while it decrypts (FleetTicketKeys), then
    # each host makes its own, whose tickets resume on that host alone.
    keys = FleetTicketKeys(FleetKeysOnRedis(paused), TicketKeyRing(os.urandom), os.urandom)
    text = stats_text(snapshot(sources_in_process(tmp_path, keys))).splitlines()
    assert "ticket keys: 0; 0 made or taken on " + whose in text
    # Why it is paused is on the tickets' Redis line.
    assert any(re.match("tickets on redis: %s;" % redis_state, line) for line in text), text


def test_the_stats_json_reads_back_as_the_snapshot_it_was(tmp_path):
    # One schema (snapshot.py) for the JSON the daemon sends and what
    # tlsmgr-ctl, its watch and the metrics read: what goes out comes back
    # the same, Redis health and latency buckets included; a "redis" only
    # where there is one.
    keys = FleetTicketKeys(FleetKeysOnRedis(True), TicketKeyRing(os.urandom), os.urandom)
    sources = sources_in_process(tmp_path, keys)
    sources.stats.known_requests([b"lookup"])
    sources.stats.latency[b"lookup"].observe(0.0003)
    taken = snapshot(sources)
    sent = json.loads(json.dumps(taken.to_json()))
    assert "redis" in sent["ticket_keys"] and "redis" not in sent["caches"]["smtpd"]
    assert sent["latency"]["lookup"]["count"] == 1
    assert Snapshot.from_json(sent) == taken
    with pytest.raises(ClientError, match="not as this tlsmgr-ctl reads them"):
        read_snapshot({**sent, "caches": {"smtpd": {"entries": 1}}})
