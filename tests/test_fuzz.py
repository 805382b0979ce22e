"""Fuzzing in the test suite: the fuzz corpus replayed, hypothesis on the
request handlers, the atheris harnesses run briefly (the server's
Connection gets its own in test_server.py).

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
from helpers.request_strategies import FUZZ_DIR, REQUEST_TYPES, invariants, messages, seeds
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

from tlsmgr.wire.attr import AttrError, Decoder

CORPUS = FUZZ_DIR / "corpus"
CHECKS = {"attr": invariants.check_decoder_input,
          "requests": invariants.check_request_stream}
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

@settings(max_examples=1000, deadline=None)
@given(st.lists(messages, max_size=12))
def test_any_requests_get_well_formed_replies(requests):
    checker = invariants.RequestChecker()
    for message in requests:
        checker.handle(message)
    # The same requests as bytes on the wire, through the decoder.
    invariants.check_request_stream(b"".join(map(invariants.wire_bytes, requests)))


class SessionCacheMachine(RuleBasedStateMachine):
    """update, lookup and delete against one Dispatch behave like a dict,
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


# (c) The atheris harnesses themselves, briefly.

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
