"""``tlsmgr --check``: every problem the daemon would meet, before a reload,
changing nothing."""

import os
import pwd
import socket
import subprocess

import pytest
import redis
from conftest import require_command
from helpers.harness import PYTHON, free_tcp_port, start_ours, write_main_cf

from tlsmgr.stores.seal import new_secret_line

ME = pwd.getpwuid(os.geteuid()).pw_name


def check(tmp_path, **params):
    """(exit status, lines) of tlsmgr --check on a main.cf of params."""
    require_command("postconf", "postfix")          # its version is checked too
    params.setdefault("mail_owner", ME)
    params.setdefault("data_directory", tmp_path)
    params.setdefault("queue_directory", tmp_path)
    conf = write_main_cf(tmp_path / "conf", **params)
    done = subprocess.run([PYTHON, "-m", "tlsmgr.daemon", "--check"], capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, MAIL_CONFIG=str(conf)))
    assert done.stdout == "" and "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stderr.splitlines()


def problems(lines):
    return [line for line in lines if "warning:" in line or "fatal:" in line]


def test_a_sound_main_cf_passes_and_nothing_is_made(tmp_path):
    before = set(tmp_path.rglob("*"))
    status, lines = check(tmp_path, smtpd_tls_session_cache_database="lmdb:%s/smtpd_scache"
                          % tmp_path, smtp_tls_session_cache_database="memory:")
    assert (status, problems(lines)) == (0, []), lines
    assert lines[-1] == "tlsmgr: check: no problems found in %s/conf/main.cf" % tmp_path
    assert set(tmp_path.rglob("*")) - before == {tmp_path / "conf", tmp_path / "conf/main.cf"}


def secret_file(path, mode):
    path.write_text(new_secret_line() + "\n")
    path.chmod(mode)
    return path


@pytest.mark.parametrize("case", [
    "missing directory", "unsupported type", "bad boolean", "bad integer", "open secret",
    "metrics port taken", "bad metrics value", "one file for two caches"])
def test_each_problem_is_one_line_and_the_status_is_1(tmp_path, case):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    params, wanted = {
        "missing directory": (
            {"smtpd_tls_session_cache_database": "btree:/var/lib/postfx/smtpd_scache"},
            "warning: btree:/var/lib/postfx/smtpd_scache is unavailable: directory "
            "/var/lib/postfx does not exist: the smtpd TLS session cache would be off (fix "
            "smtpd_tls_session_cache_database)"),
        "unsupported type": (
            {"smtpd_tls_session_cache_database": "cdb:/x"},
            "warning: cdb:/x is unavailable. unsupported dictionary type: cdb"),
        "bad boolean": (
            {"tlsmgr_preserve_sessions": "yse"},
            "warning: bad boolean configuration: tlsmgr_preserve_sessions = yse (expected yes "
            "or no); using the default, tlsmgr_preserve_sessions = no"),
        "bad integer": (
            {"tlsmgr_connection_limit": "many"},
            "warning: bad numerical configuration: tlsmgr_connection_limit = many"),
        "open secret": (
            {"tlsmgr_fleet_secret_file": secret_file(tmp_path / "fleet.secret", 0o644)},
            "warning: tlsmgr_fleet_secret_file %s/fleet.secret: may be read or written by "
            "group or others (mode 0644); chmod 600 it; the fleet would be off" % tmp_path),
        "metrics port taken": (
            {"tlsmgr_metrics_listen": taken.getsockname()[1]},
            "warning: cannot serve metrics on 127.0.0.1 port %d: Address already in use"
            % taken.getsockname()[1]),
        "bad metrics value": (
            {"tlsmgr_metrics_listen": "host:port"},
            "warning: parameter tlsmgr_metrics_listen: bad value: host:port"),
        "one file for two caches": (
            {"smtpd_tls_session_cache_database": "lmdb:%s/scache" % tmp_path,
             "smtp_tls_session_cache_database": "btree:%s/scache" % tmp_path},
            # Fatal, as in the daemon, which stops for it as the stock one does.
            "fatal: do not use the same TLS cache file btree:%s/scache for smtpd and smtp"
            % tmp_path),
    }[case]
    try:
        status, lines = check(tmp_path, **params)
    finally:
        taken.close()
    [line] = problems(lines)
    assert status == 1 and line.startswith("tlsmgr: " + wanted), lines
    assert lines[-1] == 'tlsmgr: check: 1 problem: fix it before "postfix reload"'


def test_a_bad_postfix_parameter_is_fatal_as_in_the_daemon(tmp_path):
    status, lines = check(tmp_path, smtpd_tls_session_cache_timeout="forever")
    assert status == 1
    assert problems(lines) == [
        "tlsmgr: fatal: parameter smtpd_tls_session_cache_timeout: bad time value or unit: "
        "forever (expected a number with an optional unit s, m, h, d or w)"]


@pytest.mark.redis
def test_redis_reachable_or_not_and_nothing_written(tmp_path, redis_server):
    client = redis.Redis(unix_socket_path=str(redis_server.socket_path))
    keys = client.dbsize()
    status, lines = check(tmp_path, smtpd_tls_session_cache_database="redis:" + redis_server.url)
    assert (status, problems(lines)) == (0, []), lines
    assert "tlsmgr: check: redis:%s answers" % redis_server.url in lines
    assert client.dbsize() == keys
    port = free_tcp_port()
    status, lines = check(tmp_path, smtpd_tls_session_cache_database="redis:redis://"
                          "mx:hunter2@127.0.0.1:%d/0" % port)
    [line] = problems(lines)
    assert status == 1 and ("Connection refused" in line or "111" in line), line
    assert "hunter2" not in line and "the smtpd TLS session cache would miss" in line


def test_the_running_daemons_own_metrics_port_is_no_problem(tmp_path):
    port = free_tcp_port()
    running = start_ours(tmp_path / "running", data_directory=tmp_path,
                         tlsmgr_metrics_listen=port)
    try:
        status, lines = check(tmp_path, tlsmgr_metrics_listen=port)
    finally:
        running.stop()
    assert (status, problems(lines)) == (0, []), lines


def test_tlsmgr_ctl_check_is_the_same_check(tmp_path):
    require_command("postconf", "postfix")
    conf = write_main_cf(tmp_path / "conf", mail_owner=ME, data_directory=tmp_path,
                         queue_directory=tmp_path, tlsmgr_preserve_sessions="yse")
    done = subprocess.run([PYTHON, "-m", "tlsmgr.admin.ctl", "check", "-o", "tlsmgr_event_loop=x"],
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, MAIL_CONFIG=str(conf)))
    assert done.returncode == 1
    assert [line.split(":", 3)[2].strip() for line in problems(done.stderr.splitlines())] == [
        "bad boolean configuration", "parameter tlsmgr_event_loop"], done.stderr
