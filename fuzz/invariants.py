"""What the fuzzers check, in one place.

The atheris harnesses (fuzz_attr.py, fuzz_requests.py) call the
``check_*`` functions here on every input, and tests/test_fuzz.py calls the
same functions to replay the corpus and to check what hypothesis makes.
A check returns normally or fails with AssertionError (an invariant broken);
any other exception escaping from it is a crash of the code under test.

Two input formats, one per harness:

* attr: byte 0 picks the decoder's size limit from ``ATTR_LIMITS``, byte 1
  (N) the largest piece; the rest is a byte stream, fed to the decoder in
  pieces of 0 to N + 1 bytes cut by a PRNG seeded with the two header bytes.
* requests: the whole input is the byte stream a client sends, decoded with
  a limit of ``REQUEST_SIZE_LIMIT`` bytes.
"""

from __future__ import annotations

import logging
import random
import shlex
import sys
from contextlib import contextmanager

from tlsmgr.service.handlers import client_dispatch
from tlsmgr.service.protocol import WAKEUP, Dispatch, Reply
from tlsmgr.service.scache import SessionCache
from tlsmgr.service.tickets import KEY_SIZE, NAME_LENGTH, TicketKey, TicketKeyRing
from tlsmgr.stores.memory import MemoryStore
from tlsmgr.util import log
from tlsmgr.wire.attr import (
    DEFAULT_MAX_SIZE,
    MAX_ATTRIBUTES,
    AttrError,
    Decoder,
    Message,
    decode_data,
    decode_data_prefix,
    decode_int,
    encode,
    encode_data,
    encode_int,
)
from tlsmgr.wire.requests import SEED_MAX

# libFuzzer options the harnesses add unless given: long enough inputs for
# an oversized message and for numbers of more than 4300 digits.
DEFAULT_FUZZER_OPTIONS = ("-max_len=9000",)

ATTR_LIMITS = (1, 2, 16, 40, 100, 512, 4096, DEFAULT_MAX_SIZE)

# Smaller than the smallest tlsmgr_request_size_limit (65536), so that an
# oversized request fits in a fuzzer input; the decoder works alike at any limit.
REQUEST_SIZE_LIMIT = 8192
# The requests harness feeds its stream in slices, as the server does, so
# that the requests before an oversized one are still answered.
REQUEST_SLICE = 1024

FIXED_TIME = 1_700_000_000
SESSION_TIMEOUT = 3600
ENABLED_CACHES = (b"smtpd", b"smtp")
CACHE_TYPES = (*ENABLED_CACHES, b"lmtp")       # lmtp: known, disabled

STAT_OK, STAT_ERR, STAT_FAIL = 0, -1, -2

# The attribute names of each request's reply, as protocol.py sends them;
# every other message (unknown or missing request) gets a bare status.
REPLY_LAYOUTS = {
    b"seed": (b"status", b"seed"),
    b"policy": (b"status", b"cachable", b"timeout"),
    b"lookup": (b"status", b"session"),
    b"update": (b"status",),
    b"delete": (b"status",),
    b"tktkey": (b"status", b"keybuf"),
}
BARE_STATUS = (b"status",)
KNOWN_LAYOUTS = frozenset((*REPLY_LAYOUTS.values(), BARE_STATUS))
INT_FIELDS = frozenset((b"status", b"cachable", b"timeout"))

# The largest reply not made from what a client sent: a full seed.
_LARGEST_OWN_REPLY = len(encode([("status", STAT_FAIL), ("seed", bytes(SEED_MAX))]))
# Room for a reply's names, status and terminators around echoed data.
_REPLY_OVERHEAD = 64


def fuzzer_argv(argv: list[str]) -> list[str]:
    """argv for atheris.Setup: DEFAULT_FUZZER_OPTIONS not already given
    added, and argv[0] made a command that runs the harness with this
    interpreter, because libFuzzer's -merge=1 and -minimize_crash=1 start
    it again through the shell by that command line."""
    given = {arg.split("=", 1)[0] for arg in argv[1:] if arg.startswith("-")}
    return ([shlex.join([sys.executable, argv[0]]), *argv[1:]]
            + [option for option in DEFAULT_FUZZER_OPTIONS
               if option.split("=", 1)[0] not in given])


