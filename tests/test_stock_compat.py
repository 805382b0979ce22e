"""Byte-for-byte comparison with Postfix's own tlsmgr, side by side.

Both daemons run with the same main.cf; each request goes to each on a
fresh connection (the stock daemon loses step after some bad requests)
and the replies must be equal.  Where a reply carries random bytes (seed,
a new ticket key) the status and the length must be equal instead.
"""

import socket

import pytest
from conftest import require
from helpers.harness import start_ours, start_stock, stock_available

from tlsmgr.wire.attr import Decoder, decode_data, encode

pytestmark = pytest.mark.postfix

PARAMS = dict(smtpd_tls_session_cache_database="btree:${data_directory}/smtpd_scache",
              smtp_tls_session_cache_database="btree:${data_directory}/smtp_scache",
              smtp_tls_session_cache_timeout="60s")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    require(stock_available(), "Postfix's tlsmgr (run as root with Debian's postfix "
                               "package: apt-get install postfix)")
    stock = start_stock(tmp_path_factory.mktemp("stock"), **PARAMS)
    ours_dir = tmp_path_factory.mktemp("ours")
    (ours_dir / "data").mkdir()
    ours = start_ours(ours_dir, data_directory=ours_dir / "data", **PARAMS)
    yield stock, ours
    for daemon in (stock, ours):
        daemon.stop()


def exchange(path, *requests, timeout=3.0):
    """Send requests one at a time on one connection; return the replies."""
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(timeout)
    sock.connect(str(path))
    decoder = Decoder()
    replies = []
    try:
        for wire in (None,) + requests:
            if wire is not None:
                sock.sendall(wire)
            messages = []
            while not messages:
                data = sock.recv(65536)
                if not data:
                    return replies + ["closed"]
                messages = decoder.feed(data)
            replies.append(messages[0])
    except TimeoutError:
        replies.append("no reply")
    finally:
        sock.close()
    return replies


def both(pair, *requests):
    stock, ours = pair
    return exchange(stock.socket_path, *requests), exchange(ours.socket_path, *requests)


def req(*attributes):
    return encode(attributes)


DETERMINISTIC = [
    req(("request", "policy"), ("cache_type", "smtpd")),
    req(("request", "policy"), ("cache_type", "smtp")),
    req(("request", "policy"), ("cache_type", "lmtp")),
    req(("request", "policy"), ("cache_type", "bogus")),
    req(("request", "lookup"), ("cache_type", "smtpd"), ("cache_id", "absent")),
    req(("request", "lookup"), ("cache_type", "lmtp"), ("cache_id", "x")),
    req(("request", "lookup"), ("cache_type", "bogus"), ("cache_id", "x")),
    req(("request", "update"), ("cache_type", "lmtp"), ("cache_id", "x"), ("session", b"s")),
    req(("request", "update"), ("cache_type", "bogus"), ("cache_id", "x"), ("session", b"s")),
    req(("request", "delete"), ("cache_type", "smtpd"), ("cache_id", "absent")),
    req(("request", "delete"), ("cache_type", "lmtp"), ("cache_id", "x")),
    req(("request", "delete"), ("cache_type", "bogus"), ("cache_id", "x")),
    req(("request", "seed"), ("size", 0)),
    req(("request", "seed"), ("size", 256)),
    req(("request", "seed"), ("size", -1)),
    req(("request", "tktkey"), ("keyname", b"ABC")),
    req(("request", "tktkey"), ("keyname", b"\x01" * 16)),
    b"request\0tktkey\0keyname\0QUJD!!!!\0\0",
    b"size\x008\0\0",
    b"request\0lookup\0cache_type\0smtpd\0cache_id\0a\0extra\0x\0\0",
]


@pytest.mark.parametrize("wire", DETERMINISTIC, ids=lambda w: w[:60].decode("latin-1"))
def test_same_reply_bytes(pair, wire):
    stock, ours = both(pair, wire)
    assert ours[:2] == stock[:2]


# Requests whose attributes cannot be read.  Postfix 3.7 then sends, as the
# seed or session, whatever an earlier request (of any client) left in its
# buffer; Postfix 3.12 fixed that.  We send nothing there.
STALE_BUFFER = [
    b"request\0seed\0size\0many\0\0",
    b"request\0seed\0size\0 +7x\0\0",
    b"request\0lookup\0cache_type\0smtpd\0\0",
    b"request\0lookup\0cache_id\0a\0cache_type\0smtpd\0\0",
]


@pytest.mark.parametrize("wire", STALE_BUFFER, ids=lambda w: w[:60].decode("latin-1"))
def test_same_status_and_no_stale_data(pair, wire):
    # Leave something in the stock daemon's buffer first.
    both(pair, req(("request", "tktkey"), ("keyname", b"LEFTOVER")))
    stock, ours = both(pair, wire)
    assert [name for name, _ in ours[1]] == [name for name, _ in stock[1]]
    assert ours[1][0] == stock[1][0] == (b"status", b"4294967294")
    assert ours[1][1][1] == b""


def test_session_round_trip_matches(pair):
    session = bytes(range(256)) * 4
    sequence = [
        req(("request", "update"), ("cache_type", "smtpd"), ("cache_id", "rt"),
            ("session", session)),
        req(("request", "lookup"), ("cache_type", "smtpd"), ("cache_id", "rt")),
        req(("request", "delete"), ("cache_type", "smtpd"), ("cache_id", "rt")),
        req(("request", "delete"), ("cache_type", "smtpd"), ("cache_id", "rt")),
        req(("request", "lookup"), ("cache_type", "smtpd"), ("cache_id", "rt")),
    ]
    stock, ours = both(pair, *sequence)
    assert ours == stock
    assert decode_data(dict(ours[2])[b"session"]) == session


def shape(reply):
    """Names, status and decoded lengths: what random replies share."""
    return [(name, value if name == b"status" else len(decode_data(value)))
            for name, value in reply]


def test_random_replies_have_the_same_shape(pair):
    requests = [req(("request", "seed"), ("size", n)) for n in (1, 32, 255)]
    requests.append(req(("request", "tktkey"), ("keyname", b"")))
    stock, ours = both(pair, *requests)
    assert [shape(r) for r in ours[1:]] == [shape(r) for r in stock[1:]]


def test_ticket_key_found_again_by_name(pair):
    for daemon in pair:
        first = exchange(daemon.socket_path, req(("request", "tktkey"), ("keyname", b"")))
        key = decode_data(dict(first[1])[b"keybuf"])
        again = exchange(daemon.socket_path, req(("request", "tktkey"), ("keyname", key[:16])))
        assert decode_data(dict(again[1])[b"keybuf"]) == key


def test_wakeup_trigger(pair):
    stock, ours = both(pair, b"W\0")
    assert ours == stock == [((b"protocol", b"tlsmgr_protocol"),), "closed"]
