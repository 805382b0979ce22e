"""Fakes for driving a server.Connection in process: an event loop that
turns only when a test says so, and a transport that keeps what is written
and applies flow control as asyncio's do.  Used by tests/test_server.py and
benchmarks/instructions.py."""

from helpers.request_strategies import invariants
from tlsmgr.server import Connection

CONNECTION_SIZE_LIMIT = 1024


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


class FakePrng:
    def mix_time(self):
        pass


class FakeMemory:
    """ClientMemory's accounting, never enforced: tlsmgr_client_buffer_limit
    is not under test here."""

    def __init__(self):
        self.held = 0

    def hold(self, connection, held):
        self.held += held - connection.held
        connection.held = held


class FakeServer:
    """What of tlsmgr.server.Server a Connection uses."""

    def __init__(self):
        self.tlsmgr = invariants.make_tlsmgr()
        self.stats = self.tlsmgr.stats
        self.request_size_limit = CONNECTION_SIZE_LIMIT
        self.ipc_timeout = 3600
        self.connections = set()
        self.loop = FakeLoop()
        self.prng = FakePrng()
        self.workers = None             # memory caches never go to a worker
        self.requests_served = 0
        self.memory = FakeMemory()
        self.control_uids = set()       # nobody may send control requests

    def admit(self, connection):
        self.connections.add(connection)

    def served(self):
        self.requests_served += 1


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


def connect(high_water):
    server = FakeServer()
    connection = Connection(server)
    transport = FakeTransport(high_water)
    transport.protocol = connection
    connection.connection_made(transport)
    return server, connection, transport
