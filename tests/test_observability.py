"""What operators look at, driven by real requests: ticket-key lookups by
outcome, request latency histograms, the fleet's Redis health through a
real redis-server that stops and starts (stats and metrics, parsed with
prometheus-client's parser), stats --watch under a pseudo-terminal and in
plain lines, the documented alert rules (promtool), and the metrics port
against a hostile local user: idle connections, descriptors run out, a
request a byte a second, an oversized request head."""

import contextlib
import os
import pty
import re
import resource
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import require_command
from helpers.harness import connect, free_tcp_port, start_ours, wait_for
from prometheus_client.parser import text_string_to_metric_families

from tlsmgr.admin.client import ClientError, TlsmgrClient
from tlsmgr.observe.histogram import LATENCY_BOUNDS
from tlsmgr.runtime.metrics import (
    METRICS_BACKLOG,
    METRICS_CONNECTIONS,
    METRICS_DEADLINE,
    METRICS_HEAD_LIMIT,
)
from tlsmgr.service.tickets import TicketKey

ROOT = Path(__file__).resolve().parent.parent
CTL = [sys.executable, "-m", "tlsmgr.admin.ctl"]


def daemon_with(tmp_path, **params):
    (tmp_path / "data").mkdir(exist_ok=True)
    port = free_tcp_port()
    daemon = start_ours(tmp_path, data_directory=tmp_path / "data",
                        tlsmgr_metrics_listen=str(port), **params)
    daemon.metrics_port = port
    return daemon


def metrics(daemon) -> dict:
    """Every sample, by (name, frozen labels), as prometheus-client parses it."""
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % daemon.metrics_port,
                                timeout=10) as page:
        text = page.read().decode()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def stats(daemon) -> dict:
    with TlsmgrClient(str(daemon.socket_path)) as client:
        status, found = client.stats()
    assert status == 0
    return found


def test_ticket_key_lookups_are_counted_by_outcome(tmp_path):
    daemon = daemon_with(tmp_path)
    with TlsmgrClient(str(daemon.socket_path)) as client:
        _, first = client.tktkey()
        client.tktkey()
        assert client.tktkey(first.name) == (0, first)
        assert client.rotate_keys()[0] == 0
        _, second = client.tktkey()
        assert client.tktkey(first.name) == (0, first)          # the one before
        assert client.tktkey(second.name) == (0, second)
        assert client.tktkey(b"n" * 16)[0] == -1
    lookups = stats(daemon)["ticket_keys"]["lookups"]
    assert lookups == {"current": 3, "found_current": 2, "found_previous": 1, "unknown": 1}
    found = metrics(daemon)
    for outcome, count in lookups.items():
        assert found[("tlsmgr_ticket_key_lookups_total",
                      frozenset({("outcome", outcome)}))] == count


def test_fleet_keys_count_as_found_fleet_expired_and_unavailable(tmp_path, redis_server):
    prefix = "obs%d:" % os.getpid()
    table = "redis:" + redis_server.url
    daemon = daemon_with(tmp_path, smtpd_tls_session_cache_database=table,
                         tlsmgr_redis_key_prefix=prefix)
    now = int(time.time())
    elsewhere = TicketKey(b"f" * 16, os.urandom(32), os.urandom(32), now + 600)
    spent = TicketKey(b"e" * 16, os.urandom(32), os.urandom(32), now - 3600)
    redis = redis_server.client()
    for key in (elsewhere, spent):              # as other hosts of the fleet made them
        redis.set(("{%stickets}:name:" % prefix).encode() + key.name, key.pack(), ex=600)
    with TlsmgrClient(str(daemon.socket_path)) as client:
        assert client.tktkey(elsewhere.name) == (0, elsewhere)
        assert client.tktkey(spent.name)[0] == -1
        redis_server.stop()
        assert client.tktkey(b"u" * 16)[0] == -1
    lookups = stats(daemon)["ticket_keys"]["lookups"]
    assert lookups == {"found_fleet": 1, "expired": 1, "unavailable": 1}


def test_request_latency_is_a_histogram_by_request_name(tmp_path):
    daemon = daemon_with(tmp_path)
    with TlsmgrClient(str(daemon.socket_path)) as client:
        for i in range(50):
            client.lookup("smtpd", "id%d" % i)
        for _ in range(7):
            client.seed(32)
    latency = stats(daemon)["latency"]
    assert latency["lookup"]["count"] == 50 and latency["seed"]["count"] == 7
    assert "update" not in latency                      # never asked
    bounds = [bound for bound, _ in latency["lookup"]["buckets"]]
    assert bounds == [*LATENCY_BOUNDS, "+Inf"] and bounds[0] == 1e-05 and bounds[-2] == 1.0
    counts = [count for _, count in latency["lookup"]["buckets"]]
    assert counts == sorted(counts) and counts[-1] == 50
    assert 0 < latency["lookup"]["sum"] < 50 * 1.0
    found = metrics(daemon)
    labels = frozenset({("request", "lookup")})
    assert found[("tlsmgr_request_duration_seconds_count", labels)] == 50
    assert found[("tlsmgr_request_duration_seconds_bucket",
                  labels | {("le", "+Inf")})] == 50


