"""The metrics' HTTP server in process, on asyncio's loop and uvloop's: its
answers, and what a client that misbehaves may take of it.  (The daemon
under the same attacks: tests/test_observability.py.)"""

import asyncio
import logging
import socket

import pytest
import uvloop

from tlsmgr.runtime.httpd import Responder, Site
from tlsmgr.util import log

PAGE = b"tlsmgr_uptime_seconds 1.0\n"
RUNNERS = {"asyncio": asyncio.run, "uvloop": uvloop.run}


@pytest.fixture(params=sorted(RUNNERS))
def run(request):
    return lambda scenario: RUNNERS[request.param](asyncio.wait_for(scenario, 30))


def site(page=PAGE, connection_limit=4, deadline=5.0, head_limit=1024) -> Site:
    async def make_page():
        if isinstance(page, Exception):
            raise page
        return page
    return Site("metrics", {b"/", b"/metrics"}, "text/plain; version=0.0.4", make_page,
                connection_limit, deadline, head_limit)


async def serve(served: Site) -> tuple[asyncio.AbstractServer, int]:
    server = await asyncio.get_running_loop().create_server(
        lambda: Responder(served), "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def exchange(port: int, request: bytes, end_input: bool = False) -> bytes:
    """What the server answers to request, read to the end."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    if end_input:
        writer.write_eof()
    try:
        return await reader.read()
    finally:
        writer.close()


def test_the_page_and_the_refusals(run):
    async def scenario():
        server, port = await serve(site())
        answers = {}
        for name, request in {
                "get": b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
                "root": b"GET /?name=x HTTP/1.0\r\n\r\n",
                "bare_lf": b"GET /metrics HTTP/1.0\n\n",
                "head": b"HEAD /metrics HTTP/1.1\r\n\r\n",
                "other_path": b"GET /favicon.ico HTTP/1.1\r\n\r\n",
                "post": b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
                "garbage": b"\x16\x03\x01 hello\r\n\r\n"}.items():
            answers[name] = await exchange(port, request)
        answers["half_closed"] = await exchange(port, b"GET / HTTP/1.0\r\n\r\n", end_input=True)
        server.close()
        return answers

    answers = run(scenario())
    page = (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(PAGE))
    for name in ("get", "root", "bare_lf", "half_closed"):
        assert answers[name] == page + PAGE, name
    assert answers["head"] == page
    assert answers["other_path"].startswith(b"HTTP/1.0 404 Not Found\r\n")
    assert answers["post"].startswith(b"HTTP/1.0 405 Method Not Allowed\r\n")
    assert b"\r\nAllow: GET, HEAD\r\n" in answers["post"]
    assert answers["garbage"].startswith(b"HTTP/1.0 400 Bad Request\r\n")


def test_a_head_over_the_limit_is_refused_at_the_limit(run):
    async def scenario():
        server, port = await serve(site(head_limit=1024))
        whole_but_long = await exchange(port, b"GET / HTTP/1.1\r\nX: %s\r\n\r\n" % (b"a" * 1024))
        endless = await exchange(port, b"GET / HTTP/1.1\r\nX: " + b"a" * 4096)
        server.close()
        return whole_but_long, endless

    for answer in run(scenario()):
        assert answer.startswith(b"HTTP/1.0 431 Request Header Fields Too Large\r\n")


def test_a_page_that_cannot_be_made_is_a_503_and_a_rate_limited_warning(run, caplog):
    async def scenario():
        server, port = await serve(site(page=TimeoutError("no snapshot within 3 seconds")))
        answers = [await exchange(port, b"GET /metrics HTTP/1.0\r\n\r\n") for _ in range(5)]
        server.close()
        return answers

    with caplog.at_level(logging.WARNING, logger=log.logger.name):
        answers = run(scenario())
    assert all(answer.startswith(b"HTTP/1.0 503 Service Unavailable\r\n") for answer in answers)
    [line] = [record.getMessage() for record in caplog.records]
    assert line.startswith("metrics: no page for 127.0.0.1 port ")
    assert line.endswith(": no snapshot within 3 seconds")


def test_at_the_limit_a_new_connection_is_closed_at_once_and_the_idle_at_the_deadline(
        run, caplog):
    async def scenario():
        served = site(connection_limit=4, deadline=1.0)
        server, port = await serve(served)
        loop = asyncio.get_running_loop()
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
        while len(served.open) < 4:
            await asyncio.sleep(0.01)
        started = loop.time()
        turned_away = [await exchange(port, b"") for _ in range(3)]
        refused_after = loop.time() - started
        closed = [await reader.read() for reader, _ in idle]       # at the deadline
        closed_after = loop.time() - started
        answer = await exchange(port, b"GET / HTTP/1.0\r\n\r\n")
        for _, writer in idle:
            writer.close()
        server.close()
        return turned_away, refused_after, closed, closed_after, answer

    with caplog.at_level(logging.WARNING, logger=log.logger.name):
        turned_away, refused_after, closed, closed_after, answer = run(scenario())
    assert turned_away == [b""] * 3 and refused_after < 0.5
    assert closed == [b""] * 4 and 0.5 < closed_after < 2.0
    assert answer.startswith(b"HTTP/1.0 200 OK\r\n")
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 2, lines                     # one of each kind: rate-limited
    assert lines[0].startswith("metrics: 4 connections open, the most allowed: closing a "
                               "new one from 127.0.0.1 port ")
    assert lines[1].startswith("metrics: request of 127.0.0.1 port ")
    assert lines[1].endswith(" not whole within 1 seconds -- closing connection")


def test_a_client_that_does_not_read_holds_little_of_the_page_and_not_the_loop(run):
    big = b"x" * (32 << 20)

    async def scenario():
        served = site(page=big, deadline=1.0)
        server, port = await serve(served)
        loop = asyncio.get_running_loop()
        stalled = socket.create_connection(("127.0.0.1", port))
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        while not served.open or next(iter(served.open)).unsent.nbytes == 0:
            await asyncio.sleep(0.01)                 # writing, and paused
        [responder] = served.open
        held = responder.transport.get_write_buffer_size()
        turns = 0
        started = loop.time()
        while served.open:                            # until the deadline closes it
            await asyncio.sleep(0.01)
            turns += 1
        stalled.close()
        server.close()
        return held, turns, loop.time() - started

    held, turns, closed_after = run(scenario())
    assert held < 1 << 20                # the transport's buffer, not the page
    assert turns > 20                    # the loop went on meanwhile
    assert closed_after < 1.5
