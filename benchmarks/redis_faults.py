"""The fleet cache through Redis faults: what a client of the daemon sees, timed.

    .venv/bin/python benchmarks/redis_faults.py

Each scenario starts real servers (Debian's redis-server: a Cluster of 3
masters and 3 replicas, a Sentinel set of a master, a replica and three
sentinels, single servers), starts this daemon stand-alone on them with
tlsmgr_redis_timeout_ms = 250, and drives it with a client that saves a
session and looks it up again, one request after another, timing every
request (tests/helpers/redis_servers.py).  Then the fault.  It prints, per
scenario: the slowest request the client saw, and how long after the
fault (or after Redis came back) sessions were found again.

As root or not; takes about two minutes.  Every server and daemon is
stopped at the end, whatever happened.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS.parent / "tests"))

from helpers import harness  # noqa: E402
from helpers.redis_servers import (  # noqa: E402
    Cluster,
    Load,
    SentinelSet,
    Servers,
    SlowProxy,
    fleet_host,
    timed,
)

from tlsmgr.admin.client import TlsmgrClient  # noqa: E402

TAG = ("{faults%d:smtpd}" % os.getpid()).encode()


def recovered_after(load: Load, since: float, limit: float = 60) -> float:
    """Seconds from since until the client found a session it had saved."""
    harness.wait_for(lambda: load.found_at > since + 0.01, timeout=limit, interval=0.05,
                     what="sessions to be found again")
    return load.found_at - since


def with_load(work: Path, url: str, fault, switched=None) -> tuple[float, ...]:
    """Run fault() against a daemon on url under load; it returns the
    moment to measure from.  Returns the slowest request, the seconds until
    sessions were found again and, given switched() (true once Redis has
    failed over), the seconds until it had."""
    daemon = fleet_host(work, "host", url)
    try:
        with Load(daemon.socket_path, "bench") as load:
            since = fault()
            times = []
            if switched is not None:
                harness.wait_for(switched, timeout=60, interval=0.05, what="the fail-over")
                times.append(time.monotonic() - since)
            times.insert(0, recovered_after(load, since))
    finally:
        daemon.stop()
    return (load.slowest, *times)


def failed_over(cluster: Cluster, before) -> bool:
    """Another node serves the cache's slot now, as the nodes that answer say."""
    try:
        return cluster.master_of(TAG) is not before
    except AssertionError:
        return False


def cluster_kill(work: Path):
    with Cluster(work / "redis") as cluster:
        master = cluster.master_of(TAG)

        def fault():
            master.kill()
            return time.monotonic()
        return with_load(work, cluster.url(), fault, lambda: failed_over(cluster, master))


def cluster_hang(work: Path):
    with Cluster(work / "redis") as cluster:
        master = cluster.master_of(TAG)

        def fault():
            master.signal(signal.SIGSTOP)
            return time.monotonic()
        try:
            return with_load(work, cluster.url(), fault, lambda: failed_over(cluster, master))
        finally:
            master.signal(signal.SIGCONT)


def sentinel_kill(work: Path):
    with SentinelSet(work / "redis") as sentinels:
        def fault():
            sentinels.master.kill()
            return time.monotonic()
        return with_load(work, sentinels.url(), fault,
                         lambda: sentinels.known_master() == sentinels.replica.port)


def sentinel_hang(work: Path):
    with SentinelSet(work / "redis") as sentinels:
        def fault():
            sentinels.master.signal(signal.SIGSTOP)
            return time.monotonic()
        try:
            return with_load(work, sentinels.url(), fault,
                             lambda: sentinels.known_master() == sentinels.replica.port)
        finally:
            sentinels.master.signal(signal.SIGCONT)


def restart(work: Path):
    with Servers(work / "redis") as servers:
        node = servers.node()

        def fault():
            node.stop()
            time.sleep(3)
            node.start()
            return time.monotonic()
        return with_load(work, "redis://127.0.0.1:%d/0" % node.port, fault)


