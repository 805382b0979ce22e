"""Tests for tlsmgr.config: main.cf syntax, expansion, defaults, typed values."""

import logging
import subprocess
from pathlib import Path

import pytest
from conftest import require_command
from helpers.harness import comparable_with_postconf

from tlsmgr import config
from tlsmgr.config import MacroError, expand, parse_main_cf
from tlsmgr.util import log


def load(tmp_path, main_cf, *overrides):
    (tmp_path / "main.cf").write_text(main_cf)
    return config.load(str(tmp_path), overrides, environ={})


def cache_of(cfg, label):
    """The settings of one cache type, or None for a type tlsmgr does not know."""
    return next((cache for cache in cfg.caches if cache.label == label), None)


def fatal(tmp_path, main_cf, *overrides):
    """The one line a fatal error logs."""
    with pytest.raises(log.Fatal) as info:
        load(tmp_path, main_cf, *overrides)
    assert "\n" not in info.value.text
    return info.value.text


def warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# --- where main.cf is, and the defaults --------------------------------


def test_defaults_without_main_cf(tmp_path):
    cfg = config.load(environ={"MAIL_CONFIG": str(tmp_path)})
    assert cfg.config_directory == str(tmp_path)
    assert cfg.data_directory == "/var/lib/postfix"
    assert cfg.queue_directory == "/var/spool/postfix"
    assert cfg.daemon_directory == "/usr/lib/postfix/sbin"
    assert cfg.mail_owner == "postfix"
    assert cfg.tls_random_source == "dev:/dev/urandom"
    assert cfg.tls_random_bytes == 32
    assert cfg.tls_random_exchange_name == "/var/lib/postfix/prng_exch"
    assert cfg.tls_random_prng_update_period == 3600
    assert cfg.tls_random_reseed_period == 3600
    assert cfg.daemon_timeout == 18000
    assert cfg.ipc_timeout == 3600
    assert cfg.syslog_facility == "mail"
    assert cfg.syslog_name == "postfix"
    assert cfg.maillog_file == ""
    assert cfg.tlsmgr_request_size_limit == 65536
    assert [c.label for c in cfg.caches] == ["smtpd", "smtp", "lmtp"]
    for cache in cfg.caches:
        assert (cache.database, cache.timeout, cache.loglevel) == ("", 3600, "0")
        assert not cache.enabled
    smtp = cache_of(cfg, "smtp")
    assert smtp.database_param == "smtp_tls_session_cache_database"
    assert smtp.loglevel_param == "smtp_tls_loglevel"
    assert cache_of(cfg, "submission") is None
    assert set(cfg.params) >= {p.name for p in config.PARAMETERS}


def test_explicit_directory_beats_mail_config(tmp_path):
    (tmp_path / "main.cf").write_text("mail_owner = explicit\n")
    other = tmp_path / "other"
    other.mkdir()
    cfg = config.load(str(tmp_path), environ={"MAIL_CONFIG": str(other)})
    assert (cfg.config_directory, cfg.mail_owner) == (str(tmp_path), "explicit")


def test_config_directory_is_the_one_read(tmp_path):
    cfg = load(tmp_path, "config_directory = /elsewhere\n"
                         "tls_random_source = $config_directory\n")
    assert cfg.config_directory == cfg.tls_random_source == str(tmp_path)


def test_unreadable_main_cf_is_fatal(tmp_path):
    (tmp_path / "main.cf").mkdir()
    with pytest.raises(log.Fatal) as info:
        config.load(str(tmp_path), environ={})
    assert info.value.text == f"cannot read {tmp_path}/main.cf: Is a directory"


# --- main.cf syntax ----------------------------------------------------


def test_comments_whitespace_and_hash_in_value():
    assert parse_main_cf("# comment\n"
                         "   # indented comment\n"
                         "\n"
                         "  \t\n"
                         "a=1\n"
                         "b \t=   two words  \n"
                         "c = x # not a comment\n"
                         "d =\n", "main.cf") == {
        "a": "1", "b": "two words", "c": "x # not a comment", "d": ""}


