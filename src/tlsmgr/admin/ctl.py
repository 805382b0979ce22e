"""The ``tlsmgr-ctl`` command: talk to a running tlsmgr.

The commands are those of Postfix's tls_mgr test program, and print the
same ``status=N ...`` lines, with binary values in hex.  The exit status
is 0 when the server answered status 0, 1 for status -1 (not found),
2 for status -2 (refused as a protocol error) and for any failure to talk
to the server.

``stats``, ``flush``, ``rotate-keys`` and ``list`` are the administrator's
control requests (control.py, docs/OPERATIONS.md): the daemon answers
them for root, mail_owner and its own user only.

``install`` and ``uninstall`` do not talk to a server: they switch
Postfix's tlsmgr service to this daemon and back (see install.py); nor
does ``fleet-secret``, which prints a new line for the fleet's secret file
(tlsmgr_fleet_secret_file, docs/FLEET.md), nor ``check``, which is
``tlsmgr --check`` (check.py): what the daemon would meet in main.cf, with
exit status 1 when there is a problem.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import time
from typing import Any

from .. import config
from ..observe.histogram import Buckets
from ..observe.snapshot import Snapshot, TicketKeyStats
from ..util import log
from . import install, watch
from .client import ClientError, TlsmgrClient


def readable(data: bytes) -> str:
    """Text when it is printable text, else hex with a hex: prefix."""
    try:
        text = data.decode("ascii")
        if text.isprintable():
            return text
    except UnicodeDecodeError:
        pass
    return "hex:" + data.hex()


def parse_hex_or_text(value: str) -> bytes:
    if value.startswith("hex:"):
        try:
            return bytes.fromhex(value[4:])
        except ValueError:
            raise argparse.ArgumentTypeError("bad hex after hex: in %r" % value) from None
    return value.encode()


def keyname(value: str) -> bytes:
    try:
        name = bytes.fromhex(value)
    except ValueError:
        raise argparse.ArgumentTypeError("key name must be hex (32 digits): %r" % value) from None
    return name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tlsmgr-ctl",
        description="Send requests to a running tlsmgr and print the replies.",
        epilog="Exit status: 0 for status 0, 1 for status -1, 2 for status -2 or "
               "when the server cannot be reached.")
    parser.add_argument("--socket", metavar="PATH",
                        help="the server's socket (default: $queue_directory/private/tlsmgr "
                             "from main.cf in $MAIL_CONFIG)")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                        help="how long to wait for the server (default 10)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    seed = commands.add_parser("seed", help="get N random bytes (1..255)")
    seed.add_argument("size", type=int)
    policy = commands.add_parser("policy", help="is a cache on, and its timeout")
    policy.add_argument("cache_type", metavar="TYPE")
    lookup = commands.add_parser("lookup", help="fetch a session")
    lookup.add_argument("cache_type", metavar="TYPE")
    lookup.add_argument("cache_id", metavar="ID")
    update = commands.add_parser("update", help="save a session (DATA as text, or hex:...)")
    update.add_argument("cache_type", metavar="TYPE")
    update.add_argument("cache_id", metavar="ID")
    update.add_argument("data", metavar="DATA", type=parse_hex_or_text)
    delete = commands.add_parser("delete", help="remove a session")
    delete.add_argument("cache_type", metavar="TYPE")
    delete.add_argument("cache_id", metavar="ID")
    tktkey = commands.add_parser("tktkey", help="the current ticket key, or the key NAME (hex)")
    tktkey.add_argument("name", metavar="NAME", nargs="?", type=keyname, default=b"")
    stats = commands.add_parser("stats", help="what the daemon has done (root or mail_owner)")
    stats.add_argument("--json", action="store_true", help="print the JSON the daemon sends")
    stats.add_argument("--watch", type=float, nargs="?", const=1.0, metavar="SECONDS",
                       help="the counters as rates, refreshed every SECONDS (default 1) "
                       "until Ctrl-C, SIGTERM or SIGHUP; plain lines when the output is not "
                       "a terminal")
    stats.add_argument("--count", type=int, metavar="N",
                       help="with --watch: stop after N refreshes")
    flush = commands.add_parser("flush", help="remove every entry of a cache (root or mail_owner)")
    flush.add_argument("cache_type", metavar="TYPE")
    commands.add_parser("rotate-keys", help="a new session ticket key now, and its name; "
                                            "the last one still decrypts (root or mail_owner)")
    listing = commands.add_parser("list", help="ids and ages in a cache, oldest first "
                                               "(root or mail_owner)")
    listing.add_argument("cache_type", metavar="TYPE")
    listing.add_argument("--limit", type=int, default=1000, metavar="N",
                         help="at most N entries (default 1000), asked 250 a request")
    listing.add_argument("--json", action="store_true", help="print the JSON the daemon sends")
    for name in ("install", "uninstall"):
        install.add_arguments(commands.add_parser(name, help=install.HELP[name]), name)
    commands.add_parser("fleet-secret", help="print a new secret line for "
                        "tlsmgr_fleet_secret_file (32 random bytes, base64)")
    checking = commands.add_parser(
        "check", help="before \"postfix reload\": every problem the daemon would meet in "
                      "main.cf, changing nothing (tlsmgr --check); exit 1 on any")
    checking.add_argument("-o", dest="overrides", metavar="name=value", action="append",
                          default=[], help="override a main.cf parameter (repeatable)")
    return parser


def run(client: TlsmgrClient, args: argparse.Namespace) -> tuple[int, str]:
    """Send the request; return its status and the line to print."""
    if args.command == "seed":
        status, seed = client.seed(args.size)
        return status, "status=%d seed=%s" % (status, seed.hex())
    if args.command == "policy":
        status, cachable, timeout = client.policy(args.cache_type)
        return status, "status=%d cachable=%d timeout=%d" % (status, cachable, timeout)
    if args.command == "lookup":
        status, session = client.lookup(args.cache_type, args.cache_id)
        return status, "status=%d session=%s" % (status, readable(session))
    if args.command == "update":
        status = client.update(args.cache_type, args.cache_id, args.data)
        return status, "status=%d" % status
    if args.command == "delete":
        status = client.delete(args.cache_type, args.cache_id)
        return status, "status=%d" % status
    if args.command in CONTROL_COMMANDS:
        return CONTROL_COMMANDS[args.command](client, args)
    status, key = client.tktkey(args.name)
    if key is None:
        return status, "status=%d" % status
    expires = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(key.expires))
    return status, ("status=%d name=%s cipher_key=%s hmac_key=%s expires=%d (%s)"
                    % (status, key.name.hex(), key.cipher_key.hex(), key.hmac_key.hex(),
                       key.expires, expires))


def show_stats(client: TlsmgrClient, args: argparse.Namespace) -> tuple[int, str]:
    if args.watch is not None:
        if args.watch <= 0:
            raise ClientError("--watch wants a number of seconds above 0, not %g" % args.watch)

        def fetch() -> Snapshot:
            status, found = client.stats()
            if found is None:
                raise ClientError("the stats request was answered with status %d" % status)
            return read_snapshot(found)
        return watch.watch(fetch, args.watch, args.count), ""
    status, stats = client.stats()
    if stats is None:
        return status, "status=%d" % status
    if args.json:
        return status, json.dumps(stats, indent=2)
    return status, stats_text(read_snapshot(stats))


def read_snapshot(found: dict[str, Any]) -> Snapshot:
    """The stats the daemon sent; ClientError if they are not what this
    tlsmgr-ctl knows (a daemon of another version)."""
    try:
        return Snapshot.from_json(found)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ClientError("the stats the daemon sent are not as this tlsmgr-ctl reads them "
                          "(%s: %s): is it another version?" % (type(err).__name__, err)) from None


def stats_text(stats: Snapshot) -> str:
    """The summary for people of a stats snapshot (control.snapshot())."""
    lines = ["uptime: %d seconds" % stats.uptime, "fast path: %s" % stats.fast_path]
    for label, cache in stats.caches.items():
        lines.append("%s cache: %d entries, %d bytes; %d hits, %d misses (hit ratio %.2f); "
                     "%d updates, %d deletes; %d expired, %d evicted%s"
                     % (label, cache.entries, cache.bytes, cache.hits, cache.misses,
                        cache.hit_ratio, cache.updates, cache.deletes, cache.expired,
                        cache.evicted,
                        "; %d did not open" % cache.unopened if cache.unopened else ""))
    keys = stats.ticket_keys
    age = "" if keys.current_age is None else ", the current one %d seconds old" \
        % keys.current_age
    lines.append("ticket keys: %d%s; %d made or taken on%s%s" % (
        keys.count, age, keys.rotations, whose_keys(keys),
        "; %d from Redis did not open" % keys.unopened if keys.unopened else ""))
    if keys.lookups:
        lines.append("tktkey: %s" % ", ".join("%s %d" % item for item in keys.lookups.items()))
    users = [(label, cache.redis) for label, cache in stats.caches.items()]
    for label, health in [*users, ("tickets", keys.redis)]:
        if health is not None:
            lines.append("%s on redis: %s; %d failures, %d recoveries%s" % (
                label, watch.redis_state(health), health.failures, health.recoveries,
                "; last error: %s" % health.last_error if health.last_error else ""))
    lines.append("prng: %d reseeds, %d exchange file updates"
                 % (stats.prng.reseeds, stats.prng.exchange_updates))
    lines.append("connections: %d open, %d in all"
                 % (stats.connections.now, stats.connections.total))
    for title, found in (("requests", stats.requests), ("errors", stats.errors)):
        counts = ", ".join("%s %d" % item for item in found.items())
        lines.append("%s: %s" % (title, counts or "none"))
    if stats.latency:
        lines.append("latency, p50/p99 (upper bound of its bucket): " + ", ".join(
            "%s %s/%s" % (name, quantile(histogram, 0.5), quantile(histogram, 0.99))
            for name, histogram in stats.latency.items()))
    return "\n".join(lines)


def whose_keys(keys: TicketKeyStats) -> str:
    """Whose ticket keys issue tickets, when they may be the fleet's."""
    if not keys.shared:
        return ""
    if keys.redis is not None and keys.redis.paused:
        # As FleetTicketKeys does while Redis is away: the hosts go on
        # agreeing on the last fleet key while they can.  Why Redis is
        # paused is on the "tickets on redis" line.
        return (" (the fleet's, but Redis is paused: the last fleet key issues tickets for "
                "as long as it decrypts them, then this host's own, which decrypts only here)")
    return " (shared by the fleet)"


