"""The ticket key ring on disk, for tlsmgr_preserve_sessions = yes.

So that tickets issued before a restart ("postfix reload", a crash) still
decrypt after it, the ring is saved whenever it changes, to a private file
in data_directory, and read at start.  Forward secrecy is the hazard: a
key on disk decrypts every ticket made with it.  So a key is on disk at
most for its own decrypt window (a key past it is never loaded, and is
gone from the file at the next save, which comes at the latest when the
current key is replaced), and the file is removed at start when the
option is off.

The file is replaced atomically (a new file, written and synced, renamed
over the old one), so that kill -9 at any moment leaves either the old
file or the new one; a file that is torn or altered anyway fails its
digest and is removed with a warning (never kept: it holds keys).  The
directory is opened before the chroot jail, and the file is reached
through it afterwards: the jail holds the queue directory, not
data_directory.

Layout: MAGIC (8 bytes), the number of keys (1 byte), the keys as the
tktkey request sends them (88 bytes each), a SHA-256 digest of all that.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable

from ..util import log
from ..util.leftovers import remove_damaged_copies
from .tickets import KEY_SIZE, TicketKey, TicketKeyRing

NAME = "tlsmgr_ticket_keys"
_MAGIC = b"tlsmgrK1"
_DIGEST = 32
_MAX_KEYS = 8


class KeyFile:
    """The saved ring in a directory (data_directory)."""

    def __init__(self, directory: str, clock: Callable[[], float] = time.time):
        self.path = os.path.join(directory, NAME)
        self._clock = clock
        self._warning = log.RateLimitedWarning()
        # One save at a time: two that met would write the same temporary
        # file, and one's rename would take the other's file from under it.
        self._writing = threading.Lock()
        # Reached through this descriptor once in the jail.
        self._directory = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        remove_damaged_copies(self.path)
        for name in os.listdir(self._directory):     # what a kill -9 left half-made
            if name.startswith(NAME + ".") and name.endswith(".new"):
                try:
                    os.unlink(name, dir_fd=self._directory)
                except OSError:
                    pass

    def load(self, timeout: int) -> list[TicketKey]:
        """The saved keys that may still decrypt (``timeout`` is the smtpd
        session cache timeout); nothing when there is no usable file."""
        try:
            fd = os.open(NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=self._directory)
        except FileNotFoundError:
            return []
        except OSError as err:
            log.warn("cannot read saved ticket keys %s: %s", self.path, err.strerror)
            return []
        try:
            data = os.read(fd, len(_MAGIC) + 1 + _MAX_KEYS * KEY_SIZE + _DIGEST + 1)
        finally:
            os.close(fd)
        keys = self._parse(data)
        if keys is None:
            self._remove_damaged()
            return []
        now = int(self._clock())
        return [key for key in keys if key.decrypts_until(timeout) > now]

    @staticmethod
    def _parse(data: bytes) -> list[TicketKey] | None:
        body, digest = data[:-_DIGEST], data[-_DIGEST:]
        if (len(body) < len(_MAGIC) + 1 or not body.startswith(_MAGIC)
                or hashlib.sha256(body).digest() != digest):
            return None
        count = body[len(_MAGIC)]
        packed = body[len(_MAGIC) + 1:]
        if count > _MAX_KEYS or len(packed) != count * KEY_SIZE:
            return None
        return [TicketKey.unpack(packed[i:i + KEY_SIZE]) for i in range(0, len(packed), KEY_SIZE)]

    def _remove_damaged(self) -> None:
        # Not set aside: a copy would keep its keys on disk for good.
        try:
            os.unlink(NAME, dir_fd=self._directory)
        except OSError as err:
            log.warn("saved ticket keys %s are damaged, and cannot be removed: %s",
                     self.path, err.strerror)
            return
        log.warn("saved ticket keys %s are damaged: removed, starting with new keys",
                 self.path)

    def save_ring(self, ring: TicketKeyRing) -> None:
        """Save the ring as it is when the file is written: of two saves
        that meet, the one written last has the latest keys."""
        with self._writing:
            self._write(ring.keys)

    def save(self, keys: list[TicketKey]) -> None:
        """Replace the file with these keys; a failure is a warning (the
        keys then live in memory only, as with the option off)."""
        with self._writing:
            self._write(keys)

    def _write(self, keys: list[TicketKey]) -> None:
        body = _MAGIC + bytes([len(keys)]) + b"".join(key.pack() for key in keys)
        data = body + hashlib.sha256(body).digest()
        temporary = "%s.%d.new" % (NAME, os.getpid())
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=self._directory)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, NAME, src_dir_fd=self._directory, dst_dir_fd=self._directory)
            os.fsync(self._directory)
        except OSError as err:
            self._warning("cannot save ticket keys to %s: %s (tickets made now will not "
                          "resume after a restart)", self.path, err.strerror)

    def close(self) -> None:
        os.close(self._directory)


def remove_saved_keys(directory: str) -> None:
    """With the option off: no key is left on disk from when it was on."""
    path = os.path.join(directory, NAME)
    remove_damaged_copies(path)
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    except OSError as err:
        log.warn("cannot remove saved ticket keys %s: %s", path, err.strerror)
        return
    log.info("removed saved ticket keys %s (tlsmgr_preserve_sessions = no)", path)
