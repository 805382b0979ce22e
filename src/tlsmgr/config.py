"""Postfix main.cf, read once into the typed settings tlsmgr needs.

Stock tlsmgr(8) gets its configuration through mail_conf(3): main.cf is
read into a dictionary, ``-o name=value`` options update it, and each
parameter is expanded with mac_expand(3) and converted on first use.
This module does the same work up front, with the same syntax, defaults
and diagnostics, so the rest of the daemon sees plain attributes and a
bad setting is reported before anything else happens.

    >>> expand("${queue_directory}/pid", {"queue_directory": "/q"}.get)
    '/q/pid'

Two differences are deliberate: a missing main.cf means the built-in
defaults, and ``$name`` knows only the parameters in :data:`PARAMETERS`
and the names that main.cf or ``-o`` define; anything else is empty.

A bad value is fatal, with the stock daemon's words, only for Postfix's
own parameters, which smtpd reads too.  A bad value of one of ours
(``tlsmgr_*``), which only this daemon reads, is a warning naming it and
the default used instead: no mistake in them stops inbound mail.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

from .stores import redact_table
from .stores.redis_url import MASK, redact_url
from .util import log

DEFAULT_CONFIG_DIRECTORY = "/etc/postfix"
CACHE_LABELS = ("smtpd", "smtp", "lmtp")

# A cache entry lives at least this long (TLS_SESSION_LIFEMIN in Postfix).
TLS_SESSION_LIFEMIN = 120

_INT_MIN, _INT_MAX = -2**31, 2**31 - 1


# The names of the parameters that this daemon alone reads.
OUR_PREFIX = "tlsmgr_"


class Parameter(NamedTuple):
    """A parameter we know, with its default as ``postconf -d`` shows it."""

    name: str
    default: str
    # "str", "int", "time" (converted to seconds) or "bool"; or text shown
    # only in part: "table" (a type:name table, shown without the password
    # of a redis: URL) or "secret" (never shown).
    kind: str = "str"
    min: int | None = None
    max: int | None = None
    choices: tuple[str, ...] = ()          # the values a "str" may have, if not any

    @property
    def ours(self) -> bool:
        """Read by this daemon alone: a bad value falls back to the default."""
        return self.name.startswith(OUR_PREFIX)


_TEXT_KINDS = ("str", "table", "secret")


def _cache_parameters(label: str) -> tuple[Parameter, ...]:
    return (
        Parameter(f"{label}_tls_session_cache_database", "", "table"),
        Parameter(f"{label}_tls_session_cache_timeout", "3600s", "time", 0, 8640000),
        Parameter(f"{label}_tls_loglevel", "0"),
        # Ours: the bounds the stock daemon lacks (0 means no bound).
        Parameter(f"tlsmgr_{label}_cache_entry_limit", "100000", "int", 0),
        Parameter(f"tlsmgr_{label}_cache_size_limit", "104857600", "int", 0),
    )


def _default_hostname() -> str:
    """Postfix's default myhostname: the host name, made fully qualified
    with .localdomain when it has no dot."""
    name = socket.gethostname()
    return name if "." in name else name + ".localdomain"


PARAMETERS: tuple[Parameter, ...] = (
    Parameter("config_directory", DEFAULT_CONFIG_DIRECTORY),
    Parameter("data_directory", "/var/lib/postfix"),
    Parameter("queue_directory", "/var/spool/postfix"),
    Parameter("daemon_directory", "/usr/lib/postfix/sbin"),
    Parameter("mail_owner", "postfix"),
    Parameter("multi_instance_name", ""),
    Parameter("syslog_facility", "mail"),
    Parameter("syslog_name", "${multi_instance_name?{$multi_instance_name}:{postfix}}"),
    Parameter("maillog_file", ""),
    Parameter("maillog_file_prefixes", "/var, /dev/stdout"),
    Parameter("postlog_service_name", "postlog"),
    Parameter("myhostname", _default_hostname()),
    Parameter("daemon_timeout", "18000s", "time", 1),
    Parameter("ipc_timeout", "3600s", "time", 1),
    Parameter("default_database_type", "hash"),
    # Postfix 3.11: the type for caches, so that a cache may be given as
    # ${default_cache_db_type}:path.  Its default, lmdb when
    # default_database_type is lmdb and btree otherwise, is worked out in
    # load(): Postfix writes it as a relational expression, which expand()
    # does not know.
    Parameter("default_cache_db_type", "btree"),
    Parameter("tls_random_source", "dev:/dev/urandom"),
    Parameter("tls_random_bytes", "32", "int", 1),
    Parameter("tls_random_exchange_name", "${data_directory}/prng_exch"),
    Parameter("tls_random_prng_update_period", "3600s", "time", 1),
    Parameter("tls_random_reseed_period", "3600s", "time", 1),
    *(p for label in CACHE_LABELS for p in _cache_parameters(label)),
    # Ours: the largest attribute-protocol message a client may send.
    Parameter("tlsmgr_request_size_limit", "65536", "int", 65536),
    # Ours: client connections served at once; past it, the one idle longest
    # is closed to make room.
    Parameter("tlsmgr_connection_limit", "4096", "int", 1),
    # Ours: bytes of unfinished requests held for all clients together.
    Parameter("tlsmgr_client_buffer_limit", "16777216", "int", 65536),
    # Ours: caches on Redis (redis: tables).
    Parameter("tlsmgr_redis_key_prefix", "tlsmgr:"),
    Parameter("tlsmgr_redis_username", ""),
    # main.cf is world-readable: the password file is the private place.
    Parameter("tlsmgr_redis_password", "", "secret"),
    Parameter("tlsmgr_redis_password_file", ""),
    Parameter("tlsmgr_redis_timeout_ms", "250", "int", 1),
    # Ours: the fleet's secrets, which seal what goes to Redis (seal.py);
    # empty: stored as it is, unprotected.
    Parameter("tlsmgr_fleet_secret_file", ""),
    # Ours: keep the caches on disk and the ticket keys across restarts.
    Parameter("tlsmgr_preserve_sessions", "no", "bool"),
    # Ours: uvloop or asyncio.
    Parameter("tlsmgr_event_loop", "uvloop", choices=("uvloop", "asyncio")),
    # Ours: Prometheus metrics over HTTP at [host:]port; empty is off.
    Parameter("tlsmgr_metrics_listen", ""),
)

_DEFAULTS = {p.name: p.default for p in PARAMETERS}
_KINDS = {p.name: p.kind for p in PARAMETERS}
_BY_NAME = {p.name: p for p in PARAMETERS}


@dataclass(frozen=True)
class CacheSettings:
    """The TLS session cache of one kind of client or server."""

    label: str
    database: str
    timeout: int
    loglevel: str
    database_param: str
    loglevel_param: str
    entry_limit: int = 0
    size_limit: int = 0

    @property
    def enabled(self) -> bool:
        return bool(self.database) and self.timeout > 0


@dataclass(frozen=True)
class Config:
    """Everything tlsmgr reads from main.cf, expanded and converted."""

    config_directory: str
    data_directory: str
    queue_directory: str
    daemon_directory: str
    mail_owner: str
    tls_random_source: str
    tls_random_bytes: int
    tls_random_exchange_name: str
    tls_random_prng_update_period: int
    tls_random_reseed_period: int
    caches: tuple[CacheSettings, ...]
    daemon_timeout: int
    ipc_timeout: int
    syslog_facility: str
    syslog_name: str
    maillog_file: str
    maillog_file_prefixes: str
    postlog_service_name: str
    myhostname: str
    tlsmgr_request_size_limit: int
    tlsmgr_connection_limit: int
    tlsmgr_client_buffer_limit: int
    tlsmgr_redis_key_prefix: str
    tlsmgr_redis_username: str
    tlsmgr_redis_password: str
    tlsmgr_redis_password_file: str
    tlsmgr_redis_timeout_ms: int
    tlsmgr_fleet_secret_file: str
    tlsmgr_preserve_sessions: bool
    tlsmgr_event_loop: str
    tlsmgr_metrics_listen: str
    # Expanded text of every known parameter and of every name main.cf or
    # -o defines, for messages and --show-config.
    params: Mapping[str, str]
    # Unexpanded text of every name main.cf or -o sets (the last setting),
    # and config_directory, the directory read: what --show-config prints.
    raw_settings: Mapping[str, str]


# --- main.cf syntax ------------------------------------------------------

_SPACE = " \t\n\v\f\r"  # C isspace(): what Postfix skips around lines and '='
_NAME_VALUE = re.compile(r"([^=\s]+)\s*=\s*(.*?)\s*", re.ASCII | re.DOTALL)


def parse_main_cf(text: str, source: str) -> dict[str, str]:
    """Return the raw, unexpanded ``name = value`` pairs in main.cf text.

    A later definition wins, with a warning when it changes the value.
    *source* names the file in diagnostics.  A line without '=' is fatal.
    """
    params: dict[str, str] = {}
    for lineno, line in _logical_lines(text, source):
        try:
            name, value = _split_name_value(line)
        except ValueError as err:
            log.fatal('%s, line %d: %s: "%s"', source, lineno, err, line)
        old = params.get(name)
        if old is not None and old != value:
            log.warn("%s, line %d: overriding earlier entry: %s=%s",
                     source, lineno, name, shown_value(name, old))
        params[name] = value
    return params


def _logical_lines(text: str, source: str) -> list[tuple[int, str]]:
    """Return (first line number, text) of each logical line, like readllines().

    A line that starts with whitespace continues the one before: Postfix
    appends it as it is, dropping only the newline.  Blank and comment
    lines are skipped, so they do not end a continued line either.
    """
    logical: list[tuple[int, list[str]]] = []
    for lineno, line in enumerate(text.split("\n"), 1):
        content = line.lstrip(_SPACE)
        if not content or content.startswith("#"):
            continue
        if logical and line[0] in _SPACE:
            logical[-1][1].append(line)
        else:
            logical.append((lineno, [line]))
    result = []
    for lineno, parts in logical:
        line = "".join(parts)
        if line[0] in _SPACE:
            # Only possible at the start of the file; Postfix skips it too.
            log.warn('%s, line %d: logical line must not start with whitespace: "%s"',
                     source, lineno, line)
        else:
            result.append((lineno, line))
    return result


def _split_name_value(text: str) -> tuple[str, str]:
    """Split "name = value" like split_nameval(); ValueError says what is wrong."""
    text = text.lstrip(_SPACE)
    if not text or text[0] == "=":
        raise ValueError("missing attribute name")
    match = _NAME_VALUE.fullmatch(text)
    if match is None:
        raise ValueError("missing '=' after attribute name")
    return match[1], match[2]


# --- $name expansion -----------------------------------------------------

_MACRO_SPACE = " \t\r\n"  # unlike isspace(), mac_expand() skips no \v or \f
_MACRO_NAME = re.compile(r"[A-Za-z0-9_]*")
# The inside of ${...}: a name, then the character that says what follows.
_MACRO_BODY = re.compile(f"[{_MACRO_SPACE}]*([A-Za-z0-9_]*)[{_MACRO_SPACE}]*(.?)", re.DOTALL)
# mac_expand()'s limit, which also stops reference loops such as a = $b, b = $a.
_MAX_NESTING = 100


class MacroError(ValueError):
    """A value that mac_expand() would refuse; the text says why."""


def expand(value: str, lookup: Callable[[str], str | None]) -> str:
    """Expand the ``$name`` forms in *value* recursively, like mail_conf_eval().

    *lookup* returns the raw value of a name, or None when it is undefined;
    a value found is expanded in turn, and an undefined name becomes "".
    Besides ``$name``, ``${name}``, ``$(name)`` and ``$$`` this knows
    ``${name?text}`` (text when $name is non-empty), ``${name:text}`` (text
    when it is empty or undefined) and both combined, with each text
    optionally in braces.  Raises MacroError for bad syntax, for a reference
    loop and for relational expressions and function calls, which tlsmgr
    does not support.
    """
    return _Expansion(lookup).parse(value)


class _Expansion:
    """The state of one expansion: how deeply references are nested."""

    def __init__(self, lookup: Callable[[str], str | None]):
        self.lookup = lookup
        self.depth = 0

    def parse(self, text: str) -> str:
        """Replace every reference in text by its value (mac_parse())."""
        out = []
        pos = 0
        while (dollar := text.find("$", pos)) >= 0:
            out.append(text[pos:dollar])
            after = text[dollar + 1:dollar + 2]
            if after == "$":
                out.append("$")
                pos = dollar + 2
                continue
            if after in ("{", "("):
                end = _closing(text, dollar + 1)
                if end is None:
                    raise MacroError(f'truncated macro reference: "{text}"')
                body, pos = text[dollar + 2:end], end + 1
            else:
                name_match = _MACRO_NAME.match(text, dollar + 1)
                body = name_match[0] if name_match else ""
                pos = dollar + 1 + len(body)
            if not body:
                raise MacroError(f'empty macro name: "{text}"')
            out.append(self.evaluate(body))
        out.append(text[pos:])
        return "".join(out)

    def evaluate(self, body: str) -> str:
        """Return the value of the reference ${body}."""
        if self.depth > _MAX_NESTING:
            raise MacroError(f'unreasonable macro call nesting: "{body}"')
        self.depth += 1
        match = _MACRO_BODY.match(body)
        if match is None:
            raise MacroError(f'unsupported macro expression: "{body}"')
        name, operator = match.groups()
        rest = body[match.end():]
        if operator == "{":
            raise MacroError(f'unsupported relational expression or function call: "{body}"')
        if operator not in ("", "?", ":"):
            raise MacroError(f'attribute name syntax error: "{body}"')
        value = self.lookup(name)
        if operator == "":
            result = self.parse(value) if value else ""
        else:
            if_set = ""
            if operator == "?":
                if_set, rest = _operand(rest)
                if rest and rest[0] != ":":
                    raise MacroError(f'":" expected at: "{rest}"')
                rest = rest[1:]
            if_unset, rest = _operand(rest)
            if rest:
                raise MacroError(f'unexpected input at: "{rest}"')
            # Only the text that is used is expanded, as in Postfix.
            result = self.parse(if_set if value else if_unset)
        self.depth -= 1
        return result


def _closing(text: str, start: int) -> int | None:
    """Index of the bracket that closes text[start], counting only its kind."""
    opening = text[start]
    closing = ")" if opening == "(" else "}"
    level = 0
    for index in range(start, len(text)):
        if text[index] == opening:
            level += 1
        elif text[index] == closing:
            level -= 1
            if level == 0:
                return index
    return None


def _operand(text: str) -> tuple[str, str]:
    """Split the text of a '?' or ':' part from what follows it.

    In braces, the text ends at the matching brace; otherwise it is all
    of the rest, so ``${name?a:b}`` means "a:b" as in Postfix.
    """
    stripped = text.lstrip(_MACRO_SPACE)
    if not stripped.startswith("{"):
        return text, ""
    end = _closing(stripped, 0)
    if end is None:
        raise MacroError(f'unbalanced {{}} in attribute expression: "{stripped}"')
    return stripped[1:end], stripped[end + 1:].lstrip(_MACRO_SPACE)


# --- typed values --------------------------------------------------------

_LEADING_INTEGER = re.compile(f"[{_SPACE}]*[+-]?[0-9]+")
_TIME_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

# Stock wording: mail_conf_int() and mail_conf_time() report ranges differently.
_RANGE_ERRORS = {
    "int": ("invalid %s parameter value %d < %d", "invalid %s parameter value %d > %d"),
    "time": ("invalid %s: %d (min %d)", "invalid %s: %d (max %d)"),
}


def _strtol(text: str) -> tuple[int | None, str]:
    """Split text like strtol(3): the leading number (None if none) and the rest."""
    match = _LEADING_INTEGER.match(text)
    if match is None:
        return None, text
    return int(match[0]), text[match.end():]


def _seconds(text: str) -> int | None:
    """Convert a time value like conv_time(); None if it is bad."""
    if not text:
        return None
    number, rest = _strtol(text)
    if number is None:
        # strtol() took nothing, so conv_time() reads the unit from the very
        # start: a lone "s" (or "h", ...) is a valid zero.
        number = 0
    # Only the character right after the number counts; without one the
    # unit is seconds, the unit of every time parameter's default here.
    multiplier = _TIME_UNITS.get(rest[:1] or "s")
    if multiplier is None or not 0 <= number <= _INT_MAX:
        return None
    seconds = number * multiplier
    return seconds if seconds <= _INT_MAX else None


class BadValue(ValueError):
    """A value its parameter cannot have; the text says why, in the stock
    daemon's words."""


