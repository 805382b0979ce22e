"""The compiled path (fastpath.py, _fastpath.c) held to the pure one.

Any message, right or wrong, sent as one read to a Connection on each
path gets the same replies, the same counts (requests, tktkey outcomes,
errors, latency observations, cache hits and misses), the same cache
contents and the same log lines.  The common requests in their plainest
form are answered by the compiled path itself; whatever is not, it leaves
untouched.  Without a compiler, ``pip install .`` still gives a working
package, on the pure path alone.
"""

import base64
import binascii
import logging
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from conftest import require
from helpers.connection_fakes import DAEMON_SIZE_LIMIT, connect
from helpers.request_strategies import invariants, messages
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tlsmgr.service import fastpath
from tlsmgr.wire.attr import Decoder, MessageTooLarge, encode
from tlsmgr.wire.requests import LOOKUP, Kind

SOURCE = Path(__file__).resolve().parents[1]
KEY_NAME = base64.b64encode(invariants.FIRST_TICKET_KEY_NAME)


@pytest.fixture
def compiled():
    require(fastpath.COMPILED, "the compiled path (pip install . with gcc and Python's "
            "headers: apt-get install gcc python3-dev)")


def wire(*attributes):
    return encode(attributes)


# The common requests as Postfix sends them: the compiled path answers these.
PLAIN = [
    wire(("request", "update"), ("cache_type", "smtpd"), ("cache_id", "id1"),
         ("session", b"s" * 300)),
    wire(("request", "lookup"), ("cache_type", "smtpd"), ("cache_id", "id1")),
    wire(("request", "lookup"), ("cache_type", "smtp"), ("cache_id", "never")),
    wire(("request", "delete"), ("cache_type", "smtpd"), ("cache_id", "id1")),
    wire(("request", "delete"), ("cache_type", "smtpd"), ("cache_id", "")),
    wire(("request", "update"), ("cache_type", "smtp"), ("cache_id", "x"), ("session", b"")),
    wire(("request", "update"), ("cache_type", "smtp"), ("cache_id", "y"), ("session", b"ab")),
    wire(("request", "tktkey"), ("keyname", b"")),
    wire(("request", "tktkey"), ("keyname", invariants.FIRST_TICKET_KEY_NAME)),
    wire(("request", "tktkey"), ("keyname", b"N" * 16)),
    wire(("request", "seed"), ("size", 32)),
    wire(("request", "seed"), ("size", 1)),
    wire(("request", "seed"), ("size", 255)),
]

# Near misses, which the pure path reads (and mostly warns about).
DECLINED = [
    b"", b"\0", b"W\0", b"request\0lookup\0",                  # not one whole message
    PLAIN[1][:-1], PLAIN[1] + PLAIN[2],                      # part of one; two
    wire(("request", "policy"), ("cache_type", "smtpd")),    # not a common request
    wire(("request", "lookup"), ("cache_type", "lmtp"), ("cache_id", "a")),   # disabled
    wire(("request", "lookup"), ("cache_type", "imap"), ("cache_id", "a")),   # unknown
    wire(("request", "lookup"), ("cache_id", "a"), ("cache_type", "smtpd")),  # out of order
    wire(("request", "lookup"), ("cache_type", "smtpd")),                     # one missing
    wire(("request", "lookup"), ("cache_type", "smtpd"), ("cache_id", "a"), ("x", "y")),
    wire(("request", "seed"), ("size", "032")), wire(("request", "seed"), ("size", " 32")),
    wire(("request", "seed"), ("size", "+32")), wire(("request", "seed"), ("size", "0")),
    wire(("request", "seed"), ("size", "256")), wire(("request", "seed"), ("size", "")),
    wire(("request", "seed"), ("size", "4294967295")),
    wire(("request", "tktkey"), ("keyname", b"N" * 15)),                     # wrong length
    wire(("request", "tktkey"), ("keyname", "TlROTk5OTk5OTk5OTk5OTg=x")),    # not base64
    wire(("request", "update"), ("cache_type", "smtpd"), ("cache_id", "a"),
         ("session", "ab=c")),                      # Postfix stops at the first "="
    wire(("request", "update"), ("cache_type", "smtpd"), ("cache_id", "a"),
         ("session", "YQ=")),
    wire(("request", "update"), ("cache_type", "smtpd"), ("cache_id", "a"),
         ("session", "a===")),
    # Not a letter in a whole group, first or later, or in the padded one.
    *(wire(("request", "update"), ("cache_type", "smtpd"), ("cache_id", "a"),
           ("session", session))
      for session in ("YW*jYWJj", "YWJjYW\xffj", "YQ==YWJj", "YWJjY*==", "YWJjYW*=")),
    wire(("requests", "lookup"), ("cache_type", "smtpd"), ("cache_id", "a")),
    wire(("request", "lookupx"), ("cache_type", "smtpd"), ("cache_id", "a")),
]


