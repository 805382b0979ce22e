"""The table of attacks: the one list the runner runs (in this order), that
--list prints, and from which hostile/README.md's list is made
(`python -m hostile --markdown`).

Every attack is judged by the same rule (hostile/README.md, "How a verdict
is reached"): the daemon stays alive, every probe of the well-behaved
client beside it is answered within 1 s with the status it got before,
a fresh connection is answered afterwards, and its RSS is back within
--max-rss-growth-mb (peak within --max-peak-growth-mb).  `passing` says
what that rule means for the attack; what an attack only notes is not a
failure."""

import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hostile import floods, oversized, protocol, slow
from hostile.clients import Ctx

KINDS = {
    "slow": "slow clients and timing (hostile/slow.py)",
    "oversized": "oversized input (hostile/oversized.py)",
    "flood": "floods of requests and connections (hostile/floods.py)",
    "protocol": "the wire protocol (hostile/protocol.py)",
}


@dataclass(frozen=True)
class Attack:
    name: str
    kind: str                               # a key of KINDS: the module it is in
    run: Callable[[Ctx], dict[str, Any]]
    budget: tuple[float, float]             # seconds it may take: full run, --quick
    does: str                               # what it does (full / --quick sizes)
    hostile: str                            # why it is hostile
    passing: str                            # what passing means for it

    def budget_for(self, quick: bool) -> float:
        return self.budget[1] if quick else self.budget[0]


