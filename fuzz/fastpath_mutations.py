"""The compiled path (src/tlsmgr/service/_fastpath.c) on the corpus and its mutations.

The atheris harnesses fuzz the pure path.  This one feeds what a client
could send to the compiled path's entry points, FastPath.answer() (through
fastpath.answerer(), as connection.py gets it) and encode_base64(), and
checks what comes back with the checks of invariants.py: each input as
one read (answered only if it is one whole message), then each message it
decodes to, offered to the compiled path first and to the pure one when
it declines, every reply checked by invariants.RequestChecker and compared
with a pure Dispatch's, and the counts compared at the end.

The inputs are the corpus (corpus/requests, the streams of corpus/attr),
the hand-written seeds and the common requests in their plainest form,
and seeded mutations of them: bit flips, interesting bytes, truncations,
splices, insertions, repeated attributes, values replaced by huge or
interesting ones.  Input N of seed S is the same on every run, whatever
came before it, so that one can be replayed alone.

tests/test_sanitizers.py runs the replay and a bounded mutation run under
AddressSanitizer and UBSan; tests/helpers/sanitizers.py runs them longer
(fuzz/README.md).  Against the installed build, without sanitizers:

    .venv/bin/python fuzz/fastpath_mutations.py --seconds 60 --seed 7
    .venv/bin/python fuzz/fastpath_mutations.py --seed 7 --index 1234 --write input.bin
"""

from __future__ import annotations

import argparse
import base64
import binascii
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import invariants
import seeds

from tlsmgr.service import fastpath
from tlsmgr.service.protocol import Reply
from tlsmgr.wire.attr import AttrError, Decoder, Message, encode

FUZZ_DIR = Path(__file__).resolve().parent
CORPUS = FUZZ_DIR / "corpus"

SIZE_LIMIT = invariants.REQUEST_SIZE_LIMIT
# Now and then a limit as large as the daemon allows, so that values of
# tens of kilobytes reach the compiled path's parser and base64 decoder.
LARGE_SIZE_LIMIT = 1 << 17
LARGE_LIMIT_SHARE = 0.1


# The checks.

class CompiledChecker(invariants.RequestChecker):
    """invariants.RequestChecker, with each request offered to the
    compiled path first: what it answers is checked as the pure path's
    replies are, and every reply (either path's) must be the one a pure
    Dispatch in the same state gives."""

    def __init__(self, size_limit: int = SIZE_LIMIT):
        super().__init__()
        self.size_limit = size_limit
        self.pure = self.tlsmgr
        answer = fastpath.answerer(self.pure, size_limit)
        if answer is None:
            raise RuntimeError("the compiled path is not built (fastpath.COMPILED is false)")
        self.answer = answer
        self.twin = invariants.make_dispatch()
        self.answered = 0
        # RequestChecker.handle() asks self.tlsmgr, and checks its reply.
        self.tlsmgr = _CompiledFirst(self)

    def compiled_first(self, message: Message) -> Reply:
        data = invariants.wire_bytes(message)
        written: list[bytes] = []
        if self.answer(data, written.append, time.monotonic()):
            assert len(written) == 1, ("answered with %d writes" % len(written), data[:200])
            assert type(written[0]) is bytes, type(written[0])
            reply = Reply(written[0])
            self.answered += 1
        else:
            assert not written, ("declined, but wrote", data[:200], written)
            reply = self.pure.handle(message)
        expected = self.twin.handle(message)
        assert (reply.data, reply.close) == (expected.data, expected.close), (
            "the paths differ", data[:200], _difference(reply.data, expected.data),
            reply.close, expected.close)
        return reply

    def read(self, data: bytes) -> None:
        """data as one read between requests, as Connection.data_received()
        offers it to the compiled path: answered there only if it is one
        whole message, which the pure decoder reads alike."""
        decoder = Decoder(self.size_limit)
        try:
            messages = decoder.feed(data)
        except AttrError:
            messages = []
        if len(messages) == 1 and decoder.idle and invariants.wire_bytes(messages[0]) == data:
            self.handle(messages[0])
            return
        written: list[bytes] = []
        assert not self.answer(data, written.append, time.monotonic()), (
            "answered what is not one whole message", data[:200])
        assert not written

    def stream(self, data: bytes) -> None:
        """data as a client's stream: each message it decodes to, in
        slices, as invariants.check_request_stream() reads it."""
        decoder = Decoder(self.size_limit)
        for start in range(0, len(data), invariants.REQUEST_SLICE):
            try:
                messages = decoder.feed(data[start:start + invariants.REQUEST_SLICE])
            except AttrError:
                return
            for message in messages:
                self.handle(message)

    def finish(self) -> None:
        """The counts the compiled path kept (settle() adds them in) are
        those of the pure twin, and so are the caches'."""
        self.pure.stats.settle()
        for name in ("requests", "ticket_lookups", "errors"):
            mine, theirs = (
                {key: count for key, count in getattr(dispatch.stats, name).items() if count}
                for dispatch in (self.pure, self.twin))
            assert mine == theirs, (name, mine, theirs)
        for label, cache in self.pure.client.caches.items():
            twin_cache = self.twin.client.caches[label]
            assert (cache and cache.stats()) == (twin_cache and twin_cache.stats()), label


