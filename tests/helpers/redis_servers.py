"""Real Redis topologies for tests and benchmarks: a Cluster, a Sentinel
set, a slow Redis; and a daemon on them with a client that times it.

Every server is Debian's redis-server, or the one TLSMGR_REDIS_SERVER names
(valkey-server), on 127.0.0.1 (a sentinel is ``redis-server --sentinel``),
started with its own directory and port and stopped by its pid in
``close()``, whatever failed before.  Faults are
done to real processes: SIGKILL, SIGSTOP (a hung server), stopping one.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import redis

from tlsmgr.admin.client import TlsmgrClient

from .harness import REDIS_SERVER, end_process, free_tcp_port, start_ours, wait_for

# redis-cli beside redis-server, valkey-cli beside valkey-server.
REDIS_CLI = str(Path(REDIS_SERVER).with_name(Path(REDIS_SERVER).name.replace("-server", "-cli")))


def free_cluster_port() -> int:
    """A free port whose cluster bus port (10000 above it) is free too."""
    for _ in range(100):
        port = random.randrange(20000, 30000)
        if all(_free(p) for p in (port, port + 10000)):
            return port
    raise AssertionError("no free pair of ports for a cluster node")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def fleet_host(tmp_path: Path, name: str, url: str, timeout_ms: int = 250, **extra):
    """Our daemon, stand-alone, with both caches on the Redis at url."""
    directory = tmp_path / name
    (directory / "data").mkdir(parents=True)
    table = "redis:" + url
    params = dict(data_directory=directory / "data",
                  smtpd_tls_session_cache_database=table, smtp_tls_session_cache_database=table,
                  tlsmgr_redis_key_prefix="faults%d:" % os.getpid(),
                  tlsmgr_redis_timeout_ms=timeout_ms)
    return start_ours(directory, **{**params, **extra})


def timed(call, *args):
    began = time.monotonic()
    result = call(*args)
    return result, time.monotonic() - began


class Load(threading.Thread):
    """A client that saves a session and looks it up again, one request
    after another, timing each; ``found`` counts lookups of sessions saved
    that were answered with the session, and ``found_at`` says when the
    last one was; ``acknowledged`` holds when each saved one was saved."""

    def __init__(self, socket_path, name: str):
        super().__init__(daemon=True)
        self.socket_path, self.name = socket_path, name
        self.slowest = 0.0
        self.saved = self.found = self.requests = 0
        self.found_at = 0.0
        self.acknowledged: list[tuple[float, str]] = []
        self.done = threading.Event()
        self.error: Exception | None = None

    def run(self):
        try:
            with TlsmgrClient(str(self.socket_path), timeout=30) as client:
                n = 0
                while not self.done.is_set():
                    n += 1
                    cache_id = "%s-%d" % (self.name, n)
                    status, took = timed(client.update, "smtpd", cache_id, b"s")
                    self.slowest = max(self.slowest, took)
                    if status == 0:
                        self.saved += 1
                        self.acknowledged.append((time.monotonic(), cache_id))
                        (status, _), took = timed(client.lookup, "smtpd", cache_id)
                        self.slowest = max(self.slowest, took)
                        if status == 0:
                            self.found += 1
                            self.found_at = time.monotonic()
                    self.requests += 2
        except Exception as err:                       # reported by stop()
            self.error = err

    def stop(self):
        self.done.set()
        self.join(30)
        assert self.error is None, self.error

    def __enter__(self) -> Load:
        """Started, and saving sessions."""
        self.start()
        try:
            wait_for(self.saving_again, timeout=20, what="the load to run")
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()

    def saving_again(self) -> bool:
        assert self.is_alive(), "the load client stopped: %r" % self.error
        before = self.found
        time.sleep(0.3)
        return self.found > before



class Node:
    """One redis-server (or sentinel) process; what it logs is in
    ``directory/log``."""

    def __init__(self, directory: Path, *args: str, sentinel_config: str | None = None,
                 port: int | None = None):
        self.port = port or free_tcp_port()
        self.directory = directory / str(self.port)
        self.directory.mkdir(parents=True)
        self.args = args
        self.sentinel_config = sentinel_config
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self):
        common = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                  "--appendonly", "no", "--dir", str(self.directory)]
        if self.sentinel_config is not None:
            config = self.directory / "sentinel.conf"
            if not config.exists():                  # a sentinel rewrites its own
                config.write_text(self.sentinel_config)
            command = [REDIS_SERVER, str(config), "--sentinel", "--port", str(self.port),
                       "--bind", "127.0.0.1", "--dir", str(self.directory)]
        else:
            command = [REDIS_SERVER, *common, *self.args]
        with open(self.directory / "log", "ab") as log:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=log)
        wait_for(self.answers, what="redis-server on port %d" % self.port)

    def client(self, timeout: float = 5, **options) -> redis.Redis:
        return redis.Redis("127.0.0.1", self.port, socket_timeout=timeout,
                           socket_connect_timeout=timeout, **options)

    def answers(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def signal(self, sig: int):
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def kill(self):
        """kill -9, as a crashed host."""
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(10)
        self.process = None

    def stop(self):
        self.signal(signal.SIGCONT)             # a hung one ends too
        end_process(self.process)
        self.process = None


class Servers:
    """Nodes that close() stops, whatever happened."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.nodes: list[Node] = []

    def node(self, *args, **options) -> Node:
        made = Node(self.directory, *args, **options)
        self.nodes.append(made)
        return made

    def close(self):
        for node in self.nodes:
            node.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Cluster(Servers):
    """A Redis Cluster of 3 masters with a replica each, on loopback."""

    def __init__(self, directory: Path, masters: int = 3):
        super().__init__(directory)
        try:
            for _ in range(2 * masters):
                self.node("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                          "--cluster-node-timeout", "1000",
                          # A replica may always take over (it is in sync here).
                          "--cluster-replica-validity-factor", "0", port=free_cluster_port())
            subprocess.run([REDIS_CLI, "--cluster", "create",
                            *("127.0.0.1:%d" % node.port for node in self.nodes),
                            "--cluster-replicas", "1", "--cluster-yes"],
                           check=True, capture_output=True, timeout=60)
            wait_for(self.healthy, timeout=30, what="the cluster to be ok")
            # A replica takes its master's data a few seconds after it is
            # made (repl-diskless-sync-delay): until then a fail-over
            # would promote an empty replica.
            wait_for(self.replicas_in_sync, timeout=30, what="the replicas to be in sync")
        except BaseException:
            self.close()
            raise

    def replicas_in_sync(self) -> bool:
        for node in self.nodes:
            info = node.client().info("replication")
            if info["role"] == "slave" and info.get("master_link_status") != "up":
                return False
        return True

    def url(self, *nodes: Node) -> str:
        return "redis+cluster://" + ",".join("127.0.0.1:%d" % n.port
                                             for n in nodes or self.nodes[:3])

    def healthy(self) -> bool:
        for node in self.nodes:
            if node.process is None:
                continue
            try:
                info = node.client().execute_command("CLUSTER", "INFO")
            except redis.RedisError:
                return False
            if b"cluster_state:ok" not in info:
                return False
        return True

    def master_of(self, key: bytes) -> Node:
        """The node that serves the slot of key now."""
        for node in self.nodes:
            if node.process is None:
                continue
            try:
                client = node.client(timeout=0.5)      # one may be hung
                slot = client.execute_command("CLUSTER", "KEYSLOT", key)
                for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                    if start <= slot <= end:
                        port = master[1]
                        return next(n for n in self.nodes if n.port == port)
            except redis.RedisError:
                continue
        raise AssertionError("no node answers for the slot of %r" % key)


