"""Faults, hostile clients and crashes: Postfix's C tlsmgr and ours, side by side.

    .venv/bin/python benchmarks/reliability.py [--only NAME,...]

Each check starts a fresh pair of daemons, as master(8) starts them (the
stock one with a btree: smtpd cache, ours with lmdb:), runs the same
misbehaving clients against each in turn, and says what a well-behaved
client and an administrator would have seen.  Both daemons are started
with the open-files limit Debian's postfix service gets from systemd
(soft 1024), and ipc_timeout at its default (3600 s).

The checks:

connections  2000 clients connect and stay; then each asks for a seed.
footprint    the daemon's memory with 4000 idle connections, then with each
             holding 60 KB of a request it never finishes.
stalled      100 clients send half a request and stop; meanwhile a
             well-behaved client asks for seeds for 10 s (latency, failures).
message      one client sends a 64 MiB request: how much the daemon read,
             its peak memory growth, and its memory afterwards.
no-read      one client pipelines requests for 10 s and never reads the
             replies: the daemon's memory growth, and the well-behaved client.
kill-9       SIGKILL under a write storm from 4 clients, 3 times: the
             exchange file's size, and whether a restart serves.
hostile      python -m hostile --quick (the independent attack suite):
             attacks passed, if that suite is present.

As root (the stock daemon runs as mail_owner).  Takes about three minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import compare
from compare import harness

from tlsmgr.wire.attr import Decoder, encode

SEED = encode([("request", "seed"), ("size", 32)])
MiB = 1 << 20
DEBIAN_SOFT_LIMIT = 1024
ROOT = compare.BENCHMARKS.parent      # where python -m hostile runs


def mib(n: float) -> str:
    return "%.1f MB" % (n / MiB)


class Probe(threading.Thread):
    """A well-behaved client: seed requests one after another, each given
    a second to be answered, for the given time."""

    def __init__(self, socket_path, seconds: float):
        super().__init__(daemon=True)
        self.socket_path, self.seconds = socket_path, seconds
        self.latencies: list[float] = []
        self.failures = 0

    def run(self):
        end = time.monotonic() + self.seconds
        sock = None
        while time.monotonic() < end:
            try:
                if sock is None:
                    sock = harness.connect(self.socket_path, timeout=1)
                    harness.handshake(sock)
                started = time.monotonic()
                harness.request(sock, SEED)
                self.latencies.append(time.monotonic() - started)
            except (OSError, AssertionError):
                self.failures += 1
                if sock is not None:
                    sock.close()
                sock = None
        if sock is not None:
            sock.close()

    def summary(self) -> str:
        if not self.latencies:
            return "%d requests unanswered, none answered" % self.failures
        ordered = sorted(self.latencies)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return "%d answered, p50 %.2f ms, p99 %.2f ms, %d unanswered" % (
            len(ordered), statistics.median(ordered) * 1e3, p99 * 1e3, self.failures)


def answers(daemon) -> bool:
    try:
        with harness.connect(daemon.socket_path, timeout=2) as sock:
            harness.handshake(sock)
            return harness.request(sock, SEED)[0] == (b"status", b"0")
    except (OSError, AssertionError):
        return False


# The checks: each takes a started daemon and returns one line.

def check_connections(daemon, count=2000) -> str:
    socks, refused = [], 0
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_UNIX)
            socks.append(sock)
            try:
                sock.connect(str(daemon.socket_path))
                sock.sendall(SEED)
            except OSError:
                refused += 1
        # Each should see two messages: the handshake, then its seed.
        answered = 0
        with selectors.DefaultSelector() as selector:
            decoders = {}
            for sock in socks:
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ, [])
                decoders[sock] = Decoder()
            deadline = time.monotonic() + 30
            while selector.get_map() and time.monotonic() < deadline:
                for key, _ in selector.select(1):
                    try:
                        data = key.fileobj.recv(4096)
                    except OSError:
                        data = b""
                    key.data.extend(decoders[key.fileobj].feed(data))
                    if not data or len(key.data) >= 2:
                        answered += len(key.data) >= 2 and key.data[1][0] == (b"status", b"0")
                        selector.unregister(key.fileobj)
    finally:
        for sock in socks:
            sock.close()
    return "%d of %d answered%s" % (answered, count,
                                    ", %d could not connect" % refused if refused else "")


def check_footprint(daemon, count=4000) -> str:
    pid = daemon.process.pid
    answers(daemon)
    base = harness.process_memory(pid)["VmRSS"]
    socks = []
    try:
        for _ in range(count):
            socks.append(harness.connect(daemon.socket_path, timeout=5))
        time.sleep(1)
        idle = harness.process_memory(pid)["VmRSS"] - base
        for sock in socks:                  # 60 KB of a request that never ends
            try:
                sock.sendall(b"request\0update\0session\0" + b"A" * 61000)
            except OSError:
                pass
        time.sleep(2)
        partial = harness.process_memory(pid)["VmRSS"] - base
    finally:
        for sock in socks:
            sock.close()
    return "%d connections: %.1f KB each idle, %.1f KB each holding 60 KB of a request" % (
        count, idle / count / 1024, partial / count / 1024)


def check_stalled(daemon, count=100) -> str:
    stalled = []
    try:
        for _ in range(count):
            sock = harness.connect(daemon.socket_path, timeout=5)
            sock.sendall(b"request\0look")      # half a request, then nothing
            stalled.append(sock)
        probe = Probe(daemon.socket_path, 10)
        probe.start()
        probe.join(30)
        return probe.summary()
    finally:
        for sock in stalled:
            sock.close()


def check_message(daemon) -> str:
    pid = daemon.process.pid
    answers(daemon)
    before = harness.process_memory(pid)
    with harness.connect(daemon.socket_path, timeout=30) as sock:
        sent = harness.send_oversized_request(sock, 64 * MiB)
        try:
            sock.recv(4096)                     # the stock daemon answers, at last
        except OSError:
            pass
    time.sleep(1)
    after = harness.process_memory(pid)
    return "read %s; peak +%s, then +%s; %s" % (
        "all 64 MiB" if sent >= 64 * MiB else "under %d MiB" % (sent // MiB + 1),
        mib(after["VmHWM"] - before["VmHWM"]), mib(after["VmRSS"] - before["VmRSS"]),
        "still serving" if answers(daemon) else "NOT serving")


def check_no_read(daemon) -> str:
    pid = daemon.process.pid
    answers(daemon)
    before = harness.process_memory(pid)
    flood = SEED * (MiB // len(SEED))
    probe = Probe(daemon.socket_path, 10)
    sent = 0
    with harness.connect(daemon.socket_path, timeout=1) as sock:
        probe.start()
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                sent += sock.send(flood)
            except TimeoutError:
                pass
            except OSError:
                break
        probe.join(30)
        grown = harness.process_memory(pid)["VmHWM"] - before["VmHWM"]
    return "took %s of requests, peak +%s; meanwhile %s" % (mib(sent), mib(grown),
                                                             probe.summary())


def check_kill(daemon, restart) -> str:
    exchange = Path(daemon.data_directory) / "prng_exch"
    sizes, served = [], []
    for round_ in range(3):
        harness.kill_during_write_storm(daemon, "id-%d" % round_)
        sizes.append(exchange.stat().st_size if exchange.exists() else 0)
        daemon = restart(daemon)
        served.append(answers(daemon) and exchange.stat().st_size == 1024)
    return "exchange file after kill: %s bytes; restarted and served: %d of 3" % (
        "/".join(map(str, sizes)), sum(served)), daemon


def check_hostile(daemon) -> str:
    if not (ROOT / "hostile" / "__main__.py").exists():
        return "hostile/ not present"
    out = subprocess.run([sys.executable, "-m", "hostile", "--socket", str(daemon.socket_path),
                          "--pid", str(daemon.process.pid), "--quick", "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    try:
        report = json.loads(out.stdout)
    except json.JSONDecodeError:
        return "no report (exit %d): %s" % (out.returncode, out.stderr.strip()[-200:])
    attacks = report.get("attacks") or report.get("results") or []
    passed = [a for a in attacks if str(a.get("verdict", "")).upper() == "PASS"]
    failed = [a.get("name", "?") for a in attacks if a not in passed]
    return "%d of %d attacks passed%s" % (len(passed), len(attacks),
                                          "; failed: " + ", ".join(failed) if failed else "")


CHECKS = {"connections": check_connections, "footprint": check_footprint,
          "stalled": check_stalled,
          "message": check_message, "no-read": check_no_read, "kill-9": check_kill,
          "hostile": check_hostile}


# Running them.

class Pair:
    """Starting (and restarting in place) the two daemons for one check."""

    def __init__(self, scratch: Path, settings: compare.Settings):
        self.scratch, self.settings = scratch, settings

    def start(self, kind: str, workdir: Path):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        # The daemon inherits Debian's service limit; we keep ours.
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(DEBIAN_SOFT_LIMIT, hard), hard))
        try:
            daemon = compare.start(kind, workdir, self.settings)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        harness.wait_for(daemon.connectable, timeout=30, what="%s tlsmgr" % kind)
        daemon.kind, daemon.workdir = kind, workdir
        daemon.data_directory = workdir / "data"
        return daemon

    def restart(self, daemon):
        """After a crash: what master(8) does, a new process in the same place."""
        compare.stop(daemon)
        os.unlink(daemon.socket_path)
        return self.start(daemon.kind, daemon.workdir)


def run_check(name: str, pair: Pair, kind: str) -> str:
    workdir = pair.scratch / ("%s-%s" % (name, kind))
    daemon = pair.start(kind, workdir)
    try:
        if name == "kill-9":
            line, daemon = check_kill(daemon, pair.restart)
        else:
            line = CHECKS[name](daemon)
        if daemon.process.poll() is not None:
            line += "; the daemon EXITED with %s" % daemon.process.returncode
        return line
    finally:
        compare.stop(daemon)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated checks: " + ", ".join(CHECKS))
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(CHECKS)
    unknown = set(names) - set(CHECKS)
    if unknown:
        parser.error("unknown check: %s" % ", ".join(sorted(unknown)))
    if os.geteuid() != 0 or not os.path.exists(harness.STOCK_TLSMGR):
        parser.error("run as root, with Debian's postfix installed (%s)" % harness.STOCK_TLSMGR)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    print("command: %s" % " ".join(sys.argv))
    print("date: %s; %s" % (time.strftime("%Y-%m-%d %H:%M %Z"), compare.postfix_version()))
    scratch = Path(tempfile.mkdtemp(prefix="tlsmgr-reliability-"))
    settings = compare.Settings(seconds=0, warmup=0, keys=0, cycle_updates=False,
                                ours_table=compare.OURS_TABLE, pin="none",
                                ours_source=compare.snapshot_source(scratch))
    pair = Pair(scratch, settings)
    try:
        for name in names:
            for kind in ("stock", "ours"):
                print("%-12s %-5s %s" % (name, kind, run_check(name, pair, kind)), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