def _difference(compiled: bytes, pure: bytes) -> str:
    at = next((i for i, (a, b) in enumerate(zip(compiled, pure)) if a != b),
              min(len(compiled), len(pure)))
    return "the replies (%d and %d bytes) differ from byte %d: %r, where the pure path has %r" % (
        len(compiled), len(pure), at, compiled[max(0, at - 20):at + 60],
        pure[max(0, at - 20):at + 60])


class _CompiledFirst:
    """What RequestChecker takes for its Dispatch."""

    def __init__(self, checker: CompiledChecker):
        self.handle = checker.compiled_first


def check_encoder(data: bytes) -> None:
    from tlsmgr.service._fastpath import encode_base64

    assert encode_base64(data) == binascii.b2a_base64(data, newline=False)
    view = memoryview(data)[1:]             # a buffer that starts anywhere
    assert encode_base64(view) == binascii.b2a_base64(view, newline=False)


def check_compiled_input(data: bytes, size_limit: int = SIZE_LIMIT) -> int:
    """All the checks on one input; returns how many requests the
    compiled path answered."""
    checker = CompiledChecker(size_limit)
    with invariants.recording_internal_errors():       # keeps the warnings quiet
        checker.read(data)
        checker.stream(data)
    checker.finish()
    check_encoder(data)
    return checker.answered


# The inputs.

def _request(*attributes: tuple[str, object]) -> bytes:
    return encode(attributes)


