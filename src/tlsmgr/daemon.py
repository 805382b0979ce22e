"""The ``tlsmgr`` command: set-up, then the server.

Set-up follows the stock daemon's order: read main.cf once, open the
entropy source and the PRNG exchange file, create (empty) the session
cache files, and only then start serving.  A cache file or exchange file
in a directory not owned by mail_owner is redirected into data_directory
with a warning, as tlsmgr(8) describes.

Stand-alone mode (``--listen PATH``) serves a UNIX socket in the
foreground and logs to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pwd
import sys

from . import __version__, config, log
from .prng import Prng
from .protocol import Tlsmgr
from .scache import SessionCache, logs_cache_activity
from .server import Server
from .stores import FILE_TYPES, MEMORY_TYPE, StoreError, open_store, split_table
from .tickets import TicketKeyRing


def owner_uid(cfg: config.Config) -> int:
    """The uid whose directories hold Postfix data: mail_owner's when we
    run as root, else our own (a stand-alone daemon writes its own files)."""
    if os.geteuid() == 0:
        try:
            return pwd.getpwnam(cfg.mail_owner).pw_uid
        except KeyError:
            log.fatal("parameter mail_owner: unknown user name value: %s", cfg.mail_owner)
    return os.geteuid()


def redirect_to_data_directory(path: str, what: str, name: str,
                               cfg: config.Config, uid: int) -> str:
    """Postfix's data_redirect: a file in a directory not owned by the
    mail owner moves into data_directory, with a warning."""
    directory = os.path.dirname(path) or "."
    try:
        if os.stat(directory).st_uid == uid:
            return path
    except OSError:
        return path                      # opening it will say what is wrong
    log.warn("request to update %s %s in non-%s directory %s",
             what, name, cfg.mail_owner, directory)
    log.warn("redirecting the request to %s-owned data_directory %s",
             cfg.mail_owner, cfg.data_directory)
    return os.path.join(cfg.data_directory, os.path.basename(path))


def open_caches(cfg: config.Config, uid: int) -> dict[str, SessionCache | None]:
    """Every cache type, mapped to its open (empty) cache or None if off."""
    caches: dict[str, SessionCache | None] = {}
    in_use: dict[str, str] = {}
    for settings in cfg.caches:
        caches[settings.label] = None
        if not settings.enabled:
            continue
        spec = settings.database
        try:
            kind, name = split_table(spec)
        except ValueError as err:
            log.fatal("parameter %s: %s", settings.database_param, err)
        if kind in FILE_TYPES:
            name = redirect_to_data_directory(name, "table", spec, cfg, uid)
            # btree:/x and hash:/x are one file here: compare real paths.
            where = os.path.realpath(name)
            if where in in_use:
                log.fatal("do not use the same TLS cache file %s for %s and %s",
                          spec, in_use[where], settings.label)
            in_use[where] = settings.label
        elif kind != MEMORY_TYPE:
            log.fatal("parameter %s: unsupported dictionary type: %s (expected %s)",
                      settings.database_param, kind,
                      ", ".join((MEMORY_TYPE,) + FILE_TYPES))
        try:
            store = open_store("%s:%s" % (kind, name))
        except StoreError as err:
            log.fatal("open %s TLS cache %s: %s", settings.label, spec, err)
        verbose = logs_cache_activity(settings.loglevel_param, settings.loglevel)
        if verbose:
            log.info("open %s TLS cache %s", settings.label, spec)
        caches[settings.label] = SessionCache(settings.label, store, settings.timeout,
                                              verbose)
    return caches


def build_server(cfg: config.Config) -> Server:
    """The stock daemon's pre-init: open everything, then make the server."""
    uid = owner_uid(cfg)
    exchange = cfg.tls_random_exchange_name
    if exchange:
        exchange = redirect_to_data_directory(exchange, "file", exchange, cfg, uid)
    prng = Prng(cfg.tls_random_source, cfg.tls_random_bytes, exchange,
                cfg.tls_random_reseed_period, cfg.tls_random_prng_update_period)
    caches = open_caches(cfg, uid)
    tlsmgr = Tlsmgr(caches, {c.label: c.timeout for c in cfg.caches},
                    prng.random_bytes, TicketKeyRing(prng.random_bytes))
    return Server(tlsmgr, prng, [cache for cache in caches.values() if cache],
                  cfg.ipc_timeout, cfg.tlsmgr_request_size_limit)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="tlsmgr",
        description="Postfix TLS session cache and PRNG manager (a drop-in tlsmgr(8)).",
        epilog="Configuration is read from main.cf in $MAIL_CONFIG (default "
               "/etc/postfix); without main.cf, built-in defaults apply.")
    parser.add_argument("--listen", metavar="PATH", required=True,
                        help="serve on a UNIX-domain socket at PATH, in the foreground, "
                             "logging to stderr (stand-alone mode)")
    parser.add_argument("-o", dest="overrides", metavar="name=value", action="append",
                        default=[], help="override a main.cf parameter (repeatable)")
    parser.add_argument("-v", dest="verbose", action="count", default=0,
                        help="more verbose logging (repeatable)")
    parser.add_argument("-V", "--version", action="version",
                        version="tlsmgr " + __version__)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    log.setup_stderr("tlsmgr")
    log.verbose = args.verbose
    try:
        cfg = config.load(overrides=args.overrides)
        server = build_server(cfg)
        return asyncio.run(server.serve(socket_paths=[args.listen]))
    except log.Fatal:
        return 1


if __name__ == "__main__":
    sys.exit(main())
