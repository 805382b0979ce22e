"""Postfix's attr0 attribute protocol as a sans-I/O codec.

An attribute is ``name NUL value NUL``; a message is a list of attributes
ended by one more NUL (an empty name).  Integers travel as unsigned
decimal text, binary values as padded base64.  Nothing here touches a
socket: the server, the client and the tests feed bytes in and take
messages out.

    >>> encode([("request", "seed"), ("size", 32)])
    b'request\\x00seed\\x00size\\x0032\\x00\\x00'
    >>> Decoder().feed(b'status\\x000\\x00\\x00')
    [((b'status', b'0'),)]

The decoder is incremental (bytes may arrive in any pieces) and bounded:
a message larger than ``max_size`` bytes, or of more than
``MAX_ATTRIBUTES`` attributes, raises :class:`MessageTooLarge` before more
than that is held.  Bytes that arrive a few at a time cost no quadratic
copying.  It never raises anything but :class:`AttrError` and its
subclasses.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Callable, Iterable
from typing import NoReturn

Message = tuple[tuple[bytes, bytes], ...]
Value = str | bytes | int

DEFAULT_MAX_SIZE = 65536
# Postfix's requests have at most five attributes.  The cap keeps a message
# of tiny attributes from costing far more memory than its size in bytes.
MAX_ATTRIBUTES = 256
_MAX_TOKENS = 2 * MAX_ATTRIBUTES

_NUL = b"\0"
_ULONG_MAX = 0xFFFFFFFFFFFFFFFF
_TOKEN_COST = 48        # a bytes object and its list slot, besides its bytes


class AttrError(Exception):
    """A malformed or unacceptable attribute message."""


class MessageTooLarge(AttrError):
    """A message grew past the decoder's limit, of bytes or of attributes."""

    def __init__(self, limit: int, unit: str = "bytes"):
        super().__init__("message exceeds %d %s" % (limit, unit))
        self.limit = limit
        self.unit = unit


# Encoding.

def encode_int(number: int) -> bytes:
    """Unsigned 32-bit decimal text, as Postfix prints an int: -2 -> 4294967294."""
    return b"%d" % (number & 0xFFFFFFFF)


def _encode_data(data: bytes) -> bytes:
    return binascii.b2a_base64(data, newline=False)


encode_data: Callable[[bytes], bytes]
try:
    # The same, two letters at a time (_fastpath.c), where it is built.
    from ..service._fastpath import encode_base64
except ImportError:
    encode_data = _encode_data
else:
    encode_data = encode_base64


def _encode_value(value: Value) -> bytes:
    # bool is an int: Postfix sends booleans as 0/1 too.
    if isinstance(value, int):
        return encode_int(value)
    if isinstance(value, bytes):
        return encode_data(value)
    return value.encode("utf-8", "surrogateescape")


def encode(attributes: Iterable[tuple[str, Value]]) -> bytes:
    """One message: ``str`` values as strings, ``int`` as numbers, ``bytes``
    as base64 data."""
    parts = []
    for name, value in attributes:
        parts.append(name.encode("ascii"))
        parts.append(_encode_value(value))
    parts.append(b"")
    parts.append(b"")
    return _NUL.join(parts)


# Decoding of values (the decoder hands out raw bytes).

_NUMBER = re.compile(rb"[ \t\n\v\f\r]*([+-]?)([0-9]+)")


def decode_int(text: bytes) -> int | None:
    """Parse a number like Postfix's ``sscanf("%u")``: leading white space,
    an optional sign, digits, nothing after.  Returns the value as the C
    ``int`` it lands in (4294967294 -> -2), or None when malformed."""
    match = _NUMBER.fullmatch(text)
    if match is None:
        return None
    sign, digits = match.groups()
    digits = digits.lstrip(b"0")
    # strtoul saturates, whatever the sign (and so may we, before int()
    # meets a hostile length).
    value = int(digits or b"0") if len(digits) <= 20 else _ULONG_MAX + 1
    if value > _ULONG_MAX:
        value = _ULONG_MAX
    elif sign == b"-":
        value = -value
    value &= 0xFFFFFFFF
    return value - 0x100000000 if value & 0x80000000 else value


_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUE = {char: index for index, char in enumerate(_B64_ALPHABET)}


def decode_data(text: bytes) -> bytes | None:
    """Padded base64 as Postfix's base64_decode() reads it, or None when
    malformed."""
    if len(text) % 4:
        return None
    if b"=" in text[:-2]:
        # Padding before the last group: binascii's strict mode may take
        # it, Postfix stops there.  The slow path says what Postfix says.
        decoded, ok = decode_data_prefix(text)
        return decoded if ok else None
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except binascii.Error:
        decoded, ok = decode_data_prefix(text)
        return decoded if ok else None


