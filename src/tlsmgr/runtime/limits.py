"""What no client may take from the others: connections and memory.

Two budgets that all connections share, each enforced the same way: when
it is spent, the connection that has held its share longest is closed to
make room, so that no set of clients can lock the others out.

* tlsmgr_connection_limit: at the limit, a new connection first closes
  the one that has been idle longest (a stalled client, or one that
  would reconnect).
* tlsmgr_client_buffer_limit: what all clients hold together (input not
  yet decoded, unfinished requests, replies they do not read); past the
  limit, the connections that have held bytes longest are closed until
  the rest fits.

Neither knows what a connection is beyond the small Protocols below.
"""

from __future__ import annotations

import asyncio
import ctypes
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Protocol

from ..observe.stats import Stats
from ..util import log

_TRIM_AFTER = 4 << 20   # bytes of client buffers freed before memory goes back

_malloc_trim: Callable[[int], int] | None
try:                                    # glibc's; elsewhere memory stays with us
    _malloc_trim = ctypes.CDLL(None).malloc_trim
except (OSError, AttributeError):
    _malloc_trim = None


class Budgeted(Protocol):
    """What a budget needs of a connection."""

    @property
    def last_active(self) -> float:
        """When it last sent something (time.monotonic())."""

    @property
    def stuck_since(self) -> float:
        """Since when it has kept us holding bytes for it."""

    def peer(self) -> str:
        """Who it is, for the warning."""

    def drop(self) -> None:
        """Close it now, and free what it holds now."""


class ConnectionTable:
    """The open connections, at most ``limit`` of them."""

    def __init__(self, limit: int, stats: Stats):
        self.limit = limit
        self.stats = stats
        self._open: set[Budgeted] = set()
        self._warning = log.RateLimitedWarning()

    def __len__(self) -> int:
        return len(self._open)

    def __iter__(self) -> Iterator[Budgeted]:
        return iter(list(self._open))

    def admit(self, connection: Budgeted) -> None:
        """Count a new connection in, first closing the one idle longest
        when the table is full."""
        if len(self._open) >= self.limit:
            oldest = min(self._open, key=lambda c: c.last_active)
            self.stats.errors["connection_limit"] += 1
            self._warning(
                "connection limit %d reached (tlsmgr_connection_limit): closing the "
                "connection of %s, idle for %.0f seconds", self.limit,
                oldest.peer(), time.monotonic() - oldest.last_active)
            oldest.drop()
            self._open.discard(oldest)
        self._open.add(connection)
        self.stats.accepted += 1

    def discard(self, connection: Budgeted) -> None:
        self._open.discard(connection)


class ClientMemory:
    """The bytes held for clients, at most ``limit`` of them together.
    Once much of it is freed, the memory goes back to the system."""

    def __init__(self, limit: int, stats: Stats):
        self.limit = limit
        self.stats = stats
        self.loop: asyncio.AbstractEventLoop | None = None   # for giving memory back
        self.held = 0                      # for all connections
        # Those that hold bytes, in the order they began to, and how many.
        self._holders: OrderedDict[Budgeted, int] = OrderedDict()
        self._peak = 0                     # since memory last went back
        self._trim_pending = False
        self._warning = log.RateLimitedWarning()

    def hold(self, connection: Budgeted, held: int) -> None:
        """Account for what a connection now holds; close the longest
        holders while all of them are past the limit."""
        holders = self._holders
        self.held += held - holders.get(connection, 0)
        if held:
            holders[connection] = held                  # an update keeps its place
        else:
            holders.pop(connection, None)
        if self.held > self._peak:
            self._peak = self.held
        elif (self._peak - self.held > _TRIM_AFTER and not self._trim_pending
                and self.loop is not None):
            self._trim_pending = True
            self.loop.call_later(1, self._give_back)
        while self.held > self.limit:
            oldest, oldest_held = holders.popitem(last=False)
            self._warning(
                "clients' unfinished requests and unread replies take %d bytes, over "
                "tlsmgr_client_buffer_limit (%d): closing the connection of %s, which "
                "has held %d bytes for %.0f seconds", self.held, self.limit,
                oldest.peer(), oldest_held, time.monotonic() - oldest.stuck_since)
            self.held -= oldest_held
            self.stats.errors["buffer_limit"] += 1
            oldest.drop()

    def _give_back(self) -> None:
        # Client buffers are large, short-lived and interleaved with small
        # objects, so the C heap cannot shrink by itself once they are freed.
        self._trim_pending = False
        self._peak = self.held
        if _malloc_trim is not None:
            _malloc_trim(0)
