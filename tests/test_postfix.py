"""Real Postfix (Debian's package) with this daemon as its tlsmgr.

A private instance per chroot setting: master(8) starts our daemon from
its master.cf, smtpd and smtp processes use it, and each check looks at
what a user would: openssl's "Reused", smtp's "Reusing old session", the
daemon's process, its exchange file and its log lines in maillog_file.
"""

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from conftest import require
from harness import free_tcp_port, wait_for
from postfix_instance import PostfixInstance, available

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


def handshake(instance, *args) -> str:
    """Run s_client; return openssl's New/Reused line."""
    output = instance.s_client(*args)
    line = next((text for text in output.splitlines()
                 if text.startswith(("New,", "Reused,"))), "")
    assert line, output
    return line


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
    ctl = subprocess.run([sys.executable, "-m", "tlsmgr.ctl", "--socket",
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
        ctl = [sys.executable, "-m", "tlsmgr.ctl"]
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
