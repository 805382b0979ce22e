"""The ``tlsmgr`` command: set-up, then the server.

Set-up follows the stock daemon's order: read main.cf once, open the
entropy source and the PRNG exchange file, create (empty) the session
cache files, and only then start serving.  A cache file or exchange file
in a directory not owned by mail_owner is redirected into data_directory
with a warning, as tlsmgr(8) describes.

Under master(8) it is started with the generic daemon options and runs
as Postfix's multi_server skeleton does (master.py).  Stand-alone mode
(``--listen PATH``) serves a UNIX socket in the foreground and logs to
stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import pwd
import signal
import socket
import sys
import syslog
import traceback
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

from . import __version__, config
from .observe.stats import Stats
from .runtime import master
from .runtime.connection import LATER_MARGIN
from .runtime.limits import ConnectionTable
from .runtime.server import Server, listen_unix, raise_open_files_limit
from .service import fastpath
from .service.control import Control, Sources
from .service.handlers import ClientRequests
from .service.keyfile import KeyFile, remove_saved_keys
from .service.prng import Prng
from .service.protocol import Dispatch, Scanner
from .service.scache import SessionCache, logs_cache_activity
from .service.tickets import FleetTicketKeys, TicketKeyRing, TicketKeys
from .stores import (
    FILE_TYPES,
    MEMORY_TYPE,
    REDIS_TYPE,
    Limits,
    StoreError,
    open_store,
    redact_table,
    split_table,
)
from .stores.redis_url import split_credentials
from .util import log
from .util.secretfile import SecretFileError, read_secret_line
from .wire.attr import Decoder, Message

if TYPE_CHECKING:
    from .stores.redis import RedisSettings
    from .stores.seal import Seal


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


class Secrets(NamedTuple):
    """What only root may read: read before the privilege drop and the jail."""

    seal: Seal | None                # tlsmgr_fleet_secret_file
    redis_password: str              # tlsmgr_redis_password_file
    # Why the fleet is off, if it is: a file of secrets that failed its
    # checks.  Its caches then stay on this host, and nothing is written
    # to Redis unsealed, nor without its password.
    fleet_off: str = ""


def cache_table(cfg: config.Config, settings: config.CacheSettings, uid: int,
                secrets: Secrets, in_use: dict[str, str]) -> tuple[str, str] | None:
    """The type and name an enabled cache is opened with, after what
    open_caches() checks before it opens one (and tlsmgr --check before it
    looks further): None when the cache is off, which is said.  ``in_use``
    maps the files of the caches seen so far to their labels."""
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
    elif kind == REDIS_TYPE and secrets.fleet_off:
        kind, name = MEMORY_TYPE, ""          # said every minute (fleet_off_task())
    elif kind not in (MEMORY_TYPE, REDIS_TYPE):
        log.warn("%s is unavailable. unsupported dictionary type: %s (expected %s): "
                 "the %s TLS session cache is off", redact_table(spec), kind,
                 ", ".join((MEMORY_TYPE, *FILE_TYPES, REDIS_TYPE)), settings.label)
        return None
    if kind == MEMORY_TYPE and cfg.tlsmgr_preserve_sessions:
        log.warn("tlsmgr_preserve_sessions = yes, but %s %s is in memory: it starts "
                 "empty at every restart (use an lmdb: table to keep it)",
                 settings.database_param, spec)
    return kind, name


def open_caches(cfg: config.Config, uid: int,
                secrets: Secrets) -> dict[str, SessionCache | None]:
    """Every cache type, mapped to its open (empty) cache or None if off;
    Redis caches sealed with the fleet's secret, if it has one.

    A cache that cannot be used (its type, its directory, its file) is
    off, with a warning, as the stock daemon serves without it: smtpd
    then goes on without resuming sessions, rather than without TLS."""
    caches: dict[str, SessionCache | None] = {}
    in_use: dict[str, str] = {}
    for settings in cfg.caches:
        caches[settings.label] = None
        table = cache_table(cfg, settings, uid, secrets, in_use) if settings.enabled else None
        if table is None:
            continue
        kind, name = table
        spec = settings.database
        try:
            store = open_store("%s:%s" % (kind, name), settings.label, settings.timeout,
                               redis_settings(cfg, secrets) if kind == REDIS_TYPE else None,
                               preserve=cfg.tlsmgr_preserve_sessions)
        except StoreError as err:
            log.warn("%s is unavailable. %s: the %s TLS session cache is off (fix %s)",
                     redact_table(spec), err, settings.label, settings.database_param)
            continue
        verbose = logs_cache_activity(settings.loglevel_param, settings.loglevel)
        if verbose:
            log.info("open %s TLS cache %s", settings.label, redact_table(spec))
        caches[settings.label] = SessionCache(
            settings.label, store, settings.timeout, verbose,
            limits=Limits(settings.entry_limit, settings.size_limit))
    return caches


def redis_settings(cfg: config.Config, secrets: Secrets) -> RedisSettings:
    from .stores.redis import RedisSettings
    return RedisSettings(key_prefix=cfg.tlsmgr_redis_key_prefix,
                         password=cfg.tlsmgr_redis_password,
                         timeout_ms=cfg.tlsmgr_redis_timeout_ms, seal=secrets.seal,
                         username=cfg.tlsmgr_redis_username,
                         file_password=secrets.redis_password)


def mail_owner_uid(cfg: config.Config) -> int | None:
    """mail_owner's uid; None stand-alone, for a mail_owner this host does
    not have."""
    try:
        return pwd.getpwnam(cfg.mail_owner).pw_uid
    except KeyError:
        return None


# While the fleet is off, how often it is said (seconds).
FLEET_OFF_WARNING_INTERVAL = 60.0


def secret_file_owners(cfg: config.Config) -> set[int]:
    """Whom a file of secrets may belong to: root, mail_owner, ourselves."""
    return {uid for uid in (0, os.geteuid(), mail_owner_uid(cfg)) if uid is not None}


def read_fleet_secret(cfg: config.Config) -> Seal | None:
    """The seal of tlsmgr_fleet_secret_file, if set: read as root, before
    the privilege drop and the jail.  SecretFileError, naming the file,
    if it is not private, or not wholly secrets."""
    path = cfg.tlsmgr_fleet_secret_file
    if not path:
        return None
    from .stores import seal
    try:
        return seal.read_secret_file(path, secret_file_owners(cfg))
    except SecretFileError as err:
        raise SecretFileError("%s %s: %s" % (seal.PARAMETER, path, err)) from None


def read_redis_password(cfg: config.Config) -> str:
    """The password of tlsmgr_redis_password_file, if set, read as the
    fleet's secret is; it wins over any other, which is warned about.
    SecretFileError, naming the file, if it is not private, or not one
    line."""
    path = cfg.tlsmgr_redis_password_file
    if not path:
        return ""
    try:
        password = read_secret_line(path, secret_file_owners(cfg))
    except SecretFileError as err:
        raise SecretFileError("tlsmgr_redis_password_file %s: %s" % (path, err)) from None
    overridden = ["tlsmgr_redis_password"] if cfg.tlsmgr_redis_password else []
    for cache in cfg.caches:
        kind, _, url = cache.database.partition(":")
        if cache.enabled and kind == REDIS_TYPE and split_credentials(url)[1].password:
            overridden.append("the password in " + cache.database_param)
    if overridden:
        log.warn("tlsmgr_redis_password_file %s overrides %s", path, ", ".join(overridden))
    return password


def read_secrets(cfg: config.Config) -> Secrets:
    """The fleet's secrets; a file of them that fails its checks turns the
    fleet off, rather than the daemon: only this daemon reads them."""
    try:
        return Secrets(read_fleet_secret(cfg), read_redis_password(cfg))
    except SecretFileError as err:
        return Secrets(None, "", fleet_off=str(err))


def fleet_off_task(secrets: Secrets, caches: dict[str, SessionCache | None],
                   cfg: config.Config) -> list[Callable[[], float | None]]:
    """While the fleet is off, a warning every minute that says why."""
    if not secrets.fleet_off:
        return []
    local = [c.label for c in cfg.caches if c.enabled and caches[c.label] is not None
             and c.database.startswith(REDIS_TYPE + ":")]
    consequence = ("the fleet is off: the %s TLS session cache%s in memory on this host, "
                   "and nothing is written to Redis" % (
                       " and ".join(local), "s are" if len(local) > 1 else " is")
                   if local else "no cache is on Redis")

    def warn() -> float:
        log.warn("%s; %s (fix the file, then \"postfix reload\")",
                 secrets.fleet_off, consequence)
        return FLEET_OFF_WARNING_INTERVAL
    return [warn]


def saved_keys(cfg: config.Config) -> KeyFile | None:
    """Where the ticket key ring is kept across restarts, when it is; with
    tlsmgr_preserve_sessions off, no key file is left from when it was on."""
    smtpd = next(c for c in cfg.caches if c.label == "smtpd")
    if not cfg.tlsmgr_preserve_sessions:
        remove_saved_keys(cfg.data_directory)
        return None
    if not smtpd.enabled:
        return None                           # no cache, no tickets
    try:
        return KeyFile(cfg.data_directory)
    except OSError as err:
        log.warn("tlsmgr_preserve_sessions: cannot open data_directory %s: %s; ticket "
                 "keys will not survive a restart", cfg.data_directory, err.strerror)
        return None


def ticket_keys(smtpd_cache: SessionCache | None, random_bytes: Callable[[int], bytes],
                saved: KeyFile | None = None) -> TicketKeys:
    """This host's key ring, kept across restarts if saved; shared by the
    fleet when the smtpd cache is on Redis."""
    ring = TicketKeyRing(random_bytes,
                         on_change=saved.save_ring if saved is not None else None)
    if saved is not None and smtpd_cache is not None:
        ring.restore(saved.load(smtpd_cache.timeout))
    if smtpd_cache is None or not smtpd_cache.store.remote:
        return ring                       # no store on the network: not Redis
    from .stores.redis import RedisStore, RedisTicketKeys
    if not isinstance(smtpd_cache.store, RedisStore):
        return ring
    return FleetTicketKeys(RedisTicketKeys(smtpd_cache.store), ring, random_bytes)


def spent_key_task(tickets: TicketKeys, smtpd_cache: SessionCache | None,
                   saved: KeyFile | None) -> list[Callable[[], float | None]]:
    """With saved keys: a timer that removes each key from the file when
    its decrypt window ends, so that none stays on disk longer."""
    if saved is None or smtpd_cache is None:
        return []
    timeout = smtpd_cache.timeout
    return [lambda: tickets.ring.drop_spent(timeout)]


def service_names_task(cfg: config.Config, smtpd_cache: SessionCache | None
                       ) -> list[Callable[[], float | None]]:
    """With the smtpd cache on Redis: this host's smtpd service names said
    to the fleet, and the others' checked against them (service_names.py)."""
    if smtpd_cache is None or not smtpd_cache.store.remote:
        return []
    from .stores.redis import RedisStore
    if not isinstance(smtpd_cache.store, RedisStore):
        return []
    from .service.service_names import fleet_task
    return fleet_task(smtpd_cache.store, cfg.config_directory, cfg.myhostname)


