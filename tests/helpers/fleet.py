"""Two Postfix hosts of one MX pool, for tests of session resumption across hosts.

Each host is a private Postfix instance (postfix_instance.py) in its own
network namespace (``ip netns add``, with its own ``lo`` up).  Both listen
on 127.0.0.1:PORT inside their namespace with the same master.cf service
name (smtpd's session cache ids, and from Postfix 3.12 on its tickets,
depend on it; ``listen_as`` gives a host another) and serve the same
certificate and key (a session only resumes with the same server
identity); each has its own queue and data directories.  A client in
host A's namespace reaches only host A, and one in host B's only host B,
as a client of a real pool reaches whichever host DNS gave it.

With our daemon (``ours=True``) both hosts keep their session caches and
ticket keys in one redis-server that the fleet starts (not the system
service), as a fleet has it: on another host, reached over TCP.  That host
is a third namespace, joined to the two by a bridge (10.250.0.1, the
hosts 10.250.0.2 and .3: addresses that exist only inside these
namespaces); its UNIX socket lets the tests look inside.  The hosts run
with chroot=y, Debian 12 and 13's default.  With the stock daemon each
host has its own btree cache and its own ticket keys.

Every wait is bounded (harness.wait_for), and ``close()`` always stops
both instances, the redis-server (by its pid) and deletes the
namespaces, whatever failed before; it may be called again.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from tlsmgr.stores.seal import new_secret_line

from .harness import Redis, postfix_dirs, start_as_master_does, wait_for
from .postfix_instance import OUR_COMMAND, PostfixInstance

PORT = 2525            # the same in both namespaces: the same service name
RELAY_PORT = 2526
KEY_PREFIX = "fleettest:"
HOST_NAMES = ("a", "b")
HANDSHAKE_TIMEOUT = 20  # one takes 1-2 s; smtpd hangs when tlsmgr does not answer


def ip_command() -> str:
    return shutil.which("ip") or "/usr/sbin/ip"


def run(*args, timeout: float = 30) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError("%s failed (exit %d): %s"
                           % (" ".join(map(str, args)), result.returncode,
                              (result.stderr or result.stdout).strip()))
    return result


# Network namespaces.

class Namespace:
    """A named network namespace with its loopback up; delete() is idempotent."""

    def __init__(self, name: str):
        self.name = name
        self.created = False

    def create(self):
        run(ip_command(), "netns", "add", self.name)
        self.created = True
        run(ip_command(), "-n", self.name, "link", "set", "lo", "up")

    def exists(self) -> bool:
        return (Path("/run/netns") / self.name).exists()

    def delete(self):
        if self.created and self.exists():
            run(ip_command(), "netns", "del", self.name)
        self.created = False

    def ip(self, *args):
        run(ip_command(), "-n", self.name, *args)


REDIS_ADDRESS = "10.250.0.1"
BRIDGE = "br0"


def join(hub: Namespace, host: Namespace, address: str, link: str):
    """A veth pair from host (at address/24) to the bridge in hub; deleting
    either namespace deletes it."""
    peer = link + "p"
    run(ip_command(), "link", "add", link, "type", "veth", "peer", "name", peer)
    run(ip_command(), "link", "set", link, "netns", host.name)
    run(ip_command(), "link", "set", peer, "netns", hub.name)
    hub.ip("link", "set", peer, "master", BRIDGE)
    hub.ip("link", "set", peer, "up")
    host.ip("addr", "add", address + "/24", "dev", link)
    host.ip("link", "set", link, "up")


# Redis.

class Host:
    """One Postfix instance in its own namespace."""

    def __init__(self, name: str, namespace: Namespace, instance: PostfixInstance):
        self.name = name
        self.namespace = namespace
        self.instance = instance

    def handshake(self, *args) -> str:
        """openssl s_client in this host's namespace; openssl's New/Reused line
        (an AssertionError with everything printed when there is none)."""
        try:
            output = self.instance.s_client(*args, timeout=HANDSHAKE_TIMEOUT)
        except subprocess.TimeoutExpired as err:
            raise AssertionError("s_client %s on host %s timed out after %ds"
                                 % (" ".join(args), self.name, HANDSHAKE_TIMEOUT)) from err
        line = next((text for text in output.splitlines()
                     if text.startswith(("New,", "Reused,"))), "")
        if not line:
            raise AssertionError("no New/Reused line from s_client %s on host %s:\n%s"
                                 % (" ".join(args), self.name, output))
        return line

    def log_excerpt(self, lines: int = 40) -> str:
        """The maillog lines worth reading when something went wrong."""
        wanted = [text for text in self.instance.log().splitlines()
                  if ("tlsmgr" in text or "warning" in text or "fatal" in text
                      or "panic" in text or "error" in text)
                  and "symlink leaves directory" not in text]     # postfix check
        return "\n".join(wanted[-lines:]) or "(nothing about tlsmgr, no warnings)"

    def our_daemon_died(self) -> bool:
        return bool(self.instance.ours and re.search(
            r"process \S+/%s pid \d+ (exit status|killed by)" % OUR_COMMAND,
            self.instance.log()))

    def run_our_daemon_as_master_does(self, seconds: float = 5) -> str:
        """Why our daemon dies under master(8), which sends its stderr
        nowhere: start it once as master does, with -V (log lines on stderr
        too), this host's main.cf and a scratch queue and data directory;
        return what it printed."""
        work = Path(tempfile.mkdtemp(prefix="tlsmgr-fleet-daemon-"))
        work.chmod(0o755)
        try:
            params = {}
            for line in (self.instance.conf / "main.cf").read_text().splitlines():
                name, _, value = line.partition(" = ")
                params[name] = value
            params.update(postfix_dirs(work))
            daemon = start_as_master_does([str(self.instance.daemons / OUR_COMMAND), "-V"],
                                          work, "ours", **params)
            try:
                def settled():
                    try:
                        return daemon.process.poll() is not None or daemon.connectable()
                    except AssertionError:           # exited meanwhile
                        return True
                with contextlib.suppress(AssertionError):
                    wait_for(settled, timeout=seconds, interval=0.1, what="the daemon")
                state = ("exited with status %s" % daemon.process.returncode
                         if daemon.process.poll() is not None else "running")
            finally:
                daemon.stop()
            return "%s; it printed:\n%s" % (state, daemon.log[-4000:])
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def destroy(self):
        """Stop the instance (if ``postfix stop`` fails or is slow, kill what
        is left of it) and remove its files.  Idempotent; it raises, after
        cleaning up, when the instance did not stop by itself."""
        instance = self.instance
        instance.started = False             # nothing left for instance.stop()
        try:
            if self._processes():
                # Not through the namespace: it only signals master, and the
                # namespace may be gone already.
                subprocess.run(["postfix", "-c", str(instance.conf), "stop"],
                               capture_output=True, timeout=30, check=False)
                wait_for(lambda: not self._processes(), timeout=20, interval=0.1,
                         what="Postfix on host %s to stop" % self.name)
        finally:
            try:
                self._kill_leftovers()
            finally:
                shutil.rmtree(instance.root, ignore_errors=True)

    def _kill_leftovers(self):
        """SIGKILL every process still running with this instance's config."""
        leftovers = [pid for pid in self._processes() if pid != os.getpid()]
        for pid in leftovers:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if leftovers:
            wait_for(lambda: not set(leftovers) & set(self._processes()), timeout=10,
                     what="processes of host %s to die" % self.name)

    def _processes(self) -> list[int]:
        """Live processes with this instance's MAIL_CONFIG (a zombie's
        environment reads as empty: zombies are not counted)."""
        marker = ("MAIL_CONFIG=%s\0" % self.instance.conf).encode()
        pids = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    if marker in (proc / "environ").read_bytes():
                        pids.append(int(proc.name))
                except OSError:
                    continue
        return pids


