"""A preserved cache of millions: start-up and memory.

    .venv/bin/python benchmarks/scale.py [--entries 100000,1000000,5000000] [--size 300]
                                         [--steady SECONDS]

For each size, an LMDB smtpd cache of that many 300-byte sessions is
written (by the store itself, as the daemon writes it), and the daemon
started on it with ``tlsmgr_preserve_sessions = yes``, twice: after the
kernel's page cache is dropped (cold: as after a reboot; needs root) and
again with the file in the page cache (warm).  For each start it prints:

* the time from the process's start to the first answer to a lookup of
  a session in the file;
* its resident memory then, anonymous (the daemon's own) and file-backed
  (pages of the mapped file, which the kernel may take back), from
  /proc/PID/status;
* the same after 20000 lookups of random sessions in the file, and the
  p99 of those lookups;
* after the warm start, the highest resident memory, sampled every
  second, while two client processes look up random sessions in the file
  without pause for --steady seconds (60 by default), and how many
  lookups they made.

Then the file is written again with every session past its timeout, and
the daemon started on it once more: while its cleanup removes them all,
one client sends updates without pause; printed are the time cleanup
took, and the p99 and the slowest of those updates.

Each file is synced to disk once written: the kernel's writeback of a
file just written, gigabytes of it, would otherwise run during the
measurement, 30 s later (vm.dirty_expire_centisecs), and an update that
writes a page being written back waits for it (10-20 ms measured, and
1.6 s during a sync(2)).

Every daemon is stopped by its pid, the files removed at the end.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import time
from multiprocessing.queues import Queue
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS.parent / "tests"))

from helpers.harness import Daemon, start_ours  # noqa: E402

from tlsmgr.admin.client import TlsmgrClient  # noqa: E402
from tlsmgr.stores import Entry, pack_entry  # noqa: E402
from tlsmgr.stores.lmdb import LmdbStore  # noqa: E402

LOOKUPS = 20000


def fill(path: Path, entries: int, size: int, age: int = 0) -> None:
    store = LmdbStore(str(path))
    now = int(time.time()) - age
    session = os.urandom(size)
    for i in range(entries):
        store.put(b"id%09d" % i, pack_entry(Entry(now, session)))
    store.close()
    os.sync()


def drop_page_cache() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as control:
            control.write("3\n")
        return True
    except OSError:
        return False


def resident(pid: int) -> tuple[int, int]:
    """(anonymous, file-backed) resident memory in MB."""
    fields = {}
    with open("/proc/%d/status" % pid) as status:
        for line in status:
            name, _, value = line.partition(":")
            fields[name] = value
    return (int(fields["RssAnon"].split()[0]) // 1024,
            int(fields["RssFile"].split()[0]) // 1024)


def look_up(socket: str, entries: int, seconds: float, made: Queue[int]) -> None:
    """Lookups of random sessions in the file, for that many seconds."""
    count = 0
    with TlsmgrClient(socket) as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for _ in range(100):
                assert client.lookup("smtpd", "id%09d" % random.randrange(entries))[0] == 0
            count += 100
    made.put(count)


def steady(daemon: Daemon, entries: int, seconds: float) -> tuple[int, int, int]:
    """(highest anonymous, highest file-backed resident MB, lookups made)
    under a steady lookup load from two processes."""
    made: Queue[int] = multiprocessing.Queue()
    clients = [multiprocessing.Process(target=look_up, args=(str(daemon.socket_path), entries,
                                                             seconds, made))
               for _ in range(2)]
    for client in clients:
        client.start()
    highest = (0, 0)
    while any(client.is_alive() for client in clients):
        anon, mapped = resident(daemon.process.pid)
        highest = (max(highest[0], anon), max(highest[1], mapped))
        time.sleep(1)
    lookups = sum(made.get(timeout=60) for _ in clients)
    for client in clients:
        client.join()
    return highest[0], highest[1], lookups


def first_answer(workdir: Path, data: Path, entries: int,
                 steady_seconds: float = 0) -> tuple[float, object, object, object]:
    began = time.monotonic()
    daemon = start_ours(workdir, wait=False, data_directory=data, tlsmgr_preserve_sessions="yes",
                        smtpd_tls_session_cache_database="lmdb:%s/smtpd_scache" % data)
    try:
        deadline = began + 300
        while True:
            try:
                with TlsmgrClient(str(daemon.socket_path), timeout=300) as client:
                    status, _ = client.lookup("smtpd", "id%09d" % (entries // 2))
                    took = time.monotonic() - began
                    assert status == 0, "the session is not found"
                    break
            except Exception:
                if time.monotonic() > deadline or daemon.process.poll() is not None:
                    raise
                time.sleep(0.005)
        after_start = resident(daemon.process.pid)
        times = []
        with TlsmgrClient(str(daemon.socket_path)) as client:
            for _ in range(LOOKUPS):
                wanted = "id%09d" % random.randrange(entries)
                sent = time.perf_counter()
                assert client.lookup("smtpd", wanted)[0] == 0
                times.append(time.perf_counter() - sent)
        times.sort()
        under_load = steady(daemon, entries, steady_seconds) if steady_seconds else None
        return (took, after_start, (resident(daemon.process.pid), times[int(0.99 * len(times))]),
                under_load)
    finally:
        daemon.stop()


def updates_during_cleanup(workdir: Path, data: Path, entries: int) -> tuple[float, float, float]:
    """(seconds cleanup took, update p99, slowest update), with every entry expired."""
    daemon = start_ours(workdir, data_directory=data, tlsmgr_preserve_sessions="yes",
                        smtpd_tls_session_cache_database="lmdb:%s/smtpd_scache" % data)
    began = time.monotonic()
    times = []
    try:
        with TlsmgrClient(str(daemon.socket_path)) as client:
            while time.monotonic() - began < 600:
                for _ in range(200):
                    sent = time.perf_counter()
                    assert client.update("smtpd", "new%d" % len(times), b"s" * 300) == 0
                    times.append(time.perf_counter() - sent)
                stats = client.stats()[1]
                assert stats is not None
                if stats["caches"]["smtpd"]["entries"] <= len(times):
                    break
        took = time.monotonic() - began
    finally:
        daemon.stop()
    times.sort()
    return took, times[int(0.99 * len(times))], times[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=lambda s: [int(n) for n in s.split(",")],
                        default=[100000, 1000000, 5000000])
    parser.add_argument("--size", type=int, default=300)
    parser.add_argument("--steady", type=float, default=60, metavar="SECONDS")
    args = parser.parse_args()
    print("entries  start   first answer s  RSS anon/file MB  after %d lookups: RSS anon/file "
          "MB, lookup p99 us" % LOOKUPS)
    scratch = Path(tempfile.mkdtemp(prefix="tlsmgr-scale-"))
    try:
        for entries in args.entries:
            data = scratch / str(entries)
            data.mkdir()
            fill(data / "smtpd_scache", entries, args.size)
            for start in ("cold", "warm"):
                if start == "cold" and not drop_page_cache():
                    print("%8d  cold   (not measured: dropping the page cache needs root)"
                          % entries)
                    continue
                took, (anon, mapped), ((anon2, mapped2), p99), under_load = first_answer(
                    scratch / ("run-%d-%s" % (entries, start)), data, entries,
                    args.steady if start == "warm" else 0)
                print("%8d  %-5s  %14.3f  %8d/%-7d  %8d/%-7d %8.0f" % (
                    entries, start, took, anon, mapped, anon2, mapped2, p99 * 1e6), flush=True)
                if under_load is not None:
                    print("%8d  steady lookups for %.0f s: %d made; highest RSS anon/file MB "
                          "%d/%d" % (entries, args.steady, under_load[2], under_load[0],
                                     under_load[1]), flush=True)
            shutil.rmtree(data)
            data.mkdir()
            fill(data / "smtpd_scache", entries, args.size, age=7200)     # all expired
            took, p99, slowest = updates_during_cleanup(scratch / ("cleanup-%d" % entries),
                                                        data, entries)
            print("%8d  cleanup of every entry: %.1f s; updates meanwhile: p99 %.0f us, "
                  "slowest %.1f ms" % (entries, took, p99 * 1e6, slowest * 1e3), flush=True)
            shutil.rmtree(data)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
