"""master(8) glue: what a Postfix daemon does for the process manager.

master(8) starts ``$daemon_directory/<command>`` with the generic daemon
options (master(5)), the service's listening socket(s) on fd 6 and up, and
a status pipe on fd 5.  This module holds the pieces of Postfix's
multi_server.c that a Python daemon needs: the 12-byte status messages,
noticing that master went away, the daemon_timeout watchdog, and the
chroot jail and privilege drop that follow start-up.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import pwd
import signal
import struct
import time
from collections.abc import Callable

from ..util import log

STATUS_FD = 5            # shared channel to master(8)
LISTEN_FD = 6            # the first listening socket

STAT_TAKEN = 0           # busy with a client request
STAT_AVAIL = 1           # idle

# struct MASTER_STATUS: int pid, unsigned generation, int avail.
_STATUS = struct.Struct("=iIi")


def parse_generation(text: str | None) -> int:
    """The GENERATION from the environment: octal digits."""
    if text is None:
        return 0
    if not text.isdigit() or not text.isascii():
        log.fatal("bad generation: %s", text)
    return int(text, 8) & 0xFFFFFFFF


class StatusChannel:
    """The status channel to master(8): busy/idle messages, and master's end.

    master(8) passes a UNIX-domain socketpair on fd 5, and on a busy host it
    may leave it unread for seconds: some 280 unread pairs of messages fill
    it.  A full channel is no reason to exit (master is still there, and a
    new process would start with empty caches and new ticket keys), nor to
    stall the clients, as the stock daemon's blocking write does.  So the
    channel is non-blocking, and while it is full, messages are coalesced:
    each pair says "busy, then idle again", and any number of them in a row
    tell master no more than one does (tlsmgr's process limit is 1, so
    master has no other process to start when this one is busy).

    Only master's end going away means master is gone: end-of-file or a
    hang-up on fd 5, or EPIPE or ECONNRESET on a write.  fd 5 is one open
    file description with master's own copy, so its non-blocking mode is
    master's too; master makes a new socketpair on reload, and only this
    daemon's next process, which sets the same mode, gets this one.  (uvloop
    makes any descriptor it watches non-blocking anyway.)
    """

    def __init__(self, generation: int, fd: int = STATUS_FD):
        self.fd = fd
        try:
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)       # close-on-exec, as the stock daemon's
        except OSError as err:
            log.fatal("master status channel (fd %d): %s -- is master(8) running this "
                      "daemon?", fd, err.strerror)
        # Busy, then idle again: what Postfix's servers say around a request.
        self._pair = (_STATUS.pack(os.getpid(), generation, STAT_TAKEN)
                      + _STATUS.pack(os.getpid(), generation, STAT_AVAIL))
        self._owed = b""            # not yet written: a pair, or the end of one
        self._waiting = False       # for the channel to have room
        self._loop: asyncio.AbstractEventLoop          # set by attach()
        self._gone: Callable[[], None] = _nothing
        self._write_warning = log.RateLimitedWarning()

    def attach(self, loop: asyncio.AbstractEventLoop, gone: Callable[[], None]) -> None:
        """Watch for master's end; gone() is called, once, when it goes."""
        self._loop, self._gone = loop, gone
        # master(8) never writes: readable means end-of-file or hang-up.
        loop.add_reader(self.fd, self._master_gone)

    def served(self) -> None:
        """Tell master that requests were served.  This daemon never stops
        accepting while it serves, so busy and idle go together, after the
        work."""
        # A pair that is owed and not begun says all that this one would.
        if len(self._owed) < len(self._pair):
            self._owed += self._pair
        if not self._waiting:
            self._write()

    def _write(self) -> None:
        failed = False
        try:
            written = os.write(self.fd, self._owed)
        except BlockingIOError:               # full: master is slow to read
            written = 0
        except (BrokenPipeError, ConnectionResetError):
            self._master_gone()
            return
        except OSError as err:                # kept, for the next served()
            self._write_warning("master status channel: write: %s", err.strerror)
            written, failed = 0, True
        # A stream socket may take part of a message: the rest is owed first,
        # or master would read every message after it misaligned.
        self._owed = self._owed[written:]
        waiting = bool(self._owed) and not failed
        if waiting != self._waiting:
            self._waiting = waiting
            if waiting:
                self._loop.add_writer(self.fd, self._write)
            else:
                self._loop.remove_writer(self.fd)

    def _master_gone(self) -> None:
        self._loop.remove_reader(self.fd)
        if self._waiting:
            self._loop.remove_writer(self.fd)
            self._waiting = False
        gone, self._gone = self._gone, _nothing
        gone()


