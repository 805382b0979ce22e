"""A Redis cache of millions: memory per entry, list and flush.

    .venv/bin/python benchmarks/redis_scale.py [--entries 1000000] [--size 300]

A private redis-server (no persistence) is filled with an smtpd cache of
that many sessions, written by the store itself (RedisStore.save(), the
script the daemon runs for every update), once as they are and once
sealed with a fleet secret.  For each it prints:

* Redis's memory per entry: used_memory after the fill less before,
  divided by the entries; and what of it is the session's own key
  (MEMORY USAGE of one), the rest being the age index and the sizes;
* with the daemon started on that cache, the time the list request
  (``tlsmgr-ctl list --limit N``) takes, for N of 10, 1000 and 10000;
* the time the flush request (``tlsmgr-ctl flush``) takes to remove every
  entry, and the p99
  and slowest of the lookups another client sends to the daemon
  meanwhile (flush removes 1024 entries a script call, so that Redis
  serves the fleet in between).

Every process is stopped by its pid, the files removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS.parent / "tests"))

from helpers.harness import start_ours  # noqa: E402
from helpers.redis_servers import Servers  # noqa: E402

from tlsmgr.admin.client import TlsmgrClient  # noqa: E402
from tlsmgr.stores import Entry, Limits, pack_entry  # noqa: E402
from tlsmgr.stores.redis import RedisSettings, RedisStore  # noqa: E402
from tlsmgr.stores.seal import Seal, new_secret_line, read_secret_file  # noqa: E402
from tlsmgr.util.pending import gather  # noqa: E402

PREFIX = "scale:"
BATCH = 2000                # saves issued in one turn of the loop: one pipeline


def fill(url: str, seal: Seal | None, entries: int, size: int) -> None:
    async def saves() -> None:
        settings = RedisSettings(key_prefix=PREFIX, seal=seal, timeout_ms=10000)
        store = RedisStore(url, "smtpd", settings, 3600)
        packed = pack_entry(Entry(int(time.time()), os.urandom(size)))
        for first in range(0, entries, BATCH):
            await gather([store.save(b"%064x" % i, packed, Limits(), 0)
                          for i in range(first, min(first + BATCH, entries))])
        await store.close()
    asyncio.run(saves())


def lookups_while(socket: Path, busy: Event, times: Queue[list[float]]) -> None:
    """Lookup times of one client, for as long as busy is set."""
    found = []
    with TlsmgrClient(str(socket)) as client:
        while busy.is_set():
            sent = time.perf_counter()
            client.lookup("smtpd", "%064x" % 7)
            found.append(time.perf_counter() - sent)
    times.put(sorted(found))


def timed(socket: Path, request: Callable[[TlsmgrClient], tuple[int, object]]
          ) -> tuple[float, list[float]]:
    """Seconds a control request takes, as tlsmgr-ctl sends it (less the
    0.1 s or so that tlsmgr-ctl takes to start), and the times of the
    lookups another process sends meanwhile."""
    busy, times = multiprocessing.Event(), multiprocessing.Queue()
    busy.set()
    looker = multiprocessing.Process(target=lookups_while, args=(socket, busy, times))
    looker.start()
    try:
        with TlsmgrClient(str(socket), timeout=600) as client:
            time.sleep(0.2)                                   # the looker is busy
            began = time.monotonic()
            status = request(client)[0]
            took = time.monotonic() - began
    finally:
        busy.clear()
        found = times.get(timeout=60)
        looker.join()
    assert status == 0, "the request failed"
    return took, found


def meanwhile(times: list[float]) -> str:
    return "lookups meanwhile: %d, p99 %.0f us, slowest %.1f ms" % (
        len(times), times[int(0.99 * len(times))] * 1e6, times[-1] * 1e3)


def run(scratch: Path, sealed: bool, entries: int, size: int) -> None:
    with Servers(scratch / "redis") as servers:
        node = servers.node()
        url = "redis://127.0.0.1:%d/0" % node.port
        redis = node.client(timeout=600)
        params = {}
        seal = None
        if sealed:
            secret = scratch / "fleet.secret"
            secret.write_text(new_secret_line() + "\n")
            secret.chmod(0o600)
            seal = read_secret_file(str(secret), {os.geteuid()})
            params["tlsmgr_fleet_secret_file"] = secret
        before = redis.info("memory")["used_memory"]
        began = time.monotonic()
        fill(url, seal, entries, size)
        filled = time.monotonic() - began
        per_entry = (redis.info("memory")["used_memory"] - before) / entries
        one_key = redis.memory_usage(("{%ssmtpd}:s:%064x" % (PREFIX, 1)).encode())
        what = "sealed" if sealed else "as is "
        print("%s  filled %d in %.0f s; Redis memory a entry %.0f bytes, of which the "
              "session's key %d" % (what, entries, filled, per_entry, one_key), flush=True)
        daemon = start_ours(scratch / ("daemon-%s" % sealed), data_directory=scratch,
                            smtpd_tls_session_cache_database="redis:" + url,
                            tlsmgr_redis_key_prefix=PREFIX,
                            tlsmgr_smtpd_cache_entry_limit=0, tlsmgr_smtpd_cache_size_limit=0,
                            **params)
        try:
            for limit in (10, 1000, 10000):
                took, times = timed(daemon.socket_path,
                                    lambda client: client.list("smtpd", limit))  # noqa: B023
                print("%s  list --limit %-5d %.3f s; %s" % (what, limit, took, meanwhile(times)),
                      flush=True)
            took, times = timed(daemon.socket_path, lambda client: client.flush("smtpd"))
            left = redis.zcard(("{%ssmtpd}:age" % PREFIX).encode())
            print("%s  flush %.1f s, %d entries left; %s" % (what, took, left, meanwhile(times)),
                  flush=True)
        finally:
            daemon.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1000000)
    parser.add_argument("--size", type=int, default=300)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="tlsmgr-redis-scale-"))
    try:
        for sealed in (False, True):
            run(scratch, sealed, args.entries, args.size)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
