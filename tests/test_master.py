"""The daemon as master(8) runs it: fds 5 and 6, generic options, -S."""

import asyncio
import os
import re
import resource
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require
from helpers.harness import (
    PYTHON,
    STATUS,
    assert_exchange_file_rewritten,
    handshake,
    request,
    start_ours_as_master_does,
    tktkey_burst,
    wait_for,
    write_main_cf,
)

from tlsmgr.admin.client import TlsmgrClient
from tlsmgr.runtime import master
from tlsmgr.runtime.master import StatusChannel
from tlsmgr.runtime.server import raise_open_files_limit


@pytest.fixture
def daemon(tmp_path):
    started = start_ours_as_master_does(tmp_path, env={"GENERATION": "17"})
    yield started
    started.stop()


def test_status_messages_around_each_request(daemon):
    with TlsmgrClient(str(daemon.socket_path)) as client:
        assert client.seed(8)[0] == 0
    wait_for(lambda: daemon.master.count >= 2, what="two status messages")
    pid = daemon.process.pid
    # GENERATION is octal: "17" is 15.  Busy (0), then idle (1).
    assert daemon.master.first[:2] == [(pid, 0o17, 0), (pid, 0o17, 1)]


def test_status_channel_and_listener_are_close_on_exec(daemon):
    # As the stock daemon's: fd 5 and fd 6 are not left to a program it runs.
    for fd in (5, 6):
        flags = Path("/proc/%d/fdinfo/%d" % (daemon.process.pid, fd)).read_text()
        assert int(re.search(r"^flags:\s+(\d+)", flags, re.M)[1], 8) & os.O_CLOEXEC, fd


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
def test_master_slow_to_read_its_status_channel(tmp_path, event_loop):
    # master(8) on a busy host: its status channel unread for 10 seconds
    # while 8 clients ask without pause.  Not one request is lost, the
    # daemon stays, and its messages reach master again afterwards.
    daemon = start_ours_as_master_does(tmp_path, tlsmgr_event_loop=event_loop)
    daemon.master.pause()
    answers, errors = tktkey_burst(daemon.socket_path, seconds=10)
    assert errors == []
    assert set(answers) == {0} and answers[0] > 2000     # far more than the channel holds
    assert daemon.process.poll() is None, daemon.log
    before = daemon.master.count
    daemon.master.resume()
    with TlsmgrClient(str(daemon.socket_path)) as client:
        assert client.seed(8)[0] == 0
    wait_for(lambda: daemon.master.count > before + 2, what="status messages again")
    assert "warning" not in daemon.log and "master disconnect" not in daemon.log


def test_master_end_of_file_is_the_end_even_while_the_channel_is_full(tmp_path):
    daemon = start_ours_as_master_does(tmp_path, args=("-v",))
    daemon.master.pause()
    answers, errors = tktkey_burst(daemon.socket_path, seconds=1, connections=2)
    assert errors == [] and answers[0] > 300
    daemon.master.hang_up()
    assert daemon.process.wait(10) == 0
    assert "master disconnect -- exiting" in daemon.log


def test_a_burst_of_connections_is_accepted_without_retry(tmp_path):
    # 2000 non-blocking connects at once, none retried: each one is taken
    # into the listen queue (master's backlog of 100 is raised), accepted,
    # and answered.
    require(os.geteuid() == 0 or resource.getrlimit(resource.RLIMIT_NOFILE)[1] > 4200,
            "root or an open-files hard limit over 4200, for 2000 connections on "
            "both ends")
    raise_open_files_limit(4200)
    daemon = start_ours_as_master_does(tmp_path)
    os.kill(daemon.process.pid, signal.SIGSTOP)         # nothing is accepted meanwhile
    sockets = []
    try:
        refused = 0
        for _ in range(2000):
            sock = socket.socket(socket.AF_UNIX)
            sock.setblocking(False)
            sockets.append(sock)
            if sock.connect_ex(str(daemon.socket_path)) != 0:
                refused += 1
        os.kill(daemon.process.pid, signal.SIGCONT)
        assert refused == 0
        for sock in sockets:
            sock.setblocking(True)
            sock.settimeout(30)
            handshake(sock)
        for sock in sockets:
            sock.sendall(b"request\0seed\0size\0008\0\0")
        for sock in sockets:
            assert dict(request(sock, b""))[b"status"] == b"0"
    finally:
        os.kill(daemon.process.pid, signal.SIGCONT)
        for sock in sockets:
            sock.close()


