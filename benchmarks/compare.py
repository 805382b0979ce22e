"""Throughput and latency of this tlsmgr against Postfix's stock one.

    .venv/bin/python benchmarks/compare.py [--seconds 3] [--quick] [--json FILE]

In one run on one machine, each cell of a matrix (workload x connections x
session size) is measured twice under the same load generator: first
against Postfix's own C tlsmgr (smtpd cache ``btree:``), then against this
daemon (smtpd cache ``lmdb:``, or ``--ours-table``).  Both are started as
master(8) starts them (tests/helpers/harness.py): listening socket on fd 6, status
pipe on fd 5, MAIL_CONFIG and GENERATION in the environment.  Each
measurement gets a fresh daemon with empty caches in a fresh directory.

The load generator is benchmarks/loadgen.c, compiled here with gcc -O2
into a temporary directory: one epoll loop, N persistent connections, one
request outstanding per connection (Postfix clients never pipeline).

Each cell is also measured against benchmarks/responder.c, a C server on
the same kind of socket that answers every request with a reply made once
at start and does nothing else: the limit of this machine, the kernel's
and an event loop's share alone.  ``ours/limit`` says how near it we are.
Cells that update (update, mix) are measured once more against the same
responder built with LMDB (liblmdb-dev), which puts each update's bytes
into an LMDB file as our lmdb: store does, and does nothing else: a limit
that also writes, ``ours/wlimit``.  Without liblmdb-dev that column is left
out, and the run says so.

With ``--ours-table redis:URL``, what ``redis-benchmark`` (redis-tools), a
C client, gets for GET and SET from the same Redis, at each connection
count and session size of the matrix, is printed after the table: the
round trip a client of that Redis gets, beside ours.

Prints the machine, the command line and a table; ``--json`` writes every
raw measurement too.  Every daemon is stopped by its pid and every
temporary directory removed at the end, whatever happened.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import hashlib
import importlib.util
import io
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS.parent / "tests"))

from helpers import harness  # noqa: E402  (tests/helpers/harness.py: how daemons are started)

WORKLOADS = ["lookup-miss", "lookup-hit", "mix", "update", "seed", "tktkey"]
SIZED = {"lookup-hit", "mix", "update"}         # the others carry no session
WRITING = {"mix", "update"}                     # measured against the writing limit too
CONNECTIONS = [1, 8, 64]
SIZES = [300, 2048]
QUICK = [("lookup-miss", 1, 300), ("lookup-hit", 1, 300), ("lookup-hit", 8, 2048),
         ("mix", 8, 300), ("update", 8, 300), ("seed", 8, 300), ("tktkey", 64, 300)]

# More than this much of a CPU busy with other work during a measurement
# (other processes, the kernel) makes it suspect: see measure_cell().
DISTURBED = 0.10

STOCK_TABLE = "btree:${data_directory}/smtpd_scache"
OURS_TABLE = "lmdb:${data_directory}/smtpd_scache"


@dataclass(frozen=True)
class Cell:
    workload: str
    conns: int
    size: int


@dataclass
class Settings:
    seconds: float
    warmup: float
    keys: int
    cycle_updates: bool
    ours_table: str
    pin: str                    # split, same or none: see placement()
    ours_env: dict[str, str] = field(default_factory=dict)
    ours_params: dict[str, str] = field(default_factory=dict)
    ours_source: Path | None = None     # the snapshot of our package
    responder: Path | None = None       # benchmarks/responder.c, built
    writing_responder: Path | None = None   # the same with LMDB, if it could be built
    cell: Cell | None = None            # the one being measured (for the responder)


def matrix(args) -> list[Cell]:
    if args.quick:
        cells = [Cell(*row) for row in QUICK]
    else:
        cells = [Cell(workload, conns, size)
                 for workload in WORKLOADS
                 for conns in CONNECTIONS
                 for size in (SIZES if workload in SIZED else SIZES[:1])]
    # --workloads/--conns/--sizes narrow either list down.
    return [cell for cell in cells
            if (not args.workloads or cell.workload in args.workloads)
            and (not args.conns or cell.conns in args.conns)
            and (not args.sizes or cell.size in args.sizes or cell.workload not in SIZED)]


# The machine and the tools.

def machine() -> dict:
    model = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "nproc": int(subprocess.run(["nproc"], capture_output=True, text=True).stdout),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "uvloop": importlib.util.find_spec("uvloop") is not None,
        "postfix": postfix_version(),
        "command": shlex.join(sys.orig_argv),
        "loadavg_at_start": loadavg(),
        "git_head": git_head(),
    }


def git_head() -> str:
    """The commit, and whether src/ differs from it (read-only git)."""
    def git(*args):
        return subprocess.run(["git", "-C", str(BENCHMARKS.parent), *args],
                              capture_output=True, text=True, timeout=30).stdout.strip()
    try:
        head = git("rev-parse", "--short", "HEAD") or "unknown"
        return head + (" + uncommitted changes in src/" if git("status", "--porcelain", "--",
                                                              "src") else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def snapshot_source(scratch: Path, pure: bool) -> tuple[Path, bool]:
    """Copy our package for this run's daemons to import (PYTHONPATH);
    return where, and whether its compiled path (fastpath.py) is in it.

    It is installed in editable mode, so a daemon imports src/ as it is
    the moment it starts; others edit src/ while a run goes on, and a run
    must measure one version of the code from its first row to its last.
    ``pure`` leaves the compiled path out.
    """
    import tlsmgr
    root = scratch / "src"
    left_out = ["__pycache__"] + (["_fastpath.*.so"] if pure else [])
    shutil.copytree(Path(tlsmgr.__file__).parent, root / "tlsmgr",
                    ignore=shutil.ignore_patterns(*left_out))
    found = subprocess.run(
        [harness.PYTHON, "-c",
         "import tlsmgr.service.fastpath as f; print(f.__file__); print(f.COMPILED)"],
        env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True,
        text=True, check=True, timeout=60).stdout.split()
    if not found[0].startswith(str(root)):
        raise RuntimeError("the snapshot is not what Python imports: %s" % found[0])
    return root, found[1] == "True"


def source_digest(root: Path) -> str:
    """A digest of the package's source files, to tell versions apart."""
    digest = hashlib.sha256()
    for path in sorted([*root.rglob("*.py"), *root.rglob("*.c")]):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def loadavg() -> str:
    """Other work on the machine skews every number: show how much there was."""
    with open("/proc/loadavg") as text:
        return " ".join(text.read().split()[:3])


