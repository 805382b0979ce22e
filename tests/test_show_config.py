"""``tlsmgr --show-config [-d]``: the settings in effect, like postconf -n / -d."""

import os
import signal
import subprocess

import pytest
from conftest import require
from helpers.harness import PYTHON, comparable_with_postconf, write_main_cf

from tlsmgr import config
from tlsmgr.config import CACHE_LABELS, PARAMETERS, _cache_parameters
from tlsmgr.daemon import parse_args

POSTCONF = "/usr/sbin/postconf"

# In this order in main.cf; the comments say what --show-config makes of each.
MAIN_CF = {
    "data_directory": "/srv/data",                # set: shown
    "ipc_timeout": "3600s",                       # the default; -o changes it
    "daemon_timeout": "3600",                     # not the default text: shown
    "tls_random_bytes": "64",                     # -o sets it back to the default
    "mail_owner": "postfix",                      # the default; -o changes it
    "smtpd_tls_session_cache_database": "btree:$data_directory/smtpd_scache",  # unexpanded
    "tlsmgr_redis_key_prefix": "mail:\n    tls:",  # a continuation line
    "tlsmgr_connection_limit": "4096",            # ours, the default
    "tlsmgr_request_size_limit": "131072",        # ours, set
    "syslog_name": "",                            # empty, unlike the default
    "relayhost": "[mail.example]",                # not a parameter of ours
}
OVERRIDES = ["ipc_timeout=100", "tls_random_bytes = 32", "mail_owner = mailer"]


def show_config(conf_dir, *args, stdin=None):
    """Run ``tlsmgr --show-config ARGS`` on conf_dir/main.cf, stdin a pipe by default."""
    env = dict(os.environ, MAIL_CONFIG=str(conf_dir))
    return subprocess.run([PYTHON, "-m", "tlsmgr.daemon", "--show-config", *args],
                          env=env, stdin=stdin, input=None if stdin else "",
                          capture_output=True, text=True, timeout=30)


def overrides(*settings):
    return [arg for setting in settings for arg in ("-o", setting)]


def shown(result):
    assert (result.returncode, result.stderr) == (0, "")
    return result.stdout.splitlines()


def test_shows_what_main_cf_and_o_set_unexpanded_and_sorted(tmp_path):
    conf = write_main_cf(tmp_path / "conf", **MAIN_CF)
    assert shown(show_config(conf, *overrides(*OVERRIDES))) == [
        f"config_directory = {conf}",
        "daemon_timeout = 3600",
        "data_directory = /srv/data",
        "ipc_timeout = 100",
        "mail_owner = mailer",
        "smtpd_tls_session_cache_database = btree:$data_directory/smtpd_scache",
        "syslog_name =",
        "tlsmgr_redis_key_prefix = mail: tls:",
        "tlsmgr_request_size_limit = 131072",
    ]


def test_config_directory_is_the_one_read(tmp_path):
    # As in the daemon, main.cf cannot move config_directory.
    conf = write_main_cf(tmp_path / "conf", config_directory="/elsewhere")
    assert shown(show_config(conf)) == [f"config_directory = {conf}"]
    # Nor does a missing main.cf hide which directory was looked at.
    assert shown(show_config(tmp_path / "none")) == [f"config_directory = {tmp_path}/none"]


@pytest.mark.postfix
def test_same_lines_as_postconf_n(tmp_path):
    require(os.path.exists(POSTCONF), f"{POSTCONF} (apt-get install postfix)")
    conf = write_main_cf(tmp_path / "conf", **MAIN_CF)
    stock = subprocess.run([POSTCONF, "-c", str(conf), *overrides(*OVERRIDES), "-n"],
                           capture_output=True, text=True, timeout=30, check=True).stdout
    # postconf -n lists every setting of a parameter it knows (no tlsmgr_
    # one); ours, those of our parameters that differ from their defaults.
    ours_defaults = {f"{p.name} = {p.default}".rstrip() for p in PARAMETERS}
    names = {p.name for p in PARAMETERS if not p.name.startswith("tlsmgr_")}
    expected = [line for line in stock.splitlines()
                if line.split(" =")[0] in names and line not in ours_defaults]
    ours = shown(show_config(conf, *overrides(*OVERRIDES)))
    assert [line for line in ours if not line.startswith("tlsmgr_")] == expected


def test_nothing_set_shows_only_the_directory(tmp_path):
    conf = write_main_cf(tmp_path / "conf", ipc_timeout="3600s", relayhost="x")
    assert shown(show_config(conf)) == [f"config_directory = {conf}"]


def defaults(result):
    """name: default, from the lines of --show-config -d."""
    return {name: value.removeprefix(" ")
            for name, _, value in (line.partition(" =") for line in shown(result))}


