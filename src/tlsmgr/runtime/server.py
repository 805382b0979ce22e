"""The asyncio server: listening, master(8), timers and the lifecycle.

Each accepted connection is a connection.Connection, which sees only the
connection.Shared state made here; any number of connections are served
at once and none waits for another, within the budgets of limits.py.
Timers drive the housekeeping of the stock daemon: PRNG reseeds and
exchange-file updates at random intervals, and per cache a cleanup pass
once per cache timeout, run in small steps between requests.  The time of
day is mixed into the PRNG pool once per turn of the event loop that had
an event, as the stock daemon does in its loop callback.

SIGTERM (what master(8) sends on "postfix stop" and "postfix reload") and
SIGINT save the PRNG state and end the process with status 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import os
import resource
import signal
import socket
import stat
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..service import fastpath
from ..service.prng import MustExit, Prng
from ..service.protocol import Dispatch
from ..service.scache import SessionCache
from ..stores import COMMIT_WITHIN, Entry
from ..util import log
from ..util.pending import Later
from .connection import Connection, Shared
from .limits import ClientMemory, ConnectionTable
from .master import StatusChannel, Watchdog, effective_ids

_GC_YOUNG_THRESHOLD = 50_000
# Descriptors kept besides the clients' connections: for caches, logging,
# Redis and the like, and for the side listeners with their connections
# (the metrics' listener, its 16 METRICS_CONNECTIONS, and for a moment
# those accepted only to be closed at once: metrics.py, _SIDE_ACCEPTS).
_RESERVED_FILES = 64
# Connections the kernel may queue before we accept them: as many as it
# allows (net.core.somaxconn, 4096 by default, caps this).  master(8)
# listens with about default_process_limit, and asyncio would listen again
# with 100: a burst of smtpd processes starting at once is larger.
LISTEN_BACKLOG = 65535
# asyncio also takes a server's backlog for the accept(2)s to try at each
# wake-up, and (Python 3.11; CPython gh-151615) goes on trying them all
# when one fails for want of descriptors: a warning and a timer each,
# LISTEN_BACKLOG of them a second, the CPU spinning.  It is given this
# many, and the kernel's queue is made LISTEN_BACKLOG long again after.
_ACCEPTS_PER_WAKEUP = 100
# The same for a side listener.  A connection over its limit is closed two
# loop turns after its accept(2) (asyncio makes the transport in a task, and
# aborting it closes its socket a turn later), so that a flood of them
# holds up to three wake-ups' worth of descriptors: 12, within the reserve.
_SIDE_ACCEPTS_PER_WAKEUP = 4
# Kinds of event loop error with a rate-limited warning of their own; any
# others share one.
_LOOP_ERROR_KINDS = 16
# master(8) hears that requests were served (a busy/idle pair on its status
# channel) within this many seconds of the first, once however many were
# served meanwhile: Postfix's servers tell it around each request, but to
# master that is gossip (master_status.c), and under load a pair a turn
# costs a write and a wake-up of master ten thousand times a second.
STATUS_WITHIN = 0.01
# Since Python 3.13, asyncio and uvloop remove a UNIX server's socket file
# when the server or the loop closes.  Under master(8) that file is master's
# private/tlsmgr, which master keeps and hands to the next process: without
# it every client is refused from the first "postfix reload" on.  (Stand-
# alone, the daemon removes its own socket file itself.)
_KEEP_SOCKET_FILE: dict[str, Any] = (
    {"cleanup_socket": False} if sys.version_info >= (3, 13) else {})


def raise_open_files_limit(connections: int) -> int:
    """Raise the soft open-files limit as far as the connection limit needs
    and the hard limit allows; return how many connections then fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + _RESERVED_FILES
    if hard != resource.RLIM_INFINITY and hard < wanted and os.geteuid() == 0:
        try:                          # root may raise the hard limit too
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            soft = hard = wanted
        except (OSError, ValueError):
            pass
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if wanted > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (OSError, ValueError) as err:
            log.warn("cannot raise the open files limit to %d: %s", wanted, err)
    fit = max(1, soft - _RESERVED_FILES)
    if fit < connections:
        log.warn("open files limit %d leaves room for %d connections, not "
                 "tlsmgr_connection_limit = %d; raise the hard limit (ulimit -Hn, "
                 "or LimitNOFILE for systemd's postfix unit)", soft, fit, connections)
    return min(fit, connections)


