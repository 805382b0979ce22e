"""The fleet's state sealed in a real Redis (tlsmgr_fleet_secret_file):
a reader of Redis finds neither sessions nor key material; what a writer
swaps or alters is a miss; a host with another secret misses and says
why; a secret is rotated host by host with resumption working at every
step; a bad secret file is one fatal line."""

import base64
import os

import pytest
import redis
from conftest import require
from helpers.harness import start_ours, wait_for

from tlsmgr import config
from tlsmgr import daemon as tlsmgr_daemon
from tlsmgr.admin.client import TlsmgrClient
from tlsmgr.stores.seal import new_secret_line

pytestmark = pytest.mark.redis

SESSION = b"SESSION-MASTER-SECRET:" + os.urandom(24).hex().encode()


def secret_file(path, *lines):
    path.write_text("".join(line + "\n" for line in lines))
    os.chmod(path, 0o600)
    return path


class Fleet:
    """Hosts of one fleet on one Redis, each with its own secret file."""

    def __init__(self, tmp_path, redis_server):
        self.tmp_path, self.redis = tmp_path, redis_server
        self.prefix = "sealed%d:" % os.getpid()
        self.hosts = {}

    def start(self, name, *secrets):
        directory = self.tmp_path / name
        (directory / "data").mkdir(parents=True, exist_ok=True)
        table = "redis:" + self.redis.url
        params = dict(data_directory=directory / "data", smtpd_tls_session_cache_database=table,
                      smtp_tls_session_cache_database=table, tlsmgr_redis_key_prefix=self.prefix)
        if secrets:
            params["tlsmgr_fleet_secret_file"] = secret_file(directory / "fleet.secret", *secrets)
        if name in self.hosts:
            self.hosts[name].stop()              # "postfix reload": a new process
        self.hosts[name] = start_ours(directory, **params)
        return self.hosts[name]

    def client(self, name):
        return TlsmgrClient(str(self.hosts[name].socket_path))

    def raw(self):
        """Every key in Redis and everything in its values, as bytes."""
        client = self.redis.client()
        found = []
        for key in client.scan_iter():
            found.append(key)
            kind = client.type(key)
            if kind == b"string":
                found.append(client.get(key))
            elif kind == b"hash":
                found.extend(b"%s=%s" % item for item in client.hgetall(key).items())
            elif kind == b"zset":
                found.extend(client.zrange(key, 0, -1))
            else:
                raise AssertionError("a %s in Redis" % kind.decode())
        return found

    def session_key(self, cache, cache_id):
        return ("{%s%s}:s:%s" % (self.prefix, cache, cache_id)).encode()

    def stop(self):
        for daemon in self.hosts.values():
            daemon.stop()


@pytest.fixture
def fleet(tmp_path, redis_server):
    fleet = Fleet(tmp_path, redis_server)
    yield fleet
    fleet.stop()


def stats(client):
    status, found = client.stats()
    assert status == 0
    return found


def test_a_reader_of_redis_finds_no_session_and_no_key_material(fleet):
    fleet.start("a", new_secret_line())
    with fleet.client("a") as a:
        assert a.update("smtpd", "sess1", SESSION) == 0
        assert a.update("smtp", "[mx.example]:25", SESSION + b"-smtp") == 0
        status, key = a.tktkey()
        assert status == 0
        assert a.lookup("smtpd", "sess1") == (0, SESSION)          # and it still works
    raw = fleet.raw()
    assert any(fleet.session_key("smtpd", "sess1") == item for item in raw)
    for secret in (SESSION, SESSION[:16], key.cipher_key, key.hmac_key,
                   key.cipher_key[:8], key.hmac_key[:8]):
        assert not any(secret in item for item in raw), secret


def test_unsealed_the_same_scan_finds_them(fleet):
    # The default, documented as unprotected: what the test above guards against.
    fleet.start("a")
    with fleet.client("a") as a:
        assert a.update("smtpd", "sess1", SESSION) == 0
        _, key = a.tktkey()
    raw = fleet.raw()
    assert any(SESSION in item for item in raw)
    assert any(key.cipher_key in item for item in raw)


