"""Each request, its replies and its error paths, without any I/O."""

import logging

import pytest

from tlsmgr.service.handlers import client_dispatch
from tlsmgr.service.protocol import HANDSHAKE
from tlsmgr.service.scache import SessionCache
from tlsmgr.service.tickets import KEY_SIZE, TicketKey, TicketKeyRing
from tlsmgr.stores.memory import MemoryStore
from tlsmgr.wire.attr import Decoder, decode_data, encode

TIMEOUT = 3600


class Clock:
    def __init__(self, now=1_700_000_000):
        self.now = now

    def __call__(self):
        return self.now


def counting_random(n):
    return bytes(range(n % 256)) if n <= 256 else bytes(n)


@pytest.fixture
def clock():
    return Clock()


def make_dispatch(clock, smtpd_timeout=TIMEOUT, smtp_enabled=False):
    caches = {"smtpd": SessionCache("smtpd", MemoryStore(), smtpd_timeout, clock=clock),
              "smtp": SessionCache("smtp", MemoryStore(), TIMEOUT, clock=clock)
              if smtp_enabled else None,
              "lmtp": None}
    timeouts = {"smtpd": smtpd_timeout, "smtp": TIMEOUT, "lmtp": TIMEOUT}
    return client_dispatch(caches, timeouts, counting_random,
                           TicketKeyRing(counting_random, clock=clock))


@pytest.fixture
def tlsmgr(clock):
    return make_dispatch(clock)


def ask(tlsmgr, wire: bytes) -> bytes:
    [message] = Decoder().feed(wire)
    return tlsmgr.handle(message).data


def request(tlsmgr, *attributes) -> bytes:
    return ask(tlsmgr, encode(attributes))


def fields(reply: bytes) -> dict:
    [message] = Decoder().feed(reply)
    return {name.decode(): value for name, value in message}


def test_handshake_is_the_stock_announcement():
    assert HANDSHAKE == b"protocol\0tlsmgr_protocol\0\0"


def test_seed_returns_that_many_bytes(tlsmgr):
    reply = request(tlsmgr, ("request", "seed"), ("size", 32))
    assert reply == b"status\x000\0seed\0" + encode([("x", bytes(range(32)))])[2:]
    assert decode_data(fields(reply)["seed"]) == bytes(range(32))


def test_seed_whose_bytes_cannot_be_made_is_refused(clock, caplog):
    # As Postfix's stable releases since July 2026: status -1 and no seed,
    # never what a buffer held before.
    def failing(n):
        raise OSError(5, "Input/output error")
    tlsmgr = make_dispatch(clock)
    tlsmgr.client.random_bytes = failing
    assert request(tlsmgr, ("request", "seed"), ("size", 32)) == \
        b"status\x004294967295\0seed\0\0\0"
    assert "cannot generate 32 random bytes for a seed request: [Errno 5] Input/output " \
        "error" in caplog.text


@pytest.mark.parametrize("size", [0, 256, -1, 100000])
def test_bogus_seed_length_is_refused_with_stock_warning(tlsmgr, caplog, size):
    reply = request(tlsmgr, ("request", "seed"), ("size", size))
    assert reply == b"status\x004294967294\0seed\0\0\0"
    assert 'bogus seed length "%d" in "seed" request' % size in caplog.text


def test_policy_of_enabled_disabled_and_unknown_caches(tlsmgr, caplog):
    assert request(tlsmgr, ("request", "policy"), ("cache_type", "smtpd")) == \
        b"status\x000\0cachable\x001\0timeout\x003600\0\0"
    assert request(tlsmgr, ("request", "policy"), ("cache_type", "lmtp")) == \
        b"status\x000\0cachable\x000\0timeout\x003600\0\0"
    assert request(tlsmgr, ("request", "policy"), ("cache_type", "bogus")) == \
        b"status\x004294967294\0cachable\x000\0timeout\x000\0\0"
    assert 'bogus cache type "bogus" in "policy" request' in caplog.text