def listen_unix(path: str, owner: tuple[int, int] | None = None) -> socket.socket:
    """A listening UNIX-domain socket at path, for stand-alone mode.

    A stale socket from an earlier run is replaced.  The socket is private
    (0600): the clients are Postfix processes running as mail_owner.  When
    we start as root, owner is mail_owner's uid and gid, and the socket is
    made with those effective ids, as master(8) makes its sockets: never
    made by root and then chowned, for between bind(2) and chown(2) whoever
    may write the directory can put a symbolic link in its place, and
    chown(2) follows it.
    """
    ids = effective_ids(*owner) if owner is not None else contextlib.nullcontext()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    umask = os.umask(0o177)           # private from the moment it exists
    try:
        with ids:
            try:
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    os.unlink(path)
            except FileNotFoundError:
                pass
            sock.bind(path)
        sock.listen(LISTEN_BACKLOG)
    except OSError as err:
        sock.close()
        hint = (" (the socket is made as mail_owner: its directory must be writable "
                "by mail_owner)" if owner is not None and err.errno == errno.EACCES else "")
        log.fatal("bind %s: %s%s", path, err.strerror, hint)
    finally:
        os.umask(umask)
    return sock


class LoopErrorLog:
    """The event loop's exception handler, for the errors it meets on its
    own (accept(2) out of file descriptors, say): a warning line, never a
    traceback, rate-limited for each kind (the loop's message), as a
    client may cause many a second."""

    def __init__(self) -> None:
        self._warnings: dict[str, log.RateLimitedWarning] = {}
        self._others = log.RateLimitedWarning()     # kinds beyond _LOOP_ERROR_KINDS

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = context.get("message", "event loop error")
        warning = self._warnings.get(message)
        if warning is None:
            if len(self._warnings) < _LOOP_ERROR_KINDS:
                warning = self._warnings[message] = log.RateLimitedWarning()
            else:
                warning = self._others
        error = context.get("exception")
        warning("%s%s", message, ": %s" % error if error is not None else "")


@dataclass(frozen=True)
class SideListener:
    """A listening socket served beside the clients' (the metrics'): made
    before the jail, with its own protocol and backlog.  The server knows
    nothing more of it."""

    sock: socket.socket
    protocol_factory: Callable[[], asyncio.BaseProtocol]
    backlog: int


