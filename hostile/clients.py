"""The attacker's side of every attack: its budget and sockets (Ctx), and
helpers to open, hold and write to many connections at once."""

import select
import selectors
import socket

from hostile.attr0 import HANDSHAKE, MiB
from hostile.net import connect_unix, errname, now, try_recv, wait_fd

LINGER_RST = b"\x01\x00\x00\x00\x00\x00\x00\x00"     # struct linger {1, 0}: close() resets


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
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
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

