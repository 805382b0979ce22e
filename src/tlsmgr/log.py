"""Logging in the style of Postfix's msg(3): info, warning, fatal.

Every module logs through the functions here, so that the words on the
wire to syslog, postlogd or stderr are chosen in one place.  Lines look
like the stock daemon's: ``tlsmgr: warning: bogus cache type ...``.

A fatal error logs one line and raises :class:`Fatal`, which the
entry points turn into exit status 1: no traceback ever reaches a user.
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("tlsmgr")

# Set from -v (repeatable) and the *_tls_loglevel parameters.
verbose = 0


class Fatal(SystemExit):
    """A fatal configuration or run-time error, already logged."""

    def __init__(self, text: str):
        super().__init__(1)
        self.text = text


def info(text: str, *args) -> None:
    logger.info(text, *args)


def warn(text: str, *args) -> None:
    logger.warning(text, *args)


def error(text: str, *args) -> None:
    logger.error(text, *args)


def fatal(text: str, *args) -> Fatal:
    """Log a fatal error and raise.  Returns only to please type checkers."""
    message = text % args if args else text
    logger.critical(message)
    raise Fatal(message)


class PostfixFormatter(logging.Formatter):
    """Formats records as ``name: warning: text`` like msg_vstream(3)."""

    PREFIX = {
        logging.WARNING: "warning: ",
        logging.ERROR: "error: ",
        logging.CRITICAL: "fatal: ",
    }

    def __init__(self, progname: str):
        super().__init__()
        self.progname = progname

    def format(self, record: logging.LogRecord) -> str:
        return "%s: %s%s" % (self.progname, self.PREFIX.get(record.levelno, ""),
                             record.getMessage())


def setup_stderr(progname: str = "tlsmgr", level: int = logging.INFO) -> None:
    """Send log lines to stderr, one line each (stand-alone mode)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(PostfixFormatter(progname))
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
