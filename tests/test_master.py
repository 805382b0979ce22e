"""The daemon as master(8) runs it: fds 5 and 6, generic options, -S."""

import os
import signal
import struct
import subprocess
import sys

import pytest
from conftest import require
from harness import (
    PYTHON,
    assert_exchange_file_rewritten,
    start_ours_as_master_does,
    wait_for,
    write_main_cf,
)

from tlsmgr.client import TlsmgrClient

STATUS = struct.Struct("=iIi")


@pytest.fixture
def daemon(tmp_path):
    started = start_ours_as_master_does(tmp_path, env={"GENERATION": "17"})
    yield started
    started.stop()
    os.close(started.status_read)


def test_status_messages_around_each_request(daemon):
    with TlsmgrClient(str(daemon.socket_path)) as client:
        assert client.seed(8)[0] == 0
    messages = os.read(daemon.status_read, 2 * STATUS.size)
    pid = daemon.process.pid
    # GENERATION is octal: "17" is 15.  Busy (0), then idle (1).
    assert [STATUS.unpack_from(messages, offset) for offset in (0, STATUS.size)] == \
        [(pid, 0o17, 0), (pid, 0o17, 1)]


def test_working_directory_is_queue_directory(daemon, tmp_path):
    assert os.readlink("/proc/%d/cwd" % daemon.process.pid) == str(tmp_path / "queue")


def test_exits_when_master_goes_away_and_saves_prng_state(daemon, tmp_path):
    def master_goes_away():
        os.close(daemon.status_read)
        daemon.status_read = os.open("/dev/null", os.O_RDONLY)     # for the fixture
        return daemon.process.wait(10)
    assert_exchange_file_rewritten(tmp_path / "data" / "prng_exch", master_goes_away)


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
        os.close(started.status_read)


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
    code = ("import time; from tlsmgr import log, master; log.setup_stderr();"
            "dog = master.Watchdog(1); dog.pet(); time.sleep(30)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 1
    assert "tlsmgr: fatal: watchdog timeout" in result.stderr