def decode_data_prefix(text: bytes) -> tuple[bytes, bool]:
    """Decode like Postfix's base64_decode(), group by group: the bytes it
    produced, and whether the whole input was good.

    The slow path, for input that strict base64 refuses.  Postfix stops at
    the first '=' in the third or fourth place of a group and ignores what
    follows; at a bad character it stops, keeping what it decoded so far
    (which the stock tktkey reply echoes).
    """
    out = bytearray()
    if len(text) % 4:
        return bytes(out), False
    value = _B64_VALUE.get
    for start in range(0, len(text), 4):
        c0, c1, c2, c3 = text[start:start + 4]
        v0, v1 = value(c0), value(c1)
        if v0 is None or v1 is None:
            return bytes(out), False
        out.append((v0 << 2 | v1 >> 4) & 0xFF)
        if c2 == 0x3D:
            break
        v2 = value(c2)
        if v2 is None:
            return bytes(out), False
        out.append((v1 << 4 | v2 >> 2) & 0xFF)
        if c3 == 0x3D:
            break
        v3 = value(c3)
        if v3 is None:
            return bytes(out), False
        out.append((v2 << 6 | v3) & 0xFF)
    return bytes(out), True


def _size_of(tokens: list[bytes]) -> int:
    """Bytes on the wire of names and values, each with its NUL."""
    return sum(map(len, tokens)) + len(tokens)


class Decoder:
    """Incremental attr0 decoder: feed bytes, get complete messages.

    A message is a tuple of ``(name, value)`` byte pairs, in wire order.
    """

    def __init__(self, max_size: int = DEFAULT_MAX_SIZE):
        self.max_size = max_size
        self._tail: bytes | bytearray = b""     # bytes after the last NUL
        self._tokens: list[bytes] = []    # names and values of the message so far
        self._size = 0                    # bytes of the message so far

    @property
    def idle(self) -> bool:
        """True at a message boundary: nothing of a next message is held."""
        return not self._tail and not self._tokens

    @property
    def held(self) -> int:
        """What an unfinished message takes in memory, roughly: its bytes,
        and the objects its names and values are held in."""
        return self._size + len(self._tail) + _TOKEN_COST * len(self._tokens)

    def feed(self, data: bytes) -> list[Message]:
        """Take more bytes; return the messages they complete."""
        tail = self._tail
        if tail:
            if _NUL not in data:
                # More of one name or value: grow it in place, so that a
                # client sending a byte at a time costs no repeated copying.
                if type(tail) is bytes:
                    tail = self._tail = bytearray(tail)
                tail += data
                if self._size + len(tail) > self.max_size:
                    self._overflow(self.max_size)
                return []
            data = b"".join((tail, data))
        parts = data.split(_NUL)
        # The usual case, on every request's path: one whole message, and
        # nothing before it.  Its names are at the even places, none empty,
        # and it ends with an empty name and the last NUL.
        if (len(parts) & 1 == 0 and not parts[-1] and not parts[-2] and not tail
                and not self._tokens and len(data) <= self.max_size
                and len(parts) - 2 <= _MAX_TOKENS and all(parts[0:-2:2])):
            del parts[-2:]
            it = iter(parts)
            return [tuple(zip(it, it))]
        self._tail = parts.pop()
        limit = self.max_size
        # A message's size is worked out only when this data, with what came
        # before, could take it over the limit: seldom.
        may_overflow = self._size + len(data) > limit
        messages = []
        tokens = self._tokens
        for part in parts:
            if part or len(tokens) & 1:
                tokens.append(part)
            else:                         # an empty name ends the message
                if len(tokens) > _MAX_TOKENS or (may_overflow
                                                 and _size_of(tokens) >= limit):
                    self._refuse()
                it = iter(tokens)
                messages.append(tuple(zip(it, it)))
                tokens = self._tokens = []
        self._size = _size_of(tokens) if tokens else 0
        if self._size + len(self._tail) > limit or len(tokens) > _MAX_TOKENS:
            self._refuse()
        return messages

    def _refuse(self) -> NoReturn:
        """Say which limit the message crossed first, in the order of its
        bytes, however they came in pieces: the size (counted first at each
        name or value), or the number of attributes."""
        size = 0
        for index, token in enumerate(self._tokens):
            size += len(token) + 1
            if size > self.max_size:
                break
            if index == _MAX_TOKENS:
                self._overflow(MAX_ATTRIBUTES, "attributes")
        self._overflow(self.max_size)

    def _overflow(self, limit: int, unit: str = "bytes") -> NoReturn:
        # Free the buffer at once: an endless message must not grow us.
        self._tail = b""
        self._tokens = []
        self._size = 0
        raise MessageTooLarge(limit, unit)
