"""Damaged copies of the daemon's files, which hold secrets: never kept.

A cache file holds session master secrets, and the key file ticket keys
that decrypt every ticket made with them.  Earlier versions set a damaged
one aside as ``NAME.damaged-YYYYmmdd-HHMMSS`` and never removed it, so
that it outlived the decrypt window that CONFIGURATION.md promises, and
tlsmgr_preserve_sessions = no as well.  Now a damaged file is removed at
once, and copies that an earlier version set aside are removed at start,
with a line in the log for each.
"""

from __future__ import annotations

import os

from . import log

_DAMAGED = ".damaged-"


def remove_damaged_copies(path: str) -> None:
    """Remove what an earlier version set aside as a damaged copy of path.

    Unlinking takes no link in the directory for another file: a symbolic
    link planted under such a name is itself removed, and nothing else."""
    directory, name = os.path.split(path)
    try:
        names = os.listdir(directory or ".")
    except OSError:
        return                      # opening path itself will say what is wrong
    for entry in names:
        if not entry.startswith(name + _DAMAGED):
            continue
        copy = os.path.join(directory, entry)
        try:
            os.unlink(copy)
        except OSError as err:
            log.warn("cannot remove %s, a damaged copy of %s that may hold secrets: %s; "
                     "remove it by hand", copy, name, err.strerror)
            continue
        log.info("removed %s, a damaged copy of %s that an earlier version kept", copy, name)
