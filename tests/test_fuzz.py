"""Fuzzing in the test suite: the fuzz corpus replayed, hypothesis on the
request handlers and on the server's Connection, the atheris harnesses
run briefly.

The checks are those of the atheris harnesses, from fuzz/invariants.py;
fuzz/README.md says how to fuzz for longer.
"""

import base64
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

from tlsmgr.attr import AttrError, Decoder, encode
from tlsmgr.protocol import HANDSHAKE, PROTOCOL_ERROR
from tlsmgr.server import Connection

FUZZ_DIR = Path(__file__).resolve().parent.parent / "fuzz"
CORPUS = FUZZ_DIR / "corpus"
# The fuzz directory is not a package: its modules import each other by
# plain name, as they do when a harness runs as a script.
sys.path.insert(0, str(FUZZ_DIR))
import invariants  # noqa: E402
import seeds  # noqa: E402

CHECKS = {"attr": invariants.check_decoder_input,
          "requests": invariants.check_request_stream}
REQUEST_TYPES = {b"seed", b"policy", b"lookup", b"update", b"delete", b"tktkey"}
CORPUS_BUDGET = 200_000          # bytes: the corpus is kept small


def corpus_files(kind: str) -> list[Path]:
    return sorted((CORPUS / kind).iterdir())


# (a) The corpus and the hand-written seeds, through the harnesses' checks.

@pytest.mark.parametrize("kind,path", [
    pytest.param(kind, path, id="%s/%s" % (kind, path.name[:16]))
    for kind in CHECKS for path in corpus_files(kind)])
def test_corpus_input_passes_the_harness_checks(kind, path):
    CHECKS[kind](path.read_bytes())


@pytest.mark.parametrize("kind,name", [
    *(("attr", name) for name in seeds.ATTR_SEEDS),
    *(("requests", name) for name in seeds.REQUEST_SEEDS)])
def test_seed_passes_the_harness_checks(kind, name):
    table = seeds.ATTR_SEEDS if kind == "attr" else seeds.REQUEST_SEEDS
    CHECKS[kind](table[name])


def test_corpus_is_small_and_covers_every_request_type():
    files = corpus_files("attr") + corpus_files("requests")
    assert sum(path.stat().st_size for path in files) < CORPUS_BUDGET
    seen = set()
    for path in corpus_files("requests"):
        data = path.read_bytes()
        decoder = Decoder(invariants.REQUEST_SIZE_LIMIT)
        for start in range(0, len(data), invariants.REQUEST_SLICE):
            try:
                messages = decoder.feed(data[start:start + invariants.REQUEST_SLICE])
            except AttrError:
                seen.add("oversized")
                break
            seen.update(invariants.requested(message) for message in messages)
    assert REQUEST_TYPES | {"oversized", None} <= seen
    assert seen - REQUEST_TYPES - {"oversized", None, b"W"}, "no unknown request"


# (b) Hypothesis on the request handlers.

def _without_nul(data: bytes) -> bytes:
    # Replaced, not removed: a name drawn non-empty stays non-empty.
    return data.replace(b"\0", b"\1")


REAL_NAMES = [b"request", b"cache_type", b"cache_id", b"session", b"size", b"keyname",
              b"timeout", b"status", b"cachable", b"seed", b"keybuf", b"protocol"]
REQUEST_NAMES = [*sorted(REQUEST_TYPES), b"W", b"frobnicate", b""]
CACHE_TYPES = [*invariants.CACHE_TYPES, b"imap", b""]

any_bytes = st.binary(max_size=40).map(_without_nul)
names = st.one_of(st.sampled_from(REAL_NAMES), st.binary(min_size=1, max_size=40).map(_without_nul))
cache_types = st.sampled_from(CACHE_TYPES)
cache_ids = st.one_of(st.sampled_from([b"a", b"b", b"id&1", b""]), any_bytes)
numbers = st.one_of(
    st.integers(-2**33, 2**33).map(b"%d".__mod__),
    st.sampled_from([b"", b" 7", b"+5", b"-1", b"4294967295", b"9" * 30, b"lots", b"12x"]))
base64_data = st.binary(max_size=120).map(base64.b64encode)
key_names = st.sampled_from(
    [invariants.FIRST_TICKET_KEY_NAME, b"N" * 16, b"", b"ABC"]).map(base64.b64encode)
values = st.one_of(st.sampled_from(REQUEST_NAMES + CACHE_TYPES), numbers, base64_data,
                   key_names, any_bytes)

