"""The well-behaved client that runs beside every attack, and the bounds its
requests are held to."""

import base64

from hostile.attr0 import req_lookup, req_policy, req_seed, status_of
from hostile.net import Worker, connect_unix, errname, now, read_handshake, read_msg, send_until

PROBE_TIMEOUT = 1.0          # a probe without a reply within this many seconds fails
PROBE_INTERVAL = 0.02        # pause between two probes
PROBE_FRESH_EVERY = 4        # every Nth probe uses a brand-new connection
PROBE_KINDS = ("seed", "policy", "lookup")
REPLY_NAMES = {"seed": [b"status", b"seed"],
               "policy": [b"status", b"cachable", b"timeout"],
               "lookup": [b"status", b"session"]}


class Prober(Worker):
    """A well-behaved client: one persistent connection plus every Nth probe
    on a fresh connection (connect + handshake count against the 1 s)."""

    def __init__(self, path, expect, probe_id):
        super().__init__("prober", PROBE_TIMEOUT + 2)
        self.path = path
        self.expect = expect
        self.payload = {"seed": req_seed(32), "policy": req_policy("smtpd"),
                        "lookup": req_lookup(probe_id, "smtpd")}
        self.records = []       # (kind, fresh, latency_s or None, reason)
        self.conn = None
        self.parser = None
        self.error = None

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