def test_redis_health_through_an_outage(tmp_path, redis_server):
    table = "redis:" + redis_server.url
    daemon = daemon_with(tmp_path, smtpd_tls_session_cache_database=table,
                         tlsmgr_redis_key_prefix="health%d:" % os.getpid())
    with TlsmgrClient(str(daemon.socket_path)) as client:
        assert client.update("smtpd", "a", b"s") == 0
        health = stats(daemon)["caches"]["smtpd"]["redis"]
        assert health["paused"] is False and health["failures"] == 0
        assert health["endpoint"] == redis_server.url
        assert health["round_trips"]["count"] >= 1
        redis_server.stop()
        assert client.lookup("smtpd", "a") == (-1, b"")
        down = stats(daemon)["caches"]["smtpd"]["redis"]
        assert down["paused"] is True and down["failures"] == 1
        assert abs(down["paused_since"] - time.time()) < 30
        assert "Error" in down["last_error"] and "\n" not in down["last_error"]
        found = metrics(daemon)
        cache = frozenset({("cache", "smtpd")})
        assert found[("tlsmgr_redis_paused", cache)] == 1
        assert found[("tlsmgr_redis_failures_total", cache)] == 1
        assert found[("tlsmgr_redis_endpoint", cache | {("endpoint", redis_server.url)})] == 1
        redis_server.start()
        wait_for(lambda: not stats(daemon)["caches"]["smtpd"]["redis"]["paused"], timeout=20,
                 what="the probe to find Redis back")
        back = stats(daemon)["caches"]["smtpd"]["redis"]
        assert back["recoveries"] == 1 and back["paused_since"] is None
        assert metrics(daemon)[("tlsmgr_redis_paused", cache)] == 0
        assert metrics(daemon)[("tlsmgr_redis_recoveries_total", cache)] == 1


def test_stats_text_names_the_redis_state(tmp_path, redis_server):
    daemon = daemon_with(tmp_path, smtpd_tls_session_cache_database="redis:" + redis_server.url,
                         tlsmgr_redis_key_prefix="text%d:" % os.getpid())
    redis_server.stop()
    with TlsmgrClient(str(daemon.socket_path)) as client:
        client.lookup("smtpd", "a")
    text = subprocess.run(CTL + ["--socket", str(daemon.socket_path), "stats"],
                          capture_output=True, text=True, timeout=30).stdout
    assert re.search(r"^smtpd on redis: PAUSED since \d\d:\d\d:\d\d: .*; 1 failures, "
                     r"0 recoveries", text, re.M), text


class Load:
    """A client asking lookups while the watch runs."""

    def __init__(self, socket_path):
        import threading
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, args=(socket_path,), daemon=True)
        self.thread.start()

    def run(self, socket_path):
        with TlsmgrClient(str(socket_path)) as client:
            while not self.stop.is_set():
                client.lookup("smtpd", "x")
                time.sleep(0.002)

    def __exit__(self, *_):
        self.stop.set()
        self.thread.join(10)

    def __enter__(self):
        return self


def test_watch_prints_plain_rate_lines_when_not_on_a_terminal(tmp_path):
    daemon = daemon_with(tmp_path)
    with Load(daemon.socket_path):
        result = subprocess.run(CTL + ["--socket", str(daemon.socket_path), "stats",
                                       "--watch", "0.3", "--count", "3"],
                                capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    for line in lines:
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d ", line), line
        rate = float(re.search(r"requests\.lookup=([\d.]+)", line)[1])
        assert rate > 10
    assert "\x1b" not in result.stdout                  # no terminal control in a pipe


def read_until(fd, wanted: bytes, timeout: float) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout
    while wanted not in got:
        left = deadline - time.monotonic()
        assert left > 0, "no %r in %r" % (wanted, got[-500:])
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:              # the other side is gone
                break
            if not chunk:
                break
            got += chunk
    return got


def read_to_the_end(fd) -> bytes:
    """What is left to read of a pty whose other side is closed."""
    got = b""
    while select.select([fd], [], [], 5)[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError:                  # EIO: nothing left, nobody to write it
            break
        if not chunk:
            break
        got += chunk
    return got


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP],
                         ids=["ctrl-c", "sigterm", "sighup"])
