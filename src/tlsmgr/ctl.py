"""The ``tlsmgr-ctl`` command: talk to a running tlsmgr.

The commands are those of Postfix's tls_mgr test program, and print the
same ``status=N ...`` lines, with binary values in hex.  The exit status
is 0 when the server answered status 0, 1 for status -1 (not found),
2 for status -2 (refused as a protocol error) and for any failure to talk
to the server.

``install`` and ``uninstall`` do not talk to a server: they switch
Postfix's tlsmgr service to this daemon and back (see install.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from . import config, install, log
from .client import ClientError, TlsmgrClient

CACHE_TYPES = ("smtpd", "smtp", "lmtp")


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
    for name in ("install", "uninstall"):
        install.add_arguments(commands.add_parser(name, help=install.HELP[name]))
    return parser


def run(client: TlsmgrClient, args) -> tuple[int, str]:
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
    status, key = client.tktkey(args.name)
    if key is None:
        return status, "status=%d" % status
    expires = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(key.expires))
    return status, ("status=%d name=%s cipher_key=%s hmac_key=%s expires=%d (%s)"
                    % (status, key.name.hex(), key.cipher_key.hex(), key.hmac_key.hex(),
                       key.expires, expires))


def default_socket() -> str:
    cfg = config.load()
    return os.path.join(cfg.queue_directory, "private", "tlsmgr")


def main(argv=None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    log.setup_stderr("tlsmgr-ctl")
    if args.command in ("install", "uninstall"):
        return install.command(args)
    try:
        path = args.socket or default_socket()
        with TlsmgrClient(path, args.timeout) as client:
            status, line = run(client, args)
    except log.Fatal:
        return 2
    except ClientError as err:
        log.error("%s", err)
        return 2
    print(line)
    return {0: 0, -1: 1}.get(status, 2)


if __name__ == "__main__":
    sys.exit(main())
