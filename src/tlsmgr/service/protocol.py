"""The message layer: a decoded message in, the reply out.

This is the stock daemon's tlsmgr_service() without the I/O and without
the requests' own work (handlers.py, control.py): each request reads its
attributes in a fixed order, as Postfix's attr_scan() does with
ATTR_FLAG_STRICT (Scanner), and is answered with the same attributes, in
the same order, with the same status codes and warnings.

Where the stock daemon loses step with its client, this one does not: a
whole message is always consumed, so the next request on a connection is
read from its start.  Two deliberate differences follow from that:

* an unknown request name is answered with status -2 (the stock daemon
  sends nothing and the client waits until its timeout);
* after a protocol error the connection stays usable (the stock daemon
  reads the rest of the bad message as the next request).

Dispatch counts requests by name and errors by kind (in the daemon's one
Stats record, stats.py, which the server counts in too), and hands the
administrator's requests (control.py) to Control, for privileged clients
only.  Warnings about what clients send are rate-limited after a burst,
so that no client can flood the log.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

from ..observe.stats import Stats
from ..util import log
from ..util.pending import Later, MaybeLater
from ..wire.attr import Message, Value, encode
from ..wire.requests import (
    REQUEST,
    STAT_ERR,
    STAT_FAIL,
    STAT_OK,
    Wanted,
    failed_reply,
)

if TYPE_CHECKING:
    from .control import Control
    from .handlers import ClientRequests

HANDSHAKE = encode([("protocol", "tlsmgr_protocol")])
WAKEUP = b"W"        # master(8)'s trigger

_UNPRINTABLE = re.compile(rb"[^\x20-\x7e]")


def printable(text: bytes) -> str:
    """Text for a log line: non-printable bytes become '?' (printable(3))."""
    return _UNPRINTABLE.sub(b"?", text).decode("ascii")


class Reply:
    """What to send back, and whether to close the connection after; or,
    for a request that waits on the network, what to send later (when it
    fails, Dispatch.failure() gives the reply).  A control request's later
    answer may take longer than a Postfix client's (a flush of a Redis
    cache of millions takes seconds, in bounded steps): it is bounded by
    ipc_timeout, not by the store's deadline."""

    __slots__ = ("close", "control", "data", "later")

    def __init__(self, data: bytes = b"", close: bool = False,
                 later: Later[bytes] | None = None, control: bool = False):
        self.data = data
        self.close = close
        self.later = later
        self.control = control


NO_REPLY = Reply()

class BadRequest(Exception):
    """A request that cannot be answered as asked: status -2, the reason
    already logged.  ``extras`` replaces the reply's usual attributes."""

    def __init__(self, extras: list[tuple[str, Value]] | None = None):
        super().__init__()
        self.extras = extras


HANG_UP = Reply(close=True)


# Replies, built directly: they are on every request's path.
STATUS_REPLIES = {status: encode([("status", status)])
                  for status in (STAT_OK, STAT_ERR, STAT_FAIL)}
# The whole reply to a message that cannot be a request at all.
PROTOCOL_ERROR = STATUS_REPLIES[STAT_FAIL]


class Requester(Protocol):
    """What a request handler may know of the connection a request came on."""

    privileged: bool             # may send control requests (control.py)

    def peer(self) -> str:
        """Who it is, for log lines."""


Handler = Callable[[Message], "MaybeLater[bytes]"]


