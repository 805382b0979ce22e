"""Floods: many requests or connections, each of them well-formed, so that a
daemon queueing without back-pressure, leaking per connection, or busy with
one client's load starves the others."""

import os
import resource
import select
import socket

from hostile.attr0 import (
    MiB,
    req_delete,
    req_lookup,
    req_policy,
    req_seed,
    req_tktkey,
    req_update,
    status_of,
)
from hostile.clients import gather_handshakes, mb, open_many, watch
from hostile.net import drain, errname, now, read_handshake, read_msg, send_until


def flood(ctx, conns, batch, per_conn_cap, reqs_per_batch=None):
    """Write `batch` repeatedly on each connection without ever reading.
    Returns stats; connections stay open (unread) until the deadline."""
    socks, fails = open_many(ctx, conns)
    for s in socks:
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        except OSError:
            pass
    mv = memoryview(batch)
    stat = [{"sent": 0, "off": 0, "blocked_since": None, "max_block": 0.0,
             "state": "writing"} for _ in socks]
    hold_until = ctx.deadline
    while not ctx.over():
        active = 0
        progressed = False
        for s, st in zip(socks, stat):
            if st["state"] != "writing":
                continue
            if st["sent"] >= per_conn_cap:
                st["state"] = "cap-reached"
                continue
            active += 1
            want = min(len(batch) - st["off"], per_conn_cap - st["sent"])
            try:
                n = s.send(mv[st["off"]:st["off"] + want])
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError:
                st["state"] = "closed-by-daemon"
                continue
            t = now()
            if n:
                progressed = True
                st["sent"] += n
                st["off"] = (st["off"] + n) % len(batch)
                if st["blocked_since"] is not None:
                    st["max_block"] = max(st["max_block"], t - st["blocked_since"])
                    st["blocked_since"] = None
            elif st["blocked_since"] is None:
                st["blocked_since"] = t
        if not active:
            break
        if not progressed:
            p = select.poll()
            for s, st in zip(socks, stat):
                if st["state"] == "writing":
                    p.register(s, select.POLLOUT)
            p.poll(100)
    t = now()
    for st in stat:
        if st["blocked_since"] is not None:
            st["max_block"] = max(st["max_block"], t - st["blocked_since"])
    write_secs = round(now() - ctx.t0, 1)
    # keep the unread connections open until the deadline: the daemon has
    # to live with whatever it queued for us
    ctx.pause(hold_until - now())
    total = sum(st["sent"] for st in stat)
    out = {"conns": len(socks), "connect_fail": fails, "bytes_written_mb": mb(total),
           "write_secs": write_secs,
           "states": sorted({st["state"] for st in stat}),
           "max_write_block_s": round(max([st["max_block"] for st in stat] or [0]), 1)}
    if reqs_per_batch:
        out["requests_written"] = int(total * reqs_per_batch / len(batch))
    return out, stat


def atk_pipeline(ctx):
    mix = [req_seed(255), req_tktkey(), req_lookup("pipe-id"), req_policy()]
    batch = b"".join(mix) * 256
    cap = ctx.pick(300000, 60000) * len(batch) // (len(mix) * 256)
    out, stat = flood(ctx, ctx.pick(4, 2), batch, cap, reqs_per_batch=len(mix) * 256)
    if all(st["state"] == "cap-reached" and st["max_block"] < 0.5 for st in stat) and stat:
        ctx.notes.append("daemon took every request without back-pressure: replies must be "
                         "queued in the daemon (see RSS)")
    return out


def atk_nul_flood(ctx):
    out, stat = flood(ctx, 1, b"\x00" * 65536, ctx.pick(256, 32) * MiB)
    out["empty_messages_written"] = sum(st["sent"] for st in stat)
    del out["bytes_written_mb"]
    return out


