"""One client connection: its input, its deadlines, its flow control.

Three parts, so that each can be read, and tested, alone:

* ``Input``, without I/O: what the client sent that is not answered yet
  (bytes not decoded, requests decoded, when the unfinished one began),
  decoded a slice at a time; what it holds in memory; which deadline, if
  any, it has passed.  Tests drive it with bytes and times.
* ``FlowControl``: whether we read from the client and whether we may
  write to it, as the transport tells us (uvicorn's FlowControl).
* ``Connection``, the asyncio protocol that joins them to a transport and
  to ``Shared``, the little the connections share of the server.

A read that is one whole common request, arriving between requests, is
first offered to the compiled path (fastpath.py), which answers it in one
call or leaves it untouched to the rest of this module.

A request that waits on the network (a Redis cache) is answered when
Redis answers, on the event loop (pending.py), or failed at a deadline;
the requests after it on this connection wait for it, while other
connections go on being served.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from typing import cast

from ..observe.stats import Stats
from ..service.fastpath import Answer
from ..service.protocol import HANDSHAKE, PROTOCOL_ERROR, Dispatch, Reply
from ..util import log
from ..util.pending import Later
from ..wire.attr import Decoder, Message, MessageTooLarge
from .limits import ClientMemory, ConnectionTable

SLICE = 4096            # bytes of input decoded before their requests are answered
_REPLY_BATCH = 64       # replies made before they are written...
_REPLY_BYTES = 16384    # ...or this many bytes of them
# What a request waiting on the network may take beyond the store's own
# timeout (tlsmgr_redis_timeout_ms): a pipeline ahead of its own, the
# loop's other work.
LATER_MARGIN = 0.05
_PEERCRED = struct.Struct("3i")      # struct ucred: pid, uid, gid

IDLE_TIMEOUT = "idle_timeout"          # nothing sent for ipc_timeout
REQUEST_TIMEOUT = "request_timeout"    # a request not whole after ipc_timeout


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


def describe_peer(sock: socket.socket | None) -> str:
    """'client pid N uid N' of a UNIX-domain peer, for our own warnings."""
    credentials = peer_credentials(sock)
    return "client" if credentials is None else "client pid %d uid %d" % credentials


@dataclass(eq=False)
class Shared:
    """All that connections share, and all they may touch of the server."""

    dispatch: Dispatch
    stats: Stats
    loop: asyncio.AbstractEventLoop
    connections: ConnectionTable
    memory: ClientMemory
    served: Callable[[], None]         # requests were answered (for master(8)),
    active: Callable[[], None]         # or input came (the PRNG mixes the time after)
    control_uids: Container[int]       # whose connections may send control requests
    ipc_timeout: int
    request_size_limit: int
    later_deadline: float              # seconds a request on the network may take
    answer: Answer | None = None       # the compiled path (fastpath.py), if built
    late_warning: log.RateLimitedWarning = field(default_factory=log.RateLimitedWarning)
    # A client's oversized request or timeout: as protocol.py's warnings of
    # its bad requests, a hundred, then ten a second.
    client_warning: log.RateLimitedWarning = field(
        default_factory=lambda: log.RateLimitedWarning(interval=0.1, burst=100))


class Input:
    """What a client sent that is not answered yet.  No I/O, no clock:
    the caller says what arrived and when."""

    __slots__ = ("decoder", "last_active", "pending", "request_started", "unread")

    def __init__(self, size_limit: int, now: float):
        self.decoder = Decoder(size_limit)
        self.unread: bytes | memoryview = b""      # received, not yet decoded
        self.pending: deque[Message] = deque()     # decoded, not yet answered
        self.last_active = now                     # when the client last sent
        self.request_started: float | None = None  # of a request not yet whole

    def receive(self, data: bytes, now: float) -> bool:
        """Take what arrived; False if it is a master(8) trigger (a short
        NUL-terminated string that arrives alone, not an attribute list:
        the stock daemon's test), which is not input."""
        self.last_active = now
        if len(data) <= 2 and data.endswith(b"\0") and self.decoder.idle \
                and not self.pending:
            return False
        self.unread = data
        return True

    def decode_slice(self) -> bool:
        """Decode the next SLICE bytes into pending requests; True if that
        ended at a message boundary.  Raises MessageTooLarge (the input is
        then to be forgotten)."""
        data = self.unread
        if len(data) > SLICE:
            view = memoryview(data)
            data, self.unread = bytes(view[:SLICE]), view[SLICE:]
        else:
            self.unread = b""
            if type(data) is not bytes:         # the last of a larger input
                data = bytes(data)
        decoder = self.decoder
        self.pending.extend(decoder.feed(data))
        if decoder.idle:
            self.request_started = None
            return True
        if self.request_started is None:
            self.request_started = self.last_active
        return False

    @property
    def held(self) -> int:
        """Bytes held for it: not yet decoded, and of the unfinished request."""
        return self.decoder.held + len(self.unread)

    def drop_all(self) -> None:
        """Drop all of it: the connection is closing."""
        self.unread = b""
        self.pending.clear()
        self.decoder = Decoder(self.decoder.max_size)

    def overdue(self, now: float, timeout: float) -> tuple[str | None, float]:
        """Which deadline has passed (IDLE_TIMEOUT, REQUEST_TIMEOUT), or
        None and the seconds until the next one."""
        if self.request_started is None:
            since, late = self.last_active, IDLE_TIMEOUT
        else:
            since, late = self.request_started, REQUEST_TIMEOUT
        left = since + timeout - now
        return (late, 0.0) if left <= 0 else (None, left)


class FlowControl:
    """A client that does not read its replies is not read from either,
    so that its replies cannot pile up in memory."""

    __slots__ = ("read_paused", "transport", "unread_since", "write_paused")

    def __init__(self, transport: asyncio.Transport):
        self.transport = transport
        self.write_paused = False          # the transport asked us to stop writing
        self.read_paused = False           # we asked the transport to stop reading
        self.unread_since: float | None = None   # replies the client is not reading

    def writing(self, paused: bool, now: float) -> None:
        self.write_paused = paused
        self.unread_since = now if paused else None

    def reading(self, paused: bool) -> None:
        if paused != self.read_paused and not self.transport.is_closing():
            self.read_paused = paused
            if paused:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    @property
    def unread_replies(self) -> int:
        """Bytes of replies held for a client that stopped reading them."""
        return self.transport.get_write_buffer_size() if self.write_paused else 0


class Connection(asyncio.Protocol):
    """A stream of requests, answered in order.

    What a client sends is decoded a slice at a time and answered before
    more is decoded, so that a flood of small requests costs no more memory
    than one slice of them; a client that sent much at once gets one slice
    answered per turn of the event loop, so that others are served between.
    """

    def __init__(self, shared: Shared):
        self.shared = shared
        self.input = Input(shared.request_size_limit, time.monotonic())
        self.transport: asyncio.Transport            # from connection_made()
        self.flow: FlowControl                       # from connection_made()
        self.privileged = False
        # Nothing of this client's is unanswered, held or paused: a read
        # that is one whole request may go to the compiled path.
        self.between_requests = True
        self.write: Callable[[bytes], object]        # the transport's, from connection_made()
        self.held = 0                      # bytes held for it, as ClientMemory knows
        self.idle_timer: asyncio.TimerHandle | None = None
        self.waiting: Later[bytes] | None = None   # a reply to come

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream server's transports are read-write ones.
        self.transport = transport = cast(asyncio.Transport, transport)
        self.flow = FlowControl(transport)
        self.write = transport.write
        # May it send control requests (control.py)?  Asked once: the
        # peer's credentials are those it had when it connected.
        credentials = peer_credentials(transport.get_extra_info("socket"))
        self.privileged = credentials is not None and \
            credentials[1] in self.shared.control_uids
        self.shared.connections.admit(self)
        transport.write(HANDSHAKE)
        self._arm_idle_timer(self.shared.ipc_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.shared.connections.discard(self)
        self.held = 0
        self.shared.memory.hold(self, 0)
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        self.input.drop_all()              # whatever it left unanswered goes with it

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        shared = self.shared
        if self.between_requests and shared.answer is not None \
                and shared.answer(data, self.write, now):
            self.input.last_active = now
            shared.served()
            return
        self.between_requests = False          # until _serve() has answered all
        if self.input.receive(data, now):
            self._serve()
        else:
            self._send([shared.dispatch.handle_trigger(data[:-1])])

    def _serve(self) -> None:
        """Decode and answer until all that came is answered, a request
        waits on the network, or the client stops reading its replies."""
        transport = self.transport
        if transport.is_closing():
            return
        shared = self.shared
        dispatch = shared.dispatch
        flow = self.flow
        client_input = self.input
        pending = client_input.pending
        replies: list[Reply] = []
        answered: list[Message] = []       # for the latency figures
        reply_bytes = 0
        sliced = False
        while self.waiting is None and not flow.write_paused:
            if pending:
                message = pending.popleft()
                reply = dispatch.handle(message, self)
                if reply.later is not None:
                    # What came before goes first.
                    if replies:
                        self._send(replies)
                        shared.stats.replied(answered, client_input.last_active,
                                             time.monotonic())
                        replies, answered, reply_bytes = [], [], 0
                    self._wait_for(reply.later, message, reply.control)
                else:
                    replies.append(reply)
                    answered.append(message)
                    if reply.close:              # nothing after a hang-up
                        break
                    reply_bytes += len(reply.data)
                    if len(replies) == _REPLY_BATCH or reply_bytes >= _REPLY_BYTES:
                        # Written now, so that a client not reading them
                        # pauses us (pause_writing) before more are made.
                        self._send(replies)
                        shared.stats.replied(answered, client_input.last_active,
                                             time.monotonic())
                        replies, answered, reply_bytes = [], [], 0
            elif client_input.unread:
                if sliced:
                    shared.loop.call_soon(self._serve)      # the next slice, later
                    break
                sliced = True
                try:
                    idle = client_input.decode_slice()
                except MessageTooLarge as err:
                    self._refuse(err)
                    return
                if (self.held or client_input.unread or not idle) and self._account():
                    return                          # closed, to make room for others
            else:
                break
        if replies:
            self._send(replies)
            shared.stats.replied(answered, client_input.last_active, time.monotonic())
            shared.served()
        else:
            shared.active()
        if flow.read_paused or flow.write_paused or self.waiting is not None \
                or client_input.unread:
            self._update_reading()
        self.between_requests = self.waiting is None and not flow.write_paused \
            and not pending and not client_input.unread and client_input.decoder.idle \
            and not transport.is_closing()

    def _refuse(self, err: MessageTooLarge) -> None:
        self.shared.stats.errors["oversized"] += 1
        if err.unit == "bytes":
            why = "exceeds tlsmgr_request_size_limit (%d bytes)" % err.limit
        else:
            why = "has more than %d attributes" % err.limit
        self.shared.client_warning("%s: request %s -- closing connection", self.peer(), why)
        self.input.drop_all()
        self._account()
        self.transport.write(PROTOCOL_ERROR)
        self.transport.close()

    # A request waiting on the network is answered when its reply comes,
    # or at the deadline, whichever is first: whatever the network and
    # the client library do, no client waits longer.  A reply that comes
    # after the deadline is ignored.  A control request's deadline is
    # ipc_timeout, Postfix's bound on an exchange with a daemon: it may
    # take many steps, each bounded by the store's.
    def _wait_for(self, later: Later[bytes], message: Message, control: bool) -> None:
        shared = self.shared
        self.waiting = later
        late = shared.loop.call_later(self._deadline(control)[0], self._late, later, message,
                                      control)
        since = self.input.last_active
        later.on_done(lambda done: self._came(done, late, message, since))

    def _came(self, later: Later[bytes], late: asyncio.TimerHandle,
              message: Message, since: float) -> None:
        late.cancel()
        if later is not self.waiting:
            return                   # answered at the deadline
        error = later.error()
        self._answered_later(Reply(later.result() if error is None else
                                   self.shared.dispatch.failure(message[0][1], error)),
                             message, since)

    def _deadline(self, control: bool) -> tuple[float, str]:
        """How long a request may wait on the network, and that in words."""
        if control:
            return self.shared.ipc_timeout, "%d seconds (ipc_timeout)" % self.shared.ipc_timeout
        deadline = self.shared.later_deadline
        return deadline, "%.0f ms (tlsmgr_redis_timeout_ms + %d ms)" % (deadline * 1000,
                                                                       LATER_MARGIN * 1000)

    def _late(self, later: Later[bytes], message: Message, control: bool) -> None:
        if later is not self.waiting:
            return
        shared = self.shared
        deadline, bound = self._deadline(control)
        since = time.monotonic() - deadline
        shared.stats.errors["store_timeout"] += 1
        request = message[0][1].decode(errors="replace")
        shared.late_warning("%s request of %s not answered by the session store within %s: "
                            "answered as failed", request, self.peer(), bound)
        self._answered_later(shared.dispatch.unanswered(message), message, since)

    def _answered_later(self, reply: Reply, message: Message, since: float) -> None:
        self.waiting = None
        if self.transport.is_closing():
            return
        self._send([reply])
        self.shared.stats.replied([message], since, time.monotonic())
        self.shared.served()
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

    # Flow control (asyncio's callbacks): a client whose replies wait is
    # not read from; nor is one whose request waits on the network, nor
    # one whose earlier input is still being answered.
    def pause_writing(self) -> None:
        self.between_requests = False
        self.flow.writing(True, time.monotonic())
        self._account()
        self._update_reading()

    def resume_writing(self) -> None:
        self.flow.writing(False, time.monotonic())
        self._account()
        if self.input.pending or self.input.unread:
            self._serve()
        else:
            self._update_reading()

    def _update_reading(self) -> None:
        self.flow.reading(self.flow.write_paused or self.waiting is not None
                          or bool(self.input.unread))

    def peer(self) -> str:
        return describe_peer(self.transport.get_extra_info("socket"))

    @property
    def last_active(self) -> float:
        return self.input.last_active

    @property
    def stuck_since(self) -> float:
        """Since when this client has kept us holding bytes for it."""
        return min(t for t in (self.input.request_started, self.flow.unread_since,
                               time.monotonic()) if t is not None)

    def drop(self) -> None:
        """Close the connection now, and free what it holds now rather than
        when the event loop gets round to connection_lost()."""
        self.held = 0
        self.input.drop_all()
        self.transport.abort()

    def _account(self) -> bool:
        """Tell the client memory what this client holds: its input, and
        the replies it has not read once it stops reading them.  True if
        that got it closed."""
        held = self.input.held + self.flow.unread_replies
        if held != self.held:
            self.held = held
            self.shared.memory.hold(self, held)
        return self.transport.is_closing()

    # Deadlines: a connection that sends nothing for ipc_timeout, or whose
    # request is not whole ipc_timeout after it began, is closed.  Only
    # that client waited: everyone else was served meanwhile.
    def _arm_idle_timer(self, delay: float) -> None:
        self.idle_timer = self.shared.loop.call_later(delay, self._deadline_check)

    def _deadline_check(self) -> None:
        timeout = self.shared.ipc_timeout
        overdue, left = self.input.overdue(time.monotonic(), timeout)
        if overdue is None:
            self._arm_idle_timer(left)
            return
        shared = self.shared
        shared.stats.errors[overdue] += 1
        if overdue == IDLE_TIMEOUT:
            shared.client_warning("timeout while waiting for data from %s -- closing "
                                  "connection", self.peer())
        else:
            shared.client_warning("%s: request not complete after %d seconds (ipc_timeout)"
                                  " -- closing connection", self.peer(), timeout)
        self.transport.close()
