"""The Redis store: one session cache shared by a fleet of mail hosts.

``smtpd_tls_session_cache_database = redis:URL`` puts a cache on Redis,
where URL is what redis-py takes: ``redis://[:password@]host:port/db``,
``rediss://...`` (TLS), ``unix:///path/redis.sock?db=0``.  Every host of a
fleet that names the same Redis and the same ``tlsmgr_redis_key_prefix``
sees the same sessions; other fleets pick other prefixes.

Keys of one cache share a hash tag, ``{PREFIX<label>}``, so that they live
in one slot of a Redis Cluster and the Lua scripts below may touch them
together.  Per cache:

* ``{P<label>}:s:<id>``  the entry (timestamp + session), with a TTL of
  the cache timeout: Redis itself expires it;
* ``{P<label>}:age``     the ids by save time (a sorted set), for eviction;
* ``{P<label>}:sizes``   the bytes each id holds, and ``{P<label>}:bytes``
  their sum, for the byte limit.

Saving an entry and keeping the cache within its limits is one script, so
that hosts writing at once never overshoot together.

Redis may be down or slow.  Each command waits at most the socket timeout
(``tlsmgr_redis_timeout_ms``); after a failure the store stops asking for
a while (1 s, doubling up to 30 s) and fails at once, so that lookups
miss and updates fail without waiting; when the pause is over it tries
again, and sharing comes back by itself when Redis does.
"""

from __future__ import annotations

import struct
import threading
import time
from typing import NamedTuple
from urllib.parse import urlsplit

import redis

from . import Entry, Limits, Store, StoreError, Trimmed

_STAMP = struct.Struct(">q")
_CLEAR_STEP = 1024         # entries removed per script call by clear()
_FOREVER = 1 << 62         # a cutoff later than any timestamp

FIRST_PAUSE = 1.0
LAST_PAUSE = 30.0


class RedisSettings(NamedTuple):
    """What main.cf says about Redis, besides each table's URL."""

    key_prefix: str = "tlsmgr:"
    password: str = ""
    timeout_ms: int = 250


def connect(url: str, settings: RedisSettings) -> redis.Redis:
    """A client for the URL; no connection is made until first use, so a
    Redis that is down at start does not stop the daemon."""
    timeout = settings.timeout_ms / 1000
    options = dict(socket_timeout=timeout, socket_connect_timeout=timeout,
                   retry_on_timeout=False, retry=None, health_check_interval=0)
    if settings.password:
        options["password"] = settings.password
    scheme = urlsplit(url).scheme
    try:
        if scheme == "redis+cluster":
            from redis.cluster import RedisCluster
            return RedisCluster.from_url("redis" + url[len(scheme):], **options)
        if scheme == "redis+sentinel":
            return _sentinel_master(url, options)
        return redis.Redis.from_url(url, **options)
    except (ValueError, redis.RedisError) as err:
        raise StoreError("bad Redis URL %s: %s" % (url, err)) from None


def _sentinel_master(url: str, options: dict) -> redis.Redis:
    # redis+sentinel://host:port[,host:port...]/service[/db]
    from redis.sentinel import Sentinel
    parts = urlsplit(url)
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("no service name after the sentinel addresses")
    nodes = []
    for node in parts.netloc.split(","):
        host, _, port = node.rpartition(":")
        nodes.append((host, int(port or 26379)))
    db = int(path[1]) if len(path) > 1 else 0
    sentinel = Sentinel(nodes, socket_timeout=options["socket_timeout"])
    return sentinel.master_for(path[0], db=db, **options)


class Breaker:
    """Stops asking a failed Redis for a while, so that no request waits
    on a Redis that is known to be down."""

    def __init__(self, name: str, clock=time.monotonic):
        self.name = name
        self.clock = clock
        self.pause = FIRST_PAUSE
        self.closed_until = 0.0
        self.lock = threading.Lock()

    def call(self, operation):
        if self.clock() < self.closed_until:
            raise StoreError("%s is unreachable; trying again in %.0f s"
                             % (self.name, self.closed_until - self.clock()))
        try:
            result = operation()
        except Exception as err:
            # Whatever broke (the network, Redis, the client library), the
            # request is a miss or a failed update, never a crash.
            with self.lock:
                self.closed_until = self.clock() + self.pause
                self.pause = min(self.pause * 2, LAST_PAUSE)
            raise StoreError("%s: %s" % (self.name, err or type(err).__name__)) from None
        self.pause = FIRST_PAUSE
        return result


