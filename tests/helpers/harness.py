"""Starting daemons for tests: ours stand-alone, and Postfix's stock tlsmgr;
and the raw, misbehaving clients that tests and benchmarks share.

Every process started here is stopped by its pid when the test ends,
whatever happened in between; every wait is bounded.
"""

from __future__ import annotations

import os
import pwd
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from tlsmgr.admin.client import ClientError, TlsmgrClient
from tlsmgr.wire.attr import Decoder

STOCK_TLSMGR = "/usr/lib/postfix/sbin/tlsmgr"
PYTHON = sys.executable


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "it"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError("timed out after %.0fs waiting for %s" % (timeout, what))


def write_main_cf(directory: Path, **params) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    text = "".join("%s = %s\n" % item for item in params.items())
    (directory / "main.cf").write_text(text)
    return directory


# Every daemon started, so that conftest.py can stop those a test left
# running when an assertion cut it short.
started: list[Daemon] = []


class Daemon:
    """A running daemon process with its socket and captured stderr."""

    def __init__(self, process: subprocess.Popen, socket_path: Path, log_path: Path):
        self.process = process
        self.socket_path = socket_path
        self.log_path = log_path
        self.master: MasterStatus | None = None      # when started as master(8) does
        started.append(self)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def connectable(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError("daemon exited with %s:\n%s"
                                 % (self.process.returncode, self.log))
        # Connected is not enough (a socket made for the stock daemon
        # accepts connections before anyone serves them): wait for the
        # handshake.
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(0.5)
        try:
            sock.connect(str(self.socket_path))
            return sock.recv(64).startswith(b"protocol\0")
        except OSError:
            return False
        finally:
            sock.close()

    def stop(self, sig=signal.SIGTERM, timeout: float = 10.0) -> int:
        end_process(self.process, sig, timeout)
        if self.master is not None:
            self.master.close()
        return self.process.returncode


def end_process(process: subprocess.Popen | None, sig=signal.SIGTERM,
                timeout: float = 10.0) -> None:
    """Send sig to a process by its pid and wait for it to end; SIGKILL it
    if it has not within timeout."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


def start_ours(workdir: Path, *, extra_args=(), wait=True, main_cf: bytes | None = None,
               extra_groups: list[int] | None = None, **params) -> Daemon:
    """``tlsmgr --listen`` with a main.cf of params under workdir (or the
    main_cf bytes as they are).  Unless params say otherwise, whoever runs
    the tests stands in for mail_owner (as in dev/run-daemon), so that the
    daemon may use workdir as it is.  Another mail_owner makes the socket
    (as master(8) does), in a directory of its own, as Postfix's private/.
    extra_groups are the daemon's supplementary groups (as root)."""
    params.setdefault("mail_owner", pwd.getpwuid(os.geteuid()).pw_name)
    conf = write_main_cf(workdir / "conf", **params)
    if main_cf is not None:
        (conf / "main.cf").write_bytes(main_cf)
    socket_path = workdir / "tlsmgr.sock"
    if str(params["mail_owner"]) != pwd.getpwuid(os.geteuid()).pw_name:
        sockets = workdir / "private"
        sockets.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(sockets, str(params["mail_owner"]))
        socket_path = sockets / "tlsmgr"
    log_path = workdir / "tlsmgr.log"
    env = dict(os.environ, MAIL_CONFIG=str(conf))
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [PYTHON, "-m", "tlsmgr.daemon", "--listen", str(socket_path), *extra_args],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
            extra_groups=extra_groups)
    daemon = Daemon(process, socket_path, log_path)
    if wait:
        wait_for(daemon.connectable, what="tlsmgr to listen")
    return daemon


# Parameters of a later Postfix release than the one installed may be
# missing from its postconf; only these may be.
LATER_POSTFIX_PARAMETERS = {"default_cache_db_type": "3.11"}