def wire_bytes(message: Message) -> bytes:
    """A decoded message as it was on the wire."""
    return b"".join(b"%s\0%s\0" % pair for pair in message) + b"\0"


def wire_size(message: Message) -> int:
    return sum(len(name) + len(value) + 2 for name, value in message) + 1


# The attr codec.

def split_attr_input(data: bytes) -> tuple[int, list[bytes]]:
    """The attr harness's input: (decoder size limit, pieces of the stream)."""
    if len(data) < 2:
        return DEFAULT_MAX_SIZE, [data]
    limit = ATTR_LIMITS[data[0] % len(ATTR_LIMITS)]
    largest = data[1]
    # A PRNG rather than cut points in the input: the fuzzer then mutates
    # the stream without upsetting how it is cut, and two bytes choose
    # among many cuttings, pieces of 0 bytes included.
    cutter = random.Random(data[0] << 8 | data[1])
    stream = data[2:]
    pieces = []
    start = 0
    while start < len(stream):
        length = cutter.randint(0, largest + 1)
        pieces.append(stream[start:start + length])
        start += length
    return limit, pieces


def check_value_decoders(value: bytes) -> None:
    """decode_int, decode_data and decode_data_prefix on any value: they
    return (None when malformed) and agree with each other."""
    number = decode_int(value)
    if number is not None:
        assert type(number) is int and -2**31 <= number < 2**31, number
        assert decode_int(encode_int(number)) == number, number
    data = decode_data(value)
    prefix, whole = decode_data_prefix(value)
    assert type(prefix) is bytes and type(whole) is bool
    assert data == (prefix if whole else None), (data, prefix, whole)
    assert len(prefix) <= len(value) * 3 // 4


def check_decoded_message(message: Message, limit: int) -> None:
    """A message as the decoder hands it out."""
    assert type(message) is tuple and len(message) <= MAX_ATTRIBUTES
    for pair in message:
        assert type(pair) is tuple and len(pair) == 2, pair
        name, value = pair
        # bytes, not the bytearray the decoder grows a piece in.
        assert type(name) is bytes and type(value) is bytes, pair
        assert name and b"\0" not in name and b"\0" not in value, pair
        check_value_decoders(value)
    assert wire_size(message) <= limit


def check_decoder_input(data: bytes) -> None:
    """The attr harness: a stream fed in pieces decodes as it does whole,
    and the decoder raises nothing but AttrError."""
    limit, pieces = split_attr_input(data)
    stream = b"".join(pieces)

    whole = Decoder(limit)
    try:
        expected, whole_error = whole.feed(stream), None
    except AttrError as err:
        expected, whole_error = None, err
        assert whole.idle, "decoder holds data after %r" % err

    decoder = Decoder(limit)
    decoded, error = [], None
    for piece in pieces:
        try:
            decoded += decoder.feed(piece)
        except AttrError as err:
            error = err
            assert decoder.idle, "decoder holds data after %r" % err
            break

    # How the bytes are cut never changes whether they are acceptable.
    assert (error is None) == (whole_error is None), (error, whole_error)
    if error is not None:
        assert type(error) is type(whole_error)
        assert (error.limit, error.unit) == (whole_error.limit, whole_error.unit)
        return
    assert decoded == expected
    for message in decoded:
        check_decoded_message(message, limit)
    # Decoding loses nothing: the messages are the stream up to the last
    # terminator, and the decoder is idle exactly when nothing follows it.
    consumed = b"".join(map(wire_bytes, decoded))
    assert stream.startswith(consumed)
    assert decoder.idle == whole.idle == (len(consumed) == len(stream))


# The requests.

def deterministic_bytes(size: int) -> bytes:
    """The 'random' bytes of the fuzzed Dispatch: the same on every run."""
    return bytes(index & 0xFF for index in range(size))


