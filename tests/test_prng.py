"""Tests for tlsmgr.service.prng: the DRBG, the entropy sources, the exchange file."""

import fcntl
import logging
import os
import socket
import stat
import threading
import time
from types import SimpleNamespace

import pytest

from tlsmgr.service import prng
from tlsmgr.service.prng import MustExit, Pool, Prng
from tlsmgr.util import log

HOUR = 3600


@pytest.fixture
def caplog(caplog):
    caplog.set_level(logging.INFO, logger="tlsmgr")
    return caplog


def lines(caplog, level):
    return [r.getMessage() for r in caplog.records if r.levelno == level]


@pytest.fixture
def make(tmp_path):
    """Build a Prng with stock-like defaults; close it after the test."""
    made = []

    def make(source="", random_bytes=32, exchange=None, reseed=HOUR,
             update=HOUR, pool=None):
        if exchange is None:
            exchange = str(tmp_path / "prng_exch")
        made.append(Prng(source, random_bytes, exchange, reseed, update, pool))
        return made[-1]

    yield make
    for p in made:
        p.close()


def seeded():
    return Pool.from_seed(b"the same seed for every test pool")


# --- the DRBG ----------------------------------------------------------------

def test_nist_cavp_vector_without_reseed():
    # drbgvectors_no_reseed/HMAC_DRBG.rsp, [SHA-256], COUNT = 0.
    pool = Pool.from_seed(bytes.fromhex(
        "ca851911349384bffe89de1cbdc46e6831e44d34a4fb935ee285dd14b71a7488"
        "659ba96c601dc69fc902940805ec0ca8"))
    pool.random_bytes(128)
    assert pool.random_bytes(128).hex() == (
        "e528e9abf2dece54d47c7e75e5fe302149f817ea9fb4bee6f4199697d04d5b89"
        "d54fbb978a15b5c443c9ec21036d2460b6f73ebad0dc2aba6e624abf07745bc1"
        "07694bb7547bb0995f70de25d6b29e2d3011bb19d27676c07162c8b5ccde0668"
        "961df86803482cb37ed6d5c0bb8d50cf1f50d476aa0458bdaba806f48be9dcb8")


def test_nist_cavp_vector_with_reseed_through_mix():
    # drbgvectors_pr_false/HMAC_DRBG.rsp, [SHA-256], COUNT = 0: a reseed
    # without additional input is exactly mix(EntropyInputReseed).
    pool = Pool.from_seed(bytes.fromhex(
        "06032cd5eed33f39265f49ecb142c511da9aff2af71203bffaf34a9ca5bd9c0d"
        "0e66f71edc43e42a45ad3c6fc6cdc4df"))
    pool.mix(bytes.fromhex(
        "01920a4e669ed3a85ae8a33b35a74ad7fb2a6bb4cf395ce00334a9c9a5a5d552"))
    pool.random_bytes(128)
    assert pool.random_bytes(128).hex() == (
        "76fc79fe9b50beccc991a11b5635783a83536add03c157fb30645e611c2898bb"
        "2b1bc215000209208cd506cb28da2a51bdb03826aaf2bd2335d576d519160842"
        "e7158ad0949d1a9ec3e66ea1b1a064b005de914eac2e9d4f2d72a8616a802254"
        "22918250ff66a41bd2f864a6a38cc5b6499dc43f7f2bd09e1e0f8f5885935124")


@pytest.mark.parametrize("n", [0, 1, 31, 32, 33, 255, 1024, 4096])
def test_output_has_the_requested_length(n):
    assert len(Pool().random_bytes(n)) == n


def test_oversized_request_is_refused():
    with pytest.raises(ValueError):
        Pool().random_bytes(prng.MAX_REQUEST + 1)


def test_pools_differ_and_never_repeat():
    a, b = Pool(), Pool()
    outputs = [a.random_bytes(32) for _ in range(100)] + [b.random_bytes(32)]
    assert len(set(outputs)) == len(outputs)


def test_same_seed_same_output_until_mixed():
    a, b = seeded(), seeded()
    assert a.random_bytes(64) == b.random_bytes(64)
    a.mix(b"x")
    b.mix(b"y")
    assert a.random_bytes(64) != b.random_bytes(64)


def test_extra_seed_is_not_all_there_is():
    assert Pool(b"extra").random_bytes(32) != Pool(b"extra").random_bytes(32)


