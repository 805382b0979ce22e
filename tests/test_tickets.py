"""Ticket key timing with a controllable clock: the stock two-key ring."""

import asyncio
import itertools
import os

from tlsmgr.service.tickets import KEY_SIZE, FleetTicketKeys, TicketKey, TicketKeyRing
from tlsmgr.stores import StoreError
from tlsmgr.util.pending import Later

T = 3600                       # smtpd_tls_session_cache_timeout


class Clock:
    def __init__(self):
        self.now = 1_700_000_000

    def __call__(self):
        return self.now


def ring_with_clock():
    counter = itertools.count()
    clock = Clock()
    ring = TicketKeyRing(lambda n: bytes([next(counter) % 256]) * n, clock=clock)
    return ring, clock


def test_key_layout_is_the_88_byte_c_struct():
    key = TicketKey(b"N" * 16, b"C" * 32, b"H" * 32, 0x0102030405060708)
    packed = key.pack()
    assert len(packed) == KEY_SIZE == 88
    assert packed == b"N" * 16 + b"C" * 32 + b"H" * 32 + bytes([8, 7, 6, 5, 4, 3, 2, 1])
    assert TicketKey.unpack(packed) == key


def test_current_key_issues_until_half_the_timeout_minus_one():
    ring, clock = ring_with_clock()
    start = clock.now
    first = ring.current(T)
    assert first.expires == start + T // 2 - 1
    clock.now = first.expires - 1
    assert ring.current(T) == first
    clock.now = first.expires                      # no longer for new tickets
    second = ring.current(T)
    assert second != first and second.expires == clock.now + T // 2 - 1
    assert ring.rotations == 2


def test_previous_key_decrypts_for_half_the_timeout_longer():
    ring, clock = ring_with_clock()
    first = ring.current(T)
    clock.now = first.expires
    ring.current(T)
    assert ring.find(first.name, T) == first
    clock.now = first.expires + T // 2 - 1
    assert ring.find(first.name, T) == first
    clock.now = first.expires + T // 2
    assert ring.find(first.name, T) is None


def test_ring_keeps_only_two_keys():
    ring, clock = ring_with_clock()
    keys = []
    for _ in range(3):
        keys.append(ring.current(T))
        clock.now = keys[-1].expires
    assert ring.find(keys[0].name, T) is None          # pushed out by the third
    assert ring.find(keys[1].name, T) == keys[1]
    assert [k.name for k in ring.keys] == [keys[2].name, keys[1].name]


def test_unknown_name_is_not_found():
    ring, _ = ring_with_clock()
    ring.current(T)
    assert ring.find(b"\xff" * 16, T) is None


# Fleet keys: a shared store (Redis, here a model of it) that may fail.

class SharedKeys:
    """RedisTicketKeys' interface over a dict, with an outage switch; each
    host of a fleet gets its own FleetTicketKeys over one SharedKeys."""

    def __init__(self):
        self.periods: dict[int, bytes] = {}
        self.names: dict[bytes, bytes] = {}
        self.down = False
        self.asked = 0

    def current(self, period, now, make_key):
        self.asked += 1
        if self.down:
            raise StoreError("Redis test: unreachable")
        index = (now + 1) // period
        if index not in self.periods:
            key = make_key((index + 1) * period - 1)
            self.periods[index] = self.names[key[:16]] = key
        return self.periods[index]

    def find(self, name):
        self.asked += 1
        if self.down:
            raise StoreError("Redis test: unreachable")
        return self.names.get(name)


