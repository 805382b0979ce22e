"""The tlsmgr requests: a decoded message in, the reply bytes out.

This is the stock daemon's tlsmgr_service() without the I/O: each request
reads its attributes in a fixed order, as Postfix's attr_scan() does with
ATTR_FLAG_STRICT, and answers with the same attributes, in the same order,
with the same status codes and warnings.

Where the stock daemon loses step with its client, this one does not: a
whole message is always consumed, so the next request on a connection is
read from its start.  Two deliberate differences follow from that:

* an unknown request name is answered with status -2 (the stock daemon
  sends nothing and the client waits until its timeout);
* after a protocol error the connection stays usable (the stock daemon
  reads the rest of the bad message as the next request).

It also counts requests by name and errors by kind (in the daemon's one
Stats record, stats.py, which the server counts in too), and hands the
administrator's requests (control.py) to the server's Control, for
privileged clients only.  Warnings about what clients send
are rate-limited after a burst, so that no client can flood the log.
"""

from __future__ import annotations

import functools
import re
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

from . import log
from .attr import Message, Value, decode_data_prefix, encode, encode_data, encode_int
from .pending import Later, MaybeLater, then
from .requests import (
    CLIENT,
    DELETE,
    LOOKUP,
    POLICY,
    REQUEST,
    SEED,
    SEED_MAX,
    STAT_ERR,
    STAT_FAIL,
    STAT_OK,
    TKTKEY,
    UPDATE,
    Request,
    Wanted,
    check_answered,
    compiled,
    failed_reply,
)
from .scache import SessionCache
from .stats import Stats
from .tickets import NAME_LENGTH, TicketKey, TicketKeys

if TYPE_CHECKING:
    from .control import Control

HANDSHAKE = encode([("protocol", "tlsmgr_protocol")])
WAKEUP = b"W"        # master(8)'s trigger

_UNPRINTABLE = re.compile(rb"[^\x20-\x7e]")


def printable(text: bytes) -> str:
    """Text for a log line: non-printable bytes become '?' (printable(3))."""
    return _UNPRINTABLE.sub(b"?", text).decode("ascii")


class Reply:
    """What to send back, and whether to close the connection after; or,
    for a request that waits on the network, what to send later (when it
    fails, Tlsmgr.failure() gives the reply).  A control request's later
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
_STATUS = {status: encode([("status", status)]) for status in (STAT_OK, STAT_ERR, STAT_FAIL)}
# The whole reply to a message that cannot be a request at all.
PROTOCOL_ERROR = _STATUS[STAT_FAIL]


def _data_name(request: Request) -> bytes:
    """The name of the one data attribute of a request's reply."""
    [(name, _)] = request.replies
    return name.encode()


def _status_and_data(status: int, request: Request, data: bytes) -> bytes:
    return b"status\0%s\0%s\0%s\0\0" % (encode_int(status), _data_name(request),
                                         encode_data(data))


def _ok_before_data(request: Request) -> bytes:
    """What comes before the data of a request's reply that succeeded (its
    base64 text and _END follow): such replies are joined from parts,
    without a call to make them."""
    return b"status\0%s\0%s\0" % (encode_int(STAT_OK), _data_name(request))


_LOOKUP_MISS = failed_reply(LOOKUP.name, STAT_ERR)
_FOUND = _ok_before_data(LOOKUP)
_SEED = _ok_before_data(SEED)
_END = b"\0\0"
# The parts of the replies the compiled path makes from a handler's result
# (Tlsmgr.compiled_answers()): a session found or not, and whether an
# update or a delete took.
_SESSION_PARTS = (_FOUND, _LOOKUP_MISS)
_TRUTH_PARTS = (_STATUS[STAT_OK], _STATUS[STAT_ERR])


def _lookup_reply(found: bytes | None) -> bytes:
    return _LOOKUP_MISS if found is None else b"".join((_FOUND, encode_data(found), _END))


def _status_reply(done: bool) -> bytes:
    return _STATUS[STAT_OK if done else STAT_ERR]


class Client(Protocol):
    """What a request handler may know of the connection a request came on."""

    privileged: bool             # may send control requests (control.py)

    def peer(self) -> str:
        """Who it is, for log lines."""


