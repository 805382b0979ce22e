"""The asyncio server: connections, timers and the process lifecycle.

Each connection gets the protocol handshake, then its requests are
decoded and answered as they arrive; any number of connections are served
at once and none waits for another.  Timers drive the housekeeping of the
stock daemon: PRNG reseeds and exchange-file updates at random intervals,
and per cache a cleanup pass once per cache timeout, run in small steps
between requests.  The time of day is mixed into the PRNG pool after every
event, as the stock daemon does.

No client can hold up another or grow the daemon without bound: a request
not whole within ipc_timeout is abandoned; at tlsmgr_connection_limit the
connection idle longest makes room; and tlsmgr_client_buffer_limit bounds
what all clients hold together (input not yet decoded, unfinished
requests, replies not read), closing the connection that has held its
bytes longest (docs/RELIABILITY.md).

SIGTERM (what master(8) sends on "postfix stop" and "postfix reload") and
SIGINT save the PRNG state and end the process with status 0.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import resource
import signal
import socket
import stat
import struct
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from . import log
from .attr import Decoder, Message, MessageTooLarge
from .control import Control
from .master import StatusChannel, Watchdog
from .prng import MustExit, Prng
from .protocol import HANDSHAKE, PROTOCOL_ERROR, Reply, Tlsmgr
from .scache import SessionCache
from .stats import Stats
from .stores import Entry

_GC_YOUNG_THRESHOLD = 50_000
_SLICE = 4096           # bytes of input decoded before their requests are answered
_REPLY_BATCH = 64       # replies made before they are written...
_REPLY_BYTES = 16384    # ...or this many bytes of them
_TRIM_AFTER = 4 << 20   # bytes of client buffers freed before memory goes back
_RESERVED_FILES = 64    # descriptors kept for caches, logging, Redis and the like
# What a request in a worker thread may take beyond the store's own timeout
# (tlsmgr_redis_timeout_ms): the thread's start, Python's own work.
WORKER_MARGIN = 0.05
_PEERCRED = struct.Struct("3i")      # struct ucred: pid, uid, gid
# Connections the kernel may queue before we accept them: as many as it
# allows (net.core.somaxconn, 4096 by default, caps this).  master(8)
# listens with about default_process_limit, and asyncio would listen again
# with 100: a burst of smtpd processes starting at once is larger.
LISTEN_BACKLOG = 65535
# Since Python 3.13, asyncio and uvloop remove a UNIX server's socket file
# when the server or the loop closes.  Under master(8) that file is master's
# private/tlsmgr, which master keeps and hands to the next process: without
# it every client is refused from the first "postfix reload" on.  (Stand-
# alone, the daemon removes its own socket file itself.)
_KEEP_SOCKET_FILE: dict[str, Any] = (
    {"cleanup_socket": False} if sys.version_info >= (3, 13) else {})


def peer_credentials(sock: socket.socket | None) -> tuple[int, int] | None:
    """(pid, uid) of a UNIX-domain peer; None for any other kind of socket."""
    if sock is None:
        return None
    try:
        pid, uid, _ = _PEERCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    except (AttributeError, OSError):
        return None
    return pid, uid


def peer_uid(sock: socket.socket | None) -> int | None:
    credentials = peer_credentials(sock)
    return None if credentials is None else credentials[1]


def describe_peer(sock: socket.socket | None) -> str:
    """'client pid N uid N' of a UNIX-domain peer, for our own warnings."""
    credentials = peer_credentials(sock)
    return "client" if credentials is None else "client pid %d uid %d" % credentials


_malloc_trim: Callable[[int], int] | None
try:                                    # glibc's; elsewhere memory stays with us
    _malloc_trim = ctypes.CDLL(None).malloc_trim
except (OSError, AttributeError):
    _malloc_trim = None


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
    (0600): the clients are Postfix processes running as mail_owner, who
    owns it when we start as root (owner is then mail_owner's uid and gid).
    """
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    umask = os.umask(0o177)           # private from the moment it exists
    try:
        sock.bind(path)
        if owner is not None:
            os.chown(path, *owner)
        sock.listen(LISTEN_BACKLOG)
    except OSError as err:
        sock.close()
        log.fatal("bind %s: %s", path, err.strerror)
    finally:
        os.umask(umask)
    return sock