def build_server(cfg: config.Config, uid: int, connection_limit: int,
                 secrets: Secrets) -> tuple[Server, Control]:
    """The stock daemon's pre-init: open everything, then make the server
    and the control requests' handler, which reports on all of it."""
    exchange = cfg.tls_random_exchange_name
    if exchange:
        exchange = redirect_to_data_directory(exchange, "file", exchange, cfg, uid)
    prng = Prng(cfg.tls_random_source, cfg.tls_random_bytes, exchange,
                cfg.tls_random_reseed_period, cfg.tls_random_prng_update_period)
    caches = open_caches(cfg, uid, secrets)
    saved = saved_keys(cfg)
    tickets = ticket_keys(caches["smtpd"], prng.random_bytes, saved)
    stats = Stats()
    scanner = Scanner("%s socket" % cfg.params["service_name"], stats)
    client = ClientRequests(caches, {c.label: c.timeout for c in cfg.caches},
                            prng.random_bytes, tickets, scanner, stats)
    enabled = [cache for cache in caches.values() if cache]
    connections = ConnectionTable(connection_limit, stats)
    control = Control(Sources(client, stats, enabled, prng, connections,
                              "compiled" if fastpath.COMPILED else "pure"), scanner)
    server = Server(Dispatch(scanner, client, control), prng, enabled,
                    cfg.ipc_timeout, cfg.tlsmgr_request_size_limit, connection_limit,
                    cfg.tlsmgr_client_buffer_limit,
                    later_deadline=cfg.tlsmgr_redis_timeout_ms / 1000 + LATER_MARGIN,
                    tasks=[*spent_key_task(tickets, caches["smtpd"], saved),
                           *fleet_off_task(secrets, caches, cfg),
                           *service_names_task(cfg, caches["smtpd"])],
                    connections=connections)
    owner = mail_owner_uid(cfg)
    if owner is not None:
        server.control_uids.add(owner)
    return server, control


