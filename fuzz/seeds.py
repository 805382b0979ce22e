"""Hand-written starting inputs for the fuzzers.

Each request type, valid and malformed: bad base64, huge integers,
missing, duplicate and extra attributes, empty names and values,
oversized messages.  The corpus under fuzz/corpus/ began as these, grew
by fuzzing and was minimized; tests/test_fuzz.py replays both, so that a
case minimization dropped is still checked.

    python fuzz/seeds.py DIR_FOR_ATTR DIR_FOR_REQUESTS    # write them as files
"""

from __future__ import annotations

import base64
import hashlib
import sys
from pathlib import Path

from invariants import ATTR_LIMITS, FIRST_TICKET_KEY_NAME, REQUEST_SIZE_LIMIT

from tlsmgr.wire.attr import DEFAULT_MAX_SIZE, MAX_ATTRIBUTES, encode


def _raw(*pairs: tuple[bytes, bytes]) -> bytes:
    """A message with values exactly as given (encode() would convert them)."""
    return b"".join(b"%s\0%s\0" % pair for pair in pairs) + b"\0"


def _lookup(cache_type: str, cache_id: str) -> bytes:
    return encode([("request", "lookup"), ("cache_type", cache_type), ("cache_id", cache_id)])


def _update(cache_type: str, cache_id: str, session: bytes) -> bytes:
    return encode([("request", "update"), ("cache_type", cache_type), ("cache_id", cache_id),
                   ("session", session)])


def _delete(cache_type: str, cache_id: str) -> bytes:
    return encode([("request", "delete"), ("cache_type", cache_type), ("cache_id", cache_id)])


