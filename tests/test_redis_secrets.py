"""The Redis password stays private: it is shown nowhere (log lines,
tlsmgr-ctl stats, the metrics, tlsmgr --show-config), and it may be given
in a private file (tlsmgr_redis_password_file) with an ACL user name
(tlsmgr_redis_username) instead of in world-readable main.cf."""

import json
import logging
import os
import subprocess
import urllib.request
from urllib.parse import quote

import pytest
import redis
from conftest import require
from helpers.harness import (
    PYTHON,
    REDIS_NEEDED,
    free_tcp_port,
    redis_available,
    start_ours,
    wait_for,
)
from helpers.redis_servers import Cluster, Servers
from helpers.remote import Blocking
from hypothesis import given
from hypothesis import strategies as st

from tlsmgr import config
from tlsmgr.admin import install
from tlsmgr.admin.client import TlsmgrClient
from tlsmgr.stores import Entry, StoreError, pack_entry, redact_table
from tlsmgr.stores.redis import RedisSettings, RedisStore, Refused, parse_url
from tlsmgr.stores.redis_url import MASK, Credentials, redact_url, split_credentials
from tlsmgr.util import log
from tlsmgr.util.secretfile import SecretFileError, read_secret_line

PASSWORD = "pw-" + os.urandom(8).hex()        # nothing else holds this text


# --- redaction: every form of URL --------------------------------------------

@pytest.mark.parametrize("url, shown", [
    ("redis://:%s@10.0.0.1:6379/0" % PASSWORD, "redis://:****@10.0.0.1:6379/0"),
    ("redis://mx:%s@10.0.0.1/0" % PASSWORD, "redis://mx:****@10.0.0.1/0"),
    ("rediss://mx:%s@redis.example:6380/1" % PASSWORD, "rediss://mx:****@redis.example:6380/1"),
    ("redis://mx@10.0.0.1/0", "redis://mx@10.0.0.1/0"),                # a user name is kept
    ("redis+sentinel://:%s@s1:26379,s2/pool/2" % PASSWORD,
     "redis+sentinel://:****@s1:26379,s2/pool/2"),
    ("redis+cluster://mx:%s@n1:7000,n2:7001" % PASSWORD, "redis+cluster://mx:****@n1:7000,n2:7001"),
    ("unix://:%s@/run/redis.sock?db=0" % PASSWORD, "unix://:****@/run/redis.sock?db=0"),
    ("unix:///run/redis.sock?db=0&password=%s" % PASSWORD,
     "unix:///run/redis.sock?db=0&password=****"),
    ("redis://h/0?username=mx&password=%s&db=1" % PASSWORD,
     "redis://h/0?username=mx&password=****&db=1"),
    ("rediss://h/0?ssl_password=%s&ssl_keyfile=/k.pem" % PASSWORD,
     "rediss://h/0?ssl_password=****&ssl_keyfile=/k.pem"),
    ("redis://h/0?Pass%%77ord=%s" % PASSWORD, "redis://h/0?Pass%77ord=****"),   # encoded key
    ("redis://h/0?sentinel_password=%s" % PASSWORD, "redis://h/0?sentinel_password=****"),
    # A password that is also the host, or part of it, or the port.
    ("redis://:h@h:6379/0", "redis://:****@h:6379/0"),
    ("redis://:6379@redis6379:6379/0", "redis://:****@redis6379:6379/0"),
    # Characters that should have been percent-encoded: the whole is masked.
    ("redis://:ab/cd?ef#gh@h/0", "redis://:****@h/0"),
    ("redis://:a@b@h/0", "redis://:****@h/0"),
    ("unix:///s.sock?password=a#b@c", "unix:///s.sock?password=****"),
    # Not URLs at all, still never shown whole.
    ("foo:%s@h" % PASSWORD, "foo:****@h"),
    ("redis://[::1", "redis://[::1"),
    ("", ""),
])
def test_a_url_is_shown_without_its_secrets(url, shown):
    assert redact_url(url) == shown
    assert redact_url(shown) == shown