def build_server_as_mail_owner(cfg: config.Config) -> Server:
    """build_server(), making the files as mail_owner when we are root, so
    that they belong to Postfix (and the modules it needs later imported
    while the Python installation is still within reach); then the
    metrics server, if wanted."""
    connection_limit = raise_open_files_limit(cfg.tlsmgr_connection_limit)
    serve_metrics: Callable[[str, Control, Server], None] | None = None
    if cfg.tlsmgr_metrics_listen:
        try:
            from .runtime.metrics import (
                start as serve_metrics,  # and prometheus-client: when wanted
            )
        except ImportError as err:
            log.warn("tlsmgr_metrics_listen = %s, but %s: metrics are not served (install "
                     "prometheus-client)", cfg.tlsmgr_metrics_listen, err)
    secrets = read_secrets(cfg)
    if os.geteuid() != 0:
        server, control = build_server(cfg, os.geteuid(), connection_limit, secrets)
    else:
        master.preload_modules()
        uid, gid = master.mail_owner_ids(cfg.mail_owner)
        with master.effective_ids(uid, gid):
            server, control = build_server(cfg, uid, connection_limit, secrets)
    if serve_metrics is not None:
        # Before any privilege drop or jail: any port, the imports done.
        serve_metrics(cfg.tlsmgr_metrics_listen, control, server)
    return server


