#!/usr/bin/env python3
"""Hostile clients ("attack suite") for a daemon speaking Postfix's tlsmgr(8)
attribute protocol (attr0) over a UNIX-domain stream socket.

Written from the tlsmgr(8) manual page and the protocol notes only; the daemon
under test is treated as a black box.  Standard library only.

    python3 hostile/run.py --socket PATH --pid PID [--quick] [--json] [--only A,B]

Exit status: 0 every attack passed, 1 at least one failed (or interrupted),
2 usage error.  See hostile/README.md.
"""

import argparse
import base64
import errno
import heapq
import json
import os
import random
import resource
import select
import selectors
import signal
import socket
import sys
import textwrap
import threading
import time

HANDSHAKE = b"protocol\x00tlsmgr_protocol\x00\x00"
MiB = 1 << 20
PROBE_TIMEOUT = 1.0          # a probe without a reply within this many seconds fails
PROBE_INTERVAL = 0.02        # pause between two probes
PROBE_FRESH_EVERY = 4        # every Nth probe uses a brand-new connection
SETTLE_MAX = 3.0             # seconds allowed for RSS/fds to come back after an attack
now = time.monotonic


# ---------------------------------------------------------------- encoding

def _b(x):
    return x if isinstance(x, (bytes, bytearray)) else str(x).encode()


def enc(*items):
    """attr0: name NUL value NUL ... then one NUL ending the message."""
    out = bytearray()
    for i in range(0, len(items), 2):
        out += _b(items[i]) + b"\x00" + _b(items[i + 1]) + b"\x00"
    out += b"\x00"
    return bytes(out)


def req_seed(n=32):
    return enc("request", "seed", "size", n)


def req_policy(t="smtpd"):
    return enc("request", "policy", "cache_type", t)


def req_lookup(cid, t="smtpd"):
    return enc("request", "lookup", "cache_type", t, "cache_id", cid)


def req_update(cid, session, t="smtpd"):
    return enc("request", "update", "cache_type", t, "cache_id", cid,
               "session", base64.b64encode(session))


def req_delete(cid, t="smtpd"):
    return enc("request", "delete", "cache_type", t, "cache_id", cid)


def req_tktkey(name=b""):
    return enc("request", "tktkey", "keyname", base64.b64encode(name))


def status_of(msg):
    """Signed status of a reply message, or None."""
    if not msg or msg[0][0] != b"status":
        return None
    try:
        v = int(msg[0][1].decode("ascii"), 10)
    except (ValueError, UnicodeDecodeError):
        return None
    if not 0 <= v <= 0xFFFFFFFF:
        return None
    return v - (1 << 32) if v >= (1 << 31) else v


class Garbage(Exception):
    pass


class Parser:
    """Incremental attr0 decoder with bounds, so that a daemon sending garbage
    cannot make *us* use unbounded memory."""
    MAX_TOKEN = 4 * MiB
    MAX_ATTRS = 10000

    def __init__(self):
        self.buf = bytearray()
        self.cur = []
        self.name = None
        self.msgs = []          # complete messages not yet consumed

    def feed(self, data):
        self.buf += data
        pos = 0
        buf = self.buf
        while True:
            i = buf.find(b"\x00", pos)
            if i < 0:
                break
            tok = bytes(buf[pos:i])
            pos = i + 1
            if self.name is None:
                if tok == b"":
                    self.msgs.append(self.cur)
                    self.cur = []
                else:
                    self.name = tok
            else:
                self.cur.append((self.name, tok))
                self.name = None
                if len(self.cur) > self.MAX_ATTRS:
                    raise Garbage("more than %d attributes in one reply" % self.MAX_ATTRS)
        del buf[:pos]
        if len(buf) > self.MAX_TOKEN:
            raise Garbage("reply token longer than %d bytes" % self.MAX_TOKEN)
        if len(self.msgs) > 200000:
            del self.msgs[:-1000]

    def pop(self):
        return self.msgs.pop(0) if self.msgs else None


# ---------------------------------------------------------------- sockets

def errname(e):
    if isinstance(e, OSError) and e.errno:
        return errno.errorcode.get(e.errno, str(e.errno))
    return type(e).__name__


def connect_unix(path, timeout):
    """Like a blocking connect() bounded by `timeout`: on a UNIX socket a full
    listen backlog gives EAGAIN, so retry until the deadline.  The returned
    socket is non-blocking."""
    end = now() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(path)
            return s
        except (BlockingIOError, InterruptedError) as e:
            if e.errno == errno.EINPROGRESS:
                p = select.poll()
                p.register(s, select.POLLOUT)
                p.poll(max(1, int((end - now()) * 1000)))
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err == 0:
                    return s
                s.close()
                raise OSError(err, os.strerror(err))
            s.close()
            if now() >= end:
                raise TimeoutError("connect: listen queue full (EAGAIN) for %.1fs" % timeout)
            time.sleep(0.005)
        except BaseException:
            s.close()
            raise