_TEXT = st.text(min_size=1, max_size=12)
_CREDENTIAL_KEYS = ("password", "ssl_password", "sentinel_password")


@st.composite
def urls(draw):
    """(a URL with percent-encoded credentials, the same shown, its user, its password)."""
    scheme = draw(st.sampled_from(["redis", "rediss", "unix"]))
    where = "/tmp/redis.sock" if scheme == "unix" else draw(
        st.sampled_from(["h", "127.0.0.1", "redis.example:6380", "[::1]:6379"])) + "/0"
    user = draw(st.text(max_size=8))
    password = draw(st.text(max_size=12))
    pairs = draw(st.lists(st.tuples(st.sampled_from(
        ["client_name", "username", *_CREDENTIAL_KEYS]), _TEXT), max_size=4))

    def url(password_text, value_of):
        userinfo = quote(user, safe="") + (":" + password_text if password else "")
        query = "&".join("%s=%s" % (key, value_of(key, quote(value, safe="")))
                         for key, value in pairs)
        return "%s://%s%s%s" % (scheme, userinfo + "@" if userinfo else "", where,
                                "?" + query if query else "")

    given_url = url(quote(password, safe=""), lambda key, value: value)
    shown = url(MASK, lambda key, value: MASK if key in _CREDENTIAL_KEYS else value)
    return given_url, shown, user, password


@given(urls())
def test_redaction_masks_exactly_the_secrets(case):
    url, shown, _user, _password = case
    assert redact_url(url) == shown


@given(urls())
def test_credentials_are_read_as_redis_py_reads_them(case):
    url, _shown, _user, _password = case
    address, credentials = split_credentials(url)
    theirs = redis.connection.parse_url(url)
    assert credentials == Credentials(theirs.pop("username", ""), theirs.pop("password", ""))
    assert redis.connection.parse_url(address) == theirs      # all else as it was


@given(st.text())
def test_any_text_is_redacted_without_error(text):
    assert redact_url(redact_url(text)) == redact_url(text)
    split_credentials(text)


def test_endpoint_names_and_errors_hide_the_password():
    endpoint = parse_url("redis+sentinel://mx:%s@s1,s2:26380/pool/1" % PASSWORD)
    assert endpoint.name == "redis+sentinel://mx:****@s1,s2:26380/pool/1"
    assert endpoint.credentials == Credentials("mx", PASSWORD)
    assert endpoint.nodes == (("s1", 26379), ("s2", 26380))
    with pytest.raises(StoreError) as bad:
        parse_url("redis+cluster://:%s@n1:port" % PASSWORD)
    assert PASSWORD not in str(bad.value) and "redis+cluster://:****@n1:port" in str(bad.value)


def test_only_redis_tables_are_redacted():
    assert redact_table("redis:redis://:%s@h/0" % PASSWORD) == "redis:redis://:****@h/0"
    assert redact_table("btree:/var/lib/postfix/a:b@c") == "btree:/var/lib/postfix/a:b@c"


# --- main.cf: --show-config and the messages about it ------------------------