@pytest.mark.parametrize("clock", ["time_ns", "monotonic_ns"])
def test_both_clocks_are_mixed_in(clock, monkeypatch):
    outputs = []
    for tick in (1, 2, 1):
        clocks = {"time_ns": lambda: 10**18, "monotonic_ns": lambda: 10**9}
        clocks[clock] = lambda tick=tick: tick
        monkeypatch.setattr(prng, "time", SimpleNamespace(**clocks))
        pool = seeded()
        pool.mix_time()
        outputs.append(pool.random_bytes(32))
    assert outputs[0] == outputs[2] != outputs[1]


# --- entropy sources ---------------------------------------------------------

def test_no_source_warns_and_never_reseeds(make, caplog):
    p = make("")
    assert lines(caplog, logging.WARNING) == [
        "no entropy source specified with parameter tls_random_source",
        "encryption keys etc. may be predictable"]
    assert p.reseed() is None
    assert p.reseeds == 0


def fifo(tmp_path):
    path = tmp_path / "random"
    os.mkfifo(path)
    return str(path)


def test_device_is_read_at_every_reseed_at_most_255_bytes(make, tmp_path):
    path = fifo(tmp_path)
    p = make("dev:" + path, random_bytes=1000, pool=seeded())
    writer = os.open(path, os.O_WRONLY)
    try:
        os.write(writer, bytes(1000))
        assert 0 <= p.reseed() <= HOUR
        p.reseed()
        assert p.reseeds == 2
        reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        assert len(os.read(reader, 2000)) == 1000 - 2 * 255
        os.close(reader)
    finally:
        os.close(writer)


def test_device_bytes_reach_the_pool(make, tmp_path):
    outputs = []
    for content in (b"A" * 32, b"B" * 32, b"A" * 32):
        device = tmp_path / "device"
        device.write_bytes(content)
        p = make("dev:%s" % device, pool=seeded())
        p.reseed()
        outputs.append(p.random_bytes(32))
    assert outputs[0] == outputs[2] != outputs[1]


def test_device_end_of_file_saves_state_and_exits(make, tmp_path, caplog):
    path = fifo(tmp_path)
    p = make("dev:" + path)
    os.close(os.open(path, os.O_WRONLY))     # a writer that went away
    with pytest.raises(MustExit) as exc:
        p.reseed()
    assert exc.value.code == 0
    assert lines(caplog, logging.WARNING) == [
        "cannot read from entropy device %s: end of file -- exiting to reopen"
        % path]
    assert (tmp_path / "prng_exch").stat().st_size == 1024