def test_update_lookup_delete(tlsmgr):
    miss = request(tlsmgr, ("request", "lookup"), ("cache_type", "smtpd"), ("cache_id", "a"))
    assert miss == b"status\x004294967295\0session\0\0\0"
    assert request(tlsmgr, ("request", "update"), ("cache_type", "smtpd"),
                   ("cache_id", "a"), ("session", b"SESSION")) == b"status\x000\0\0"
    hit = request(tlsmgr, ("request", "lookup"), ("cache_type", "smtpd"), ("cache_id", "a"))
    assert hit == b"status\x000\0session\0U0VTU0lPTg==\0\0"
    delete = (("request", "delete"), ("cache_type", "smtpd"), ("cache_id", "a"))
    assert request(tlsmgr, *delete) == b"status\x000\0\0"
    assert request(tlsmgr, *delete) == b"status\x004294967295\0\0"


def test_expired_entry_is_never_returned_and_is_deleted(tlsmgr, clock):
    request(tlsmgr, ("request", "update"), ("cache_type", "smtpd"), ("cache_id", "a"),
            ("session", b"S"))
    lookup = (("request", "lookup"), ("cache_type", "smtpd"), ("cache_id", "a"))
    clock.now += TIMEOUT                    # still valid at exactly the timeout
    assert fields(request(tlsmgr, *lookup))["status"] == b"0"
    clock.now += 1
    assert fields(request(tlsmgr, *lookup))["status"] == b"4294967295"
    assert len(tlsmgr.client.caches[b"smtpd"].store) == 0


def test_disabled_cache_refuses_lookup_update_delete(tlsmgr):
    for req in ("lookup", "delete"):
        assert fields(request(tlsmgr, ("request", req), ("cache_type", "smtp"),
                              ("cache_id", "a")))["status"] == b"4294967294"
    assert request(tlsmgr, ("request", "update"), ("cache_type", "smtp"), ("cache_id", "a"),
                   ("session", b"S")) == b"status\x004294967294\0\0"


@pytest.mark.parametrize("req", ["lookup", "delete"])
def test_unknown_cache_type_is_a_protocol_error(tlsmgr, caplog, req):
    reply = request(tlsmgr, ("request", req), ("cache_type", "imap"), ("cache_id", "a"))
    assert fields(reply)["status"] == b"4294967294"
    assert 'bogus cache type "imap" in "%s" request' % req in caplog.text


def test_tktkey_current_key_and_lookup_by_name(tlsmgr, clock):
    reply = fields(request(tlsmgr, ("request", "tktkey"), ("keyname", b"")))
    assert reply["status"] == b"0"
    keybuf = decode_data(reply["keybuf"])
    assert len(keybuf) == KEY_SIZE == 88
    key = TicketKey.unpack(keybuf)
    assert key.expires == clock.now + TIMEOUT // 2 - 1
    assert keybuf[80:] == key.expires.to_bytes(8, "little")
    again = fields(request(tlsmgr, ("request", "tktkey"), ("keyname", key.name)))
    assert again == reply


def test_tktkey_unknown_name_echoes_the_name(tlsmgr):
    name = b"N" * 16
    assert request(tlsmgr, ("request", "tktkey"), ("keyname", name)) == \
        encode([("status", -1), ("keybuf", name)])


def test_tktkey_bad_name_length(tlsmgr, caplog):
    assert request(tlsmgr, ("request", "tktkey"), ("keyname", b"ABC")) == \
        b"status\x004294967294\0keybuf\0\0\0"
    assert "invalid session ticket key name length: 3" in caplog.text


def test_tktkey_malformed_name_echoes_what_decoded(tlsmgr):
    assert ask(tlsmgr, b"request\0tktkey\0keyname\0QUJD!!!!\0\0") == \
        b"status\x004294967294\0keybuf\0QUJD\0\0"


