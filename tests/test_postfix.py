"""Real Postfix (Debian's package) with this daemon as its tlsmgr.

A private instance per chroot setting: master(8) starts our daemon from
its master.cf, smtpd and smtp processes use it, and each check looks at
what a user would: openssl's "Reused", smtp's "Reusing old session", the
daemon's process, its exchange file and its log lines in maillog_file.
The daemon stays through a burst of requests while TLS clients resume.
The other clients of tlsmgr are checked against real peers too: tlsproxy(8)
behind postscreen(8), and the LMTP client delivering to an LMTP server.
"""

import json
import re
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.lmtp import LMTP
from conftest import require, require_command
from helpers.harness import build_loadgen, free_tcp_port, loadgen_burst, wait_for
from helpers.postfix_instance import PostfixInstance, available, handshake
from helpers.smtp_tls import TLS12, TLS13, ResumingClients, client_context, starttls

pytestmark = pytest.mark.postfix


@pytest.fixture(scope="module", params=[False, True], ids=["chroot=n", "chroot=y"])
def instance(request):
    require(available(), "Debian's postfix package and root (apt-get install postfix; "
                         "run the tests as root)")
    made = PostfixInstance(ours=True, chroot=request.param,
                           tlsmgr_metrics_listen=str(free_tcp_port()))
    try:
        made.start()
        yield made
    finally:
        made.destroy()


def smtpd_pids(instance) -> list[int]:
    return [int(pid) for pid in re.findall(
        r"postfix/smtpd\[(\d+)\]: Anonymous TLS connection established", instance.log())]


def resumed_across_processes(instance, session_file: Path, *args):
    first = handshake(instance, *args, "-sess_out", str(session_file))
    assert first.startswith("New,")
    second = handshake(instance, *args, "-sess_in", str(session_file))
    assert second.startswith("Reused,"), second
    pids = smtpd_pids(instance)
    assert len(pids) >= 2 and pids[-1] != pids[-2]     # two different smtpd processes


def test_our_daemon_is_the_tlsmgr(instance):
    handshake(instance, "-tls1_2")
    wait_for(lambda: instance.tlsmgr_pids(), what="our tlsmgr process")
    [pid] = instance.tlsmgr_pids()
    status = Path("/proc/%d/status" % pid).read_text()
    uid = int(re.search(r"^Uid:\s+(\d+)", status, re.M)[1])
    import pwd
    assert uid == pwd.getpwnam("postfix").pw_uid               # -u: mail_owner
    root = Path("/proc/%d/root" % pid).resolve()
    assert root == (instance.queue if instance.chroot else Path("/"))


def test_stats_and_metrics_under_master(instance, tmp_path):
    # Under master(8), as mail_owner (and in the jail with chroot=y): root's
    # tlsmgr-ctl is served, and the metrics were bound before the jail.
    resumed_across_processes(instance, tmp_path / "stats.sess", "-tls1_2", "-no_ticket")
    ctl = subprocess.run([sys.executable, "-m", "tlsmgr.admin.ctl", "--socket",
                          str(instance.queue / "private" / "tlsmgr"), "stats", "--json"],
                         capture_output=True, text=True, timeout=30)
    assert ctl.returncode == 0, ctl.stderr
    stats = json.loads(ctl.stdout)
    smtpd = stats["caches"]["smtpd"]
    assert smtpd["updates"] >= 1 and smtpd["hits"] >= 1       # the resumption above
    assert stats["requests"]["update"] >= 1
    port = re.search(r"tlsmgr_metrics_listen = (\d+)",
                     (instance.conf / "main.cf").read_text())[1]
    with urllib.request.urlopen("http://127.0.0.1:%s/metrics" % port, timeout=10) as page:
        text = page.read().decode()
    hits = re.search(r'^tlsmgr_cache_hits_total\{cache="smtpd"\} (\S+)$', text, re.M)
    assert hits and float(hits[1]) >= smtpd["hits"]


def test_tls12_session_id_resumption(instance):
    resumed_across_processes(instance, instance.root / "tls12.sess",
                             "-tls1_2", "-no_ticket")


def test_tls13_ticket_resumption(instance):
    resumed_across_processes(instance, instance.root / "tls13.sess", "-tls1_3")


def test_smtp_client_reuses_sessions_from_its_cache(instance):
    instance.send_mail("first@example.com", "first")
    instance.wait_for_log("to=<first@example.com>, relay=127.0.0.1")
    instance.send_mail("second@example.com", "second")
    log = instance.wait_for_log("to=<second@example.com>, relay=127.0.0.1")
    assert "Reusing old session" in log
    assert re.search(r"postfix/tlsmgr\[\d+\]: lookup smtp session id=smtp&", log)


