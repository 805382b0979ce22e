"""Files that hold secrets: read only when no one else may read them.

The fleet's secret (seal.py) and the Redis password are read at start, as
root, before the privilege drop and the jail, from files that must be
private: a regular file, not a symbolic link, owned by root or mail_owner,
that neither group nor others may read or write.  Anything else is refused
with what to do about it.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Container

_READ_AT_MOST = 1 << 16


class SecretFileError(Exception):
    """The file cannot be used; the message says why and what to do."""


def read_private_file(path: str, owners: Container[int]) -> bytes:
    """What a private file holds; raises SecretFileError.

    ``owners`` are the uids it may belong to (root and mail_owner)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NOCTTY)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise SecretFileError("cannot open: is a symbolic link; name the file "
                                  "itself") from None
        raise SecretFileError("cannot open: %s" % (err.strerror or err)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SecretFileError("is not a regular file")
        if info.st_mode & 0o077:
            raise SecretFileError("may be read or written by group or others "
                                  "(mode %04o); chmod 600 it" % stat.S_IMODE(info.st_mode))
        if info.st_uid not in owners:
            raise SecretFileError("is owned by uid %d, not by root or mail_owner; "
                                  "chown root it" % info.st_uid)
        with os.fdopen(os.dup(fd), "rb") as file:
            return file.read(_READ_AT_MOST)
    finally:
        os.close(fd)


def read_secret_line(path: str, owners: Container[int]) -> str:
    """The one line of text of a private file, without its line end: a
    password, say, which may hold any character but a line end.  Blank
    lines around it are ignored; raises SecretFileError."""
    lines = [line for line in read_private_file(path, owners).splitlines() if line]
    if not lines:
        raise SecretFileError("is empty: write the secret on one line")
    if len(lines) > 1:
        raise SecretFileError("holds %d lines: write the secret alone, on one line"
                              % len(lines))
    try:
        return lines[0].decode("utf-8")
    except UnicodeDecodeError:
        raise SecretFileError("is not UTF-8 text") from None