# Every script gets the cache's keys and this function, which removes one
# session and its bookkeeping.
_PRELUDE = """
local sessions, age, sizes, total = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local function forget(member)
  redis.call('DEL', sessions .. member)
  local held = redis.call('HGET', sizes, member)
  if held then
    redis.call('DECRBY', total, held)
    redis.call('HDEL', sizes, member)
  end
  return redis.call('ZREM', age, member)
end
"""

_SAVE = _PRELUDE + """
local id, value, ttl, stamp, size = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local cutoff, max_entries, max_bytes = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local expired, evicted = 0, 0
local function remove(member, score)
  forget(member)
  if tonumber(score) < cutoff then expired = expired + 1 else evicted = evicted + 1 end
end
local old = redis.call('HGET', sizes, id)
if old then redis.call('DECRBY', total, old) end
redis.call('SET', sessions .. id, value, 'EX', ttl)
redis.call('ZADD', age, stamp, id)
redis.call('HSET', sizes, id, size)
redis.call('INCRBY', total, size)
-- Index entries of sessions that Redis has expired: a bounded few per save.
local gone = redis.call('ZRANGEBYSCORE', age, '-inf', '(' .. cutoff, 'WITHSCORES', 'LIMIT', 0, 16)
for i = 1, #gone, 2 do remove(gone[i], gone[i + 1]) end
while (max_entries > 0 and redis.call('ZCARD', age) > max_entries)
    or (max_bytes > 0 and tonumber(redis.call('GET', total) or '0') > max_bytes) do
  local oldest = redis.call('ZRANGE', age, 0, 0, 'WITHSCORES')
  if #oldest == 0 then break end
  remove(oldest[1], oldest[2])
end
return {expired, evicted}
"""

# Remove one id (the oldest for ''); its value, '' when Redis had already
# expired it, false when there was none.
_REMOVE = _PRELUDE + """
local id = ARGV[1]
if id == '' then
  local oldest = redis.call('ZRANGE', age, 0, 0)
  if #oldest == 0 then return false end
  id = oldest[1]
end
local value = redis.call('GET', sessions .. id)
local indexed = forget(id)
if value then return value end
return indexed == 1 and '' or false
"""

_PRUNE = _PRELUDE + """
local gone = redis.call('ZRANGEBYSCORE', age, '-inf', '(' .. ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(gone) do forget(member) end
return #gone
"""


