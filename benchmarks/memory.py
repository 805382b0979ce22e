"""How much memory the session stores take, per entry.

    .venv/bin/python benchmarks/memory.py [--entries 1000000]

Each store runs in a fresh child process that fills it with sessions of
300 random bytes under 64-character ids (the shape of Postfix's smtpd
cache ids), and reports how much its resident memory grew, split as Linux
splits it: anonymous memory (the heap) and file pages (LMDB's map, clean
page cache the kernel may drop at will).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

SESSION_BYTES = 300
ID_BYTES = 64


def resident() -> dict[str, int]:
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "RssAnon", "RssFile"):
                fields[name] = int(value.split()[0]) * 1024
    return fields


def fill(kind: str, entries: int, checkpoints: list[int]) -> list[dict]:
    from tlsmgr.stores import Entry, pack_entry
    if kind == "memory":
        from tlsmgr.stores.memory import MemoryStore
        store = MemoryStore()
    else:
        from tlsmgr.stores.lmdb import LmdbStore
        store = LmdbStore(os.path.join(tempfile.mkdtemp(prefix="tlsmgr-bench-"), "scache"))
    session = os.urandom(SESSION_BYTES)
    before = resident()
    report = []
    for count in range(1, entries + 1):
        store.put(b"%064x" % count, pack_entry(Entry(1_700_000_000 + count, session)))
        if count in checkpoints:
            now = resident()
            report.append({"entries": count, **{k: now[k] - before[k] for k in now}})
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--child", choices=["memory", "lmdb"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    checkpoints = [args.entries // 4, args.entries // 2, args.entries]
    if args.child:
        print(json.dumps(fill(args.child, args.entries, checkpoints)))
        return
    payload = SESSION_BYTES * args.entries
    print("%d sessions of %d bytes under %d-byte ids; payload %.0f MB"
          % (args.entries, SESSION_BYTES, ID_BYTES, payload / 1e6))
    print("%-7s %9s %12s %12s %12s %14s" % ("store", "entries", "RSS MB", "anon MB",
                                            "file MB", "RSS/payload"))
    for kind in ("memory", "lmdb"):
        out = subprocess.run([sys.executable, __file__, "--child", kind,
                              "--entries", str(args.entries)],
                             capture_output=True, text=True, check=True).stdout
        for row in json.loads(out):
            print("%-7s %9d %12.1f %12.1f %12.1f %14.2f" % (
                kind, row["entries"], row["VmRSS"] / 1e6, row["RssAnon"] / 1e6,
                row["RssFile"] / 1e6, row["VmRSS"] / (SESSION_BYTES * row["entries"])))


if __name__ == "__main__":
    main()