def postfix_version() -> str:
    try:
        return subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "postfix"],
                              capture_output=True, text=True, timeout=10).stdout or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


# The daemons.

def start(kind: str, workdir: Path, settings: Settings) -> harness.Daemon:
    """Start a daemon as master(8) does; the caller waits for it to listen.

    Not harness.start_stock(): it waits before handing the daemon back, and
    a signal during that wait would leave a process nobody knows the pid of.
    """
    workdir.mkdir(exist_ok=True)        # a restart after a crash reuses it
    if kind == "stock":
        daemon = harness.start_as_master_does(
            [harness.STOCK_TLSMGR], workdir, "stock", **harness.postfix_dirs(workdir),
            smtpd_tls_session_cache_database=STOCK_TABLE)
    elif kind in ("limit", "wlimit"):
        responder = settings.responder if kind == "limit" else settings.writing_responder
        assert responder is not None and settings.cell is not None
        command = [str(responder), "--lookup",
                   "miss" if settings.cell.workload == "lookup-miss" else "hit",
                   "--size", str(settings.cell.size)]
        if kind == "wlimit":
            command += ["--store", str(workdir / "smtpd_scache.lmdb")]
        daemon = harness.start_as_master_does(command, workdir, kind,
                                              **harness.postfix_dirs(workdir))
    else:
        daemon = harness.start_ours_as_master_does(
            workdir, wait=False,
            env={"PYTHONPATH": str(settings.ours_source), **settings.ours_env},
            **{"smtpd_tls_session_cache_database": settings.ours_table,
               **settings.ours_params})
    return daemon


def build_responder(directory: Path, writing: bool = False) -> Path | None:
    """benchmarks/responder.c, the no-work server, compiled into directory;
    with ``writing``, built with LMDB, or None where liblmdb-dev is missing."""
    binary = directory / ("responder-lmdb" if writing else "responder")
    lmdb = ["-DWITH_LMDB", "-llmdb"] if writing else []      # -l after the source
    built = subprocess.run(["gcc", "-O2", "-Wall", "-o", str(binary),
                            str(BENCHMARKS / "responder.c"), *lmdb],
                           check=not writing, timeout=120, capture_output=writing)
    return binary if built.returncode == 0 else None


