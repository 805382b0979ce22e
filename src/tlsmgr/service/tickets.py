"""RFC 5077 session ticket keys, handed to smtpd(8) by the tktkey request.

smtpd encrypts TLS session tickets with keys it gets from tlsmgr, so that
a ticket issued by one smtpd process can be decrypted by another.  The
ring holds two keys: the current one, used to issue tickets until its
expiry time, and the one before it, still good for decrypting tickets
for as long again.  With T the smtpd session cache timeout, a new key
issues tickets until now + T/2 - 1 and decrypts them T/2 longer.

On the wire a key is the C struct the clients copy byte for byte: name
(16 bytes), AES-256 key (32), HMAC key (32), expiry as a native
little-endian 64-bit time_t: 88 bytes.

When the smtpd cache is on Redis, FleetTicketKeys shares the keys with the
other hosts of the fleet.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..observe.snapshot import Health
from ..stores import CannotOpen, StoreError
from ..util import log
from ..util.pending import Later, MaybeLater, then

_STORE_ERRORS = (StoreError,)

NAME_LENGTH = 16
CIPHER_KEY_LENGTH = 32
HMAC_KEY_LENGTH = 32

_LAYOUT = struct.Struct("<%ds%ds%dsq" % (NAME_LENGTH, CIPHER_KEY_LENGTH, HMAC_KEY_LENGTH))
KEY_SIZE = _LAYOUT.size          # 88


@dataclass(frozen=True)
class TicketKey:
    name: bytes
    cipher_key: bytes
    hmac_key: bytes
    expires: int                 # end of its use for issuing tickets

    def pack(self) -> bytes:
        return _LAYOUT.pack(self.name, self.cipher_key, self.hmac_key, self.expires)

    def decrypts_until(self, timeout: int) -> int:
        """The end of its decrypt window: half the smtpd session cache
        timeout after it stops issuing tickets.  At that second it no
        longer decrypts."""
        return self.expires + timeout // 2

    @classmethod
    def unpack(cls, data: bytes) -> TicketKey:
        return cls(*_LAYOUT.unpack(data))


class TicketKeys(Protocol):
    """What the request handlers and control requests ask of ticket keys:
    this host's ring alone, or the fleet's keys in front of it."""

    # Whether the keys are the fleet's (they may not be rotated by one host).
    shared: bool

    @property
    def ring(self) -> TicketKeyRing:
        """This host's own ring (for the stats: its keys and rotations)."""

    def current(self, timeout: int) -> MaybeLater[TicketKey]:
        """The key to issue tickets with: later when the fleet is asked."""

    def lookup(self, name: bytes, timeout: int) -> MaybeLater[tuple[TicketKey | None, str]]:
        """The key of that name while it may decrypt, and how the lookup
        went: one of observe.snapshot.OUTCOMES; later when the fleet is asked."""

    def at_hand(self, name: bytes, timeout: int) -> TicketKey | None:
        """The answer for name (empty: the current key) from memory alone."""

    @property
    def unopened(self) -> int:
        """Keys read from the fleet's Redis that did not open (seal.py)."""

    def health(self) -> Health | None:
        """How the fleet's Redis is doing for the keys; None for the ring."""


