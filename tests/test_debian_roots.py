"""The tests again, inside Debian roots of other releases (helpers/debian_roots.py).

Debian 13 (trixie) has Postfix 3.10, Python 3.13 and OpenSSL 3.5, and
both redis-server 8.0 and valkey-server 8.1.  Debian testing (forky) has
Postfix 3.11, the newest stable release in Debian's archive.  The tests
below run inside them with CI=true, so that none of them may skip.

The Postfix-facing tests run in both: the byte-for-byte comparison with
the release's stock tlsmgr, real Postfix with chroot=n and chroot=y
(resumption, reload, the smtp and lmtp clients, tlsproxy, a request
burst), install and uninstall, the daemon as master(8) runs it,
resumption kept across "postfix reload" and kill -9
(tlsmgr_preserve_sessions), the fleet's seal and its secret file, and the
compiled path, built there with its gcc and Python's headers, against
the pure one.  In Debian 13 the fleet (two Postfix hosts resuming each
other's sessions through one Redis), its seal, its smtpd service names,
and the Redis Cluster and Sentinel fault tests run once against
redis-server and once against valkey-server (TLSMGR_REDIS_SERVER).
"""

import os
import re
import shutil

import pytest
from conftest import require
from helpers import prepared
from helpers.debian_roots import FORKY, TRIXIE, install_package

pytestmark = [pytest.mark.postfix, pytest.mark.timeout(3000)]

POSTFIX_FACING = ["tests/test_stock_compat.py", "tests/test_postfix.py",
                  "tests/test_install.py", "tests/test_master.py",
                  "tests/test_preserve_postfix.py", "tests/test_preserve.py",
                  "tests/test_seal.py", "tests/test_fastpath.py"]
REDIS_FACING = ["tests/test_fleet.py", "tests/test_fleet_seal.py", "tests/test_service_names.py",
                "tests/test_redis_faults.py",
                "tests/test_redis.py::test_the_server_that_answers_is_the_one_asked_for"]
SERVERS = {"redis": "/usr/bin/redis-server", "valkey": "/usr/bin/valkey-server"}


def made(root):
    require(os.geteuid() == 0 and shutil.which("debootstrap") is not None
            and shutil.which("unshare") is not None,
            "root, debootstrap and unshare, for a Debian %s root (apt-get install "
            "debootstrap; run the tests as root)" % root.suite)
    prepared.ready(root.name, root.ensure)
    return root


@pytest.fixture(scope="module")
def trixie():
    return made(TRIXIE)


@pytest.fixture(scope="module")
def forky():
    return made(FORKY)


def versions(root, *commands: str) -> list[str]:
    """The first line each command prints, inside root."""
    script = "; ".join("%s | head -n 1" % command for command in commands)
    return root.run(["/bin/sh", "-c", script], "versions").splitlines()


def pass_inside(root, paths: list[str], what: str, **env: str) -> None:
    """paths, run by pytest inside root with CI=true: all pass, none skips."""
    output = root.run(
        ["/bin/sh", "-c", "%s && cd /src && python -m pytest -p no:cacheprovider -q -rs %s"
         % (install_package(), " ".join(paths))], what, env={"CI": "true", **env})
    summary = output.strip().splitlines()[-1]
    assert re.search(r"^=* ?\d+ passed", summary), output[-3000:]
    assert "skipped" not in summary and "failed" not in summary and "error" not in summary


def test_debian_13_has_its_postfix_python_openssl_redis_and_valkey(trixie):
    debian, postfix, python, openssl, redis, valkey = versions(
        trixie, "cat /etc/debian_version", "postconf -d -h mail_version", "python3 --version",
        "openssl version", "redis-server --version", "valkey-server --version")
    assert debian.startswith("13.") and postfix.startswith("3.10.")
    assert python.startswith("Python 3.13.") and openssl.startswith("OpenSSL 3.5")
    assert redis.startswith("Redis server v=8.0."), redis
    assert valkey.startswith("Valkey server v=8.1."), valkey


def test_postfix_facing_tests_pass_on_debian_13(trixie):
    pass_inside(trixie, POSTFIX_FACING, "the Postfix-facing tests inside Debian 13")


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_fleet_and_redis_fault_tests_pass_on_debian_13(trixie, server):
    pass_inside(trixie, REDIS_FACING, "the fleet and Redis tests inside Debian 13 on %s" % server,
                TLSMGR_REDIS_SERVER=SERVERS[server])


def test_debian_testing_has_postfix_3_11(forky):
    suite, postfix = versions(forky, "cat /etc/debian_version", "postconf -d -h mail_version")
    assert suite.startswith("forky/"), suite
    assert postfix.startswith("3.11."), postfix


def test_postfix_facing_tests_pass_with_postfix_3_11(forky):
    pass_inside(forky, POSTFIX_FACING, "the Postfix-facing tests inside Debian forky")