def quantile(histogram: Buckets, q: float) -> str:
    """The upper bound of the bucket that holds the q-quantile, readable."""
    wanted = q * histogram.count
    for bound, cumulative in histogram.buckets:
        if cumulative >= wanted:
            if isinstance(bound, str):
                return ">1s"
            return "%gms" % (bound * 1000) if bound >= 0.001 else "%gus" % (bound * 1e6)
    return "-"


def flush_cache(client: TlsmgrClient, args: argparse.Namespace) -> tuple[int, str]:
    status, removed = client.flush(args.cache_type)
    return status, "status=%d removed=%d" % (status, removed)


def rotate_keys(client: TlsmgrClient, args: argparse.Namespace) -> tuple[int, str]:
    status, name = client.rotate_keys()
    if status != 0:
        return status, "status=%d" % status
    return status, "status=%d keyname=%s" % (status, name.hex())


def list_cache(client: TlsmgrClient, args: argparse.Namespace) -> tuple[int, str]:
    status, entries = client.list(args.cache_type, args.limit)
    if args.json:
        return status, json.dumps(entries, indent=2)
    if status != 0:
        return status, "status=%d" % status
    return status, "\n".join("%d %s" % (entry["age"], entry["id"]) for entry in entries)


CONTROL_COMMANDS = {"stats": show_stats, "flush": flush_cache, "rotate-keys": rotate_keys,
                    "list": list_cache}