# What each request reads after its name, with values right and wrong.
REQUEST_SHAPES = {
    b"seed": [(b"size", numbers)],
    b"policy": [(b"cache_type", cache_types)],
    b"lookup": [(b"cache_type", cache_types), (b"cache_id", cache_ids)],
    b"delete": [(b"cache_type", cache_types), (b"cache_id", cache_ids)],
    b"update": [(b"cache_type", cache_types), (b"cache_id", cache_ids),
                (b"session", st.one_of(base64_data, values))],
    b"tktkey": [(b"keyname", st.one_of(key_names, values))],
}


@st.composite
def well_shaped_requests(draw, request_names=REQUEST_NAMES):
    request = draw(st.sampled_from(request_names))
    return ((b"request", request),
            *((name, draw(value)) for name, value in REQUEST_SHAPES.get(request, [])))


@st.composite
def mangled_requests(draw):
    """A well-shaped request with attributes dropped, duplicated, added,
    swapped, renamed or given other values."""
    attributes = list(draw(well_shaped_requests()))
    for _ in range(draw(st.integers(1, 3))):
        edit = draw(st.sampled_from(["drop", "duplicate", "add", "swap", "rename", "revalue"]))
        if edit == "add" or not attributes:
            attributes.insert(draw(st.integers(0, len(attributes))), (draw(names), draw(values)))
            continue
        index = draw(st.integers(0, len(attributes) - 1))
        name, value = attributes[index]
        if edit == "drop":
            del attributes[index]
        elif edit == "duplicate":
            attributes.insert(index, (name, value))
        elif edit == "swap":
            other = draw(st.integers(0, len(attributes) - 1))
            attributes[index], attributes[other] = attributes[other], attributes[index]
        elif edit == "rename":
            attributes[index] = (draw(names), value)
        else:
            attributes[index] = (name, draw(values))
    return tuple(attributes)


messages = st.one_of(
    well_shaped_requests(),
    mangled_requests(),
    st.lists(st.tuples(names, values), max_size=8).map(tuple))


@settings(max_examples=1000, deadline=None)
@given(st.lists(messages, max_size=12))
def test_any_requests_get_well_formed_replies(requests):
    checker = invariants.RequestChecker()
    for message in requests:
        checker.handle(message)
    # The same requests as bytes on the wire, through the decoder.
    invariants.check_request_stream(b"".join(map(invariants.wire_bytes, requests)))


class SessionCacheMachine(RuleBasedStateMachine):
    """update, lookup and delete against one Tlsmgr behave like a dict,
    in the enabled caches; the disabled and unknown ones refuse all."""

    # Few ids, so that requests meet the entries of earlier ones.
    tried_cache_types = st.sampled_from([b"smtpd", b"smtp", b"lmtp", b"imap"])
    tried_cache_ids = st.sampled_from([b"a", b"b", b"id&1", b"", b"x" * 100])

    def __init__(self):
        super().__init__()
        self.checker = invariants.RequestChecker()
        self.sessions = {}

    def ask(self, request, cache_type, cache_id, *more):
        reply = self.checker.handle(((b"request", request), (b"cache_type", cache_type),
                                     (b"cache_id", cache_id), *more))
        [message] = Decoder().feed(reply.data)
        return invariants.parse_reply(message)

    @rule(cache_type=tried_cache_types, cache_id=tried_cache_ids, session=st.binary(max_size=64))
    def update(self, cache_type, cache_id, session):
        reply = self.ask(b"update", cache_type, cache_id,
                         (b"session", base64.b64encode(session)))
        if cache_type in invariants.ENABLED_CACHES:
            assert reply[b"status"] == 0
            self.sessions[cache_type, cache_id] = session
        else:
            assert reply[b"status"] == -2

    @rule(cache_type=tried_cache_types, cache_id=tried_cache_ids)
    def lookup(self, cache_type, cache_id):
        reply = self.ask(b"lookup", cache_type, cache_id)
        if cache_type not in invariants.ENABLED_CACHES:
            assert (reply[b"status"], reply[b"session"]) == (-2, b"")
        elif (cache_type, cache_id) in self.sessions:
            assert (reply[b"status"], reply[b"session"]) == \
                (0, self.sessions[cache_type, cache_id])
        else:
            assert (reply[b"status"], reply[b"session"]) == (-1, b"")

    @rule(cache_type=tried_cache_types, cache_id=tried_cache_ids)
    def delete(self, cache_type, cache_id):
        reply = self.ask(b"delete", cache_type, cache_id)
        if cache_type not in invariants.ENABLED_CACHES:
            assert reply[b"status"] == -2
        else:
            was_there = self.sessions.pop((cache_type, cache_id), None) is not None
            assert reply[b"status"] == (0 if was_there else -1)