def _convert(param: Parameter, value: str) -> str | int | bool:
    """The typed value of a parameter; BadValue if it cannot have it."""
    if param.kind in _TEXT_KINDS:
        if param.choices and value not in param.choices:
            raise BadValue("parameter %s: bad value: %s (expected %s)"
                           % (param.name, value, " or ".join(param.choices)))
        return value
    if param.kind == "bool":
        # As Postfix's get_mail_conf_bool(): yes or no, in any case.
        word = value.strip().lower()
        if word not in ("yes", "no"):
            raise BadValue("bad boolean configuration: %s = %s (expected yes or no)"
                           % (param.name, value))
        return word == "yes"
    if param.kind == "time":
        number = _seconds(value)
        if number is None:
            raise BadValue("parameter %s: bad time value or unit: %s (expected a number"
                           " with an optional unit s, m, h, d or w)" % (param.name, value))
    else:
        number, rest = _strtol(value)
        if number is None or rest or not _INT_MIN <= number <= _INT_MAX:
            raise BadValue("bad numerical configuration: %s = %s (expected an integer)"
                           % (param.name, value))
    too_small, too_large = _RANGE_ERRORS[param.kind]
    if param.min is not None and number < param.min:
        raise BadValue(too_small % (param.name, number, param.min))
    if param.max is not None and number > param.max:
        raise BadValue(too_large % (param.name, number, param.max))
    return number