def test_defaults_list_every_parameter_once(tmp_path):
    conf = write_main_cf(tmp_path / "conf", **MAIN_CF)
    lines = shown(show_config(conf, "-d", *overrides(*OVERRIDES)))
    names = [line.split(" =")[0] for line in lines]
    assert names == sorted({p.name for p in PARAMETERS})
    # The per-cache parameters are among them, once each.
    assert {p.name for label in CACHE_LABELS for p in _cache_parameters(label)} <= set(names)
    listed = defaults(show_config(conf, "-d"))
    assert listed["ipc_timeout"] == "3600s"
    assert listed["tls_random_bytes"] == "32"
    assert listed["tlsmgr_connection_limit"] == "4096"
    assert listed["tls_random_exchange_name"] == "${data_directory}/prng_exch"
    assert "maillog_file =" in lines
    # Neither main.cf nor -o changes a default.
    assert listed == defaults(show_config(tmp_path / "none", "-d"))


@pytest.mark.postfix
def test_defaults_same_as_postconf_d(tmp_path):
    require(os.path.exists(POSTCONF), f"{POSTCONF} (apt-get install postfix)")
    names = comparable_with_postconf(
        [p.name for p in PARAMETERS if not p.name.startswith("tlsmgr_")], POSTCONF)
    stock = subprocess.run([POSTCONF, "-d", *names], capture_output=True, text=True,
                           timeout=30, check=True).stdout
    ours = [line for line in shown(show_config(tmp_path, "-d"))
            if line.partition("=")[0].strip() in names]
    assert ours == sorted(stock.splitlines())


@pytest.mark.parametrize("args", [[], ["-d"]])
@pytest.mark.parametrize("main_cf, options, error", [
    ("ipc_timeout = 1h\nfoo bar\n", [],
     "{conf}/main.cf, line 2: missing '=' after attribute name: \"foo bar\""),
    ("tls_random_bytes = 0\n", [], "invalid tls_random_bytes parameter value 0 < 1"),
    ("", ["-o", "tls_random_bytes"],
     "invalid \"-o tls_random_bytes\" option value: missing '=' after attribute name"),
    ("tls_random_source = dev:${nowhere\n", [],
     'parameter tls_random_source: truncated macro reference: "dev:${nowhere"'),
])
def test_bad_configuration_is_one_fatal_line(tmp_path, args, main_cf, options, error):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "main.cf").write_text(main_cf)
    result = show_config(conf, *args, *options)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == "tlsmgr: fatal: %s\n" % error.replace("{conf}", str(conf))


def test_opens_nothing_and_works_with_stdin_a_terminal(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    conf = write_main_cf(tmp_path / "conf", data_directory=data,
                         queue_directory=tmp_path / "no-queue",
                         mail_owner="no-such-user",
                         smtpd_tls_session_cache_database="btree:$data_directory/scache",
                         smtp_tls_session_cache_database="redis:unix:/nonexistent/redis",
                         tls_random_source="dev:/nonexistent/random")
    # Without --show-config, this stdin would stop the daemon: "do not run
    # this command by hand".
    controller, terminal = os.openpty()
    try:
        lines = shown(show_config(conf, stdin=terminal))
    finally:
        os.close(controller)
        os.close(terminal)
    assert "smtpd_tls_session_cache_database = btree:$data_directory/scache" in lines
    assert list(data.iterdir()) == []              # no cache, no exchange file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conf", "data"]


def test_a_reader_that_goes_away_ends_it_quietly(tmp_path):
    process = subprocess.Popen([PYTHON, "-m", "tlsmgr.daemon", "--show-config", "-d"],
                               env=dict(os.environ, MAIL_CONFIG=str(tmp_path)),
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    process.stdout.close()                        # as "| head -0" would
    try:
        stderr = process.communicate(timeout=30)[1]
    finally:
        process.kill()
    # Killed by SIGPIPE, like postconf, or done before the reader left.
    assert process.returncode in (0, -signal.SIGPIPE)
    assert stderr == b""


def test_show_config_excludes_listen(tmp_path):
    result = show_config(tmp_path, "--listen", str(tmp_path / "sock"))
    assert result.returncode == 1
    assert result.stderr == (
        "tlsmgr: fatal: argument --listen: not allowed with argument --show-config\n")
    assert list(tmp_path.iterdir()) == []


def test_d_still_means_foreground_without_show_config():
    args = parse_args(["-d", "-l", "-t", "unix", "-n", "tlsmgr"])
    assert args.foreground and not args.show_config
    assert not parse_args(["-l", "-t", "unix"]).foreground
    args = parse_args(["--show-config", "-d"])
    assert args.show_config and args.foreground


def test_show_lists_parameters_only(tmp_path):
    # The function behind the command, on a Config from load().
    (tmp_path / "main.cf").write_text("relayhost = x\ndata_directory = /d\n")
    cfg = config.load(str(tmp_path), ["tls_random_bytes=33"], environ={})
    assert config.show(cfg) == [f"config_directory = {tmp_path}",
                                "data_directory = /d", "tls_random_bytes = 33"]
    assert len(config.show(cfg, defaults=True)) == len({p.name for p in PARAMETERS})
