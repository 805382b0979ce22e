"""Log lines: to postlogd as msg_logger(3) writes them, to syslog with the
Postfix tag and severities."""

import logging
import os
import re
import socket
import syslog

import pytest

from tlsmgr.util import log


@pytest.fixture
def restore_logging():
    handlers, level = list(log.logger.handlers), log.logger.level
    yield
    log.setup(handlers, level)


def test_postlog_datagrams_in_msg_logger_format(tmp_path, restore_logging):
    path = str(tmp_path / "postlog")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(5)
    log.setup([log.PostlogHandler("postfix/tlsmgr", "mx1.example.com", path)])
    log.info("open smtpd TLS cache memory:")
    log.warn('bogus cache type "x" in "lookup" request')
    info, warning = server.recv(4096).decode(), server.recv(4096).decode()
    server.close()
    stamp = r"\w{3} [ \d]\d \d\d:\d\d:\d\d"
    assert re.fullmatch(r"%s mx1 postfix/tlsmgr\[%d\]: open smtpd TLS cache memory:"
                        % (stamp, os.getpid()), info)
    assert warning.endswith('postfix/tlsmgr[%d]: warning: bogus cache type "x" in '
                            '"lookup" request' % os.getpid())


def test_postlog_without_postlogd_loses_lines_quietly(tmp_path, restore_logging):
    log.setup([log.PostlogHandler("postfix/tlsmgr", "mx1", str(tmp_path / "none"))])
    log.warn("nobody listens")               # no exception, no traceback


def test_syslog_tag_facility_and_severities(monkeypatch, restore_logging):
    calls = []
    monkeypatch.setattr(syslog, "openlog", lambda *args: calls.append(("openlog", args)))
    monkeypatch.setattr(syslog, "syslog", lambda *args: calls.append(("syslog", args)))
    log.setup([log.SyslogHandler("postfix/tlsmgr", log.facility_code("mail"))])
    log.info("hello")
    log.warn("careful")
    with pytest.raises(log.Fatal):
        log.fatal("parameter x: bad")
    assert calls == [
        ("openlog", ("postfix/tlsmgr", syslog.LOG_PID | syslog.LOG_NDELAY, syslog.LOG_MAIL)),
        ("syslog", (syslog.LOG_INFO, "hello")),
        ("syslog", (syslog.LOG_WARNING, "warning: careful")),
        ("syslog", (syslog.LOG_CRIT, "fatal: parameter x: bad")),
    ]


def test_facility_names():
    assert log.facility_code("mail") == syslog.LOG_MAIL
    assert log.facility_code("LOCAL3") == syslog.LOG_LOCAL3
    assert log.facility_code("bogus") is None
    assert log.facility_code("../x") is None


def test_stderr_lines_look_like_postfix(capsys, restore_logging):
    log.setup_stderr("tlsmgr", logging.INFO)
    log.warn("careful")
    log.info("fine")
    assert capsys.readouterr().err == "tlsmgr: warning: careful\ntlsmgr: fine\n"


def test_rate_limited_warning_lets_a_burst_through_then_one_per_interval(caplog):
    now = [0.0]
    warn = log.RateLimitedWarning(interval=1.0, burst=3, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger=log.logger.name):
        for i in range(10):
            warn("bad input %d", i)
        now[0] += 1.0                      # one more may pass, with the count
        warn("bad input %d", 10)
        warn("bad input %d", 11)
    assert [r.getMessage() for r in caplog.records] == [
        "bad input 0", "bad input 1", "bad input 2",
        "bad input 10 (and 7 more like it in the last 1 seconds)"]