# Who may reach the socket when no main.cf was read to say so.
_DEFAULT_MAIL_OWNER = next(p.default for p in config.PARAMETERS if p.name == "mail_owner")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    log.setup_stderr("tlsmgr-ctl")
    if args.command in ("install", "uninstall"):
        return install.command(args)
    if args.command == "fleet-secret":
        from ..stores.seal import new_secret_line
        print(new_secret_line())
        return 0
    if args.command == "check":
        from . import check
        return check.run(args.overrides)
    cfg: config.Config | None = None       # main.cf, when read to find the socket
    try:
        if args.socket:
            path = args.socket
        else:
            cfg = config.load()
            path = os.path.join(cfg.queue_directory, "private", "tlsmgr")
        with TlsmgrClient(path, args.timeout) as client:
            status, line = run(client, args)
    except log.Fatal:
        return 2
    except ClientError as err:
        if err.errno == errno.EACCES:
            # The socket (under master(8), private/ too) is mail_owner's:
            # say who may, not only that this user may not.
            log.error("%s: run tlsmgr-ctl as root or as the mail_owner (%s)", err,
                      _DEFAULT_MAIL_OWNER if cfg is None else cfg.mail_owner)
        else:
            log.error("%s", err)
        return 2
    if line:
        print(line)
    return {0: 0, -1: 1}.get(status, 2)


if __name__ == "__main__":
    sys.exit(main())
