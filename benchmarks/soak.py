"""Soak under real Postfix: the stock tlsmgr and ours, in turn, under the same load.

    .venv/bin/python benchmarks/soak.py [--clients K] [--seconds T] [--runs N] [--json FILE]

For each daemon a private Debian Postfix instance (chroot=y, as Debian
ships master.cf; smtpd one connection per process, so that sessions resume
only through tlsmgr) is started and driven for T seconds by K real TLS SMTP
clients (tests/helpers/smtp_tls.py): half TLS 1.2 without tickets, which resume
through the session cache, half TLS 1.3, which resume by tickets sealed
with tlsmgr's keys.  Each client connects again and again (EHLO, STARTTLS,
EHLO, QUIT) offering its previous session.  A third of the way in, a burst
on the tlsmgr socket (the C load generator: 8 connections of tktkey for
5 s, as a busy host's smtpd processes can make); two thirds in, one
``postfix reload``.

It prints, side by side: handshakes per second; the fraction of offered
sessions resumed, overall, per TLS version and per phase (before the
burst, during it, between burst and reload, after the reload: there both
daemons start with empty caches and new keys, by design); client errors;
tlsmgr restarts other than the reload's; tlsmgr warnings in maillog; and
the tlsmgr processes' peak RSS and CPU time.

As root, with Debian's postfix and gcc.  Every instance is stopped and
removed at the end, whatever happened.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS.parent / "tests"))

# tests/helpers: the instance, the clients, the load generator.
from helpers import harness, postfix_instance  # noqa: E402
from helpers.smtp_tls import TLS12, TLS13, ResumingClients, Tally  # noqa: E402

PHASES = ("before", "burst", "between", "after reload")
BURST_SECONDS = 5


class TlsmgrWatch(threading.Thread):
    """Samples the instance's tlsmgr processes every 0.1 s: which pids
    came and went, and each one's last CPU time and peak RSS."""

    def __init__(self, instance: postfix_instance.PostfixInstance):
        super().__init__(daemon=True)
        self.instance = instance
        self.changes: list[tuple[float, list[int]]] = []   # (time, pids) when they changed
        self.cpu: dict[int, float] = {}
        self.peak_rss: dict[int, int] = {}
        self._done = threading.Event()

    def run(self):
        ticks = 100.0
        last: list[int] | None = None
        while not self._done.wait(0.1):
            pids = sorted(self.instance.tlsmgr_pids())
            if pids != last:
                self.changes.append((time.monotonic(), pids))
                last = pids
            for pid in pids:
                try:
                    fields = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
                    self.cpu[pid] = (int(fields[11]) + int(fields[12])) / ticks
                    self.peak_rss[pid] = harness.process_memory(pid)["VmHWM"]
                except (OSError, KeyError, IndexError):
                    pass

    def stop(self):
        self._done.set()
        self.join(5)

    def restarts(self, reload_at: float) -> int:
        """New tlsmgr processes other than the first and the one after the reload."""
        started = []
        seen: set[int] = set()
        for when, pids in self.changes:
            started += [when for pid in pids if pid not in seen]
            seen.update(pids)
        after_reload = [when for when in started if when >= reload_at]
        return len(started) - 1 - min(1, len(after_reload))


def warnings(instance) -> list[str]:
    return re.findall(r"postfix/tlsmgr\[\d+\]: (?:warning|error|fatal|panic): .*",
                      instance.log())


