"""Real TLS SMTP clients that resume sessions, for tests and benchmarks/soak.py.

Each handshake is what a mail client does: EHLO, STARTTLS, the TLS
handshake offering the session from last time, EHLO again, QUIT.  Python's
ssl module is OpenSSL's client: a TLS 1.2 client without tickets resumes by
session id (smtpd's session cache, through tlsmgr's lookup and update), a
TLS 1.3 client by ticket (sealed with the keys smtpd gets from tlsmgr's
tktkey).  Every wait is bounded by the socket timeout.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

TLS12, TLS13 = "TLSv1.2", "TLSv1.3"


class SmtpError(Exception):
    """The server said no, or said something else than SMTP."""


def client_context(version: str) -> ssl.SSLContext:
    """A client of one TLS version; the test server's certificate is self-signed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = context.maximum_version = (
        ssl.TLSVersion.TLSv1_2 if version == TLS12 else ssl.TLSVersion.TLSv1_3)
    if version == TLS12:
        context.options |= ssl.OP_NO_TICKET         # resumption by session id
    return context


def _reply(sock, expected: str) -> None:
    """Read one SMTP reply, all of its lines; it must have code expected."""
    data = b""
    while True:
        while b"\r\n" not in data:
            more = sock.recv(4096)
            if not more:
                raise SmtpError("connection closed by the server")
            data += more
        line, _, data = data.partition(b"\r\n")
        if line[3:4] != b"-":
            break
    if not line.startswith(expected.encode()):
        raise SmtpError(line.decode(errors="replace"))


@dataclass
class Handshake:
    session: ssl.SSLSession | None
    offered: bool                # a session from last time was offered
    resumed: bool
    version: str


def starttls(host: str, port: int, context: ssl.SSLContext,
             session: ssl.SSLSession | None = None, timeout: float = 20.0,
             source: str | None = None) -> Handshake:
    """One SMTP connection with STARTTLS, offering session; from the
    address source, if given."""
    with socket.create_connection((host, port), timeout=timeout,
                                  source_address=(source, 0) if source else None) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _reply(raw, "220")
        raw.sendall(b"EHLO client.example\r\n")
        _reply(raw, "250")
        raw.sendall(b"STARTTLS\r\n")
        _reply(raw, "220")
        with context.wrap_socket(raw, session=session) as tls:
            tls.sendall(b"EHLO client.example\r\n")
            _reply(tls, "250")                # by now a TLS 1.3 ticket has come too
            tls.sendall(b"QUIT\r\n")
            _reply(tls, "221")
            return Handshake(tls.session, session is not None, tls.session_reused,
                             tls.version() or "")


@dataclass
class Tally:
    """What a set of resuming clients saw, for one stretch of time."""
    handshakes: Counter = field(default_factory=Counter)     # by TLS version
    offered: Counter = field(default_factory=Counter)
    resumed: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)         # by what went wrong

    def add(self, done: Handshake) -> None:
        self.handshakes[done.version] += 1
        if done.offered:
            self.offered[done.version] += 1
            self.resumed[done.version] += done.resumed

    def resumed_fraction(self, version: str | None = None) -> float | None:
        offered = self.offered.total() if version is None else self.offered[version]
        resumed = self.resumed.total() if version is None else self.resumed[version]
        return resumed / offered if offered else None


class ResumingClients:
    """count clients, half TLS 1.2 without tickets and half TLS 1.3, each
    connecting again and again and offering its previous session, until
    stopped.  What they see is tallied into ``tally``, which the caller
    may swap for a new one to measure a stretch of time on its own."""

    def __init__(self, host: str, port: int, count: int, pause: float = 0.0):
        self.host, self.port, self.pause = host, port, pause
        self.tally = Tally()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(TLS12 if n % 2 else TLS13,),
                                          daemon=True) for n in range(count)]

    def __enter__(self) -> ResumingClients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def next_tally(self) -> Tally:
        """The tally so far; a new one starts."""
        with self._lock:
            done, self.tally = self.tally, Tally()
        return done

    def _run(self, version: str) -> None:
        context = client_context(version)
        session = None
        while not self._stop.is_set():
            try:
                done = starttls(self.host, self.port, context, session)
            except (OSError, ssl.SSLError, SmtpError) as err:
                with self._lock:
                    self.tally.errors[type(err).__name__ + ": " + str(err)[:80]] += 1
                session = None
                time.sleep(0.1)
                continue
            with self._lock:
                self.tally.add(done)
            session = done.session
            if self.pause:
                time.sleep(self.pause)
