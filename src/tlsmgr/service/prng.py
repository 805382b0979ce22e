"""The PRNG pool of tlsmgr(8), the entropy sources that feed it, and the
exchange file that carries its state across restarts.

smtpd(8) and smtp(8) ask tlsmgr for seed bytes; this module produces them.
The pool is an HMAC_DRBG (NIST SP 800-90A) seeded from the kernel, so its
output is unpredictable even when every configured source is bad; small
requests are cut from AES-256-CTR keystream under keys it draws.  The
source named by tls_random_source and the file named by
tls_random_exchange_name are then stirred in, never trusted.

Nothing here schedules anything.  The server calls one method per event of
the stock daemon (:meth:`Prng.reseed`, :meth:`Prng.update_exchange`, and
:meth:`Prng.mix_time` after each turn of the event loop) and sleeps for the
delay returned.  :class:`MustExit` asks it to pause for a second and exit,
so that master(8) starts a fresh process that can reopen what was lost.
"""

from __future__ import annotations

import errno
import fcntl
import hmac
import os
import select
import socket
import struct
import time
from typing import NoReturn

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ..util import log

TIMEOUT = 10                    # seconds, for each entropy device or EGD I/O
MAX_READ = 255                  # bytes per reseed from a device or EGD server
EXCHANGE_SIZE = 1024            # bytes kept in the exchange file
MAX_REQUEST = 1 << 16           # bytes per generate call, SP 800-90A table 2

# The stock daemon computes period * 255 in a C int; capping the period the
# same way keeps the longest interval between events identical.
MAX_PERIOD = (2**31 - 1) // 255

_EOF = "end of file"

_TIMES = struct.Struct("=qq")
_SMALL = 255                    # the largest seed request
_AHEAD = 4096                   # bytes of keystream made at once for small requests
_ZEROS = bytes(_AHEAD)
_NONCE = bytes(16)              # each block's key is used once: no nonce needed
_TIMES_BATCH = 64 * _TIMES.size


class MustExit(SystemExit):
    """Exit with status 0 after a 1 s pause, so that master(8) restarts us.

    The exchange file has already been brought up to date.  A SystemExit,
    because an event loop must not swallow it.
    """

    def __init__(self) -> None:
        super().__init__(0)


