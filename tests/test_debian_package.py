"""The Debian package (debian/), built and installed as an administrator would.

For Debian 12 (bookworm) and 13 (trixie) each: the package is built with
``dpkg-buildpackage -us -uc -b`` in one pristine root, its build
dependencies from the archive, and lintian looks at it; then it is
installed with ``apt-get install ./tlsmgr_*.deb`` into another pristine
root, which takes Postfix and the Python libraries from the archive.
There Debian's own Postfix, configured by its package ("Local only"), is
switched with ``tlsmgr-ctl install --reload`` as README.Debian says, and
real smtpd processes resume TLS 1.2 sessions (by session id, through the
daemon's cache) and TLS 1.3 sessions (by tickets, with the daemon's keys)
with the tlsmgr service chrooted and not.  Removal is refused while
master.cf selects the daemon; after ``tlsmgr-ctl uninstall``, remove and
purge leave master.cf byte for byte as the Postfix package made it, and
nothing of the package or of what its daemon wrote.

The roots and the built package are cached (helpers/debian_package.py):
a warm run only installs and tests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import require
from helpers import debian_package, prepared
from helpers.debian_roots import _run
from helpers.harness import wait_for
from helpers.smtp_tls import TLS12, TLS13

pytestmark = [pytest.mark.postfix, pytest.mark.timeout(3000)]

DAEMON = "/usr/lib/postfix/sbin/pytlsmgr"
TESTS = Path(__file__).resolve().parent
# What Postfix asks when its package is installed: a working local-only
# configuration, smtpd on the root's own loopback (its network namespace).
PRESEED = ("postfix postfix/main_mailer_type select Local only\n"
           "postfix postfix/mailname string tlsmgr-test.localdomain\n")
# Each connection its own smtpd (so that a session is resumed only through
# tlsmgr), STARTTLS with ssl-cert's certificate, smtpd's session cache on,
# and the log in a file.
MAIN_CF = ["maillog_file=/var/log/postfix.log", "max_use=1",
           "smtpd_tls_cert_file=/etc/ssl/certs/ssl-cert-snakeoil.pem",
           "smtpd_tls_key_file=/etc/ssl/private/ssl-cert-snakeoil.key",
           "smtpd_tls_security_level=may",
           "smtpd_tls_session_cache_database=btree:${data_directory}/smtpd_scache"]
# Two connections for each TLS version, the second offering the first's session.
RESUME = """
import json, sys
sys.path.insert(0, %r)
from helpers.smtp_tls import TLS12, TLS13, client_context, starttls
seen = {}
for version in (TLS12, TLS13):
    context = client_context(version)
    first = starttls("127.0.0.1", 25, context)
    second = starttls("127.0.0.1", 25, context, first.session)
    seen[version] = [first.version, second.resumed]
print(json.dumps(seen))
""" % str(TESTS)


def require_roots() -> None:
    require(os.geteuid() == 0 and all(shutil.which(name) for name in
                                      ("debootstrap", "unshare", "ip")),
            "root, debootstrap, unshare and ip, for Debian roots (apt-get install "
            "debootstrap iproute2; run the tests as root)")


@pytest.fixture(scope="module", params=["bookworm", "trixie"])
def package(request) -> tuple[str, Path]:
    require_roots()
    suite = request.param
    return suite, prepared.ready("package-" + suite,
                                 lambda: debian_package.built_package(suite))


def test_the_package_builds_and_lintian_reports_no_error_or_warning(package):
    suite, built = package
    assert [deb.name for deb in built.glob("tlsmgr_*.deb")] == ["tlsmgr_0.1.0_amd64.deb"]
    lintian = (built / "lintian.txt").read_text()
    assert not re.findall(r"^[EW]: .*", lintian, re.M), lintian


def resume(root: debian_package.Overlay) -> dict[str, list]:
    """What the TLS 1.2 and 1.3 clients saw: the version, whether resumed."""
    output = _run(["ip", "netns", "exec", str(root.netns), sys.executable, "-c", RESUME],
                  "TLS clients resuming through smtpd", 120)
    return json.loads(output)


RESUMED = {TLS12: [TLS12, True], TLS13: [TLS13, True]}


def resumes(root: debian_package.Overlay, what: str, timeout: float = 60) -> None:
    """Wait until both clients resume (after a reload master may still be
    starting the processes): at most *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            seen: object = resume(root)
        except AssertionError as err:
            seen = err
        if seen == RESUMED:
            return
        assert time.monotonic() < deadline, "%s: no resumption: %s" % (what, seen)
        time.sleep(1)