def comparable_with_postconf(names, postconf: str = "/usr/sbin/postconf") -> list[str]:
    """The names to compare with the installed postconf: all, less those
    of a later Postfix release that it does not know."""
    listed = subprocess.run([postconf, "-d"], capture_output=True, text=True, timeout=30,
                            check=True).stdout
    known = {line.partition(" = ")[0] for line in listed.splitlines()}
    return [name for name in names if name in known or name not in LATER_POSTFIX_PARAMETERS]


def stock_available() -> bool:
    return os.path.exists(STOCK_TLSMGR) and os.geteuid() == 0


STATUS = struct.Struct("=iIi")          # master(8)'s status message: pid, generation, avail


class MasterStatus:
    """master(8)'s end of the status channel: a UNIX-domain socketpair, as
    master makes it, read by a thread as master reads it.

    Like the real master it can be slow: :meth:`pause` stops reading (the
    channel then fills after some 280 pairs of messages), :meth:`resume`
    reads again, and :meth:`hang_up` closes master's end, which tells the
    daemon that master is gone.  ``count`` is the messages read so far;
    ``first`` holds the first 64 of them, unpacked.
    """

    KEPT = 64

    def __init__(self):
        self.sock, self.daemon_end = socket.socketpair()
        self.count = 0
        self.first: list[tuple[int, int, int]] = []
        self._partial = b""
        self._reading = threading.Event()
        self._reading.set()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        self.sock.settimeout(0.05)
        while not self._done.is_set():
            if not self._reading.wait(0.05):
                continue
            try:
                data = self.sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            data = self._partial + data
            whole = len(data) - len(data) % STATUS.size
            for offset in range(0, whole, STATUS.size):
                if len(self.first) < self.KEPT:
                    self.first.append(STATUS.unpack_from(data, offset))
            self.count += whole // STATUS.size
            self._partial = data[whole:]
            time.sleep(0.001)

    def pause(self):
        self._reading.clear()
        time.sleep(0.1)                 # a recv under way finishes

    def resume(self):
        self._reading.set()

    def hang_up(self):
        self._done.set()
        self._thread.join(5)
        self.sock.close()

    def close(self):
        if not self._done.is_set():
            self.hang_up()
        self.daemon_end.close()


