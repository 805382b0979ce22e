"""The requests of Postfix's clients: lookup, update and delete of a cache
entry, tktkey, seed and policy, each answered as the stock daemon's
tlsmgr_service() answers it, from the caches, the PRNG and the ticket key
ring.

Each handler reads its request as the request table (requests.py) says,
through the Scanner (protocol.py), which warns about what is wrong; the
Dispatch there calls them and makes any failure a reply.  The compiled
path (fastpath.py) calls some of them too (compiled_answers()).
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from typing import Any

from ..observe.stats import Stats
from ..util import log
from ..util.pending import Later, MaybeLater, then
from ..wire.attr import Message, decode_data_prefix, encode, encode_data, encode_int
from ..wire.requests import (
    CLIENT,
    DELETE,
    LOOKUP,
    POLICY,
    SEED,
    SEED_MAX,
    STAT_ERR,
    STAT_OK,
    TKTKEY,
    UPDATE,
    Request,
    check_answered,
    compiled,
    failed_reply,
)
from .protocol import STATUS_REPLIES, BadRequest, Dispatch, Handler, Scanner, printable
from .scache import SessionCache
from .tickets import NAME_LENGTH, TicketKey, TicketKeys


def _data_name(request: Request) -> bytes:
    """The name of the one data attribute of a request's reply."""
    [(name, _)] = request.replies
    return name.encode()


def _before_data(status: int, request: Request) -> bytes:
    """What comes before the data of a request's reply (its base64 text
    and _END follow): the replies on every request's path are joined from
    parts, without a call to make them."""
    return b"status\0%s\0%s\0" % (encode_int(status), _data_name(request))


_END = b"\0\0"


def _status_and_data(status: int, request: Request, data: bytes) -> bytes:
    return b"".join((_before_data(status, request), encode_data(data), _END))


_LOOKUP_MISS = failed_reply(LOOKUP.name, STAT_ERR)
_FOUND = _before_data(STAT_OK, LOOKUP)
_SEED = _before_data(STAT_OK, SEED)
# The parts of the replies the compiled path makes from a handler's result
# (ClientRequests.compiled_answers()): a session found or not, and whether an
# update or a delete took.
_SESSION_PARTS = (_FOUND, _LOOKUP_MISS)
_TRUTH_PARTS = (STATUS_REPLIES[STAT_OK], STATUS_REPLIES[STAT_ERR])


def _lookup_reply(found: bytes | None) -> bytes:
    return _LOOKUP_MISS if found is None else b"".join((_FOUND, encode_data(found), _END))


def _status_reply(done: bool) -> bytes:
    return STATUS_REPLIES[STAT_OK if done else STAT_ERR]


