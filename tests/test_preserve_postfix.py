"""tlsmgr_preserve_sessions under real Postfix (chroot=y, Debian's
default): TLS 1.2 sessions and TLS 1.3 tickets made before "postfix
reload", and before a kill -9 of tlsmgr (with the smtpd processes
restarted too, since smtpd keeps the keys it fetched), resume after it.
With the default they do not, as with the stock daemon."""

import os
import signal
import time

import pytest
from conftest import require
from helpers.harness import wait_for
from helpers.postfix_instance import PostfixInstance, available, handshake

pytestmark = pytest.mark.postfix

TLS12 = ("-tls1_2", "-no_ticket")
TLS13 = ("-tls1_3",)


def instance_with(preserve: str):
    """A Postfix instance with tlsmgr_preserve_sessions = preserve, for a
    module fixture to yield from; destroyed whatever happens."""
    require(available(), "Debian's postfix package and root (apt-get install postfix; "
                         "run the tests as root)")
    made = PostfixInstance(ours=True, chroot=True, tlsmgr_preserve_sessions=preserve)
    try:
        made.start()
        yield made
    finally:
        made.destroy()


@pytest.fixture(scope="module")
def preserving():
    yield from instance_with("yes")


@pytest.fixture(scope="module")
def default():
    yield from instance_with("no")


def sessions_made(instance, tmp_path) -> dict:
    """A session of each kind, saved by openssl; the tlsmgr that served them."""
    files = {}
    for name, args in (("tls12", TLS12), ("tls13", TLS13)):
        files[name] = tmp_path / (name + ".sess")
        assert handshake(instance, *args, "-sess_out", str(files[name])).startswith("New,")
    wait_for(instance.tlsmgr_pids, what="our tlsmgr")
    return files


def offered_again(instance, files) -> dict:
    return {name: handshake(instance, *(TLS12 if name == "tls12" else TLS13),
                            "-sess_in", str(path))
            for name, path in files.items()}


def restarted(instance, before: list[int]):
    wait_for(lambda: instance.tlsmgr_pids() and instance.tlsmgr_pids() != before,
             what="a new tlsmgr process")


def reload_and_offer(instance, files):
    before = instance.tlsmgr_pids()
    instance.postfix("reload")
    wait_for(lambda: not set(before) & set(instance.tlsmgr_pids()), what="the old tlsmgr to go")
    lines = offered_again(instance, files)
    restarted(instance, before)
    return lines


def test_sessions_and_tickets_resume_after_postfix_reload(preserving, tmp_path):
    files = sessions_made(preserving, tmp_path)
    lines = reload_and_offer(preserving, files)
    assert lines["tls12"].startswith("Reused,"), lines
    assert lines["tls13"].startswith("Reused,"), lines
    assert (preserving.data / "tlsmgr_ticket_keys").stat().st_mode & 0o777 == 0o600


def test_sessions_and_tickets_resume_after_kill_9(preserving, tmp_path):
    files = sessions_made(preserving, tmp_path)
    before = preserving.tlsmgr_pids()
    for pid in before:
        os.kill(pid, signal.SIGKILL)
    # smtpd keeps the ticket keys it fetched: its processes go too, so that
    # the next ones ask the new tlsmgr.
    for pid in preserving.pids("smtpd"):
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not preserving.pids("smtpd"), what="the smtpd processes to go")
    time.sleep(1)            # master(8) notices, and starts the next ones on demand
    lines = offered_again(preserving, files)
    restarted(preserving, before)
    assert lines["tls12"].startswith("Reused,"), lines
    assert lines["tls13"].startswith("Reused,"), lines
    tlsmgr_log = [line for line in preserving.log().splitlines() if "postfix/tlsmgr[" in line]
    assert not [line for line in tlsmgr_log if "warning:" in line and "damaged" in line]


def test_with_the_default_nothing_resumes_after_reload_as_with_stock(default, tmp_path):
    files = sessions_made(default, tmp_path)
    lines = reload_and_offer(default, files)
    assert lines["tls12"].startswith("New,"), lines
    assert lines["tls13"].startswith("New,"), lines
    assert not (default.data / "tlsmgr_ticket_keys").exists()
