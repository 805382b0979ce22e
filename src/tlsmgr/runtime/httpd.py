"""A small HTTP server for one page, on the daemon's own event loop.

What a Prometheus scrape needs and no more: one GET (or HEAD) request per
connection, answered as HTTP/1.0 answers (a Content-Length, then the
connection closed).  Whoever connects, a connection costs the daemon a
descriptor, a timer, its request head and the answer, and only for a
while; each ``Site`` says how much:

* a connection is closed ``deadline`` seconds after it was accepted,
  whatever it sent and whatever of the answer it read;
* a request head (request line and headers) of more than ``head_limit``
  bytes gets 431; nothing after the head is read;
* the answer goes to the transport as the client reads it (its
  pause_writing() and resume_writing()), so that a client that does not
  read holds no more of it than the transport's buffer;
* at most ``connection_limit`` connections are open at once: one more is
  closed as soon as it is accepted.

No thread, and nothing here blocks: the page is made by a coroutine that
the Site is given, on the loop.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Container
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import cast

from ..util import log

_HEAD_END = re.compile(rb"\r?\n\r?\n")
_CHUNK = 16384                  # bytes of the answer handed to the transport at a time
_ERROR_TYPE = "text/plain; charset=utf-8"
_METHODS = (b"GET", b"HEAD")


@dataclass(eq=False)
class Site:
    """One page, where it is, and what serving it may cost: shared by the
    connections of one listener."""

    name: str                                  # of the service, in log lines
    paths: Container[bytes]                    # where the page is
    content_type: str
    make_page: Callable[[], Awaitable[bytes]]  # called anew for each GET
    connection_limit: int
    deadline: float                            # seconds from accept(2) to close
    head_limit: int                            # bytes of request line and headers
    open: set[Responder] = field(default_factory=set)
    # A client may cause each of these as often as it likes.
    over_limit: log.RateLimitedWarning = field(default_factory=log.RateLimitedWarning)
    too_slow: log.RateLimitedWarning = field(default_factory=log.RateLimitedWarning)
    no_page: log.RateLimitedWarning = field(default_factory=log.RateLimitedWarning)


class Responder(asyncio.Protocol):
    """One connection: a request head read, one answer written, closed."""

    def __init__(self, site: Site):
        self.site = site
        self.transport: asyncio.Transport          # from connection_made()
        self.head = bytearray()                    # the request, as it comes
        self.head_read = False                     # whole, or too long: nothing more is read
        self.unsent = memoryview(b"")              # of the answer
        self.write_paused = False
        self.deadline: asyncio.TimerHandle | None = None
        self.making: asyncio.Task[None] | None = None     # the page, for a GET

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream server's transports are read-write ones.
        self.transport = cast(asyncio.Transport, transport)
        site = self.site
        if len(site.open) >= site.connection_limit:
            site.over_limit("%s: %d connections open, the most allowed: closing a new "
                            "one from %s", site.name, len(site.open), self.peer())
            self.transport.abort()
            return
        site.open.add(self)
        self.deadline = asyncio.get_running_loop().call_later(site.deadline, self._expire)

    def connection_lost(self, exc: Exception | None) -> None:
        self.site.open.discard(self)
        if self.deadline is not None:
            self.deadline.cancel()
        if self.making is not None:
            self.making.cancel()
        self.unsent = memoryview(b"")

    def data_received(self, data: bytes) -> None:
        if self.head_read:                 # one request a connection, whatever comes
            return
        head = self.head
        head += data
        # Where the blank line may be: in what came, or just before it.
        end = _HEAD_END.search(head, max(0, len(head) - len(data) - 3))
        limit = self.site.head_limit
        if end is None and len(head) <= limit:
            return
        self.head_read = True
        self.transport.pause_reading()
        self.head = bytearray()
        if end is None or end.end() > limit:
            self._refuse(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
        else:
            self._request(bytes(head[:end.start()]))

    def _request(self, head: bytes) -> None:
        parts = head.split(b"\n", 1)[0].rstrip(b"\r").split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            self._refuse(HTTPStatus.BAD_REQUEST)
            return
        method, target, _ = parts
        if target.partition(b"?")[0] not in self.site.paths:
            self._refuse(HTTPStatus.NOT_FOUND)
        elif method not in _METHODS:
            self._refuse(HTTPStatus.METHOD_NOT_ALLOWED)
        else:
            self.making = asyncio.get_running_loop().create_task(
                self._page(with_body=method == b"GET"))

    async def _page(self, with_body: bool) -> None:
        site = self.site
        try:
            page = await site.make_page()
        except Exception as err:
            site.no_page("%s: no page for %s: %s", site.name, self.peer(),
                         err or type(err).__name__)
            self._refuse(HTTPStatus.SERVICE_UNAVAILABLE)
            return
        self._answer(HTTPStatus.OK, site.content_type, page, with_body)

    def _refuse(self, status: HTTPStatus) -> None:
        allow = "Allow: GET, HEAD\r\n" if status == HTTPStatus.METHOD_NOT_ALLOWED else ""
        self._answer(status, _ERROR_TYPE, b"%d %s\n" % (status, status.phrase.encode()),
                     extra_headers=allow)

    def _answer(self, status: HTTPStatus, content_type: str, body: bytes,
                with_body: bool = True, extra_headers: str = "") -> None:
        if self.transport.is_closing():
            return
        self.transport.write(("HTTP/1.0 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                              "%sConnection: close\r\n\r\n"
                              % (status, status.phrase, content_type, len(body),
                                 extra_headers)).encode("ascii"))
        self.unsent = memoryview(body if with_body else b"")
        self._write()

    def _write(self) -> None:
        while self.unsent and not self.write_paused:
            self.transport.write(self.unsent[:_CHUNK])
            self.unsent = self.unsent[_CHUNK:]
        if not self.unsent:
            self.transport.close()         # once what was written is sent

    # Flow control (asyncio's callbacks): a client that does not read is
    # not written to; the deadline closes it.
    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.unsent:
            self._write()

    def _expire(self) -> None:
        self.deadline = None
        site = self.site
        if self.head_read:
            what = "answer to %s not sent" % self.peer()
        else:
            what = "request of %s not whole" % self.peer()
        site.too_slow("%s: %s within %g seconds -- closing connection",
                      site.name, what, site.deadline)
        self.transport.abort()

    def peer(self) -> str:
        address = self.transport.get_extra_info("peername")
        return "%s port %d" % address[:2] if isinstance(address, tuple) else "a client"
