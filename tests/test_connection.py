"""connection.py without sockets: the Input core driven with bytes and
times (slices, deadlines, what it holds); a Connection with a fake
transport survives any bytes and answers pipelined requests as the request
handlers do, however its output is paused (hypothesis, with the checks of
fuzz/invariants.py)."""


import logging

import pytest
from helpers.connection_fakes import (
    CONNECTION_SIZE_LIMIT,
    PATHS,
    FakeTransport,
    connect,
    make_shared,
)
from helpers.request_strategies import (
    REQUEST_TYPES,
    invariants,
    mangled_requests,
    messages,
    well_shaped_requests,
)
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from tlsmgr.runtime.connection import (
    IDLE_TIMEOUT,
    REQUEST_TIMEOUT,
    SLICE,
    Connection,
    FlowControl,
    Input,
)
from tlsmgr.service.protocol import HANDSHAKE, PROTOCOL_ERROR
from tlsmgr.util import log
from tlsmgr.wire.attr import MessageTooLarge, encode

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


@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(chunks, st.booleans()), max_size=10), high_waters, st.booleans())
def test_connection_survives_any_bytes(path, received, high_water, then_oversized):
    server, connection, transport = connect(high_water, path)
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
@pytest.mark.parametrize("path", PATHS)
@example(requests=[((b"request", b"seed"), (b"size", b"8"))], rounds=500, cuts=[],
         high_water=10**9)
@example(requests=[((b"request", b"seed"), (b"size", b"8"))], rounds=500, cuts=[5000],
         high_water=1)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(well_shaped_requests(sorted(REQUEST_TYPES)), mangled_requests())
                .filter(lambda message: invariants.requested(message) != b"W"), max_size=40),
       st.integers(1, 100), st.lists(st.integers(0, 20_000), max_size=12), high_waters)
def test_connection_answers_pipelined_requests_as_tlsmgr_does(path, requests, rounds, cuts,
                                                              high_water):
    # Each message starts with its "request" name, so no piece of the
    # stream is taken for a master(8) trigger, and the server's replies are
    # exactly those of a Dispatch asked directly, in order.
    # Several rounds of them: more than a slice of input for the server.
    requests = [message for message in requests
                if message and message[0][0] == b"request"
                and invariants.wire_size(message) <= CONNECTION_SIZE_LIMIT] * rounds
    reference = invariants.make_dispatch()
    stream = b"".join(map(invariants.wire_bytes, requests))
    server, connection, transport = connect(high_water, path)
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


# The Input core alone: bytes and times in, decisions out.

def request_bytes(size=8):
    return encode([("request", "seed"), ("size", size)])


def test_a_trigger_is_not_input_unless_a_request_is_under_way():
    core = Input(1024, now=0.0)
    assert core.receive(b"W\0", now=1.0) is False     # master(8)'s wakeup
    assert core.last_active == 1.0 and not core.unread
    core.receive(request_bytes()[:5], now=2.0)
    core.decode_slice()
    assert core.receive(b"W\0", now=3.0) is True      # the same bytes, mid-request


def test_input_is_decoded_one_slice_at_a_time():
    one = request_bytes()
    count = 3 * SLICE // len(one) + 1
    core = Input(1 << 20, now=0.0)
    core.receive(one * count, now=0.0)
    decoded = []
    while core.unread:
        before = len(core.unread)
        core.decode_slice()
        assert before - len(core.unread) == min(SLICE, before)
        decoded.append(len(core.pending))
    assert len(decoded) == 4 and decoded[-1] == count
    assert decoded == sorted(decoded)
    assert core.held == 0 and core.request_started is None


def test_what_the_input_holds_is_its_undecoded_bytes_and_unfinished_request():
    core = Input(1 << 20, now=0.0)
    data = request_bytes() * 2 + request_bytes()[:7]
    core.receive(data, now=0.0)
    assert core.held == len(data)
    core.decode_slice()
    assert len(core.pending) == 2
    assert 7 <= core.held < len(data)
    core.drop_all()
    assert core.held == 0 and not core.pending
    core.receive(request_bytes(), now=1.0)             # a fresh decoder after forget()
    core.decode_slice()
    assert len(core.pending) == 1


def test_an_idle_client_is_overdue_ipc_timeout_after_it_last_sent():
    core = Input(1024, now=100.0)
    assert core.overdue(130.0, 60) == (None, 30.0)
    core.receive(request_bytes(), now=150.0)
    core.decode_slice()
    assert core.overdue(200.0, 60) == (None, 10.0)
    assert core.overdue(210.0, 60) == (IDLE_TIMEOUT, 0.0)


def test_a_request_trickled_in_is_overdue_ipc_timeout_after_it_began():
    data = request_bytes()
    core = Input(1024, now=0.0)
    for second, byte in enumerate(data[:-1]):         # a byte a second, never whole
        core.receive(bytes([byte]), now=float(second))
        core.decode_slice()
        assert core.request_started == 0.0
    assert core.overdue(59.0, 60) == (None, 1.0)
    assert core.overdue(60.0, 60) == (REQUEST_TIMEOUT, 0.0)
    core.receive(data[-1:], now=60.0)                  # whole at last
    core.decode_slice()
    assert core.request_started is None and core.overdue(60.0, 60) == (None, 60.0)


def test_a_request_over_the_size_limit_raises_from_its_slice():
    core = Input(64, now=0.0)
    core.receive(encode([("request", "update"), ("session", b"x" * 100)]), now=0.0)
    with pytest.raises(MessageTooLarge):
        core.decode_slice()


class ScriptedTransport:
    def __init__(self):
        self.calls = []
        self.closing = False
        self.buffered = 100

    def pause_reading(self):
        self.calls.append("pause")

    def resume_reading(self):
        self.calls.append("resume")

    def is_closing(self):
        return self.closing

    def get_write_buffer_size(self):
        return self.buffered


def test_flow_control_asks_the_transport_only_for_changes():
    transport = ScriptedTransport()
    flow = FlowControl(transport)
    for paused in (True, True, False, False, True):
        flow.reading(paused)
    assert transport.calls == ["pause", "resume", "pause"]
    transport.closing = True
    flow.reading(False)                                # never once closing
    assert transport.calls == ["pause", "resume", "pause"]


def test_unread_replies_count_only_while_writing_is_paused():
    flow = FlowControl(ScriptedTransport())
    assert flow.unread_replies == 0 and flow.unread_since is None
    flow.writing(True, now=5.0)
    assert flow.unread_replies == 100 and flow.unread_since == 5.0
    flow.writing(False, now=6.0)
    assert flow.unread_replies == 0 and flow.unread_since is None


def test_what_clients_may_cause_is_logged_a_hundred_times_then_ten_a_second(caplog):
    # Oversized requests on 300 connections at once, as a client that
    # reconnects as fast as it can would send them: as protocol.py's
    # warnings of bad requests, the first hundred lines, then one for each
    # tenth of a second.
    shared = make_shared()
    oversized = encode([("request", "update"), ("session", b"x" * 2 * CONNECTION_SIZE_LIMIT)])
    with caplog.at_level(logging.WARNING, logger=log.logger.name):
        for _ in range(300):
            connection = Connection(shared)
            transport = FakeTransport(high_water=1 << 20)
            transport.protocol = connection
            connection.connection_made(transport)
            connection.data_received(oversized)
            assert transport.closing
    lines = [record.getMessage() for record in caplog.records]
    assert 100 <= len(lines) < 110
    assert lines[0] == "client: request exceeds tlsmgr_request_size_limit (%d bytes) -- " \
        "closing connection" % CONNECTION_SIZE_LIMIT