def make_dispatch() -> Dispatch:
    """A Dispatch of the client requests in-process: memory caches for smtpd and smtp, lmtp
    disabled, a clock that stands still (nothing expires, the ticket key
    never changes) and deterministic random bytes."""
    def clock():
        return FIXED_TIME

    caches = {label.decode(): SessionCache(label.decode(), MemoryStore(), SESSION_TIMEOUT,
                                           clock=clock)
              for label in ENABLED_CACHES}
    caches["lmtp"] = None
    timeouts = {label.decode(): SESSION_TIMEOUT for label in CACHE_TYPES}
    return client_dispatch(caches, timeouts, deterministic_bytes,
                           TicketKeyRing(deterministic_bytes, clock=clock))


# The name of the ticket key make_dispatch()'s Dispatch makes first.
FIRST_TICKET_KEY_NAME = deterministic_bytes(NAME_LENGTH)


class _ErrorRecorder(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())


@contextmanager
def recording_internal_errors():
    """Collect what tlsmgr logs at ERROR level (Dispatch.handle() logs there
    when a request raised), and keep its warnings quiet meanwhile: a fuzzer
    makes millions of them."""
    logger = log.logger
    recorder = _ErrorRecorder()
    saved = logger.level, logger.propagate
    logger.setLevel(logging.ERROR)
    logger.propagate = False
    logger.addHandler(recorder)
    try:
        yield recorder.records
    finally:
        logger.removeHandler(recorder)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def parse_reply(message: Message) -> dict[bytes, int | bytes]:
    """The values of one reply message, checked to be of a layout that
    protocol.py sends, each value in its canonical encoding."""
    names = tuple(name for name, _ in message)
    assert names in KNOWN_LAYOUTS, names
    fields: dict[bytes, int | bytes] = {}
    for name, text in message:
        if name in INT_FIELDS:
            value = decode_int(text)
            assert value is not None and encode_int(value) == text, (name, text)
        else:
            value = decode_data(text)
            assert value is not None and encode_data(value) == text, (name, text)
        fields[name] = value
    assert fields[b"status"] in (STAT_OK, STAT_ERR, STAT_FAIL), fields
    return fields


def decode_replies(data: bytes) -> list[dict[bytes, int | bytes]]:
    """Bytes a server wrote after its handshake: whole, well-formed replies."""
    decoder = Decoder(len(data) + 1)
    messages = decoder.feed(data)
    assert decoder.idle, "a reply is cut short: %r" % data[-100:]
    return [parse_reply(message) for message in messages]


def requested(message: Message) -> bytes | None:
    """The request name, when the message starts with one."""
    if message and message[0][0] == b"request":
        return message[0][1]
    return None