TestSessionCacheMachine = SessionCacheMachine.TestCase
TestSessionCacheMachine.settings = settings(max_examples=200, stateful_step_count=30,
                                            deadline=None)


# (c) The server's Connection, in-process, with a fake transport.

CONNECTION_SIZE_LIMIT = 1024


class FakeTimer:
    def __init__(self):
        self.cancelled = False

    def cancel(self):
        self.cancelled = True


class FakeLoop:
    """Callbacks run when the test turns the loop (run_ready); timers never
    fire: deadlines are not under test here."""

    def __init__(self):
        self.timers = []
        self.ready = []
        self.callbacks_run = 0

    def call_later(self, delay, callback, *args):
        self.timers.append(FakeTimer())
        return self.timers[-1]

    def call_soon(self, callback, *args):
        self.ready.append((callback, args))
        return FakeTimer()

    def run_ready(self):
        """One turn of the loop: what was ready when it began."""
        ready, self.ready = self.ready, []
        for callback, args in ready:
            self.callbacks_run += 1
            callback(*args)


class FakePrng:
    def mix_time(self):
        pass


class FakeServer:
    """What of tlsmgr.server.Server a Connection uses."""

    def __init__(self):
        self.tlsmgr = invariants.make_tlsmgr()
        self.request_size_limit = CONNECTION_SIZE_LIMIT
        self.ipc_timeout = 3600
        self.connections = set()
        self.loop = FakeLoop()
        self.prng = FakePrng()
        self.workers = None             # memory caches never go to a worker
        self.requests_served = 0
        self.held_bytes = 0
        self.control_uids = set()       # nobody may send control requests

    def admit(self, connection):
        self.connections.add(connection)

    def hold(self, connection, held):
        # Accounted, never enforced: tlsmgr_client_buffer_limit is not
        # under test here.
        self.held_bytes += held - connection.held
        connection.held = held

    def served(self):
        self.requests_served += 1


class FakeTransport:
    """Keeps what is written; like asyncio's transports, pauses the
    protocol's writing once more than ``high_water`` bytes wait, and
    resumes it when drained."""

    def __init__(self, high_water):
        self.protocol = None
        self.writes = []
        self.buffered = 0
        self.high_water = high_water
        self.writing_paused = False
        self.reading_paused = False
        self.closing = False
        self.pauses = 0

    def write(self, data):
        self.writes.append(bytes(data))
        self.buffered += len(data)
        if self.buffered > self.high_water and not self.writing_paused:
            self.writing_paused = True
            self.pauses += 1
            self.protocol.pause_writing()

    def drain(self):
        self.buffered = 0
        if self.writing_paused:
            self.writing_paused = False
            self.protocol.resume_writing()

    def close(self):
        self.closing = True

    def abort(self):
        self.closing = True

    def is_closing(self):
        return self.closing

    def pause_reading(self):
        self.reading_paused = True

    def resume_reading(self):
        self.reading_paused = False

    def get_write_buffer_size(self):
        return self.buffered

    def get_extra_info(self, name, default=None):
        return None


def connect(high_water):
    server = FakeServer()
    connection = Connection(server)
    transport = FakeTransport(high_water)
    transport.protocol = connection
    connection.connection_made(transport)
    return server, connection, transport


def run_until_idle(server, transport, idle):
    """Turn the loop and read the client's replies until idle() holds."""
    for _ in range(10_000):
        if idle():
            return
        server.loop.run_ready()
        transport.drain()
    raise AssertionError("the connection never settles")


def send(server, connection, transport, data):
    """data_received as an event loop calls it: never while reading is
    paused (so the loop turns and the client reads its replies first), nor
    once the connection is closed."""
    run_until_idle(server, transport,
                   lambda: transport.closing or not transport.reading_paused)
    if transport.closing:
        return False
    connection.data_received(data)
    return True


def finish(server, transport):
    """Everything received answered and the answers read, or closed."""
    run_until_idle(server, transport, lambda: not server.loop.ready and (
        transport.closing or not (transport.writing_paused or transport.reading_paused)))