class Recorder(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []

    def emit(self, record):
        self.lines.append((record.levelname, record.getMessage()))


def observed(shared, transport, lines):
    """All a user could notice of a Connection's work."""
    stats = shared.dispatch.stats
    stats.settle()
    return {
        "replies": transport.writes,
        "requests": {name: count for name, count in stats.requests.items() if count},
        "ticket lookups": {name: count for name, count in stats.ticket_lookups.items()
                           if count},
        "errors": dict(stats.errors),
        "latency observations": {name: sum(histogram.counts)
                                 for name, histogram in stats.latency.items()},
        "caches": {label: cache.stats() if cache else None
                   for label, cache in shared.dispatch.client.caches.items()},
        "log": lines,
    }


def run_both(reads, prepare=lambda tlsmgr: None):
    """Each read as one data_received(), on each path: what was observed."""
    logger = logging.getLogger("tlsmgr")
    found = {}
    for path in ("pure", "compiled"):
        shared, connection, transport = connect(10**9, path)
        prepare(shared.dispatch.client)
        recorder = Recorder()
        logger.addHandler(recorder)
        try:
            for data in reads:
                if transport.closing:       # as an event loop: no reads after close()
                    break
                connection.data_received(data)
                shared.loop.run_ready()
        finally:
            logger.removeHandler(recorder)
        found[path] = observed(shared, transport, recorder.lines)
    return found


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(messages.map(invariants.wire_bytes), st.sampled_from(PLAIN),
                          st.sampled_from(DECLINED)), max_size=12))
@example(PLAIN + DECLINED)
@pytest.mark.usefixtures("compiled")
def test_the_compiled_path_answers_as_the_pure_one(reads):
    found = run_both(reads)
    assert found["compiled"] == found["pure"]


REQUESTS_CORPUS = sorted((SOURCE / "fuzz" / "corpus" / "requests").iterdir())


@pytest.mark.usefixtures("compiled")
@pytest.mark.parametrize("corpus_file", REQUESTS_CORPUS, ids=lambda path: path.name)
def test_the_fuzz_corpus_is_answered_alike(corpus_file):
    # The fuzzers' streams, a message per read, so that the compiled path
    # meets each message that fits the connection's limit.
    decoder = Decoder(invariants.REQUEST_SIZE_LIMIT)
    try:
        messages = decoder.feed(corpus_file.read_bytes())
    except MessageTooLarge:
        messages = []
    found = run_both([invariants.wire_bytes(message) for message in messages])
    assert found["compiled"] == found["pure"]


@pytest.mark.usefixtures("compiled")
def test_the_common_requests_are_answered_by_the_compiled_path():
    shared, _, transport = connect(10**9, "compiled")
    replies = []
    for data in PLAIN:
        assert shared.answer(data, replies.append, time.monotonic()), data
    # Each answered once, in shape, and counted.
    assert [invariants.decode_replies(reply)[0][b"status"] for reply in replies] == [
        0, 0, -1, 0, -1, 0, 0, 0, 0, -1, 0, 0, 0]
    # Counted in C, and added into the stats when they are read: once.
    stats = shared.dispatch.stats
    for _ in range(2):
        stats.settle()
        assert stats.requests[b"lookup"] == 2
        assert sum(stats.latency[b"seed"].counts) == 3
        assert 0 < stats.latency[b"seed"].sum < 3 * 60


@pytest.mark.usefixtures("compiled")
def test_a_request_the_counts_do_not_name_yet_is_counted_from_zero():
    shared, _, _ = connect(10**9, "compiled")
    stats = shared.dispatch.stats
    stats.requests.clear()
    for data in PLAIN[:3]:
        assert shared.answer(data, lambda reply: None, time.monotonic())
    stats.settle()
    assert stats.requests == {b"update": 1, b"lookup": 2}


@pytest.mark.usefixtures("compiled")
def test_what_the_compiled_path_leaves_to_the_pure_one_it_leaves_untouched():
    shared, _, _ = connect(10**9, "compiled")
    before = observed(shared, _FakeWrites(), [])
    written = []
    for data in DECLINED:
        assert not shared.answer(data, written.append, time.monotonic()), data
    assert not written
    assert observed(shared, _FakeWrites(), []) == before


class _FakeWrites:
    writes = ()


@pytest.mark.usefixtures("compiled")
def test_a_request_behind_an_unfinished_one_waits_its_turn():
    # The first half of a lookup, then a whole tktkey in one read, then
    # the rest of the lookup: the compiled path must not answer the
    # tktkey ahead of the lookup it follows.
    lookup = PLAIN[2]
    found = run_both([lookup[:10], lookup[10:] + PLAIN[7], PLAIN[7]])
    assert found["compiled"] == found["pure"]
    replies = found["compiled"]["replies"][1:]
    assert [len(invariants.decode_replies(reply)) for reply in replies] == [2, 1]