def _typed(param: Parameter, value: str | None) -> str | int | bool:
    """The typed value of a parameter, its expanded text (None: it could
    not be expanded, which was said).  Fatal for a bad value of Postfix's,
    as in the stock daemon; for one of ours, a warning and the default."""
    if value is None:
        return _convert(param, param.default)
    try:
        return _convert(param, value)
    except BadValue as err:
        if not param.ours:
            log.fatal("%s", err)
        log.warn("%s; %s", err, _using_the_default(param))
        return _convert(param, param.default)


def _using_the_default(param: Parameter) -> str:
    return ("using the default, %s = %s"
            % (param.name, shown_value(param.name, param.default))).rstrip(" ")


def _cache_settings(label: str, typed: Mapping[str, Any]) -> CacheSettings:
    database_param = f"{label}_tls_session_cache_database"
    loglevel_param = f"{label}_tls_loglevel"
    # As stock tlsmgr_pre_init(): a short lifetime is raised to the minimum,
    # and 0 (the smallest value conv_time() allows) disables the cache.
    timeout = typed[f"{label}_tls_session_cache_timeout"]
    if 0 < timeout < TLS_SESSION_LIFEMIN:
        timeout = TLS_SESSION_LIFEMIN
    return CacheSettings(label, typed[database_param], timeout, typed[loglevel_param],
                         database_param, loglevel_param,
                         typed[f"tlsmgr_{label}_cache_entry_limit"],
                         typed[f"tlsmgr_{label}_cache_size_limit"])