def test_continuation_lines_are_appended_as_they_are():
    # Postfix keeps the leading whitespace of a continuation line and drops
    # only the newline; blank and comment lines do not end a logical line.
    text = "a = one\n  two\n# comment\n\n\tthree  \nb = x\n"
    assert parse_main_cf(text, "main.cf") == {"a": "one  two\tthree", "b": "x"}


def test_later_definition_wins_with_a_warning(caplog):
    assert parse_main_cf("a = 1\na = 2\na = 2\n", "/etc/postfix/main.cf") == {"a": "2"}
    assert warnings(caplog) == [
        "/etc/postfix/main.cf, line 2: overriding earlier entry: a=1"]


def test_continuation_at_start_of_file_is_skipped(caplog):
    assert parse_main_cf("  stray = 1\n  more\na = 2\n", "main.cf") == {"a": "2"}
    assert warnings(caplog) == [
        'main.cf, line 1: logical line must not start with whitespace: "  stray = 1  more"']


def test_missing_equals_names_file_and_first_line(tmp_path):
    text = fatal(tmp_path, "a = 1\n\nfoo bar\n  baz\n")
    assert text == (f"{tmp_path}/main.cf, line 3: missing '=' after attribute name: "
                    '"foo bar  baz"')


def test_missing_name(tmp_path):
    assert fatal(tmp_path, "= 1\n").endswith(', line 1: missing attribute name: "= 1"')


def test_read_only_parameters_cannot_be_set(tmp_path):
    cfg = load(tmp_path, "process_name = foo\nservice_name = bar\n"
                         "syslog_name = $process_name/$service_name\n",
               "process_name=baz")
    assert cfg.syslog_name == "tlsmgr/tlsmgr"


# --- expansion ---------------------------------------------------------

NAMES = {"a": "A", "b": "B$a", "empty": "", "dollar": "$$x"}


@pytest.mark.parametrize("value, expected", [
    ("$a", "A"),
    ("${a}", "A"),
    ("$(a)", "A"),
    ("${ a }", "A"),
    ("$a-$b.$(a)/${a}x", "A-BA.A/Ax"),
    ("$$a $$", "$a $"),
    ("$dollar", "$x"),  # a value is expanded once: $$ stays a dollar
    ("$b", "BA"),
    ("[$undefined]", "[]"),
    ("${a?yes}", "yes"),
    ("${a?{yes}}", "yes"),
    ("${a? yes}", " yes"),
    ("${a?x:y}", "x:y"),  # without braces, the text runs to the end
    ("${empty?yes}", ""),
    ("${undefined?yes}", ""),
    ("${empty:no}", "no"),
    ("${undefined:{no}}", "no"),
    ("${a:no}", ""),
    ("${a?{yes}:{no}}", "yes"),
    ("${empty?{yes}:{no}}", "no"),
    ("${empty?{yes} : no}", " no"),
    ("${a?{yes}:no}", "yes"),
    ("$(a?{x})", "x"),
    ("$(a?(x))", "(x)"),
    ("${a?{${b}}}", "BA"),
    ("${a?{${empty:{$b}}}}", "BA"),
    ("${a?{ spaced }}", " spaced "),
    ("${empty?{$$}:{$$x}}", "$x"),
    ("${empty?{$(broken}:{ok}}", "ok"),  # like Postfix, unused text is not parsed
])
def test_expand(value, expected):
    assert expand(value, NAMES.get) == expected


@pytest.mark.parametrize("value, error", [
    ("a$", 'empty macro name: "a$"'),
    ("$-", 'empty macro name: "$-"'),
    ("${}", 'empty macro name: "${}"'),
    ("${a", 'truncated macro reference: "${a"'),
    ("${a b}", 'attribute name syntax error: "a b"'),
    ("${a?{x}y}", '":" expected at: "y"'),
    ("${a:{x}y}", 'unexpected input at: "y"'),
    ("${a?{x}", 'truncated macro reference: "${a?{x}"'),
    ("$(a?{x)", 'unbalanced {} in attribute expression: "{x"'),
    ("${{$a} == {A}?{x}}",
     'unsupported relational expression or function call: "{$a} == {A}?{x}"'),
    ("${fn {x}}", 'unsupported relational expression or function call: "fn {x}"'),
])
def test_expand_errors(value, error):
    with pytest.raises(MacroError) as info:
        expand(value, NAMES.get)
    assert str(info.value) == error


