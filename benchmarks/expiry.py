"""A cache of a million entries expiring under load: does cleanup stall anyone?

    .venv/bin/python benchmarks/expiry.py [--table memory:] [--entries 1000000]
                                          [--fill-seconds 60]

Our daemon starts (as master(8) starts it) with a 120 s smtpd cache timeout
and no size limits, and is filled with at least --entries sessions of 300
bytes by the load generator (benchmarks/loadgen.c, updates of fresh ids).
A cleanup pass runs at start and then every 120 s; the first one that
comes more than 120 s after the last entry was saved finds every entry
expired and removes them all, in steps between requests.  From 40 s
before that pass to 60 s after it, the generator keeps 8 connections busy
with lookups and reports their latency.  The daemon's own log line
says how many entries the pass removed, and how long it took.

Takes five to ten minutes per table.  As root, with gcc (like compare.py).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import compare

TIMEOUT = 120          # the smallest cache timeout tlsmgr allows
STALL = 0.010          # seconds: a reply slower than this is a stall
FILL_SECONDS = 60      # at 30000 updates a second or more: over a million


def loadgen(binary: Path, daemon, workload: str, seconds: float) -> dict:
    # The generator on CPU 1, the daemon on CPU 0, as compare.py places them.
    out = subprocess.run(
        ["taskset", "-c", "1", str(binary), "--socket", str(daemon.socket_path),
         "--workload", workload, "--conns", "8", "--size", "300",
         "--seconds", str(seconds), "--warmup", "0", "--stall", str(STALL),
         "--server-pid", str(daemon.process.pid)],
        capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    return json.loads(out)


def run(table: str, entries: int, fill_seconds: float) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="tlsmgr-expiry-"))
    settings = compare.Settings(
        seconds=0, warmup=0, keys=0, cycle_updates=False, ours_table=table,
        ours_env={}, ours_params={"smtpd_tls_session_cache_timeout": "%ds" % TIMEOUT,
                                  "tlsmgr_smtpd_cache_entry_limit": "0",
                                  "tlsmgr_smtpd_cache_size_limit": "0"},
        pin="split", ours_source=compare.snapshot_source(scratch))
    binary = compare.harness.build_loadgen(scratch)
    daemon = compare.start("ours", scratch / "ours", settings)
    try:
        compare.harness.wait_for(daemon.connectable, what="tlsmgr to listen")
        compare.pin_process(daemon.process.pid, {0})
        started = time.monotonic()
        # One run: each run of the generator numbers its fresh ids from 0.
        filled = loadgen(binary, daemon, "update", fill_seconds)["requests"]
        if filled < entries:
            raise SystemExit("filled only %d entries in %d s" % (filled, fill_seconds))
        # Lookups across the first pass that finds everything expired: the
        # passes run every T from the start, and the last entry was saved
        # at fill_end, so that is the first pass later than fill_end + T.
        fill_end = time.monotonic() - started
        full_pass = (math.floor((fill_end + TIMEOUT) / TIMEOUT) + 1) * TIMEOUT
        time.sleep(max(0.0, started + full_pass - 40 - time.monotonic()))
        under_load = loadgen(binary, daemon, "lookup-miss", 100)
        passes = re.findall(r"smtpd TLS session cache cleanup: removed (\d+) expired "
                            r"entries in ([\d.]+) seconds", daemon.log)
        return {"table": table, "filled": filled, "passes": passes,
                "requests": under_load["requests"], "slow": under_load["slow_replies"],
                "slow_at": under_load["slow_at_seconds"],
                "latency_us": under_load["latency_us"]}
    finally:
        compare.stop(daemon)
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", action="append",
                        help="our smtpd cache table (repeatable; default memory: and lmdb:)")
    parser.add_argument("--entries", type=int, default=1_000_000,
                        help="the least number of entries the fill must reach")
    parser.add_argument("--fill-seconds", type=float, default=FILL_SECONDS,
                        help="how long the fill runs (default %(default)s)")
    args = parser.parse_args()
    tables = args.table or ["memory:", "lmdb:${data_directory}/smtpd_scache"]
    print("command: %s" % " ".join(sys.argv))
    for table in tables:
        result = run(table, args.entries, args.fill_seconds)
        removed = ", ".join("%s in %s s" % pass_ for pass_ in result["passes"]) or "none"
        print("%-40s filled %d; cleanup removed %s; %d lookups meanwhile, "
              "%d slower than %d ms; latency p50/p99/p99.9/max %s/%s/%s/%s us"
              % (table, result["filled"], removed, result["requests"], result["slow"],
                 STALL * 1000, *(result["latency_us"][k]
                                 for k in ("p50", "p99", "p99.9", "max"))))
        if result["slow_at"]:
            # The lookups began 40 s before the pass: which stalls were its?
            print("%-40s slow replies came at (s after the lookups began; the pass "
                  "began at about 40): %s" % ("", " ".join("%.1f" % t for t in result["slow_at"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
