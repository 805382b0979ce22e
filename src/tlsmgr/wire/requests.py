"""The requests, said once: what each reads, what it answers, who may ask
it, and whether the compiled path answers it.

The rest is derived from this table: the pure path reads each request's
attributes (protocol.Scanner.scan()) and fails it in its reply's shape
(failed_reply()); handlers.py and control.py answer each request the
table names, and nothing else, which they check when they are imported;
the compiled path (_fastpath.c) is given each request it answers when it
is made (fastpath.py), and is not used when it cannot read one as the
table says.

Postfix's clients (tls_mgr.c, tls_scache.c) send the client requests; the
administrator's tools send the control requests, an extension in
attribute lists of its own (control.py).  Only what the wire carries is
here: no I/O, no state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from .attr import Value, decode_data, decode_int, encode

STAT_OK = 0          # success
STAT_ERR = -1        # not found, or refused
STAT_FAIL = -2       # protocol error


class Kind(NamedTuple):
    """How an attribute value is read (Postfix's RECV_ATTR_STR/INT/DATA)."""

    convert: Callable[[bytes], Any] | None     # None: the value as it is
    malformed: str           # what a value it cannot convert is called in the warning
    # How the compiled path reads it (_fastpath.c): a cache's name (given
    # to the handler as the cache), a string, base64 data, base64 of a
    # ticket key's name (none, or tickets.NAME_LENGTH bytes), a size from 1 to
    # SEED_MAX; or not at all.
    code: bytes


STR = Kind(None, "", b"s")
CACHE_TYPE = Kind(None, "", b"c")
INT = Kind(decode_int, "numerical", b"")
SIZE = Kind(decode_int, "numerical", b"n")
DATA = Kind(decode_data, "base64", b"d")
KEY_NAME = Kind(decode_data, "base64", b"k")

# Attributes in order: each one's name and how its value is read.
Wanted = tuple[tuple[bytes, Kind], ...]

# Who may send a request.
CLIENT = "client"            # anyone who can reach the socket
CONTROL = "control"          # root, mail_owner and the daemon's own uid

# Bytes a seed request may ask for (the compiled path checks it too).
SEED_MAX = 255


class Request(NamedTuple):
    name: bytes
    reads: Wanted                       # its attributes after "request", in order
    replies: tuple[tuple[str, Value], ...]  # after "status", as a failed reply has them
    who: str                            # CLIENT or CONTROL
    compiled: bool = False              # the compiled path answers it, where it can
    optional: Wanted = ()               # attributes that may follow, in order


REQUEST: Wanted = ((b"request", STR),)
_CACHE_TYPE: Wanted = ((b"cache_type", CACHE_TYPE),)
_CACHE_ENTRY: Wanted = (*_CACHE_TYPE, (b"cache_id", STR))

LOOKUP = Request(b"lookup", _CACHE_ENTRY, (("session", b""),), CLIENT, compiled=True)
UPDATE = Request(b"update", (*_CACHE_ENTRY, (b"session", DATA)), (), CLIENT, compiled=True)
DELETE = Request(b"delete", _CACHE_ENTRY, (), CLIENT, compiled=True)
TKTKEY = Request(b"tktkey", ((b"keyname", KEY_NAME),), (("keybuf", b""),), CLIENT, compiled=True)
SEED = Request(b"seed", ((b"size", SIZE),), (("seed", b""),), CLIENT, compiled=True)
POLICY = Request(b"policy", _CACHE_TYPE, (("cachable", 0), ("timeout", 0)), CLIENT)

STATS = Request(b"stats", (), (), CONTROL)
FLUSH = Request(b"flush", _CACHE_TYPE, (("removed", 0),), CONTROL)
ROTATE_KEYS = Request(b"rotate_keys", (), (("keyname", b""),), CONTROL)
LIST = Request(b"list", _CACHE_TYPE, (("list", "[]"),), CONTROL,
               optional=((b"limit", INT), (b"offset", INT)))

TABLE: dict[bytes, Request] = {request.name: request for request in (
    LOOKUP, UPDATE, DELETE, TKTKEY, SEED, POLICY, STATS, FLUSH, ROTATE_KEYS, LIST)}


def names(who: str) -> frozenset[bytes]:
    """The names of the requests that these may send."""
    return frozenset(name for name, request in TABLE.items() if request.who == who)


def check_answered(who: str, answered: frozenset[bytes], by: str) -> None:
    """Raise at import when a module answers other requests than the
    table gives it."""
    wanted = names(who)
    if answered != wanted:
        raise ImportError("%s answers %s, the request table says %s" % (
            by, sorted(answered), sorted(wanted)))


def failed_reply(name: bytes, status: int,
                 extras: list[tuple[str, Value]] | None = None) -> bytes:
    """The reply of a request that failed with status: its reply's
    attributes, as a failed one has them (or the extras given)."""
    request = TABLE.get(name)
    replies = request.replies if request is not None else ()
    return encode([("status", status), *(replies if extras is None else extras)])


def compiled() -> frozenset[bytes]:
    """The names of the requests the compiled path may answer."""
    return frozenset(name for name, request in TABLE.items() if request.compiled)