def test_parameters_expand_each_other(tmp_path):
    cfg = load(tmp_path, "data_directory = /srv/$site\n"
                         "site = example\n"
                         "smtpd_tls_session_cache_database = btree:${data_directory}/scache\n"
                         "multi_instance_name = postfix-out\n")
    assert cfg.tls_random_exchange_name == "/srv/example/prng_exch"
    assert cache_of(cfg, "smtpd").database == "btree:/srv/example/scache"
    assert cfg.syslog_name == "postfix-out"
    assert cfg.params["site"] == "example"


@pytest.mark.parametrize("settings, table", [
    ("", "btree:/d/smtpd_scache"),
    ("default_database_type = lmdb\n", "lmdb:/d/smtpd_scache"),
    ("default_database_type = cdb\n", "btree:/d/smtpd_scache"),
    ("default_database_type = lmdb\ndefault_cache_db_type = hash\n", "hash:/d/smtpd_scache"),
])
def test_default_cache_db_type_follows_default_database_type(tmp_path, settings, table):
    # Postfix 3.11: caches may be written ${default_cache_db_type}:path.
    cfg = load(tmp_path, settings + "data_directory = /d\nsmtpd_tls_session_cache_database"
                                    " = ${default_cache_db_type}:${data_directory}/smtpd_scache\n")
    assert cache_of(cfg, "smtpd").database == table


def test_reference_loop_is_fatal_and_names_the_parameter(tmp_path):
    text = fatal(tmp_path, "a = $b\nb = x$a\nsmtpd_tls_loglevel = $a\n")
    assert text.startswith("parameter smtpd_tls_loglevel: unreasonable macro call nesting: ")


def test_bad_known_parameter_is_fatal(tmp_path):
    text = fatal(tmp_path, "tls_random_source = dev:${nowhere\n")
    assert text == ('parameter tls_random_source: truncated macro reference: '
                    '"dev:${nowhere"')


def test_parameters_for_other_daemons_do_not_stop_us(tmp_path):
    cfg = load(tmp_path, "smtpd_relay_restrictions = ${{$x} == {1} ? {a}}\n"
                         "loop = $loop\n"
                         "smtpd_banner = $no_such_parameter ESMTP\n")
    assert "smtpd_relay_restrictions" not in cfg.params
    assert "loop" not in cfg.params
    assert cfg.params["smtpd_banner"] == " ESMTP"


# --- -o overrides -------------------------------------------------------


def test_overrides_win_and_take_part_in_expansion(tmp_path):
    cfg = load(tmp_path, "data_directory = /main\ntls_random_bytes = 16\n",
               "data_directory=/first", "data_directory = /second",
               "tls_random_source=file:$data_directory/seed")
    assert cfg.data_directory == "/second"
    assert cfg.tls_random_exchange_name == "/second/prng_exch"
    assert cfg.tls_random_source == "file:/second/seed"
    assert cfg.tls_random_bytes == 16


@pytest.mark.parametrize("override, error", [
    ("tls_random_bytes", "missing '=' after attribute name"),
    ("=5", "missing attribute name"),
])
def test_bad_override_is_fatal(tmp_path, override, error):
    assert fatal(tmp_path, "", override) == (
        f'invalid "-o {override}" option value: {error}')


# --- typed values -------------------------------------------------------