def test_show_config_masks_every_password(tmp_path):
    (tmp_path / "main.cf").write_text(
        "tlsmgr_redis_password = %s\n"
        "tlsmgr_redis_username = mx\n"
        "smtpd_tls_session_cache_database = redis:redis://mx:%s@10.0.0.1:6379/0\n"
        "smtp_tls_session_cache_database = redis:unix:///s.sock?password=%s\n"
        "lmtp_tls_session_cache_database = btree:${data_directory}/lmtp_scache\n"
        % (PASSWORD, PASSWORD, PASSWORD))
    result = subprocess.run([PYTHON, "-m", "tlsmgr.daemon", "--show-config"],
                            env=dict(os.environ, MAIL_CONFIG=str(tmp_path)),
                            capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines() == [
        "config_directory = %s" % tmp_path,
        "lmtp_tls_session_cache_database = btree:${data_directory}/lmtp_scache",
        "smtp_tls_session_cache_database = redis:unix:///s.sock?password=****",
        "smtpd_tls_session_cache_database = redis:redis://mx:****@10.0.0.1:6379/0",
        "tlsmgr_redis_password = ****",
        "tlsmgr_redis_username = mx",
    ]


def test_messages_about_main_cf_do_not_quote_a_password(tmp_path, caplog):
    (tmp_path / "main.cf").write_text(
        "tlsmgr_redis_password = %s\ntlsmgr_redis_password = other\n"
        "smtpd_tls_session_cache_database = redis:redis://:%s@h/0\n"
        "smtpd_tls_session_cache_database = memory:\n" % (PASSWORD, PASSWORD))
    config.load(str(tmp_path), environ={})
    main_cf = tmp_path / "main.cf"
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "%s, line 2: overriding earlier entry: tlsmgr_redis_password=****" % main_cf,
        "%s, line 4: overriding earlier entry: smtpd_tls_session_cache_database="
        "redis:redis://:****@h/0" % main_cf]
    # A bad $ expression: the error would quote the value (a warning for
    # ours, a fatal error for Postfix's).
    caplog.clear()
    (tmp_path / "main.cf").write_text("tlsmgr_redis_password = %s${\n" % PASSWORD)
    config.load(str(tmp_path), environ={})
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith("parameter tlsmgr_redis_password: ")
    assert PASSWORD not in warning
    (tmp_path / "main.cf").write_text(
        "smtpd_tls_session_cache_database = redis:redis://:%s@h/${\n" % PASSWORD)
    with pytest.raises(log.Fatal) as fatal:
        config.load(str(tmp_path), environ={})
    assert fatal.value.text.startswith("parameter smtpd_tls_session_cache_database: ")
    assert PASSWORD not in fatal.value.text


def test_install_shows_master_cf_without_passwords():
    assert install.entry_lines("now", (
        "tlsmgr     unix  -       -       y       1000?   1       pytlsmgr",
        "    -o tlsmgr_redis_password=%s" % PASSWORD,
        "    -o smtpd_tls_session_cache_database=redis:redis://:%s@h/0" % PASSWORD,
        "    -o tlsmgr_redis_username=mx")) == [
        "  now:    tlsmgr     unix  -       -       y       1000?   1       pytlsmgr",
        "              -o tlsmgr_redis_password=****",
        "              -o smtpd_tls_session_cache_database=redis:redis://:****@h/0",
        "              -o tlsmgr_redis_username=mx"]


# --- the password file -----------------------------------------------------------

def password_file(path, text=PASSWORD + "\n", mode=0o600):
    path.write_text(text)
    os.chmod(path, mode)
    return path


@pytest.mark.parametrize("text, password", [
    (PASSWORD + "\n", PASSWORD), (PASSWORD, PASSWORD), (PASSWORD + "\r\n", PASSWORD),
    ("\n  spaced out \n\n", "  spaced out "), ("pâss\n", "pâss")])
def test_a_password_file_holds_one_line(tmp_path, text, password):
    path = password_file(tmp_path / "redis.password", text)
    assert read_secret_line(str(path), {os.geteuid()}) == password


@pytest.mark.parametrize("text, problem", [
    ("", "is empty: write the secret on one line"),
    ("\n\n", "is empty"),
    ("one\ntwo\n", "holds 2 lines: write the secret alone, on one line"),
    (b"\xff\xfe\n", "is not UTF-8 text")])
def test_a_password_file_that_is_not_one_line_is_refused(tmp_path, text, problem):
    path = tmp_path / "redis.password"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    os.chmod(path, 0o600)
    with pytest.raises(SecretFileError) as refused:
        read_secret_line(str(path), {os.geteuid()})
    assert str(refused.value).startswith(problem)


# --- daemons on a real Redis ----------------------------------------------------