def test_daemon_log_lines_land_in_maillog_file(instance):
    log = instance.wait_for_log("postfix/tlsmgr[")
    assert re.search(r"^\w{3} [ \d]\d \d\d:\d\d:\d\d tlsmgr-test postfix/tlsmgr\[\d+\]: "
                     r"open smtp TLS cache btree:", log, re.M)


def tlsmgr_warnings(instance) -> list[str]:
    return re.findall(r"postfix/tlsmgr\[\d+\]: (?:warning|error|fatal|panic): .*",
                      instance.log())


def test_daemon_stays_through_a_request_burst_while_clients_resume(instance, tmp_path):
    # A busy host: 8 connections ask for ticket keys without pause for 5
    # seconds while TLS clients resume their sessions through smtpd, and
    # master(8) reads its status channel as it can.  The daemon must stay:
    # a new one would start with empty caches and new ticket keys.
    require_command("gcc", "gcc")
    loadgen = build_loadgen(tmp_path)
    warnings_before = tlsmgr_warnings(instance)
    with ResumingClients("127.0.0.1", instance.port, count=8) as clients:
        wait_for(lambda: clients.tally.offered.total() >= 8, timeout=30,
                 what="the clients to offer sessions")
        [pid] = instance.tlsmgr_pids()
        clients.next_tally()
        burst = loadgen_burst(loadgen, instance.queue / "private" / "tlsmgr", seconds=5)
        time.sleep(1)
        during = clients.next_tally()
    assert burst["errors"] == burst["closed"] == 0 and burst["requests"] > 1000
    assert burst["statuses"] == {"0": burst["requests"]}
    assert instance.tlsmgr_pids() == [pid]
    assert dict(during.errors) == {}
    assert during.offered[TLS12] > 0 and during.offered[TLS13] > 0
    assert during.resumed == during.offered, during
    assert tlsmgr_warnings(instance) == warnings_before


def test_reload_restarts_the_daemon_and_rewrites_the_exchange_file(instance):
    handshake(instance, "-tls1_2")
    wait_for(lambda: instance.tlsmgr_pids(), what="our tlsmgr process")
    [before_pid] = instance.tlsmgr_pids()
    exchange = instance.data / "prng_exch"
    before = exchange.read_bytes()
    instance.postfix("reload")
    wait_for(lambda: before_pid not in instance.tlsmgr_pids(), timeout=30,
             what="the old tlsmgr to exit")
    after = exchange.read_bytes()
    assert len(after) == 1024 and after != before
    handshake(instance, "-tls1_2")                 # master starts a new one on demand
    wait_for(lambda: instance.tlsmgr_pids(), what="a new tlsmgr process")
    assert instance.tlsmgr_pids() != [before_pid]