def atk_churn(ctx):
    n = ctx.pick(20000, 3000)
    kinds = ["close-at-once", "read-handshake-close", "partial-close", "request-RST",
             "request-reply-close", "RST-at-once", "partial-RST"]
    counts = {k: 0 for k in kinds}
    counts["wakeup-trigger"] = 0
    fails = {}
    triggers = []
    replies = noreply = 0
    req = req_seed(32)
    for i in range(n):
        if ctx.over():
            break
        try:
            s = ctx.connect(0.5)
        except (OSError, TimeoutError) as e:
            k = "queue-full" if isinstance(e, TimeoutError) else errname(e)
            fails[k] = fails.get(k, 0) + 1
            if sum(fails.values()) > 50:
                ctx.notes.append("gave up churning after 50 connect failures")
                break
            continue
        if i % 25 == 24 and len(triggers) < 200:
            try:
                s.send(b"W\x00")
            except OSError:
                pass
            triggers.append(s)
            counts["wakeup-trigger"] += 1
            continue
        kind = kinds[i % len(kinds)]
        counts[kind] += 1
        try:
            if kind == "close-at-once":
                ctx.close(s)
            elif kind == "RST-at-once":
                ctx.close(s, rst=True)
            elif kind == "read-handshake-close":
                read_handshake(s, now() + 0.5)
                ctx.close(s)
            elif kind in ("partial-close", "partial-RST"):
                s.send(req[:ctx.rng.randint(3, len(req) - 1)])
                ctx.close(s, rst=(kind == "partial-RST"))
            elif kind == "request-RST":
                s.send(req)
                ctx.close(s, rst=True)
            else:
                ok, _, p = read_handshake(s, now() + 1)
                if ok and send_until(s, req, now() + 1)[1] == "ok":
                    m, _ = read_msg(s, p, now() + 1)
                    if m is not None:
                        replies += 1
                    else:
                        noreply += 1
                else:
                    noreply += 1
                ctx.close(s)
        except OSError:
            ctx.close(s)
    # wake-up triggers: the daemon should close them without a reply
    trig = {"closed": 0, "data": 0, "open": 0}
    if triggers:
        dl = now() + 1.0
        for s in triggers:
            d = drain(s, max(0, dl - now()), max_msgs=1)
            if d["msgs"]:
                trig["data"] += 1
            elif d["eof"]:
                trig["closed"] += 1
            else:
                trig["open"] += 1
            ctx.close(s)
    if noreply:
        ctx.notes.append("%d complete requests in churn got no reply" % noreply)
    return {"cycles": sum(counts.values()), "kinds": counts, "connect_fail": fails,
            "request_replies": replies, "request_noreply": noreply, "triggers": trig}


def atk_idle(ctx):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(ctx.pick(5000, 2000), max(0, soft - 256))
    socks, fails = open_many(ctx, target, per_timeout=0.3, give_up_after=8)
    opened_s = round(now() - ctx.t0, 2)
    hs = gather_handshakes(socks, min(ctx.deadline, now() + ctx.pick(5.0, 2.0)))
    w = watch(ctx, socks, ctx.deadline)
    if len(socks) < target:
        ctx.notes.append("daemon accepted only %d of %d concurrent connections"
                         % (len(socks), target))
    if hs["ok"] < len(socks):
        ctx.notes.append("%d of %d connections never got the handshake"
                         % (len(socks) - hs["ok"], len(socks)))
    return {"target": target, "our_nofile": soft, "opened": len(socks), "open_secs": opened_s,
            "connect_fail": fails, "handshake_ok": hs["ok"], "handshake_bad": hs["bad"],
            "handshake_missing": hs["missing"], "closed_before_handshake": hs["closed"], **w}


def atk_cache_churn(ctx):
    n = ctx.pick(4000, 500)
    sess = os.urandom(1024)
    window = 32
    ids = []
    st_upd = {}
    st_del = {}
    err = None
    insert_end = ctx.t0 + (ctx.deadline - ctx.t0) * 0.55
    conns = {}
    try:
        for t in ("smtpd", "smtp"):
            s = ctx.connect()
            ok, why, p = read_handshake(s, now() + 1)
            if not ok:
                raise OSError("handshake " + why)
            conns[t] = (s, p)
        i = 0
        while i < n and now() < insert_end and not ctx.stop.is_set():
            for t, (s, p) in conns.items():
                batch = [("hostile-%s-c%d" % (ctx.runid, j), t)
                         for j in range(i, min(n, i + window))]
                if send_until(s, b"".join(req_update(c, sess, t) for c, _ in batch),
                              now() + 2)[1] != "ok":
                    raise OSError("update send failed")
                for c, _ in batch:
                    m, why = read_msg(s, p, now() + 2)
                    if m is None:
                        raise OSError("update reply: " + why)
                    k = status_of(m)
                    st_upd[k] = st_upd.get(k, 0) + 1
                    ids.append((c, t))
            i += window
        # delete everything we stored (allowed to run past the budget a little)
        del_end = max(ctx.deadline, now() + 2) + 5
        by_t = {}
        for c, t in ids:
            by_t.setdefault(t, []).append(c)
        for t, cs in by_t.items():
            s, p = conns[t]
            for j in range(0, len(cs), window):
                if now() > del_end or ctx.stop.is_set():
                    break
                part = cs[j:j + window]
                if send_until(s, b"".join(req_delete(c, t) for c in part), now() + 2)[1] != "ok":
                    raise OSError("delete send failed")
                for _ in part:
                    m, why = read_msg(s, p, now() + 2)
                    if m is None:
                        raise OSError("delete reply: " + why)
                    k = status_of(m)
                    st_del[k] = st_del.get(k, 0) + 1
    except (OSError, TimeoutError) as e:
        err = str(e) or errname(e)
        ctx.notes.append("cache-churn stopped: " + err)
    left = len(ids) - sum(st_del.values())
    if left > 0:
        ctx.notes.append("%d stored entries could not be deleted again" % left)
    return {"entries_per_type": len(ids) // 2 if ids else 0, "session_bytes": len(sess),
            "update_status": st_upd, "delete_status": st_del}


