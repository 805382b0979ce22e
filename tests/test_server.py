"""The server in-process: cleanup interleaves with requests."""

import asyncio
import errno
import logging
import os

from tlsmgr.runtime.server import STATUS_WITHIN, LoopErrorLog, Server, listen_unix
from tlsmgr.service.handlers import client_dispatch
from tlsmgr.service.prng import Prng
from tlsmgr.service.scache import SessionCache
from tlsmgr.service.tickets import TicketKeyRing
from tlsmgr.stores import Entry, pack_entry
from tlsmgr.stores.memory import MemoryStore
from tlsmgr.util import log
from tlsmgr.wire.attr import Decoder, encode


def _server_for(cache, tmp_path):
    """A Server answering from one smtpd cache, with a PRNG in tmp_path."""
    prng = Prng("", 32, str(tmp_path / "prng_exch"), 3600, 3600)
    dispatch = client_dispatch({"smtpd": cache, "smtp": None, "lmtp": None},
                               {"smtpd": 3600, "smtp": 3600, "lmtp": 3600},
                               prng.random_bytes, TicketKeyRing(prng.random_bytes))
    return Server(dispatch, prng, [cache], ipc_timeout=60, request_size_limit=65536,
                  connection_limit=100, client_buffer_limit=1 << 20)


async def _serving(server, path):
    """The server serving on path, and a client connected to it."""
    serving = asyncio.create_task(server.serve([listen_unix(path)]))
    while not os.path.exists(path):
        await asyncio.sleep(0.01)
    reader, writer = await asyncio.open_unix_connection(path)
    return serving, reader, writer


def test_requests_are_answered_while_a_long_cleanup_runs(tmp_path):
    now = [1_000_000]
    cache = SessionCache("smtpd", MemoryStore(), 3600, clock=lambda: now[0])
    for i in range(200_000):
        cache.store.put(b"old%d" % i, pack_entry(Entry(now[0], b"s")))
    now[0] += 3601                              # all of them expired
    server = _server_for(cache, tmp_path)
    path = str(tmp_path / "sock")

    async def scenario():
        serving, reader, writer = await _serving(server, path)
        decoder = Decoder()

        async def reply():
            while True:
                messages = decoder.feed(await reader.read(65536))
                if messages:
                    return messages[0]

        await reply()                           # handshake
        assert cache.cleanup_active             # the start-up pass is running
        writer.write(encode([("request", "policy"), ("cache_type", "smtpd")]))
        assert (await reply())[0] == (b"status", b"0")
        left_when_answered = len(cache.store)
        while cache.cleanup_active:
            await asyncio.sleep(0.01)
        writer.close()
        server.stop()
        assert await serving == 0
        return left_when_answered

    left_when_answered = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert left_when_answered > 0               # answered before the pass ended
    assert len(cache.store) == 0                # and the pass did finish


def test_time_comes_once_a_turn_and_master_hears_once_within_status_within(tmp_path):
    # As the stock daemon's loop callback: however many connections a turn
    # served, one time mix after it.  master(8) hears that requests were
    # served once, STATUS_WITHIN after the first, however many turns
    # served them; and again after the next.
    prng = Prng("", 32, str(tmp_path / "prng_exch"), 3600, 3600)
    mixed, told = [], []
    prng.mix_time = lambda: mixed.append(1)

    class Master:
        def served(self):
            told.append(1)

    dispatch = client_dispatch({"smtpd": None, "smtp": None, "lmtp": None},
                               {"smtpd": 3600, "smtp": 3600, "lmtp": 3600},
                               prng.random_bytes, TicketKeyRing(prng.random_bytes))
    server = Server(dispatch, prng, [], ipc_timeout=60, request_size_limit=65536,
                    connection_limit=100, client_buffer_limit=1 << 20, master=Master())

    async def turn():
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    async def turns():
        server.loop = asyncio.get_running_loop()
        for _ in range(8):                  # eight connections answered in one turn
            server.served()
        await turn()
        server.served()                     # and one in the next
        await turn()
        assert (len(mixed), len(told)) == (2, 0)
        # The report's timer comes before this sleep's, being due first.
        await asyncio.sleep(2 * STATUS_WITHIN)
        assert (len(mixed), len(told)) == (2, 1)
        server.active()                     # input, no reply: the time only
        await turn()
        await asyncio.sleep(2 * STATUS_WITHIN)
        assert (len(mixed), len(told)) == (3, 1)
        server.served()
        await asyncio.sleep(2 * STATUS_WITHIN)
        assert (len(mixed), len(told)) == (4, 2)

    asyncio.run(asyncio.wait_for(turns(), 30))


def test_updates_held_by_the_store_reach_the_file_soon_after_without_more_requests(tmp_path):
    # stores/lmdb.py holds writes to commit them together; the server's loop
    # commits them within COMMIT_WITHIN of a turn that left any, though no
    # request follows.
    from test_stores import _on_file

    from tlsmgr.stores.lmdb import LmdbStore
    cache = SessionCache("smtpd", LmdbStore(str(tmp_path / "scache")), 3600)
    server = _server_for(cache, tmp_path)
    path = str(tmp_path / "sock")

    async def scenario():
        serving, reader, writer = await _serving(server, path)
        decoder = Decoder()
        while not decoder.feed(await reader.read(65536)):
            pass                                # the handshake
        writer.write(encode([("request", "update"), ("cache_type", "smtpd"),
                             ("cache_id", "id1"), ("session", b"s" * 300)]))
        while not (replies := decoder.feed(await reader.read(65536))):
            pass
        assert replies[0][0] == (b"status", b"0")
        for _ in range(500):                    # 5 s at most
            if not cache.store.uncommitted_writes:
                break
            await asyncio.sleep(0.01)
        committed = (not cache.store.uncommitted_writes
                     and _on_file(str(tmp_path / "scache")) == ["id1"])
        writer.close()
        server.stop()
        assert await serving == 0
        return committed

    assert asyncio.run(asyncio.wait_for(scenario(), 60))


def test_the_loops_errors_are_one_line_each_rate_limited_by_kind(caplog):
    # accept(2) out of descriptors, as many times a second as clients
    # queue, is one warning; so is each other kind, up to a bound of kinds,
    # beyond which they share one.
    handler = LoopErrorLog()
    out_of_files = OSError(errno.EMFILE, os.strerror(errno.EMFILE))
    with caplog.at_level(logging.WARNING, logger=log.logger.name):
        for _ in range(10_000):
            handler(None, {"message": "socket.accept() out of system resource",
                           "exception": out_of_files})
        for kind in range(100):
            for _ in range(10):
                handler(None, {"message": "error of kind %d" % kind})
    lines = [record.getMessage() for record in caplog.records]
    assert lines[0] == "socket.accept() out of system resource: [Errno 24] %s" \
        % os.strerror(errno.EMFILE)
    assert lines[1:] == ["error of kind %d" % kind for kind in range(16)]
    assert not any("Traceback" in line for line in lines)