def slow_tktkey(work: Path):
    """24 clients asking for the current key while every Redis answer is
    150 ms late: the slowest tktkey, and what a lookup took."""
    with Servers(work / "redis") as servers:
        proxy = SlowProxy(servers.node().port, 0.15)
        try:
            daemon = fleet_host(work, "host", "redis://127.0.0.1:%d/0" % proxy.port,
                                timeout_ms=3000)
            with TlsmgrClient(str(daemon.socket_path), timeout=30) as client:
                client.tktkey()
                _, lookup = timed(client.lookup, "smtpd", "x")
            slowest = [0.0] * 24

            def run(n):
                with TlsmgrClient(str(daemon.socket_path), timeout=30) as client:
                    for _ in range(50):
                        slowest[n] = max(slowest[n], timed(client.tktkey)[1])

            threads = [threading.Thread(target=run, args=(n,)) for n in range(24)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            daemon.stop()
            return max(slowest), lookup
        finally:
            proxy.close()


def cluster_kill_only_named(work: Path):
    """The URL names one node, the master then killed: the daemon must go
    on with the nodes it has learned."""
    with Cluster(work / "redis") as cluster:
        master = cluster.master_of(TAG)

        def fault():
            master.kill()
            return time.monotonic()
        return with_load(work, cluster.url(master), fault,
                         lambda: failed_over(cluster, master))


_WAITING_CLIENT = """
import sys
from tlsmgr.admin.client import TlsmgrClient
with TlsmgrClient(sys.argv[1], timeout=30) as client:
    n = 0
    while True:
        n += 1
        client.lookup("smtpd", "w%d" % n)
"""


def stopped_p99(work: Path):
    """Redis answering, then stopped (SIGSTOP), while 16 client processes
    look sessions up in it without pause: the p99 of what must not wait
    on it (seed, policy, tktkey for the key in memory, a lookup of the
    local smtp cache), 1000 requests each, in microseconds."""
    with Servers(work / "redis") as servers:
        node = servers.node()
        daemon = fleet_host(work, "host", "redis://127.0.0.1:%d/0" % node.port,
                            smtp_tls_session_cache_database="lmdb:%s" % (work / "smtp_scache"))
        waiting = [subprocess.Popen([sys.executable, "-c", _WAITING_CLIENT,
                                     str(daemon.socket_path)]) for _ in range(16)]
        try:
            with TlsmgrClient(str(daemon.socket_path), timeout=30) as client:
                client.tktkey()                              # the key in memory
                client.update("smtp", "local", b"s")
                calls = (lambda: client.seed(32), lambda: client.policy("smtpd"),
                         client.tktkey, lambda: client.lookup("smtp", "local"))

                def p99s() -> list[float]:
                    found = []
                    for call in calls:
                        took = sorted(timed(call)[1] for _ in range(1000))
                        found.append(took[int(len(took) * 0.99)] * 1e6)
                    return found
                time.sleep(0.5)
                answering = p99s()
                node.signal(signal.SIGSTOP)
                time.sleep(0.5)
                try:
                    stopped = p99s()
                finally:
                    node.signal(signal.SIGCONT)
        finally:
            for process in waiting:
                harness.end_process(process)
            daemon.stop()
        return (*answering, *stopped)


def sigterm_stuck(work: Path):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        daemon = fleet_host(work, "host", "redis://127.0.0.1:%d/0" % silent.getsockname()[1],
                            timeout_ms=5000)
        client = TlsmgrClient(str(daemon.socket_path), timeout=30)
        threading.Thread(target=lambda: _quietly(client.lookup, "smtpd", "x"),
                         daemon=True).start()
        time.sleep(0.5)
        _, took = timed(daemon.stop)
        client.close()
        return took
    finally:
        silent.close()


def _quietly(call, *args):
    try:
        call(*args)
    except Exception:
        pass


SCENARIOS = [
    ("Cluster: the master of the cache's slot killed (kill -9)", cluster_kill,
     "slowest request %.3f s; sessions found again %.1f s after the kill "
     "(the cluster had failed over after %.1f s)"),
    ("Cluster: that master hung (SIGSTOP)", cluster_hang,
     "slowest request %.3f s; sessions found again %.1f s after the hang began "
     "(the cluster had failed over after %.1f s)"),
    ("Cluster: the URL names only the master of the cache's slot, killed (kill -9)",
     cluster_kill_only_named,
     "slowest request %.3f s; sessions found again %.1f s after the kill "
     "(the cluster had failed over after %.1f s)"),
    ("Sentinel: the master killed (kill -9)", sentinel_kill,
     "slowest request %.3f s; sessions found again %.1f s after the kill "
     "(the sentinels named the new master after %.1f s)"),
    ("Sentinel: the master hung (SIGSTOP)", sentinel_hang,
     "slowest request %.3f s; sessions found again %.1f s after the hang began "
     "(the sentinels named the new master after %.1f s)"),
    ("One Redis stopped for 3 s, then started", restart,
     "slowest request %.3f s; sessions found again %.1f s after the start"),
    ("Every Redis answer 150 ms late; 24 clients ask for the current key", slow_tktkey,
     "slowest tktkey %.3f s; a lookup %.3f s"),
    ("16 client processes ask Redis without pause: p99 of what must not wait on it",
     stopped_p99, "Redis answering: seed %.0f us, policy %.0f us, tktkey %.0f us, "
     "local lookup %.0f us;\n    Redis stopped (SIGSTOP): seed %.0f us, policy %.0f us, "
     "tktkey %.0f us, local lookup %.0f us"),
    ("SIGTERM while a request waits on a silent Redis (5 s timeout)", sigterm_stuck,
     "exit after %.2f s"),
]


def main() -> int:
    if not harness.redis_available():
        print("redis_faults.py: needs redis-server (apt-get install redis-server)",
              file=sys.stderr)
        return 2
    print("redis_faults: tlsmgr_redis_timeout_ms = 250, %s" % time.strftime("%Y-%m-%d %H:%M"))
    for title, scenario, text in SCENARIOS:
        with tempfile.TemporaryDirectory(prefix="tlsmgr-faults-") as scratch:
            work = Path(scratch)
            work.chmod(0o755)
            try:
                result = scenario(work)
                figures = text % (result if isinstance(result, tuple) else (result,))
            except AssertionError as err:
                figures = "FAILED: %s" % err
            finally:
                for daemon in harness.started:
                    daemon.stop()
                harness.started.clear()
        print("%s\n    %s" % (title, figures))
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