def stop(daemon: harness.Daemon) -> int:
    """Stop by pid (SIGTERM, then SIGKILL); master's end of the status
    channel goes with it."""
    return daemon.stop()


# Where the processes run.

def placement(pin: str) -> tuple[set[int] | None, set[int] | None]:
    """CPU sets for (daemon, generator).

    One connection is a ping-pong whose round trip depends mostly on where
    the two processes run: about 50 us across two CPUs of this VM, 15 us
    when they share one.  Left to the scheduler, runs flip between the two
    at random, so by default each gets its own CPU, the same for both
    daemons.
    """
    if pin == "none" or (pin == "split" and (os.cpu_count() or 1) < 2):
        return None, None
    if pin == "same":
        return {0}, {0}
    return {0}, {1}


def pin_process(pid: int, cpus: set[int] | None) -> None:
    """Pin every thread of a process (affinity is per thread)."""
    if cpus is None:
        return
    for task in os.listdir("/proc/%d/task" % pid):
        try:
            os.sched_setaffinity(int(task), cpus)
        except ProcessLookupError:
            pass                     # a thread that just ended


# One measurement.

def run_loadgen(loadgen: Path, daemon: harness.Daemon, cell: Cell, settings: Settings) -> dict:
    command = [str(loadgen), "--socket", str(daemon.socket_path),
               "--workload", cell.workload, "--conns", str(cell.conns),
               "--size", str(cell.size), "--seconds", str(settings.seconds),
               "--warmup", str(settings.warmup), "--keys", str(settings.keys),
               "--server-pid", str(daemon.process.pid)]
    if settings.cycle_updates:
        command.append("--cycle-updates")
    # Generous but finite: set-up, warm-up, the run, and slack for a slow daemon.
    limit = 60 + settings.warmup + settings.seconds + settings.keys * 0.01
    cpus = placement(settings.pin)[1]
    if cpus is not None:
        # taskset rather than a preexec_fn: this process has threads.
        command = ["taskset", "-c", ",".join(map(str, sorted(cpus))), *command]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        out, err = process.communicate(timeout=limit)
    except BaseException:
        process.kill()
        process.wait()
        raise
    if process.returncode != 0:
        return {"failed": "loadgen exited with %d: %s" % (process.returncode, err.strip())}
    result = json.loads(out)
    if "machine_busy_cpu_seconds" in result and "server_cpu_seconds" in result:
        other = (result["machine_busy_cpu_seconds"] - result["cpu_seconds"]
                 - result["server_cpu_seconds"])
        result["other_cpu_share"] = max(other, 0.0) / result["seconds"]
    return result


def measure(kind: str, loadgen: Path, cell: Cell, settings: Settings,
            scratch: Path) -> dict:
    """One daemon, fresh, under one cell's load; stopped before returning."""
    workdir = Path(tempfile.mkdtemp(prefix=kind + "-", dir=scratch))
    daemon = None
    try:
        daemon = start(kind, workdir / "d", settings)
        try:
            harness.wait_for(daemon.connectable, what="the %s tlsmgr to listen" % kind)
        except AssertionError as err:        # it exited, or never listened
            return {"failed": str(err)[-2000:]}
        pin_process(daemon.process.pid, placement(settings.pin)[0])
        result = run_loadgen(loadgen, daemon, cell, settings)
        if daemon.process.poll() is not None:
            result["daemon_exited"] = daemon.process.returncode
        result["status_messages"] = daemon.master.count
        if result.get("failed") or "daemon_exited" in result:
            result["daemon_log_tail"] = daemon.log[-2000:]
        return result
    finally:
        if daemon is not None:
            stop(daemon)
        shutil.rmtree(workdir, ignore_errors=True)


def disturbed(result: dict) -> bool:
    return result.get("other_cpu_share", 0.0) > DISTURBED


def measure_cell(loadgen: Path, cell: Cell, settings: Settings, scratch: Path,
                 retries: int) -> dict:
    """Both daemons under one cell's load, stock first, then the limit (and
    the writing limit, for a cell that updates, where it was built).

    The machine may be shared: when other work took CPU time during either
    measurement, the pair is measured again (up to ``retries`` times) after
    a pause.  Every attempt is kept in the raw results.
    """
    attempts = []
    settings.cell = cell
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(2)
        kinds = ["stock", "ours", "limit"]
        if cell.workload in WRITING and settings.writing_responder is not None:
            kinds.append("wlimit")
        pair = {kind: measure(kind, loadgen, cell, settings, scratch) for kind in kinds}
        attempts.append(pair)
        if not any(disturbed(result) for result in pair.values()):
            break
    return {**cell.__dict__, **attempts[-1], "attempts": len(attempts),
            "earlier_attempts": attempts[:-1]}