@pytest.mark.parametrize("value, seconds", [
    ("10", 10), ("10s", 10), ("2m", 120), ("3h", 10800), ("1d", 86400),
    ("2w", 1209600), (" +7m", 420),
    ("5sec", 5), ("1hour", 3600),  # only the first letter counts
])
def test_time_units(tmp_path, value, seconds):
    assert load(tmp_path, f"daemon_timeout = {value}\n").daemon_timeout == seconds


def test_lone_time_unit_is_zero_as_in_postfix(tmp_path):
    cfg = load(tmp_path, "smtpd_tls_session_cache_timeout = h\n")
    assert cache_of(cfg, "smtpd").timeout == 0


@pytest.mark.parametrize("value", [
    "", "ten", "10x", "1.5h", "-1", "10 s", "99999999999", "3000000000s",
    "9999999w",  # overflows a 32-bit int when converted to seconds
])
def test_bad_time_value(tmp_path, value):
    assert fatal(tmp_path, "", "ipc_timeout=" + value) == (
        f"parameter ipc_timeout: bad time value or unit: {value}"
        " (expected a number with an optional unit s, m, h, d or w)")


def test_time_out_of_range(tmp_path):
    assert fatal(tmp_path, "smtpd_tls_session_cache_timeout = 9000000\n") == (
        "invalid smtpd_tls_session_cache_timeout: 9000000 (max 8640000)")
    assert fatal(tmp_path, "daemon_timeout = 0h\n") == "invalid daemon_timeout: 0 (min 1)"


@pytest.mark.parametrize("value", ["", "abc", "32k", "3 2", "4294967296"])
def test_bad_integer(tmp_path, value):
    assert fatal(tmp_path, "", "tls_random_bytes=" + value) == (
        f"bad numerical configuration: tls_random_bytes = {value} (expected an integer)")


def test_integer_out_of_range(tmp_path):
    assert fatal(tmp_path, "tls_random_bytes = 0\n") == (
        "invalid tls_random_bytes parameter value 0 < 1")


# A bad value of one of ours (tlsmgr_*), which only this daemon reads, is
# no reason to stop serving smtpd: a warning that names it and the default.

@pytest.mark.parametrize("setting, warning, name, default", [
    ("tlsmgr_preserve_sessions = yse",
     "bad boolean configuration: tlsmgr_preserve_sessions = yse (expected yes or no); "
     "using the default, tlsmgr_preserve_sessions = no", "tlsmgr_preserve_sessions", False),
    ("tlsmgr_redis_timeout_ms = fast",
     "bad numerical configuration: tlsmgr_redis_timeout_ms = fast (expected an integer); "
     "using the default, tlsmgr_redis_timeout_ms = 250", "tlsmgr_redis_timeout_ms", 250),
    ("tlsmgr_request_size_limit = 1000",
     "invalid tlsmgr_request_size_limit parameter value 1000 < 65536; "
     "using the default, tlsmgr_request_size_limit = 65536", "tlsmgr_request_size_limit", 65536),
    ("tlsmgr_event_loop = twisted",
     "parameter tlsmgr_event_loop: bad value: twisted (expected uvloop or asyncio); "
     "using the default, tlsmgr_event_loop = uvloop", "tlsmgr_event_loop", "uvloop"),
    ("tlsmgr_redis_key_prefix = ${nowhere",
     'parameter tlsmgr_redis_key_prefix: truncated macro reference: "${nowhere"; '
     "using the default, tlsmgr_redis_key_prefix = tlsmgr:", "tlsmgr_redis_key_prefix",
     "tlsmgr:"),
])
def test_a_bad_value_of_ours_is_a_warning_and_the_default(tmp_path, caplog, setting, warning,
                                                           name, default):
    cfg = load(tmp_path, setting + "\n")
    assert warnings(caplog) == [warning]
    assert getattr(cfg, name) == default


def test_a_bad_secret_of_ours_is_not_shown_in_its_warning(tmp_path, caplog):
    cfg = load(tmp_path, "tlsmgr_redis_password = hunter$(2\n")
    assert cfg.tlsmgr_redis_password == ""
    [warning] = warnings(caplog)
    assert "hunter" not in warning
    assert warning.endswith("using the default, tlsmgr_redis_password =")


