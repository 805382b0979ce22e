"""Hosts of one fleet whose smtpd runs under different master.cf service names.

smtpd's session cache ids end in ``&s=<service>&l=<OpenSSL version>``, and
Postfix 3.12 puts the service name in its tickets too: a session resumes on
another host only when both name the service alike (service_names.py).  Each
host says its names in the fleet's Redis; a host warns, once, about another
that serves the same port under another name, and about sessions in the
cache that it never looks up.  First with stand-alone daemons on a real
redis-server, then with two real Postfix hosts (fleet.py).
"""

import base64
import os
import re
import ssl
import subprocess
import time

import pytest
from conftest import require
from helpers.fleet import PORT, Fleet
from helpers.harness import REDIS_NEEDED, redis_available, start_ours, wait_for
from test_fleet import made_on_a_offered_to_b, require_fleet

from tlsmgr.admin.client import TlsmgrClient
from tlsmgr.service.service_names import Listener, smtpd_listeners
from tlsmgr.stores.seal import Seal, new_secret_line

OPENSSL = ssl.OPENSSL_VERSION_NUMBER
HOST_WARNING = re.compile(r"warning: fleet host (\S+) serves (.+?) as master\.cf service "
                          r"\"([^\"]*)\", this host as \"([^\"]*)\"")
SESSIONS_WARNING = re.compile(r"warning: smtpd TLS session cache: (\d+) of the newest \d+ "
                              r"sessions in Redis end in \"([^\"]*)\", which no smtpd here "
                              r"looks up")


def test_the_smtpd_services_of_master_cf_and_where_they_listen():
    master_cf = """\
# a comment
smtp      inet  n       -       y       -       1       postscreen
smtpd     pass  -       -       y       -       -       smtpd
192.0.2.1:submission inet n - y - - /usr/lib/postfix/sbin/smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_security_level=encrypt

2525      inet  n       -       y       -       -       smtpd -o smtpd_tls_security_level=may
tlsmgr    unix  -       -       y       1000?   1       tlsmgr
"""
    # postscreen's tlsproxy saves sessions under postscreen's name.
    assert smtpd_listeners(master_cf) == [
        Listener("smtp", "port 25"),
        Listener("smtpd", "pass service smtpd"),
        Listener("192.0.2.1:submission", "port 587"),
        Listener("2525", "port 2525")]
    # The same port whatever its spelling: a name, a number, an address before it.
    assert {listener.where for listener in smtpd_listeners(
        "smtp inet n - y - - smtpd\n25 inet n - y - - smtpd\n"
        "[2001:db8::1]:smtp inet n - y - - smtpd\n")} == {"port 25"}


# Stand-alone daemons, each with its own main.cf and master.cf, on one Redis.

def host(tmp_path, name, redis_server, service, prefix, **extra):
    conf = tmp_path / name / "conf"
    conf.mkdir(parents=True)
    (conf / "master.cf").write_text("%s inet n - y - - smtpd\n" % service)
    (tmp_path / name / "data").mkdir()
    table = "redis:" + redis_server.url
    return start_ours(tmp_path / name, data_directory=tmp_path / name / "data",
                      myhostname="mx-%s.example" % name,
                      smtpd_tls_session_cache_database=table,
                      tlsmgr_redis_key_prefix=prefix, **extra)


def hosts_key(prefix):
    return ("{%ssmtpd}:hosts" % prefix).encode()


def checked(daemon, redis_server, prefix, hosts):
    """Once daemon's record is among the fleet's hosts records, and a
    request after it answered (which went to Redis after the check's
    reads), its warnings are logged; they are returned."""
    wait_for(lambda: len(redis_server.client().hgetall(hosts_key(prefix))) >= hosts,
             what="%d hosts' records in Redis" % hosts)
    with TlsmgrClient(str(daemon.socket_path)) as client:
        assert client.lookup("smtpd", "after-the-check")[0] == -1
    return [line for line in daemon.log.splitlines() if "warning" in line]


def save_sessions(daemon, service, count):
    with TlsmgrClient(str(daemon.socket_path)) as client:
        for number in range(count):
            cache_id = "%s%02X&s=%s&l=%d" % (daemon.socket_path.parent.name * 15, number,
                                             service, OPENSSL)
            assert client.update("smtpd", cache_id, b"session %d" % number) == 0


@pytest.fixture
def prefix(request):
    require(redis_available(), REDIS_NEEDED)
    return "names%d-%s:" % (os.getpid(), request.node.name[-30:])


