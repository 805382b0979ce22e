"""Hypothesis strategies for tlsmgr requests, right and wrong: shared by
the request-handler tests (test_fuzz.py) and the Connection tests
(test_server.py).  The checks they feed are fuzz/invariants.py's."""

import base64
import sys
from pathlib import Path

from hypothesis import strategies as st

FUZZ_DIR = Path(__file__).resolve().parents[2] / "fuzz"
# The fuzz directory is not a package: its modules import each other by
# plain name, as they do when a harness runs as a script.
sys.path.insert(0, str(FUZZ_DIR))
import invariants  # noqa: E402
import seeds  # noqa: E402,F401  (the hand-written seeds, for test_fuzz.py)

REQUEST_TYPES = {b"seed", b"policy", b"lookup", b"update", b"delete", b"tktkey"}


def _without_nul(data: bytes) -> bytes:
    # Replaced, not removed: a name drawn non-empty stays non-empty.
    return data.replace(b"\0", b"\1")


REAL_NAMES = [b"request", b"cache_type", b"cache_id", b"session", b"size", b"keyname",
              b"timeout", b"status", b"cachable", b"seed", b"keybuf", b"protocol"]
REQUEST_NAMES = [*sorted(REQUEST_TYPES), b"W", b"frobnicate", b""]
CACHE_TYPES = [*invariants.CACHE_TYPES, b"imap", b""]

any_bytes = st.binary(max_size=40).map(_without_nul)
names = st.one_of(st.sampled_from(REAL_NAMES), st.binary(min_size=1, max_size=40).map(_without_nul))
cache_types = st.sampled_from(CACHE_TYPES)
cache_ids = st.one_of(st.sampled_from([b"a", b"b", b"id&1", b""]), any_bytes)
numbers = st.one_of(
    st.integers(-2**33, 2**33).map(b"%d".__mod__),
    st.sampled_from([b"", b" 7", b"+5", b"-1", b"4294967295", b"9" * 30, b"lots", b"12x"]))
base64_data = st.binary(max_size=120).map(base64.b64encode)
key_names = st.sampled_from(
    [invariants.FIRST_TICKET_KEY_NAME, b"N" * 16, b"", b"ABC"]).map(base64.b64encode)
values = st.one_of(st.sampled_from(REQUEST_NAMES + CACHE_TYPES), numbers, base64_data,
                   key_names, any_bytes)

# What each request reads after its name, with values right and wrong.
REQUEST_SHAPES = {
    b"seed": [(b"size", numbers)],
    b"policy": [(b"cache_type", cache_types)],
    b"lookup": [(b"cache_type", cache_types), (b"cache_id", cache_ids)],
    b"delete": [(b"cache_type", cache_types), (b"cache_id", cache_ids)],
    b"update": [(b"cache_type", cache_types), (b"cache_id", cache_ids),
                (b"session", st.one_of(base64_data, values))],
    b"tktkey": [(b"keyname", st.one_of(key_names, values))],
}


@st.composite
def well_shaped_requests(draw, request_names=REQUEST_NAMES):
    request = draw(st.sampled_from(request_names))
    return ((b"request", request),
            *((name, draw(value)) for name, value in REQUEST_SHAPES.get(request, [])))


@st.composite
def mangled_requests(draw):
    """A well-shaped request with attributes dropped, duplicated, added,
    swapped, renamed or given other values."""
    attributes = list(draw(well_shaped_requests()))
    for _ in range(draw(st.integers(1, 3))):
        edit = draw(st.sampled_from(["drop", "duplicate", "add", "swap", "rename", "revalue"]))
        if edit == "add" or not attributes:
            attributes.insert(draw(st.integers(0, len(attributes))), (draw(names), draw(values)))
            continue
        index = draw(st.integers(0, len(attributes) - 1))
        name, value = attributes[index]
        if edit == "drop":
            del attributes[index]
        elif edit == "duplicate":
            attributes.insert(index, (name, value))
        elif edit == "swap":
            other = draw(st.integers(0, len(attributes) - 1))
            attributes[index], attributes[other] = attributes[other], attributes[index]
        elif edit == "rename":
            attributes[index] = (draw(names), value)
        else:
            attributes[index] = (name, draw(values))
    return tuple(attributes)


messages = st.one_of(
    well_shaped_requests(),
    mangled_requests(),
    st.lists(st.tuples(names, values), max_size=8).map(tuple))