def test_swapped_and_altered_entries_miss_are_counted_and_warned_about(fleet):
    daemon = fleet.start("a", new_secret_line())
    redis = fleet.redis.client()
    with fleet.client("a") as a:
        assert a.update("smtpd", "one", SESSION + b"-1") == 0
        assert a.update("smtpd", "two", SESSION + b"-2") == 0
        assert a.update("smtp", "one", SESSION + b"-3") == 0
        one, two = fleet.session_key("smtpd", "one"), fleet.session_key("smtpd", "two")
        first, second = redis.get(one), redis.get(two)
        redis.set(one, second)                    # swapped between ids
        redis.set(two, first)
        assert a.lookup("smtpd", "one") == (-1, b"")
        assert a.lookup("smtpd", "two") == (-1, b"")
        redis.set(fleet.session_key("smtp", "one"), first)   # moved to another cache
        assert a.lookup("smtp", "one") == (-1, b"")
        altered = bytearray(first)
        altered[-20] ^= 0x40                      # a bit of the sealed session
        redis.set(one, bytes(altered))
        assert a.lookup("smtpd", "one") == (-1, b"")
        redis.set(one, b"\0" * 8 + b"planted session")       # as an unsealed host writes
        assert a.lookup("smtpd", "one") == (-1, b"")
        counts = stats(a)["caches"]
    assert counts["smtpd"]["unopened"] == 4 and counts["smtpd"]["misses"] == 4
    assert counts["smtp"]["unopened"] == 1
    # One warning per cache: a writer to Redis may cause them at will.
    warnings = [line for line in daemon.log.splitlines() if "treated as a miss" in line]
    assert len(warnings) == 2
    assert "smtpd TLS session cache: the entry in Redis {%ssmtpd}:s:one does not " \
           "authenticate: altered, or moved from another place -- treated as a miss" \
           % fleet.prefix in warnings[0]
    assert "smtp TLS session cache: the entry in Redis {%ssmtp}:s:one" % fleet.prefix \
        in warnings[1]
    assert SESSION.decode() not in daemon.log


def test_planted_ticket_keys_are_not_used(fleet):
    daemon = fleet.start("a", new_secret_line())
    redis = fleet.redis.client()
    with fleet.client("a") as a:
        _, key = a.tktkey()
        name_key = ("{%stickets}:name:" % fleet.prefix).encode() + key.name
        planted = b"P" * 16 + os.urandom(72)
        redis.set(("{%stickets}:name:" % fleet.prefix).encode() + b"P" * 16, planted)
        assert a.tktkey(b"P" * 16) == (-1, None)           # a name unknown to this host
        redis.set(name_key, redis.get(name_key)[:-1] + b"\0")
        assert a.tktkey(key.name) == (0, key)              # still in memory, never asked
        found = stats(a)["ticket_keys"]
    assert found["unopened"] == 1
    assert "TLS session ticket keys: the ticket key in Redis {%stickets}:name:PPPP" \
           % fleet.prefix in daemon.log


def test_a_host_with_another_secret_misses_and_logs_why(fleet):
    fleet.start("a", new_secret_line())
    other = fleet.start("b", new_secret_line())
    with fleet.client("a") as a, fleet.client("b") as b:
        assert a.update("smtpd", "sess1", SESSION) == 0
        assert b.lookup("smtpd", "sess1") == (-1, b"")
        _, key_a = a.tktkey()
        status, key_b = b.tktkey()
        assert status == 0 and key_b != key_a          # its own key, not a's
        assert stats(b)["caches"]["smtpd"]["unopened"] == 1
    assert "sealed with a fleet secret this host does not have (id " in other.log
    assert "TLS session ticket keys: the ticket key in Redis" in other.log


def agree(fleet, step):
    """Both hosts resume what the other made: sessions both ways, and one
    ticket key that each finds by name."""
    with fleet.client("a") as a, fleet.client("b") as b:
        for writer, reader, name in ((a, b, "a"), (b, a, "b")):
            cache_id = "%s-%s" % (step, name)
            assert writer.update("smtpd", cache_id, SESSION) == 0
            assert reader.lookup("smtpd", cache_id) == (0, SESSION), (step, name)
        status_a, key_a = a.tktkey()
        status_b, key_b = b.tktkey()
        assert status_a == status_b == 0 and key_a == key_b, step
        assert b.tktkey(key_a.name) == (0, key_a)


