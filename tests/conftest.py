"""Shared test set-up: where a test needs something the machine lacks."""

import os
import shutil

import pytest
from helpers import harness, prepared

IN_CI = os.environ.get("CI") == "true"


def require(condition: bool, what: str) -> None:
    """Skip when ``what`` is missing, saying how to get it; in CI, fail:
    CI must run every test."""
    if condition:
        return
    if IN_CI:
        pytest.fail("CI=true but this test needs %s" % what)
    pytest.skip("needs %s" % what)


def require_command(name: str, package: str) -> str:
    path = shutil.which(name)
    require(path is not None, "the %s command (apt-get install %s)" % (name, package))
    return path


@pytest.fixture(autouse=True)
def stop_the_daemons_a_test_started():
    """Whatever happened in a test, the daemons it started are stopped
    (those of module-wide fixtures were started before, and are theirs)."""
    before = len(harness.started)
    yield
    for daemon in harness.started[before:]:
        daemon.stop()
    del harness.started[before:]


@pytest.fixture
def redis_server(tmp_path_factory):
    """A private redis-server on a UNIX socket (helpers.harness.Redis)."""
    require(harness.redis_available(), harness.REDIS_NEEDED)
    server = harness.Redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


# The tests in Debian roots come last, so that what they need, begun when
# the run starts, is made while every other test runs.
IN_DEBIAN_ROOTS = ("test_debian_package.py", "test_debian_roots.py")


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: item.path.name in IN_DEBIAN_ROOTS)


def pytest_collection_finish(session):
    """The Debian roots and packages the selected tests need are begun now
    (helpers/prepared.py), when the machine can make them: that is, as
    root with debootstrap."""
    if (os.geteuid() != 0 or shutil.which("debootstrap") is None
            or session.config.option.collectonly):
        return
    files = {item.path.name for item in session.items}
    # In the order the tests come to them (IN_DEBIAN_ROOTS).
    if "test_debian_package.py" in files:
        from helpers import debian_package
        for suite in ("bookworm", "trixie"):
            prepared.begin("package-" + suite,
                           lambda suite=suite: debian_package.built_package(suite))
    if "test_debian_roots.py" in files:
        from helpers.debian_roots import FORKY, TRIXIE
        for root in (TRIXIE, FORKY):
            prepared.begin(root.name, root.ensure)


def pytest_sessionfinish(session):
    prepared.stop()
