"""The Postfix-facing tests again, inside a Debian 13 root (helpers/debian13.py).

Debian 13 has Postfix 3.10, Python 3.13 and OpenSSL 3.5.  The tests below
are run there against that release's own postfix, python3 and openssl,
with CI=true, so that none of them may skip: the byte-for-byte comparison
with its stock tlsmgr, real Postfix with chroot=n and chroot=y (resumption,
reload, the smtp and lmtp clients, tlsproxy, a request burst), install and
uninstall, the daemon as master(8) runs it, resumption kept across
"postfix reload" and kill -9 (tlsmgr_preserve_sessions), the fleet's
seal and its secret file, and the compiled path, built there with its
gcc and Python 3.13's headers, against the pure one.
"""

import os
import re
import shutil

import pytest
from conftest import require
from helpers import debian13

pytestmark = [pytest.mark.postfix, pytest.mark.timeout(3000)]

INSIDE = ["tests/test_stock_compat.py", "tests/test_postfix.py", "tests/test_install.py",
          "tests/test_master.py", "tests/test_preserve_postfix.py", "tests/test_preserve.py",
          "tests/test_seal.py", "tests/test_fastpath.py"]


@pytest.fixture(scope="module")
def root():
    require(os.geteuid() == 0 and shutil.which("debootstrap") is not None
            and shutil.which("unshare") is not None,
            "root, debootstrap and unshare, for a Debian 13 root (apt-get install "
            "debootstrap; run the tests as root)")
    debian13.ensure()
    return debian13


def test_the_root_is_debian_13_with_its_postfix_python_and_openssl(root):
    versions = root.run(["/bin/sh", "-c", "cat /etc/debian_version; postconf -d -h "
                         "mail_version; python3 --version; openssl version"], "versions")
    debian, postfix, python, openssl = versions.splitlines()[:4]
    assert debian.startswith("13.") and postfix.startswith("3.10.")
    assert python.startswith("Python 3.13.") and openssl.startswith("OpenSSL 3.5")


def test_postfix_facing_tests_pass_on_debian_13(root):
    output = root.run(
        ["/bin/sh", "-c", "%s && cd /src && python -m pytest -p no:cacheprovider -q -rs %s"
         % (root.install_package(), " ".join(INSIDE))],
        "the Postfix-facing tests inside Debian 13", env={"CI": "true"})
    summary = output.strip().splitlines()[-1]
    assert re.search(r"^=* ?\d+ passed", summary), output[-3000:]
    assert "skipped" not in summary and "failed" not in summary and "error" not in summary