def load(config_directory: str | None = None, overrides: Sequence[str] = (),
         environ: Mapping[str, str] = os.environ, service_name: str = "tlsmgr") -> Config:
    """Read main.cf and apply ``-o name=value`` overrides, later ones winning.

    *service_name* is the master.cf service name (``-n``).  The directory
    is *config_directory*, else $MAIL_CONFIG, else /etc/postfix; without a
    main.cf there, the defaults apply.  An error in one of Postfix's
    parameters is fatal: it is logged and log.Fatal raised.  In one of
    ours, it is a warning, and the default is used.
    """
    directory = config_directory or environ.get("MAIL_CONFIG") or DEFAULT_CONFIG_DIRECTORY
    explicit, settings = _settings(directory, overrides, service_name)
    # config_directory counts as set, as in postconf -n, and shows which
    # main.cf was read.
    raw_settings = {name: settings[name] for name in [*explicit, "config_directory"]}

    params: dict[str, str] = {}
    for name, value in settings.items():
        try:
            params[name] = expand(value, settings.get)
        except MacroError as err:
            # Stock tlsmgr never evaluates the parameters it does not use,
            # so a value meant for another daemon must not stop this one.
            param = _BY_NAME.get(name)
            if param is None:
                continue
            if not param.ours:
                log.fatal("parameter %s: %s", name, _error_shown(name, str(err)))
            log.warn("parameter %s: %s; %s", name, _error_shown(name, str(err)),
                     _using_the_default(param))

    # Each value is of its parameter's kind: str, or int for int and time.
    typed: dict[str, Any] = {p.name: _typed(p, params.get(p.name)) for p in PARAMETERS}
    if typed["tlsmgr_client_buffer_limit"] < typed["tlsmgr_request_size_limit"]:
        log.warn("tlsmgr_client_buffer_limit (%d) must be at least "
                 "tlsmgr_request_size_limit (%d): using %d", typed["tlsmgr_client_buffer_limit"],
                 typed["tlsmgr_request_size_limit"], typed["tlsmgr_request_size_limit"])
        typed["tlsmgr_client_buffer_limit"] = typed["tlsmgr_request_size_limit"]
    field_names = {field.name for field in dataclasses.fields(Config)}
    return Config(caches=tuple(_cache_settings(label, typed) for label in CACHE_LABELS),
                  params=MappingProxyType(params),
                  raw_settings=MappingProxyType(raw_settings),
                  **{name: value for name, value in typed.items() if name in field_names})