# The report.

def latency(result: dict) -> str:
    lat = result.get("latency_us")
    if not lat:
        return "-"
    return "%.0f/%.0f/%.0f" % (lat["p50"], lat["p99"], lat["p99.9"])


def throughput(result: dict | None) -> str:
    if result is None:
        return "-"
    return "FAILED" if "failed" in result else "%.0f" % result["throughput"]


def share(result: dict, key: str) -> str:
    return "%.2f" % result[key] if key in result else "-"


def trouble(result: dict) -> str:
    """Errors, stalls and hang-ups, for the last column: '' when clean."""
    notes = []
    if "failed" in result:
        notes.append("failed")
    for key in ("errors", "bad_replies", "stalls", "closed"):
        if result.get(key):
            notes.append("%s=%d" % (key, result[key]))
    if "daemon_exited" in result:
        notes.append("daemon exited %s" % result["daemon_exited"])
    if disturbed(result):
        notes.append("disturbed: other CPU %.2f" % result["other_cpu_share"])
    return ",".join(notes)


COLUMNS = [("workload", "%-11s"), ("conns", "%5s"), ("size", "%5s"),
           ("stock req/s", "%11s"), ("ours req/s", "%10s"), ("ours/stock", "%10s"),
           ("limit req/s", "%11s"), ("ours/limit", "%10s"),
           ("wlimit req/s", "%12s"), ("ours/wlimit", "%11s"),
           ("stock p50/p99/p99.9 us", "%22s"), ("ours p50/p99/p99.9 us", "%21s"),
           ("gen CPU st/ours", "%15s"), ("daemon CPU st/ours", "%18s"),
           ("other CPU st/ours", "%17s"), ("notes", "%s")]


def ratio(ours: dict, other: dict | None) -> str:
    if other and "throughput" in other and "throughput" in ours and other["throughput"] > 0:
        return "%.2f" % (ours["throughput"] / other["throughput"])
    return "-"


def row(cell: Cell, stock: dict, ours: dict, limit: dict, wlimit: dict | None = None,
        attempts: int = 1) -> str:
    notes = "; ".join("%s: %s" % (name, text)
                      for name, text in (("stock", trouble(stock)), ("ours", trouble(ours)),
                                         ("limit", trouble(limit)),
                                         ("wlimit", trouble(wlimit or {})))
                      if text)
    if attempts > 1:
        notes = "; ".join(filter(None, ["attempt %d" % attempts, notes]))
    values = [cell.workload, cell.conns, cell.size if cell.workload in SIZED else "-",
              throughput(stock), throughput(ours), ratio(ours, stock),
              throughput(limit), ratio(ours, limit), throughput(wlimit), ratio(ours, wlimit),
              latency(stock), latency(ours),
              "%s/%s" % (share(stock, "cpu_share"), share(ours, "cpu_share")),
              "%s/%s" % (share(stock, "server_cpu_share"), share(ours, "server_cpu_share")),
              "%s/%s" % (share(stock, "other_cpu_share"), share(ours, "other_cpu_share")),
              notes]
    return "  ".join(fmt % value for (_, fmt), value in zip(COLUMNS, values)).rstrip()


def header() -> str:
    return "  ".join(fmt % name for name, fmt in COLUMNS).rstrip()


def print_machine(info: dict, settings: Settings) -> None:
    print("date:    %s" % info["date"])
    print("machine: %d CPUs (nproc), %s, Linux %s" % (info["nproc"], info["cpu"], info["kernel"]))
    print("python:  %s, uvloop %s; postfix %s" % (
        info["python"], "installed" if info["uvloop"] else "not installed", info["postfix"]))
    print("command: %s" % info["command"])
    print("load:    %s (1/5/15 min averages before the run)" % info["loadavg_at_start"])
    print("ours:    git %s; snapshot of src/tlsmgr taken at the start, digest %s; %s"
          % (info["git_head"], info["ours_source"],
             "compiled path in" if info["compiled"] else "pure path alone"))
    print("tables:  stock %s, ours %s%s%s" % (
        STOCK_TABLE, settings.ours_table,
        "".join("; main.cf %s = %s" % item for item in settings.ours_params.items()),
        "".join("; env %s=%s" % item for item in settings.ours_env.items())))
    daemon_cpus, generator_cpus = placement(settings.pin)
    print("cpus:    %s" % ("daemon on %s, generator on %s" % (
        sorted(daemon_cpus), sorted(generator_cpus)) if daemon_cpus else "not pinned"))
    print("each:    %.1fs measured after %.1fs warm-up; %d stored ids; updates to %s ids"
          % (settings.seconds, settings.warmup, settings.keys,
             "the stored" if settings.cycle_updates else "fresh"))
    print(flush=True)


