"""An administrator's ordinary mistakes, under real master(8) and smtpd.

Each test is one mistake in main.cf, in a private Postfix instance (Debian's
package) whose master.cf runs our daemon as its tlsmgr, chroot=y as
Debian ships it (chroot=n too where it matters).  What must hold for each
mistake of ours:

* Postfix starts, and openssl s_client gets a STARTTLS handshake from
  smtpd without a stall: smtpd did not wait on a tlsmgr that died;
* the reason is one ``warning:`` line of tlsmgr's in maillog_file (the
  instance logs through postlogd(8) to maillog_file, as the harness sets
  it up), naming the parameter or the path;
* tlsmgr logged no ``fatal:`` and master(8) no ``throttling``.

The counter-case: a bad value of a Postfix parameter that smtpd reads too
stops tlsmgr as it stops the stock one, with a fatal line naming it.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import require, require_command
from helpers.harness import REDIS_NEEDED, redis_available, wait_for
from helpers.postfix_instance import PostfixInstance, available, handshake
from helpers.redis_servers import Servers

pytestmark = [pytest.mark.postfix, pytest.mark.timeout(180)]

TLS12 = ("-tls1_2", "-no_ticket")          # resumption by session id: through tlsmgr
# A handshake takes a second here (s_client waits for a TLS 1.3 ticket):
# past this, smtpd waited for something.
HANDSHAKE_BOUND = 20.0
LOG_WAIT = 30.0

TLSMGR_LINE = re.compile(r"postfix/tlsmgr\[\d+\]: (.*)$", re.M)


# Instances and servers, stopped whatever happens.

@pytest.fixture
def postfix():
    """Start a Postfix instance with our tlsmgr: postfix(chroot=..., **main_cf).
    Every instance made is destroyed at the end, whatever happened."""
    require(available(), "Debian's postfix package and root (apt-get install postfix; "
                         "run the tests as root)")
    require_command("openssl", "openssl")
    made: list[PostfixInstance] = []

    def start(chroot: bool = True, **params) -> PostfixInstance:
        instance = PostfixInstance(ours=True, chroot=chroot, **params)
        made.append(instance)
        instance.start()
        return instance

    try:
        yield start
    finally:
        for instance in made:
            instance.destroy()


@pytest.fixture
def redis_node(tmp_path_factory):
    """A private redis-server on a TCP port of 127.0.0.1 (reachable from
    tlsmgr's chroot jail), stopped by its pid at the end."""
    require(redis_available(), REDIS_NEEDED)
    with Servers(tmp_path_factory.mktemp("redis")) as servers:
        yield servers.node()


def redis_table(node) -> str:
    return "redis:redis://127.0.0.1:%d/0" % node.port


# What the log says.

def tlsmgr_lines(instance) -> list[str]:
    """What tlsmgr logged, each line without its syslog head."""
    return TLSMGR_LINE.findall(instance.log())


def tlsmgr_said(instance) -> str:
    """tlsmgr's lines and master's about it, for an assertion message."""
    lines = [line for line in instance.log().splitlines()
             if "postfix/tlsmgr[" in line or "tlsmgr" in line and "postfix/master[" in line]
    return "tlsmgr's lines in maillog_file:\n" + "\n".join(lines[-40:])


def warnings_naming(instance, *words: str) -> list[str]:
    return [line for line in tlsmgr_lines(instance)
            if line.startswith("warning: ") and all(word in line for word in words)]


def wait_for_warning(instance, *words: str) -> list[str]:
    """Wait (bounded) for a warning line of tlsmgr's naming all words."""
    try:
        wait_for(lambda: warnings_naming(instance, *words), timeout=LOG_WAIT,
                 interval=0.2, what="a tlsmgr warning naming %s" % ", ".join(words))
    except AssertionError as err:
        raise AssertionError("%s\n%s" % (err, tlsmgr_said(instance))) from None
    return warnings_naming(instance, *words)


def assert_one_warning(instance, *words: str) -> str:
    found = wait_for_warning(instance, *words)
    assert len(found) == 1, "more than one warning for one mistake:\n" + tlsmgr_said(instance)
    return found[0]


def assert_not_stopped(instance) -> None:
    """tlsmgr did not stop, master(8) did not throttle it, nothing crashed."""
    log = instance.log()
    stopped = [line for line in tlsmgr_lines(instance)
               if line.startswith(("fatal:", "panic:"))]
    assert not stopped, tlsmgr_said(instance)
    assert "throttling" not in log, tlsmgr_said(instance)
    assert "Traceback" not in log, tlsmgr_said(instance)


def starttls(instance, *args) -> str:
    """A STARTTLS handshake, in bounded time; openssl's New/Reused line."""
    began = time.monotonic()
    try:
        line = handshake(instance, *args)
    except (AssertionError, subprocess.TimeoutExpired) as err:
        raise AssertionError("no STARTTLS handshake: %s\n%s" % (err, tlsmgr_said(instance))) \
            from None
    took = time.monotonic() - began
    assert took < HANDSHAKE_BOUND, "the handshake took %.1f s: smtpd waited\n%s" % (
        took, tlsmgr_said(instance))
    return line


def tlsmgr_started(instance) -> None:
    wait_for(instance.tlsmgr_pids, timeout=LOG_WAIT, what="our tlsmgr process")


# 1. A cache in a directory that does not exist.

@pytest.mark.parametrize("chroot", [True, False], ids=["chroot=y", "chroot=n"])
@pytest.mark.parametrize("db_type", ["btree", "lmdb"])
def test_cache_in_a_directory_that_does_not_exist(postfix, tmp_path, db_type, chroot):
    path = "/nonexistent-dir/smtpd_scache"
    instance = postfix(chroot=chroot,
                       smtpd_tls_session_cache_database="%s:%s" % (db_type, path))
    session = tmp_path / "tls12.sess"
    assert starttls(instance, *TLS12, "-sess_out", str(session)).startswith("New,")
    warning = assert_one_warning(instance, path)
    # Served without that cache: the session is simply not resumed.
    again = starttls(instance, *TLS12, "-sess_in", str(session))
    assert again.startswith("New,"), again
    assert warnings_naming(instance, path) == [warning], tlsmgr_said(instance)
    assert_not_stopped(instance)


# 2. A bad boolean of ours: reaches maillog_file (postlogd), not just stderr.

@pytest.mark.parametrize("chroot", [True, False], ids=["chroot=y", "chroot=n"])
def test_bad_boolean_is_a_warning_in_maillog_file(postfix, chroot):
    instance = postfix(chroot=chroot, tlsmgr_preserve_sessions="yse")
    assert instance.maillog.exists()        # the harness logs through postlogd to it
    starttls(instance, *TLS12)
    warning = assert_one_warning(instance, "tlsmgr_preserve_sessions", "yse")
    assert re.search(r"\bno\b", warning), warning           # the default, used instead
    starttls(instance, "-tls1_3")
    assert_not_stopped(instance)


# 3. A fleet secret file that group and others may read.

def test_fleet_secret_file_readable_by_others_turns_the_fleet_off(postfix, redis_node,
                                                                  tmp_path):
    secret = subprocess.run([sys.executable, "-m", "tlsmgr.admin.ctl", "fleet-secret"],
                            capture_output=True, text=True, timeout=60, check=True).stdout
    assert secret.strip()
    prefix = "mistakes%d:" % time.monotonic_ns()
    secret_dir = Path(tmp_path) / "secret"
    secret_dir.mkdir()
    secret_dir.chmod(0o755)
    secret_file = secret_dir / "tlsmgr-fleet.secret"
    secret_file.write_text(secret)
    secret_file.chmod(0o644)
    instance = postfix(smtpd_tls_session_cache_database=redis_table(redis_node),
                       tlsmgr_redis_key_prefix=prefix,
                       tlsmgr_fleet_secret_file=secret_file)
    session = tmp_path / "tls12.sess"
    assert starttls(instance, *TLS12, "-sess_out", str(session)).startswith("New,")
    starttls(instance, *TLS12, "-sess_in", str(session))        # a resumption attempt
    starttls(instance, "-tls1_3")                                 # ticket keys too
    # The warning repeats (about once a minute): here, once is enough.
    wait_for_warning(instance, str(secret_file))
    # The fleet is off: sessions stay local, nothing at all goes to Redis.
    keys = redis_node.client().keys("*")
    assert keys == [], "written to Redis: %r\n%s" % (keys[:20], tlsmgr_said(instance))
    assert_not_stopped(instance)


# 4. The metrics port is taken.

def test_metrics_port_already_bound(postfix):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        instance = postfix(tlsmgr_metrics_listen="127.0.0.1:%d" % port)
        starttls(instance, *TLS12)
        assert_one_warning(instance, str(port))
        starttls(instance, "-tls1_3")
        assert_not_stopped(instance)


# 5. A bad integer of ours.

def test_bad_integer_is_a_warning_with_the_default(postfix):
    instance = postfix(tlsmgr_redis_timeout_ms="fast")
    starttls(instance, *TLS12)
    warning = assert_one_warning(instance, "tlsmgr_redis_timeout_ms")
    assert re.search(r"\b250\b", warning), warning               # the default, used instead
    starttls(instance, "-tls1_3")
    assert_not_stopped(instance)


# 6. The counter-case: a Postfix parameter that smtpd reads too.

def test_bad_postfix_parameter_stops_tlsmgr_as_the_stock_one(postfix):
    instance = postfix(smtpd_tls_session_cache_timeout="forever")
    # smtpd stops on it too, before it would ask tlsmgr anything: be
    # tlsmgr's client here, so that master(8) starts it.
    client = socket.socket(socket.AF_UNIX)
    client.settimeout(10)
    try:
        client.connect(str(instance.queue / "private" / "tlsmgr"))
        try:
            client.recv(4096)
        except OSError:
            pass
    finally:
        client.close()

    def fatal():
        return [line for line in tlsmgr_lines(instance)
                if line.startswith("fatal: ") and "smtpd_tls_session_cache_timeout" in line]
    try:
        wait_for(fatal, timeout=LOG_WAIT, interval=0.2, what="tlsmgr's fatal line")
    except AssertionError as err:
        raise AssertionError("%s\n%s" % (err, tlsmgr_said(instance))) from None


# 7. Redis goes away and comes back.

DURATION = re.compile(r"\d+(?:\.\d+)? ?(?:ms|s|secs?|seconds?)\b")


def test_redis_back_is_logged_with_how_long_it_was_out(postfix, redis_node, tmp_path):
    instance = postfix(smtpd_tls_session_cache_database=redis_table(redis_node),
                       tlsmgr_redis_key_prefix="mistakes%d:" % time.monotonic_ns())
    session = tmp_path / "tls12.sess"
    assert starttls(instance, *TLS12, "-sess_out", str(session)).startswith("New,")
    tlsmgr_started(instance)
    redis_node.stop()                                       # by its pid
    starttls(instance, *TLS12)                              # an update: Redis is out
    starttls(instance, *TLS12, "-sess_in", str(session))   # a lookup
    wait_for_warning(instance, "127.0.0.1:%d" % redis_node.port)    # noticed
    time.sleep(1)
    redis_node.start()                                      # the same port again
    starttls(instance, *TLS12)

    def back() -> list[str]:
        return [line for line in tlsmgr_lines(instance)
                if re.search(r"(?i)\bagain\b", line) and DURATION.search(line)]
    try:
        wait_for(back, timeout=LOG_WAIT, interval=0.2, what="a line saying Redis is back")
    except AssertionError as err:
        raise AssertionError("%s\n%s" % (err, tlsmgr_said(instance))) from None
    # Redis answers again, once; that sessions are saved again may be said too.
    lines = [line for line in back() if "redis" in line.lower()]
    assert len(lines) == 1, back()
    starttls(instance, *TLS12)
    assert_not_stopped(instance)