class TicketKeyRing:
    """The current and the previous ticket key.

    ``random_bytes(n)`` makes key material; ``clock()`` tells the time in
    whole seconds (tests pass their own).
    """

    shared = False
    unopened = 0                 # nothing is read from elsewhere

    def __init__(self, random_bytes: Callable[[int], bytes],
                 clock: Callable[[], float] = time.time,
                 on_change: Callable[[TicketKeyRing], None] | None = None):
        self._random_bytes = random_bytes
        self._clock = clock
        self._on_change = on_change           # keyfile.py saves the ring
        self.keys: list[TicketKey] = []       # sorted: latest expiry first
        self.rotations = 0
        self.rotated_at: float | None = None  # when the current key came

    def drop_spent(self, timeout: int) -> float:
        """Forget the keys past their decrypt window, and so does the saved
        ring (keyfile.py), however quiet the host; return the seconds until
        the next key's window ends, when this is to run again."""
        now = int(self._clock())
        live = [key for key in self.keys if key.decrypts_until(timeout) > now]
        if len(live) != len(self.keys):
            self.keys = live
            if self._on_change is not None:
                self._on_change(self)
        ends = [key.decrypts_until(timeout) - now for key in live]
        return float(min(ends) if ends else timeout // 2) + 1

    def restore(self, keys: list[TicketKey]) -> None:
        """Take on keys saved by an earlier process (keyfile.py): the
        latest goes on issuing tickets while it may."""
        self.keys = sorted(keys, key=lambda k: k.expires, reverse=True)[:2]

    def current(self, timeout: int) -> TicketKey:
        """The key to issue tickets with, made anew once the last expired.

        ``timeout`` is the smtpd session cache timeout (clamped, > 0).
        """
        now = int(self._clock())
        if self.keys and self.keys[0].expires > now:
            return self.keys[0]
        return self.rotate(timeout)

    def rotate(self, timeout: int) -> TicketKey:
        """A new current key now; the one before still decrypts, as long
        as it would have anyway."""
        key = TicketKey(self._random_bytes(NAME_LENGTH),
                        self._random_bytes(CIPHER_KEY_LENGTH),
                        self._random_bytes(HMAC_KEY_LENGTH),
                        int(self._clock()) + timeout // 2 - 1)
        self.add(key)
        return key

    def find(self, name: bytes, timeout: int) -> TicketKey | None:
        """The key of that name while it may still decrypt tickets."""
        return self.lookup(name, timeout)[0]

    def health(self) -> Health | None:
        return None

    def lookup(self, name: bytes, timeout: int) -> tuple[TicketKey | None, str]:
        now = int(self._clock())
        for index, key in enumerate(self.keys):
            if key.name == name:
                if key.decrypts_until(timeout) <= now:
                    return None, "expired"
                return key, "found_previous" if index else "found_current"
        return None, "unknown"

    @property
    def ring(self) -> TicketKeyRing:
        return self

    def at_hand(self, name: bytes, timeout: int) -> TicketKey | None:
        """The answer for this key name (empty: the current key) from memory."""
        return self.find(name, timeout) if name else self.current(timeout)

    def add(self, key: TicketKey) -> None:
        """Put a key in the ring, as the current one; the ring keeps it and
        the one with the later expiry of the others."""
        # Sorted stably: a key made in the same second as the last comes first.
        self.keys = sorted([key] + self.keys[:1], key=lambda k: k.expires, reverse=True)
        self.rotations += 1
        self.rotated_at = self._clock()
        if self._on_change is not None:
            self._on_change(self)


class SharedTicketKeys(Protocol):
    """Where the fleet's keys are kept (stores/redis.py's RedisTicketKeys).
    Its answers come later, or it raises StoreError at once."""

    def current(self, period: int, now: int,
                make_key: Callable[[int], bytes]) -> MaybeLater[bytes]:
        """The packed key of the period that contains now, made with
        make_key(expires) if this host is the first to ask."""

    def find(self, name: bytes) -> MaybeLater[bytes | None]:
        """The packed key of that name, if the fleet has it."""

    def health(self) -> Health:
        """What Breaker.health() says (stores/redis.py)."""


class FleetTicketKeys:
    """Ticket keys shared by every host of a fleet through Redis.

    All hosts agree on the current key (see stores/redis.py), so a ticket
    issued by one host decrypts on any other, and keys outlive a restart of
    any host's daemon.  When Redis fails, the last fleet key goes on
    issuing tickets while it may decrypt them; after that this host falls
    back to its own ring, so that it still resumes its own tickets; sharing
    comes back with Redis.  The current key, and any key in this host's
    ring, is answered from memory, at once; the others when Redis answers.
    """

    shared = True

    def __init__(self, fleet: SharedTicketKeys, local: TicketKeyRing,
                 random_bytes: Callable[[int], bytes],
                 clock: Callable[[], float] = time.time):
        self.fleet = fleet
        self.local = local
        self._random_bytes = random_bytes
        self._clock = clock
        self._current: TicketKey | None = None      # this period's, from Redis
        # The fleet asked for this period's key: every request meanwhile
        # waits for the one answer.
        self._asking: MaybeLater[TicketKey] | None = None
        self.unopened = 0
        self._warn = log.RateLimitedWarning()

    @property
    def ring(self) -> TicketKeyRing:
        return self.local

    def health(self) -> Health:
        return self.fleet.health()

    def _make(self, expires: int) -> bytes:
        return TicketKey(self._random_bytes(NAME_LENGTH), self._random_bytes(CIPHER_KEY_LENGTH),
                         self._random_bytes(HMAC_KEY_LENGTH), expires).pack()

    def current(self, timeout: int) -> MaybeLater[TicketKey]:
        now = int(self._clock())
        last = self._current
        if last is not None and last.expires > now:
            return last
        if self._asking is not None:
            return self._asking
        try:
            packed = self.fleet.current(timeout // 2, now, self._make)
        except StoreError as err:
            return self._not_current(timeout, err)
        self._asking = asking = then(packed, lambda packed: self._made_current(timeout, packed),
                                     lambda err: self._not_current(timeout, err),
                                     _STORE_ERRORS)
        if isinstance(asking, Later):
            asking.on_done(self._asked)
        else:
            self._asking = None
        return asking

    def _asked(self, _: object) -> None:
        self._asking = None

    def _made_current(self, timeout: int, packed: bytes) -> TicketKey:
        try:
            key = self._unpack(packed)
        except StoreError as err:
            return self._not_current(timeout, err)
        # Kept in this host's ring too, so that its tickets still decrypt
        # here while Redis is away.
        self.local.add(key)
        self._current = key
        return key

    def _not_current(self, timeout: int, err: Exception) -> TicketKey:
        self._failed(err)
        return self._current_at_hand(timeout)

    def _current_at_hand(self, timeout: int) -> TicketKey:
        # Redis is away (as a period ends, perhaps).  Every host goes on
        # issuing the last fleet key while it still decrypts, so that the
        # hosts keep agreeing; a key of this host's own would decrypt nowhere
        # else, and comes only after that.
        last = self._current
        if last is not None and last.decrypts_until(timeout) > int(self._clock()):
            return last
        return self.local.current(timeout)

    def at_hand(self, name: bytes, timeout: int) -> TicketKey | None:
        """The answer for this key name (empty: the current key) from memory,
        when Redis did not answer in time."""
        return self.local.find(name, timeout) if name else self._current_at_hand(timeout)

    def lookup(self, name: bytes, timeout: int) -> MaybeLater[tuple[TicketKey | None, str]]:
        # The current and previous keys are in memory: no need to ask Redis.
        key, outcome = self.local.lookup(name, timeout)
        if key is not None or outcome == "expired":
            return key, outcome
        try:
            packed = self.fleet.find(name)
        except StoreError as err:
            return self._not_found(err)
        return then(packed, lambda packed: self._found(name, timeout, packed),
                    self._not_found, _STORE_ERRORS)

    def _found(self, name: bytes, timeout: int,
               packed: bytes | None) -> tuple[TicketKey | None, str]:
        if packed is None:
            return None, "unknown"
        try:
            key = self._unpack(packed, name)
        except StoreError as err:
            return self._not_found(err)
        if key.decrypts_until(timeout) <= int(self._clock()):
            return None, "expired"
        return key, "found_fleet"

    def _not_found(self, err: Exception) -> tuple[TicketKey | None, str]:
        self._failed(err)
        return None, "unavailable"

    @staticmethod
    def _unpack(packed: bytes, name: bytes | None = None) -> TicketKey:
        # What Redis holds is untrusted, sealed or not.
        if len(packed) != KEY_SIZE:
            raise CannotOpen("a ticket key from Redis has %d bytes, not %d"
                             % (len(packed), KEY_SIZE))
        key = TicketKey.unpack(packed)
        if name is not None and key.name != name:
            raise CannotOpen("the ticket key stored in Redis for one name has another")
        return key

    def _failed(self, err: Exception) -> None:
        if isinstance(err, CannotOpen):
            self.unopened += 1
            self._warn("TLS session ticket keys: %s -- not used", err)
        else:
            self._warn("cannot share TLS session ticket keys: %s", err)