class Scanner:
    """Reads a request's attributes as the request table says, and warns
    about what a client sent wrong, as the stock daemon does: counted, and
    rate-limited (a hundred warnings as they come, then ten a second), for
    a client may cause them at will."""

    def __init__(self, socket_name: str, stats: Stats):
        # Where requests come from, as the stock daemon's warnings name it.
        self.socket_name = socket_name
        self.stats = stats
        self.warn = log.RateLimitedWarning(interval=0.1, burst=100)

    def client_error(self, text: str, *args: object) -> None:
        self.stats.errors["protocol"] += 1
        self.warn(text, *args)

    def scan(self, message: Message, start: int, wanted: Wanted,
             more: bool = False) -> list[Any]:
        """The wanted attributes of message[start:], read in order; raises
        BadRequest when one is missing, out of place or malformed.

        The warnings and the outcome are those of attr_scan0() with
        ATTR_FLAG_STRICT.  Attributes after the wanted ones are reported
        but, as in Postfix, do not fail the request.
        """
        values: list[Any] = []
        for index, (name, (convert, malformed, _)) in enumerate(wanted, start):
            if index >= len(message):
                self.client_error("missing attribute %s in input from %s", name.decode(),
                                  self.socket_name)
                raise BadRequest
            got_name, value = message[index]
            if got_name != name:
                self.client_error("unexpected attribute %s from %s (expecting: %s)",
                                  printable(got_name), self.socket_name, name.decode())
                raise BadRequest
            if convert is not None:
                value = convert(value)
                if value is None:
                    self.client_error("malformed %s data from %s while reading input "
                                      "attribute value: %.100s", malformed,
                                      self.socket_name, printable(message[index][1]))
                    raise BadRequest
            values.append(value)
        end = start + len(wanted)
        if not more and end < len(message):
            self.client_error("unexpected attribute %s from %s (expecting: (list "
                              "terminator))", printable(message[end][0]), self.socket_name)
        return values


class Dispatch:
    """The message layer: each request to its handler, the control requests
    for privileged clients only; counted; any failure made a reply."""

    def __init__(self, scanner: Scanner, client: ClientRequests, control: Control | None):
        self.scanner = scanner
        self.client = client
        self.stats = scanner.stats
        self._handlers = client.handlers()
        self._control = control.handlers() if control is not None else {}
        self.stats.known_requests([*self._handlers, *self._control])

    def handle(self, message: Message, client: Requester | None = None) -> Reply:
        """Answer one complete request message.  Never raises: a failure
        inside a request is logged and answered with status -2.

        ``client`` is the connection it came on, if any: whether it may
        send control requests (``client.privileged``), and who it is
        (``client.peer()``).
        """
        if message and message[0][0] == b"request":
            request = message[0][1]
        else:
            try:
                self.scanner.scan(message, 0, REQUEST, more=True)    # says what is wrong
            except BadRequest:
                pass
            return Reply(PROTOCOL_ERROR)
        handler = self._handlers.get(request)
        control = handler is None
        if control and request in self._control:
            if client is None or not client.privileged:
                self.stats.errors["refused"] += 1
                self.scanner.warn('refusing control request "%s" from %s: only root, '
                                  "mail_owner and the daemon's own user may send it",
                                  request.decode(), client.peer() if client is not None
                                  else self.scanner.socket_name)
                return Reply(PROTOCOL_ERROR)
            handler = self._control[request]
        if handler is not None:
            self.stats.requests[request] += 1
            try:
                answer = handler(message)
            except Exception as err:
                return Reply(self.failure(request, err))
            if isinstance(answer, Later):
                return Reply(later=answer, control=control)
            return Reply(answer)
        if request == WAKEUP:
            return HANG_UP
        self.stats.requests[b"unknown"] += 1
        self.scanner.client_error('unknown request "%s" from %s', printable(request),
                                  self.scanner.socket_name)
        return Reply(PROTOCOL_ERROR)

    def failure(self, request: bytes, err: Exception) -> bytes:
        """The one place where a request fails: a bad request (already
        logged) or a bug, answered with status -2 in the request's shape,
        so that the client gets an answer and the connection stays in step."""
        if isinstance(err, BadRequest):
            return failed_reply(request, STAT_FAIL, err.extras)
        log.error("cannot answer %s request: %s: %s", request.decode(),
                  type(err).__name__, err)
        self.stats.errors["internal"] += 1
        return failed_reply(request, STAT_FAIL)

    def unanswered(self, message: Message) -> Reply:
        """The reply to a request that could not be answered in time (the
        network store did not answer): it failed, status -1; a ticket key
        is answered from memory."""
        request = message[0][1] if message and message[0][0] == b"request" else b""
        if request == b"tktkey":                # what memory holds will do
            try:
                return Reply(cast(bytes, self.client.tktkey(message, from_memory=True)))
            except Exception as err:
                return Reply(self.failure(request, err))
        return Reply(failed_reply(request, STAT_ERR))

    def handle_trigger(self, trigger: bytes) -> Reply:
        """A short NUL-terminated string from master(8), not a request."""
        if trigger == WAKEUP:
            if log.verbose:
                log.info("received master trigger")
            return HANG_UP
        return NO_REPLY

