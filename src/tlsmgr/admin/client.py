"""A blocking tlsmgr client, as Postfix's tls_mgr.c is: for tlsmgr-ctl and tests.

It speaks only through the codec in attr.py: one connection, the
handshake checked once, then one request and one reply at a time.
"""

from __future__ import annotations

import builtins
import json
import socket
from typing import Any

from ..service.tickets import KEY_SIZE, TicketKey
from ..wire.attr import Decoder, Message, Value, decode_data, decode_int, encode

HANDSHAKE_MESSAGE = ((b"protocol", b"tlsmgr_protocol"),)


class ClientError(Exception):
    """The server could not be reached, or answered out of protocol."""

    def __init__(self, text: str, errno: int | None = None):
        super().__init__(text)
        self.errno = errno              # of the system call that failed, if one did


class ReplyAttributes(dict[str, bytes]):
    """A reply's attributes by name (raw bytes), with typed accessors."""

    @classmethod
    def from_message(cls, message: Message) -> ReplyAttributes:
        return cls((name.decode("ascii", "replace"), value) for name, value in message)

    def int(self, name: str) -> builtins.int:
        value = decode_int(self[name])
        if value is None:
            raise ClientError("malformed number in reply attribute %s" % name)
        return value

    def data(self, name: str) -> bytes:
        value = decode_data(self[name])
        if value is None:
            raise ClientError("malformed base64 in reply attribute %s" % name)
        return value

    def json(self, name: str) -> Any:
        try:
            return json.loads(self[name])
        except (KeyError, ValueError):
            raise ClientError("malformed JSON in reply attribute %s" % name) from None

    @property
    def status(self) -> builtins.int:
        return self.int("status")


class TlsmgrClient:

    def __init__(self, path: str, timeout: float = 10.0):
        self.path = path
        self.decoder = Decoder(16 << 20)        # a list reply may be large
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError as err:
            self.sock.close()
            raise ClientError("connect to %s: %s" % (path, err.strerror or err),
                              err.errno) from None
        if self.receive() != HANDSHAKE_MESSAGE:
            self.close()
            raise ClientError("%s is not a tlsmgr server: bad handshake" % path)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> TlsmgrClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive(self) -> Message:
        """The next message from the server."""
        pending: list[Message] = []
        while not pending:
            try:
                data = self.sock.recv(65536)
            except OSError as err:
                raise ClientError("read from %s: %s" % (self.path, err.strerror or err),
                                  err.errno) from None
            if not data:
                raise ClientError("%s closed the connection" % self.path)
            pending = self.decoder.feed(data)
        if len(pending) > 1:
            raise ClientError("%s sent a reply nobody asked for" % self.path)
        return pending[0]

    def request(self, *attributes: tuple[str, Value]) -> ReplyAttributes:
        self.send_raw(encode(attributes))
        return ReplyAttributes.from_message(self.receive())

    # The requests of Postfix's tls_mgr.c.

    def seed(self, size: int) -> tuple[int, bytes]:
        reply = self.request(("request", "seed"), ("size", size))
        return reply.status, reply.data("seed")

    def policy(self, cache_type: str) -> tuple[int, int, int]:
        reply = self.request(("request", "policy"), ("cache_type", cache_type))
        return reply.status, reply.int("cachable"), reply.int("timeout")

    def lookup(self, cache_type: str, cache_id: str) -> tuple[int, bytes]:
        reply = self.request(("request", "lookup"), ("cache_type", cache_type),
                             ("cache_id", cache_id))
        return reply.status, reply.data("session")

    def update(self, cache_type: str, cache_id: str, session: bytes) -> int:
        return self.request(("request", "update"), ("cache_type", cache_type),
                            ("cache_id", cache_id), ("session", session)).status

    def delete(self, cache_type: str, cache_id: str) -> int:
        return self.request(("request", "delete"), ("cache_type", cache_type),
                            ("cache_id", cache_id)).status

    # The control requests (control.py).

    def stats(self) -> tuple[int, dict[str, Any] | None]:
        reply = self.request(("request", "stats"))
        return reply.status, reply.json("stats") if reply.status == 0 else None

    def flush(self, cache_type: str) -> tuple[int, int]:
        reply = self.request(("request", "flush"), ("cache_type", cache_type))
        return reply.status, reply.int("removed") if "removed" in reply else 0

    def rotate_keys(self) -> tuple[int, bytes]:
        """The status, and the name of the new current key."""
        reply = self.request(("request", "rotate_keys"))
        return reply.status, reply.data("keyname") if "keyname" in reply else b""

    def list(self, cache_type: str,
             limit: int | None = None) -> tuple[int, list[dict[str, Any]]]:
        """The ids and ages of the oldest entries, at most limit (the
        daemon's default without): in as many requests as the daemon's
        page (control.LIST_MAX) makes them.  Not a snapshot: what is
        saved or removed meanwhile may shift the pages."""
        if limit is None:
            reply = self.request(("request", "list"), ("cache_type", cache_type))
            return reply.status, reply.json("list") if "list" in reply else []
        found: list[dict[str, Any]] = []
        while len(found) < limit:
            reply = self.request(("request", "list"), ("cache_type", cache_type),
                                 ("limit", limit - len(found)), ("offset", len(found)))
            page = reply.json("list") if "list" in reply else []
            if reply.status != 0:
                return reply.status, found
            if not page:
                break
            found.extend(page)
        return 0, found

    def tktkey(self, keyname: bytes = b"") -> tuple[int, TicketKey | None]:
        reply = self.request(("request", "tktkey"), ("keyname", keyname))
        keybuf = reply.data("keybuf")
        status = reply.status
        if status == 0 and len(keybuf) != KEY_SIZE:
            raise ClientError("ticket key of %d bytes, expected %d" % (len(keybuf), KEY_SIZE))
        return status, TicketKey.unpack(keybuf) if status == 0 else None