class ClientRequests:
    """Answers the client requests from the caches, the PRNG and the ticket
    key ring.

    ``caches`` maps every known cache type ("smtpd", "smtp", "lmtp") to its
    SessionCache, or to None when that cache is disabled; ``timeouts`` gives
    each type's (clamped) session timeout, as the policy request reports it.
    """

    def __init__(self, caches: dict[str, SessionCache | None], timeouts: dict[str, int],
                 random_bytes: Callable[[int], bytes], tickets: TicketKeys,
                 scanner: Scanner, stats: Stats):
        self.caches = {label.encode(): cache for label, cache in caches.items()}
        self.timeouts = {label.encode(): timeout for label, timeout in timeouts.items()}
        self.random_bytes = random_bytes
        self.tickets = tickets
        self.scanner = scanner
        self.stats = stats              # the ticket keys' lookups
        # Whether any request may be answered later, on the network: the
        # fleet's ticket keys come with a Redis smtpd cache.
        self.any_remote = any(
            cache is not None and cache.store.remote for cache in caches.values())
        self._key_reply: tuple[object, bytes] = (None, b"")   # see key_reply()

    def handlers(self) -> dict[bytes, Handler]:
        """The handler of each client request."""
        return {name: types.MethodType(handler, self) for name, handler in _HANDLERS.items()}

    def cache(self, cache_type: bytes, request: str) -> SessionCache | None:
        """The cache of a type, None when it is disabled; an unknown type
        is a BadRequest, with a warning."""
        if cache_type not in self.caches:
            self.scanner.client_error('bogus cache type "%s" in "%s" request',
                                      printable(cache_type), request)
            raise BadRequest
        return self.caches[cache_type]

    # The requests.  Each returns the reply message.

    def _lookup(self, message: Message) -> MaybeLater[bytes]:
        cache_type, cache_id = self.scanner.scan(message, 1, LOOKUP.reads)
        return then(self._enabled(cache_type, "lookup").lookup(cache_id), _lookup_reply)

    def _update(self, message: Message) -> MaybeLater[bytes]:
        cache_type, cache_id, session = self.scanner.scan(message, 1, UPDATE.reads)
        return then(self._enabled(cache_type, "update").update(cache_id, session),
                    _status_reply)

    def _delete(self, message: Message) -> MaybeLater[bytes]:
        cache_type, cache_id = self.scanner.scan(message, 1, DELETE.reads)
        return then(self._enabled(cache_type, "delete").delete(cache_id), _status_reply)

    def _enabled(self, cache_type: bytes, request: str) -> SessionCache:
        """The cache of a type; an unknown type (with a warning) or a
        disabled cache is a BadRequest, status -2."""
        cache = self.caches.get(cache_type)
        if cache is None:
            self.cache(cache_type, request)
            raise BadRequest
        return cache

    def tktkey(self, message: Message, from_memory: bool = False) -> MaybeLater[bytes]:
        """The tktkey request; from_memory: with the keys at hand, without
        asking the fleet's Redis (Dispatch.unanswered())."""
        # Like the stock daemon (Postfix 3.7), a name not found is echoed in
        # place of a key, and so is what could be decoded of a name that is
        # not base64.
        try:
            [name] = self.scanner.scan(message, 1, TKTKEY.reads)
        except BadRequest:
            if len(message) > 1 and message[1][0] == b"keyname":
                raise BadRequest([("keybuf", decode_data_prefix(message[1][1])[0])]) from None
            raise
        if len(name) not in (0, NAME_LENGTH):
            self.scanner.client_error("invalid session ticket key name length: %d", len(name))
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
            return failed_reply(TKTKEY.name, STAT_ERR)   # no tickets without the cache
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
        [size] = self.scanner.scan(message, 1, SEED.reads)
        if not 0 < size <= SEED_MAX:
            self.scanner.client_error('bogus seed length "%d" in "seed" request', size)
            raise BadRequest
        return self.seed_reply(size)

    def seed_reply(self, size: int) -> bytes:
        """The reply to a seed request of a valid size."""
        try:
            seed = self.random_bytes(size)
        except OSError as err:
            # As Postfix since July 2026: no bytes, no seed, never garbage.
            log.warn("cannot generate %d random bytes for a seed request: %s", size, err)
            return failed_reply(SEED.name, STAT_ERR)
        return b"".join((_SEED, encode_data(seed), _END))

    def _policy(self, message: Message) -> bytes:
        [cache_type] = self.scanner.scan(message, 1, POLICY.reads)
        cache = self.cache(cache_type, "policy")
        return encode([("status", STAT_OK), ("cachable", int(cache is not None)),
                       ("timeout", self.timeouts[cache_type])])



# Who answers each client request: every one the table has, and no other.
_HANDLERS: dict[bytes, Callable[[ClientRequests, Message], MaybeLater[bytes]]] = {
    LOOKUP.name: ClientRequests._lookup, UPDATE.name: ClientRequests._update,
    DELETE.name: ClientRequests._delete, TKTKEY.name: ClientRequests.tktkey,
    SEED.name: ClientRequests._seed, POLICY.name: ClientRequests._policy,
}
check_answered(CLIENT, frozenset(_HANDLERS), "handlers.ClientRequests")

# How the compiled path answers each request the table lets it (only those):
# by the handler, with a result that is the reply, a session or None, or
# whether it took.
AS_IS, SESSION, TRUTH = "r", "d", "t"
_PARTS = {AS_IS: (), SESSION: _SESSION_PARTS, TRUTH: _TRUTH_PARTS}
_COMPILED: dict[bytes, tuple[Callable[..., Any], str]] = {
    LOOKUP.name: (SessionCache.lookup, SESSION), UPDATE.name: (SessionCache.update, TRUTH),
    DELETE.name: (SessionCache.delete, TRUTH), TKTKEY.name: (ClientRequests.key_reply, AS_IS),
    SEED.name: (ClientRequests.seed_reply, AS_IS),
}
if frozenset(_COMPILED) != compiled():
    raise ImportError("the compiled path answers %s, the request table says %s"
                      % (sorted(_COMPILED), sorted(compiled())))


def client_dispatch(caches: dict[str, SessionCache | None], timeouts: dict[str, int],
                    random_bytes: Callable[[int], bytes], tickets: TicketKeys,
                    socket_name: str = "tlsmgr socket", stats: Stats | None = None) -> Dispatch:
    """A Dispatch of the client requests alone, without control requests:
    what the fuzz harnesses (fuzz/) and the tests of the requests answer
    with, in-process."""
    stats = stats or Stats()
    scanner = Scanner(socket_name, stats)
    return Dispatch(scanner, ClientRequests(caches, timeouts, random_bytes, tickets, scanner,
                                            stats), None)