class ArgumentParser(argparse.ArgumentParser):
    """Option errors are fatal errors, logged like any other."""

    def error(self, message: str) -> NoReturn:
        log.fatal("%s", message)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="tlsmgr",
        description="Postfix TLS session cache and PRNG manager (a drop-in tlsmgr(8)). "
                    "master(8) starts it with the generic daemon options; --listen "
                    "runs it stand-alone; --show-config prints its settings; --check "
                    "looks for problems before a reload.",
        epilog="Configuration is read from main.cf in $MAIL_CONFIG (default "
               "/etc/postfix); without main.cf, built-in defaults apply.")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--listen", metavar="PATH",
                      help="serve on a UNIX-domain socket at PATH, in the foreground, "
                           "logging to stderr (stand-alone mode)")
    mode.add_argument("--show-config", action="store_true",
                      help="print each parameter tlsmgr reads that main.cf or -o set to "
                           "other than its default, as 'name = value' unexpanded (like "
                           "postconf -n), and exit; with -d, print every one with its "
                           "default instead (like postconf -d)")
    mode.add_argument("--check", action="store_true",
                      help="check main.cf and what it names (parameter values, cache "
                           "directories and permissions, files of secrets, Redis, the "
                           "metrics port, the Postfix version) as the daemon would meet "
                           "them, changing nothing; exit 1 on any problem.  Run it before "
                           "\"postfix reload\"")
    parser.add_argument("-o", dest="overrides", metavar="name=value", action="append",
                        default=[], help="override a main.cf parameter (repeatable)")
    parser.add_argument("-v", dest="verbose", action="count", default=0,
                        help="more verbose logging (repeatable)")
    parser.add_argument("-V", dest="stderr", action="store_true",
                        help="also log to stderr")
    generic = parser.add_argument_group(
        "generic daemon options (master(5)), as master(8) passes them")
    generic.add_argument("-c", dest="chroot", action="store_true",
                         help="chroot to queue_directory after start-up")
    generic.add_argument("-d", dest="foreground", action="store_true",
                         help="with --show-config: show the defaults (postconf's -d); "
                              "otherwise: do not insist that stdin is not a terminal")
    generic.add_argument("-D", dest="debug", action="store_true",
                         help="accepted for compatibility; no debugger is started")
    generic.add_argument("-i", dest="max_idle", metavar="TIME",
                         help="accepted; tlsmgr never exits when idle")
    generic.add_argument("-l", dest="solitary", action="store_true",
                         help="the process limit is 1 (required: tlsmgr is solitary)")
    generic.add_argument("-m", dest="max_use", metavar="COUNT",
                         help="accepted; tlsmgr never exits after a number of clients")
    generic.add_argument("-n", dest="service", metavar="NAME", default="tlsmgr",
                         help="the master.cf service name")
    generic.add_argument("-s", dest="socket_count", metavar="COUNT", type=int, default=1,
                         help="the number of listening sockets, from fd 6 on")
    generic.add_argument("-S", dest="single", action="store_true",
                         help="serve one request on stdin, reply on stdout")
    generic.add_argument("-t", dest="transport", metavar="TYPE",
                         help="the transport type of the sockets: unix or inet")
    generic.add_argument("-u", dest="unprivileged", action="store_true",
                         help="run as mail_owner after start-up")
    generic.add_argument("-z", dest="zero_limit", action="store_true",
                         help="accepted for compatibility")
    parser.add_argument("--version", action="version", version="tlsmgr " + __version__)
    return parser.parse_args(argv)