def test_watch_redraws_in_place_and_gives_the_terminal_back_however_ended(tmp_path, signum):
    daemon = daemon_with(tmp_path)
    master, slave = pty.openpty()
    with Load(daemon.socket_path):
        process = subprocess.Popen(CTL + ["--socket", str(daemon.socket_path), "stats",
                                          "--watch", "0.2"],
                                   stdin=slave, stdout=slave, stderr=slave,
                                   start_new_session=True)
        os.close(slave)
        try:
            shown = read_until(master, b"requests.lookup", 20)
            shown += read_until(master, b"\x1b[H\x1b[2J", 5)      # and again: redrawn
            assert shown.startswith(b"\x1b[?1049h\x1b[?25l")     # alternate screen
            # As the terminal sends Ctrl-C and a hang-up, or kill(1) sends
            # SIGTERM to a process group.
            os.killpg(process.pid, signum)
            rest = read_until(master, b"\x1b[?25h\x1b[?1049l", 10)
            assert process.wait(5) == 0
            rest += read_to_the_end(master)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            os.close(master)
    assert b"Traceback" not in shown + rest
    assert (shown + rest).rstrip(b"\r\n").endswith(b"\x1b[?25h\x1b[?1049l")


@contextlib.contextmanager
def watching(command: list[str], **streams):
    """tlsmgr-ctl stats --watch, its stderr a pipe; killed if it outlives
    the test."""
    process = subprocess.Popen([*command, "stats", "--watch", "0.2"],
                               stderr=subprocess.PIPE, **streams)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()


def ends_quietly(process) -> None:
    assert process.wait(10) == 0
    assert process.stderr.read() == b""


def test_watch_ends_quietly_when_its_terminal_hangs_up(tmp_path):
    # The terminal is gone (an ssh session dropped): SIGHUP, and nothing
    # left to give back, nor to write a traceback to but the log it goes to.
    setsid = require_command("setsid", "util-linux")
    daemon = daemon_with(tmp_path)
    master, slave = pty.openpty()
    try:
        with watching([setsid, "--ctty", *CTL, "--socket", str(daemon.socket_path)],
                      stdin=slave, stdout=slave) as process:
            os.close(slave)
            slave = None
            read_until(master, b"per second", 20)
            os.close(master)                                # the hang-up
            master = None
            ends_quietly(process)
    finally:
        for descriptor in (master, slave):
            if descriptor is not None:
                os.close(descriptor)


def test_watch_ends_quietly_when_the_reader_of_its_pipe_goes(tmp_path):
    # tlsmgr-ctl stats --watch | head -1: head exits, the next line meets
    # EPIPE; the watch ends there, status 0, and says nothing of it.
    daemon = daemon_with(tmp_path)
    with watching([*CTL, "--socket", str(daemon.socket_path)],
                  stdout=subprocess.PIPE) as process:
        assert process.stdout.readline()                    # the first line, then gone
        process.stdout.close()
        ends_quietly(process)


def alert_rules() -> str:
    text = (ROOT / "docs" / "OPERATIONS.md").read_text()
    [rules] = re.findall(r"```yaml\n(groups:.*?)```", text, re.S)
    return rules