def _log_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Errors the event loop meets on its own (accept(2) out of file
    descriptors, say): one warning line, never a traceback."""
    error = context.get("exception")
    log.warn("%s%s", context.get("message", "event loop error"),
             ": %s" % error if error is not None else "")


class Connection(asyncio.Protocol):
    """One client connection: a stream of requests, answered in order.

    What a client sends is decoded a slice at a time and answered before
    more is decoded, so that a flood of small requests costs no more memory
    than one slice of them.  A request that may wait on the network (a
    Redis cache) is answered in a worker thread; the requests after it on
    this connection wait for it, while other connections go on being served.
    """

    def __init__(self, server: Server):
        self.server = server
        self.decoder = Decoder(server.request_size_limit)
        self.transport: asyncio.Transport            # from connection_made()
        self.last_active = time.monotonic()
        self.request_started: float | None = None    # of a request not yet whole
        self.unread_since: float | None = None   # replies the client is not reading
        self.held = 0                      # bytes of both, held in memory
        self.idle_timer: asyncio.TimerHandle | None = None
        self.unread: bytes | memoryview = b""   # received, not yet decoded
        self.pending: deque[Message] = deque()
        self.in_worker: asyncio.Future[Reply] | None = None
        self.write_paused = False
        self.read_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream server's transports are read-write ones.
        self.transport = transport = cast(asyncio.Transport, transport)
        # May it send control requests (control.py)?  Asked once: the
        # peer's credentials are those it had when it connected.
        self.privileged = peer_uid(transport.get_extra_info("socket")) in \
            self.server.control_uids
        self.server.admit(self)
        transport.write(HANDSHAKE)
        self._arm_idle_timer(self.server.ipc_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.server.memory.hold(self, 0)
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        self._forget_input()               # whatever it left unanswered goes with it

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        # A master(8) trigger is a short NUL-terminated string that
        # arrives alone, not an attribute list (the stock daemon's test).
        if (len(data) <= 2 and data.endswith(b"\0") and self.decoder.idle
                and not self.pending):
            self._send([self.server.tlsmgr.handle_trigger(data[:-1])])
            return
        self.unread = data
        self._serve()

    def _serve(self) -> None:
        """Decode and answer until all that came is answered, a request
        waits on a worker, or the client stops reading its replies.  A
        client that sent much at once gets one slice of it answered per
        turn of the event loop, so that others are served in between."""
        transport = self.transport
        if transport.is_closing():
            return
        server = self.server
        tlsmgr = server.tlsmgr
        may_block = tlsmgr.blocking if tlsmgr.any_blocking else None
        pending = self.pending
        replies = []
        reply_bytes = 0
        sliced = False
        while self.in_worker is None and not self.write_paused:
            if pending:
                message = pending.popleft()
                if may_block is not None and may_block(message):
                    self._to_worker(message)
                else:
                    reply = tlsmgr.handle(message, self)
                    replies.append(reply)
                    if reply.close:              # nothing after a hang-up
                        break
                    reply_bytes += len(reply.data)
                    if len(replies) == _REPLY_BATCH or reply_bytes >= _REPLY_BYTES:
                        # Written now, so that a client not reading them
                        # pauses us (pause_writing) before more are made.
                        self._send(replies)
                        replies, reply_bytes = [], 0
            elif self.unread:
                if sliced:
                    server.loop.call_soon(self._serve)      # the next slice, later
                    break
                sliced = True
                data = self.unread
                if len(data) <= _SLICE:
                    data, self.unread = bytes(data), b""
                else:
                    view = memoryview(data)
                    data, self.unread = bytes(view[:_SLICE]), view[_SLICE:]
                decoder = self.decoder
                try:
                    pending.extend(decoder.feed(data))
                except MessageTooLarge as err:
                    self._refuse(err)
                    return
                idle = decoder.idle
                if idle:
                    self.request_started = None
                elif self.request_started is None:
                    self.request_started = self.last_active
                if (self.held or self.unread or not idle) and self._account():
                    return                          # closed, to make room for others
            else:
                break
        if replies:
            self._send(replies)
            server.served()
        if self.read_paused or self.write_paused or self.in_worker is not None \
                or self.unread:
            self._update_reading()
        server.prng.mix_time()

    def _refuse(self, err: MessageTooLarge) -> None:
        self.server.stats.errors["oversized"] += 1
        if err.unit == "bytes":
            why = "exceeds tlsmgr_request_size_limit (%d bytes)" % err.limit
        else:
            why = "has more than %d attributes" % err.limit
        log.warn("%s: request %s -- closing connection", self.peer(), why)
        self._forget_input()
        self._account()
        self.transport.write(PROTOCOL_ERROR)
        self.transport.close()

    # A request that may wait on the network goes to a worker thread, and is
    # answered when the worker is done or at the worker deadline, whichever
    # comes first: whatever the network and the client library do, no
    # client waits longer.  A worker that answers after that is ignored.
    def _to_worker(self, message: Message) -> None:
        server = self.server
        future = server.loop.run_in_executor(server.workers, server.tlsmgr.handle,
                                             message, self)
        self.in_worker = future
        late = server.loop.call_later(server.worker_deadline, self._worker_late,
                                      future, message)
        future.add_done_callback(lambda done: self._worker_done(done, late))

    def _worker_done(self, future: asyncio.Future[Reply], late: asyncio.TimerHandle) -> None:
        late.cancel()
        if future.cancelled() or future is not self.in_worker:
            return                   # shutting down, or answered at the deadline
        self._worker_answered(future.result())

    def _worker_late(self, future: asyncio.Future[Reply], message: Message) -> None:
        if future is self.in_worker:
            self._worker_answered(self.server.late_reply(message, self))

    def _worker_answered(self, reply: Reply) -> None:
        self.in_worker = None
        if self.transport.is_closing():
            return
        self._send([reply])
        self.server.served()
        self._serve()

    def _send(self, replies: list[Reply]) -> None:
        if len(replies) == 1:            # the usual case: one request, one reply
            out, close = replies[0].data, replies[0].close
        else:
            out = b"".join(reply.data for reply in replies)
            close = any(reply.close for reply in replies)
        if out:
            self.transport.write(out)
        if close:
            self.transport.close()

    # Flow control: a client that does not read its replies is not read
    # from either, so its replies cannot pile up in memory; nor is one
    # whose request is in a worker thread.
    def pause_writing(self) -> None:
        self.write_paused = True
        self.unread_since = time.monotonic()
        self._account()
        self._update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.unread_since = None
        self._account()
        if self.pending or self.unread:
            self._serve()
        else:
            self._update_reading()

    def _update_reading(self) -> None:
        # Nor is one whose earlier input is still being answered.
        paused = self.write_paused or self.in_worker is not None or bool(self.unread)
        if paused != self.read_paused and not self.transport.is_closing():
            self.read_paused = paused
            if paused:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def peer(self) -> str:
        return describe_peer(self.transport.get_extra_info("socket"))

    def drop(self) -> None:
        """Close the connection now, and free what it holds now rather than
        when the event loop gets round to connection_lost()."""
        self._forget_input()
        self.transport.abort()

    def _forget_input(self) -> None:
        self.unread = b""
        self.pending.clear()
        self.decoder = Decoder(self.server.request_size_limit)

    def _account(self) -> bool:
        """Tell the server what this client holds: what it sent that is not
        yet decoded, its unfinished request, and the replies it has not read
        (once it stops reading them).  True if that got it closed."""
        held = self.decoder.held + len(self.unread)
        if self.write_paused:
            held += self.transport.get_write_buffer_size()
        if held != self.held:
            self.server.memory.hold(self, held)
        return self.transport.is_closing()

    @property
    def stuck_since(self) -> float:
        """Since when this client has kept us holding bytes for it."""
        return min(t for t in (self.request_started, self.unread_since, time.monotonic())
                   if t is not None)

    # Deadlines: a connection that sends nothing for ipc_timeout, or whose
    # request is not whole ipc_timeout after it began, is closed.  Only
    # that client waited: everyone else was served meanwhile.
    def _arm_idle_timer(self, delay: float) -> None:
        self.idle_timer = self.server.loop.call_later(delay, self._deadline_check)

    def _deadline_check(self) -> None:
        now = time.monotonic()
        timeout = self.server.ipc_timeout
        since = self.last_active if self.request_started is None else self.request_started
        if now - since < timeout:
            self._arm_idle_timer(since + timeout - now)
        elif self.request_started is None:
            self.server.stats.errors["idle_timeout"] += 1
            log.warn("timeout while waiting for data from %s -- closing connection",
                     self.peer())
            self.transport.close()
        else:
            self.server.stats.errors["request_timeout"] += 1
            log.warn("%s: request not complete after %d seconds (ipc_timeout)"
                     " -- closing connection", self.peer(), timeout)
            self.transport.close()


class ClientMemory:
    """What all clients hold together: input not yet decoded, unfinished
    requests, replies not read (Connection.held).  Past
    tlsmgr_client_buffer_limit, the connections that have held theirs
    longest are closed until the rest fits.  Once much of it is freed, the
    memory goes back to the system."""

    def __init__(self, limit: int, stats: Stats):
        self.limit = limit
        self.stats = stats
        self.loop: asyncio.AbstractEventLoop        # from Server.serve()
        self.held = 0                      # for all connections
        self._holders: OrderedDict[Connection, None] = OrderedDict()   # held > 0
        self._peak = 0                     # since memory last went back
        self._trim_pending = False
        self._warning = log.RateLimitedWarning()

    def hold(self, connection: Connection, held: int) -> None:
        """Account for the bytes held for a connection; close the longest
        holders while all of them are past the limit."""
        self.held += held - connection.held
        connection.held = held
        if held:
            self._holders.setdefault(connection)        # kept in the order they began
        else:
            self._holders.pop(connection, None)
        if self.held > self._peak:
            self._peak = self.held
        elif self._peak - self.held > _TRIM_AFTER and not self._trim_pending:
            self._trim_pending = True
            self.loop.call_later(1, self._give_back)
        while self.held > self.limit:
            oldest, _ = self._holders.popitem(last=False)
            self._warning(
                "clients' unfinished requests and unread replies take %d bytes, over "
                "tlsmgr_client_buffer_limit (%d): closing the connection of %s, which "
                "has held %d bytes for %.0f seconds", self.held, self.limit,
                oldest.peer(), oldest.held, time.monotonic() - oldest.stuck_since)
            self.held -= oldest.held
            oldest.held = 0
            self.stats.errors["buffer_limit"] += 1
            oldest.drop()

    def _give_back(self) -> None:
        # Client buffers are large, short-lived and interleaved with small
        # objects, so the C heap cannot shrink by itself once they are freed.
        self._trim_pending = False
        self._peak = self.held
        if _malloc_trim is not None:
            _malloc_trim(0)


class Server:
    """The daemon's event loop work, around one Tlsmgr request handler."""

    def __init__(self, tlsmgr: Tlsmgr, prng: Prng, caches: list[SessionCache],
                 ipc_timeout: int, request_size_limit: int, connection_limit: int,
                 client_buffer_limit: int, worker_deadline: float = 1.0,
                 master: StatusChannel | None = None, watchdog: Watchdog | None = None):
        self.tlsmgr = tlsmgr
        self.prng = prng
        self.caches = caches
        # Who may send control requests: root and mail_owner (the daemon
        # adds mail_owner's uid), and whoever the daemon runs as (serve()).
        self.control_uids = {0}
        tlsmgr.control = Control(self)
        self.stats = tlsmgr.stats          # what the request handler counts too
        self.ipc_timeout = ipc_timeout
        self.request_size_limit = request_size_limit
        self.connection_limit = connection_limit
        # How long a request in a worker thread may take (see Connection).
        self.worker_deadline = worker_deadline
        self._late_warning = log.RateLimitedWarning()
        self.memory = ClientMemory(client_buffer_limit, self.stats)
        self._full_warning = log.RateLimitedWarning()
        self.master = master
        self._status_due = False           # a status message to master is on its way
        self.watchdog = watchdog
        # For requests that may wait on the network; threads start on demand.
        self.workers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="tlsmgr-worker")
        self.connections: set[Connection] = set()
        self.loop: asyncio.AbstractEventLoop         # from serve()
        self.exit_status: int | None = None
        self._stopped: asyncio.Event                 # from serve()
        self._listeners: list[asyncio.AbstractServer] = []
        self._socket_paths: list[str] = []

    def admit(self, connection: Connection) -> None:
        """Count a new connection in; at the connection limit, first close
        the one that has been idle longest (a stalled client, or one that
        would reconnect), so that no set of clients can lock others out."""
        if len(self.connections) >= self.connection_limit:
            oldest = min(self.connections, key=lambda c: c.last_active)
            self.stats.errors["connection_limit"] += 1
            self._full_warning(
                "connection limit %d reached (tlsmgr_connection_limit): closing the "
                "connection of %s, idle for %.0f seconds", self.connection_limit,
                oldest.peer(), time.monotonic() - oldest.last_active)
            oldest.drop()
            self.connections.discard(oldest)
        self.connections.add(connection)
        self.stats.accepted += 1

    def late_reply(self, message: Message, connection: Connection) -> Reply:
        """The reply to a request whose worker did not answer by the deadline."""
        self.stats.errors["store_timeout"] += 1
        request = message[0][1].decode(errors="replace")
        self._late_warning(
            "%s request of %s not answered by the session store within %.0f ms "
            "(tlsmgr_redis_timeout_ms + %d ms): answered as failed", request,
            connection.peer(), self.worker_deadline * 1000, WORKER_MARGIN * 1000)
        return self.tlsmgr.unanswered(message)

    # Lifecycle.

    async def serve(self, sockets: Iterable[socket.socket],
                    remove_at_exit: Iterable[str] = ()) -> int:
        """Serve listening sockets until stopped; return the exit status.
        The socket files named in remove_at_exit go when the server does."""
        self.loop = asyncio.get_running_loop()
        self.memory.loop = self.loop
        self.loop.set_exception_handler(_log_loop_error)
        self.control_uids.add(os.geteuid())        # after any privilege drop
        self._stopped = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.stop, 0)
        self._socket_paths = list(remove_at_exit)
        for sock in sockets:
            if sock.family == socket.AF_UNIX:
                server = await self.loop.create_unix_server(
                    lambda: Connection(self), sock=sock, backlog=LISTEN_BACKLOG,
                    **_KEEP_SOCKET_FILE)
            else:
                server = await self.loop.create_server(
                    lambda: Connection(self), sock=sock, backlog=LISTEN_BACKLOG)
            self._listeners.append(server)
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
        """Tell master(8) that requests were served, as Postfix's servers
        do around each request: once per turn of the event loop, however
        many connections it served."""
        if self.master is not None and not self._status_due:
            self._status_due = True
            self.loop.call_soon(self._tell_master)

    def _tell_master(self) -> None:
        self._status_due = False
        if self.master is not None:
            self.master.served()

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
        self.workers.shutdown(wait=False, cancel_futures=True)
        for listener in self._listeners:
            listener.close()
        for connection in list(self.connections):
            connection.transport.abort()
        for path in self._socket_paths:
            try:
                os.unlink(path)
            except OSError:
                pass
        try:
            self.prng.save()
        finally:
            for cache in self.caches:
                cache.close()

    # Housekeeping: each event mixes the time of day into the pool.

    def _start_housekeeping(self) -> None:
        self._event(self._reseed)
        self._event(self._update_exchange)
        for cache in self.caches:
            self._event(self._start_cleanup, cache)

    def _event(self, action: Callable[..., None], *args: Any) -> None:
        try:
            action(*args)
        except MustExit:
            # The PRNG state is saved; pause so that master(8) does not
            # restart us in a tight loop, then exit to reopen the source.
            self.loop.call_later(1, self.stop, 0)
        self.prng.mix_time()

    def _reseed(self) -> None:
        delay = self.prng.reseed()
        if delay is not None:
            self.loop.call_later(delay, self._event, self._reseed)

    def _update_exchange(self) -> None:
        delay = self.prng.update_exchange()
        if delay is not None:
            self.loop.call_later(delay, self._event, self._update_exchange)

    def _start_cleanup(self, cache: SessionCache) -> None:
        if not cache.cleanup_active:
            cache.start_cleanup()
            self.loop.call_soon(self._event, self._cleanup_step, cache)
        self.loop.call_later(cache.timeout, self._event, self._start_cleanup, cache)

    def _cleanup_step(self, cache: SessionCache) -> None:
        if cache.store.blocking:
            # A remote store's step waits on the network: not in the loop.
            step = self.loop.run_in_executor(self.workers, cache.cleanup_step)
            step.add_done_callback(lambda done: self._event(
                self._cleanup_stepped, cache, done.result()))
        else:
            self._cleanup_stepped(cache, cache.cleanup_step())

    def _cleanup_stepped(self, cache: SessionCache, removed: list[Entry]) -> None:
        if removed:
            # The man page's promise: the pool is updated with data from
            # the session cache entries.
            self.prng.mix(b"".join(entry.session for entry in removed))
        if cache.cleanup_active:
            self.loop.call_soon(self._event, self._cleanup_step, cache)
