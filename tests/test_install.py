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

from tlsmgr import ctl, install

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


def ctl_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """tlsmgr-ctl as an administrator runs it, in a process of its own."""
    environ = {k: v for k, v in os.environ.items() if k != "MAIL_CONFIG"}
    return subprocess.run([sys.executable, "-m", "tlsmgr.ctl", *args], capture_output=True,
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


def without_whitespace(text: bytes) -> list[list[bytes]]:
    return [line.split() for line in text.splitlines()]


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
    text = site.master_cf.read_bytes()
    done = ctl_cli("install", "-c", str(site.config_dir))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""

    assert site.field("command") == "pytlsmgr"
    assert site.field("chroot") == "y"
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
    entry, text = site.entry(), site.master_cf.read_bytes()
    assert ctl_cli("install", "-c", str(site.config_dir)).returncode == 0
    installed = site.entry()

    dry = ctl_cli("uninstall", "-c", str(site.config_dir), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert site.entry() == installed and site.link.is_symlink()
    assert "would be removed" in dry.stdout

    done = ctl_cli("uninstall", "-c", str(site.config_dir))
    assert done.returncode == 0, done.stderr
    assert site.entry() == entry
    assert site.field("chroot") == "y"
    assert not os.path.lexists(site.link)
    # postconf writes the entry in its own layout: the same words, and
    # every other line byte for byte.
    assert without_whitespace(site.master_cf.read_bytes()) == without_whitespace(text)
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