def test_working_directory_is_queue_directory(daemon, tmp_path):
    assert os.readlink("/proc/%d/cwd" % daemon.process.pid) == str(tmp_path / "queue")


def test_exits_when_master_goes_away_and_saves_prng_state(daemon, tmp_path):
    def master_goes_away():
        daemon.master.hang_up()
        return daemon.process.wait(10)
    assert_exchange_file_rewritten(tmp_path / "data" / "prng_exch", master_goes_away)


def test_master_socket_stays_when_the_daemon_ends(daemon):
    # master(8) keeps the listening socket and hands it to the next process:
    # the daemon must not remove its file (Python 3.13's asyncio would).
    assert daemon.stop(signal.SIGTERM) == 0
    assert daemon.socket_path.is_socket()


def test_sigterm_saves_prng_state(daemon, tmp_path):
    assert_exchange_file_rewritten(tmp_path / "data" / "prng_exch",
                                   lambda: daemon.stop(signal.SIGTERM))


def test_files_belong_to_mail_owner(daemon, tmp_path):
    require(os.geteuid() == 0, "root, which creates files as mail_owner (run the tests as root)")
    import pwd
    postfix = pwd.getpwnam("postfix").pw_uid
    exchange = tmp_path / "data" / "prng_exch"
    wait_for(lambda: exchange.exists(), what="the exchange file")
    assert exchange.stat().st_uid == postfix


def fatal_start(tmp_path, *args, env=None):
    started = start_ours_as_master_does(tmp_path, wait=False, args=args, env=env)
    try:
        assert started.process.wait(10) == 1
        return started.log
    finally:
        started.stop()


def test_solitary_check(tmp_path):
    # master passes -l for a process limit of 1; start without it.
    conf = write_main_cf(tmp_path / "conf")
    result = subprocess.run([PYTHON, "-m", "tlsmgr.daemon", "-V", "-t", "unix"],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            env=dict(os.environ, MAIL_CONFIG=str(conf)), timeout=30)
    assert result.returncode == 1
    assert "fatal: service tlsmgr requires a process limit of 1" in result.stderr


def test_bad_generation_is_fatal(tmp_path):
    assert "fatal: bad generation: 9z" in fatal_start(tmp_path, env={"GENERATION": "9z"})


