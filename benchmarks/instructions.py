"""Instructions per request, through the connection code, in process.

    .venv/bin/python benchmarks/instructions.py [--requests 5000] [--src DIR]
                                                [--kinds hit miss update tktkey seed]
                                                [--paths pure compiled]
                                                [--store memory|lmdb] [--size 300]

Wall time on this shared two-core machine moves by 10 % between two runs
of the same code; instruction counts do not.  Each request kind (a lookup
that hits, one that misses, an update, a tktkey, a seed) is sent one request per
data_received() to a connection.Connection on a transport that only keeps
what is written, with a memory store (or ``--store lmdb``, the daemon's
file store), as a client that never pipelines
does, with sessions of --size bytes, under the daemon's request size
limit, with the cyclic garbage collector off (as good as the daemon's
frozen, seldom-run one), and the daemon's PRNG (seed replies, and the
time mixed in after each turn of the event loop: here, each request).
With no event loop to commit them every millisecond, the LMDB store's
updates are committed 64 at a time, as many as it holds (stores/lmdb.py).
valgrind --tool=callgrind counts the instructions of a run of N requests
and of one of 2N, with one hash seed; the difference divided by N is what
one more request costs, start-up excluded.

``--paths`` says which of the Connection's paths to measure: the pure one,
and the compiled one (fastpath.py, where it is built).  ``--src`` measures
another checkout's src/ (for before and after); the connection setup used
here (tests/helpers/connection_fakes.py, which needs fastpath.py) must
work with it.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
KINDS = ("hit", "miss", "update", "tktkey", "seed")
PATHS = ("pure", "compiled")


def requests(kind: str, size: int) -> list[tuple[str, str | bytes]]:
    return {
        "hit": [("request", "lookup"), ("cache_type", "smtpd"), ("cache_id", "id1")],
        "miss": [("request", "lookup"), ("cache_type", "smtpd"), ("cache_id", "nope")],
        "update": [("request", "update"), ("cache_type", "smtpd"), ("cache_id", "id2"),
                   ("session", b"x" * size)],
        "tktkey": [("request", "tktkey"), ("keyname", b"")],
        "seed": [("request", "seed"), ("size", 32)],
    }[kind]


def run_loop(path: str, store: str, kind: str, count: int, size: int) -> None:
    """The measured program: count requests of a kind through a Connection."""
    sys.path.insert(0, str(BENCHMARKS.parent / "tests"))
    from helpers.connection_fakes import DAEMON_SIZE_LIMIT, connect  # noqa: PLC0415

    from tlsmgr.service.prng import Prng  # noqa: PLC0415
    from tlsmgr.stores.lmdb import LmdbStore  # noqa: PLC0415
    from tlsmgr.wire.attr import encode  # noqa: PLC0415

    shared, connection, transport = connect(high_water=1 << 30, path=path,
                                            size_limit=DAEMON_SIZE_LIMIT)
    if store == "lmdb":
        shared.dispatch.client.caches[b"smtpd"].store = LmdbStore(
            os.path.join(tempfile.mkdtemp(prefix="tlsmgr-instructions-"), "smtpd_scache"))
    # The daemon's PRNG, for seed replies and the time mixed in after each
    # turn of the event loop (here, each request), rather than the fakes'
    # fixed bytes.
    prng = Prng("dev:/dev/urandom", 32, "", 3600, 3600)
    shared.dispatch.client.random_bytes = prng.random_bytes
    shared.served = shared.active = prng.mix_time
    wire = encode(requests(kind, size))
    if kind == "hit":
        connection.data_received(encode(requests("update", size)[:2] + [
            ("cache_id", "id1"), ("session", b"x" * size)]))
    # As in the daemon, requests make no garbage cycles (server.py): the
    # collector would only add noise, so it is off for the measured part.
    gc.disable()
    for _ in range(count):
        connection.data_received(wire)
        transport.writes.clear()


def instructions(src: Path, path: str, store: str, kind: str, count: int, size: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        env = dict(os.environ, PYTHONPATH=str(src), PYTHONHASHSEED="0")
        subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=%s" % out,
                        sys.executable, __file__, "--loop", path, store, kind, str(count),
                        str(size)],
                       env=env, check=True, capture_output=True)
        match = re.search(r"^summary: (\d+)", out.read_text(), re.MULTILINE)
        assert match, "no summary line in callgrind's output"
        return int(match[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--src", type=Path, default=BENCHMARKS.parent / "src")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=KINDS)
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=PATHS)
    parser.add_argument("--store", choices=("memory", "lmdb"), default="memory")
    parser.add_argument("--size", type=int, default=300, help="session bytes (default 300)")
    parser.add_argument("--loop", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loop:
        run_loop(*args.loop[:3], int(args.loop[3]), int(args.loop[4]))
        return
    print("instructions per request (callgrind, %d vs %d requests), %s store, %d-byte "
          "sessions, src=%s" % (args.requests, 2 * args.requests, args.store, args.size, args.src))
    print("%-7s %s" % ("", "".join("%10s" % path for path in args.paths)))
    for kind in args.kinds:
        counts = []
        for path in args.paths:
            once = instructions(args.src, path, args.store, kind, args.requests, args.size)
            twice = instructions(args.src, path, args.store, kind, 2 * args.requests,
                                 args.size)
            counts.append((twice - once) / args.requests)
        print("%-7s %s" % (kind, "".join("%10.0f" % count for count in counts)))


if __name__ == "__main__":
    main()