# The command.

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=None,
                        help="measured seconds per daemon and cell (default 3; 1 with --quick)")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds first")
    parser.add_argument("--quick", action="store_true", help="a small subset of the matrix")
    parser.add_argument("--workloads", type=lambda s: s.split(","), default=None,
                        help="comma-separated subset of: " + ",".join(WORKLOADS))
    parser.add_argument("--conns", type=lambda s: [int(n) for n in s.split(",")],
                        default=None, help="comma-separated connection counts")
    parser.add_argument("--sizes", type=lambda s: [int(n) for n in s.split(",")],
                        default=None, help="comma-separated session sizes (bytes)")
    parser.add_argument("--keys", type=int, default=1000,
                        help="ids stored before lookup-hit and mix (default 1000)")
    parser.add_argument("--cycle-updates", action="store_true",
                        help="update the stored ids over and over, not fresh ones")
    parser.add_argument("--ours-table", default=OURS_TABLE,
                        help="our smtpd cache table, e.g. memory: (default %s)"
                        % OURS_TABLE.replace("%", "%%"))
    parser.add_argument("--ours-env", action="append", default=[], metavar="NAME=VALUE",
                        help="add to our daemon's environment (repeatable)")
    parser.add_argument("--ours-param", action="append", default=[], metavar="NAME=VALUE",
                        help="add to our daemon's main.cf (repeatable), "
                        "e.g. tlsmgr_event_loop=asyncio")
    parser.add_argument("--pin", choices=["split", "same", "none"], default="split",
                        help="CPUs: daemon on 0 and generator on 1 (split, the default), "
                        "both on 0 (same), or left to the scheduler (none)")
    parser.add_argument("--retries", type=int, default=2,
                        help="measure a cell again when other work took more than "
                        "%.2f of a CPU during it (default 2 more times)" % DISTURBED)
    parser.add_argument("--pure", action="store_true",
                        help="run ours without its compiled path (fastpath.py)")
    parser.add_argument("--json", metavar="FILE", help="write the raw results here")
    args = parser.parse_args(argv)
    for workload in args.workloads or ():
        if workload not in WORKLOADS:
            parser.error("unknown workload %r" % workload)
    for item in args.ours_env + args.ours_param:
        if "=" not in item:
            parser.error("--ours-env and --ours-param want NAME=VALUE, not %r" % item)
    if args.seconds is None:
        args.seconds = 1.0 if args.quick else 3.0
    return args


def settings_from(args) -> Settings:
    return Settings(seconds=args.seconds, warmup=args.warmup, keys=args.keys,
                    cycle_updates=args.cycle_updates, ours_table=args.ours_table,
                    pin=args.pin,
                    ours_env=dict(item.split("=", 1) for item in args.ours_env),
                    ours_params={name.strip(): value.strip() for name, value in
                                 (item.split("=", 1) for item in args.ours_param)})


# What a C client gets from the same Redis.

def redis_benchmark_target(table: str) -> list[str] | None:
    """redis-benchmark's options for the Redis of a redis: table (the
    master a Sentinel names; a Cluster with --cluster), or None.  Not for
    a Redis with a password, which its command line would show."""
    if not table.startswith("redis:") or shutil.which("redis-benchmark") is None:
        return None
    from redis import Redis

    from tlsmgr.stores.redis import parse_url
    endpoint = parse_url(table[len("redis:"):])
    if endpoint.credentials.password:
        return None
    if endpoint.kind == "cluster":
        host, port = endpoint.nodes[0]
        return ["--cluster", "-h", host, "-p", str(port)]
    if endpoint.kind == "sentinel":
        host, port = endpoint.nodes[0]
        sentinel = Redis(host=host, port=port, socket_timeout=5)
        host, port = sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME",
                                              endpoint.service)
        return ["-h", host.decode(), "-p", port.decode()]
    if endpoint.address.startswith("unix:"):
        return ["-s", urlsplit(endpoint.address).path]
    parts = urlsplit(endpoint.address)
    return ["-h", parts.hostname or "localhost", "-p", str(parts.port or 6379)]