SEED_REQUEST = encode([("request", "seed"), ("size", 8)])
# How much may wait to be written before the server is asked to pause:
# from less than a reply to more than it ever writes.
high_waters = st.one_of(st.sampled_from([1, 24, 1000, 10**9]), st.integers(1, 20_000))
chunks = st.one_of(
    st.binary(max_size=64),
    messages.map(invariants.wire_bytes),
    # master(8) triggers, and what comes close to one.
    st.sampled_from([b"W\0", b"\0", b"X\0", b"W", b"\0\0", b"W\0\0"]),
    # More than a slice of input, and more than a batch of replies.
    st.sampled_from([2, 63, 64, 65, 171, 250]).map(SEED_REQUEST.__mul__))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(chunks, st.booleans()), max_size=10), high_waters, st.booleans())
def test_connection_survives_any_bytes(received, high_water, then_oversized):
    server, connection, transport = connect(high_water)
    with invariants.recording_internal_errors() as errors:
        for data, drain_after in received:
            if transport.closing:
                break
            send(server, connection, transport, data)
            if drain_after:
                transport.drain()
        # Too much for the limit, whatever part of a message came before.
        oversized = then_oversized and send(server, connection, transport,
                                            b"x" * (CONNECTION_SIZE_LIMIT + 1))
        finish(server, transport)
        connection.connection_lost(None)
    assert not errors
    event("oversized" if oversized else "closed before the end" if transport.closing
          else "open to the end")
    event("writing paused" if transport.pauses else "writing never paused")
    event("served over turns of the loop" if server.loop.callbacks_run else "served at once")

    assert transport.writes[0] == HANDSHAKE
    invariants.decode_replies(b"".join(transport.writes[1:]))
    if oversized:
        assert transport.closing and transport.writes[-1] == PROTOCOL_ERROR
    assert connection not in server.connections
    assert server.loop.timers and server.loop.timers[-1].cancelled


# Several slices of input at once, written freely or a reply at a time.
@example(requests=[((b"request", b"seed"), (b"size", b"8"))], rounds=500, cuts=[],
         high_water=10**9)
@example(requests=[((b"request", b"seed"), (b"size", b"8"))], rounds=500, cuts=[5000],
         high_water=1)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(well_shaped_requests(sorted(REQUEST_TYPES)), mangled_requests())
                .filter(lambda message: invariants.requested(message) != b"W"), max_size=40),
       st.integers(1, 100), st.lists(st.integers(0, 20_000), max_size=12), high_waters)
def test_connection_answers_pipelined_requests_as_tlsmgr_does(requests, rounds, cuts,
                                                              high_water):
    # Each message starts with its "request" name, so no piece of the
    # stream is taken for a master(8) trigger, and the server's replies are
    # exactly those of a Tlsmgr asked directly, in order.
    # Several rounds of them: more than a slice of input for the server.
    requests = [message for message in requests
                if message and message[0][0] == b"request"
                and invariants.wire_size(message) <= CONNECTION_SIZE_LIMIT] * rounds
    reference = invariants.make_tlsmgr()
    stream = b"".join(map(invariants.wire_bytes, requests))
    server, connection, transport = connect(high_water)
    with invariants.recording_internal_errors() as errors:
        expected = b"".join(reference.handle(message).data for message in requests)
        edges = [0, *sorted(cut for cut in cuts if cut < len(stream)), len(stream)]
        for start, end in zip(edges, edges[1:]):
            send(server, connection, transport, stream[start:end])
        finish(server, transport)
    assert not errors
    event("served over turns of the loop" if server.loop.callbacks_run else "served at once")
    assert not transport.closing
    assert b"".join(transport.writes) == HANDSHAKE + expected


# (d) The atheris harnesses themselves, briefly.

@pytest.mark.parametrize("harness,kind", [("fuzz_attr.py", "attr"),
                                          ("fuzz_requests.py", "requests")])
def test_atheris_harness_runs_clean(harness, kind, tmp_path):
    require(importlib.util.find_spec("atheris") is not None, "atheris (pip install atheris)")
    found = tmp_path / "found"
    found.mkdir()
    # New inputs go to the first directory, never into the corpus; a
    # fixed seed keeps the test's outcome the same from run to run.
    command = [sys.executable, str(FUZZ_DIR / harness), str(found), str(CORPUS / kind),
               "-runs=20000", "-max_total_time=8", "-seed=1",
               "-artifact_prefix=%s/" % tmp_path]
    result = subprocess.run(command, capture_output=True, text=True, timeout=50)
    assert result.returncode == 0, result.stderr[-4000:]
