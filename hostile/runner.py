"""The runner: a preflight, then each attack with the prober and the monitor
beside it, its verdict, and the report (a table, or JSON with --json)."""

import json
import random
import resource
import signal
import sys
import textwrap
import threading
import time

from hostile.attacks import ATTACKS
from hostile.attr0 import status_of
from hostile.clients import Ctx
from hostile.net import now, read_msg, send_until
from hostile.probe import PROBE_KINDS, Prober
from hostile.proc import Monitor, proc_alive, proc_fds, proc_status

SETTLE_MAX = 3.0             # seconds allowed for RSS/fds to come back after an attack


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
            ("yes" if r.get("alive") else "NO")
            + ("" if r.get("answering") else " (not answering)")),
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


def run(args):
    """Runs the attacks args.only names, prints the report; the exit status."""
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
    selected = [a for a in ATTACKS if a.name in args.only]
    t_start = now()
    try:
        for i, attack in enumerate(selected):
            print("[%d/%d] %s ..." % (i + 1, len(selected), attack.name), file=log, end="",
                  flush=True)
            try:
                r = run_attack(args, attack.name, attack.run, attack.budget_for(args.quick),
                               stop, rng, runid, expect)
            except Interrupted as e:
                results.append(e.args[0])
                raise KeyboardInterrupt from None
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


