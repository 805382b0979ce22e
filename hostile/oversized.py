"""Oversized input: one request whose value, name or attribute count is far
beyond any real one, so that a daemon buffering or parsing without bounds
runs out of memory or time."""


from hostile.attr0 import MiB, req_delete, req_seed, status_of
from hostile.clients import mb, pump
from hostile.net import describe_drain, drain, errname, now, read_handshake, read_msg, send_until


def atk_huge(terminated):
    def fn(ctx):
        reps = ctx.pick(3, 1)
        chunk = b"A" * MiB
        total = 64 * MiB
        runs = []
        for r in range(reps):
            if ctx.over():
                break
            cid = "hostile-%s-huge-%d" % (ctx.runid, r)
            if terminated:
                prefix = [b"request\x00lookup\x00cache_type\x00smtpd\x00cache_id\x00",
                          b"request\x00seed\x00size\x00",
                          ("request\x00update\x00cache_type\x00smtpd\x00cache_id\x00%s"
                           "\x00session\x00" % cid).encode()][r % 3]
                body = b"9" * MiB if r % 3 == 1 else chunk
            else:
                prefix = [b"request\x00lookup\x00cache_type\x00smtpd\x00cache_id\x00",
                          b"request\x00", b"request\x00tktkey\x00keyname\x00"][r % 3]
                body = chunk
            one = {"value_of": (prefix.split(b"\x00")[-2].decode()
                                if prefix.count(b"\x00") > 1 else "request")}
            try:
                s = ctx.connect()
            except (OSError, TimeoutError) as e:
                one["connect"] = errname(e)
                runs.append(one)
                continue
            t0 = now()
            try:
                s.send(prefix)
            except OSError:
                pass
            sent, outcome = pump(ctx, s, body, total, stall_limit=2.0)
            one.update(sent_mb=mb(sent), write=outcome, secs=round(now() - t0, 2))
            if terminated and outcome == "complete":
                _, o2 = send_until(s, b"\x00\x00", now() + 1.0)
                if o2 != "ok":
                    one["terminator"] = o2
            # hold the connection a moment (daemon may still hold the data)
            d = drain(s, 2.0 if terminated else 1.0)
            one["daemon"] = describe_drain(d)
            if terminated and d["first_status"] == 0:
                ctx.notes.append("64 MiB value accepted with status 0 (%s)" % one["value_of"])
            ctx.close(s)
            if terminated and r % 3 == 2:
                try:       # clean up in case the daemon stored it
                    c = ctx.connect()
                    ok, _, p = read_handshake(c, now() + 1)
                    if ok and send_until(c, req_delete(cid), now() + 1)[1] == "ok":
                        m, _ = read_msg(c, p, now() + 2)
                        if m and status_of(m) == 0:
                            ctx.notes.append("a 64 MiB session had been stored (deleted it)")
                    ctx.close(c)
                except (OSError, TimeoutError):
                    pass
            runs.append(one)
        return {"messages": len(runs), "runs": runs}
    return fn


def atk_endless_name(ctx):
    cap = ctx.pick(1024, 256) * MiB
    s = ctx.connect()
    hs, _, _ = read_handshake(s, now() + 1)
    t0 = now()
    sent, outcome = pump(ctx, s, b"a" * MiB, cap, stall_limit=2.0, until=ctx.deadline - 1.0)
    secs = now() - t0
    d = drain(s, 0.7)
    return {"handshake": hs, "sent_mb": mb(sent), "secs": round(secs, 2),
            "mb_per_s": round(sent / MiB / secs, 1) if secs > 0 else None,
            "write": outcome, "daemon": describe_drain(d)}


def atk_tiny_attrs(ctx):
    n = ctx.pick(1000000, 250000)
    pair = b"a\x00b\x00"
    variants = [
        ("after-request", b"request\x00seed\x00" + pair * n + b"\x00"),
        ("before-request", pair * n + req_seed(32)),
        ("distinct-names", b"request\x00lookup\x00" +
         b"".join(b"a%d\x00b\x00" % i for i in range(n // 4)) + b"\x00"),
    ]
    runs = {}
    for name, payload in variants:
        if ctx.over():
            break
        try:
            s = ctx.connect()
        except (OSError, TimeoutError) as e:
            runs[name] = "connect:" + errname(e)
            continue
        read_handshake(s, now() + 1)
        t0 = now()
        sent, outcome = send_until(s, payload, min(ctx.deadline, now() + 5))
        d = drain(s, 2.0)
        runs[name] = "%s %.1fMB in %.2fs -> %s" % (outcome, sent / MiB, now() - t0,
                                                   describe_drain(d))
        if d["first_status"] == 0:
            ctx.notes.append("tiny-attrs %s answered status 0" % name)
        ctx.close(s)
    return {"pairs": n, "variants": runs}