def test_a_secret_is_rotated_host_by_host_without_a_miss(fleet):
    old, new = new_secret_line(), new_secret_line()
    fleet.start("a", old)
    fleet.start("b", old)
    agree(fleet, "before")
    steps = [("a", (old, new)), ("b", (old, new)),       # 1. the new one second, everywhere
             ("a", (new, old)), ("b", (new, old)),       # 2. then first
             ("a", (new,)), ("b", (new,))]               # 3. after a cache timeout: the old goes
    for number, (name, secrets) in enumerate(steps):
        if number == 4:
            # The wait of one session cache timeout (docs/FLEET.md): what
            # the old secret sealed has expired from Redis (sessions, the
            # period's ticket key), and from memory (each host's current key).
            for host in ("a", "b"):
                with fleet.client(host) as client:
                    assert client.flush("smtpd")[0] == 0
            redis = fleet.redis.client()
            redis.delete(*redis.keys(("{%stickets}*" % fleet.prefix).encode()))
            fleet.start("b", new, old)
        fleet.start(name, *secrets)
        agree(fleet, "step%d" % number)
    for daemon in fleet.hosts.values():
        assert "treated as a miss" not in daemon.log


BAD_FILES = {
    "group-readable": (0o640, lambda: new_secret_line() + "\n",
                       "may be read or written by group or others (mode 0640); chmod 600 it"),
    "empty": (0o600, lambda: "", "holds no secret (make one with: tlsmgr-ctl fleet-secret)"),
    "not base64": (0o600, lambda: new_secret_line() + "\n" + "x" * 44 + "!\n",
                   "line 2 is not the base64 form of 32 bytes"),
    "short": (0o600, lambda: base64.b64encode(os.urandom(16)).decode() + "\n",
              "line 1 is not the base64 form of 32 bytes"),
    "missing": (None, None, "cannot open: No such file or directory"),
    "others'": (0o600, lambda: new_secret_line() + "\n", "is owned by uid 65534, not by root "
                "or mail_owner; chown root it"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_secret_file_turns_the_fleet_off_with_a_warning(tmp_path, redis_server, case):
    # Only this daemon reads the file: it is no reason to stop serving
    # smtpd.  The cache stays on this host, and nothing goes to Redis.
    mode, text, problem = BAD_FILES[case]
    path = tmp_path / "fleet.secret"
    if text is not None:
        path.write_text(text())
        os.chmod(path, mode)
    if case == "others'":
        require(os.geteuid() == 0, "root (to give the file to another user)")
        os.chown(path, 65534, 65534)
    prefix = "off%d:" % os.getpid()
    daemon = start_ours(tmp_path / "host", data_directory=tmp_path,
                        smtpd_tls_session_cache_database="redis:" + redis_server.url,
                        tlsmgr_redis_key_prefix=prefix, tlsmgr_fleet_secret_file=path)
    try:
        with TlsmgrClient(str(daemon.socket_path)) as client:
            assert client.update("smtpd", "id", b"a session") == 0
            assert client.lookup("smtpd", "id") == (0, b"a session")
            assert client.tktkey()[0] == 0
        wait_for(lambda: "the fleet is off" in daemon.log, what="the warning")
    finally:
        assert daemon.stop() == 0
    [line] = [line for line in daemon.log.splitlines() if line.strip()]
    assert line.startswith("tlsmgr: warning: tlsmgr_fleet_secret_file %s: %s" % (path, problem))
    assert line.endswith("; the fleet is off: the smtpd TLS session cache is in memory on this "
                         'host, and nothing is written to Redis (fix the file, then "postfix '
                         'reload")'), line
    assert redis.Redis(unix_socket_path=str(redis_server.socket_path)).keys("*%s*" % prefix) == []


def test_while_the_fleet_is_off_it_is_said_every_minute(tmp_path, caplog):
    (tmp_path / "main.cf").write_text("smtpd_tls_session_cache_database = redis:unix:///r\n"
                                      "smtp_tls_session_cache_database = redis:unix:///r\n")
    cfg = config.load(str(tmp_path), environ={})
    secrets = tlsmgr_daemon.Secrets(None, "", fleet_off="tlsmgr_fleet_secret_file /f: too open")
    [warn] = tlsmgr_daemon.fleet_off_task(secrets, {"smtpd": object(), "smtp": object(),
                                             "lmtp": None}, cfg)
    assert [warn(), warn()] == [60.0, 60.0]
    assert [record.getMessage() for record in caplog.records] == 2 * [
        "tlsmgr_fleet_secret_file /f: too open; the fleet is off: the smtpd and smtp TLS "
        "session caches are in memory on this host, and nothing is written to Redis (fix the "
        'file, then "postfix reload")']
    assert tlsmgr_daemon.fleet_off_task(tlsmgr_daemon.Secrets(None, ""), {}, cfg) == []
