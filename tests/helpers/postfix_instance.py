"""A private Postfix instance, built from Debian's postfix package, for tests.

It has its own config, queue, data and daemon directories under one root,
listens on loopback only, and runs either Postfix's own tlsmgr or ours as
its tlsmgr service.  Two smtpd listeners: ``port`` (where tests connect
with openssl s_client) and ``relay_port`` (where the instance's own smtp
client relays mail, which is then discarded), both one connection per
process, so that sessions can only be resumed through tlsmgr.

With ``netns=NAME`` the instance lives in that network namespace (made by
the caller with ``ip netns add``): ``postfix`` commands and ``s_client``
run through ``ip netns exec NAME``, so its listeners are on that
namespace's loopback; ``port`` and ``relay_port`` may then be fixed
numbers, the same in several namespaces.  ``master_cf`` adds master.cf
lines (``{chroot}`` in them stands for the chroot column), ``listen_as``
is the master.cf service name of ``port``'s smtpd (default
``127.0.0.1:<port>``), and keyword parameters are main.cf settings over
the ones made here.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .harness import free_tcp_port, wait_for

DEBIAN_DAEMONS = Path("/usr/lib/postfix/sbin")
OUR_COMMAND = "pytlsmgr"
OUR_SCRIPT = Path(shutil.which("tlsmgr") or Path(os.sys.executable).parent / "tlsmgr")


def available() -> bool:
    return os.geteuid() == 0 and (DEBIAN_DAEMONS / "master").exists() \
        and shutil.which("postfix") is not None


MASTER_CF = """\
{port}   inet  n - {chroot} - - smtpd -o max_use=1
{relay_port} inet n - {chroot} - - smtpd -o max_use=1 -o content_filter=discard:
pickup    unix  n       -       {chroot}  60      1       pickup
cleanup   unix  n       -       {chroot}  -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       {chroot}  1000?   1       {tlsmgr}
rewrite   unix  -       -       {chroot}  -       -       trivial-rewrite
bounce    unix  -       -       {chroot}  -       0       bounce
defer     unix  -       -       {chroot}  -       0       bounce
trace     unix  -       -       {chroot}  -       0       bounce
verify    unix  -       -       {chroot}  -       1       verify
flush     unix  n       -       {chroot}  1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       {chroot}  -       -       smtp -o max_use=1
relay     unix  -       -       {chroot}  -       -       smtp
showq     unix  n       -       {chroot}  -       -       showq
error     unix  -       -       {chroot}  -       -       error
retry     unix  -       -       {chroot}  -       -       error
discard   unix  -       -       {chroot}  -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       {chroot}  -       -       lmtp
anvil     unix  -       -       {chroot}  -       1       anvil
scache    unix  -       -       {chroot}  -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixInstance:

    def __init__(self, *, ours: bool = True, chroot: bool = False, port: int | None = None,
                 relay_port: int | None = None, netns: str | None = None,
                 master_cf: str = "", listen_as: str | None = None, **params):
        self.root = Path(tempfile.mkdtemp(prefix="tlsmgr-postfix-"))
        self.root.chmod(0o755)
        self.conf = self.root / "conf"
        self.queue = self.root / "queue"
        self.data = self.root / "data"
        self.daemons = self.root / "daemon"
        self.maillog = self.root / "log" / "maillog"
        self.port = port or free_tcp_port()
        self.relay_port = relay_port or free_tcp_port()
        self.netns = netns
        self.ours = ours
        self.chroot = chroot
        self.started = False
        for directory in (self.conf, self.queue, self.daemons, self.maillog.parent):
            directory.mkdir(mode=0o755)
        self.data.mkdir(mode=0o700)
        shutil.chown(self.data, "postfix", "postfix")
        self._link_daemons()
        self._make_certificate()
        main = dict(
            compatibility_level="3.6",
            queue_directory=self.queue, data_directory=self.data,
            daemon_directory=self.daemons, mail_owner="postfix", setgid_group="postdrop",
            myhostname="tlsmgr-test.localdomain", mydestination="",
            inet_interfaces="loopback-only", inet_protocols="ipv4",
            mynetworks="127.0.0.0/8", alias_maps="", alias_database="",
            maillog_file=self.maillog, maillog_file_prefixes="/var, /dev/stdout, /tmp",
            relayhost="[127.0.0.1]:%d" % self.relay_port,
            smtpd_tls_cert_file=self.conf / "cert.pem", smtpd_tls_key_file=self.conf / "key.pem",
            smtpd_tls_security_level="may", smtpd_tls_loglevel=1,
            smtpd_tls_session_cache_database="btree:${data_directory}/smtpd_scache",
            smtp_tls_security_level="may", smtp_tls_loglevel=2,
            smtp_tls_session_cache_database="btree:${data_directory}/smtp_scache",
            smtpd_relay_restrictions="permit_mynetworks reject",
        )
        main.update(params)
        (self.conf / "main.cf").write_text("".join("%s = %s\n" % kv for kv in main.items()))
        (self.conf / "master.cf").write_text(MASTER_CF.format(
            port=listen_as or "127.0.0.1:%d" % self.port,
            relay_port="127.0.0.1:%d" % self.relay_port,
            chroot="y" if chroot else "n", tlsmgr=OUR_COMMAND if ours else "tlsmgr")
            + master_cf.format(chroot="y" if chroot else "n"))

    def _link_daemons(self):
        for daemon in DEBIAN_DAEMONS.iterdir():
            (self.daemons / daemon.name).symlink_to(daemon)
        if self.ours:
            (self.daemons / OUR_COMMAND).symlink_to(OUR_SCRIPT)

    def _make_certificate(self):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                        "-keyout", self.conf / "key.pem", "-out", self.conf / "cert.pem",
                        "-days", "2", "-subj", "/CN=tlsmgr-test.localdomain"],
                       check=True, capture_output=True, timeout=60)

    def command(self, *args) -> list[str]:
        """A command line, run in this instance's network namespace if it has one."""
        if self.netns:
            return [shutil.which("ip") or "/usr/sbin/ip", "netns", "exec", self.netns, *args]
        return list(args)

    def postfix(self, *args, check=True, timeout=60) -> subprocess.CompletedProcess:
        return subprocess.run(self.command("postfix", "-c", str(self.conf), *args),
                              capture_output=True, text=True, timeout=timeout, check=check)

    def start(self):
        self.postfix("start")
        self.started = True
        wait_for(self._listening, timeout=30, what="smtpd to listen")

    def _listening(self) -> bool:
        if self.netns:
            # Not reachable from here: ask ss(8) inside the namespace.
            result = subprocess.run(
                self.command("ss", "-Hltn", "sport = :%d" % self.port),
                capture_output=True, text=True, timeout=10)
            return result.returncode == 0 and bool(result.stdout.strip())
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def stop(self):
        if self.started:
            self.postfix("stop", check=False)
            self.started = False
            master_pid = self.queue / "pid" / "master.pid"
            wait_for(lambda: not master_pid.exists() or not self._alive(master_pid),
                     timeout=30, what="master to stop")

    @staticmethod
    def _alive(pid_file: Path) -> bool:
        try:
            os.kill(int(pid_file.read_text().split()[0]), 0)
            return True
        except (OSError, ValueError, IndexError):
            return False

    def destroy(self):
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        try:
            return self.maillog.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, text: str, timeout: float = 30) -> str:
        wait_for(lambda: text in self.log(), timeout=timeout, what=repr(text))
        return self.log()

    def tlsmgr_pids(self, ours: bool | None = None) -> list[int]:
        """The running tlsmgr processes of this instance: ours or the stock one."""
        ours = self.ours if ours is None else ours
        return self.pids(OUR_COMMAND if ours else "tlsmgr")

    def pids(self, command: str) -> list[int]:
        """The running processes of this instance that run command."""
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(arg.endswith(b"/" + command.encode()) or arg == command.encode()
                   for arg in cmdline[:2]) and self._in_instance(proc):
                pids.append(int(proc.name))
        return pids

    def _in_instance(self, proc: Path) -> bool:
        try:
            return str(self.conf) in (proc / "environ").read_bytes().decode(errors="replace")
        except OSError:
            return False

    # TLS clients.

    def s_client(self, *args, port=None, timeout=30) -> str:
        """openssl s_client with STARTTLS; returns what it printed.

        It stays connected a moment before QUIT, so that a TLS 1.3 ticket,
        which the server sends after the handshake, reaches it.
        """
        process = subprocess.Popen(
            self.command(
                "openssl", "s_client", "-starttls", "smtp", "-connect",
                "127.0.0.1:%d" % (port or self.port), "-servername", "tlsmgr-test.localdomain",
                *args), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        try:
            time.sleep(1)
            out, _ = process.communicate("QUIT\n", timeout=timeout)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        return out

    def send_mail(self, recipient: str, subject: str):
        """Submit a message over SMTP to the main listener, without TLS
        (from this namespace: not for an instance with ``netns``)."""
        import smtplib
        with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as smtp:
            smtp.sendmail("sender@tlsmgr-test.localdomain", [recipient],
                          "Subject: %s\r\n\r\nbody\r\n" % subject)

    def wait(self, seconds: float):
        time.sleep(seconds)


def handshake(instance, *args) -> str:
    """Run s_client on an instance; return openssl's New/Reused line."""
    output = instance.s_client(*args)
    line = next((text for text in output.splitlines()
                 if text.startswith(("New,", "Reused,"))), "")
    assert line, output
    return line