class Fleet:
    """Two hosts (``a`` and ``b``) and, for our daemon, their shared redis-server.

    Use as a context manager: entering starts everything (and cleans up
    whatever it started if that fails), leaving closes everything.
    """

    def __init__(self, *, ours: bool, label: str | None = None,
                 listen_as: dict[str, str] | None = None):
        self.ours = ours
        # The master.cf service name of a host's smtpd, where it is not the
        # one the others have.
        self.listen_as = listen_as or {}
        self.label = label or ("ours" if ours else "stock")
        self.redis: Redis | None = None
        self.secret_file: Path | None = None
        self.hosts: dict[str, Host] = {}
        self._cleanup = contextlib.ExitStack()

    def namespace_name(self, host: str) -> str:
        # The pid keeps parallel runs apart; the label, two fleets of one run.
        return "tlsfleet-%d-%s-%s" % (os.getpid(), self.label, host)

    def main_cf(self) -> dict:
        if not self.ours:
            return dict(smtpd_tls_session_cache_database="btree:${data_directory}/smtpd_scache")
        table = "redis:" + self.redis.tcp_url
        # Sealed, as a fleet should be: the seal works in the chroot jail.
        return dict(smtpd_tls_session_cache_database=table,
                    smtp_tls_session_cache_database=table,
                    tlsmgr_redis_key_prefix=KEY_PREFIX,
                    tlsmgr_fleet_secret_file=self.secret_file)

    def start(self):
        hub = None
        if self.ours:
            hub = Namespace(self.namespace_name("redis"))
            self._cleanup.callback(hub.delete)
            hub.create()
            hub.ip("link", "add", BRIDGE, "type", "bridge")
            hub.ip("addr", "add", REDIS_ADDRESS + "/24", "dev", BRIDGE)
            hub.ip("link", "set", BRIDGE, "up")
            directory = Path(tempfile.mkdtemp(prefix="tlsmgr-redis-"))
            self._cleanup.callback(shutil.rmtree, directory, ignore_errors=True)
            self.redis = Redis(directory, netns=hub.name, address=REDIS_ADDRESS)
            self._cleanup.callback(self.redis.stop)
            self.secret_file = directory / "fleet.secret"
            self.secret_file.write_text(new_secret_line() + "\n")
            self.secret_file.chmod(0o600)
        first = None
        for number, name in enumerate(HOST_NAMES, 2):
            namespace = Namespace(self.namespace_name(name))
            self._cleanup.callback(namespace.delete)
            namespace.create()
            if hub is not None:
                join(hub, namespace, "10.250.0.%d" % number,
                     "tf%d%s" % (os.getpid() % 100000, name))
            instance = PostfixInstance(ours=self.ours, chroot=True, netns=namespace.name,
                                       port=PORT, relay_port=RELAY_PORT,
                                       listen_as=self.listen_as.get(name), **self.main_cf())
            host = Host(name, namespace, instance)
            # Callbacks run last-in first-out: instances stop before their
            # namespaces go and before redis-server.
            self._cleanup.callback(host.destroy)
            if first is None:
                first = instance
            else:                            # one server identity for the pool
                for pem in ("cert.pem", "key.pem"):
                    shutil.copy2(first.conf / pem, instance.conf / pem)
            self.hosts[name] = host
        for host in self.hosts.values():
            host.instance.start()
        # Both hosts' smtpd and tlsmgr up and running before any test, as
        # in a pool that is already serving mail.
        for host in self.hosts.values():
            host.handshake("-tls1_2", "-no_ticket")

    def close(self):
        """Stop both instances, redis-server, delete the namespaces: every
        step runs even when an earlier one fails.  Idempotent."""
        self._cleanup.close()

    def __enter__(self) -> Fleet:
        try:
            self.start()
        except Exception as err:
            report = self.diagnostics()      # before close() removes the logs
            self.close()
            raise AssertionError("the fleet did not start: %s\n%s" % (err, report)) from err
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info):
        self.close()

    @property
    def a(self) -> Host:
        return self.hosts["a"]

    @property
    def b(self) -> Host:
        return self.hosts["b"]

    def daemon_pids(self) -> dict[str, list[int]]:
        """The running tlsmgr processes (ours or stock, as configured), per host."""
        return {name: host.instance.tlsmgr_pids() for name, host in self.hosts.items()}

    def wait_for_daemons(self, timeout: float = 10):
        """Every host has its tlsmgr process (an AssertionError with the logs if not)."""
        try:
            wait_for(lambda: all(self.daemon_pids().values()), timeout=timeout, interval=0.1,
                     what="a tlsmgr process on every host")
        except AssertionError as err:
            raise AssertionError("%s: %s\n%s" % (err, self.daemon_pids(),
                                                 self.diagnostics())) from None

    def diagnostics(self) -> str:
        """What the hosts logged and what Redis holds, for assertion messages."""
        parts = []
        for host in self.hosts.values():
            parts.append("--- host %s (%s) maillog %s:\n%s"
                         % (host.name, host.namespace.name, host.instance.maillog,
                            host.log_excerpt()))
        died = [host for host in self.hosts.values() if host.our_daemon_died()]
        if died:
            try:
                report = died[0].run_our_daemon_as_master_does()
            except Exception as err:                 # a report must not hide the failure
                report = "could not run it: %r" % err
            parts.append("--- our daemon died under master(8) on host(s) %s; started "
                         "as master does, with host %s's main.cf, it %s"
                         % (", ".join(host.name for host in died), died[0].name, report))
        if self.redis is not None:
            try:
                keys = sorted(self.redis.client().keys("*"))
                parts.append("--- redis: %d keys: %s" % (len(keys), keys[:20]))
            except Exception as err:
                parts.append("--- redis: %s" % err)
        return "\n".join(parts)