def test_silent_device_times_out(make, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(prng, "TIMEOUT", 0.2)
    path = fifo(tmp_path)
    p = make("dev:" + path)
    writer = os.open(path, os.O_WRONLY)
    try:
        started = time.monotonic()
        with pytest.raises(MustExit):
            p.reseed()
        assert 0.2 <= time.monotonic() - started < 5
    finally:
        os.close(writer)
    assert lines(caplog, logging.WARNING) == [
        "cannot read from entropy device %s: Connection timed out -- "
        "exiting to reopen" % path]


def test_missing_device_is_retried_by_a_new_process(make, tmp_path, caplog):
    path = str(tmp_path / "nonesuch")
    p = make("dev:" + path)
    assert lines(caplog, logging.WARNING) == [
        "cannot open entropy device %s: No such file or directory" % path]
    with pytest.raises(MustExit):
        p.reseed()
    assert lines(caplog, logging.WARNING)[-1] == \
        "exiting to reopen external entropy source dev:" + path


class EgdServer(threading.Thread):
    """Answers EGD "read entropy" requests with the given replies, in turn."""

    def __init__(self, path, replies):
        super().__init__(daemon=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen()
        self.replies = replies
        self.requests = []

    def run(self):
        conn, _ = self.listener.accept()
        with conn, self.listener:
            for reply in self.replies:
                self.requests.append(conn.recv(2))
                conn.sendall(reply)


def test_egd_server_is_asked_at_every_reseed(make, tmp_path):
    path = str(tmp_path / "egd")
    server = EgdServer(path, [b"\x03abc", b"\xff" + bytes(255)])
    server.start()
    a = make("egd:" + path, random_bytes=1000, pool=seeded())
    assert 0 <= a.reseed() <= HOUR
    a.reseed()
    server.join(5)
    assert server.requests == [b"\x01\xff", b"\x01\xff"]
    assert a.reseeds == 2


def test_egd_with_nothing_to_give_means_exit(make, tmp_path, caplog):
    path = str(tmp_path / "egd")
    server = EgdServer(path, [b"\x00"])
    server.start()
    p = make("egd:" + path)
    with pytest.raises(MustExit):
        p.reseed()
    assert server.requests == [b"\x01\x20"]
    assert lines(caplog, logging.INFO) == ["EGD server %s reports zero bytes available" % path]
    assert lines(caplog, logging.WARNING) == [
        "lost connection to EGD server %s -- exiting to reconnect" % path]


def test_egd_hanging_up_means_exit(make, tmp_path, caplog):
    path = str(tmp_path / "egd")
    server = EgdServer(path, [b"\x10short"])
    server.start()
    p = make("egd:" + path)
    with pytest.raises(MustExit):
        p.reseed()
    assert lines(caplog, logging.INFO) == [
        "cannot read 16 bytes from EGD server %s: end of file" % path]
    assert lines(caplog, logging.WARNING) == [
        "lost connection to EGD server %s -- exiting to reconnect" % path]


def test_unreachable_egd_is_retried_by_a_new_process(make, tmp_path, caplog):
    path = str(tmp_path / "egd")
    p = make("egd:" + path)
    assert lines(caplog, logging.WARNING) == [
        "cannot connect to EGD server %s: No such file or directory" % path]
    with pytest.raises(MustExit):
        p.reseed()
    assert lines(caplog, logging.WARNING)[-1] == \
        "exiting to reopen external entropy source egd:" + path


def test_entropy_file_is_read_once(make, tmp_path):
    path = tmp_path / "entropy"
    path.write_bytes(os.urandom(100))
    once, twice = make(str(path), pool=seeded()), make(str(path), pool=seeded())
    assert once.reseed() is None
    assert twice.reseed() is None
    assert twice.reseed() is None
    assert once.reseeds == twice.reseeds == 1
    first = once.random_bytes(32)
    assert first == twice.random_bytes(32)
    assert first != seeded().random_bytes(32)


def test_empty_entropy_file_is_reported(make, tmp_path, caplog):
    path = tmp_path / "entropy"
    path.write_bytes(b"")
    p = make(str(path))
    assert p.reseed() is None
    assert lines(caplog, logging.WARNING) == [
        "cannot read from entropy file %s: end of file" % path]


def test_unreadable_entropy_file_is_reported(make, tmp_path, caplog):
    p = make(str(tmp_path))
    assert p.reseed() is None
    assert p.reseeds == 0
    assert lines(caplog, logging.WARNING) == [
        "cannot read from entropy file %s: Is a directory" % tmp_path]


def test_missing_entropy_file_is_retried_by_a_new_process(make, tmp_path,
                                                          caplog):
    path = str(tmp_path / "nonesuch")
    p = make(path)
    assert lines(caplog, logging.WARNING) == []
    with pytest.raises(MustExit):
        p.reseed()
    assert lines(caplog, logging.WARNING) == [
        "exiting to reopen external entropy source " + path]


# --- the exchange file -------------------------------------------------------

def test_exchange_file_is_private_and_1024_bytes(make, tmp_path):
    p = make()
    exchange = tmp_path / "prng_exch"
    assert stat.S_IMODE(exchange.stat().st_mode) == 0o600
    assert 0 <= p.update_exchange() <= HOUR
    assert exchange.stat().st_size == 1024
    assert p.exchange_updates == 1


def test_exchange_file_changes_at_every_update(make, tmp_path):
    p = make()
    seen = set()
    for _ in range(5):
        p.update_exchange()
        seen.add((tmp_path / "prng_exch").read_bytes())
    assert len(seen) == 5


def test_exchange_file_contents_reach_the_pool(make, tmp_path):
    outputs = []
    for content in (b"A" * 1024, b"B" * 1024):
        exchange = tmp_path / content[:1].decode()
        exchange.write_bytes(content)
        p = make(exchange=str(exchange), pool=seeded())
        p.update_exchange()
        outputs.append(p.random_bytes(32))
    assert outputs[0] != outputs[1]


def test_long_exchange_file_is_cut_to_1024_bytes(make, tmp_path):
    exchange = tmp_path / "prng_exch"
    exchange.write_bytes(bytes(5000))
    make().save()
    assert exchange.stat().st_size == 1024
    assert exchange.read_bytes() != bytes(1024)


def test_removed_exchange_file_means_exit(make, tmp_path, caplog):
    p = make()
    os.unlink(tmp_path / "prng_exch")
    with pytest.raises(MustExit) as exc:
        p.update_exchange()
    assert exc.value.code == 0
    assert lines(caplog, logging.WARNING)[-1] == (
        "PRNG exchange file was removed -- exiting to reopen")


def test_unopenable_exchange_file_is_fatal(make, tmp_path, caplog):
    path = str(tmp_path / "nonesuch" / "prng_exch")
    with pytest.raises(log.Fatal) as exc:
        make(exchange=path)
    assert exc.value.code == 1
    assert lines(caplog, logging.CRITICAL) == [
        "cannot open PRNG exchange file %s: No such file or directory" % path]


def test_unwritable_exchange_file_is_fatal(make, caplog):
    p = make(exchange="/dev/full")
    with pytest.raises(log.Fatal):
        p.save()
    assert lines(caplog, logging.CRITICAL) == [
        "cannot write PRNG exchange file /dev/full: No space left on device"]


def test_no_exchange_file_configured(make, tmp_path):
    p = make(exchange="")
    assert p.update_exchange() is None
    p.save()
    assert list(tmp_path.iterdir()) == []


def test_update_waits_for_the_exchange_file_lock(make, tmp_path):
    p = make()
    exchange = tmp_path / "prng_exch"
    holder = os.open(exchange, os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    updater = threading.Thread(target=p.update_exchange)
    try:
        updater.start()
        updater.join(0.5)
        assert updater.is_alive()
        assert exchange.stat().st_size == 0
    finally:
        fcntl.flock(holder, fcntl.LOCK_UN)
        os.close(holder)
    updater.join(5)
    assert not updater.is_alive()
    assert exchange.stat().st_size == 1024


# --- event delays ------------------------------------------------------------

def test_delays_are_random_fractions_of_the_period(make):
    p = make("dev:/dev/urandom", reseed=100, update=1000)
    reseeds = {p.reseed() for _ in range(50)}
    updates = {p.update_exchange() for _ in range(50)}
    assert all(0 <= d <= 100 for d in reseeds) and len(reseeds) > 10
    assert all(0 <= d <= 1000 for d in updates) and len(updates) > 10
    assert max(updates) > 100


def test_huge_periods_are_capped_like_stock(make):
    p = make("dev:/dev/urandom", reseed=10**12, update=10**12)
    longest = (2**31 - 1) // 255
    assert max(p.reseed() for _ in range(50)) <= longest
    assert max(p.update_exchange() for _ in range(50)) <= longest


def test_small_requests_come_from_a_block_used_once_and_dropped_by_a_mix(tmp_path):
    prng = Prng("", 32, "", 3600, 3600, pool=Pool.from_seed(b"seed"))
    outputs = [prng.random_bytes(32) for _ in range(300)]      # crosses blocks
    assert len(set(outputs)) == 300
    same = Prng("", 32, "", 3600, 3600, pool=Pool.from_seed(b"seed"))
    same.random_bytes(32)
    before_mix = same.random_bytes(32)
    other = Prng("", 32, "", 3600, 3600, pool=Pool.from_seed(b"seed"))
    other.random_bytes(32)
    other.mix(b"new entropy")
    assert other.random_bytes(32) != before_mix
    assert len(prng.random_bytes(1024)) == 1024


def test_small_requests_are_aes_ctr_keystream_under_a_key_from_the_pool():
    # The construction of docs/PRNG.md, known-answer style: the key is the
    # pool's next 32 bytes, the counter starts at zero, nothing repeats.
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    prng = Prng("", 32, "", 3600, 3600, pool=Pool.from_seed(b"seed"))
    key = Pool.from_seed(b"seed").random_bytes(32)
    stream = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(64))
    assert prng.random_bytes(32) + prng.random_bytes(32) == stream
    assert key not in b"".join(prng.random_bytes(255) for _ in range(40))