def _nothing() -> None:
    pass


class Watchdog:
    """Postfix's watchdog(3): if the event loop stops turning for
    daemon_timeout seconds, the process ends with a fatal error instead of
    hanging forever.  The loop calls :meth:`pet` as it turns."""

    def __init__(self, timeout: int):
        self.timeout = timeout
        signal.signal(signal.SIGALRM, self._bark)

    def pet(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, self.timeout)

    def stop(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)

    def _bark(self, signum: int, frame: object) -> None:
        log.logger.critical("watchdog timeout")
        os._exit(1)


def mail_owner_ids(name: str) -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        log.fatal("parameter mail_owner: unknown user name value: %s", name)
    return entry.pw_uid, entry.pw_gid


def enter_jail(root_dir: str | None, user: str | None) -> None:
    """chroot(2) to root_dir and become user, as chroot_uid(3) does.

    Everything the daemon uses afterwards was imported or opened before.
    """
    ids = mail_owner_ids(user) if user else None
    if root_dir:
        time.tzset()                 # the zone file is outside the jail
        try:
            os.chroot(root_dir)
            os.chdir("/")
        except OSError as err:
            log.fatal("chroot(%s): %s", root_dir, err.strerror)
    if user and ids:
        uid, gid = ids
        try:
            os.setgid(gid)
            os.initgroups(user, gid)
            os.setuid(uid)
        except OSError as err:
            log.fatal("set privileges to %s: %s", user, err.strerror)


class effective_ids:
    """Create files as another user, like Postfix's SAVE_AND_SET_EUGID:
    root stays the real user and comes back afterwards.

    The supplementary groups go too, as set_eugid(3) does: master(8) runs
    with root's (group 0 on Debian), and a file that mail_owner may not
    touch but group 0 may (root:root 0660, say) would otherwise be opened
    through a symbolic link that mail_owner planted in its own directory.
    """

    def __init__(self, uid: int, gid: int):
        self.uid, self.gid = uid, gid

    def __enter__(self) -> None:
        self.saved = os.geteuid(), os.getegid(), os.getgroups()
        os.setgroups([self.gid])          # while still root
        os.setegid(self.gid)
        os.seteuid(self.uid)

    def __exit__(self, *exc: object) -> None:
        uid, gid, groups = self.saved
        os.seteuid(uid)
        os.setegid(gid)
        os.setgroups(groups)


# Modules that would otherwise be imported lazily, while serving.
_LAZY_MODULES = (
    "asyncio.base_events", "asyncio.selector_events", "asyncio.unix_events",
    "concurrent.futures.thread", "encodings.ascii", "encodings.latin_1",
    "encodings.utf_8", "urllib.parse",
    # redis-py: secrets for its connection pool; importlib.metadata, which
    # reads with email.parser, when it names its version on connecting; the
    # Cluster and Sentinel clients, made on first use.  encodings.idna (and
    # what it imports) for the host name of a Redis reached over TCP.
    "redis.connection", "secrets", "importlib.metadata", "email.parser",
    "email.feedparser", "redis.asyncio.connection", "redis.asyncio.cluster",
    "redis.asyncio.sentinel", "encodings.idna",
    "stringprep", "unicodedata",
    "tlsmgr.stores.memory", "tlsmgr.stores.lmdb", "tlsmgr.stores.redis",
)


def preload_modules() -> None:
    """Import now what would otherwise be imported lazily, while the files
    are within reach: before files are opened as mail_owner (who may not
    read the Python installation) and before the chroot jail."""
    for name in _LAZY_MODULES:
        importlib.import_module(name)