def test_unsupported_transport_and_bad_option(tmp_path):
    conf = write_main_cf(tmp_path / "conf")
    env = dict(os.environ, MAIL_CONFIG=str(conf))
    run = [PYTHON, "-m", "tlsmgr.daemon", "-V", "-l"]
    result = subprocess.run(run + ["-t", "fifo"], stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, env=env, timeout=30)
    assert "fatal: unsupported transport type: fifo" in result.stderr
    result = subprocess.run(run + ["-t", "unix", "-Q"], stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 1 and "fatal:" in result.stderr and "-Q" in result.stderr
    assert "Traceback" not in result.stderr


def test_single_request_on_stdin(tmp_path):
    conf = write_main_cf(tmp_path / "conf", data_directory=tmp_path,
                         queue_directory=tmp_path)
    owner = ["-o", "mail_owner=root"] if os.geteuid() == 0 else []
    result = subprocess.run([PYTHON, "-m", "tlsmgr.daemon", "-S", *owner],
                            input=b"request\0policy\0cache_type\0smtpd\0\0",
                            capture_output=True, env=dict(os.environ, MAIL_CONFIG=str(conf)),
                            timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"status\x000\0cachable\x000\0timeout\x003600\0\0"


def test_watchdog_ends_a_stalled_process(tmp_path):
    code = ("import time; from tlsmgr.util import log; from tlsmgr.runtime import master; "
            "log.setup_stderr();"
            "dog = master.Watchdog(1); dog.pet(); time.sleep(30)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 1
    assert "tlsmgr: fatal: watchdog timeout" in result.stderr


# The status channel in process: coalescing while full, whole messages.

def status_messages(data: bytes) -> list[tuple[int, int, int]]:
    assert len(data) % STATUS.size == 0, "a message cut short"
    return [STATUS.unpack_from(data, offset) for offset in range(0, len(data), STATUS.size)]


def drain(sock: socket.socket) -> bytes:
    sock.setblocking(False)
    data = b""
    while True:
        try:
            more = sock.recv(1 << 16)
        except BlockingIOError:
            return data
        if not more:
            return data
        data += more


def run_channel(actions, write=None, monkeypatch=None):
    """A StatusChannel on one end of a socketpair, in an event loop:
    actions(channel, master_end, loop) is awaited; returns what master
    read, as messages."""
    master_end, ours = socket.socketpair()
    read: list[bytes] = []

    async def main():
        loop = asyncio.get_running_loop()
        channel = StatusChannel(generation=7, fd=ours.fileno())
        gone = []
        channel.attach(loop, lambda: gone.append(True))
        await actions(channel, master_end, loop, read)
        return gone

    try:
        if write is not None:
            monkeypatch.setattr(master.os, "write", write)
        gone = asyncio.run(main())
        read.append(drain(master_end))
        return status_messages(b"".join(read)), gone
    finally:
        master_end.close()
        ours.close()


def test_a_full_channel_coalesces_and_catches_up():
    async def actions(channel, master_end, loop, read):
        for _ in range(5000):                 # far more than the channel holds
            channel.served()
        await asyncio.sleep(0.05)
        read.append(drain(master_end))        # master reads at last
        for _ in range(20):
            await asyncio.sleep(0.01)         # the daemon writes what it owed

    messages, gone = run_channel(actions)
    pid = os.getpid()
    assert gone == []
    assert 100 < len(messages) < 2 * 5000     # some went, the rest were folded
    assert messages == [(pid, 7, 0), (pid, 7, 1)] * (len(messages) // 2)


def test_a_message_begun_is_finished_first(monkeypatch):
    real_write = os.write

    def a_few_bytes_at_a_time(fd, data):
        return real_write(fd, data[:5])

    async def actions(channel, master_end, loop, read):
        for _ in range(3):
            channel.served()
        for _ in range(30):
            await asyncio.sleep(0.005)

    messages, gone = run_channel(actions, a_few_bytes_at_a_time, monkeypatch)
    pid = os.getpid()
    # The first pair, then the two after it folded into one: never a torn message.
    assert messages == [(pid, 7, 0), (pid, 7, 1)] * 2 and gone == []


def test_master_hanging_up_is_noticed_once():
    async def actions(channel, master_end, loop, read):
        master_end.shutdown(socket.SHUT_RDWR)
        await asyncio.sleep(0.05)
        channel.served()                      # EPIPE now: no second call
        await asyncio.sleep(0.05)

    _, gone = run_channel(actions)
    assert gone == [True]


def postlogd(queue: Path) -> socket.socket:
    """A stand-in for postlogd(8): its socket, where maillog_file's lines go."""
    (queue / "public").mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(queue / "public" / "postlog"))
    os.chmod(queue / "public" / "postlog", 0o666)
    sock.settimeout(10)
    return sock


@pytest.mark.parametrize("setting, line", [
    ("tlsmgr_preserve_sessions = yse",
     "warning: bad boolean configuration: tlsmgr_preserve_sessions = yse (expected yes or no); "
     "using the default, tlsmgr_preserve_sessions = no"),
    ("smtpd_tls_session_cache_timeout = forever",
     "fatal: parameter smtpd_tls_session_cache_timeout: bad time value or unit: forever "
     "(expected a number with an optional unit s, m, h, d or w)"),
])
def test_what_reading_main_cf_meets_reaches_maillog_file(tmp_path, setting, line):
    # With maillog_file set, Postfix's lines go to postlogd, and so must
    # every line of ours: those met reading main.cf too, a fatal one too.
    name, value = (part.strip() for part in setting.split("="))
    queue = tmp_path / "queue"
    listener = postlogd(queue)
    try:
        daemon = start_ours_as_master_does(
            tmp_path, wait=False, maillog_file="/var/log/postfix.log", **{name: value})
        fatal = line.startswith("fatal:")
        if fatal:
            assert daemon.process.wait(20) == 1
        else:
            wait_for(daemon.connectable, what="tlsmgr to listen")
        datagram = listener.recv(4096).decode()
        assert re.fullmatch(r"\w{3} [ \d]\d \d\d:\d\d:\d\d \S+ postfix/tlsmgr\[%d\]: %s"
                            % (daemon.process.pid, re.escape(line)), datagram), datagram
    finally:
        listener.close()
        daemon.stop()
