"""The server in-process: cleanup interleaves with requests; a Connection
with a fake transport survives any bytes and answers pipelined requests as
the request handlers do, however its output is paused (hypothesis, with
the checks of fuzz/invariants.py)."""

import asyncio
import os

from helpers.connection_fakes import CONNECTION_SIZE_LIMIT, connect
from helpers.request_strategies import (
    REQUEST_TYPES,
    invariants,
    mangled_requests,
    messages,
    well_shaped_requests,
)
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from tlsmgr.attr import Decoder, encode
from tlsmgr.prng import Prng
from tlsmgr.protocol import HANDSHAKE, PROTOCOL_ERROR, Tlsmgr
from tlsmgr.scache import SessionCache
from tlsmgr.server import Server, listen_unix
from tlsmgr.stores import Entry
from tlsmgr.stores.memory import MemoryStore
from tlsmgr.tickets import TicketKeyRing


def test_requests_are_answered_while_a_long_cleanup_runs(tmp_path):
    now = [1_000_000]
    cache = SessionCache("smtpd", MemoryStore(), 3600, clock=lambda: now[0])
    for i in range(200_000):
        cache.store.put(b"old%d" % i, Entry(now[0], b"s"))
    now[0] += 3601                              # all of them expired
    prng = Prng("", 32, str(tmp_path / "prng_exch"), 3600, 3600)
    tlsmgr = Tlsmgr({"smtpd": cache, "smtp": None, "lmtp": None},
                    {"smtpd": 3600, "smtp": 3600, "lmtp": 3600},
                    prng.random_bytes, TicketKeyRing(prng.random_bytes))
    server = Server(tlsmgr, prng, [cache], ipc_timeout=60, request_size_limit=65536,
                    connection_limit=100, client_buffer_limit=1 << 20)
    path = str(tmp_path / "sock")

    async def scenario():
        serving = asyncio.create_task(server.serve([listen_unix(path)]))
        while not os.path.exists(path):
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_unix_connection(path)
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


# The Connection, in-process, with a fake transport: any bytes, any flow control.

def run_until_idle(server, transport, idle):
    """Turn the loop and read the client's replies until idle() holds."""
    for _ in range(10_000):
        if idle():
            return
        server.loop.run_ready()
        transport.drain()
    raise AssertionError("the connection never settles")


def send(server, connection, transport, data):
    """data_received as an event loop calls it: never while reading is
    paused (so the loop turns and the client reads its replies first), nor
    once the connection is closed."""
    run_until_idle(server, transport,
                   lambda: transport.closing or not transport.reading_paused)
    if transport.closing:
        return False
    connection.data_received(data)
    return True


def finish(server, transport):
    """Everything received answered and the answers read, or closed."""
    run_until_idle(server, transport, lambda: not server.loop.ready and (
        transport.closing or not (transport.writing_paused or transport.reading_paused)))


SEED_REQUEST = encode([("request", "seed"), ("size", 8)])
# How much may wait to be written before the server is asked to pause:
# from less than a reply to more than it ever writes.
high_waters = st.one_of(st.sampled_from([1, 24, 1000, 10**9]), st.integers(1, 20_000))
chunks = st.one_of(
    st.binary(max_size=64),
    messages.map(invariants.wire_bytes),
    # master(8) triggers, and what comes close to one.
    st.sampled_from([b"W\0", b"\0", b"X\0", b"W", b"\0\0", b"W\0\0"]),
    # More than a slice of input, and more than a batch of replies.
    st.sampled_from([2, 63, 64, 65, 171, 250]).map(SEED_REQUEST.__mul__))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(chunks, st.booleans()), max_size=10), high_waters, st.booleans())
def test_connection_survives_any_bytes(received, high_water, then_oversized):
    server, connection, transport = connect(high_water)
    with invariants.recording_internal_errors() as errors:
        for data, drain_after in received:
            if transport.closing:
                break
            send(server, connection, transport, data)
            if drain_after:
                transport.drain()
        # Too much for the limit, whatever part of a message came before.
        oversized = then_oversized and send(server, connection, transport,
                                            b"x" * (CONNECTION_SIZE_LIMIT + 1))
        finish(server, transport)
        connection.connection_lost(None)
    assert not errors
    event("oversized" if oversized else "closed before the end" if transport.closing
          else "open to the end")
    event("writing paused" if transport.pauses else "writing never paused")
    event("served over turns of the loop" if server.loop.callbacks_run else "served at once")

    assert transport.writes[0] == HANDSHAKE
    invariants.decode_replies(b"".join(transport.writes[1:]))
    if oversized:
        assert transport.closing and transport.writes[-1] == PROTOCOL_ERROR
    assert connection not in server.connections
    assert server.loop.timers and server.loop.timers[-1].cancelled


# Several slices of input at once, written freely or a reply at a time.
@example(requests=[((b"request", b"seed"), (b"size", b"8"))], rounds=500, cuts=[],
         high_water=10**9)
@example(requests=[((b"request", b"seed"), (b"size", b"8"))], rounds=500, cuts=[5000],
         high_water=1)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(well_shaped_requests(sorted(REQUEST_TYPES)), mangled_requests())
                .filter(lambda message: invariants.requested(message) != b"W"), max_size=40),
       st.integers(1, 100), st.lists(st.integers(0, 20_000), max_size=12), high_waters)
def test_connection_answers_pipelined_requests_as_tlsmgr_does(requests, rounds, cuts,
                                                              high_water):
    # Each message starts with its "request" name, so no piece of the
    # stream is taken for a master(8) trigger, and the server's replies are
    # exactly those of a Tlsmgr asked directly, in order.
    # Several rounds of them: more than a slice of input for the server.
    requests = [message for message in requests
                if message and message[0][0] == b"request"
                and invariants.wire_size(message) <= CONNECTION_SIZE_LIMIT] * rounds
    reference = invariants.make_tlsmgr()
    stream = b"".join(map(invariants.wire_bytes, requests))
    server, connection, transport = connect(high_water)
    with invariants.recording_internal_errors() as errors:
        expected = b"".join(reference.handle(message).data for message in requests)
        edges = [0, *sorted(cut for cut in cuts if cut < len(stream)), len(stream)]
        for start, end in zip(edges, edges[1:]):
            send(server, connection, transport, stream[start:end])
        finish(server, transport)
    assert not errors
    event("served over turns of the loop" if server.loop.callbacks_run else "served at once")
    assert not transport.closing
    assert b"".join(transport.writes) == HANDSHAKE + expected
