"""compare.py with our smtpd cache on each kind of Redis a fleet runs.

    .venv/bin/python benchmarks/fleet_topologies.py [--topologies unix,tcp,cluster,sentinel]
        [compare.py's options, e.g. --workloads lookup-hit,mix --conns 8,64 --seconds 3]

For each topology a private Redis is started on loopback (the test
suite's helpers, tests/helpers/redis_servers.py): one redis-server on a
UNIX socket, one on TCP, a Cluster of 3 masters with a replica each, or a
master, a replica and 3 sentinels.  compare.py then measures stock (its
btree file) and ours (``--ours-table redis:URL``) side by side, and prints
what redis-benchmark gets from the same Redis.  Every server is stopped
at the end, whatever happened.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS.parent / "tests"))
sys.path.insert(0, str(BENCHMARKS))

import compare  # noqa: E402
from helpers.harness import Redis  # noqa: E402
from helpers.redis_servers import Cluster, SentinelSet, Servers  # noqa: E402

TOPOLOGIES = ("unix", "tcp", "cluster", "sentinel")


@contextmanager
def started(name: str, directory: Path) -> Iterator[str]:
    """The URL of a private Redis of that topology, stopped at the end."""
    if name == "unix":
        server = Redis(directory)
        try:
            yield server.url
        finally:
            server.stop()
        return
    with {"tcp": Servers, "cluster": Cluster, "sentinel": SentinelSet}[name](directory) as nodes:
        yield "redis://127.0.0.1:%d/0" % nodes.node().port if name == "tcp" else nodes.url()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topologies", type=lambda s: s.split(","),
                        default=list(TOPOLOGIES), help="comma-separated subset of: "
                        + ",".join(TOPOLOGIES))
    args, rest = parser.parse_known_args()
    for name in args.topologies:
        if name not in TOPOLOGIES:
            parser.error("unknown topology %r" % name)
    for name in args.topologies:
        with tempfile.TemporaryDirectory(prefix="tlsmgr-topology-") as scratch, \
                started(name, Path(scratch)) as url:
            print("\n=== %s: %s\n" % (name, url), flush=True)
            status = compare.main([*rest, "--ours-table", "redis:" + url])
            if status:
                return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