def start_as_master_does(command, workdir: Path, name: str, env=None, args=(),
                         **params) -> Daemon:
    """Start a daemon as master(8) starts one: the listening socket on fd 6,
    the status channel on fd 5, config from MAIL_CONFIG, stdin not a
    terminal.  master's end of the status channel is ``daemon.master`` (a
    :class:`MasterStatus`), closed when the daemon is stopped.
    """
    conf = write_main_cf(workdir / "conf", **params)
    socket_path = workdir / (name + ".sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(socket_path))
    listener.listen(100)                # master's backlog: about default_process_limit
    status = MasterStatus()
    status_fd, listen_fd = status.daemon_end.fileno(), listener.fileno()

    def as_master_does():
        # dup first: the targets 5 and 6 may be the very fds we copy from.
        status_copy, listen = os.dup(status_fd), os.dup(listen_fd)
        os.dup2(status_copy, 5)
        os.dup2(listen, 6)

    log_path = workdir / (name + ".log")
    environment = {"MAIL_CONFIG": str(conf), "GENERATION": "1", "PATH": "/usr/bin:/bin"}
    environment.update(env or {})
    with open(log_path, "wb") as log:
        try:
            process = subprocess.Popen([*command, "-l", "-n", "tlsmgr", "-t", "unix", *args],
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                       preexec_fn=as_master_does, close_fds=False,
                                       env=environment)
        except BaseException:
            status.close()
            raise
        finally:
            listener.close()
    daemon = Daemon(process, socket_path, log_path)
    daemon.master = status
    return daemon


def postfix_dirs(workdir: Path) -> dict:
    """queue_directory and data_directory for a daemon that, as root, opens
    its files as mail_owner: every directory above them must let that user
    through, and data_directory must be the mail owner's."""
    for parent in [workdir, *workdir.parents]:
        if parent.stat().st_uid == os.geteuid():
            parent.chmod(parent.stat().st_mode | 0o011)
    queue = workdir / "queue"
    data = workdir / "data"
    queue.mkdir(parents=True, exist_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(data, "postfix")
    return dict(queue_directory=queue, data_directory=data)


def start_stock(workdir: Path, **params) -> Daemon:
    """Postfix's own tlsmgr, as master(8) starts it."""
    daemon = start_as_master_does([STOCK_TLSMGR], workdir, "stock",
                                  **postfix_dirs(workdir), **params)
    wait_for(daemon.connectable, what="the stock tlsmgr to listen")
    return daemon


def start_ours_as_master_does(workdir: Path, *, wait=True, env=None, args=(),
                              **params) -> Daemon:
    """This daemon, as master(8) starts it (with -V: log lines on stderr too)."""
    params = {**postfix_dirs(workdir), **params}
    if os.geteuid() != 0:
        params.setdefault("mail_owner", pwd.getpwuid(os.geteuid()).pw_name)
    daemon = start_as_master_does([PYTHON, "-m", "tlsmgr.daemon", "-V", *args], workdir,
                                  "ours", env=env, **params)
    if wait:
        wait_for(daemon.connectable, what="tlsmgr to listen")
    return daemon


# The server every Redis test starts; TLSMGR_REDIS_SERVER names another
# (valkey-server: the tests run against each in the Debian 13 root).
REDIS_SERVER = (os.environ.get("TLSMGR_REDIS_SERVER") or shutil.which("redis-server")
                or "/usr/bin/redis-server")
REDIS_NEEDED = ("%s (apt-get install redis-server; TLSMGR_REDIS_SERVER names another "
                "server, such as valkey-server)" % REDIS_SERVER)


class Redis:
    """A private redis-server on a UNIX socket, stopped by its pid.

    With ``netns`` and ``address`` it also listens on TCP port 6379 at that
    address, inside that network namespace (``tcp_url``); the UNIX socket
    (``url``) stays reachable from here, whatever the namespace."""

    def __init__(self, directory: Path, netns: str | None = None, address: str | None = None):
        self.directory = directory
        self.socket_path = directory / "redis.sock"
        self.url = "unix://%s?db=0" % self.socket_path
        self.netns, self.address = netns, address
        self.tcp_url = "redis://%s:6379/0" % address if address else None
        self.process = None
        self.start()

    def start(self):
        command = [REDIS_SERVER, "--port", "0", "--unixsocket", str(self.socket_path),
                   "--unixsocketperm", "777", "--save", "", "--appendonly", "no",
                   "--dir", str(self.directory), "--daemonize", "no"]
        if self.netns:
            command = [shutil.which("ip") or "/usr/sbin/ip", "netns", "exec", self.netns,
                       *command, "--port", "6379", "--bind", self.address,
                       "--protected-mode", "no"]
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        wait_for(self.ping, what="redis-server to answer")

    def ping(self) -> bool:
        try:
            return self.client().ping()
        except Exception:
            return False

    def client(self):
        import redis
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def stop(self):
        end_process(self.process)
        self.process = None


def redis_available() -> bool:
    return os.path.exists(REDIS_SERVER)


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_exchange_file_rewritten(exchange: Path, end) -> None:
    """The PRNG exchange file is whole (1024 bytes) and rewritten by end(),
    which ends the daemon (a signal, master going away) and returns its
    exit status: that must be 0."""
    wait_for(lambda: exchange.exists() and exchange.stat().st_size == 1024,
             what="the exchange file")
    before = exchange.read_bytes()
    assert end() == 0
    after = exchange.read_bytes()
    assert len(after) == 1024 and after != before


# Raw clients, for tests and benchmarks that misbehave on purpose.

def process_memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in bytes."""
    memory = {}
    with open("/proc/%d/status" % pid) as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                memory[name] = int(value.split()[0]) * 1024
    return memory


def connect(path, timeout=10.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    # A blocking connect waits while the listen queue is full (a UNIX
    # socket with a timeout would fail at once with EAGAIN).
    sock.connect(str(path))
    sock.settimeout(timeout)
    return sock


def request(sock, message: bytes):
    """Send one request on a connected socket whose handshake was read."""
    sock.sendall(message)
    decoder, messages = Decoder(), []
    while not messages:
        data = sock.recv(65536)
        assert data, "the server closed the connection"
        messages = decoder.feed(data)
    return messages[0]


def handshake(sock):
    decoder, messages = Decoder(), []
    while not messages:
        data = sock.recv(4096)
        assert data, "the server closed the connection before its handshake"
        messages = decoder.feed(data)
    assert messages[0] == ((b"protocol", b"tlsmgr_protocol"),)


def closed_by_server(sock, timeout: float) -> bool:
    """True once the server has closed this connection (EOF or reset)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def send_oversized_request(sock, total: int) -> int:
    """Send one update request with a session of about total bytes (a
    whole MiB at a time) and its end; return how much of it the daemon
    took before it closed the connection."""
    mib = 1 << 20
    sent = 0
    chunk = b"request\0update\0session\0" + b"A" * (mib - 24)
    try:
        while sent < total:
            sock.sendall(chunk)
            sent += len(chunk)
            chunk = b"A" * mib
        sock.sendall(b"\0\0")
    except OSError:
        pass                                 # refused: the daemon closed
    return sent


def write_storm(socket_path, prefix: str, stop, updates: list[int]) -> None:
    """Updates of 300-byte sessions to both caches, as fast as they are
    answered, until stopped or the daemon is gone."""
    try:
        with TlsmgrClient(str(socket_path)) as client:
            i = 0
            while not stop.is_set():
                cache = "smtpd" if i % 2 else "smtp"
                client.update(cache, "%s-%d" % (prefix, i), os.urandom(300))
                updates[0] += 1
                i += 1
    except (OSError, ClientError):
        pass                                     # the daemon was killed under us


LOADGEN_SOURCE = Path(__file__).resolve().parents[2] / "benchmarks" / "loadgen.c"


def build_loadgen(directory: Path) -> Path:
    """benchmarks/loadgen.c, the C load generator, compiled into directory."""
    binary = directory / "loadgen"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(binary), str(LOADGEN_SOURCE)],
                   check=True, timeout=120)
    return binary