def wait_fd(s, events, timeout):
    try:
        p = select.poll()
        p.register(s, events)
        return bool(p.poll(max(0, int(timeout * 1000))))
    except (OSError, ValueError):
        return True     # let the following I/O call report the problem


def try_recv(s, n=65536):
    try:
        d = s.recv(n)
    except (BlockingIOError, InterruptedError):
        return None, "again"
    except ConnectionResetError:
        return b"", "reset"
    except OSError:
        return b"", "error"
    return d, ("data" if d else "eof")


def send_until(s, data, deadline):
    """Send everything before `deadline`; returns (bytes_sent, outcome)."""
    mv = memoryview(data)
    sent = 0
    while sent < len(mv):
        try:
            n = s.send(mv[sent:sent + MiB])
            sent += n
            continue
        except (BlockingIOError, InterruptedError):
            pass
        except (BrokenPipeError, ConnectionResetError):
            return sent, "closed"
        except OSError as e:
            return sent, "error:" + errname(e)
        left = deadline - now()
        if left <= 0:
            return sent, "timeout"
        wait_fd(s, select.POLLOUT, min(left, 0.1))
    return sent, "ok"


def read_msg(s, parser, deadline):
    """Next complete message on s: (msg, 'ok') or (None, timeout|eof|reset|error|garbage)."""
    while True:
        m = parser.pop()
        if m is not None:
            return m, "ok"
        left = deadline - now()
        if left <= 0:
            return None, "timeout"
        if not wait_fd(s, select.POLLIN, min(left, 0.2)):
            continue
        d, st = try_recv(s)
        if st == "again":
            continue
        if st != "data":
            return None, st
        try:
            parser.feed(d)
        except Garbage:
            return None, "garbage"


def drain(s, timeout, max_msgs=3):
    """Collect what the daemon sends back within `timeout` (stop at EOF or
    after max_msgs messages).  Returns a short description dict."""
    p = Parser()
    end = now() + timeout
    out = {"msgs": 0, "first_status": None, "eof": False, "bytes": 0}
    while now() < end and out["msgs"] < max_msgs:
        if not wait_fd(s, select.POLLIN, min(0.1, max(0, end - now()))):
            continue
        d, st = try_recv(s)
        if st == "again":
            continue
        if st != "data":
            out["eof"] = st
            break
        out["bytes"] += len(d)
        try:
            p.feed(d)
        except Garbage:
            out["garbage"] = True
            break
        while p.msgs:
            m = p.pop()
            if m == [(b"protocol", b"tlsmgr_protocol")] and out["msgs"] == 0 and "hs" not in out:
                out["hs"] = True
                continue
            if out["msgs"] == 0:
                out["first_status"] = status_of(m)
            out["msgs"] += 1
    return out


def describe_drain(d):
    if d["msgs"]:
        r = "reply(status=%s)" % d["first_status"]
        if d["eof"]:
            r += "+closed"
        return r
    if d["eof"]:
        return "closed" if d["eof"] == "eof" else d["eof"]
    if d.get("garbage"):
        return "garbage"
    return "no-reply"


def read_handshake(s, deadline):
    p = Parser()
    m, st = read_msg(s, p, deadline)
    if st != "ok":
        return False, st, p
    if m != [(b"protocol", b"tlsmgr_protocol")]:
        return False, "bad-handshake", p
    return True, "ok", p


# ---------------------------------------------------------------- /proc

