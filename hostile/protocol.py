"""The wire protocol: requests malformed in every way the attribute format
allows, and connections half-closed after a request, so that a parser that
raises, desynchronises, or drops replies on EOF shows."""

import base64
import selectors
import socket

from hostile.attr0 import (
    HANDSHAKE_MSG,
    Garbage,
    MiB,
    Parser,
    enc,
    req_lookup,
    req_policy,
    req_seed,
    status_of,
)
from hostile.net import errname, now, send_until, try_recv


def malformed_cases(ctx):
    rng = ctx.rng
    E = enc
    cid = "hostile-%s-malformed" % ctx.runid
    garbage = bytes(rng.randrange(1, 256) for _ in range(4096))
    rnd = bytes(rng.randrange(256) for _ in range(65536))
    b64 = lambda n: base64.b64encode(bytes(rng.randrange(256) for _ in range(n)))  # noqa: E731
    # (name, payload, expectation): ok = status 0 expected; err = anything but
    # status 0 (an error status, no reply, or a close); any = no expectation
    return [
        ("control-seed", E("request", "seed", "size", "32"), "ok"),
        ("seed-size-0", E("request", "seed", "size", "0"), "err"),
        ("seed-size-256", E("request", "seed", "size", "256"), "err"),
        ("seed-size-negative", E("request", "seed", "size", "-1"), "err"),
        ("seed-size-40-digits", E("request", "seed", "size", "9" * 40), "err"),
        ("seed-size-10000-digits", E("request", "seed", "size", "9" * 10000), "err"),
        ("seed-size-2^32+32", E("request", "seed", "size", "4294967328"), "any"),
        ("seed-size-non-numeric", E("request", "seed", "size", "abc"), "err"),
        ("seed-size-empty", E("request", "seed", "size", ""), "err"),
        ("seed-size-trailing-junk", E("request", "seed", "size", "32abc"), "err"),
        ("seed-size-hex", E("request", "seed", "size", "0x20"), "err"),
        ("seed-size-float", E("request", "seed", "size", "3.2e1"), "err"),
        ("seed-size-underscore", E("request", "seed", "size", "3_2"), "err"),
        ("seed-size-unicode-digits", E("request", "seed", "size", "\u0663\u0662".encode()), "err"),
        ("seed-size-non-utf8", E("request", "seed", "size", b"3\xff"), "err"),
        ("seed-size-spaces", E("request", "seed", "size", " 32"), "any"),
        ("seed-missing-size", E("request", "seed"), "err"),
        ("seed-dup-size", E("request", "seed", "size", "32", "size", "32"), "err"),
        ("seed-dup-request", E("request", "seed", "request", "seed", "size", "32"), "err"),
        ("seed-extra-attr", E("request", "seed", "size", "32", "extra", "1"), "err"),
        ("lookup-wrong-order", E("request", "lookup", "cache_id", cid, "cache_type", "smtpd"),
         "err"),
        ("lookup-missing-id", E("request", "lookup", "cache_type", "smtpd"), "err"),
        ("lookup-id-64k", E("request", "lookup", "cache_type", "smtpd", "cache_id", "x" * 65536),
         "any"),
        ("lookup-id-non-utf8", E("request", "lookup", "cache_type", "smtpd",
                                 "cache_id", b"\xff\xfe\xc3\x28"), "any"),
        ("policy-bogus-type", E("request", "policy", "cache_type", "bogus"), "err"),
        ("policy-empty-type", E("request", "policy", "cache_type", ""), "err"),
        ("policy-type-non-utf8", E("request", "policy", "cache_type", b"smtpd\xff"), "err"),
        ("policy-type-case", E("request", "policy", "cache_type", "SMTPD"), "err"),
        ("update-bad-base64", E("request", "update", "cache_type", "smtpd", "cache_id", cid,
                                "session", "%%%not*base64%%%"), "err"),
        ("update-bad-padding", E("request", "update", "cache_type", "smtpd", "cache_id", cid,
                                 "session", "QUJ"), "err"),
        ("update-base64-whitespace", E("request", "update", "cache_type", "smtpd", "cache_id", cid,
                                       "session", "QU JD\n"), "any"),
        ("update-missing-session", E("request", "update", "cache_type", "smtpd", "cache_id", cid),
         "err"),
        ("update-bogus-type", E("request", "update", "cache_type", "nope", "cache_id", cid,
                                "session", "QUJD"), "err"),
        ("delete-missing-id", E("request", "delete", "cache_type", "smtpd"), "err"),
        ("tktkey-bad-base64", E("request", "tktkey", "keyname", "!!!!"), "err"),
        ("tktkey-name-15-bytes", E("request", "tktkey", "keyname", b64(15)), "err"),
        ("tktkey-name-17-bytes", E("request", "tktkey", "keyname", b64(17)), "err"),
        ("tktkey-unknown-16-bytes", E("request", "tktkey", "keyname", b64(16)), "err"),
        ("tktkey-missing-keyname", E("request", "tktkey"), "err"),
        ("request-empty", E("request", ""), "err"),
        ("request-unknown", E("request", "bogus"), "err"),
        ("request-uppercase", E("request", "SEED", "size", "32"), "err"),
        ("request-trailing-space", E("request", "seed ", "size", "32"), "err"),
        ("request-100k-name", E("request", "x" * 100000), "err"),
        ("request-non-utf8", E("request", b"\xc3\x28\xff"), "err"),
        ("request-format-string", E("request", "%s%s%n%x", "size", "32"), "err"),
        ("first-attr-not-request", E("size", "32", "request", "seed"), "err"),
        ("attr-name-log-injection", E("request", "seed", b"x\nfake log line\x1b[31m\r", "1"),
         "err"),
        ("attr-name-non-utf8", E(b"\xff\xfe", "x", "request", "seed", "size", "32"), "err"),
        ("reply-shaped", E("status", "0", "seed", "AAAA"), "err"),
        ("handshake-echo", E("protocol", "tlsmgr_protocol"), "err"),
        ("zero-attributes", b"\x00", "err"),
        ("64k-empty-messages", b"\x00" * 65536, "err"),
        ("value-then-nul-run", b"request\x00seed\x00size\x00" + b"\x00" * 1000, "err"),
        ("1MiB-name", b"n" * MiB + b"\x00v\x00\x00", "err"),
        ("binary-garbage-no-nul", garbage, "err"),
        ("random-bytes-64k", rnd, "err"),
        ("request-empty-no-eom", b"request\x00\x00", "err"),
    ]