ATTACKS = (
    Attack("stalled-100", "slow", slow.atk_stalled(100), (12, 2),
           "100 connections each send a proper prefix (≥3 bytes, never complete, never a "
           "2-byte wake-up) of a valid request, then nothing, for the whole time cap",
           "a daemon that reads a request synchronously, or one thread per client, stops "
           "serving others",
           "others are answered within 1 s while the 100 requests hang half-sent, and memory "
           "is back once they close"),
    Attack("stalled-500", "slow", slow.atk_stalled(500), (15, 2.5),
           "the same with 500 connections",
           "more than Postfix's default process limit of 100 clients",
           "the same with 500: a daemon that stops accepting fails the probes made on fresh "
           "connections"),
    Attack("slowloris", "slow", slow.atk_slowloris, (20, 3),
           "100 / 30 connections dribble valid requests one byte at a time with random "
           "50–400 ms (20–100 ms) pauses; replies are counted",
           "per-byte wake-ups, per-request timers, partial-message state",
           "probes answered within 1 s while every client keeps the daemon busy with single "
           "bytes; completed requests left without a reply are a note"),
    Attack("slowloris-mass", "slow", slow.atk_slowloris_mass, (20, 3.5),
           "4500 / 2000 connections, each dribbling a byte every 0.5–1.5 s",
           "beats \"close the idle ones\" connection caps: nobody is idle for long",
           "probes, fresh connections among them, answered within 1 s while thousands of "
           "connections are each busy now and then; memory back after"),
    Attack("fat-stalled", "slow", slow.atk_fat_stalled, (15, 3),
           "4000 / 1000 connections each park ~60 KB of an unterminated `update` (just under "
           "a 64 KB-ish request limit), then stall",
           "memory amplification: a per-request cap alone does not bound the total buffered "
           "for all clients",
           "the peak stays within its bound (200 MB) though the full run offers 4000 × 60 KB, "
           "240 MB: the daemon bounds what all clients hold together; probes answered "
           "meanwhile"),
    Attack("huge-64m", "oversized", oversized.atk_huge(False), (20, 3),
           "one attribute value of 64 MiB, never terminated, written as fast as possible "
           "(full: 3 runs — value of cache_id, of request, of keyname)",
           "the daemon must cut off an oversized value instead of buffering it",
           "probes answered meanwhile, the peak within its bound, and whatever the daemon "
           "buffered given back after the connection closes"),
    Attack("huge-64m-nul", "oversized", oversized.atk_huge(True), (20, 3.5),
           "the same, NUL-terminated and followed by the end of message (full: cache_id of "
           "lookup, `size` of 64 MiB digits, `session` of update — deleted again if it was "
           "stored)",
           "a complete but absurd request; big-integer parsing; cache storage",
           "as huge-64m; status 0 for a 64 MiB value, or a 64 MiB session stored, is a note"),
    Attack("endless-name", "oversized", oversized.atk_endless_name, (12, 2.5),
           "an attribute name without NUL, streamed until the daemon closes, 1 GiB / "
           "256 MiB, or 11 s / 1.5 s",
           "unbounded token buffering",
           "memory within the bounds however much of the name the daemon reads; probes "
           "answered meanwhile"),
    Attack("tiny-attrs", "oversized", oversized.atk_tiny_attrs, (15, 3.5),
           "one message of 1,000,000 / 250,000 `a\\0b\\0` pairs after `request seed`; before "
           "a valid request; and 250k / 62k distinct names",
           "per-attribute overhead (dicts, lists) and CPU, not raw size",
           "neither the memory bounds nor a probe's 1 s is exceeded while the daemon parses; "
           "status 0 for any of the three is a note"),
    Attack("pipeline-flood", "flood", floods.atk_pipeline, (15, 3),
           "4 / 2 connections write back-to-back seed(255)/tktkey/lookup/policy requests "
           "(caps 300k / 60k per connection) and never read",
           "the daemon must stop reading (back-pressure) instead of queueing replies without "
           "bound; blocking writes would stall everyone",
           "probes answered and memory within the bounds while replies go unread; taking "
           "every request without back-pressure is a note (the RSS bounds decide)"),
    Attack("nul-flood", "flood", floods.atk_nul_flood, (10, 2),
           "one connection streams NUL bytes (each one an empty request) without reading",
           "cheapest possible request, 1 byte in, an error reply and a log line out",
           "probes answered within 1 s while one client sends a request a byte"),
    Attack("churn", "flood", floods.atk_churn, (15, 2.5),
           "20,000 / 3,000 connect/close cycles: close at once, after handshake, "
           "mid-request, RST (SO_LINGER 0) after a request, RST at once, full request-reply; "
           "every 25th a `W\\0` wake-up trigger (must be closed without reply)",
           "accept/close paths, errors on writes to vanished clients, fd leaks",
           "probes answered and memory back; fds not given back (`WARN ... leak?`) and "
           "complete requests without a reply are notes; what the triggers got is reported"),
    Attack("idle-conns", "flood", floods.atk_idle, (20, 3.5),
           "5,000 / 2,000 idle concurrent connections (bounded by our fd limit); counts "
           "accepted ones and those that got the handshake, and closes by the daemon",
           "fd exhaustion, per-connection memory, accept starvation",
           "probes on fresh connections answered within 1 s while the idle ones are open; "
           "connections not accepted or without handshake are notes"),
    Attack("malformed", "protocol", protocol.atk_malformed, (15, 4),
           "~60 cases on separate connections: seed size 0/256/-1/huge/10,000 "
           "digits/2^32+32/abc/empty/hex/float/`3_2`/Unicode digits/non-UTF-8; duplicate, "
           "extra, missing, misordered attributes; bogus request and cache type names; "
           "invalid base64 and padding in session/keyname; wrong keyname lengths; non-UTF-8 "
           "and control characters in names and values; 0 attributes; 64 KiB of NULs; "
           "random bytes; a 1 MiB name; reply-shaped and handshake-shaped requests. Each "
           "outcome (status, no reply, close) is listed; then a valid request on the same "
           "connection checks it still works",
           "parser crashes, exceptions that kill the event loop, desynchronised replies, log "
           "injection",
           "no input kills the daemon or holds up a probe; status 0 for bad input is a note, "
           "and each outcome is listed, with what the valid request after it got where that "
           "failed"),
    Attack("half-close", "protocol", protocol.atk_half_close, (10, 2),
           "50 / 20 connections each of: full request + shutdown(SHUT_WR); partial request "
           "+ SHUT_WR; SHUT_WR at once; 3 pipelined requests + SHUT_WR. Expects the replies "
           "and then EOF",
           "a daemon that drops the replies on EOF, or never closes half-closed sockets (fd "
           "leak)",
           "probes answered; replies missing before EOF, and half-closed connections the "
           "daemon leaves open, are notes"),
    Attack("cache-churn", "flood", floods.atk_cache_churn, (15, 2.5),
           "pipelined `update` of 4,000 / 500 1 KiB sessions in each of the smtpd and smtp "
           "caches, then `delete` of all of them",
           "heavy legitimate-looking write load must not starve other clients, and memory "
           "must come back",
           "probes answered within 1 s through the writes and memory back after the deletes; "
           "a write or delete that fails stops the attack, and that and entries not deleted "
           "again are notes"),
)

NAMES = [a.name for a in ATTACKS]
assert len(set(NAMES)) == len(NAMES) and all(a.kind in KINDS for a in ATTACKS)


def list_text() -> str:
    """What --list prints: each attack, its time caps, what it does."""
    lines = []
    for a in ATTACKS:
        head = "%-15s %5.1fs/%4.1fs  " % (a.name, a.budget[0], a.budget[1])
        lines += textwrap.wrap(a.does, 100, initial_indent=head,
                               subsequent_indent=" " * len(head))
    return "\n".join(lines)


def markdown() -> str:
    """hostile/README.md's list of the attacks (--markdown)."""
    lines = ["Kinds: " + "; ".join("`%s`, %s" % kv for kv in KINDS.items()) + ".", "",
             "| name | kind | time cap (full / --quick) | what it does (full / --quick sizes) "
             "| why it is hostile | what passing means |",
             "|---|---|---|---|---|---|"]
    for a in ATTACKS:
        lines.append("| %s | %s | %g s / %g s | %s | %s | %s |" % (
            a.name, a.kind, a.budget[0], a.budget[1], a.does, a.hostile, a.passing))
    return "\n".join(lines)