def our_daemons(root: debian_package.Overlay) -> list[tuple[int, Path]]:
    """The running pytlsmgr processes of this root, each with its root
    directory (the jail with chroot=y)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")[:2]
            jail = Path(os.readlink(proc / "root"))
        except (OSError, ValueError):
            continue
        if DAEMON.encode() in argv and jail.is_relative_to(root.root):
            found.append((int(proc.name), jail))
    return found


def reload(root: debian_package.Overlay) -> None:
    """postfix reload, and wait until master has done it."""
    log = root.root / "var" / "log" / "postfix.log"
    done = log.read_text().count("reload -- version")
    root.run(["postfix", "reload"], "postfix reload")
    wait_for(lambda: log.read_text().count("reload -- version") > done, timeout=30,
             what="master to reload")


def state_files(root: debian_package.Overlay) -> set[str]:
    """What is in Postfix's data_directory, where the daemon writes, and
    at the top of its queue_directory, the daemon's jail."""
    data, queue = root.root / "var/lib/postfix", root.root / "var/spool/postfix"
    return {str(path.relative_to(root.root)) for path in (*data.rglob("*"), *queue.iterdir())}


def set_chroot(master_cf: Path, chroot: str) -> None:
    """The tlsmgr service's chroot column, edited by hand as an
    administrator does (postconf -F would write the line in its own
    layout, and the file could not be compared byte for byte)."""
    text, count = re.subn(rb"(?m)^(tlsmgr\s+unix\s+\S+\s+\S+\s+)[yn-](?=\s)",
                          rb"\g<1>" + chroot.encode(), master_cf.read_bytes())
    assert count == 1
    master_cf.write_bytes(text)


