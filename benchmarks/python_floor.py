"""The floor of a Python tlsmgr: a uvloop server that does no work.

    .venv/bin/python benchmarks/python_floor.py [--workload lookup-hit]
                                                [--conns 8] [--size 300] [--runs 3]

Measures, alternately and ``--runs`` times, this file's server and
benchmarks/responder.c under compare.py's load generator, both started as
master(8) starts a daemon.  The server is responder.c in Python: one
asyncio Protocol on uvloop whose data_received() splits off the request
name and writes a reply made once at start.  What it reaches is what
Python and uvloop cost by themselves, before any work of ours
(BENCHMARKS.md, "What stands in the way").

Started with ``--serve`` (as compare.py starts the limit responder) it is
that server, on the listening socket at fd 6.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import sys
import tempfile
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
HANDSHAKE = b"protocol\0tlsmgr_protocol\0\0"


def reply(status: bytes, name: bytes = b"", size: int = 0) -> bytes:
    """responder.c's make_reply(): the length of the data is right, not the data."""
    if not name:
        return b"status\0" + status + b"\0\0"
    text = 4 * ((size + 2) // 3)
    padding = (3 - size % 3) % 3
    return (b"status\0" + status + b"\0" + name + b"\0"
            + b"A" * (text - padding) + b"=" * padding + b"\0\0")


def serve(lookup: str, size: int) -> None:
    import uvloop  # noqa: PLC0415

    replies = {b"lookup": reply(b"4294967295", b"session") if lookup == "miss"
               else reply(b"0", b"session", size),
               b"seed": reply(b"0", b"seed", 32), b"tktkey": reply(b"0", b"keybuf", 88)}
    other = reply(b"0")

    class Floor(asyncio.Protocol):
        def connection_made(self, transport):
            self.write = transport.write
            self.write(HANDSHAKE)

        def data_received(self, data):
            # One request per read: the load generator never pipelines.
            self.write(replies.get(data.split(b"\0", 2)[1], other))

    async def main():
        await asyncio.get_running_loop().create_server(Floor, sock=socket.socket(fileno=6))
        await asyncio.Event().wait()

    uvloop.run(main())


def measure(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(BENCHMARKS))
    sys.path.insert(0, str(BENCHMARKS.parent / "tests"))
    import compare  # noqa: PLC0415
    from helpers import harness  # noqa: PLC0415

    scratch = Path(tempfile.mkdtemp(prefix="tlsmgr-floor-"))
    try:
        settings = compare.Settings(seconds=3, warmup=0.5, keys=1000, cycle_updates=False,
                                    ours_table=compare.OURS_TABLE, pin="split",
                                    ours_env={}, ours_params={})
        settings.cell = compare.Cell(args.workload, args.conns, args.size)
        loadgen = harness.build_loadgen(scratch)
        floor = scratch / "floor"
        floor.write_text("#!/bin/sh\nexec %s %s --serve \"$@\"\n" % (sys.executable, __file__))
        floor.chmod(0o700)
        servers = {"python": floor, "c": compare.build_responder(scratch)}
        print("%s, %d connections, %d B: requests a second" % (
            args.workload, args.conns, args.size))
        for _ in range(args.runs):
            for name, binary in servers.items():
                settings.responder = binary
                result = compare.measure("limit", loadgen, settings.cell, settings, scratch)
                print("%-7s %s" % (name, result.get("throughput", result.get("failed"))),
                      flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--lookup", default="hit", help=argparse.SUPPRESS)
    parser.add_argument("--workload", default="lookup-hit", choices=["lookup-hit", "lookup-miss",
                                                                     "seed", "tktkey"])
    parser.add_argument("--conns", type=int, default=8)
    parser.add_argument("--size", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    args, _ = parser.parse_known_args()        # compare.py adds master's -l -n -t
    if args.serve:
        serve(args.lookup, args.size)
    else:
        measure(args)


if __name__ == "__main__":
    main()
