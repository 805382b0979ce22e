"""The attr0 codec: encoding, incremental decoding, bounds, hostile bytes."""

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tlsmgr.wire.attr import (
    MAX_ATTRIBUTES,
    AttrError,
    Decoder,
    MessageTooLarge,
    decode_data,
    decode_data_prefix,
    decode_int,
    encode,
    encode_int,
)

SEED_REQUEST = b"request\0seed\0size\x0032\0\0"


def test_encode_matches_postfix_wire_format():
    assert encode([("request", "seed"), ("size", 32)]) == SEED_REQUEST
    assert encode([("status", -2), ("session", b"")]) == b"status\x004294967294\0session\0\0\0"
    assert encode([("keyname", b"\x00\xff")]) == b"keyname\0AP8=\0\0"
    assert encode([]) == b"\0"


@pytest.mark.parametrize("number,text", [(0, b"0"), (1, b"1"), (-1, b"4294967295"),
                                         (-2, b"4294967294"), (3600, b"3600")])
def test_integers_travel_as_unsigned_text(number, text):
    assert encode_int(number) == text
    assert decode_int(text) == number


@pytest.mark.parametrize("text,value", [
    (b"32", 32), (b" 7", 7), (b"+5", 5), (b"-5", -5), (b"4294967295", -1),
    (b"99999999999", 99999999999 & 0xFFFFFFFF), (b"", None), (b"abc", None),
    (b"12x", None), (b"1 ", None), (b"0x10", None),
    # strtoul saturates at 2**64 - 1 whatever the sign, which lands in an
    # int as -1; leading zeros do not count; no length is too long to read.
    (b"9" * 10000, -1), (b"0" * 10000 + b"32", 32), (b"-" + b"9" * 30, -1),
    (b"-18446744073709551615", 1)])
def test_numbers_are_read_as_sscanf_u_reads_them(text, value):
    assert decode_int(text) == value


def test_base64_is_strict_like_postfix():
    assert decode_data(b"") == b""
    assert decode_data(b"QUJD") == b"ABC"
    assert decode_data(b"QUI=") == b"AB"
    assert decode_data(b"QUJ") is None            # not a multiple of 4
    assert decode_data(b"QUJD====") is None       # a group may not start with '='
    assert decode_data(b"QQ==QUJD") == b"A"       # Postfix ignores what follows padding
    assert decode_data(b"QU!D") is None           # not in the alphabet
    # Postfix stops at the first '=' of a group and ignores the rest.
    assert decode_data(b"QQ==QUJD") == b"A"
    assert decode_data_prefix(b"QUJD!!!!") == (b"ABC", False)


def test_round_trip_of_every_value_kind():
    message = [("request", "update"), ("cache_type", "smtpd"), ("cache_id", "id&1"),
               ("session", bytes(range(256)))]
    [decoded] = Decoder().feed(encode(message))
    assert decoded[:3] == ((b"request", b"update"), (b"cache_type", b"smtpd"),
                           (b"cache_id", b"id&1"))
    assert decode_data(decoded[3][1]) == bytes(range(256))


def test_messages_split_at_every_byte_decode_the_same():
    stream = SEED_REQUEST + encode([("request", "lookup"), ("cache_type", ""),
                                    ("cache_id", "x")]) + b"\0"
    expected = Decoder().feed(stream)
    assert len(expected) == 3 and expected[2] == ()     # a lone NUL: an empty message
    for cut in range(len(stream) + 1):
        decoder = Decoder()
        got = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
        assert got == expected
        assert decoder.idle


def test_byte_by_byte_feed():
    decoder = Decoder()
    got = []
    for byte in SEED_REQUEST * 3:
        got += decoder.feed(bytes([byte]))
    assert got == [((b"request", b"seed"), (b"size", b"32"))] * 3


def test_empty_values_are_kept():
    [message] = Decoder().feed(b"keyname\0\0\0")
    assert message == ((b"keyname", b""),)


