"""tlsmgr-ctl install / uninstall, against the real postconf on a private
copy of Debian's Postfix configuration.

The configuration directory and the daemon directory are temporary: no
system file is read for writing or touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import require, require_command
from helpers.harness import wait_for
from helpers.postfix_instance import PostfixInstance, available, handshake

from tlsmgr import config
from tlsmgr.admin import ctl, install

pytestmark = pytest.mark.postfix

DEBIAN_MASTER_CF = Path("/usr/share/postfix/master.cf.dist")
# The lines around Debian's tlsmgr entry, for machines without master.cf.dist.
FALLBACK_MASTER_CF = """\
# Postfix master process configuration file.
smtp      inet  n       -       y       -       -       smtpd
pickup    unix  n       -       y       60      1       pickup
cleanup   unix  n       -       y       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
#qmgr     unix  n       -       n       300     1       oqmgr
tlsmgr    unix  -       -       y       1000?   1       tlsmgr
rewrite   unix  -       -       y       -       -       trivial-rewrite
bounce    unix  -       -       y       -       0       bounce
"""
OUR_SCRIPT = Path(sys.executable).parent / "tlsmgr"


@dataclass
class Site:
    config_dir: Path
    daemon_dir: Path

    @property
    def master_cf(self) -> Path:
        return self.config_dir / "master.cf"

    @property
    def link(self) -> Path:
        return self.daemon_dir / "pytlsmgr"

    def postconf(self, *args: str) -> str:
        return subprocess.run(["postconf", "-c", str(self.config_dir), *args],
                              capture_output=True, text=True, check=True, timeout=30).stdout

    def entry(self) -> str:
        """The tlsmgr entry as postconf -Mf shows it."""
        return self.postconf("-Mf", "tlsmgr/unix")

    def field(self, name: str) -> str:
        return self.postconf("-Fh", "tlsmgr/unix/" + name).strip()

    def files(self) -> dict[str, bytes]:
        return {path.name: path.read_bytes() for path in self.config_dir.iterdir()}


@pytest.fixture
def site(tmp_path) -> Site:
    require_command("postconf", "postfix")
    require_command("postfix", "postfix")
    config_dir, daemon_dir = tmp_path / "etc", tmp_path / "sbin"
    config_dir.mkdir()
    daemon_dir.mkdir()
    if DEBIAN_MASTER_CF.exists():
        shutil.copyfile(DEBIAN_MASTER_CF, config_dir / "master.cf")
    else:
        (config_dir / "master.cf").write_text(FALLBACK_MASTER_CF)
    main_cf = config_dir / "main.cf"
    main_cf.write_text("daemon_directory = %s\n" % daemon_dir)
    # postconf waits for a main.cf changed in the last second or so to settle.
    an_hour_ago = time.time() - 3600
    os.utime(main_cf, (an_hour_ago, an_hour_ago))
    return Site(config_dir, daemon_dir)


@pytest.fixture
def root():
    require(os.geteuid() == 0, "root (install writes master.cf and daemon_directory)")


@pytest.fixture
def make_site(root):
    """Makes a private Postfix instance (helpers/postfix_instance.py) with
    these main.cf settings, running the stock tlsmgr, and returns it as a
    Site; it is not started."""
    require(available(), "Debian's postfix package and root (apt-get install postfix)")
    instances = []

    def make(**params: str) -> Site:
        instance = PostfixInstance(ours=False, **params)
        instances.append(instance)
        an_hour_ago = time.time() - 3600
        os.utime(instance.conf / "main.cf", (an_hour_ago, an_hour_ago))
        return Site(instance.conf, instance.daemons)
    yield make
    for instance in instances:
        instance.destroy()


def postconf_warnings(site: Site, *args: str) -> list[str]:
    """What postconf says on stderr about the configuration."""
    done = subprocess.run(["postconf", "-c", str(site.config_dir), *args],
                          capture_output=True, text=True, check=True, timeout=30)
    return done.stderr.splitlines()


def ctl_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """tlsmgr-ctl as an administrator runs it, in a process of its own."""
    environ = {k: v for k, v in os.environ.items() if k != "MAIL_CONFIG"}
    return subprocess.run([sys.executable, "-m", "tlsmgr.admin.ctl", *args], capture_output=True,
                          text=True, timeout=60, env=environ | (env or {}))


def assert_one_line_error(done, *words: str) -> None:
    assert done.returncode == 2, done
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("tlsmgr-ctl: error: ")
    for word in words:
        assert word in lines[0]


# --- the happy path, through the command line ----------------------------

def test_dry_run_changes_nothing_and_prints_the_change(site):
    files, entry = site.files(), site.entry()
    done = ctl_cli("install", "-c", str(site.config_dir), "--dry-run")
    assert done.returncode == 0, done.stderr
    assert site.files() == files
    assert not os.path.lexists(site.link)
    out = done.stdout
    assert "dry run" in out
    assert "  before: " + entry.rstrip("\n") in out.splitlines()
    after = [line for line in out.splitlines() if line.startswith("  after:  ")]
    assert len(after) == 1 and after[0].split()[1:] == entry.split()[:-1] + ["pytlsmgr"]
    assert "%s -> %s (would be created)" % (site.link, OUR_SCRIPT) in out


def test_install_switches_only_the_command(site, root):
    entry, fields = site.entry(), site.postconf("-F", "tlsmgr/unix")
    # Debian's master.cf has chroot y until Postfix 3.10.6-4, n after.
    text, chroot = site.master_cf.read_bytes(), site.field("chroot")
    done = ctl_cli("install", "-c", str(site.config_dir))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""

    assert site.field("command") == "pytlsmgr"
    assert site.field("chroot") == chroot
    changed = set(site.postconf("-F", "tlsmgr/unix").splitlines()) ^ set(fields.splitlines())
    assert changed == {"tlsmgr/unix/command = tlsmgr", "tlsmgr/unix/command = pytlsmgr"}
    assert site.entry().split() == entry.split()[:-1] + ["pytlsmgr"]
    # Every other line of master.cf is as it was.
    old, new = text.splitlines(), site.master_cf.read_bytes().splitlines()
    assert len(old) == len(new)
    assert [a for a, b in zip(old, new) if a != b] == \
        [line for line in old if line.startswith(b"tlsmgr ")]

    assert site.link.is_symlink()
    target = os.readlink(site.link)
    assert os.path.isabs(target) and target == str(OUR_SCRIPT)
    assert os.path.isfile(target) and os.access(target, os.X_OK)

    out = done.stdout.splitlines()
    assert "  before: " + entry.rstrip("\n") in out
    assert "  after:  " + site.entry().rstrip("\n") in out
    assert "symlink: %s -> %s (created)" % (site.link, OUR_SCRIPT) in out
    assert "postfix -c %s reload" % site.config_dir in out[-1]


def test_install_twice_is_idempotent(site, root):
    assert ctl_cli("install", "-c", str(site.config_dir)).returncode == 0
    files, target = site.files(), os.readlink(site.link)
    done = ctl_cli("install", "-c", str(site.config_dir))
    assert done.returncode == 0, done.stderr
    assert "already installed" in done.stdout
    assert site.files() == files and os.readlink(site.link) == target


def test_uninstall_restores_the_original_entry(site, root):
    entry, text, chroot = site.entry(), site.master_cf.read_bytes(), site.field("chroot")
    assert ctl_cli("install", "-c", str(site.config_dir)).returncode == 0
    installed = site.entry()

    dry = ctl_cli("uninstall", "-c", str(site.config_dir), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert site.entry() == installed and site.link.is_symlink()
    assert "would be removed" in dry.stdout

    done = ctl_cli("uninstall", "-c", str(site.config_dir))
    assert done.returncode == 0, done.stderr
    assert site.entry() == entry
    assert site.field("chroot") == chroot
    assert not os.path.lexists(site.link)
    # postconf writes the entry in its own layout ("tlsmgr     unix" for
    # Debian's "tlsmgr    unix"); the columns are given back.
    assert site.master_cf.read_bytes() == text
    out = done.stdout.splitlines()
    assert "  before: " + installed.rstrip("\n") in out
    assert "  after:  " + entry.rstrip("\n") in out
    assert "symlink: %s: removed (was -> %s)" % (site.link, OUR_SCRIPT) in out


def test_uninstall_when_not_installed(site):
    files = site.files()
    done = ctl_cli("uninstall", "-c", str(site.config_dir))
    assert done.returncode == 0, done.stderr
    assert "not installed" in done.stdout
    assert site.files() == files


def test_mail_config_names_the_directory(site):
    done = ctl_cli("install", "--dry-run", env={"MAIL_CONFIG": str(site.config_dir)})
    assert done.returncode == 0, done.stderr
    assert str(site.master_cf) in done.stdout


def test_command_arguments_are_kept(site, root):
    site.postconf("-F", "tlsmgr/unix/command=tlsmgr -o syslog_name=postfix/tls")
    entry = site.entry()
    assert ctl_cli("install", "-c", str(site.config_dir)).returncode == 0
    assert site.field("command") == "pytlsmgr -o syslog_name=postfix/tls"
    assert ctl_cli("uninstall", "-c", str(site.config_dir)).returncode == 0
    assert site.entry() == entry


def test_an_old_symlink_is_replaced(site, root):
    site.link.symlink_to("/nonexistent/bin/tlsmgr")
    done = ctl_cli("install", "-c", str(site.config_dir))
    assert done.returncode == 0, done.stderr
    assert os.readlink(site.link) == str(OUR_SCRIPT)
    assert "replaced (was -> /nonexistent/bin/tlsmgr)" in done.stdout


def test_a_packaged_daemon_is_used_as_it_is_and_kept(site, root, tmp_path):
    # A pytlsmgr that dpkg-query -S knows is a Debian package's (the
    # tlsmgr package ships one, a file): install does not replace it,
    # uninstall does not remove it, whatever tlsmgr-ctl runs them.
    site.link.write_text("#!/bin/sh\n")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "dpkg-query").write_text('#!/bin/sh\n[ "$1 $2" = "-S %s" ] && echo "tlsmgr: $2"\n'
                                     % site.link)
    (fake / "dpkg-query").chmod(0o755)
    env = {"PATH": "%s:%s" % (fake, os.environ["PATH"])}
    done = ctl_cli("install", "-c", str(site.config_dir), env=env)
    assert done.returncode == 0, done.stderr
    assert site.field("command") == "pytlsmgr"
    assert site.link.read_text() == "#!/bin/sh\n"
    assert "daemon: %s (unchanged: the Debian package's)" % site.link in done.stdout
    assert ctl_cli("install", "-c", str(site.config_dir), env=env).stdout.startswith(
        "already installed")
    done = ctl_cli("uninstall", "-c", str(site.config_dir), env=env)
    assert done.returncode == 0, done.stderr
    assert site.field("command") == "tlsmgr"
    assert site.link.read_text() == "#!/bin/sh\n"
    done = ctl_cli("uninstall", "-c", str(site.config_dir), env=env)
    assert done.stdout.startswith("not installed") and "the Debian package's" in done.stdout
    # Without the package, the same file is no one's: refused, as before.
    assert_one_line_error(ctl_cli("install", "-c", str(site.config_dir)), "not a symlink")


def test_reload_failure_is_reported(site, root):
    # postfix -c DIR reload fails: the private daemon_directory has no
    # postfix-script.  The change is made all the same.
    done = ctl_cli("install", "-c", str(site.config_dir), "--reload")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1
    assert "reload failed" in done.stderr and "change itself is made" in done.stderr
    assert site.field("command") == "pytlsmgr"


# --- errors: one line, exit status 2, nothing changed ----------------------

def test_no_tlsmgr_service(site):
    text = site.master_cf.read_text()
    site.master_cf.write_text("".join(line for line in text.splitlines(True)
                                      if not line.startswith("tlsmgr ")))
    files = site.files()
    assert_one_line_error(ctl_cli("install", "-c", str(site.config_dir)),
                          "no tlsmgr/unix service", "tlsmgr unix - - y 1000? 1 tlsmgr")
    assert site.files() == files
    assert not os.path.lexists(site.link)


def test_no_master_cf(site):
    site.master_cf.unlink()
    for action in ("install", "uninstall"):
        assert_one_line_error(ctl_cli(action, "-c", str(site.config_dir)),
                              "no master.cf in %s" % site.config_dir, "-c DIR")
    assert not os.path.lexists(site.link)


def test_a_regular_file_named_pytlsmgr(site):
    site.link.write_text("#!/bin/sh\n")
    files = site.files()
    for action in ("install", "uninstall"):
        assert_one_line_error(ctl_cli(action, "-c", str(site.config_dir)),
                              str(site.link), "not a symlink")
    assert site.files() == files
    assert site.link.read_text() == "#!/bin/sh\n"


def test_a_foreign_command(site):
    site.postconf("-F", "tlsmgr/unix/command=othertlsmgr")
    assert_one_line_error(ctl_cli("install", "-c", str(site.config_dir)),
                          "'othertlsmgr'", "by hand")


def test_postconf_failing(site):
    (site.config_dir / "main.cf").unlink()
    assert_one_line_error(ctl_cli("install", "-c", str(site.config_dir)),
                          "postconf", "main.cf")


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    status = ctl.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_not_root(site, capsys, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    files = site.files()
    status, out, err = run_main(capsys, "install", "-c", str(site.config_dir))
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and "must be root" in err and "--dry-run" in err
    assert site.files() == files and not os.path.lexists(site.link)
    # A dry run needs no root.
    status, out, err = run_main(capsys, "install", "-c", str(site.config_dir), "--dry-run")
    assert status == 0 and "dry run" in out


def test_postconf_missing(site, capsys, monkeypatch):
    monkeypatch.setattr(install, "find_program", lambda name: None)
    status, out, err = run_main(capsys, "install", "-c", str(site.config_dir))
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and "postconf not found" in err and "apt-get install" in err


def test_with_name_keeps_the_arguments():
    assert install.with_name("tlsmgr", "pytlsmgr") == "pytlsmgr"
    assert install.with_name("tlsmgr -v -o a=b", "pytlsmgr") == "pytlsmgr -v -o a=b"


# --- postconf's "unused parameter" warnings -------------------------------

def test_install_refers_to_our_parameters_so_postconf_stops_warning(make_site):
    site = make_site(tlsmgr_connection_limit="100", tlsmgr_redis_password="s3cret",
                     tlsmgr_conection_limit="1")              # misspelt
    site.postconf("-F", "tlsmgr/unix/command=tlsmgr -o tlsmgr_event_loop=asyncio")
    main_cf, master_cf = site.config_dir / "main.cf", site.master_cf
    misspelt = "postconf: warning: %s: unused parameter: tlsmgr_conection_limit=1" % main_cf
    assert sorted(postconf_warnings(site)) == sorted([
        "postconf: warning: %s: unused parameter: tlsmgr_connection_limit=100" % main_cf,
        "postconf: warning: %s: unused parameter: tlsmgr_redis_password=s3cret" % main_cf,
        misspelt,
        "postconf: warning: %s: unused parameter: tlsmgr_event_loop=asyncio" % master_cf])

    done = ctl_cli("install", "-c", str(site.config_dir))
    assert done.returncode == 0, done.stderr
    assert "s3cret" not in done.stdout
    assert site.field("command").startswith("pytlsmgr ")
    # Ours are used now; what this daemon does not read is still reported.
    assert postconf_warnings(site) == [misspelt]
    assert postconf_warnings(site, "-n") == [misspelt]
    assert postconf_warnings(site, "-Mf") == []
    assert "tlsmgr_connection_limit = 100" in site.postconf("-n").splitlines()


def test_install_again_follows_the_parameters_main_cf_sets(make_site):
    site = make_site(tlsmgr_connection_limit="100")
    plain = site.entry()
    assert ctl_cli("install", "-c", str(site.config_dir)).returncode == 0
    site.postconf("-e", "tlsmgr_metrics_listen=9100")
    assert postconf_warnings(site) == [
        "postconf: warning: %s/main.cf: unused parameter: tlsmgr_metrics_listen=9100"
        % site.config_dir]
    done = ctl_cli("install", "-c", str(site.config_dir))
    assert done.returncode == 0, done.stderr
    assert "already installed" not in done.stdout
    assert postconf_warnings(site) == []

    # A $name of a parameter set nowhere is "undefined" to postconf.
    site.postconf("-X", "tlsmgr_connection_limit")
    assert postconf_warnings(site) == [
        "postconf: warning: %s: undefined parameter: tlsmgr_connection_limit" % site.master_cf]
    assert ctl_cli("install", "-c", str(site.config_dir)).returncode == 0
    assert postconf_warnings(site) == []

    # With none of ours set, the entry has no -o of ours either.
    site.postconf("-X", "tlsmgr_metrics_listen")
    assert ctl_cli("install", "-c", str(site.config_dir)).returncode == 0
    assert site.entry().split() == plain.split()[:-1] + ["pytlsmgr"]
    assert ctl_cli("install", "-c", str(site.config_dir)).stdout.startswith("already installed")


def test_uninstall_leaves_master_cf_as_it_was_byte_for_byte(make_site):
    site = make_site(tlsmgr_connection_limit="100", tlsmgr_event_loop="asyncio")
    # postconf writes the entry it edits in its own layout: start from
    # that layout, as after any earlier postconf -F (the round trip from
    # Debian's own layout keeps the words: see the test above).
    site.postconf("-F", "tlsmgr/unix/command=tlsmgr -o syslog_name=postfix/tls")
    text = site.master_cf.read_bytes()
    assert ctl_cli("install", "-c", str(site.config_dir)).returncode == 0
    assert install.REFERENCE.encode() in site.master_cf.read_bytes()
    done = ctl_cli("uninstall", "-c", str(site.config_dir), "--fix-settings")
    assert done.returncode == 0, done.stderr
    assert site.master_cf.read_bytes() == text


def test_the_reference_changes_nothing_the_daemon_reads(tmp_path):
    (tmp_path / "main.cf").write_text(
        "tlsmgr_connection_limit = 100\ntlsmgr_redis_password = s3cret\n"
        "smtpd_tls_session_cache_database = btree:${data_directory}/smtpd_scache\n")
    value = install.reference_value({"tlsmgr_connection_limit", "tlsmgr_redis_password"})
    assert value is not None
    assert install.REFERENCE not in {parameter.name for parameter in config.PARAMETERS}
    plain = config.load(str(tmp_path))
    referred = config.load(str(tmp_path), ["%s=%s" % (install.REFERENCE, value)])
    assert referred.params[install.REFERENCE] == ""         # no copy of the password
    assert {name: value for name, value in referred.params.items()
            if name != install.REFERENCE} == dict(plain.params)
    assert config.show(referred) == config.show(plain)


def test_the_daemon_runs_under_master_with_the_reference(tmp_path):
    require(available(), "Debian's postfix package and root (apt-get install postfix; "
                         "run the tests as root)")
    instance = PostfixInstance(ours=False, tlsmgr_connection_limit="100")
    try:
        instance.start()
        done = ctl_cli("install", "-c", str(instance.conf), "--reload")
        assert done.returncode == 0, done.stderr
        session = tmp_path / "session"
        assert handshake(instance, "-tls1_2", "-no_ticket", "-sess_out", str(session)) \
            .startswith("New,")
        assert handshake(instance, "-tls1_2", "-no_ticket", "-sess_in", str(session)) \
            .startswith("Reused,")
        [pid] = instance.tlsmgr_pids(ours=True)
        argv = Path("/proc/%d/cmdline" % pid).read_bytes().decode().split("\0")
        assert "%s=%s" % (install.REFERENCE, install.reference_value(
            {"tlsmgr_connection_limit"})) in argv
        assert "fatal" not in instance.log()
        done = ctl_cli("uninstall", "-c", str(instance.conf), "--reload", "--fix-settings")
        assert done.returncode == 0, done.stderr
        wait_for(lambda: not instance.tlsmgr_pids(ours=True), timeout=30,
                 what="our tlsmgr to exit")
    finally:
        instance.destroy()


# --- uninstall: what the stock tlsmgr cannot do ---------------------------

REDIS_URL = "redis://fleet:s3cret@redis.example:6379/0"


def site_with_leftovers(make_site) -> Site:
    """A site whose main.cf and tlsmgr entry ask what only this daemon does."""
    site = make_site(smtpd_tls_session_cache_database="redis:" + REDIS_URL,
                     smtp_tls_session_cache_database="memory:",
                     lmtp_tls_session_cache_database="btree:${data_directory}/lmtp_scache",
                     tlsmgr_connection_limit="100", tlsmgr_redis_password="s3cret")
    site.postconf("-F", "tlsmgr/unix/command=tlsmgr -o tlsmgr_event_loop=asyncio "
                        "-o lmtp_tls_session_cache_database=memory:")
    return site


def assert_leftovers_named(site: Site, stderr: str) -> None:
    main_cf, entry = site.config_dir / "main.cf", "%s: tlsmgr/unix" % site.master_cf
    named = [
        (main_cf, '"smtpd_tls_session_cache_database = '
                  'redis:redis://fleet:****@redis.example:6379/0"'),
        (main_cf, '"smtp_tls_session_cache_database = memory:"'),
        (entry, '"lmtp_tls_session_cache_database = memory:"'),
        (main_cf, "tlsmgr_connection_limit"),
        (main_cf, "tlsmgr_redis_password"),
        (entry, "tlsmgr_event_loop"),
    ]
    lines = stderr.splitlines()
    assert len(lines) == len(named), stderr
    for line, (where, setting) in zip(lines, named):
        assert line.startswith("tlsmgr-ctl: warning: %s: %s: " % (where, setting)), line
    assert "s3cret" not in stderr


def assert_only_stock_settings(site: Site) -> None:
    settings = site.postconf("-n") + site.postconf("-P", "tlsmgr/unix")
    assert "redis:" not in settings and "memory:" not in settings
    assert "tlsmgr_" not in settings
    # postconf -n leaves out what it takes for unused: look at the files too.
    for path in (site.config_dir / "main.cf", site.master_cf):
        assert b"tlsmgr_" not in path.read_bytes().replace(b"tlsmgr ", b"")
    assert postconf_warnings(site) == []
    assert site.postconf("-h", "smtpd_tls_session_cache_database").strip() == \
        "btree:${data_directory}/smtpd_scache"
    assert site.postconf("-h", "lmtp_tls_session_cache_database").strip() == \
        "btree:${data_directory}/lmtp_scache"
    assert site.postconf("-Ph", "tlsmgr/unix/lmtp_tls_session_cache_database").strip() == \
        "btree:${data_directory}/lmtp_scache"


def test_uninstall_names_what_the_stock_tlsmgr_cannot_do(make_site):
    site = site_with_leftovers(make_site)
    assert ctl_cli("install", "-c", str(site.config_dir)).returncode == 0
    main_cf = (site.config_dir / "main.cf").read_bytes()
    done = ctl_cli("uninstall", "-c", str(site.config_dir))
    assert done.returncode == 0, done.stderr
    assert site.field("command") == "tlsmgr -o tlsmgr_event_loop=asyncio " \
                                    "-o lmtp_tls_session_cache_database=memory:"
    assert not os.path.lexists(site.link)
    assert (site.config_dir / "main.cf").read_bytes() == main_cf
    assert_leftovers_named(site, done.stderr)
    # The commands it prints, run as printed, leave only what stock uses.
    out = done.stdout.splitlines()
    first = out.index("to leave the stock tlsmgr settings it can use, give "
                      "--fix-settings, or run:") + 1
    commands = [line.strip() for line in out[first:] if line.startswith("  postconf ")]
    assert len(commands) == 4
    for line in commands:
        subprocess.run(line, shell=True, check=True, timeout=30)
    assert_only_stock_settings(site)
    # Then nothing more is said.
    done = ctl_cli("uninstall", "-c", str(site.config_dir))
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.startswith("not installed") and "postconf" not in done.stdout


def test_uninstall_fix_settings_leaves_only_what_stock_uses(make_site):
    site = site_with_leftovers(make_site)
    assert ctl_cli("install", "-c", str(site.config_dir)).returncode == 0
    files = site.files()
    dry = ctl_cli("uninstall", "-c", str(site.config_dir), "--fix-settings", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert site.files() == files
    assert "settings the stock tlsmgr cannot use: would be changed with" in dry.stdout

    done = ctl_cli("uninstall", "-c", str(site.config_dir), "--fix-settings")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "settings the stock tlsmgr cannot use: changed with" in done.stdout
    assert "s3cret" not in done.stdout
    assert site.field("command") == "tlsmgr -o lmtp_tls_session_cache_database=" \
                                    "btree:${data_directory}/lmtp_scache"
    assert not os.path.lexists(site.link)
    assert_only_stock_settings(site)


def test_uninstall_when_not_installed_still_names_and_fixes_them(make_site):
    site = site_with_leftovers(make_site)
    done = ctl_cli("uninstall", "-c", str(site.config_dir))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("not installed")
    assert_leftovers_named(site, done.stderr)
    done = ctl_cli("uninstall", "-c", str(site.config_dir), "--fix-settings")
    assert done.returncode == 0, done.stderr
    assert_only_stock_settings(site)


def test_uninstall_says_nothing_of_a_configuration_stock_can_use(make_site):
    site = make_site()
    assert ctl_cli("install", "-c", str(site.config_dir)).returncode == 0
    files = site.files()
    done = ctl_cli("uninstall", "-c", str(site.config_dir))
    assert done.returncode == 0
    assert done.stderr == ""
    assert "fix-settings" not in done.stdout and "stock tlsmgr cannot" not in done.stdout
    changed = {name for name in files if site.files()[name] != files[name]}
    assert changed == {"master.cf"}