def _settings(directory: str, overrides: Sequence[str],
              service_name: str) -> tuple[dict[str, str], dict[str, str]]:
    """What main.cf in directory and the overrides set, and that over the
    defaults: each unexpanded."""
    path = os.path.join(directory, "main.cf")
    try:
        with open(path, "rb") as file:
            # Postfix treats main.cf as bytes; keep undecodable ones for paths.
            text = os.fsdecode(file.read())
    except FileNotFoundError:
        text = ""
    except OSError as err:
        log.fatal("cannot read %s: %s", path, err.strerror)

    explicit = parse_main_cf(text, path)
    for override in overrides:
        try:
            name, value = _split_name_value(override)
        except ValueError as err:
            log.fatal('invalid "-o %s" option value: %s', override, err)
        explicit[name] = value
    settings = _DEFAULTS | explicit
    if "default_cache_db_type" not in explicit:
        settings["default_cache_db_type"] = _default_cache_db_type(settings)
    # Like the stock server skeleton, set these last: neither main.cf nor -o
    # can change them.
    settings |= {"config_directory": directory, "process_name": "tlsmgr",
                 "service_name": service_name, "process_id": str(os.getpid())}
    return explicit, settings


class LogSettings(NamedTuple):
    """Where log lines go (log.py; daemon.setup_master_logging())."""

    syslog_name: str
    syslog_facility: str
    maillog_file: str
    maillog_file_prefixes: str
    postlog_service_name: str
    queue_directory: str
    myhostname: str