def test_the_documented_alert_rules_pass_promtool(tmp_path):
    promtool = require_command("promtool", "prometheus")
    path = tmp_path / "tlsmgr.rules.yml"
    path.write_text(alert_rules())
    result = subprocess.run([promtool, "check", "rules", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout
    # Every metric they name is one the daemon serves.
    served = set(re.findall(r"`(tlsmgr_\w+)`", (ROOT / "docs" / "OPERATIONS.md").read_text()))
    for name in set(re.findall(r"\b(tlsmgr_\w+)", alert_rules())):
        base = re.sub(r"_(bucket|count|sum)$", "", name)
        assert base in served or name in served, name


# The metrics port is open to every local user (docs/SECURITY.md): what one
# may do there, and what that must not do to the daemon.  Each test runs the
# real daemon; each wait is bounded.

def open_descriptors(pid: int) -> int:
    return len(os.listdir("/proc/%d/fd" % pid))


def threads(pid: int) -> int:
    return int(re.search(r"^Threads:\s+(\d+)$", Path("/proc/%d/status" % pid).read_text(),
                         re.M)[1])


def cpu_seconds(pid: int) -> float:
    """User and system time the process has had (proc(5): utime, stime)."""
    fields = Path("/proc/%d/stat" % pid).read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def leave_descriptors(daemon, spare: int) -> tuple[int, int]:
    """Lower the daemon's open files limit to what it has open now and
    spare more; return the limits it had, to put back."""
    pid = daemon.process.pid
    limits = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (open_descriptors(pid) + spare, limits[1]))
    return limits


def log_lines(daemon) -> list[str]:
    return daemon.log.splitlines()


def answers_within(daemon, seconds: float) -> bool:
    """Whether the tlsmgr socket answers a tktkey request within seconds."""
    start = time.monotonic()
    try:
        with TlsmgrClient(str(daemon.socket_path), timeout=seconds) as client:
            answered = client.tktkey()[0] == 0
    except (OSError, ClientError):
        return False
    return answered and time.monotonic() - start < seconds


def scrapes(daemon) -> bool:
    try:
        return ("tlsmgr_uptime_seconds", frozenset()) in metrics(daemon)
    except OSError:                          # refused: the idle ones not yet gone
        return False


class Sockets(list):
    """Sockets closed together, whatever happened meanwhile."""

    def __enter__(self):
        return self

    def __exit__(self, *_):
        for sock in self:
            sock.close()


def idle_metrics_connections(daemon, count: int) -> Sockets:
    """count connections to the metrics port that send nothing (connect(2)
    not waited for: the kernel queues only so many)."""
    held = Sockets()
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", daemon.metrics_port))
        held.append(sock)
    return held


@pytest.mark.timeout(60)
@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
def test_idle_metrics_connections_take_no_descriptor_a_client_needs(tmp_path, event_loop):
    # A local user holding 200 idle connections to the metrics port, with
    # the daemon's descriptors nearly all in use: the tlsmgr socket answers
    # at once, the daemon makes no thread for them and logs a line or two,
    # and scrapes work again as soon as they are gone.
    daemon = daemon_with(tmp_path, tlsmgr_event_loop=event_loop)
    pid = daemon.process.pid
    assert scrapes(daemon)
    logged = len(log_lines(daemon))
    # Those it keeps, and those it has accepted only to close at once.
    limits = leave_descriptors(daemon, METRICS_CONNECTIONS + METRICS_BACKLOG + 4)
    try:
        with idle_metrics_connections(daemon, 200):
            time.sleep(1)                   # all accepted, and all but some closed
            assert answers_within(daemon, 1.0)
            assert threads(pid) <= 5        # the main one, and none per connection
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)
    wait_for(lambda: scrapes(daemon), timeout=5, what="a scrape, the idle connections gone")
    assert len(log_lines(daemon)) - logged <= 2, log_lines(daemon)[logged:]


@pytest.mark.timeout(30)
def test_a_metrics_request_sent_a_byte_a_second_is_closed_at_the_deadline(tmp_path):
    daemon = daemon_with(tmp_path)
    request = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow\r\n"
    closed_after = None
    with socket.create_connection(("127.0.0.1", daemon.metrics_port), timeout=5) as sock:
        connected = time.monotonic()
        for byte in request[:int(METRICS_DEADLINE) + 3]:
            try:
                sock.send(bytes([byte]))
                readable, _, _ = select.select([sock], [], [], 1.0)
                ended = bool(readable) and not sock.recv(4096)
            except ConnectionResetError:
                ended = True
            if ended:
                closed_after = time.monotonic() - connected
                break
    assert closed_after is not None, "still open %d seconds on" % (METRICS_DEADLINE + 3)
    assert METRICS_DEADLINE - 0.5 < closed_after < METRICS_DEADLINE + 1.5
    assert scrapes(daemon)


@pytest.mark.timeout(30)
def test_an_oversized_metrics_request_head_is_refused_and_closed(tmp_path):
    daemon = daemon_with(tmp_path)
    with socket.create_connection(("127.0.0.1", daemon.metrics_port), timeout=5) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nX-Padding: " + b"a" * METRICS_HEAD_LIMIT)
        answer = b""
        while chunk := sock.recv(65536):     # to the end: the daemon closes
            answer += chunk
    assert answer.startswith(b"HTTP/1.0 431 Request Header Fields Too Large\r\n"), answer
    assert scrapes(daemon)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
def test_out_of_descriptors_the_daemon_neither_spins_nor_floods_its_log(tmp_path, event_loop):
    # accept(2) failing for want of descriptors, as long as clients queue:
    # a warning at most, little CPU, and served again once they are gone.
    daemon = daemon_with(tmp_path, tlsmgr_event_loop=event_loop)
    pid = daemon.process.pid
    logged = len(log_lines(daemon))
    limits = leave_descriptors(daemon, 4)
    try:
        with Sockets(connect(daemon.socket_path) for _ in range(40)):
            start = cpu_seconds(pid)
            time.sleep(3)
            spent = cpu_seconds(pid) - start
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)
    assert spent < 0.5
    wait_for(lambda: answers_within(daemon, 2.0), timeout=5,
             what="the tlsmgr socket to answer again")
    assert len(log_lines(daemon)) - logged <= 2, log_lines(daemon)[logged:]