def mail_task(logs: config.LogSettings) -> str:
    """The log tag, as Postfix's mail_task(): MAIL_LOGTAG or syslog_name, then /tlsmgr."""
    return "%s/tlsmgr" % (os.environ.get("MAIL_LOGTAG") or logs.syslog_name)


def setup_master_logging(args: argparse.Namespace) -> None:
    """syslog, or postlogd when maillog_file is set; stderr too with -V.
    Set up before the rest of main.cf is read, so that every line met
    reading it, a fatal one included, goes where Postfix's lines go."""
    def with_stderr(handlers: list[logging.Handler], tag: str) -> list[logging.Handler]:
        return [*handlers, log.stderr_handler(tag)] if args.stderr else handlers

    # Until main.cf says otherwise, as the stock daemon before it reads it.
    log.setup(with_stderr([log.SyslogHandler("postfix/tlsmgr", syslog.LOG_MAIL)],
                          "postfix/tlsmgr"))
    logs = config.log_settings(overrides=args.overrides, service_name=args.service)
    tag = mail_task(logs)
    if logs.maillog_file:
        prefixes = logs.maillog_file_prefixes
        if not any(logs.maillog_file.startswith(p)
                   for p in prefixes.replace(",", " ").split()):
            log.fatal("maillog_file value '%s' does not match any prefix in "
                      "maillog_file_prefixes", logs.maillog_file)
        path = os.path.join(logs.queue_directory, "public", logs.postlog_service_name)
        handlers: list[logging.Handler] = [log.PostlogHandler(tag, logs.myhostname, path)]
    else:
        facility = log.facility_code(logs.syslog_facility)
        if facility is None:
            log.fatal("invalid syslog_facility: %s", logs.syslog_facility)
        handlers = [log.SyslogHandler(tag, facility)]
    log.setup(with_stderr(handlers, tag))


def serve_one_request(server: Server) -> int:
    """-S: one request on stdin, its reply on stdout, as multi_server does."""
    decoder = Decoder(server.request_size_limit)
    messages: list[Message] = []
    while not messages:
        data = os.read(0, 65536)
        if not data:
            log.warn("end-of-input while reading request from stdin")
            break
        messages = decoder.feed(data)
    for message in messages[:1]:
        os.write(1, server.dispatch.handle(message).data)
    server.prng.save()
    return 0