def test_a_host_with_another_service_name_is_warned_about_once(tmp_path, redis_server,
                                                                prefix):
    a = host(tmp_path, "a", redis_server, "smtp", prefix)
    try:
        save_sessions(a, "smtp", 3)
        b = host(tmp_path, "b", redis_server, "192.0.2.2:smtp", prefix)
        try:
            save_sessions(b, "192.0.2.2:smtp", 2)     # its own: nothing to say
            warnings = checked(b, redis_server, prefix, 2)
            with TlsmgrClient(str(b.socket_path)) as client:  # requests say nothing more
                for number in range(20):
                    client.lookup("smtpd", "%030d%02X&s=smtp&l=%d" % (0, number, OPENSSL))
            assert [line for line in b.log.splitlines() if "warning" in line] == warnings
        finally:
            b.stop()
    finally:
        a.stop()
    assert len(warnings) == 2, warnings
    assert HOST_WARNING.search(warnings[0]).groups() == (
        "mx-a.example", "port 25", "smtp", "192.0.2.2:smtp")
    assert warnings[0].endswith("give the service one name on every host of the fleet")
    assert SESSIONS_WARNING.search(warnings[1]).groups() == (
        "3", "&s=smtp&l=%d" % OPENSSL)
    assert all(len(line.partition("warning: ")[2]) < 300 for line in warnings)


def test_hosts_with_the_same_service_name_say_nothing(tmp_path, redis_server, prefix):
    a = host(tmp_path, "a", redis_server, "smtp", prefix)
    try:
        save_sessions(a, "smtp", 3)
        b = host(tmp_path, "b", redis_server, "smtp", prefix)
        try:
            save_sessions(b, "smtp", 2)
            assert checked(b, redis_server, prefix, 2) == []
        finally:
            b.stop()
        # A host that serves another port is not compared with them; but
        # it never looks up their sessions, and says so.
        c = host(tmp_path, "c", redis_server, "2525", prefix)
        try:
            warnings = checked(c, redis_server, prefix, 3)
        finally:
            c.stop()
    finally:
        a.stop()
    assert len(warnings) == 1 and SESSIONS_WARNING.search(warnings[0]).groups() == (
        "5", "&s=smtp&l=%d" % OPENSSL), warnings
    assert warnings[0].endswith("or another tlsmgr_redis_key_prefix")


def test_the_records_are_sealed_and_a_forged_one_is_ignored(tmp_path, redis_server, prefix):
    secret = tmp_path / "fleet.secret"
    secret.write_text(new_secret_line() + "\n")
    secret.chmod(0o600)
    # Someone who may write to Redis, but has not the secret, says that a
    # host serves port 25 as "evil".
    redis_server.client().hset(hosts_key(prefix), b"forger 0", (
        b'{"host": "forger", "at": %d, "openssl": 1, "services": {"port 25": "evil"}}'
        % int(time.time())))
    a = host(tmp_path, "a", redis_server, "smtp", prefix, tlsmgr_fleet_secret_file=secret)
    try:
        warnings = checked(a, redis_server, prefix, 2)
    finally:
        a.stop()
    assert "evil" not in a.log
    assert len(warnings) == 1 and "smtpd service names of the fleet: the record of a host " \
        "in Redis" in warnings[0] and "not sealed by this daemon" in warnings[0], warnings
    [line] = secret.read_text().split()
    seal = Seal([base64.b64decode(line)])
    fields = redis_server.client().hgetall(hosts_key(prefix))
    [field] = [name for name in fields if name.startswith(b"mx-a.example ")]
    record = seal.open(fields[field], hosts_key(prefix) + b"\0" + field)
    assert b'"port 25": "smtp"' in record


# Two real Postfix hosts: host B's smtpd listens on the same port under
# another service name.

@pytest.fixture(scope="module")
def fleet_of_two_names():
    require_fleet(redis=True)
    with Fleet(ours=True, label="names", listen_as={"b": "%d" % PORT}) as fleet:
        yield fleet


def postfix_release() -> tuple[int, int]:
    version = subprocess.run(["postconf", "-d", "-h", "mail_version"], capture_output=True,
                             text=True, timeout=30, check=True).stdout
    major, minor = version.split(".")[:2]
    return int(major), int(minor.split("-")[0])


def test_different_service_names_cost_resumption_across_hosts(fleet_of_two_names, tmp_path):
    fleet = fleet_of_two_names
    _, cached = made_on_a_offered_to_b(fleet, tmp_path / "tls12.sess", "-tls1_2",
                                       "-no_ticket")
    _, ticket = made_on_a_offered_to_b(fleet, tmp_path / "tls13.sess", "-tls1_3")
    assert cached.startswith("New,"), "%s\n%s" % (cached, fleet.diagnostics())
    # Before 3.12 a ticket does not say which service made it.
    expected = "New," if postfix_release() >= (3, 12) else "Reused,"
    assert ticket.startswith(expected), "%s\n%s" % (ticket, fleet.diagnostics())
    fleet.wait_for_daemons()


def test_the_host_with_another_service_name_says_so_once(fleet_of_two_names, tmp_path):
    fleet = fleet_of_two_names
    made_on_a_offered_to_b(fleet, tmp_path / "again.sess", "-tls1_2", "-no_ticket")
    log = fleet.b.instance.log()
    found = HOST_WARNING.findall(log)
    assert found == [("tlsmgr-test.localdomain", "port %d" % PORT, "127.0.0.1:%d" % PORT,
                      "%d" % PORT)], "%s\n%s" % (found, fleet.diagnostics())
    assert [end for _, end in SESSIONS_WARNING.findall(log)] == [
        "&s=127.0.0.1:%d&l=%d" % (PORT, OPENSSL)], fleet.diagnostics()