# Client byte streams: the requests harness's inputs.
REQUEST_SEEDS: dict[str, bytes] = {
    "seed": encode([("request", "seed"), ("size", 32)]),
    "seed-sizes": b"".join(encode([("request", "seed"), ("size", size)])
                           for size in (0, 1, 255, 256, -1)),
    "seed-size-text": b"".join(_raw((b"request", b"seed"), (b"size", text))
                               for text in (b"lots", b" 7", b"+5", b"", b"12x", b"0x10")),
    "seed-size-huge": _raw((b"request", b"seed"), (b"size", b"99999999999999999999999")),
    # More digits than Python's int() takes by default (4300).
    "seed-size-5000-digits": _raw((b"request", b"seed"), (b"size", b"1" * 5000)),
    "policy": b"".join(encode([("request", "policy"), ("cache_type", cache_type)])
                       for cache_type in ("smtpd", "smtp", "lmtp", "imap", "", "a\x01\x7fb")),
    "policy-missing-cache-type": encode([("request", "policy")]),
    "update-lookup-delete": (_update("smtpd", "a", b"SESSION") + _lookup("smtpd", "a")
                             + _lookup("smtp", "a") + _delete("smtpd", "a")
                             + _delete("smtpd", "a") + _lookup("smtpd", "a")),
    "update-both-caches": (_update("smtp", "id&1", bytes(range(256)))
                           + _update("smtpd", "id&1", b"") + _lookup("smtp", "id&1")
                           + _lookup("smtpd", "id&1")),
    "update-disabled-cache": _update("lmtp", "a", b"S") + _lookup("lmtp", "a")
    + _delete("lmtp", "a"),
    "update-bad-base64": b"".join(
        _raw((b"request", b"update"), (b"cache_type", b"smtpd"), (b"cache_id", b"a"),
             (b"session", text))
        for text in (b"!!", b"QUJ", b"QU!D", b"QQ==QUJD", b"====", b"QQ=A", b"\xff\xfe==")),
    "update-missing-session": _raw((b"request", b"update"), (b"cache_type", b"smtpd"),
                                   (b"cache_id", b"a")),
    "lookup-missing-cache-id": _raw((b"request", b"lookup"), (b"cache_type", b"smtpd")),
    "lookup-out-of-order": _raw((b"request", b"lookup"), (b"cache_id", b"a"),
                                (b"cache_type", b"smtpd")),
    "lookup-unknown-cache": _lookup("imap", "a"),
    "delete-missing-cache-id": _raw((b"request", b"delete"), (b"cache_type", b"smtp")),
    "duplicate-attributes": (
        _raw((b"request", b"seed"), (b"request", b"seed"), (b"size", b"8"))
        + _raw((b"request", b"update"), (b"cache_type", b"smtpd"), (b"cache_id", b"a"),
               (b"cache_id", b"b"), (b"session", b"QUJD"))
        + _raw((b"request", b"seed"), (b"size", b"8"), (b"size", b"9"))),
    "extra-attribute": _raw((b"request", b"seed"), (b"size", b"4"), (b"extra", b"x"),
                            (b"timeout", b"1")),
    "tktkey-current": encode([("request", "tktkey"), ("keyname", b"")]),
    "tktkey-known-name": encode([("request", "tktkey"), ("keyname", b"")])
    + encode([("request", "tktkey"), ("keyname", FIRST_TICKET_KEY_NAME)]),
    "tktkey-unknown-name": encode([("request", "tktkey"), ("keyname", b"N" * 16)]),
    "tktkey-bad-length": encode([("request", "tktkey"), ("keyname", b"ABC")]),
    "tktkey-bad-base64": _raw((b"request", b"tktkey"), (b"keyname", b"QUJD!!!!")),
    "tktkey-missing-keyname": encode([("request", "tktkey")]),
    "unknown-request": encode([("request", "frobnicate")]) + encode([("request", "")]),
    "wakeup-request": encode([("request", "W")]) + encode([("request", "seed"), ("size", 1)]),
    "missing-request": _raw((b"size", b"32")) + b"\0",
    "empty-names": b"\0\0\0" + _raw((b"request", b"")) + b"request\0seed\0\0size\x001\0\0",
    "reply-names-as-request": _raw((b"status", b"0"), (b"session", b"")),
    "oversized": _update("smtpd", "big", b"x" * (REQUEST_SIZE_LIMIT * 3 // 4 + 10)),
    "unterminated": encode([("request", "seed"), ("size", 4)]) + b"request\0seed\0size\x004\0",
    "pipelined": b"".join(encode([("request", "seed"), ("size", n)]) for n in range(1, 60)),
}


def _attr_input(limit: int, largest_piece: int, stream: bytes) -> bytes:
    """An attr harness input: the header picks the limit and the cutting."""
    return bytes([ATTR_LIMITS.index(limit), largest_piece]) + stream


# The attr harness's inputs: some of the streams above, and the decoder's
# own edge cases, cut finely and coarsely, at generous and tight limits.
ATTR_SEEDS: dict[str, bytes] = {
    "seed-whole": _attr_input(DEFAULT_MAX_SIZE, 255, REQUEST_SEEDS["seed"]),
    "seed-byte-at-a-time": _attr_input(DEFAULT_MAX_SIZE, 1, REQUEST_SEEDS["seed"] * 2),
    "pipelined-small-pieces": _attr_input(4096, 7, REQUEST_SEEDS["pipelined"]),
    "update-lookup-delete": _attr_input(512, 30, REQUEST_SEEDS["update-lookup-delete"]),
    "bad-base64": _attr_input(DEFAULT_MAX_SIZE, 5, REQUEST_SEEDS["update-bad-base64"]),
    "empty-names": _attr_input(100, 2, REQUEST_SEEDS["empty-names"]),
    "lone-nul-limit-1": _attr_input(1, 0, b"\0\0"),
    "limit-2": _attr_input(2, 1, b"\0\0a\0\0"),
    "exactly-at-limit": _attr_input(40, 9, b"a\0" + b"b" * (40 - 4) + b"\0\0"),
    "one-over-limit": _attr_input(40, 9, b"a\0" + b"b" * (40 - 3) + b"\0\0"),
    "no-nul-endless": _attr_input(512, 200, b"z" * 600),
    "oversized-in-second-message": _attr_input(100, 13, REQUEST_SEEDS["seed"]
                                               + b"session\0" + b"Q" * 120 + b"\0\0"),
    "too-many-attributes": _attr_input(
        DEFAULT_MAX_SIZE, 64, encode([("a%d" % i, "") for i in range(MAX_ATTRIBUTES + 1)])),
    "attributes-at-cap": _attr_input(
        DEFAULT_MAX_SIZE, 64, encode([("a", "") for _ in range(MAX_ATTRIBUTES)])),
    "values-for-int": _attr_input(
        DEFAULT_MAX_SIZE, 16, b"".join(_raw((b"n", text)) for text in (
            b"4294967295", b"4294967296", b"-2147483648", b"\t\n\x0b\x0c\r 1", b"--1",
            b"18446744073709551616", b"1 ", b"+", b"0" * 50 + b"1"))),
    "values-for-base64": _attr_input(
        DEFAULT_MAX_SIZE, 16, b"".join(_raw((b"d", text)) for text in (
            base64.b64encode(bytes(range(256))), b"QR==", b"Q===", b"QQ==QQ==", b"AAA=",
            b"A\xffAA", b"ABC\x80"))),
    "huge-integer": _attr_input(DEFAULT_MAX_SIZE, 255, REQUEST_SEEDS["seed-size-5000-digits"]),
    "unterminated": _attr_input(4096, 3, REQUEST_SEEDS["unterminated"]),
}


def write(seeds: dict[str, bytes], directory: Path) -> None:
    """Files named by content, as libFuzzer names its corpus."""
    directory.mkdir(parents=True, exist_ok=True)
    for data in seeds.values():
        (directory / hashlib.sha1(data).hexdigest()).write_bytes(data)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: seeds.py DIR_FOR_ATTR DIR_FOR_REQUESTS")
    write(ATTR_SEEDS, Path(sys.argv[1]))
    write(REQUEST_SEEDS, Path(sys.argv[2]))