class Tlsmgr:
    """Answers requests from the caches, the PRNG and the ticket key ring.

    ``caches`` maps every known cache type ("smtpd", "smtp", "lmtp") to its
    SessionCache, or to None when that cache is disabled; ``timeouts`` gives
    each type's (clamped) session timeout, as the policy request reports it.
    """

    def __init__(self, caches: dict[str, SessionCache | None],
                 timeouts: dict[str, int],
                 random_bytes: Callable[[int], bytes],
                 tickets: TicketKeys,
                 socket_name: str = "tlsmgr socket", stats: Stats | None = None):
        self.caches = {label.encode(): cache for label, cache in caches.items()}
        self.timeouts = {label.encode(): timeout for label, timeout in timeouts.items()}
        self.random_bytes = random_bytes
        self.tickets = tickets
        # Where requests come from, as the stock daemon's warnings name it.
        self.socket_name = socket_name
        # Warnings about what clients send, which a client may cause at will:
        # a hundred as they come, then ten a second.
        self._warn = log.RateLimitedWarning(interval=0.1, burst=100)
        # What it has done, for the stats request and the metrics.
        self.stats = stats or Stats()
        # The administrator's requests (control.py), when the server offers them.
        self.control: Control | None = None
        # Whether any request may be answered later, on the network: the
        # fleet's ticket keys come with a Redis smtpd cache.
        self.any_remote = any(
            cache is not None and cache.store.remote for cache in caches.values())
        self._key_reply: tuple[object, bytes] = (None, b"")   # see key_reply()
        self._handlers = {name: functools.partial(handler, self)
                          for name, handler in _HANDLERS.items()}
        self.stats.known_requests(self._handlers)

    # The message layer.

    def handle(self, message: Message, client: Client | None = None) -> Reply:
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
                self.scan(message, 0, REQUEST, more=True)       # says what is wrong
            except BadRequest:
                pass
            return Reply(PROTOCOL_ERROR)
        handler = self._handlers.get(request)
        control = handler is None
        if control and self.control is not None and request in self.control.requests:
            if client is None or not client.privileged:
                self.stats.errors["refused"] += 1
                self._warn('refusing control request "%s" from %s: only root, mail_owner '
                           "and the daemon's own user may send it", request.decode(),
                           client.peer() if client is not None else self.socket_name)
                return Reply(PROTOCOL_ERROR)
            handler = functools.partial(self.control.handle, request)
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
        self._client_error('unknown request "%s" from %s', printable(request), self.socket_name)
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
                return Reply(cast(bytes, self._tktkey(message, from_memory=True)))
            except Exception as err:
                return Reply(self.failure(request, err))
        return Reply(failed_reply(request, STAT_ERR))

    def _client_error(self, text: str, *args: object) -> None:
        self.stats.errors["protocol"] += 1
        self._warn(text, *args)

    def handle_trigger(self, trigger: bytes) -> Reply:
        """A short NUL-terminated string from master(8), not a request."""
        if trigger == WAKEUP:
            if log.verbose:
                log.info("received master trigger")
            return HANG_UP
        return NO_REPLY

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
                self._client_error("missing attribute %s in input from %s", name.decode(),
                                   self.socket_name)
                raise BadRequest
            got_name, value = message[index]
            if got_name != name:
                self._client_error("unexpected attribute %s from %s (expecting: %s)",
                                   printable(got_name), self.socket_name, name.decode())
                raise BadRequest
            if convert is not None:
                value = convert(value)
                if value is None:
                    self._client_error("malformed %s data from %s while reading input "
                                       "attribute value: %.100s", malformed,
                                       self.socket_name, printable(message[index][1]))
                    raise BadRequest
            values.append(value)
        end = start + len(wanted)
        if not more and end < len(message):
            self._client_error("unexpected attribute %s from %s (expecting: (list "
                               "terminator))", printable(message[end][0]), self.socket_name)
        return values

    def cache(self, cache_type: bytes, request: str) -> SessionCache | None:
        """The cache of a type, None when it is disabled; an unknown type
        is a BadRequest, with a warning."""
        if cache_type not in self.caches:
            self._client_error('bogus cache type "%s" in "%s" request',
                               printable(cache_type), request)
            raise BadRequest
        return self.caches[cache_type]

    # The requests.  Each returns the reply message.

    def _lookup(self, message: Message) -> MaybeLater[bytes]:
        cache_type, cache_id = self.scan(message, 1, LOOKUP.reads)
        return then(self._enabled(cache_type, "lookup").lookup(cache_id), _lookup_reply)

    def _update(self, message: Message) -> MaybeLater[bytes]:
        cache_type, cache_id, session = self.scan(message, 1, UPDATE.reads)
        return then(self._enabled(cache_type, "update").update(cache_id, session),
                    _status_reply)

    def _delete(self, message: Message) -> MaybeLater[bytes]:
        cache_type, cache_id = self.scan(message, 1, DELETE.reads)
        return then(self._enabled(cache_type, "delete").delete(cache_id), _status_reply)

    def _enabled(self, cache_type: bytes, request: str) -> SessionCache:
        """The cache of a type; an unknown type (with a warning) or a
        disabled cache is a BadRequest, status -2."""
        cache = self.caches.get(cache_type)
        if cache is None:
            self.cache(cache_type, request)
            raise BadRequest
        return cache

    def _tktkey(self, message: Message, from_memory: bool = False) -> MaybeLater[bytes]:
        # Like the stock daemon (Postfix 3.7), a name not found is echoed in
        # place of a key, and so is what could be decoded of a name that is
        # not base64.
        try:
            [name] = self.scan(message, 1, TKTKEY.reads)
        except BadRequest:
            if len(message) > 1 and message[1][0] == b"keyname":
                raise BadRequest([("keybuf", decode_data_prefix(message[1][1])[0])]) from None
            raise
        if len(name) not in (0, NAME_LENGTH):
            self._client_error("invalid session ticket key name length: %d", len(name))
            raise BadRequest
        return self.key_reply(name, from_memory)

    # key_reply() and seed_reply(): the replies to requests already read,
    # which the compiled path (fastpath.py) calls too.  It answers cache
    # requests as the three above do (compiled_answers()).

    def compiled_answers(self) -> dict[bytes, tuple[Callable[..., Any], str, tuple[bytes, ...]]]:
        """How the compiled path may answer each request the table lets it,
        those answered at once: the handler, how its result becomes the
        reply (AS_IS, SESSION, TRUTH), and the reply's parts.  A cache
        request's handler is given the cache first; the compiled path is
        given only the caches answered at once (fastpath.answerer()).
        Not tktkey while the fleet's keys are on Redis."""
        answers = {}
        for name, (handler, reply_kind) in _COMPILED.items():
            if name == TKTKEY.name and self.any_remote:
                continue
            if reply_kind == AS_IS:
                handler = types.MethodType(handler, self)
            answers[name] = (handler, reply_kind, _PARTS[reply_kind])
        return answers

    def key_reply(self, name: bytes, from_memory: bool = False) -> MaybeLater[bytes]:
        """The reply to a tktkey request for a name of a valid length
        (empty: the current key); later when the fleet's Redis is asked."""
        timeout = self.timeouts[b"smtpd"]
        if timeout <= 0:
            return failed_reply(b"tktkey", STAT_ERR)     # no tickets without the cache
        if from_memory:
            return self._reply_with_key(name, self.tickets.at_hand(name, timeout))
        if name:
            return then(self.tickets.lookup(name, timeout),
                        functools.partial(self._found_key_reply, name))
        self.stats.ticket_lookups["current"] += 1
        key = self.tickets.current(timeout)
        if isinstance(key, Later):
            return then(key, functools.partial(self._reply_with_key, name))
        return self._reply_with_key(name, key)

    def _found_key_reply(self, name: bytes, found: tuple[TicketKey | None, str]) -> bytes:
        key, outcome = found
        self.stats.ticket_lookups[outcome] += 1
        return self._reply_with_key(name, key)

    def _reply_with_key(self, name: bytes, key: TicketKey | None) -> bytes:
        if key is None:
            return _status_and_data(STAT_ERR, TKTKEY, name)
        # Most requests ask for the current key: its reply is made once.
        last_key, last_reply = self._key_reply
        if key is last_key:
            return last_reply
        reply = _status_and_data(STAT_OK, TKTKEY, key.pack())
        self._key_reply = (key, reply)
        return reply

    def _seed(self, message: Message) -> bytes:
        [size] = self.scan(message, 1, SEED.reads)
        if not 0 < size <= SEED_MAX:
            self._client_error('bogus seed length "%d" in "seed" request', size)
            raise BadRequest
        return self.seed_reply(size)

    def seed_reply(self, size: int) -> bytes:
        """The reply to a seed request of a valid size."""
        try:
            seed = self.random_bytes(size)
        except OSError as err:
            # As Postfix since July 2026: no bytes, no seed, never garbage.
            log.warn("cannot generate %d random bytes for a seed request: %s", size, err)
            return failed_reply(b"seed", STAT_ERR)
        return b"".join((_SEED, encode_data(seed), _END))

    def _policy(self, message: Message) -> bytes:
        [cache_type] = self.scan(message, 1, POLICY.reads)
        cache = self.cache(cache_type, "policy")
        return encode([("status", STAT_OK), ("cachable", int(cache is not None)),
                       ("timeout", self.timeouts[cache_type])])