def loadgen_burst(loadgen: Path, socket_path, seconds: float, conns: int = 8,
                  workload: str = "tktkey") -> dict:
    """A burst from the C load generator: conns connections, each asking
    again as soon as it is answered, for seconds (what a busy host's
    smtpd processes can do, and faster than Python clients could).
    Returns its JSON results: requests, statuses, errors, closed..."""
    import json
    result = subprocess.run(
        [str(loadgen), "--socket", str(socket_path), "--workload", workload,
         "--conns", str(conns), "--seconds", str(seconds), "--warmup", "0"],
        capture_output=True, text=True, timeout=seconds + 60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def tktkey_burst(socket_path, seconds: float, connections: int = 8):
    """connections clients asking for the current ticket key, one request
    after another without pause, for seconds (what a busy host's smtpd
    processes can do); returns their answers counted by status, and the
    errors they met."""
    answers: Counter = Counter()
    errors: list[str] = []
    stop = threading.Event()

    def client():
        try:
            with TlsmgrClient(str(socket_path), timeout=10) as tlsmgr:
                while not stop.is_set():
                    answers[tlsmgr.tktkey()[0]] += 1
        except (OSError, ClientError) as err:          # a reset, a timeout
            errors.append(repr(err))

    threads = [threading.Thread(target=client) for _ in range(connections)]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(15)
    return answers, errors


def kill_during_write_storm(daemon: Daemon, prefix: str, writers: int = 4,
                            after_updates: int = 300) -> None:
    """SIGKILL the daemon at a random moment while writers clients update
    as fast as they can (after at least after_updates updates)."""
    stop, updates = threading.Event(), [0]
    threads = [threading.Thread(target=write_storm,
                                args=(daemon.socket_path, "%s-%d" % (prefix, n), stop, updates))
               for n in range(writers)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: updates[0] > after_updates, timeout=30, what="the write storm to run")
        time.sleep(random.uniform(0, 0.5))
        daemon.process.send_signal(signal.SIGKILL)
        daemon.process.wait(10)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