def test_size_limit_refuses_a_large_message_and_frees_it():
    decoder = Decoder(max_size=1024)
    big = encode([("session", b"x" * 2000)])
    with pytest.raises(MessageTooLarge) as info:
        decoder.feed(big)
    assert info.value.limit == 1024
    assert decoder.idle
    # A message exactly at the limit is fine.
    exact = b"a\0" + b"b" * (1024 - 4) + b"\0\0"
    assert len(exact) == 1024
    assert Decoder(max_size=1024).feed(exact) == [((b"a", b"b" * 1020),)]
    with pytest.raises(MessageTooLarge):
        Decoder(max_size=1023).feed(exact)


def test_endless_message_without_nul_is_refused_before_it_grows():
    decoder = Decoder(max_size=4096)
    with pytest.raises(MessageTooLarge):
        for _ in range(100):
            decoder.feed(b"z" * 1000)
    assert decoder.idle


def test_a_message_of_too_many_attributes_is_refused_and_freed():
    # 300 tiny attributes are few bytes but many objects: refused at the cap.
    many = encode([("a%d" % i, "") for i in range(MAX_ATTRIBUTES + 1)])
    decoder = Decoder()
    with pytest.raises(MessageTooLarge) as info:
        decoder.feed(many)
    assert (info.value.limit, info.value.unit) == (MAX_ATTRIBUTES, "attributes")
    assert decoder.idle
    at_cap = encode([("a%d" % i, "") for i in range(MAX_ATTRIBUTES)])
    assert len(Decoder().feed(at_cap)[0]) == MAX_ATTRIBUTES


def test_a_message_sent_a_byte_at_a_time_decodes_whole():
    wire = encode([("request", "update"), ("session", b"s" * 3000)]) * 2
    decoder = Decoder()
    messages = []
    for i in range(len(wire)):
        messages += decoder.feed(wire[i:i + 1])
    assert messages == Decoder().feed(wire)
    assert len(messages) == 2 and decoder.idle


def test_limit_counts_the_whole_message_not_each_piece():
    decoder = Decoder(max_size=100)
    with pytest.raises(MessageTooLarge):
        for _ in range(20):
            decoder.feed(b"name\0value\0")


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8), st.integers(64, 4096))
def test_arbitrary_bytes_never_raise_anything_but_attr_errors(chunks, limit):
    decoder = Decoder(max_size=limit)
    for chunk in chunks:
        try:
            for message in decoder.feed(chunk):
                assert isinstance(message, tuple)
                for name, value in message:
                    assert name and b"\0" not in name and b"\0" not in value
                    decode_int(value)
                    decode_data(value)
        except AttrError:
            decoder = Decoder(max_size=limit)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.from_regex(r"[a-z_]{1,12}", fullmatch=True),
                          st.one_of(st.binary(max_size=200), st.integers(0, 2**32 - 1),
                                    st.from_regex(r"[ -~]{0,40}", fullmatch=True))),
                max_size=6),
       st.integers(1, 50))
def test_round_trip_any_message_in_any_pieces(attributes, piece):
    wire = encode(attributes)
    decoder = Decoder(max_size=1 << 20)
    messages = []
    for start in range(0, len(wire), piece):
        messages += decoder.feed(wire[start:start + piece])
    assert len(messages) == 1
    for (name, value), (got_name, got_value) in zip(attributes, messages[0]):
        assert got_name == name.encode()
        if isinstance(value, bytes):
            assert decode_data(got_value) == value
        elif isinstance(value, int):
            assert decode_int(got_value) == (value if value < 2**31 else value - 2**32)
        else:
            assert got_value == value.encode()


@given(st.binary(max_size=100))
def test_lenient_base64_agrees_with_strict_on_canonical_input(data):
    text = base64.b64encode(data)
    assert decode_data(text) == data
    assert decode_data_prefix(text) == (data, True)