def redis_benchmark(target: list[str], cells: list[Cell], settings: Settings) -> list[dict]:
    """GET and SET rates and latencies from redis-benchmark, for each
    (connections, size) of the cells, on the generator's CPUs."""
    measured = []
    for conns, size in sorted({(cell.conns, cell.size) for cell in cells}):
        command = ["redis-benchmark", *target, "-c", str(conns), "-d", str(size),
                   "-t", "get,set", "-n", str(max(20000, 20000 * conns // 8)),
                   "-r", "100000", "--csv"]
        cpus = placement(settings.pin)[1]
        if cpus is not None:
            command = ["taskset", "-c", ",".join(map(str, sorted(cpus))), *command]
        out = subprocess.run(command, capture_output=True, text=True, timeout=300).stdout
        # With --cluster, what it found of the cluster comes first.
        table = out[out.find('"test"'):] if '"test"' in out else ""
        for line in csv.DictReader(io.StringIO(table)):
            measured.append({"conns": conns, "size": size, "test": line["test"],
                             "rps": float(line["rps"]),
                             "p50_us": float(line["p50_latency_ms"]) * 1000,
                             "p99_us": float(line["p99_latency_ms"]) * 1000})
    return measured


def print_redis_benchmark(measured: list[dict]) -> None:
    print("\nredis-benchmark, a C client of the same Redis (GET and SET, -r 100000):")
    print("%-5s %6s %5s %10s %8s %8s" % ("test", "conns", "size", "req/s", "p50us", "p99us"))
    for line in measured:
        print("%-5s %6d %5d %10.0f %8.0f %8.0f" % (line["test"], line["conns"], line["size"],
                                                  line["rps"], line["p50_us"], line["p99_us"]))


def main(argv=None) -> int:
    args = parse_args(argv)
    if not harness.stock_available():
        sys.exit("compare.py needs root and Debian's postfix (%s)" % harness.STOCK_TLSMGR)
    settings = settings_from(args)
    cells = matrix(args)
    # SIGTERM must also reach the clean-up below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    scratch = Path(tempfile.mkdtemp(prefix="tlsmgr-compare-"))
    results = []
    info = machine()
    began = time.monotonic()
    try:
        settings.ours_source, info["compiled"] = snapshot_source(scratch, args.pure)
        info["ours_source"] = source_digest(settings.ours_source)
        print_machine(info, settings)
        loadgen = harness.build_loadgen(scratch)
        settings.responder = build_responder(scratch)
        settings.writing_responder = build_responder(scratch, writing=True)
        if settings.writing_responder is None and any(cell.workload in WRITING
                                                      for cell in cells):
            print("wlimit:  not measured: benchmarks/responder.c did not build with LMDB "
                  "(apt-get install liblmdb-dev)\n")
        print(header(), flush=True)
        for cell in cells:
            result = measure_cell(loadgen, cell, settings, scratch, args.retries)
            results.append(result)
            print(row(cell, result["stock"], result["ours"], result["limit"],
                      result.get("wlimit"), result["attempts"]), flush=True)
        target = redis_benchmark_target(settings.ours_table)
        if target is not None:
            info["redis_benchmark"] = redis_benchmark(target, cells, settings)
            print_redis_benchmark(info["redis_benchmark"])
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        # (Each daemon is stopped by measure() itself.)
        shutil.rmtree(scratch, ignore_errors=True)
        info["loadavg_at_end"] = loadavg()
        info["elapsed_seconds"] = round(time.monotonic() - began)
        print("\nload at the end: %s; %d s in all" % (info["loadavg_at_end"],
                                                   info["elapsed_seconds"]))
        if args.json:
            write_json(args.json, info, settings, results)
    return 0


def write_json(path: str, info: dict, settings: Settings, results: list) -> None:
    with open(path, "w") as out:
        # (ours_source is a temporary path: the digest in info names it.)
        plain = {name: value for name, value in settings.__dict__.items()
                 if name not in ("ours_source", "responder", "writing_responder", "cell")}
        json.dump({"machine": info, "settings": plain,
                   "stock_table": STOCK_TABLE, "results": results}, out, indent=1)
        out.write("\n")


if __name__ == "__main__":
    sys.exit(main())