def event_loop_runner(cfg: config.Config) -> Callable[[Coroutine[Any, Any, int]], int]:
    """asyncio.run, or uvloop's (faster, same behaviour) as configured."""
    if cfg.tlsmgr_event_loop == "asyncio":
        return asyncio.run
    try:
        import uvloop
    except ImportError:
        log.warn("tlsmgr_event_loop = uvloop, but uvloop is not installed: using asyncio")
        return asyncio.run

    # What uvloop.run() does, which uvloop before 0.18 (Debian 12's 0.17) lacks.
    def run(main: Coroutine[Any, Any, int]) -> int:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)
    return run


def run_under_master(args: argparse.Namespace) -> int:
    """Start-up in the order of Postfix's multi_server_main()."""
    setup_master_logging(args)
    log.verbose = args.verbose
    cfg = config.load(overrides=args.overrides, service_name=args.service)
    if not args.single:
        if args.transport is None:
            log.fatal("no transport type specified")
        if args.transport not in ("unix", "inet"):
            log.fatal("unsupported transport type: %s", args.transport)
        if not args.solitary:
            log.fatal("service %s requires a process limit of 1", args.service)
        if args.socket_count <= 0:
            log.fatal("invalid socket_count: %d", args.socket_count)
        if not args.foreground and os.isatty(0):
            log.fatal("do not run this command by hand")
    generation = master.parse_generation(os.environ.get("GENERATION"))
    try:
        os.chdir(cfg.queue_directory)
    except OSError as err:
        log.fatal('chdir("%s"): %s', cfg.queue_directory, err.strerror)

    # Pre-jail: open the entropy source, exchange file and caches.
    server = build_server_as_mail_owner(cfg)
    if args.single:
        return serve_one_request(server)
    sockets = [socket.socket(fileno=fd)
               for fd in range(master.LISTEN_FD, master.LISTEN_FD + args.socket_count)]
    for sock in sockets:
        sock.set_inheritable(False)          # close-on-exec, as the stock daemon's
    server.master = master.StatusChannel(generation)
    server.watchdog = master.Watchdog(cfg.daemon_timeout)
    run = event_loop_runner(cfg)
    master.enter_jail(cfg.queue_directory if args.chroot else None,
                      cfg.mail_owner if args.unprivileged else None)
    return run(server.serve(sockets=sockets))


def run_standalone(args: argparse.Namespace) -> int:
    """As under master(8), minus master: started as root, the daemon makes
    its files and socket as mail_owner, then runs as mail_owner."""
    log.setup_stderr("tlsmgr")
    log.verbose = args.verbose
    cfg = config.load(overrides=args.overrides)
    run = event_loop_runner(cfg)
    server = build_server_as_mail_owner(cfg)
    if os.geteuid() == 0:
        listener = listen_unix(args.listen, master.mail_owner_ids(cfg.mail_owner))
        master.enter_jail(None, cfg.mail_owner)
    else:
        listener = listen_unix(args.listen)
    return run(server.serve([listener], remove_at_exit=[args.listen]))


def end_now(status: int) -> NoReturn:
    """Exit once the server is done, without waiting for anything else:
    what must be saved was saved by the server, and waiting would keep
    "postfix stop" or "postfix reload" waiting too."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def main(argv: list[str] | None = None) -> int:
    # Postfix daemons ignore SIGPIPE: a client that goes away is no reason to die.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    log.setup_stderr("tlsmgr")
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        if args.show_config:
            # A listing for the shell: "| head" ends it quietly, as it ends postconf.
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)
            cfg = config.load(overrides=args.overrides, service_name=args.service)
            # Here -d (args.foreground) has postconf's meaning: defaults.
            sys.stdout.writelines(line + "\n" for line in config.show(cfg, args.foreground))
            return 0
        if args.check:
            from .admin import check
            return check.run(args.overrides)
        if args.listen:
            end_now(run_standalone(args))
        if args.single:
            return run_under_master(args)
        end_now(run_under_master(args))
    except log.Fatal:
        return 1
    except Exception as err:
        # A bug: say what broke, in one line where the administrator looks.
        if log.verbose:
            log.info("%s", traceback.format_exc())
        log.logger.critical("unexpected %s: %s", type(err).__name__, err)
        return 1


if __name__ == "__main__":
    sys.exit(main())