# Who answers each client request: every one the table has, and no other.
_HANDLERS: dict[bytes, Callable[[Tlsmgr, Message], MaybeLater[bytes]]] = {
    LOOKUP.name: Tlsmgr._lookup, UPDATE.name: Tlsmgr._update, DELETE.name: Tlsmgr._delete,
    TKTKEY.name: Tlsmgr._tktkey, SEED.name: Tlsmgr._seed, POLICY.name: Tlsmgr._policy,
}
check_answered(CLIENT, frozenset(_HANDLERS), "protocol.Tlsmgr")

# How the compiled path answers each request the table lets it (only those):
# by the handler, with a result that is the reply, a session or None, or
# whether it took.
AS_IS, SESSION, TRUTH = "r", "d", "t"
_PARTS = {AS_IS: (), SESSION: _SESSION_PARTS, TRUTH: _TRUTH_PARTS}
_COMPILED: dict[bytes, tuple[Callable[..., Any], str]] = {
    LOOKUP.name: (SessionCache.lookup, SESSION), UPDATE.name: (SessionCache.update, TRUTH),
    DELETE.name: (SessionCache.delete, TRUTH), TKTKEY.name: (Tlsmgr.key_reply, AS_IS),
    SEED.name: (Tlsmgr.seed_reply, AS_IS),
}
if frozenset(_COMPILED) != compiled():
    raise ImportError("the compiled path answers %s, the request table says %s"
                      % (sorted(_COMPILED), sorted(compiled())))
