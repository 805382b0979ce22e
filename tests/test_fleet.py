"""Session resumption across two mail hosts of one pool (fleet.py).

Two Postfix instances, each in its own network namespace, with the same
service name, certificate and key.  A client gets a session from host A
and offers it to host B.  With our daemon both hosts keep sessions and
ticket keys in one Redis, and host B resumes the session; with the stock
daemon each host has only its own cache and keys, and host B starts a
new session: the contrast the docs quote.
"""

import base64
import os

import pytest
from conftest import require, require_command
from helpers.fleet import Fleet
from helpers.harness import REDIS_NEEDED, redis_available
from helpers.postfix_instance import available

from tlsmgr.stores.seal import Seal

pytestmark = pytest.mark.postfix


def require_fleet(*, redis: bool):
    require(os.geteuid() == 0, "root, for network namespaces (run the tests as root)")
    require(available(), "Debian's postfix package and root (apt-get install postfix; "
                         "run the tests as root)")
    require_command("ip", "iproute2")
    require_command("ss", "iproute2")
    require_command("openssl", "openssl")
    if redis:
        require(redis_available(), REDIS_NEEDED)


@pytest.fixture(scope="module")
def our_fleet():
    require_fleet(redis=True)
    with Fleet(ours=True) as fleet:
        yield fleet


@pytest.fixture(scope="module")
def stock_fleet():
    require_fleet(redis=False)
    with Fleet(ours=False) as fleet:
        yield fleet


def made_on_a_offered_to_b(fleet, session_file, *args) -> tuple[str, str]:
    """A new session from host A saved to session_file, then offered to
    host B: openssl's New/Reused line from each."""
    first = fleet.a.handshake(*args, "-sess_out", str(session_file))
    assert first.startswith("New,"), "%s\n%s" % (first, fleet.diagnostics())
    assert session_file.stat().st_size > 0
    second = fleet.b.handshake(*args, "-sess_in", str(session_file))
    return first, second


def test_tls12_session_made_on_one_host_resumes_on_the_other(our_fleet, tmp_path):
    _, on_b = made_on_a_offered_to_b(our_fleet, tmp_path / "tls12.sess",
                                     "-tls1_2", "-no_ticket")
    assert on_b.startswith("Reused,"), "%s\n%s" % (on_b, our_fleet.diagnostics())
    our_fleet.wait_for_daemons()


def test_tls13_ticket_made_on_one_host_resumes_on_the_other(our_fleet, tmp_path):
    _, on_b = made_on_a_offered_to_b(our_fleet, tmp_path / "tls13.sess", "-tls1_3")
    assert on_b.startswith("Reused,"), "%s\n%s" % (on_b, our_fleet.diagnostics())
    our_fleet.wait_for_daemons()


@pytest.mark.parametrize("args", [("-tls1_2", "-no_ticket"), ("-tls1_3",)],
                         ids=["tls1.2", "tls1.3"])
def test_stock_daemon_starts_a_new_session_on_the_other_host(stock_fleet, tmp_path, args):
    session_file = tmp_path / "stock.sess"
    _, on_b = made_on_a_offered_to_b(stock_fleet, session_file, *args)
    assert on_b.startswith("New,"), "%s\n%s" % (on_b, stock_fleet.diagnostics())
    # Not because the session could not be resumed at all: host A resumes it.
    on_a = stock_fleet.a.handshake(*args, "-sess_in", str(session_file))
    assert on_a.startswith("Reused,"), "%s\n%s" % (on_a, stock_fleet.diagnostics())
    stock_fleet.wait_for_daemons()


def test_what_the_hosts_keep_in_redis_is_sealed(our_fleet, tmp_path):
    # After the handshakes above (or these), every session and ticket key
    # in the fleet's Redis opens with the fleet's secret at its own place.
    made_on_a_offered_to_b(our_fleet, tmp_path / "sealed.sess", "-tls1_2", "-no_ticket")
    [line] = our_fleet.secret_file.read_text().split()
    seal = Seal([base64.b64decode(line)])
    client = our_fleet.redis.client()
    sealed = [key for key in client.scan_iter() if b":s:" in key or b":name:" in key
              or b":period:" in key]
    assert any(b":s:" in key for key in sealed) and any(b":name:" in key for key in sealed)
    for key in sealed:
        seal.open(client.get(key), key)          # raises if it does not open
    our_fleet.wait_for_daemons()


def test_hosts_with_one_service_name_do_not_warn_about_it(our_fleet, tmp_path):
    # Each host has read the other's service names and the sessions in
    # Redis (service_names.py): nothing to say when they agree.
    made_on_a_offered_to_b(our_fleet, tmp_path / "quiet.sess", "-tls1_2", "-no_ticket")
    for host in our_fleet.hosts.values():
        log = host.instance.log()
        assert "master.cf service" not in log and "no smtpd here" not in log, log
    assert len(our_fleet.redis.client().hgetall(b"{fleettest:smtpd}:hosts")) == 2