def test_install_and_uninstall_switch_a_running_postfix(tmp_path):
    require(available(), "Debian's postfix package and root (apt-get install postfix; "
                         "run the tests as root)")
    instance = PostfixInstance(ours=False)
    try:
        instance.start()
        handshake(instance, "-tls1_2")
        wait_for(lambda: instance.tlsmgr_pids(ours=False), what="the stock tlsmgr")
        ctl = [sys.executable, "-m", "tlsmgr.admin.ctl"]
        result = subprocess.run(ctl + ["install", "-c", str(instance.conf), "--reload"],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "pytlsmgr" in result.stdout
        wait_for(lambda: not instance.tlsmgr_pids(ours=False), timeout=30,
                 what="the stock tlsmgr to exit")
        resumed_across_processes(instance, tmp_path / "after-install.sess",
                                 "-tls1_2", "-no_ticket")
        assert instance.tlsmgr_pids(ours=True)
        result = subprocess.run(ctl + ["uninstall", "-c", str(instance.conf), "--reload"],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        wait_for(lambda: not instance.tlsmgr_pids(ours=True), timeout=30,
                 what="our tlsmgr to exit")
        handshake(instance, "-tls1_2")
        wait_for(lambda: instance.tlsmgr_pids(ours=False), what="the stock tlsmgr again")
    finally:
        instance.destroy()


# The other clients of tlsmgr: tlsproxy(8) and the LMTP client.

POSTSCREEN_CF = """\
{port} inet n - {{chroot}} - 1 postscreen
smtpd     pass  -       -       {{chroot}}  -       -       smtpd
tlsproxy  unix  -       -       {{chroot}}  -       0       tlsproxy
dnsblog   unix  -       -       {{chroot}}  -       0       dnsblog
"""


def test_tlsproxy_behind_postscreen_resumes_sessions(tmp_path):
    # With a deep protocol test on, postscreen(8) talks SMTP itself to a
    # client it does not know yet, and hands STARTTLS to tlsproxy(8); each
    # connection comes from a new loopback address, so that postscreen
    # never knows the client and tlsproxy makes every handshake.
    require(available(), "Debian's postfix package and root (apt-get install postfix; "
                         "run the tests as root)")
    port = free_tcp_port()
    instance = PostfixInstance(
        ours=True, chroot=True, master_cf=POSTSCREEN_CF.format(port="127.0.0.1:%d" % port),
        postscreen_pipelining_enable="yes", postscreen_greet_banner="",
        postscreen_greet_wait="1s", postscreen_access_list="",
        postscreen_tls_security_level="may", tlsproxy_tls_loglevel=1)
    try:
        instance.start()
        sources = iter(["127.0.0.%d" % n for n in range(2, 6)])
        for version in (TLS12, TLS13):
            context = client_context(version)
            first = starttls("127.0.0.1", port, context, source=next(sources))
            assert first.version == version and not first.resumed
            again = starttls("127.0.0.1", port, context, first.session,
                             source=next(sources))
            assert again.resumed, version
        log = instance.log()
        assert len(re.findall(r"postfix/tlsproxy\[\d+\]: Anonymous TLS connection "
                              r"established from \[127\.0\.0\.[2-5]\]", log)) == 4, log
        # postscreen never handed one of them over to smtpd.
        assert not re.search(r"postfix/smtpd\[\d+\]: connect from \S+\[127\.0\.0\.[2-5]\]", log)
        assert tlsmgr_warnings(instance) == []
    finally:
        instance.destroy()


class LmtpServer:
    """aiosmtpd's LMTP server with STARTTLS, on loopback: the messages it
    took are in ``delivered``."""

    def __init__(self, port: int, certificate: Path, key: Path):
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(certificate, key)
        self.delivered: list[str] = []
        delivered = self.delivered

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                delivered.extend(envelope.rcpt_tos)
                return "250 2.0.0 delivered"

        class LmtpController(Controller):
            def factory(self):
                return LMTP(self.handler, tls_context=context, require_starttls=False,
                            hostname="lmtp.localdomain")

        self.controller = LmtpController(Handler(), hostname="127.0.0.1", port=port,
                                         ready_timeout=10)

    def __enter__(self):
        self.controller.start()
        return self

    def __exit__(self, *exc):
        self.controller.stop()


def test_lmtp_client_reuses_sessions_from_its_cache(tmp_path):
    require(available(), "Debian's postfix package and root (apt-get install postfix; "
                         "run the tests as root)")
    port = free_tcp_port()
    # One delivery per lmtp process, and no cached connection: each
    # delivery is a new TLS handshake, resumed only through tlsmgr.
    instance = PostfixInstance(
        ours=True, chroot=True,
        master_cf="lmtp1 unix - - {chroot} - - lmtp -o max_use=1\n",
        default_transport="lmtp1:inet:127.0.0.1:%d" % port,
        lmtp_tls_security_level="encrypt", lmtp_tls_loglevel=2,
        lmtp_connection_cache_on_demand="no",
        lmtp_tls_session_cache_database="btree:${data_directory}/lmtp_scache")
    try:
        with LmtpServer(port, instance.conf / "cert.pem", instance.conf / "key.pem") as lmtp:
            instance.start()
            instance.send_mail("first@example.com", "first")
            instance.wait_for_log("to=<first@example.com>, relay=127.0.0.1")
            instance.send_mail("second@example.com", "second")
            log = instance.wait_for_log("to=<second@example.com>, relay=127.0.0.1")
            assert lmtp.delivered == ["first@example.com", "second@example.com"], log
        deliveries = [line for line in log.splitlines() if "status=sent" in line]
        assert len(deliveries) == 2 and all("postfix/lmtp[" in line for line in deliveries)
        assert re.search(r"postfix/lmtp\[\d+\]: .*Reusing old session", log), log
        assert re.search(r"postfix/tlsmgr\[\d+\]: lookup lmtp session id=", log)
        assert tlsmgr_warnings(instance) == []
    finally:
        instance.destroy()