def test_a_buffer_limit_below_the_request_limit_is_raised_to_it(tmp_path, caplog):
    cfg = load(tmp_path, "tlsmgr_request_size_limit = 131072\n"
                         "tlsmgr_client_buffer_limit = 65536\n")
    assert cfg.tlsmgr_client_buffer_limit == 131072
    assert warnings(caplog) == ["tlsmgr_client_buffer_limit (65536) must be at least "
                                "tlsmgr_request_size_limit (131072): using 131072"]


def test_integer_forms(tmp_path):
    cfg = load(tmp_path, "tls_random_bytes = +64\ntlsmgr_request_size_limit = 1048576\n")
    assert (cfg.tls_random_bytes, cfg.tlsmgr_request_size_limit) == (64, 1048576)


@pytest.mark.parametrize("timeout, effective", [
    ("0", 0), ("1s", 120), ("119", 120), ("2m", 120), ("121", 121), ("8640000", 8640000),
])
def test_cache_timeout_clamp(tmp_path, timeout, effective):
    cfg = load(tmp_path, "smtp_tls_session_cache_database = btree:/x\n"
                         f"smtp_tls_session_cache_timeout = {timeout}\n")
    cache = cache_of(cfg, "smtp")
    assert cache.timeout == effective
    assert cache.enabled == bool(effective)


# --- agreement with Postfix's own postconf -----------------------------

MAIN_CF = """\
# Every syntax feature, for postconf and for us.
data_directory = /srv/postfix/data
queue_directory=/srv/postfix/spool
mail_owner = postfix
mail_owner  =  mailer   # not a comment
multi_instance_name = postfix-out
base = /srv
  # a comment inside a continued line

  /tls
empty =
level = ${multi_instance_name?{2}:{0}} extra
daemon_timeout = 5h
ipc_timeout = 90
tls_random_source = dev:/dev/urandom
tls_random_exchange_name = $(data_directory)/prng-$$exch
tls_random_reseed_period = ${empty:{1}}d
smtpd_tls_session_cache_database = btree:${data_directory}/smtpd_scache
smtp_tls_session_cache_database = ${undefined_thing:{btree:$base/smtp_scache}}
lmtp_tls_session_cache_database = ${empty?{yes}:{btree:$(base)/lmtp}}
smtpd_tls_session_cache_timeout = ${multi_instance_name?2h}
smtp_tls_session_cache_timeout = ${empty:300}
lmtp_tls_loglevel = ${base?{${empty:{1}}}}
smtpd_tls_loglevel = $level
syslog_name = ${multi_instance_name?{$multi_instance_name}:{postfix}}/tls
maillog_file = $queue_directory/$nonexistent/maillog
"""
OVERRIDES = ("tls_random_bytes=64", "smtp_tls_loglevel = $smtpd_tls_loglevel!",
             "ipc_timeout=100")


@pytest.mark.postfix
def test_same_values_as_postconf(tmp_path):
    postconf = require_command("postconf", "postfix")
    cfg = load(tmp_path, MAIN_CF, *OVERRIDES)
    names = comparable_with_postconf(
        [p.name for p in config.PARAMETERS if not p.name.startswith("tlsmgr_")], postconf)
    options = [arg for override in OVERRIDES for arg in ("-o", override)]
    for name in [*names, "base", "level", "empty"]:
        stock = subprocess.run([postconf, "-c", str(tmp_path), *options, "-x", "-h", name],
                               capture_output=True, text=True, check=True).stdout
        # postconf prints each run of whitespace as one space.
        assert " ".join(cfg.params[name].split()) == stock.strip(), name


def test_every_parameter_is_in_configuration_md():
    text = (Path(__file__).resolve().parent.parent / "docs" / "CONFIGURATION.md").read_text()
    missing = [p.name for p in config.PARAMETERS if "`%s`" % p.name not in text]
    assert not missing, "not in docs/CONFIGURATION.md: %s" % ", ".join(missing)