def plain_requests() -> list[bytes]:
    """The requests the compiled path answers itself (and some it leaves),
    as Postfix sends them: mutations of these stay near its edges."""
    key_name = invariants.FIRST_TICKET_KEY_NAME
    sessions = [bytes(range(length % 256)) * (1 + length // 256)
                for length in (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 47, 300, 2048)]
    updates = [_request(("request", "update"), ("cache_type", "smtpd"), ("cache_id", "k"),
                        ("session", session)) for session in sessions]
    requests = list(updates)
    for cache_type in ("smtpd", "smtp", "lmtp", "imap"):
        for request in ("lookup", "delete"):
            requests.append(_request(("request", request), ("cache_type", cache_type),
                                     ("cache_id", "k")))
    requests += [_request(("request", "tktkey"), ("keyname", name))
                 for name in (b"", key_name, b"N" * 16, b"N" * 15, b"N" * 17)]
    requests += [_request(("request", "seed"), ("size", size)) for size in (1, 32, 255, 256)]
    # A session saved, then found: the lookup's reply is encoded in C.
    requests.append(updates[-2] + _request(("request", "lookup"), ("cache_type", "smtpd"),
                                            ("cache_id", "k")))
    return requests


def base_inputs() -> list[bytes]:
    """What the mutations start from: the corpus (of attr inputs, the
    stream after the two header bytes), the seeds, the plain requests."""
    inputs = [path.read_bytes() for path in sorted((CORPUS / "requests").iterdir())]
    inputs += [path.read_bytes()[2:] for path in sorted((CORPUS / "attr").iterdir())]
    inputs += list(seeds.REQUEST_SEEDS.values())
    inputs += [data[2:] for data in seeds.ATTR_SEEDS.values()]
    inputs += plain_requests()
    return inputs


def replay_inputs() -> dict[str, bytes]:
    """The corpus and the seeds as they are, the streams of the attr
    inputs, and the plain requests, by name."""
    inputs = {}
    for kind in ("requests", "attr"):
        for path in sorted((CORPUS / kind).iterdir()):
            inputs["corpus/%s/%s" % (kind, path.name)] = path.read_bytes()
            if kind == "attr":
                inputs["corpus/attr/%s[2:]" % path.name] = path.read_bytes()[2:]
    for kind, table in (("requests", seeds.REQUEST_SEEDS), ("attr", seeds.ATTR_SEEDS)):
        for name, data in table.items():
            inputs["seeds %s %s" % (kind, name)] = data
            if kind == "attr":
                inputs["seeds attr %s[2:]" % name] = data[2:]
    for number, data in enumerate(plain_requests()):
        inputs["plain request %d" % number] = data
    return inputs


# The mutations.  Each takes (rng, data, inputs) and returns new bytes.

INTERESTING_BYTES = b"\0=A/+0\x80\xff"
INTERESTING_TOKENS = [
    b"", b"=", b"==", b"===", b"====", b"A", b"AA", b"AAA", b"AAAA", b"A===", b"AA==",
    b"AAA=", b"QQ==QQ==", b"=AAA", b"AA=A", b"\xff\xff==", b"\x80AAA",
    b"0", b"1", b"9", b"10", b"99", b"255", b"256", b"999", b"1000", b"-1", b"+1", b" 1",
    b"4294967296", b"9" * 20, b"9" * 5000,
    b"request", b"lookup", b"update", b"delete", b"tktkey", b"seed", b"policy", b"W",
    b"cache_type", b"cache_id", b"session", b"keyname", b"size",
    b"smtpd", b"smtp", b"lmtp", b"imap",
    base64.b64encode(invariants.FIRST_TICKET_KEY_NAME), base64.b64encode(b"N" * 16),
    base64.b64encode(b"N" * 15), base64.b64encode(b"N" * 17), base64.b64encode(b"N" * 18),
]


def _tokens(data: bytes) -> list[bytes]:
    return data.split(b"\0")


def flip_bits(rng: random.Random, data: bytes, inputs: list[bytes]) -> bytes:
    if not data:
        return bytes([rng.randrange(256)])
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def set_bytes(rng: random.Random, data: bytes, inputs: list[bytes]) -> bytes:
    if not data:
        return bytes([rng.choice(INTERESTING_BYTES)])
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        out[rng.randrange(len(out))] = rng.choice(INTERESTING_BYTES)
    return bytes(out)


def truncate(rng: random.Random, data: bytes, inputs: list[bytes]) -> bytes:
    cut = rng.randint(0, len(data))
    # Mostly a little off the end: a message cut just short of its end.
    if rng.random() < 0.5:
        cut = max(0, len(data) - rng.randint(1, 4))
    return data[:cut] if rng.random() < 0.8 else data[cut:]


def splice(rng: random.Random, data: bytes, inputs: list[bytes]) -> bytes:
    other = rng.choice(inputs)
    return data[:rng.randint(0, len(data))] + other[rng.randint(0, len(other)):]


def concatenate(rng: random.Random, data: bytes, inputs: list[bytes]) -> bytes:
    return data + rng.choice(inputs) if rng.random() < 0.5 else rng.choice(inputs) + data


def insert(rng: random.Random, data: bytes, inputs: list[bytes]) -> bytes:
    at = rng.randint(0, len(data))
    if data and rng.random() < 0.5:
        start = rng.randrange(len(data))
        piece = data[start:start + rng.randint(1, 16)]
    else:
        piece = rng.randbytes(rng.randint(1, 8))
    return data[:at] + piece + data[at:]


def erase(rng: random.Random, data: bytes, inputs: list[bytes]) -> bytes:
    if not data:
        return data
    start = rng.randrange(len(data))
    return data[:start] + data[start + rng.randint(1, 16):]


def repeat_attribute(rng: random.Random, data: bytes, inputs: list[bytes]) -> bytes:
    """A name and the value after it, repeated right after them."""
    tokens = _tokens(data)
    if len(tokens) < 3:
        return data
    index = rng.randrange(len(tokens) - 2)
    times = rng.choice((1, 1, 1, 2, 3, 255, 256, 300))
    attribute = tokens[index:index + 2] * times
    return b"\0".join(tokens[:index + 2] + attribute + tokens[index + 2:])


def replace_token(rng: random.Random, data: bytes, inputs: list[bytes]) -> bytes:
    tokens = _tokens(data)
    tokens[rng.randrange(len(tokens))] = rng.choice(INTERESTING_TOKENS)
    return b"\0".join(tokens)


def drop_token(rng: random.Random, data: bytes, inputs: list[bytes]) -> bytes:
    tokens = _tokens(data)
    del tokens[rng.randrange(len(tokens))]
    return b"\0".join(tokens)


def huge_value(rng: random.Random, data: bytes, inputs: list[bytes]) -> bytes:
    """A name or value made long: the whole input a byte or two either
    side of a size limit, or anything up to three times the larger one."""
    tokens = _tokens(data)
    index = rng.randrange(len(tokens))
    rest = len(data) - len(tokens[index])
    length = rng.choice((
        SIZE_LIMIT - rest + rng.randint(-2, 2),
        LARGE_SIZE_LIMIT - rest + rng.randint(-2, 2),
        rng.randint(0, 3 * SIZE_LIMIT),
        rng.randint(0, 3 * LARGE_SIZE_LIMIT)))
    length = max(0, length)
    kind = rng.randrange(4)
    if kind == 0:           # base64 text, its padding as it comes out
        text = base64.b64encode(rng.randbytes(length * 3 // 4 + 1))[:length]
    elif kind == 1:
        text = b"9" * length
    elif kind == 2:
        text = (tokens[index] or b"A") * (length // max(1, len(tokens[index])) + 1)
    else:
        text = rng.randbytes(length).replace(b"\0", b"\1")
    tokens[index] = text[:length]
    return b"\0".join(tokens)


MUTATIONS: list[Callable[[random.Random, bytes, list[bytes]], bytes]] = [
    flip_bits, set_bytes, truncate, splice, concatenate, insert, erase,
    repeat_attribute, repeat_attribute, replace_token, replace_token, drop_token,
    huge_value,
]
# No input larger than this (a mutation of a mutation could grow without end).
MAX_INPUT = 4 * LARGE_SIZE_LIMIT


class Mutator:
    def __init__(self, inputs: list[bytes]):
        self.inputs = inputs

    def case(self, seed: int, index: int) -> tuple[bytes, int]:
        """Input number index of seed's run, and its size limit."""
        rng = random.Random("%d:%d" % (seed, index))
        data = rng.choice(self.inputs)
        for _ in range(rng.choice((1, 1, 2, 3, 4))):
            data = rng.choice(MUTATIONS)(rng, data, self.inputs)[:MAX_INPUT]
        size_limit = LARGE_SIZE_LIMIT if rng.random() < LARGE_LIMIT_SHARE else SIZE_LIMIT
        return data, size_limit


# Running.

def replay(log=sys.stderr) -> tuple[int, int]:
    """The corpus, seeds and plain requests through the compiled path:
    (inputs, requests it answered)."""
    inputs = replay_inputs()
    answered = 0
    for name, data in inputs.items():
        try:
            answered += check_compiled_input(data)
        except AssertionError:
            print("%s (%d bytes) broke a check: %r" % (name, len(data), data[:300]), file=log)
            raise
    print("replayed %d inputs; the compiled path answered %d requests"
          % (len(inputs), answered), file=log)
    return len(inputs), answered


def reproduce_hint(seed: int, index: int) -> str:
    return ("check it alone: .venv/bin/python fuzz/fastpath_mutations.py --seed %d --index %d"
            " (add --write FILE to keep it; tests/helpers/sanitizers.py takes --seed and"
            " --index too)" % (seed, index))


def mutate(seed: int, count: int | None, seconds: float | None, progress: str | None = None,
           log=sys.stderr) -> tuple[int, int]:
    """Inputs 0, 1, ... of the seed's run, until count of them or seconds
    have passed: (inputs, requests the compiled path answered).  With
    progress, the number of the input being checked is kept in that file
    (a sanitizer's report ends the process before Python could say it)."""
    mutator = Mutator(base_inputs())
    deadline = None if seconds is None else time.monotonic() + seconds
    progress_fd = None if progress is None else os.open(progress, os.O_WRONLY | os.O_CREAT)
    index = answered = 0
    try:
        while count is None or index < count:
            if deadline is not None and index % 32 == 0 and time.monotonic() > deadline:
                break
            if progress_fd is not None:
                os.pwrite(progress_fd, b"%12d\n" % index, 0)
            data, size_limit = mutator.case(seed, index)
            try:
                answered += check_compiled_input(data, size_limit)
            except AssertionError:
                print("input %d of seed %d (%d bytes, size limit %d) broke a check: %r"
                      % (index, seed, len(data), size_limit, data[:300]), file=log)
                print(reproduce_hint(seed, index), file=log)
                raise
            index += 1
    finally:
        if progress_fd is not None:
            os.close(progress_fd)
    print("seed %d: %d inputs; the compiled path answered %d requests"
          % (seed, index, answered), file=log)
    return index, answered


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, help="stop after this many inputs")
    parser.add_argument("--seconds", type=float, help="stop after this long")
    parser.add_argument("--index", type=int, help="check only this input of the seed's run")
    parser.add_argument("--write", metavar="FILE", help="with --index: write the input there")
    parser.add_argument("--replay", action="store_true",
                        help="replay the corpus, seeds and plain requests instead")
    parser.add_argument("--progress", metavar="FILE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.replay:
        replay()
    elif args.index is not None:
        data, size_limit = Mutator(base_inputs()).case(args.seed, args.index)
        if args.write:
            Path(args.write).write_bytes(data)
        print("input %d of seed %d: %d bytes, size limit %d"
              % (args.index, args.seed, len(data), size_limit), file=sys.stderr)
        check_compiled_input(data, size_limit)
    else:
        if args.count is None and args.seconds is None:
            parser.error("give --count, --seconds or both")
        mutate(args.seed, args.count, args.seconds, args.progress)


if __name__ == "__main__":
    main()