@pytest.mark.usefixtures("compiled")
def test_a_failure_inside_a_request_is_answered_and_logged_alike():
    def breaking(client):
        def get(cache_id):
            raise RuntimeError("the store is broken")
        client.caches[b"smtpd"].store.get = get

    found = run_both([PLAIN[1], PLAIN[7]], prepare=breaking)
    assert found["compiled"] == found["pure"]
    assert found["compiled"]["errors"] == {"internal": 1}
    assert ("ERROR", "cannot answer lookup request: RuntimeError: the store is broken") \
        in found["compiled"]["log"]


@pytest.mark.usefixtures("compiled")
def test_an_exit_from_inside_a_request_is_not_swallowed():
    shared, connection, _ = connect(10**9, "compiled")

    def exiting(size):
        raise SystemExit(1)
    shared.dispatch.client.random_bytes = exiting
    with pytest.raises(SystemExit):
        connection.data_received(PLAIN[10])


def test_the_package_installs_and_works_without_a_compiler(tmp_path):
    # What a source release holds (the work tree may be read-only, and has
    # the compiled path built in it), built with a compiler that always
    # fails, as on a machine without gcc.
    source = tmp_path / "source"
    shutil.copytree(SOURCE / "src", source / "src",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__", "*.egg-info"))
    shutil.copytree(SOURCE / "man", source / "man")
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copyfile(SOURCE / name, source / name)
    env = dict(os.environ, CC="false", LDSHARED="false")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "wheels"),
         str(source)],
        env=env, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    [wheel] = (tmp_path / "wheels").glob("tlsmgr-*.whl")
    assert not [name for name in zipfile.ZipFile(wheel).namelist() if name.endswith(".so")]
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
         "--target", str(tmp_path / "site"), str(wheel)],
        env=env, capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr
    # The daemon's own code, from the wheel alone, answers on the pure path.
    check = subprocess.run(
        [sys.executable, "-c", "import tlsmgr, tlsmgr.service.fastpath as f, "
         "tlsmgr.runtime.server; "
         "print(tlsmgr.__file__, f.COMPILED)"],
        env=dict(os.environ, PYTHONPATH=str(tmp_path / "site")), capture_output=True,
        text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    where, compiled = check.stdout.split()
    assert where.startswith(str(tmp_path / "site")) and compiled == "False"


# Bytes of a length drawn evenly from 0 to 3000: st.binary() alone seldom
# draws more than a few dozen, and the base64 code has a loop for long data.
SESSIONS = st.integers(0, 3000).flatmap(lambda size: st.binary(min_size=size, max_size=size))


@pytest.mark.usefixtures("compiled")
@given(SESSIONS)
def test_a_session_saved_on_the_compiled_path_is_found_as_it_was(session):
    # Both base64 directions in C, every length modulo 6 (the encoder's
    # step) and 3 (padding 0, 1, 2), in a request the daemon's default
    # size limit allows.
    shared, _, _ = connect(10**9, "compiled", size_limit=DAEMON_SIZE_LIMIT)
    replies = []
    update = wire(("request", "update"), ("cache_type", "smtpd"), ("cache_id", "k"),
                  ("session", session))
    lookup = wire(("request", "lookup"), ("cache_type", "smtpd"), ("cache_id", "k"))
    assert shared.answer(update, replies.append, time.monotonic())
    assert shared.answer(lookup, replies.append, time.monotonic())
    assert [invariants.decode_replies(reply)[0] for reply in replies] == [
        {b"status": 0}, {b"status": 0, b"session": session}]


@pytest.mark.usefixtures("compiled")
@given(SESSIONS)
def test_the_compiled_base64_encoder_is_binascii(data):
    from tlsmgr.service._fastpath import encode_base64

    assert encode_base64(data) == binascii.b2a_base64(data, newline=False)
    assert encode_base64(bytearray(data)) == encode_base64(memoryview(data))


@pytest.mark.usefixtures("compiled")
def test_a_table_the_compiled_path_cannot_read_leaves_every_request_to_the_pure_one(
        monkeypatch, caplog):
    # A kind of attribute _fastpath.c does not know: the daemon serves on
    # the pure path, with one warning, rather than not at all.
    odd = LOOKUP._replace(reads=((b"cache_type", Kind(None, "", b"x")), LOOKUP.reads[1]))
    monkeypatch.setitem(fastpath.TABLE, LOOKUP.name, odd)
    assert fastpath.answerer(invariants.make_dispatch(), DAEMON_SIZE_LIMIT) is None
    assert "the compiled path cannot answer as the request table says" in caplog.text
