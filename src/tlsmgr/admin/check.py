"""``tlsmgr --check`` (and ``tlsmgr-ctl check``): what the daemon would meet.

Run before ``postfix reload``: it reads main.cf as the daemon does, and
looks at everything the daemon would use: each parameter's value, each
cache's table, directory and permissions, the files of secrets, whether
each Redis answers, the metrics port, and the Postfix installed.  It
changes nothing: no cache file is made, no socket left bound, nothing
written to Redis.  Each problem is one line on stderr, in the words the
daemon would log, and the exit status is 1 when there is any.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import shutil
import subprocess
import urllib.request
from collections.abc import Sequence

from .. import config, daemon
from ..runtime import master
from ..stores import FILE_TYPES, REDIS_TYPE, StoreError, redact_table
from ..util import log

# The oldest Postfix whose smtpd, smtp and tlsproxy were tested with this daemon.
OLDEST_POSTFIX = (3, 7)

# How long a look at a running daemon's metrics may take (seconds).
_METRICS_LOOK = 2.0


class _Problems(logging.Handler):
    """Counts the lines that name a problem, whoever logs them."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def run(overrides: Sequence[str] = ()) -> int:
    """Check main.cf (in $MAIL_CONFIG, or /etc/postfix) and what it names;
    0 when there is no problem, else 1."""
    problems = _Problems()
    log.setup([log.stderr_handler("tlsmgr"), problems])
    try:
        cfg = config.load(overrides=overrides)
    except log.Fatal:
        cfg = None
    if cfg is not None:
        _check(cfg)
    if problems.count:
        log.info("check: %d problem%s: fix %s before \"postfix reload\"", problems.count,
                 "" if problems.count == 1 else "s", "it" if problems.count == 1 else "them")
        return 1
    log.info("check: no problems found in %s", os.path.join(cfg.config_directory, "main.cf")
             if cfg else "main.cf")
    return 0


def _check(cfg: config.Config) -> None:
    owner = _mail_owner(cfg)
    for parameter in ("queue_directory", "data_directory"):
        path = getattr(cfg, parameter)
        if not os.path.isdir(path):
            log.warn("parameter %s: %s is not a directory", parameter, path)
    _check_random_source(cfg)
    secrets = daemon.read_secrets(cfg)
    if secrets.fleet_off:
        log.warn("%s; the fleet would be off: its caches in memory on each host, nothing "
                 "written to Redis", secrets.fleet_off)
    files: dict[str, str] = {}
    for cache in cfg.caches:
        if cache.enabled:
            _check_cache(cfg, cache, owner, secrets, files)
    if cfg.tlsmgr_metrics_listen:
        _check_metrics(cfg.tlsmgr_metrics_listen)
    _check_postfix()


def _mail_owner(cfg: config.Config) -> tuple[int, int] | None:
    try:
        entry = pwd.getpwnam(cfg.mail_owner)
    except KeyError:
        log.warn("parameter mail_owner: unknown user name value: %s", cfg.mail_owner)
        return None
    return entry.pw_uid, entry.pw_gid


def _check_random_source(cfg: config.Config) -> None:
    source = cfg.tls_random_source
    path = source.partition(":")[2] if source.startswith(("dev:", "egd:")) else source
    if path and not os.path.exists(path):
        log.warn("parameter tls_random_source: %s does not exist", path)
    exchange = cfg.tls_random_exchange_name
    if exchange and not os.path.isdir(os.path.dirname(exchange) or "."):
        log.warn("parameter tls_random_exchange_name: the directory of %s does not exist",
                 exchange)