class RedisStore(Store):
    """One cache's sessions on Redis, shared with every host of the fleet."""

    # Answered in a worker thread: a request for it may wait on the network.
    blocking = True

    def __init__(self, url: str, label: str, settings: RedisSettings, timeout: int):
        self.client = connect(url, settings)
        self.timeout = timeout
        tag = "{%s%s}" % (settings.key_prefix, label)
        self._sessions = (tag + ":s:").encode()
        self._keys = [self._sessions] + [(tag + suffix).encode()
                                         for suffix in (":age", ":sizes", ":bytes")]
        self._age, self._sizes, self._total = self._keys[1:]
        self.breaker = Breaker("Redis %s" % _safe(url))
        self._save = self.client.register_script(_SAVE)
        self._remove = self.client.register_script(_REMOVE)
        self._prune = self.client.register_script(_PRUNE)

    def get(self, cache_id: bytes) -> Entry | None:
        value = self.breaker.call(lambda: self.client.get(self._sessions + cache_id))
        return None if value is None else _entry(value)

    def put(self, cache_id: bytes, entry: Entry) -> None:
        self.save(cache_id, entry, Limits(), 0)

    def save(self, cache_id: bytes, entry: Entry, limits: Limits, cutoff: int) -> Trimmed:
        value = _STAMP.pack(entry.timestamp) + entry.session
        size = len(cache_id) + len(entry.session)
        # Redis keeps the entry one second past its timeout: an entry is
        # still valid at exactly timestamp + timeout.
        args = [cache_id, value, self.timeout + 1, entry.timestamp, size, cutoff,
                limits.entries, limits.bytes]
        expired, evicted = self.breaker.call(lambda: self._save(keys=self._keys, args=args))
        return Trimmed(expired, evicted)

    def delete(self, cache_id: bytes) -> bool:
        if not cache_id:
            return False            # the empty id asks _REMOVE for the oldest
        found = self.breaker.call(lambda: self._remove(keys=self._keys, args=[cache_id]))
        return found is not None

    def oldest(self) -> Entry | None:
        def oldest():
            ids = self.client.zrange(self._age, 0, 0)
            return self.client.get(self._sessions + ids[0]) if ids else None
        value = self.breaker.call(oldest)
        return None if value is None else _entry(value)

    def pop_oldest(self) -> Entry | None:
        value = self.breaker.call(lambda: self._remove(keys=self._keys, args=[b""]))
        if value is None:
            return None
        # An index entry whose session Redis already expired: say so.
        return _entry(value) if value else Entry(0, b"")

    def expire(self, cutoff: int, budget: int) -> tuple[list[Entry], bool]:
        # Redis expires the sessions; only their index entries are left.
        pruned = self.breaker.call(lambda: self._prune(keys=self._keys, args=[cutoff, budget]))
        return [], pruned < budget

    def clear(self) -> int:
        # In bounded steps, so that Redis serves the fleet in between.
        removed, pruned = 0, _CLEAR_STEP
        while pruned == _CLEAR_STEP:
            pruned = self.breaker.call(
                lambda: self._prune(keys=self._keys, args=[_FOREVER, _CLEAR_STEP]))
            removed += pruned
        return removed

    def stamps(self, limit: int) -> list[tuple[bytes, int]]:
        if limit <= 0:
            return []
        found = self.breaker.call(
            lambda: self.client.zrange(self._age, 0, limit - 1, withscores=True))
        return [(cache_id, int(stamp)) for cache_id, stamp in found]

    def __len__(self) -> int:
        return self.breaker.call(lambda: self.client.zcard(self._age))

    @property
    def size(self) -> int:
        return int(self.breaker.call(lambda: self.client.get(self._total)) or 0)

    def close(self) -> None:
        self.client.close()


_CREATE_KEY = """
-- KEYS: the key of this period, the key by name; ARGV: packed key, TTL.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
  return ARGV[1]
end
return redis.call('GET', KEYS[1])
"""


class RedisTicketKeys:
    """Session ticket keys kept on Redis for the whole fleet.

    Time is cut into periods of half the smtpd session timeout; the first
    host to ask in a period makes that period's key (an atomic
    create-if-absent), every host then gets the same one.  Keys are also
    stored by name, for decryption, and live as long as a ticket may.
    """

    blocking = True

    def __init__(self, store: RedisStore, key_prefix: str):
        self.client = store.client
        self.breaker = store.breaker
        self._tag = "{%stickets}" % key_prefix
        self._create = self.client.register_script(_CREATE_KEY)

    def _by_name(self, name: bytes) -> bytes:
        return (self._tag + ":name:").encode() + name

    def current(self, period: int, now: int, make_key) -> bytes:
        """The packed key of the period that contains now; make_key(expires)
        gives a new packed key should this host be the first to ask."""
        # A key issues tickets until the last second of its period: in that
        # second, the next period's key is the current one.
        index = (now + 1) // period
        candidate = make_key((index + 1) * period - 1)
        keys = [("%s:period:%d" % (self._tag, index)).encode(),
                self._by_name(candidate[:16])]
        # A key decrypts for one period after its own: keep it for three.
        return self.breaker.call(
            lambda: self._create(keys=keys, args=[candidate, 3 * period]))

    def find(self, name: bytes) -> bytes | None:
        return self.breaker.call(lambda: self.client.get(self._by_name(name)))


def _entry(value: bytes) -> Entry:
    return Entry(_STAMP.unpack_from(value)[0], value[_STAMP.size:])


def _safe(url: str) -> str:
    """The URL without its password, for log lines."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(":" + parts.password + "@", ":*@")
        return parts._replace(netloc=netloc).geturl()
    return url
