"""Ticket key timing with a controllable clock: the stock two-key ring."""

import itertools

from tlsmgr.tickets import KEY_SIZE, TicketKey, TicketKeyRing

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
