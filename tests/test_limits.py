"""limits.py without sockets: the connection table and the client memory
close the client that has held its share longest, and only as many as
they must."""

import logging
import time

from tlsmgr.observe.stats import Stats
from tlsmgr.runtime.limits import ClientMemory, ConnectionTable
from tlsmgr.util import log


class Client:
    def __init__(self, name, last_active=0.0):
        self.name = name
        self.last_active = last_active
        self.stuck_since = time.monotonic()
        self.dropped = False

    def peer(self):
        return self.name

    def drop(self):
        self.dropped = True


def test_a_full_table_closes_the_connection_idle_longest(caplog):
    stats = Stats()
    table = ConnectionTable(3, stats)
    clients = [Client("a", 30.0), Client("b", 10.0), Client("c", 20.0)]
    for client in clients:
        table.admit(client)
    assert len(table) == 3 and not any(c.dropped for c in clients)
    with caplog.at_level(logging.WARNING, logger=log.logger.name):
        table.admit(Client("d", 40.0))
    assert [c.name for c in clients if c.dropped] == ["b"]
    assert sorted(c.name for c in table) == ["a", "c", "d"]
    assert stats.accepted == 4 and stats.errors["connection_limit"] == 1
    [record] = caplog.records
    assert "connection limit 3 reached (tlsmgr_connection_limit): closing the " \
           "connection of b" in record.getMessage()


def test_memory_past_its_limit_closes_the_longest_holders_until_the_rest_fits():
    stats = Stats()
    memory = ClientMemory(1200, stats)
    first, second, third = Client("first"), Client("second"), Client("third")
    memory.hold(first, 100)
    memory.hold(second, 500)
    memory.hold(first, 300)                 # holding more keeps its place in line
    assert memory.held == 800 and not first.dropped
    memory.hold(third, 600)                 # 1400: the first to hold goes, then fits
    assert (first.dropped, second.dropped, third.dropped) == (True, False, False)
    assert memory.held == 1100
    assert stats.errors["buffer_limit"] == 1
    memory.hold(third, 0)                   # given back
    assert memory.held == 500
    memory.hold(third, 800)                 # 1300: now the second is the longest
    assert second.dropped and memory.held == 800


def test_memory_given_back_by_a_closed_holder_is_not_counted_twice():
    memory = ClientMemory(100, Stats())
    holder, other = Client("holder"), Client("other")
    memory.hold(holder, 80)
    memory.hold(other, 50)                  # 130: holder is closed
    assert holder.dropped and memory.held == 50
    memory.hold(holder, 0)                  # its connection_lost(), later
    assert memory.held == 50