class Server:
    """The daemon's event loop work, around one Dispatch of requests:
    listening, the connections' shared state, master(8), housekeeping."""

    def __init__(self, dispatch: Dispatch, prng: Prng, caches: list[SessionCache],
                 ipc_timeout: int, request_size_limit: int, connection_limit: int,
                 client_buffer_limit: int, later_deadline: float = 1.0,
                 master: StatusChannel | None = None, watchdog: Watchdog | None = None,
                 tasks: Sequence[Callable[[], float | None]] = (),
                 connections: ConnectionTable | None = None):
        self.dispatch = dispatch
        self.prng = prng
        self.caches = caches
        # Housekeeping besides the PRNG's and the caches': each returns the
        # seconds until it is to run again (None: never).
        self.tasks = [prng.reseed, prng.update_exchange, *tasks]
        # Who may send control requests: root and mail_owner (the daemon
        # adds mail_owner's uid), and whoever the daemon runs as (serve()).
        self.control_uids = {0}
        self.ipc_timeout = ipc_timeout
        self.request_size_limit = request_size_limit
        # How long a request waiting on the network may take (connection.py).
        self.later_deadline = later_deadline
        stats = dispatch.stats             # what the requests are counted in too
        self.connections = (connections if connections is not None
                            else ConnectionTable(connection_limit, stats))
        self.memory = ClientMemory(client_buffer_limit, stats)
        self.master = master
        self._turn_due = False             # _after_turn() is on its way
        self._status_due = False           # _tell_master() is on its way
        self._commit_due = False           # _commit() is on its way
        self.watchdog = watchdog
        self.loop: asyncio.AbstractEventLoop         # from serve()
        self.exit_status: int | None = None
        self._stopped: asyncio.Event                 # from serve()
        self._listeners: list[asyncio.AbstractServer] = []
        self.side_listeners: list[SideListener] = []          # served from serve() on
        self._socket_paths: list[str] = []

    # Lifecycle.

    async def serve(self, sockets: Iterable[socket.socket],
                    remove_at_exit: Iterable[str] = ()) -> int:
        """Serve listening sockets until stopped; return the exit status.
        The socket files named in remove_at_exit go when the server does."""
        self.loop = asyncio.get_running_loop()
        self.memory.loop = self.loop
        shared = Shared(self.dispatch, self.dispatch.stats, self.loop,
                        self.connections, self.memory, self.served, self.active,
                        self.control_uids, self.ipc_timeout, self.request_size_limit,
                        self.later_deadline,
                        fastpath.answerer(self.dispatch, self.request_size_limit))
        self.loop.set_exception_handler(LoopErrorLog())
        self.control_uids.add(os.geteuid())        # after any privilege drop
        self._stopped = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.stop, 0)
        self._socket_paths = list(remove_at_exit)
        for sock in sockets:
            if sock.family == socket.AF_UNIX:
                server = await self.loop.create_unix_server(
                    lambda: Connection(shared), sock=sock, backlog=_ACCEPTS_PER_WAKEUP,
                    **_KEEP_SOCKET_FILE)
            else:
                server = await self.loop.create_server(
                    lambda: Connection(shared), sock=sock, backlog=_ACCEPTS_PER_WAKEUP)
            sock.listen(LISTEN_BACKLOG)
            self._listeners.append(server)
        for side in self.side_listeners:
            self._listeners.append(await self.loop.create_server(
                side.protocol_factory, sock=side.sock, backlog=_SIDE_ACCEPTS_PER_WAKEUP))
            side.sock.listen(side.backlog)
        if self.master is not None:
            # master(8) closes its end on "postfix stop/reload" or when it dies.
            self.master.attach(self.loop, self._master_gone)
        if self.watchdog is not None:
            self._pet_watchdog(self.watchdog)
        self._start_housekeeping()
        # What start-up made lives as long as the process: keep the cyclic
        # garbage collector from scanning it again and again.  Requests make
        # no cycles (their objects go by reference counting), so it may
        # also run less often.
        gc.freeze()
        gc.set_threshold(_GC_YOUNG_THRESHOLD, 50, 100)
        await self._stopped.wait()
        await self._shut_down()
        return self.exit_status or 0

    def served(self) -> None:
        """Requests were answered: master(8) is told within STATUS_WITHIN,
        once however many were answered meanwhile."""
        if not self._status_due:         # served() is on every request's path
            self._status_due = True
            self.loop.call_later(STATUS_WITHIN, self._tell_master)
        if not self._turn_due:
            self.active()

    def active(self) -> None:
        """An event: the time is mixed into the PRNG pool after this turn
        of the event loop, however many events it had, as the stock daemon
        does in its loop callback (tlsmgr_loop)."""
        if not self._turn_due:
            self._turn_due = True
            self.loop.call_soon(self._after_turn)

    def _after_turn(self) -> None:
        self._turn_due = False
        self.prng.mix_time()
        # Updates, cleanup and flushes leave writes held (stores/lmdb.py).
        # A loop, not any(): this runs at every turn, and a generator
        # costs as much again as the rest.
        if not self._commit_due:
            for cache in self.caches:
                if cache.store.uncommitted_writes:
                    self._commit_due = True
                    self.loop.call_later(COMMIT_WITHIN, self._event, self._commit)
                    break

    def _tell_master(self) -> None:
        self._status_due = False
        if self.master is not None:
            self.master.served()

    def _commit(self) -> None:
        self._commit_due = False
        for cache in self.caches:
            cache.commit()

    def _master_gone(self) -> None:
        # As the stock daemon: master(8) knows why, and says so if need be.
        if log.verbose:
            log.info("master disconnect -- exiting")
        self.master = None
        self.stop(0)

    def _pet_watchdog(self, watchdog: Watchdog) -> None:
        # Runs only while the loop turns: a stalled loop lets the alarm fire.
        watchdog.pet()
        self.loop.call_later(watchdog.timeout / 4, self._pet_watchdog, watchdog)

    def stop(self, status: int = 0) -> None:
        """End the process soon, with this exit status."""
        if self.exit_status is None:
            self.exit_status = status
        self._stopped.set()

    async def _shut_down(self) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
        for listener in self._listeners:
            listener.close()
        for connection in self.connections:
            connection.drop()
        for path in self._socket_paths:
            try:
                os.unlink(path)
            except OSError:
                pass
        try:
            self.prng.save()
        finally:
            for cache in self.caches:
                closing = cache.close()
                if closing is not None:
                    await closing

    # Housekeeping: each event mixes the time of day into the pool.

    def _start_housekeeping(self) -> None:
        for task in self.tasks:
            self._event(self._repeat, task)
        for cache in self.caches:
            self._event(self._start_cleanup, cache)

    def _event(self, action: Callable[..., None], *args: Any) -> None:
        try:
            action(*args)
        except MustExit:
            # The PRNG state is saved; pause so that master(8) does not
            # restart us in a tight loop, then exit to reopen the source.
            self.loop.call_later(1, self.stop, 0)
        self.active()

    def _repeat(self, task: Callable[[], float | None]) -> None:
        delay = task()
        if delay is not None:
            self.loop.call_later(delay, self._event, self._repeat, task)

    def _start_cleanup(self, cache: SessionCache) -> None:
        if not cache.cleanup_active:
            cache.start_cleanup()
            self.loop.call_soon(self._event, self._cleanup_step, cache)
        self.loop.call_later(cache.timeout, self._event, self._start_cleanup, cache)

    def _cleanup_step(self, cache: SessionCache) -> None:
        removed = cache.cleanup_step()
        if isinstance(removed, Later):          # a store on the network answers later
            removed.on_done(lambda done: self._event(
                self._cleanup_stepped, cache, done.result()))
        else:
            self._cleanup_stepped(cache, removed)

    def _cleanup_stepped(self, cache: SessionCache, removed: list[Entry]) -> None:
        if removed:
            # The man page's promise: the pool is updated with data from
            # the session cache entries.
            self.prng.mix(b"".join(entry.session for entry in removed))
        if cache.cleanup_active:
            self.loop.call_soon(self._event, self._cleanup_step, cache)