def proc_status(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            txt = f.read()
    except OSError:
        return None
    d = {}
    for line in txt.splitlines():
        k, _, v = line.partition(":")
        v = v.strip()
        if k in ("VmRSS", "VmHWM"):
            try:
                d[k] = int(v.split()[0]) / 1024.0
            except (ValueError, IndexError):
                pass
        elif k == "State":
            d["State"] = v
    return d


def proc_alive(pid):
    st = proc_status(pid)
    return bool(st) and st.get("State", "R")[:1] not in ("Z", "X")


def proc_fds(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return None


class Monitor:
    """Samples the daemon's RSS (and fd count) while an attack runs."""

    def __init__(self, pid):
        self.pid = pid
        self.peak_rss = None
        self.peak_fds = None
        self.died = False
        self.stop = threading.Event()
        self.th = threading.Thread(target=self._run, name="monitor", daemon=True)

    def _sample(self, with_fds):
        st = proc_status(self.pid)
        if not st or st.get("State", "R")[:1] in ("Z", "X"):
            self.died = True
            return
        r = st.get("VmRSS")
        if r is not None and (self.peak_rss is None or r > self.peak_rss):
            self.peak_rss = r
        if with_fds:
            n = proc_fds(self.pid)
            if n is not None and (self.peak_fds is None or n > self.peak_fds):
                self.peak_fds = n

    def _run(self):
        i = 0
        while not self.stop.is_set():
            try:
                self._sample(i % 5 == 0)
            except Exception:
                pass
            i += 1
            self.stop.wait(0.05)

    def start(self):
        self.th.start()

    def finish(self):
        self.stop.set()
        self.th.join(2)


# ---------------------------------------------------------------- prober

PROBE_KINDS = ("seed", "policy", "lookup")
REPLY_NAMES = {"seed": [b"status", b"seed"],
               "policy": [b"status", b"cachable", b"timeout"],
               "lookup": [b"status", b"session"]}


class Prober:
    """A well-behaved client: one persistent connection plus every Nth probe
    on a fresh connection (connect + handshake count against the 1 s)."""

    def __init__(self, path, expect, probe_id):
        self.path = path
        self.expect = expect
        self.payload = {"seed": req_seed(32), "policy": req_policy("smtpd"),
                        "lookup": req_lookup(probe_id, "smtpd")}
        self.records = []       # (kind, fresh, latency_s or None, reason)
        self.conn = None
        self.parser = None
        self.error = None
        self.stop = threading.Event()
        self.th = threading.Thread(target=self._run, name="prober", daemon=True)

    def _open(self, deadline):
        s = connect_unix(self.path, max(0.01, deadline - now()))
        ok, st, p = read_handshake(s, deadline)
        if not ok:
            s.close()
            raise OSError("handshake: " + st)
        return s, p

    def check(self, kind, msg):
        names = [n for n, _ in msg]
        if names != REPLY_NAMES[kind]:
            return "bad-reply-attrs:" + ",".join(n.decode("latin-1")[:20] for n in names[:5])
        st = status_of(msg)
        if st is None:
            return "bad-status"
        want = self.expect.get(kind)
        if want is not None and st != want:
            return "status %d (expected %d)" % (st, want)
        if kind == "seed" and st == 0:
            try:
                if len(base64.b64decode(msg[1][1], validate=True)) != 32:
                    return "seed-length"
            except ValueError:
                return "seed-base64"
        return None

    def probe_once(self, kind, fresh):
        t0 = now()
        deadline = t0 + PROBE_TIMEOUT
        s = p = None
        try:
            if fresh:
                s, p = self._open(deadline)
            else:
                if self.conn is None:
                    self.conn, self.parser = self._open(deadline)
                s, p = self.conn, self.parser
            if p.msgs:
                raise OSError("unsolicited data from daemon")
            _, out = send_until(s, self.payload[kind], deadline)
            if out != "ok":
                raise OSError("send: " + out)
            m, st = read_msg(s, p, deadline)
            if st != "ok":
                raise OSError("reply: " + st)
            why = self.check(kind, m)
            if why:
                raise OSError(why)
            lat = now() - t0
            if fresh:
                s.close()
            return lat, "ok"
        except Exception as e:     # TimeoutError, OSError, ...
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
            if not fresh:
                self.conn = self.parser = None
            msg = str(e) or errname(e)
            if isinstance(e, TimeoutError) and "connect" not in msg:
                msg = "timeout"
            return None, msg[:80]

    def _run(self):
        i = 0
        try:
            while not self.stop.is_set():
                t0 = now()
                kind = PROBE_KINDS[i % len(PROBE_KINDS)]
                fresh = (i % PROBE_FRESH_EVERY) == PROBE_FRESH_EVERY - 1
                i += 1
                lat, why = self.probe_once(kind, fresh)
                self.records.append((kind, fresh, lat, why))
                rest = PROBE_INTERVAL - (now() - t0)
                if rest > 0:
                    self.stop.wait(rest)
        except Exception as e:      # never die silently
            self.error = repr(e)
        finally:
            if self.conn is not None:
                try:
                    self.conn.close()
                except OSError:
                    pass

    def start(self):
        self.th.start()

    def finish(self):
        self.stop.set()
        self.th.join(PROBE_TIMEOUT + 2)

    def summary(self):
        recs = list(self.records)
        lats = sorted(r[2] for r in recs if r[2] is not None)
        fails = [r for r in recs if r[2] is None]

        def pct(q):
            if not lats:
                return None
            k = max(0, min(len(lats) - 1, int(-(-q * len(lats) // 1)) - 1))
            return round(lats[k] * 1000, 2)
        reasons = {}
        for r in fails:
            key = ("fresh " if r[1] else "") + r[3]
            reasons[key] = reasons.get(key, 0) + 1
        return {"sent": len(recs), "answered": len(lats), "failed": len(fails),
                "p50_ms": pct(0.50), "p99_ms": pct(0.99),
                "max_ms": round(lats[-1] * 1000, 2) if lats else None,
                "fail_reasons": reasons, "prober_error": self.error}


# ---------------------------------------------------------------- attack context

class Ctx:
    def __init__(self, args, budget, stop, rng, runid):
        self.path = args.socket
        self.pid = args.pid
        self.quick = args.quick
        self.stop = stop
        self.rng = rng
        self.runid = runid
        self.t0 = now()
        self.deadline = self.t0 + budget
        self.socks = set()
        self.notes = []

    def pick(self, full, quick):
        return quick if self.quick else full

    def left(self):
        return self.deadline - now()

    def over(self):
        return self.stop.is_set() or now() >= self.deadline

    def pause(self, t):
        t = min(t, self.left())
        if t > 0:
            self.stop.wait(t)

    def connect(self, timeout=1.0):
        s = connect_unix(self.path, max(0.05, min(timeout, self.left() + 0.5)))
        self.socks.add(s)
        return s

    def close(self, s, rst=False):
        self.socks.discard(s)
        try:
            if rst:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.close()
        except OSError:
            pass

    def close_all(self):
        for s in list(self.socks):
            self.close(s)


def open_many(ctx, n, per_timeout=0.5, give_up_after=10):
    socks, fails = [], {}
    consecutive = 0
    for _ in range(n):
        if ctx.over():
            break
        try:
            socks.append(ctx.connect(per_timeout))
            consecutive = 0
        except (OSError, TimeoutError) as e:
            k = errname(e) if not isinstance(e, TimeoutError) else "queue-full"
            fails[k] = fails.get(k, 0) + 1
            consecutive += 1
            if consecutive >= give_up_after:
                break
    return socks, fails


def gather_handshakes(socks, deadline):
    """Read the server's initial handshake on every socket."""
    res = {"ok": 0, "bad": 0, "closed": 0, "missing": 0}
    bufs = {}
    sel = selectors.DefaultSelector()
    try:
        for s in socks:
            sel.register(s, selectors.EVENT_READ)
        pending = len(socks)
        while pending and now() < deadline:
            for key, _ in sel.select(timeout=min(0.1, max(0, deadline - now()))):
                s = key.fileobj
                d, st = try_recv(s, 4096)
                if st == "again":
                    continue
                if st != "data":
                    res["closed"] += 1
                else:
                    b = bufs.get(s, b"") + d
                    bufs[s] = b
                    if HANDSHAKE.startswith(b) and len(b) < len(HANDSHAKE):
                        continue
                    res["ok" if b == HANDSHAKE else "bad"] += 1
                sel.unregister(s)
                pending -= 1
        res["missing"] = pending
    finally:
        sel.close()
    return res


def watch(ctx, socks, until):
    """Hold sockets open without writing; count those the daemon closes or
    writes to."""
    res = {"closed_by_daemon": 0, "got_data": 0}
    t0 = now()
    sel = selectors.DefaultSelector()
    try:
        for s in socks:
            try:
                sel.register(s, selectors.EVENT_READ)
            except (ValueError, KeyError, OSError):
                pass
        while not ctx.stop.is_set() and now() < until and sel.get_map():
            for key, _ in sel.select(timeout=min(0.2, max(0, until - now()))):
                d, st = try_recv(key.fileobj)
                if st == "again":
                    continue
                if st == "data":
                    res["got_data"] += 1
                    continue
                res["closed_by_daemon"] += 1
                res.setdefault("first_close_s", round(now() - t0, 1))
                res["last_close_s"] = round(now() - t0, 1)
                sel.unregister(key.fileobj)
    finally:
        sel.close()
    return res


def pump(ctx, s, chunk, total=None, stall_limit=2.0, until=None):
    """Write repeats of `chunk` as fast as the daemon takes them, never reading.
    Stops after `total` bytes, at `until`/the attack deadline, when the daemon
    closes, or when it has not taken a byte for `stall_limit` seconds."""
    mv = memoryview(chunk)
    size = len(chunk)
    off = sent = 0
    last = now()
    end = min(until or ctx.deadline, ctx.deadline)
    while total is None or sent < total:
        t = now()
        if ctx.stop.is_set() or t >= end:
            return sent, "time-limit"
        want = size - off
        if total is not None:
            want = min(want, total - sent)
        try:
            n = s.send(mv[off:off + want])
        except (BlockingIOError, InterruptedError):
            n = 0
        except (BrokenPipeError, ConnectionResetError):
            return sent, "closed-by-daemon"
        except OSError as e:
            return sent, "error:" + errname(e)
        if n:
            sent += n
            off = (off + n) % size
            last = t
        else:
            if t - last > stall_limit:
                return sent, "daemon-stopped-reading"
            wait_fd(s, select.POLLOUT, 0.05)
    return sent, "complete"


def mb(x):
    return round(x / MiB, 1)


# ---------------------------------------------------------------- attacks

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
                d, r = try_recv(c["s"])
                if r == "data":
                    try:
                        c["p"].feed(d)
                    except Garbage:
                        pass
                    while c["p"].pop() is not None:
                        c["replies"] += 1
                elif r != "again":
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
                d, r = try_recv(c["s"])
                if r == "data":
                    try:
                        c["p"].feed(d)
                    except Garbage:
                        pass
                    while c["p"].pop() is not None:
                        c["replies"] += 1
                elif r != "again":
                    sel.unregister(c["s"])
    finally:
        sel.close()
    replies = sum(c["replies"] for c in st)
    if replies < completed - closed:
        ctx.notes.append("%d dribbled requests completed but only %d replies" % (completed, replies))
    return {"conns": len(socks), "connect_fail": fails, "handshakes": hs["ok"],
            "bytes_dribbled": dribbled, "requests_completed": completed,
            "replies": replies, "closed_by_daemon": closed}


def atk_slowloris_mass(ctx):
    return atk_slowloris(ctx, ctx.pick(4500, 2000), (0.5, 1.5))


def atk_fat_stalled(ctx):
    n = ctx.pick(4000, 1000)
    fill = ctx.pick(60000, 60000)
    prefix = ("request\x00update\x00cache_type\x00smtpd\x00cache_id\x00hostile-%s-fat\x00session\x00"
              % ctx.runid).encode()
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
                          ("request\x00update\x00cache_type\x00smtpd\x00cache_id\x00%s\x00session\x00" % cid).encode()][r % 3]
                body = b"9" * MiB if r % 3 == 1 else chunk
            else:
                prefix = [b"request\x00lookup\x00cache_type\x00smtpd\x00cache_id\x00",
                          b"request\x00", b"request\x00tktkey\x00keyname\x00"][r % 3]
                body = chunk
            one = {"value_of": prefix.split(b"\x00")[-2].decode() if prefix.count(b"\x00") > 1 else "request"}
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
        runs[name] = "%s %.1fMB in %.2fs -> %s" % (outcome, sent / MiB, now() - t0, describe_drain(d))
        if d["first_status"] == 0:
            ctx.notes.append("tiny-attrs %s answered status 0" % name)
        ctx.close(s)
    return {"pairs": n, "variants": runs}


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
        ctx.notes.append("daemon accepted only %d of %d concurrent connections" % (len(socks), target))
    if hs["ok"] < len(socks):
        ctx.notes.append("%d of %d connections never got the handshake" % (len(socks) - hs["ok"], len(socks)))
    return {"target": target, "our_nofile": soft, "opened": len(socks), "open_secs": opened_s,
            "connect_fail": fails, "handshake_ok": hs["ok"], "handshake_bad": hs["bad"],
            "handshake_missing": hs["missing"], "closed_before_handshake": hs["closed"], **w}


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
        ("lookup-wrong-order", E("request", "lookup", "cache_id", cid, "cache_type", "smtpd"), "err"),
        ("lookup-missing-id", E("request", "lookup", "cache_type", "smtpd"), "err"),
        ("lookup-id-64k", E("request", "lookup", "cache_type", "smtpd", "cache_id", "x" * 65536), "any"),
        ("lookup-id-non-utf8", E("request", "lookup", "cache_type", "smtpd", "cache_id", b"\xff\xfe\xc3\x28"), "any"),
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
        ("update-missing-session", E("request", "update", "cache_type", "smtpd", "cache_id", cid), "err"),
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
        ("attr-name-log-injection", E("request", "seed", b"x\nfake log line\x1b[31m\r", "1"), "err"),
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
                            if m == [(b"protocol", b"tlsmgr_protocol")]:
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
                batch = [("hostile-%s-c%d" % (ctx.runid, j), t) for j in range(i, min(n, i + window))]
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


ATTACKS = [
    ("stalled-100", atk_stalled(100), (12, 2),
     "100 connections each send a proper prefix of a valid request, then nothing"),
    ("stalled-500", atk_stalled(500), (15, 2.5),
     "the same with 500 connections"),
    ("slowloris", atk_slowloris, (20, 3),
     "connections dribble valid requests one byte at a time with random pauses"),
    ("slowloris-mass", atk_slowloris_mass, (20, 3.5),
     "thousands of connections (above a 4096-ish connection cap) each dribbling a byte every ~1 s"),
    ("fat-stalled", atk_fat_stalled, (15, 3),
     "thousands of connections each park ~60 KB of an unterminated request, then stall"),
    ("huge-64m", atk_huge(False), (20, 3),
     "one 64 MiB attribute value, never terminated, written as fast as possible"),
    ("huge-64m-nul", atk_huge(True), (20, 3.5),
     "one 64 MiB attribute value, NUL-terminated and followed by the end of message"),
    ("endless-name", atk_endless_name, (12, 2.5),
     "an attribute name without NUL streamed until a byte/time cap or the daemon closes"),
    ("tiny-attrs", atk_tiny_attrs, (15, 3.5),
     "hundreds of thousands of tiny a\\0b\\0 attributes in one message"),
    ("pipeline-flood", atk_pipeline, (15, 3),
     "thousands of valid requests written back-to-back, replies never read"),
    ("nul-flood", atk_nul_flood, (10, 2),
     "a stream of NUL bytes (= empty messages, each a request) without reading replies"),
    ("churn", atk_churn, (15, 2.5),
     "thousands of connect/close cycles: at once, mid-request, RST (SO_LINGER 0), wake-up triggers"),
    ("idle-conns", atk_idle, (20, 3.5),
     "thousands of idle concurrent connections"),
    ("malformed", atk_malformed, (15, 4),
     "~60 malformed requests: bad base64, bogus names, odd integers, garbage, dups, missing attrs"),
    ("half-close", atk_half_close, (10, 2),
     "requests followed by shutdown(SHUT_WR) before reading"),
    ("cache-churn", atk_cache_churn, (15, 2.5),
     "pipelined update of thousands of 1 KiB sessions in smtpd and smtp caches, then delete all"),
]


# ---------------------------------------------------------------- runner

class Interrupted(Exception):
    pass


def post_check(path, probe_id, expect):
    """Fresh connection: seed, policy, lookup, each within the probe timeout."""
    pr = Prober(path, expect, probe_id)
    bad = []
    for k in PROBE_KINDS:
        lat, why = pr.probe_once(k, False)
        if lat is None:
            bad.append("%s: %s" % (k, why))
            break
    if pr.conn is not None:
        try:
            pr.conn.close()
        except OSError:
            pass
    return not bad, bad


def run_attack(args, name, fn, budget, stop, rng, runid, expect):
    pid = args.pid
    res = {"name": name, "did": {}, "notes": []}
    probe_id = "hostile-%s-probe" % runid
    if not proc_alive(pid):
        res.update(verdict="FAIL", alive=False, answering=False,
                   reasons=["daemon not running before the attack"],
                   probes={"sent": 0, "answered": 0, "failed": 0, "p50_ms": None,
                           "p99_ms": None, "max_ms": None},
                   rss_mb={"before": None, "peak": None, "after": None}, fds={})
        return res
    st0 = proc_status(pid) or {}
    before, hwm0 = st0.get("VmRSS"), st0.get("VmHWM")
    fds0 = proc_fds(pid)
    mon = Monitor(pid)
    prober = Prober(args.socket, expect, probe_id)
    ctx = Ctx(args, budget, stop, rng, runid)
    mon.start()
    prober.start()
    t0 = now()
    interrupted = False
    try:
        time.sleep(0.1)          # a few probes before the attack starts
        res["did"] = fn(ctx)
    except KeyboardInterrupt:
        interrupted = True
        stop.set()
        res["notes"].append("interrupted")
    except Exception as e:        # the attack itself could not run
        res["attack_error"] = "%s: %s" % (type(e).__name__, str(e)[:200])
    finally:
        ctx.close_all()
    res["attack_secs"] = round(now() - t0, 1)
    # settle: give the daemon up to SETTLE_MAX s to give back memory and fds
    bound = args.max_rss_growth_mb
    after = fds1 = None
    settle_end = now() + (0 if interrupted else (SETTLE_MAX / 2 if args.quick else SETTLE_MAX))
    time.sleep(0.3)
    while True:
        st = proc_status(pid)
        after = st.get("VmRSS") if st else None
        fds1 = proc_fds(pid)
        rss_ok = after is not None and before is not None and after - before <= bound
        fd_ok = fds1 is None or fds0 is None or fds1 <= fds0 + 2
        if (rss_ok and fd_ok) or now() >= settle_end or not st:
            break
        time.sleep(0.1)
    prober.finish()
    mon.finish()
    st1 = proc_status(pid) or {}
    hwm1 = st1.get("VmHWM")
    peak = mon.peak_rss
    if hwm0 is not None and hwm1 is not None and hwm1 > hwm0:
        peak = max(peak or 0, hwm1)
    alive = proc_alive(pid) and not mon.died
    answering, why_not = (post_check(args.socket, probe_id, expect) if alive and not interrupted
                          else (False, ["daemon dead"] if not alive else ["interrupted"]))
    pr = prober.summary()
    res["probes"] = pr
    res["rss_mb"] = {"before": r1(before), "peak": r1(peak), "after": r1(after)}
    res["fds"] = {"before": fds0, "peak": mon.peak_fds, "after": fds1}
    res["alive"] = alive
    res["answering"] = answering
    res["notes"] += ctx.notes
    reasons = []
    if not alive:
        reasons.append("daemon died")
    elif not answering:
        reasons.append("not answering afterwards (%s)" % "; ".join(why_not))
    if pr["failed"]:
        top = sorted(pr["fail_reasons"].items(), key=lambda kv: -kv[1])[:3]
        reasons.append("%d/%d probes failed (%s)" % (pr["failed"], pr["sent"],
                       ", ".join("%s x%d" % kv for kv in top)))
    if pr["sent"] == 0:
        reasons.append("no probe could be sent")
    if before is not None and after is not None and after - before > bound:
        reasons.append("RSS after +%.1f MB > %g" % (after - before, bound))
    if before is not None and peak is not None and peak - before > args.max_peak_growth_mb:
        reasons.append("RSS peak +%.1f MB > %g" % (peak - before, args.max_peak_growth_mb))
    if alive and (before is None or after is None):
        reasons.append("could not read daemon RSS")
    if "attack_error" in res:
        reasons.append("attack could not run: " + res["attack_error"])
    if interrupted:
        reasons.append("interrupted")
    if fds0 is not None and fds1 is not None and fds1 > fds0 + 2:
        res["notes"].append("WARN daemon fds %d -> %d after settle (leak?)" % (fds0, fds1))
    res["reasons"] = reasons
    res["verdict"] = "FAIL" if reasons else "PASS"
    if interrupted:
        raise Interrupted(res)
    return res


def r1(x):
    return None if x is None else round(x, 1)


def preflight(path, probe_id):
    """Learn which status each probe kind gets from a quiet daemon."""
    expect = {}
    pr = Prober(path, {}, probe_id)
    problems = []
    for k in PROBE_KINDS:
        pr.expect = {}
        lat, why = None, None
        for _ in range(2):
            lat, why = pr.probe_once(k, False)
            if lat is not None:
                break
            time.sleep(0.2)
        if lat is None:
            problems.append("%s: %s" % (k, why))
    if pr.conn is not None:
        try:
            s, p = pr.conn, pr.parser
            for k in PROBE_KINDS:
                if send_until(s, pr.payload[k], now() + 1)[1] == "ok":
                    m, _ = read_msg(s, p, now() + 1)
                    if m is not None:
                        expect[k] = status_of(m)
            s.close()
        except OSError:
            pass
    return expect, problems


def fmt(x, w=0):
    s = "-" if x is None else str(x)
    return s.rjust(w) if w else s


def short_did(d, limit=600):
    parts = []
    for k, v in d.items():
        if k in ("outcomes", "runs", "variants"):
            continue
        if isinstance(v, dict):
            v = ",".join("%s:%s" % kv for kv in v.items()) or "-"
        parts.append("%s=%s" % (k, v))
    s = " ".join(parts)
    return s if len(s) <= limit else s[:limit - 3] + "..."


def print_table(results, overall, out=sys.stdout):
    hdr = "%-15s %-7s %18s %22s %22s %11s %s" % (
        "attack", "verdict", "probes sent/ok/fail", "latency ms p50/p99/max",
        "RSS MB before/peak/aft", "fds bef/aft", "alive")
    print(hdr, file=out)
    print("-" * len(hdr), file=out)
    for r in results:
        pr = r.get("probes", {})
        rs = r.get("rss_mb", {})
        fd = r.get("fds", {})
        print("%-15s %-7s %18s %22s %22s %11s %s" % (
            r["name"], r["verdict"],
            "%s/%s/%s" % (pr.get("sent", 0), pr.get("answered", 0), pr.get("failed", 0)),
            "%s/%s/%s" % (fmt(pr.get("p50_ms")), fmt(pr.get("p99_ms")), fmt(pr.get("max_ms"))),
            "%s/%s/%s" % (fmt(rs.get("before")), fmt(rs.get("peak")), fmt(rs.get("after"))),
            "%s/%s" % (fmt(fd.get("before")), fmt(fd.get("after"))),
            ("yes" if r.get("alive") else "NO") + ("" if r.get("answering") else " (not answering)")),
            file=out)
        if r.get("did"):
            for i, line in enumerate(textwrap.wrap(short_did(r["did"]), 100)):
                print(("    did: " if i == 0 else "         ") + line, file=out)
            oc = r["did"].get("outcomes")
            if isinstance(oc, dict):
                groups = {}
                for case, o in oc.items():
                    groups.setdefault(o, []).append(case)
                for o, cases in sorted(groups.items(), key=lambda kv: -len(kv[1])):
                    print("      %s: %s" % (o, ", ".join(cases)), file=out)
            for key in ("runs", "variants"):
                v = r["did"].get(key)
                if isinstance(v, list):
                    for one in v:
                        print("      " + short_did(one), file=out)
                elif isinstance(v, dict):
                    for k, one in v.items():
                        print("      %s: %s" % (k, one), file=out)
        for n in r.get("notes", []):
            print("    note: " + n, file=out)
        for why in r.get("reasons", []):
            print("    FAIL: " + why, file=out)
    print("-" * len(hdr), file=out)
    print("overall: %s  (%d/%d attacks passed; daemon RSS %s -> %s MB over the run)" % (
        overall["verdict"], overall["passed"], overall["attacks"],
        fmt(overall.get("rss_start_mb")), fmt(overall.get("rss_end_mb"))), file=out)
    for n in overall.get("notes", []):
        print("  " + n, file=out)


def parse_args(argv):
    ap = argparse.ArgumentParser(
        description="Hostile clients for a tlsmgr(8)-protocol daemon (black-box robustness check).")
    ap.add_argument("--socket", required=True, help="the daemon's UNIX-domain socket")
    ap.add_argument("--pid", required=True, type=int, help="the daemon's process id")
    ap.add_argument("--quick", action="store_true", help="short run (about a minute)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ap.add_argument("--only", default="", help="comma-separated attack names (see --list)")
    ap.add_argument("--list", action="store_true", help="list the attacks and exit")
    ap.add_argument("--max-rss-growth-mb", type=float, default=50.0,
                    help="allowed RSS growth after an attack and settle (default 50)")
    ap.add_argument("--max-peak-growth-mb", type=float, default=200.0,
                    help="allowed RSS growth at the peak during an attack (default 200)")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    if "--list" in argv:
        for name, _, (bf, bq), what in ATTACKS:
            print("%-15s %5.1fs/%4.1fs  %s" % (name, bf, bq, what))
        sys.exit(0)
    args = ap.parse_args(argv)
    names = [a for a, _, _, _ in ATTACKS]
    if args.only:
        want = [x.strip() for x in args.only.split(",") if x.strip()]
        unknown = [x for x in want if x not in names]
        if unknown or not want:
            ap.error("unknown attack(s): %s (known: %s)" % (", ".join(unknown) or "none given",
                                                            ", ".join(names)))
        args.only = want
    else:
        args.only = names
    if args.pid <= 0:
        ap.error("--pid must be a positive process id")
    if not os.path.exists("/proc/%d" % args.pid):
        ap.error("no process with pid %d" % args.pid)
    if args.max_rss_growth_mb < 0 or args.max_peak_growth_mb < 0:
        ap.error("growth bounds must not be negative")
    return args


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= target:
        return
    for t in (target, 65536, 16384, 8192):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(t, target), hard))
            return
        except (ValueError, OSError):
            continue


def main(argv):
    args = parse_args(argv)
    raise_nofile()

    def on_term(signum, frame):
        raise KeyboardInterrupt
    try:
        signal.signal(signal.SIGTERM, on_term)
    except (ValueError, OSError):
        pass
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    runid = "%08x" % rng.randrange(1 << 32)
    log = sys.stderr
    stop = threading.Event()
    results = []
    st = proc_status(args.pid) or {}
    rss_start = st.get("VmRSS")
    overall = {"attacks": 0, "passed": 0, "seed": seed, "quick": args.quick,
               "max_rss_growth_mb": args.max_rss_growth_mb,
               "max_peak_growth_mb": args.max_peak_growth_mb,
               "rss_start_mb": r1(rss_start), "notes": []}
    interrupted = False
    expect, problems = preflight(args.socket, "hostile-%s-probe" % runid)
    overall["probe_expected_status"] = expect
    if problems:
        overall["notes"].append("preflight: daemon does not answer ordinary requests: "
                                + "; ".join(problems))
    selected = [a for a in ATTACKS if a[0] in args.only]
    t_start = now()
    try:
        for i, (name, fn, (bfull, bquick), _) in enumerate(selected):
            print("[%d/%d] %s ..." % (i + 1, len(selected), name), file=log, end="", flush=True)
            budget = bquick if args.quick else bfull
            try:
                r = run_attack(args, name, fn, budget, stop, rng, runid, expect)
            except Interrupted as e:
                results.append(e.args[0])
                raise KeyboardInterrupt
            results.append(r)
            print(" %s (%.1fs)" % (r["verdict"], r.get("attack_secs", 0)), file=log, flush=True)
    except KeyboardInterrupt:
        interrupted = True
        stop.set()
        print(" interrupted", file=log, flush=True)
    st = proc_status(args.pid) or {}
    overall["rss_end_mb"] = r1(st.get("VmRSS"))
    overall["run_secs"] = round(now() - t_start, 1)
    overall["attacks"] = len(results)
    overall["passed"] = sum(1 for r in results if r["verdict"] == "PASS")
    if (rss_start is not None and st.get("VmRSS") is not None
            and st["VmRSS"] - rss_start > args.max_rss_growth_mb):
        overall["notes"].append("WARN cumulative RSS growth over the run: +%.1f MB"
                                % (st["VmRSS"] - rss_start))
    if interrupted:
        overall["notes"].append("run interrupted")
    ok = (not interrupted and not problems and results
          and overall["passed"] == len(results) and len(results) == len(selected))
    overall["verdict"] = "PASS" if ok else "FAIL"
    if args.json:
        json.dump({"overall": overall, "attacks": results}, sys.stdout, indent=1, default=str)
        print()
    else:
        print_table(results, overall)
    sys.stdout.flush()
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(1)
    except BrokenPipeError:
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        except OSError:
            pass
        sys.exit(1)
    except Exception as exc:    # a bug in the suite: report it, no traceback
        print("hostile/run.py: internal error: %s: %s" % (type(exc).__name__, exc),
              file=sys.stderr)
        sys.exit(1)