def soak(ours: bool, clients: int, seconds: float, loadgen: Path) -> dict:
    instance = postfix_instance.PostfixInstance(ours=ours, chroot=True)
    try:
        instance.start()
        watch = TlsmgrWatch(instance)
        watch.start()
        tallies: dict[str, Tally] = {}
        third = seconds / 3
        with ResumingClients("127.0.0.1", instance.port, clients) as running:
            began = time.monotonic()
            time.sleep(third)
            tallies["before"] = running.next_tally()
            burst = harness.loadgen_burst(loadgen, instance.queue / "private" / "tlsmgr",
                                          BURST_SECONDS)
            time.sleep(1)
            tallies["burst"] = running.next_tally()
            time.sleep(max(0.0, began + 2 * third - time.monotonic()))
            tallies["between"] = running.next_tally()
            reload_at = time.monotonic()
            instance.postfix("reload")
            time.sleep(max(0.0, began + seconds - time.monotonic()))
            tallies["after reload"] = running.next_tally()
            elapsed = time.monotonic() - began
        watch.stop()
        total = Tally()
        for tally in tallies.values():
            for name in ("handshakes", "offered", "resumed", "errors"):
                getattr(total, name).update(getattr(tally, name))
        return {
            "daemon": "ours" if ours else "stock",
            "handshakes_per_second": total.handshakes.total() / elapsed,
            "resumed": total.resumed_fraction(),
            "resumed_tls12": total.resumed_fraction(TLS12),
            "resumed_tls13": total.resumed_fraction(TLS13),
            "resumed_by_phase": {phase: tallies[phase].resumed_fraction() for phase in PHASES},
            "offered": total.offered.total(),
            "client_errors": dict(total.errors),
            "burst_requests": burst["requests"],
            "burst_errors": burst["errors"] + burst["closed"],
            "restarts": watch.restarts(reload_at),
            "warnings": warnings(instance),
            "peak_rss_mib": max(watch.peak_rss.values(), default=0) / (1 << 20),
            "cpu_seconds": sum(watch.cpu.values()),
        }
    finally:
        instance.destroy()


def percent(value: float | None) -> str:
    return "-" if value is None else "%.1f%%" % (100 * value)


def table(results: list[dict]) -> str:
    rows = [("", *(r["daemon"] for r in results))]

    def row(name, format_value):
        rows.append((name, *(format_value(r) for r in results)))

    row("handshakes/s", lambda r: "%.1f" % r["handshakes_per_second"])
    row("sessions offered", lambda r: str(r["offered"]))
    row("resumed", lambda r: percent(r["resumed"]))
    row("  TLS 1.2 (cache)", lambda r: percent(r["resumed_tls12"]))
    row("  TLS 1.3 (tickets)", lambda r: percent(r["resumed_tls13"]))
    for phase in PHASES:
        row("  " + phase, lambda r, phase=phase: percent(r["resumed_by_phase"][phase]))
    row("client errors", lambda r: str(sum(r["client_errors"].values())))
    row("burst requests", lambda r: "%d (%d failed)" % (r["burst_requests"], r["burst_errors"]))
    row("tlsmgr restarts", lambda r: str(r["restarts"]))
    row("tlsmgr warnings", lambda r: str(len(r["warnings"])))
    row("tlsmgr peak RSS", lambda r: "%.1f MiB" % r["peak_rss_mib"])
    row("tlsmgr CPU", lambda r: "%.1f s" % r["cpu_seconds"])
    widths = [max(len(cells[i]) for cells in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(cells, widths))
                     for cells in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16, help="TLS clients (default 16)")
    parser.add_argument("--seconds", type=float, default=60,
                        help="seconds of load per daemon and run (default 60)")
    parser.add_argument("--runs", type=int, default=1, help="runs of the pair (default 1)")
    parser.add_argument("--json", metavar="FILE", help="write every result here too")
    args = parser.parse_args()
    if not postfix_instance.available():
        print("soak.py: needs root and Debian's postfix (apt-get install postfix)",
              file=sys.stderr)
        return 2
    print("soak: %d clients, %.0f s per daemon, burst of %d s at 1/3, reload at 2/3"
          % (args.clients, args.seconds, BURST_SECONDS))
    everything = []
    with tempfile.TemporaryDirectory(prefix="tlsmgr-soak-") as scratch:
        loadgen = harness.build_loadgen(Path(scratch))
        for run in range(1, args.runs + 1):
            results = [soak(ours, args.clients, args.seconds, loadgen)
                       for ours in (False, True)]
            print("\nrun %d of %d (%s)" % (run, args.runs, time.strftime("%Y-%m-%d %H:%M")))
            print(table(results))
            for result in results:
                for line in result["warnings"] + list(result["client_errors"]):
                    print("  %s: %s" % (result["daemon"], line))
            sys.stdout.flush()
            everything.append(results)
    if args.json:
        Path(args.json).write_text(json.dumps(everything, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