class SentinelSet(Servers):
    """A master, a replica and three sentinels watching them (quorum 2),
    which fail over a second after the master stops answering."""

    SERVICE = "pool"

    def __init__(self, directory: Path):
        super().__init__(directory)
        try:
            self.master = self.node()
            self.replica = self.node("--replicaof", "127.0.0.1", str(self.master.port))
            config = (f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.master.port} 2\n"
                      f"sentinel down-after-milliseconds {self.SERVICE} 1000\n"
                      f"sentinel failover-timeout {self.SERVICE} 3000\n"
                      f"sentinel parallel-syncs {self.SERVICE} 1\n")
            self.sentinels = [self.node(sentinel_config=config) for _ in range(3)]
            wait_for(lambda: self.known_master() == self.master.port, timeout=20,
                     what="the sentinels to agree on the master")
        except BaseException:
            self.close()
            raise

    def url(self, *sentinels: Node, db: int = 0) -> str:
        return "redis+sentinel://%s/%s/%d" % (
            ",".join("127.0.0.1:%d" % s.port for s in sentinels or self.sentinels),
            self.SERVICE, db)

    def known_master(self) -> int | None:
        for sentinel in self.sentinels:
            if sentinel.process is None:
                continue
            try:
                _, port = sentinel.client().execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.SERVICE)
                return int(port)
            except (redis.RedisError, TypeError, ValueError):
                continue
        return None


class SlowProxy:
    """A TCP proxy in front of a Redis that holds every answer back for
    delay seconds: a Redis far away, or overloaded.  What each read from
    a client brought, on its way to Redis, is kept in ``sent``."""

    def __init__(self, target_port: int, delay: float):
        self.target_port = target_port
        self.delay = delay
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.sent: list[bytes] = []
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pump, args=(client, upstream, 0.0),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, self.delay),
                             daemon=True).start()

    def _pump(self, source, sink, delay):
        try:
            while not self._closed.is_set():
                data = source.recv(65536)
                if not data:
                    break
                if delay:
                    time.sleep(delay)
                else:
                    self.sent.append(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            source.close()

    def close(self):
        self._closed.set()
        self.listener.close()