def beside_master(root: debian_package.Overlay, *command: str) -> subprocess.CompletedProcess:
    """*command* where master runs: its mount namespace and root, where
    the daemon's processes are seen as a package's maintainer scripts see
    them on a Debian host."""
    pid = (root.root / "var/spool/postfix/pid/master.pid").read_text().split()[0]
    return subprocess.run(["nsenter", "-t", pid, "-m", "-r", "-w", "/usr/bin/env", "-i",
                           "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8",
                           "DEBIAN_FRONTEND=noninteractive", *command],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


def is_installed(root: debian_package.Overlay) -> bool:
    status = root.sh("dpkg-query -W -f '${Status}' tlsmgr 2>/dev/null || true", "dpkg-query")
    return status == "install ok installed"


def test_apt_installs_it_postfix_runs_it_and_purge_leaves_nothing(package):
    suite, built = package
    with debian_package.Overlay(debian_package.pristine(suite), netns=True) as root:
        debs = ((str(built), "debs"),)
        root.sh("printf '%s' | debconf-set-selections && apt-get install -y -qq "
                "--no-install-recommends /debs/tlsmgr_0.1.0_amd64.deb ssl-cert" % PRESEED,
                "apt-get install ./tlsmgr_0.1.0_amd64.deb in %s" % suite, binds=debs)
        master_cf = root.root / "etc" / "postfix" / "master.cf"
        as_made, entries = master_cf.read_bytes(), root.run(["postconf", "-Mf"], "postconf")
        # In place, and nothing of Postfix's changed: master.cf runs the stock tlsmgr.
        daemon = root.root / DAEMON.lstrip("/")
        assert daemon.read_bytes() == (root.root / "usr/bin/pytlsmgr").read_bytes()
        assert root.sh("command -v tlsmgr-ctl", "PATH").strip() == "/usr/bin/tlsmgr-ctl"
        for page in ("usr/share/man/man8/pytlsmgr.8.gz", "usr/share/man/man1/tlsmgr-ctl.1.gz"):
            assert (root.root / page).is_file()
        assert b"README.Debian" not in master_cf.read_bytes()
        assert "tlsmgr-ctl install --reload" in (
            root.root / "usr/share/doc/tlsmgr/README.Debian").read_text()
        assert root.run(["postconf", "-Fh", "tlsmgr/unix/command"], "postconf") == "tlsmgr\n"
        listing = root.run(["dpkg", "-L", "tlsmgr"], "dpkg -L").split()
        # Debian 12's redis-py 4.3 cannot serve a redis: cache: --check says so.
        check = root.sh("pytlsmgr --check -o smtpd_tls_session_cache_database="
                        "redis:redis://127.0.0.1:9/0 2>&1 || true", "pytlsmgr --check")
        assert ("a redis: cache needs redis-py 5.0 or later, and this Python has 4.3.4"
                in check) == (suite == "bookworm"), check
        assert "smtpd_tls_session_cache_database" in check

        root.run(["postconf", "-e", *MAIN_CF], "postconf -e")
        root.run(["postfix", "start"], "postfix start", isolated=True)
        resumes(root, "the stock tlsmgr")
        stock_files = state_files(root)

        switched = root.run(["tlsmgr-ctl", "install", "--reload"], "tlsmgr-ctl install")
        # The package's daemon is used as it is, not replaced by a link of our own.
        assert "daemon: %s (unchanged: the Debian package's)" % DAEMON in switched, switched
        assert daemon.is_file() and not daemon.is_symlink()
        root.run(["postconf", "-e", "tlsmgr_preserve_sessions=yes"], "postconf -e")
        queue = root.root / "var" / "spool" / "postfix"
        for chroot, jail in (("n", root.root), ("y", queue)):
            set_chroot(master_cf, chroot)
            reload(root)
            resumes(root, "pytlsmgr with chroot=%s" % chroot)
            assert [daemon[1] for daemon in our_daemons(root)] == [jail]
            stats = json.loads(root.run(["tlsmgr-ctl", "stats", "--json"], "stats"))
            assert stats["caches"]["smtpd"]["hits"] >= 1
            assert stats["fast_path"] == "compiled"          # the package's own build
            assert stats["requests"]["tktkey"] >= 1
        data = root.root / "var" / "lib" / "postfix"
        wait_for(lambda: (data / "tlsmgr_ticket_keys").exists(), what="saved ticket keys")

        # Removal while master.cf selects the daemon is refused: nothing changes.
        with pytest.raises(AssertionError) as refused:
            root.run(["apt-get", "remove", "-y", "tlsmgr"], "apt-get remove")
        assert "run \"tlsmgr-ctl uninstall --reload\" first" in str(refused.value)
        assert is_installed(root) and daemon.is_file()
        resumes(root, "after the refused removal")
        assert our_daemons(root)

        root.run(["postconf", "-X", "tlsmgr_preserve_sessions"], "postconf -X")
        back = root.run(["tlsmgr-ctl", "uninstall"], "tlsmgr-ctl uninstall")
        assert "(unchanged: the Debian package's)" in back, back
        assert daemon.is_file()                 # the package's, kept
        # Until a reload, master still runs the daemon: removal is refused.
        refused_too = beside_master(root, "apt-get", "remove", "-y", "tlsmgr")
        said = refused_too.stdout + refused_too.stderr
        assert refused_too.returncode != 0 and "pytlsmgr still runs (pid" in said, said
        assert is_installed(root)
        reload(root)
        wait_for(lambda: not our_daemons(root), timeout=30, what="our daemon to stop")
        assert master_cf.read_bytes() == as_made
        assert root.run(["postconf", "-Mf"], "postconf") == entries

        removed = beside_master(root, "apt-get", "remove", "-y", "-qq", "tlsmgr")
        assert removed.returncode == 0, removed.stdout + removed.stderr
        assert not daemon.exists()
        resumes(root, "the stock tlsmgr after removal")
        # What the daemon wrote stays until purge: its keys, its cache files.
        assert (data / "tlsmgr_ticket_keys").exists()
        assert (data / "smtpd_scache.lmdb").exists() and (data / "smtp_scache.lmdb").exists()
        root.run(["apt-get", "purge", "-y", "-qq", "tlsmgr"], "apt-get purge")
        with pytest.raises(AssertionError, match="is not installed"):
            root.run(["dpkg", "-L", "tlsmgr"], "dpkg -L")
        left = [path for path in listing if os.path.lexists(root.root / path.lstrip("/"))
                and not (root.root / path.lstrip("/")).is_dir()]
        assert left == []
        assert not (root.root / "usr/lib/python3/dist-packages/tlsmgr").exists()
        assert state_files(root) - stock_files == set()
        assert master_cf.read_bytes() == as_made
        assert root.run(["postconf", "-Mf"], "postconf") == entries
        log = (root.root / "var" / "log" / "postfix.log").read_text()
        assert not re.search(r"(fatal|panic|warning): .*pytlsmgr", log), log[-3000:]


# The daemon's own tests that need neither Postfix nor Redis, run against
# the installed package and Debian 12's python3-uvloop 0.17,
# python3-prometheus-client 0.16, python3-lmdb and python3-cryptography.
DAEMON_TESTS = ["tests/test_daemon.py", "tests/test_observability.py", "tests/test_stores.py",
                "tests/test_server.py", "tests/test_limits.py", "tests/test_tickets.py",
                "tests/test_prng.py", "tests/test_preserve.py", "tests/test_check.py",
                "tests/test_config.py", "tests/test_control.py", "tests/test_protocol.py",
                "tests/test_seal.py"]
NOT_THERE = [
    # Redis, which Debian 12's redis-py 4.3 cannot serve (unmarked: they use it in part).
    "tests/test_observability.py::test_fleet_keys_count_as_found_fleet_expired_and_unavailable",
    "tests/test_observability.py::test_redis_health_through_an_outage",
    "tests/test_observability.py::test_stats_text_names_the_redis_state",
    # promtool (Debian's prometheus) is not installed there.
    "tests/test_observability.py::test_the_documented_alert_rules_pass_promtool",
]


def test_the_daemons_tests_pass_with_debian_12s_libraries():
    require_roots()
    built = prepared.ready("package-bookworm", lambda: debian_package.built_package("bookworm"))
    with debian_package.Overlay(debian_package.pristine("bookworm")) as root:
        binds = ((str(built), "debs"), (str(TESTS.parent), "src"))
        root.sh("echo 'postfix postfix/main_mailer_type select No configuration' | "
                "debconf-set-selections && apt-get install -y -qq --no-install-recommends "
                "/debs/tlsmgr_0.1.0_amd64.deb python3-pytest python3-pytest-timeout "
                "python3-hypothesis openssl", "installing the package and pytest", binds=binds)
        output = root.sh(
            "cd /src && python3 -c 'import tlsmgr; assert tlsmgr.__file__.startswith("
            "\"/usr/lib/python3/dist-packages/\"), tlsmgr.__file__' && python3 -m pytest "
            "-p no:cacheprovider -q -rs -m 'not redis' %s %s"
            % (" ".join("--deselect " + name for name in NOT_THERE), " ".join(DAEMON_TESTS)),
            "the daemon's tests with Debian 12's libraries", binds=binds,
            env={"CI": "true", "PYTHONDONTWRITEBYTECODE": "1"})
        summary = output.strip().splitlines()[-1]
        assert re.search(r"^=* ?\d+ passed", summary), output[-3000:]
        assert "failed" not in summary and "error" not in summary and "skipped" not in summary