def exchange_many(ctx, items, timeout, shut_wr=False, mode="first", parsers=None, match=None):
    """items: (socket, payload).  Send each payload (best effort), optionally
    shutdown(SHUT_WR), then wait until each socket produced its first
    message after the handshake (mode first; with `match`, the first message
    satisfying it) or EOF (mode eof).  `parsers` continues earlier streams."""
    res = []
    for s, payload in items:
        r = {"sent": 0, "send": "ok", "hs": False, "msgs": [], "end": None}
        sent, out = send_until(s, payload, now() + 0.5)
        r["sent"], r["send"] = sent, out
        if shut_wr:
            try:
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        res.append(r)
    if parsers is None:
        parsers = [Parser() for _ in items]
    for r, p in zip(res, parsers):
        r["parser"] = p
    sel = selectors.DefaultSelector()
    try:
        for i, (s, _) in enumerate(items):
            try:
                sel.register(s, selectors.EVENT_READ, i)
            except (ValueError, KeyError, OSError):
                res[i]["end"] = "error"
        deadline = now() + timeout
        while sel.get_map() and now() < deadline and not ctx.stop.is_set():
            for key, _ in sel.select(timeout=min(0.1, max(0, deadline - now()))):
                i = key.data
                r = res[i]
                d, st = try_recv(key.fileobj)
                if st == "again":
                    continue
                done = False
                if st != "data":
                    r["end"] = st
                    done = True
                else:
                    try:
                        parsers[i].feed(d)
                    except Garbage:
                        r["end"] = "garbage"
                        done = True
                    while parsers[i].msgs:
                        m = parsers[i].pop()
                        if match is not None:
                            r.setdefault("skipped", 0)
                            if match(m):
                                r["msgs"] = [m]
                                done = True
                                break
                            r["skipped"] += 1
                            continue
                        if not r["hs"] and not r["msgs"]:
                            if m == HANDSHAKE_MSG:
                                r["hs"] = True
                                continue
                        if len(r["msgs"]) < 100:
                            r["msgs"].append(m)
                        else:
                            r.setdefault("more_msgs", 0)
                            r["more_msgs"] += 1
                    if mode == "first" and r["msgs"] and match is None:
                        done = True
                if done:
                    sel.unregister(key.fileobj)
        for r in res:
            if r["end"] is None and not (mode == "first" and r["msgs"]):
                r["end"] = "timeout"
            r["_parser"] = r.pop("parser", None)
    finally:
        sel.close()
    return res