class Pool:
    """HMAC_DRBG with SHA-256, NIST SP 800-90A section 10.1.2.

    The whole state is a key and a chain value of 32 bytes each.  There is no
    reseed counter: the pool starts from the kernel's entropy and every later
    input is mixed in, so no path leads to a state that must be refused.
    """

    __slots__ = ("_key", "_times", "_value")

    def __init__(self, extra: bytes = b"") -> None:
        # The pid and clock keep a forked or restored copy of the kernel's
        # bytes apart; ``extra`` lets the caller add anything it has.
        self._instantiate(os.urandom(48)
                          + struct.pack("=qq", os.getpid(), time.time_ns())
                          + extra)

    @classmethod
    def from_seed(cls, seed_material: bytes) -> Pool:
        """A pool determined entirely by *seed_material* (known-answer tests)."""
        pool = cls.__new__(cls)
        pool._instantiate(seed_material)
        return pool

    def _instantiate(self, seed_material: bytes) -> None:
        self._times = bytearray()
        self._key = bytes(32)
        self._value = b"\x01" * 32
        self.mix(seed_material)

    def mix(self, data: bytes) -> None:
        """Stir *data* into the pool: the DRBG update with provided input.

        The new key is an HMAC keyed by the old one, so data of any origin,
        even chosen by an attacker, cannot make the state easier to guess.
        """
        self._update(self._take_times() + data)

    def _take_times(self) -> bytes:
        times, self._times = self._times, bytearray()
        return bytes(times)

    def _update(self, data: bytes) -> None:
        key = hmac.digest(self._key, self._value + b"\x00" + data, "sha256")
        value = hmac.digest(key, self._value, "sha256")
        if data:
            key = hmac.digest(key, value + b"\x01" + data, "sha256")
            value = hmac.digest(key, value, "sha256")
        self._key, self._value = key, value

    def mix_time(self) -> None:
        """Stir in the wall clock and the monotonic clock, in nanoseconds.

        This runs after every turn of the event loop, so it must be cheap:
        the times are gathered, and stirred in together before the pool
        next gives out bytes, or once a batch has gathered.
        """
        self._times += _TIMES.pack(time.time_ns(), time.monotonic_ns())
        if len(self._times) >= _TIMES_BATCH:
            self.mix(b"")

    def random_bytes(self, n: int) -> bytes:
        """Return *n* fresh bytes: the DRBG generate function."""
        if not 0 <= n <= MAX_REQUEST:
            raise ValueError(f"cannot generate {n} bytes at once")
        if self._times:
            self._update(self._take_times())
        value = self._value
        # One keyed HMAC, copied for each block: with OpenSSL 3, keying
        # (and finding SHA-256) anew per block costs half as much again.
        keyed = hmac.new(self._key, digestmod="sha256")
        blocks = []
        for _ in range(-(-n // 32)):
            block = keyed.copy()
            block.update(value)
            value = block.digest()
            blocks.append(value)
        self._value = value
        # Moving the key on means that whoever steals the state later
        # cannot recompute the bytes just returned.
        self._update(b"")
        return b"".join(blocks)[:n]


def _keystream(key: bytes) -> bytes:
    """A block of AES-256-CTR keystream under a key drawn from the pool
    for it alone (docs/PRNG.md): 128 HMAC_DRBG blocks would cost a hundred
    times as much, each a call through OpenSSL's HMAC."""
    encryptor = Cipher(algorithms.AES(key), modes.CTR(_NONCE)).encryptor()
    return encryptor.update(_ZEROS) + encryptor.finalize()


def _reason(exc: OSError) -> str:
    """The text that %m gives in a stock message: no errno, no path."""
    return exc.strerror or str(exc)


def _timed_read(fd: int, size: int) -> bytes:
    """One read(2) of at most *size* bytes, waiting at most TIMEOUT seconds."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if not poller.poll(TIMEOUT * 1000):
        raise TimeoutError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT))
    return os.read(fd, size)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionResetError(_EOF)
        data += chunk
    return data


class Prng:
    """The pool together with its entropy source and exchange file.

    Constructing one is the pre-jail work: the source and the exchange file
    are opened, not yet read.  ``reseeds`` counts reseeds that fed the pool,
    ``exchange_updates`` counts rewrites of the exchange file.
    """

    def __init__(self, source: str, random_bytes: int, exchange_path: str,
                 reseed_period: int, update_period: int,
                 pool: Pool | None = None) -> None:
        self.pool = pool if pool is not None else Pool()
        # Called after every event: the pool's own, without a call of ours
        # around it.  (Times mixed in leave the bytes ahead as they are.)
        self.mix_time = self.pool.mix_time
        self._ahead = b""
        self._ahead_used = 0
        self.source = source
        self.reseed_bytes = random_bytes
        self.exchange_path = exchange_path
        self.reseed_period = min(reseed_period, MAX_PERIOD)
        self.update_period = min(update_period, MAX_PERIOD)
        self.reseeds = self.exchange_updates = 0
        self._device: int | None = None
        self._egd: socket.socket | None = None
        self._file: int | None = None
        self._exchange: int | None = None

        kind, _, path = source.partition(":")
        if not source:
            log.warn("no entropy source specified with parameter "
                     "tls_random_source")
            log.warn("encryption keys etc. may be predictable")
        elif kind == "dev":
            try:
                # Non-blocking, so that a FIFO without a writer cannot hang
                # the start; every read is preceded by a poll anyway.
                self._device = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            except OSError as exc:
                log.warn("cannot open entropy device %s: %s", path, _reason(exc))
        elif kind == "egd":
            self._egd = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._egd.settimeout(TIMEOUT)
            try:
                self._egd.connect(path)
            except OSError as exc:
                self._egd.close()
                self._egd = None
                log.warn("cannot connect to EGD server %s: %s", path, _reason(exc))
        else:
            # Like the stock daemon, say nothing yet: the first reseed finds
            # the file missing and restarts with a message naming it.
            try:
                self._file = os.open(source, os.O_RDONLY)
            except OSError:
                pass

        if exchange_path:
            try:
                self._exchange = os.open(exchange_path,
                                         os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:
                log.fatal("cannot open PRNG exchange file %s: %s",
                          exchange_path, _reason(exc))

    def random_bytes(self, n: int) -> bytes:
        """n fresh bytes.  Small requests (seed replies, key material) are
        cut from a block made ahead, so that one generate call serves many:
        each byte is handed out once, and a mix discards the block."""
        if n > _SMALL:
            return self.pool.random_bytes(n)
        start = self._ahead_used
        if start + n > len(self._ahead):
            self._ahead, start = _keystream(self.pool.random_bytes(32)), 0
        self._ahead_used = start + n
        return self._ahead[start:start + n]

    def mix(self, data: bytes) -> None:
        self.pool.mix(data)
        # What follows must depend on the new data.
        self._ahead, self._ahead_used = b"", 0

    def reseed(self) -> float | None:
        """Feed the pool from the external source; return the next delay.

        None means that there is no source left to reseed from.  A device or
        EGD server that fails, or a source that could not be opened at start,
        is retried by a new process: the state is saved and MustExit raised.
        """
        if not self.source:
            return None
        path = self.source.partition(":")[2]
        if self._device is not None:
            try:
                data = _timed_read(self._device, min(self.reseed_bytes, MAX_READ))
                reason = _EOF
            except OSError as exc:
                data, reason = b"", _reason(exc)
            if not data:
                self._exit("cannot read from entropy device %s: %s -- "
                           "exiting to reopen", path, reason)
        elif self._egd is not None:
            data = self._ask_egd(self._egd, path, min(self.reseed_bytes, MAX_READ))
            if not data:
                self._exit("lost connection to EGD server %s -- "
                           "exiting to reconnect", path)
        elif self._file is not None:
            data = self._read_file_once(self._file)
        else:
            self._exit("exiting to reopen external entropy source %s",
                       self.source)
        if data:
            self.mix(data)
            self.reseeds += 1
        return self._delay(self.reseed_period) if self.source else None

    def _ask_egd(self, egd: socket.socket, path: str, size: int) -> bytes:
        """Ask the EGD server for up to *size* bytes; b"" on failure."""
        doing = "write to"
        try:
            egd.sendall(bytes((1, size)))
            doing = "read from"
            count = _recv_exactly(egd, 1)[0]
            if count == 0:
                log.info("EGD server %s reports zero bytes available", path)
                return b""
            doing = "read %d bytes from" % count
            return _recv_exactly(egd, count)
        except OSError as exc:
            log.info("cannot %s EGD server %s: %s", doing, path, _reason(exc))
            return b""

    def _read_file_once(self, fd: int) -> bytes:
        """Read the entropy file, then close it and forget the source."""
        self._file = None
        chunks, wanted = [], self.reseed_bytes
        reason = _EOF
        try:
            while wanted > 0 and (chunk := _timed_read(fd, wanted)):
                chunks.append(chunk)
                wanted -= len(chunk)
        except OSError as exc:
            reason = _reason(exc)
        finally:
            os.close(fd)
        data = b"".join(chunks)
        if not data or reason != _EOF:
            log.warn("cannot read from entropy file %s: %s", self.source, reason)
        self.source = ""
        return data

    def _exit(self, text: str, *args: object) -> NoReturn:
        log.warn(text, *args)
        self.save()
        raise MustExit

    def update_exchange(self) -> float | None:
        """Stir the exchange file; return the next delay, None if no file."""
        if self._exchange is None:
            return None
        if os.fstat(self._exchange).st_nlink == 0:
            # Updating a file nobody can open any more is pointless; a new
            # process creates it afresh.
            log.warn("PRNG exchange file was removed -- exiting to reopen")
            raise MustExit
        self.save()
        return self._delay(self.update_period)

    def save(self) -> None:
        """Read, stir and rewrite the exchange file under an exclusive lock.

        Other processes may have added entropy since the last visit, so the
        old contents are mixed in before the new ones are written.
        """
        if self._exchange is None:
            return
        fd, doing = self._exchange, "lock"
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            doing = "read"
            self.mix(os.pread(fd, EXCHANGE_SIZE, 0))
            doing = "write"
            # One write(2), so that even SIGKILL cannot leave half a file.
            written = os.pwrite(fd, self.pool.random_bytes(EXCHANGE_SIZE), 0)
            if written != EXCHANGE_SIZE:
                raise OSError(f"wrote {written} of {EXCHANGE_SIZE} bytes")
            # Only the first 1024 bytes are ever read, so a longer file (left
            # by something else) is cut back.  A no-op at the right size.
            os.ftruncate(fd, EXCHANGE_SIZE)
            doing = "unlock"
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError as exc:
            log.fatal("cannot %s PRNG exchange file %s: %s",
                      doing, self.exchange_path, _reason(exc))
        self.exchange_updates += 1

    def _delay(self, period: int) -> float:
        # A random fraction of the period keeps outsiders from predicting
        # when the pool is reseeded or its state written out.
        return period * self.pool.random_bytes(1)[0] / 255

    def close(self) -> None:
        """Close the source and the exchange file (the state is not saved)."""
        if self._egd is not None:
            self._egd.close()
        for fd in (self._device, self._file, self._exchange):
            if fd is not None:
                os.close(fd)
        self._device = self._egd = self._file = self._exchange = None
