"""Fakes for driving a server.Connection in process: an event loop that
turns only when a test says so, and a transport that keeps what is written
and applies flow control as asyncio's do.  Used by tests/test_server.py and
benchmarks/instructions.py."""

from helpers.request_strategies import invariants
from tlsmgr import config
from tlsmgr.runtime.connection import Connection, Shared
from tlsmgr.runtime.limits import ClientMemory, ConnectionTable
from tlsmgr.service import fastpath

CONNECTION_SIZE_LIMIT = 1024
# The daemon's own (tlsmgr_request_size_limit's default), for requests as
# big as real ones: a session of 2048 bytes is over CONNECTION_SIZE_LIMIT.
DAEMON_SIZE_LIMIT = int(next(parameter.default for parameter in config.PARAMETERS
                             if parameter.name == "tlsmgr_request_size_limit"))


class FakeTimer:
    def __init__(self):
        self.cancelled = False

    def cancel(self):
        self.cancelled = True


class FakeLoop:
    """Callbacks run when the test turns the loop (run_ready); timers never
    fire: deadlines are not under test here."""

    def __init__(self):
        self.timers = []
        self.ready = []
        self.callbacks_run = 0

    def call_later(self, delay, callback, *args):
        self.timers.append(FakeTimer())
        return self.timers[-1]

    def call_soon(self, callback, *args):
        self.ready.append((callback, args))
        return FakeTimer()

    def run_ready(self):
        """One turn of the loop: what was ready when it began."""
        ready, self.ready = self.ready, []
        for callback, args in ready:
            self.callbacks_run += 1
            callback(*args)


# The paths a Connection may answer on: the pure one, and the compiled one
# (fastpath.py) where it is built.
PATHS = ("pure", "compiled") if fastpath.COMPILED else ("pure",)


def make_shared(path="pure", size_limit=CONNECTION_SIZE_LIMIT):
    """The state a Connection shares with others, around a FakeLoop and
    the request handler of fuzz/invariants.py, answering on the path named
    (PATHS), requests of up to size_limit bytes.  The budgets are real but
    never reached: the limits are not under test here."""
    dispatch = invariants.make_dispatch()
    return Shared(
        dispatch, dispatch.stats, FakeLoop(),
        connections=ConnectionTable(1 << 30, dispatch.stats),
        memory=ClientMemory(1 << 62, dispatch.stats),
        served=lambda: None, active=lambda: None,
        control_uids=set(),             # nobody may send control requests
        ipc_timeout=3600, request_size_limit=size_limit, later_deadline=1.0,
        answer=fastpath.answerer(dispatch, size_limit) if path == "compiled" else None)


class FakeTransport:
    """Keeps what is written; like asyncio's transports, pauses the
    protocol's writing once more than ``high_water`` bytes wait, and
    resumes it when drained."""

    def __init__(self, high_water):
        self.protocol = None
        self.writes = []
        self.buffered = 0
        self.high_water = high_water
        self.writing_paused = False
        self.reading_paused = False
        self.closing = False
        self.pauses = 0

    def write(self, data):
        self.writes.append(bytes(data))
        self.buffered += len(data)
        if self.buffered > self.high_water and not self.writing_paused:
            self.writing_paused = True
            self.pauses += 1
            self.protocol.pause_writing()

    def drain(self):
        self.buffered = 0
        if self.writing_paused:
            self.writing_paused = False
            self.protocol.resume_writing()

    def close(self):
        self.closing = True

    def abort(self):
        self.closing = True

    def is_closing(self):
        return self.closing

    def pause_reading(self):
        self.reading_paused = True

    def resume_reading(self):
        self.reading_paused = False

    def get_write_buffer_size(self):
        return self.buffered

    def get_extra_info(self, name, default=None):
        return None


def connect(high_water, path="pure", size_limit=CONNECTION_SIZE_LIMIT):
    """A Connection on a FakeTransport: (its Shared, it, the transport)."""
    shared = make_shared(path, size_limit)
    connection = Connection(shared)
    transport = FakeTransport(high_water)
    transport.protocol = connection
    connection.connection_made(transport)
    return shared, connection, transport