def parsers_of(res):
    return [r.get("_parser") for r in res]


def outcome_of(r):
    if r["msgs"]:
        st = status_of(r["msgs"][0])
        return "status=%s" % st if st is not None else "reply-without-status"
    return {"eof": "closed", "timeout": "no-reply"}.get(r["end"], r["end"] or "no-reply")


def atk_malformed(ctx):
    cases = malformed_cases(ctx)
    items, names, expect = [], [], []
    fails = {}
    for name, payload, exp in cases:
        try:
            s = ctx.connect()
        except (OSError, TimeoutError) as e:
            fails[name] = errname(e)
            continue
        items.append((s, payload))
        names.append(name)
        expect.append(exp)
    res = exchange_many(ctx, items, min(1.5, max(0.5, ctx.left() - 2)), mode="first")
    outcomes = {}
    summary = {}
    anomalies = []
    followup_items, followup_names, followup_parsers = [], [], []
    for (s, _), name, exp, r, prs in zip(items, names, expect, res, parsers_of(res)):
        oc = outcome_of(r)
        if not r["hs"] and r["end"] != "timeout":
            oc += "(no-handshake)"
        outcomes[name] = oc
        kind = oc.split("(")[0]
        summary[kind] = summary.get(kind, 0) + 1
        if exp == "err" and oc.startswith("status=0"):
            anomalies.append(name)
        if exp == "ok" and not oc.startswith("status=0"):
            ctx.notes.append("control request %s did not get status 0: %s" % (name, oc))
        if r["msgs"] and r["end"] is None:
            followup_items.append((s, req_seed(16)))
            followup_names.append(name)
            followup_parsers.append(prs)
    # does the connection still work after an error reply?
    follow = {"ok": 0, "other": 0}
    if followup_items and not ctx.over():
        is_seed = lambda m: [n for n, _ in m] == [b"status", b"seed"]  # noqa: E731
        fres = exchange_many(ctx, followup_items, 1.0, mode="first",
                             parsers=followup_parsers, match=is_seed)
        for name, r in zip(followup_names, fres):
            if r["msgs"] and is_seed(r["msgs"][0]) and status_of(r["msgs"][0]) == 0:
                follow["ok"] += 1
            else:
                follow["other"] += 1
                outcomes[name] += " then follow-up:" + outcome_of(r)
    if anomalies:
        ctx.notes.append("status 0 for bad input: " + ", ".join(anomalies))
    return {"cases": len(cases), "outcomes_summary": summary, "connect_fail": fails,
            "followup_same_conn": follow, "outcomes": outcomes}


def atk_half_close(ctx):
    n = ctx.pick(50, 20)
    req = req_seed(32)
    variants = [("full-request", req, 1), ("partial-request", req[:9], 0),
                ("nothing", b"", 0), ("3-pipelined", req + req_policy() + req_lookup("hc-id"), 3)]
    out = {}
    items, meta = [], []
    for vname, payload, want in variants:
        for _ in range(n):
            try:
                s = ctx.connect()
            except (OSError, TimeoutError):
                continue
            items.append((s, payload))
            meta.append((vname, want))
    res = exchange_many(ctx, items, min(3.0, max(1.0, ctx.left() - 0.5)), shut_wr=True, mode="eof")
    lingering = 0
    for (vname, want), r in zip(meta, res):
        o = out.setdefault(vname, {"conns": 0, "replies_ok": 0, "closed": 0, "still_open": 0})
        o["conns"] += 1
        if len(r["msgs"]) == want and all(status_of(m) is not None for m in r["msgs"]):
            o["replies_ok"] += 1
        if r["end"] in ("eof", "reset"):
            o["closed"] += 1
        elif r["end"] == "timeout":
            o["still_open"] += 1
            lingering += 1
    for vname, o in out.items():
        if o["replies_ok"] < o["conns"]:
            ctx.notes.append("half-close %s: only %d/%d got exactly the expected replies"
                             % (vname, o["replies_ok"], o["conns"]))
    if lingering:
        ctx.notes.append("%d half-closed connections not closed by the daemon" % lingering)
    return {"per_variant": n, **out}

