"""Logging in the style of Postfix's msg(3): info, warning, fatal.

Every module logs through the functions here, so that the words on the
wire to syslog, postlogd or stderr are chosen in one place.  Lines look
like the stock daemon's: ``tlsmgr: warning: bogus cache type ...``.
Under master(8) they go to syslog(3) as ``postfix/tlsmgr[pid]``, or to
postlogd(8) when maillog_file is set; stand-alone, to stderr.

A fatal error logs one line and raises :class:`Fatal`, which the
entry points turn into exit status 1: no traceback ever reaches a user.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import syslog
import time
from collections.abc import Callable, Iterator
from typing import NoReturn

logger = logging.getLogger("tlsmgr")

# Set from -v (repeatable) and the *_tls_loglevel parameters.
verbose = 0


class Fatal(SystemExit):
    """A fatal configuration or run-time error, already logged."""

    def __init__(self, text: str):
        super().__init__(1)
        self.text = text


def info(text: str, *args: object) -> None:
    logger.info(text, *args)


def warn(text: str, *args: object) -> None:
    logger.warning(text, *args)


class RateLimitedWarning:
    """A warning that may recur many times a second (a backend that is
    down, a client sending garbage): the first ``burst`` are logged as they
    come, then one per ``interval`` seconds, with a count of those
    suppressed in between."""

    def __init__(self, interval: float = 60.0, burst: int = 1,
                 clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self.burst = burst
        self.clock = clock
        self.tokens = float(burst)
        self.refilled: float | None = None
        self.last = 0.0
        self.held_back = 0

    def __call__(self, text: str, *args: object) -> None:
        now = self.clock()
        if self.refilled is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.refilled) / self.interval)
        self.refilled = now
        if self.tokens < 1:
            self.held_back += 1
            return
        self.tokens -= 1
        if self.held_back:
            text += " (and %d more like it in the last %d seconds)"
            args += (self.held_back, now - self.last)
        self.last, self.held_back = now, 0
        warn(text, *args)


def error(text: str, *args: object) -> None:
    logger.error(text, *args)


def fatal(text: str, *args: object) -> NoReturn:
    """Log a fatal error and raise Fatal."""
    message = text % args if args else text
    logger.critical(message)
    raise Fatal(message)


class PostfixFormatter(logging.Formatter):
    """Formats records as ``name: warning: text`` like msg_vstream(3)."""

    def __init__(self, progname: str):
        super().__init__()
        self.progname = progname

    def format(self, record: logging.LogRecord) -> str:
        return "%s: %s" % (self.progname, _postfix_text(record))


def stderr_handler(progname: str) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(PostfixFormatter(progname))
    return handler


def setup_stderr(progname: str = "tlsmgr", level: int = logging.INFO) -> None:
    """Send log lines to stderr, one line each (stand-alone mode)."""
    setup([stderr_handler(progname)], level)


_SEVERITY = {logging.WARNING: "warning: ", logging.ERROR: "error: ",
             logging.CRITICAL: "fatal: "}


def _postfix_text(record: logging.LogRecord) -> str:
    return _SEVERITY.get(record.levelno, "") + record.getMessage()


class SyslogHandler(logging.Handler):
    """syslog(3) with the tag ``syslog_name/tlsmgr`` and our pid, as msg_syslog(3)."""

    PRIORITY = {logging.DEBUG: syslog.LOG_INFO, logging.INFO: syslog.LOG_INFO,
                logging.WARNING: syslog.LOG_WARNING, logging.ERROR: syslog.LOG_ERR,
                logging.CRITICAL: syslog.LOG_CRIT}

    def __init__(self, tag: str, facility: int):
        super().__init__()
        # LOG_NDELAY: connect to /dev/log now, before any chroot jail.
        syslog.openlog(tag, syslog.LOG_PID | syslog.LOG_NDELAY, facility)

    def emit(self, record: logging.LogRecord) -> None:
        syslog.syslog(self.PRIORITY.get(record.levelno, syslog.LOG_INFO),
                      _postfix_text(record))


class PostlogHandler(logging.Handler):
    """Datagrams to postlogd(8), in the format of Postfix's msg_logger(3):
    ``Mon DD HH:MM:SS host tag[pid]: warning: text``.  The socket is
    connected at once, so that it keeps working inside a chroot jail."""

    def __init__(self, tag: str, hostname: str, path: str):
        super().__init__()
        self.tag = tag
        self.hostname = hostname.split(".")[0]
        self.sock: socket.socket | None = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.sock.connect(path)
        except OSError:
            # Postfix too carries on: the lines are lost until postlogd is up.
            self.sock.close()
            self.sock = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.sock is None:
            return
        line = "%s %s %s[%d]: %s" % (time.strftime("%b %d %H:%M:%S"), self.hostname,
                                     self.tag, os.getpid(), _postfix_text(record))
        try:
            self.sock.send(line.encode("utf-8", "replace")[:_POSTLOG_RECORD_LIMIT])
        except OSError:
            pass


# Postfix's MSG_LOGGER_RECLEN is for the text; keep whole datagrams well inside
# what a UNIX datagram socket takes.
_POSTLOG_RECORD_LIMIT = 2000


def setup(handlers: list[logging.Handler], level: int = logging.INFO) -> None:
    """Log through these handlers only."""
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = False


@contextlib.contextmanager
def muted() -> Iterator[None]:
    """Nothing is logged meanwhile: for what is read again later, and
    said then."""
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = False


def facility_code(name: str) -> int | None:
    """The syslog facility for a syslog_facility value, or None."""
    return getattr(syslog, "LOG_" + name.upper(), None) if name.isalnum() else None