class RequestChecker:
    """One Dispatch from make_dispatch(), every reply of which is checked:
    of the right layout, of a bounded size, and consistent with a model of
    what the caches hold, kept from the replies to earlier requests."""

    def __init__(self):
        self.tlsmgr = make_dispatch()
        self.sessions: dict[tuple[bytes, bytes], bytes] = {}
        self.largest_request = 0

    def handle(self, message: Message) -> Reply:
        """Answer a request and check the answer; returns the Reply."""
        # A lookup may return a session saved by any earlier request.
        self.largest_request = max(self.largest_request, wire_size(message))
        with recording_internal_errors() as errors:
            reply = self.tlsmgr.handle(message)
        assert not errors, "handle() failed inside a request: %s" % errors
        assert reply.later is None, "memory caches answer at once"
        assert isinstance(reply, Reply), reply
        assert type(reply.data) is bytes and type(reply.close) is bool

        request = requested(message)
        if request == WAKEUP:
            assert reply.data == b"" and reply.close, "a wakeup request hangs up"
            return reply
        assert not reply.close, "only a wakeup hangs up"
        # Replies echo at most one value a client sent, in base64 (which
        # the request carried in base64 too), besides data of our own.
        bound = _REPLY_OVERHEAD + max(_LARGEST_OWN_REPLY, self.largest_request)
        assert len(reply.data) <= bound, (len(reply.data), bound)

        decoder = Decoder(len(reply.data) + 1)
        replies = decoder.feed(reply.data)
        assert len(replies) == 1 and decoder.idle, reply.data
        fields = parse_reply(replies[0])
        layout = tuple(name for name, _ in replies[0])
        assert layout == REPLY_LAYOUTS.get(request, BARE_STATUS), (request, layout)
        if request in REPLY_LAYOUTS:
            getattr(self, "_check_" + request.decode())(message, fields)
        else:
            assert fields[b"status"] == STAT_FAIL, "unknown or missing request"
        return reply

    # What a reply says, against the request and the model.  Only what a
    # status promises is checked, never why a request failed.

    def _check_seed(self, message: Message, fields: dict) -> None:
        status, seed = fields[b"status"], fields[b"seed"]
        assert status in (STAT_OK, STAT_FAIL), status
        if status == STAT_OK:
            size = decode_int(message[1][1])
            assert 0 < size <= SEED_MAX and len(seed) == size, (size, len(seed))
        else:
            assert seed == b""

    def _check_policy(self, message: Message, fields: dict) -> None:
        status = fields[b"status"]
        assert status in (STAT_OK, STAT_FAIL), status
        if status == STAT_OK:
            cache_type = message[1][1]
            assert cache_type in CACHE_TYPES, cache_type
            assert fields[b"cachable"] == (cache_type in ENABLED_CACHES)
            assert fields[b"timeout"] == SESSION_TIMEOUT
        else:
            assert fields[b"cachable"] == fields[b"timeout"] == 0

    def _cache_key(self, message: Message) -> tuple[bytes, bytes]:
        key = (message[1][1], message[2][1])
        assert key[0] in ENABLED_CACHES, "a disabled or unknown cache answered"
        return key

    def _check_update(self, message: Message, fields: dict) -> None:
        status = fields[b"status"]
        assert status in (STAT_OK, STAT_FAIL), "a memory store always saves"
        if status == STAT_OK:
            self.sessions[self._cache_key(message)] = decode_data(message[3][1])

    def _check_lookup(self, message: Message, fields: dict) -> None:
        status, session = fields[b"status"], fields[b"session"]
        if status == STAT_OK:
            key = self._cache_key(message)
            assert self.sessions.get(key) == session, (key, session)
            return
        assert session == b""
        if status == STAT_ERR:
            assert self._cache_key(message) not in self.sessions

    def _check_delete(self, message: Message, fields: dict) -> None:
        status = fields[b"status"]
        if status == STAT_OK:
            assert self.sessions.pop(self._cache_key(message), None) is not None
        elif status == STAT_ERR:
            assert self._cache_key(message) not in self.sessions

    def _check_tktkey(self, message: Message, fields: dict) -> None:
        status, keybuf = fields[b"status"], fields[b"keybuf"]
        if status == STAT_OK:
            assert len(keybuf) == KEY_SIZE
            name = decode_data(message[1][1])
            assert name in (b"", TicketKey.unpack(keybuf).name), name
        elif status == STAT_ERR:
            # A well-formed name not found is echoed.
            assert keybuf == decode_data(message[1][1]) and len(keybuf) == NAME_LENGTH
        elif keybuf:
            # What could be decoded of a malformed name is echoed.
            assert message[1][0] == b"keyname"
            assert keybuf == decode_data_prefix(message[1][1])[0], keybuf


def check_request_stream(data: bytes) -> None:
    """The requests harness: every message of a client's stream through
    one Dispatch, each reply checked (see RequestChecker)."""
    checker = RequestChecker()
    decoder = Decoder(REQUEST_SIZE_LIMIT)
    for start in range(0, len(data), REQUEST_SLICE):
        try:
            messages = decoder.feed(data[start:start + REQUEST_SLICE])
        except AttrError:
            # The server closes the connection here: nothing more is read.
            assert decoder.idle
            return
        for message in messages:
            checker.handle(message)