def ctl(daemon, *args):
    result = subprocess.run([PYTHON, "-m", "tlsmgr.admin.ctl", "--socket", str(daemon.socket_path),
                             *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


def scrape(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as page:
        return page.read().decode()


def show_config(daemon):
    result = subprocess.run([PYTHON, "-m", "tlsmgr.daemon", "--show-config"],
                            env=dict(os.environ, MAIL_CONFIG=str(daemon.log_path.parent / "conf")),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def acl_redis(tmp_path):
    """A redis-server on loopback TCP whose default user has another
    password, and whose user mx has PASSWORD."""
    require(redis_available(), REDIS_NEEDED)
    with Servers(tmp_path / "redis") as servers:
        node = servers.node()
        node.client().acl_setuser("mx", enabled=True, passwords=["+" + PASSWORD],
                                  keys=["*"], channels=["*"], commands=["+@all"])
        node.client().config_set("requirepass", "default-" + PASSWORD[::-1])
        yield node


def on_redis(tmp_path, url, **params):
    """A daemon with its smtpd and smtp caches on the Redis at url, its
    metrics served, and every cache operation logged."""
    (tmp_path / "data").mkdir(exist_ok=True)
    table = "redis:" + url
    port = free_tcp_port()
    daemon = start_ours(tmp_path, extra_args=("-v",), data_directory=tmp_path / "data",
                        smtpd_tls_session_cache_database=table,
                        smtp_tls_session_cache_database=table, smtpd_tls_loglevel=2,
                        tlsmgr_redis_key_prefix="secrets%d:" % os.getpid(),
                        tlsmgr_metrics_listen=port, **params)
    daemon.metrics_port = port
    return daemon


def assert_nowhere(daemon, secret=PASSWORD):
    """The secret is in none of what the daemon shows; returns all of it."""
    shown = {"log": daemon.log, "stats": ctl(daemon, "stats"),
             "stats --json": ctl(daemon, "stats", "--json"),
             "metrics": scrape(daemon.metrics_port), "--show-config": show_config(daemon)}
    leaks = [where for where, text in shown.items() if secret in text]
    assert not leaks, "the password is shown in: %s" % ", ".join(leaks)
    return shown


@pytest.mark.redis
@pytest.mark.parametrize("form", ["userinfo", "query"])
def test_a_password_in_a_unix_url_is_shown_nowhere(tmp_path, redis_server, form):
    redis_server.client().config_set("requirepass", PASSWORD)
    path = redis_server.socket_path
    url = ("unix://:%s@%s?db=0" % (PASSWORD, path) if form == "userinfo"
           else "unix://%s?db=0&password=%s" % (path, PASSWORD))
    daemon = on_redis(tmp_path, url)
    with TlsmgrClient(str(daemon.socket_path)) as client:
        assert client.update("smtpd", "id1", b"session") == 0
        assert client.lookup("smtpd", "id1") == (0, b"session")
        shown = assert_nowhere(daemon)
        assert "open smtpd TLS cache redis:%s" % redact_url(url) in shown["log"]
        assert redact_url(url) in json.loads(shown["stats --json"])["caches"]["smtpd"][
            "redis"]["endpoint"]
        assert 'endpoint="%s"' % redact_url(url) in shown["metrics"]
        # Redis goes away: the smtpd cache warns that it is unreachable.
        redis_server.stop()
        assert client.lookup("smtpd", "id1") == (-1, b"")
        # It comes back with another password: the smtp cache warns that
        # Redis refused the password, naming whose it was.
        redis_server.start()
        redis_server.client().config_set("requirepass", "another")
        wait_for(lambda: client.update("smtp", "id2", b"s") == -1
                 and "AuthenticationError" in daemon.log, what="a refused password")
    shown = assert_nowhere(daemon)
    assert "cannot look up smtpd TLS session: Redis %s: ConnectionError" % redact_url(url) \
        in shown["log"]
    assert "(as user default, with the password in the URL)" in shown["log"]


@pytest.mark.redis
def test_a_user_and_password_in_a_tcp_url_are_shown_nowhere(tmp_path, acl_redis):
    url = "redis://mx:%s@127.0.0.1:%d/0" % (PASSWORD, acl_redis.port)
    daemon = on_redis(tmp_path, url)
    shown_url = "redis://mx:****@127.0.0.1:%d/0" % acl_redis.port
    with TlsmgrClient(str(daemon.socket_path)) as client:
        assert client.update("smtpd", "id1", b"session") == 0
        assert client.lookup("smtpd", "id1") == (0, b"session")
        shown = assert_nowhere(daemon)
        assert "smtpd on redis: reachable (%s)" % shown_url in shown["stats"]
        assert 'endpoint="%s"' % shown_url in shown["metrics"]
        acl_redis.stop()
        assert client.lookup("smtpd", "id1") == (-1, b"")
    shown = assert_nowhere(daemon)
    assert "cannot look up smtpd TLS session: Redis %s: ConnectionError" % shown_url \
        in shown["log"]
    assert "smtpd on redis: PAUSED since" in shown["stats"]


@pytest.mark.redis
def test_a_password_file_lets_the_daemon_in_and_wins(tmp_path, redis_server):
    redis_server.client().config_set("requirepass", PASSWORD)
    path = password_file(tmp_path / "redis.password")
    daemon = on_redis(tmp_path, redis_server.url, tlsmgr_redis_password_file=path,
                      tlsmgr_redis_password="an-old-password")
    with TlsmgrClient(str(daemon.socket_path)) as client:
        assert client.update("smtpd", "id1", b"session") == 0
        assert client.lookup("smtpd", "id1") == (0, b"session")
    shown = assert_nowhere(daemon)
    overrides = [line for line in shown["log"].splitlines() if "overrides" in line]
    assert len(overrides) == 1 and overrides[0].endswith(
        "warning: tlsmgr_redis_password_file %s overrides tlsmgr_redis_password" % path)
    assert "an-old-password" not in shown["--show-config"]


@pytest.mark.redis
@pytest.mark.parametrize("case", ["group readable", "symlink", "absent", "two lines"])
def test_a_bad_password_file_turns_the_fleet_off_with_a_warning(tmp_path, redis_server, case):
    path = tmp_path / "redis.password"
    problem = {
        "group readable": "may be read or written by group or others (mode 0644); "
                          "chmod 600 it",
        "symlink": "cannot open: is a symbolic link; name the file itself",
        "absent": "cannot open: No such file or directory",
        "two lines": "holds 2 lines: write the secret alone, on one line",
    }[case]
    if case == "symlink":
        path.symlink_to(password_file(tmp_path / "real.password"))
    elif case != "absent":
        password_file(path, PASSWORD + "\nmore\n" if case == "two lines" else PASSWORD,
                      0o644 if case == "group readable" else 0o600)
    (tmp_path / "host").mkdir()
    daemon = start_ours(tmp_path / "host", data_directory=tmp_path,
                        smtpd_tls_session_cache_database="redis:" + redis_server.url,
                        tlsmgr_redis_password_file=path)
    try:
        with TlsmgrClient(str(daemon.socket_path)) as client:
            assert client.update("smtpd", "id", b"a session") == 0
            assert client.lookup("smtpd", "id") == (0, b"a session")
        wait_for(lambda: "the fleet is off" in daemon.log, what="the warning")
    finally:
        assert daemon.stop() == 0
    lines = [line for line in daemon.log.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(
        "tlsmgr: warning: tlsmgr_redis_password_file %s: %s; the fleet is off" % (path, problem)
    ), lines
    assert PASSWORD not in daemon.log


@pytest.mark.redis
@pytest.mark.parametrize("url_user", [False, True])
def test_an_acl_user_with_the_password_file(tmp_path, acl_redis, url_user):
    url = "redis://%s127.0.0.1:%d/0" % ("mx@" if url_user else "", acl_redis.port)
    daemon = on_redis(tmp_path, url, tlsmgr_redis_password_file=password_file(
        tmp_path / "redis.password"), **({} if url_user else {"tlsmgr_redis_username": "mx"}))
    with TlsmgrClient(str(daemon.socket_path)) as client:
        assert client.update("smtpd", "id1", b"session") == 0
        assert client.lookup("smtpd", "id1") == (0, b"session")
    assert_nowhere(daemon)


@pytest.mark.redis
def test_a_wrong_user_name_is_a_clear_warning(tmp_path, acl_redis):
    daemon = on_redis(tmp_path, "redis://127.0.0.1:%d/0" % acl_redis.port,
                      tlsmgr_redis_username="nosuch",
                      tlsmgr_redis_password_file=password_file(tmp_path / "redis.password"))
    with TlsmgrClient(str(daemon.socket_path)) as client:
        assert client.update("smtpd", "id1", b"session") == -1
        assert client.seed(8)[0] == 0                      # the rest goes on
    # The first to meet Redis (the cleanup at start) says so; the others
    # are rate-limited.
    refused = "Redis redis://127.0.0.1:%d/0: AuthenticationError: invalid username-password " \
        "pair or user is disabled. (as user nosuch, with the password of " \
        "tlsmgr_redis_password_file)" % acl_redis.port
    warnings = [line for line in assert_nowhere(daemon)["log"].splitlines() if "warning:" in line]
    assert warnings and all(line.endswith(refused) for line in warnings), warnings


# --- Sentinel and Cluster: whom the credentials go to ------------------------

def works(store):
    store.idle(0.1)                 # the probe runs meanwhile
    try:
        store.put(b"a", pack_entry(Entry(1, b"s")))
        return store.get(b"a") == pack_entry(Entry(1, b"s"))
    except StoreError:
        return False


def add_user(node):
    node.client().acl_setuser("mx", enabled=True, passwords=["+" + PASSWORD], keys=["*"],
                              channels=["*"], commands=["+@all"])


@pytest.mark.redis
def test_sentinel_the_master_gets_the_credentials_and_the_sentinels_none(tmp_path):
    require(redis_available(), REDIS_NEEDED)
    with Servers(tmp_path) as servers:
        master = servers.node()
        add_user(master)                     # the sentinels know no user mx
        sentinel = servers.node(sentinel_config="sentinel monitor pool 127.0.0.1 %d 1\n"
                                % master.port)
        nodes = "127.0.0.1:%d/pool/0" % sentinel.port
        store = Blocking(RedisStore("redis+sentinel://mx:%s@%s" % (PASSWORD, nodes), "smtpd",
                           RedisSettings("sentinel:"), timeout=3600))
        wait_for(lambda: works(store), timeout=20, what="the master through the sentinel")
        # From main.cf and the password file, the same.
        store = Blocking(RedisStore("redis+sentinel://" + nodes, "smtpd", RedisSettings(
            "sentinel:", username="mx", file_password=PASSWORD), timeout=3600))
        assert works(store)
        # The master checks them: another user is refused there.
        store = Blocking(RedisStore("redis+sentinel://nosuch:%s@%s" % (PASSWORD, nodes), "smtpd",
                           RedisSettings("sentinel:"), timeout=3600))
        with pytest.raises(Refused, match=r"AuthenticationError: .*\(as user nosuch, "
                           r"with the password in the URL\)$"):
            store.get(b"a")


@pytest.mark.redis
@pytest.mark.timeout(180)
def test_cluster_every_node_gets_the_credentials(tmp_path):
    require(redis_available(), REDIS_NEEDED)
    with Cluster(tmp_path) as cluster:
        for node in cluster.nodes:
            add_user(node)
        nodes = cluster.url().removeprefix("redis+cluster://")
        store = Blocking(RedisStore("redis+cluster://mx:%s@%s" % (PASSWORD, nodes), "smtpd",
                           RedisSettings("cluster:"), timeout=3600))
        assert works(store)
        store = Blocking(RedisStore("redis+cluster://nosuch:%s@%s" % (PASSWORD, nodes), "smtpd",
                           RedisSettings("cluster:"), timeout=3600))
        for _ in range(2):                   # a refusal, not an outage
            with pytest.raises(Refused, match=r"invalid username-password pair .*\(as user "
                               r"nosuch, with the password in the URL\)$"):
                store.get(b"a")