def log_settings(config_directory: str | None = None, overrides: Sequence[str] = (),
                 environ: Mapping[str, str] = os.environ,
                 service_name: str = "tlsmgr") -> LogSettings:
    """Where log lines go, read before the rest of main.cf, so that what
    reading the rest meets goes there too: a fatal error included.  Says
    nothing and never fails: a value that cannot be read is its default
    here, and load() then says what is wrong with it."""
    directory = config_directory or environ.get("MAIL_CONFIG") or DEFAULT_CONFIG_DIRECTORY
    with log.muted():
        try:
            settings = _settings(directory, overrides, service_name)[1]
        except log.Fatal:
            settings = dict(_DEFAULTS)
    values = []
    for name in LogSettings._fields:
        try:
            values.append(expand(settings[name], settings.get))
        except MacroError:
            values.append(expand(_DEFAULTS[name], _DEFAULTS.get))
    return LogSettings(*values)


def _default_cache_db_type(settings: Mapping[str, str]) -> str:
    try:
        database_type = expand(settings["default_database_type"], settings.get)
    except MacroError:
        return "btree"                # the error is reported for default_database_type
    return "lmdb" if database_type == "lmdb" else "btree"


# --- what may be shown ----------------------------------------------------

def shown_value(name: str, value: str) -> str:
    """A parameter's value as --show-config and log lines show it: a
    secret's masked, and a redis: table's URL without its password."""
    kind = _KINDS.get(name)
    if kind == "secret":
        return MASK if value else value
    if kind == "table":
        return redact_table(value)
    return value


def _error_shown(name: str, text: str) -> str:
    """An error about a parameter's value, which quotes the value, or one
    that it refers to, as shown_value() would show them."""
    kind = _KINDS.get(name)
    if kind == "secret":
        return "bad $ expression in a secret, not shown (write a $ in it as $$)"
    if kind == "table":
        return redact_url(text)          # any text: it masks what looks like a password
    return text


# --- tlsmgr --show-config ------------------------------------------------

_SPACE_RUN = re.compile(f"[{_SPACE}]+")


def show(cfg: Config, defaults: bool = False) -> list[str]:
    """The lines of ``tlsmgr --show-config``, sorted by parameter name.

    Like ``postconf -n`` for the parameters in :data:`PARAMETERS`: each
    one main.cf or -o sets to a text other than its default, unexpanded;
    with *defaults*, like ``postconf -d``: each one with its default.
    As postconf, a value is shown with each run of white space (from a
    continuation line, say) as one space, and an empty one as ``name =``;
    unlike postconf, without its secrets (shown_value()).
    """
    if defaults:
        values = {p.name: p.default for p in PARAMETERS}
    else:
        values = {}
        for param in PARAMETERS:
            value = cfg.raw_settings.get(param.name)
            if value is not None:
                value = _SPACE_RUN.sub(" ", value)
                if value != param.default:
                    values[param.name] = value
    return [f"{name} = {shown_value(name, values[name])}".rstrip(" ")
            for name in sorted(values)]