def _check_cache(cfg: config.Config, cache: config.CacheSettings,
                 owner: tuple[int, int] | None, secrets: daemon.Secrets,
                 files: dict[str, str]) -> None:
    """One cache, as open_caches() would open it, without opening it:
    its checks (daemon.cache_table()), then what opening would meet."""
    uid = owner[0] if owner is not None and os.geteuid() == 0 else os.geteuid()
    try:
        table = daemon.cache_table(cfg, cache, uid, secrets, files)
    except log.Fatal:
        return                          # said, and counted; the next cache is looked at
    if table is None:
        return
    kind, name = table
    shown = redact_table(cache.database)
    if kind in FILE_TYPES:
        directory = os.path.dirname(name) or "."
        if not os.path.isdir(directory):
            log.warn("%s is unavailable: directory %s does not exist: the %s TLS session "
                     "cache would be off (fix %s)", shown, directory, cache.label,
                     cache.database_param)
        elif not _may_write(directory, owner):
            log.warn("%s is unavailable: %s may not write in %s: the %s TLS session cache "
                     "would be off", shown, cfg.mail_owner, directory, cache.label)
    elif kind == REDIS_TYPE:
        _check_redis(cfg, cache, name, secrets)


def _may_write(directory: str, owner: tuple[int, int] | None) -> bool:
    """Whether mail_owner (or we, not being root) may make files there."""
    if owner is None or os.geteuid() != 0:
        return os.access(directory, os.W_OK | os.X_OK)
    with master.effective_ids(*owner):
        return os.access(directory, os.W_OK | os.X_OK, effective_ids=True)


def _check_redis(cfg: config.Config, cache: config.CacheSettings, url: str,
                 secrets: daemon.Secrets) -> None:
    """Whether the Redis of a cache answers, within tlsmgr_redis_timeout_ms."""
    from ..stores.redis import RedisSettings, RedisStore
    settings: RedisSettings = daemon.redis_settings(cfg, secrets)
    try:
        store = RedisStore(url, cache.label, settings, cache.timeout)
    except StoreError as err:
        log.warn("parameter %s: %s", cache.database_param, err)
        return

    async def ping() -> None:
        try:
            await store.breaker.call("PING")
        finally:
            await store.link.close()
    try:
        asyncio.run(ping())
    except StoreError as err:
        log.warn("%s %s: %s: the %s TLS session cache would miss, and save nothing",
                 cache.database_param, redact_table(cache.database), err, cache.label)
    else:
        log.info("check: %s answers", redact_table(cache.database))


def _check_metrics(listen: str) -> None:
    from ..runtime.metrics import bind, parse_listen
    try:
        host, port = parse_listen(listen)
    except ValueError as err:
        log.warn("%s: metrics would not be served", err)
        return
    try:
        bind(host, port).close()
    except OSError as err:
        if _our_metrics(host, port):
            return                     # the running daemon's: it is let go at reload
        log.warn("cannot serve metrics on %s port %d: %s: metrics would not be served "
                 "(choose another tlsmgr_metrics_listen)", host, port, err.strerror or err)


def _our_metrics(host: str, port: int) -> bool:
    """Whether what holds the port is a tlsmgr serving its metrics."""
    where = "[%s]" % host if ":" in host else host
    try:
        with urllib.request.urlopen("http://%s:%d/metrics" % (where, port),
                                    timeout=_METRICS_LOOK) as page:
            return b"tlsmgr_uptime_seconds" in page.read(1 << 20)
    except (OSError, ValueError):
        return False


def _check_postfix() -> None:
    postconf = shutil.which("postconf") or "/usr/sbin/postconf"
    try:
        done = subprocess.run([postconf, "-h", "mail_version"], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        log.warn("cannot run postconf (%s): is Postfix installed?", err)
        return
    version = done.stdout.strip()
    try:
        numbers = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        numbers = ()
    if done.returncode != 0 or len(numbers) != 2:
        log.warn("postconf -h mail_version: %s", (done.stderr.strip() or version)[:200])
    elif numbers < OLDEST_POSTFIX:
        log.warn("Postfix %s is older than %d.%d, the oldest this daemon was tested with",
                 version, *OLDEST_POSTFIX)
    else:
        log.info("check: Postfix %s", version)