def test_tktkey_disabled_when_smtpd_timeout_is_zero(clock):
    tlsmgr = make_dispatch(clock, smtpd_timeout=0)
    assert request(tlsmgr, ("request", "tktkey"), ("keyname", b"")) == \
        b"status\x004294967295\0keybuf\0\0\0"
    # Postfix 3.7 does not echo the name here.
    assert request(tlsmgr, ("request", "tktkey"), ("keyname", b"N" * 16)) == \
        b"status\x004294967295\0keybuf\0\0\0"


def test_unknown_request_gets_status_minus_2(tlsmgr, caplog):
    assert request(tlsmgr, ("request", "frobnicate")) == b"status\x004294967294\0\0"
    assert 'unknown request "frobnicate"' in caplog.text


def test_missing_request_attribute(tlsmgr, caplog):
    assert ask(tlsmgr, b"size\x0032\0\0") == b"status\x004294967294\0\0"
    assert "unexpected attribute size from tlsmgr socket (expecting: request)" in caplog.text
    assert ask(tlsmgr, b"\0") == b"status\x004294967294\0\0"
    assert "missing attribute request in input from tlsmgr socket" in caplog.text


def test_missing_attribute(tlsmgr, caplog):
    reply = ask(tlsmgr, b"request\0lookup\0cache_type\0smtpd\0\0")
    assert reply == b"status\x004294967294\0session\0\0\0"
    assert "missing attribute cache_id in input from tlsmgr socket" in caplog.text


def test_attributes_out_of_order(tlsmgr, caplog):
    reply = ask(tlsmgr, b"request\0lookup\0cache_id\0a\0cache_type\0smtpd\0\0")
    assert fields(reply)["status"] == b"4294967294"
    assert ("unexpected attribute cache_id from tlsmgr socket (expecting: cache_type)"
            in caplog.text)


def test_malformed_values(tlsmgr, caplog):
    assert ask(tlsmgr, b"request\0seed\0size\0lots\0\0") == \
        b"status\x004294967294\0seed\0\0\0"
    assert ("malformed numerical data from tlsmgr socket while reading input"
            " attribute value: lots") in caplog.text
    assert ask(tlsmgr, b"request\0update\0cache_type\0smtpd\0cache_id\0a\0session\0!!\0\0") \
        == b"status\x004294967294\0\0"
    assert "malformed base64 data" in caplog.text


def test_extra_attribute_is_reported_but_the_request_is_served(tlsmgr, caplog):
    reply = ask(tlsmgr, b"request\0seed\0size\x004\0extra\0x\0\0")
    assert fields(reply)["status"] == b"0"
    assert ("unexpected attribute extra from tlsmgr socket (expecting: (list terminator))"
            in caplog.text)


def test_master_wakeup_trigger_hangs_up_without_reply(tlsmgr):
    reply = tlsmgr.handle_trigger(b"W")
    assert reply.data == b"" and reply.close
    other = tlsmgr.handle_trigger(b"")
    assert other.data == b"" and not other.close
    [message] = Decoder().feed(b"request\0W\0\0")
    assert tlsmgr.handle(message).close


def test_warnings_sanitise_unprintable_bytes(tlsmgr, caplog):
    caplog.set_level(logging.WARNING, logger="tlsmgr")
    request(tlsmgr, ("request", "policy"), ("cache_type", "a\x01\x7fb"))
    assert 'bogus cache type "a??b"' in caplog.text


def test_a_failure_inside_a_request_still_answers_in_shape(tlsmgr, caplog):
    class Broken(MemoryStore):
        def get(self, cache_id):
            raise RuntimeError("disk on fire")
    tlsmgr.client.caches[b"smtpd"].store = Broken()
    reply = request(tlsmgr, ("request", "lookup"), ("cache_type", "smtpd"), ("cache_id", "a"))
    assert reply == b"status\x004294967294\0session\0\0\0"
    assert "cannot answer lookup request: RuntimeError: disk on fire" in caplog.text