def fleet_host(shared, clock, seed):
    counter = itertools.count(seed * 1000)
    random_bytes = lambda n: next(counter).to_bytes(8, "big") * (n // 8)  # noqa: E731
    return FleetTicketKeys(shared, TicketKeyRing(random_bytes, clock=clock), random_bytes,
                           clock=clock)


def test_fleet_keys_keep_agreeing_across_an_outage_at_a_period_end():
    shared, clock = SharedKeys(), Clock()
    hosts = [fleet_host(shared, clock, seed) for seed in (1, 2, 3)]
    key = hosts[0].current(T)
    assert all(host.current(T) == key for host in hosts)
    shared.down = True
    clock.now = key.expires + 1                   # the period ended during the outage
    # Every host goes on issuing the last fleet key, which every host decrypts.
    assert all(host.current(T) == key for host in hosts)
    assert all(host.lookup(key.name, T)[0] == key for host in hosts)
    # Until it would no longer decrypt: then each host has a key of its own.
    clock.now = key.expires + T // 2
    own = [host.current(T) for host in hosts]
    assert key not in own and len({k.name for k in own}) == 3
    shared.down = False                           # Redis back: one key again at once
    agreed = {host.current(T) for host in hosts}
    assert len(agreed) == 1 and agreed.pop().name in shared.names


def test_current_and_known_fleet_keys_are_answered_from_memory():
    shared, clock = SharedKeys(), Clock()
    host = fleet_host(shared, clock, 1)
    key = host.current(T)                         # nothing yet: Redis is asked
    asked = shared.asked
    assert asked == 1
    assert host.current(T) == key and host.lookup(key.name, T) == (key, "found_current")
    assert shared.asked == asked                  # not once more
    assert host.lookup(b"x" * 16, T) == (None, "unknown")   # another host's key, maybe
    assert shared.asked == asked + 1
    clock.now = key.expires
    host.current(T)                               # a new period: Redis is asked
    assert shared.asked == asked + 2


class LaterKeys(SharedKeys):
    """SharedKeys answering as Redis does: later, on the event loop."""

    def __init__(self, loop):
        super().__init__()
        self.loop = loop        # on which Redis's answers come

    def current(self, period, now, make_key):
        return self._later(super().current, period, now, make_key)

    def find(self, name):
        return self._later(super().find, name)

    def _later(self, ask, *args):
        answer = Later()
        try:
            value = ask(*args)
        except StoreError as err:
            self.loop.call_soon(answer.fail, err)
        else:
            self.loop.call_soon(answer.settle, value)
        return answer


def test_requests_waiting_for_the_current_fleet_key_share_one_question():
    async def scenario():
        shared, clock = LaterKeys(asyncio.get_running_loop()), Clock()
        host = fleet_host(shared, clock, 1)
        waiting = [host.current(T) for _ in range(64)]
        assert shared.asked == 1 and all(isinstance(w, Later) for w in waiting)
        keys = [await w for w in waiting]
        assert len(set(keys)) == 1 and host.current(T) == keys[0]   # now from memory
        assert await host.lookup(b"y" * 16, T) == (None, "unknown")
        shared.down = True                       # a lookup that fails: unavailable
        assert await host.lookup(b"y" * 16, T) == (None, "unavailable")
    asyncio.run(scenario())


def test_a_spent_key_leaves_the_saved_ring_when_its_window_ends(tmp_path):
    # tlsmgr_preserve_sessions: a quiet host (no tktkey request) still
    # takes a key off the disk when it can no longer decrypt.
    from tlsmgr.service.keyfile import KeyFile
    now = [1_000_000]
    saved = KeyFile(str(tmp_path), clock=lambda: now[0])
    ring = TicketKeyRing(os.urandom, clock=lambda: now[0], on_change=saved.save_ring)
    key = ring.current(3600)                      # issues until now + 1799
    assert saved.load(3600) == [key]
    assert ring.drop_spent(3600) == 1799 + 1800 + 1   # when its window ends, and a second
    now[0] += 1799 + 1800
    assert saved.load(3600) == []                 # past the window: never loaded
    ring.drop_spent(3600)
    now[0] -= 3599                                # even read by a clock gone back
    assert saved.load(3600) == [] and ring.keys == []
    saved.close()
