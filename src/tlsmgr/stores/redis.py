"""The Redis store: one session cache shared by a fleet of mail hosts.

``smtpd_tls_session_cache_database = redis:URL``  puts a cache on Redis,
where URL is one of

* ``redis://[[user][:password]@]host:port/db``, ``rediss://...`` (TLS),
  ``unix:///path/redis.sock?db=0``: one Redis server;
* ``redis+sentinel://[[user][:password]@]host:port[,host:port...]/service[/db]``:
  the master of a Sentinel service, found through any of these sentinels;
* ``redis+cluster://[[user][:password]@]host:port[,host:port...]``: a Redis
  Cluster, found through any of these nodes.

A user name and a password may also be main.cf's (RedisLink); the URL is
shown only without its password (redis_url.py).

Every host of a fleet that names the same Redis and the same
``tlsmgr_redis_key_prefix`` sees the same sessions; other fleets pick other
prefixes.

Keys of one cache share a hash tag, ``{PREFIX<label>}``, so that they live
in one slot of a Redis Cluster and the Lua scripts below may touch them
together.  Per cache:

* ``{P<label>}:s:<id>``  the entry (timestamp + session), with a TTL of
  the cache timeout: Redis itself expires it;
* ``{P<label>}:age``     the ids by save time (a sorted set), for eviction;
* ``{P<label>}:sizes``   the bytes each id holds, and ``{P<label>}:bytes``
  their sum, for the byte limit;
* ``{P<label>}:hosts``   for the smtpd cache, each host's smtpd service
  names (service/service_names.py).

Saving an entry and keeping the cache within its limits is one script, so
that hosts writing at once never overshoot together.

Redis may be down, slow, failing over or full.  Hazards, and what is done
about them:

* redis-py's defaults retry with backoff and wait seconds to connect
  (sentinels and cluster nodes too): here every socket, the sentinels'
  included, waits at most ``tlsmgr_redis_timeout_ms`` to connect and as
  long for an answer, and nothing is retried by the library.  (The server
  bounds the whole request on top of that: server.py.)
* The client is made on first use, not at start: a Cluster client connects
  to learn the slots, and must not stop the daemon when no node answers.
* Only a failure to reach Redis (refused, reset, timed out, no master,
  cluster down) opens the breaker, which then fails every call at once
  while a probe asks Redis every second whether it is back.  A command
  that Redis refuses (a full Redis's OOM, READONLY, NOAUTH, WRONGPASS) is
  an error of its own, reported as what it is; reads go on.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time
from collections.abc import Callable
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import redis
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..observe.histogram import Histogram
from ..observe.snapshot import Health
from ..util import log
from ..util.pending import Later, MaybeLater, gather, then
from . import EVICTIONS_PER_SAVE, STAMP, CannotOpen, Entry, Limits, Store, StoreError, Trimmed
from .redis_url import Credentials, redact_url, split_credentials
from .seal import NotOpened, Seal

_CLEAR_STEP = 64           # entries removed per script call by clear(): ~0.5 ms of Redis

PROBE_INTERVAL = 1.0       # seconds between probes of a Redis that failed
_CLUSTER_READS = 0.8       # of tlsmgr_redis_timeout_ms: a Cluster node's reply
_ERROR_TEXT = 160          # characters of a Redis error kept for a log line
# The oldest redis-py these stores work with: Debian 12's 4.3 fails them
# (its asyncio pools and errors differ; tests/test_debian_package.py).
REDIS_PY_FLOOR = (5, 0)


class RedisSettings(NamedTuple):
    """What main.cf says about Redis, besides each table's URL."""

    key_prefix: str = "tlsmgr:"
    password: str = ""             # tlsmgr_redis_password: when the URL has none
    timeout_ms: int = 250
    # With tlsmgr_fleet_secret_file, what is written is sealed and what is
    # read must open (seal.py); without, both are as they are.
    seal: Seal | None = None
    username: str = ""             # tlsmgr_redis_username: when the URL has none
    file_password: str = ""        # tlsmgr_redis_password_file's: in place of any other


def seal_for(seal: Seal | None, value: bytes, place: bytes) -> bytes:
    """A value to write at a place (its Redis key name)."""
    return value if seal is None else seal.seal(value, place)


def open_from(seal: Seal | None, value: bytes, place: bytes, what: str) -> bytes:
    """A value read from a place; raises CannotOpen when its seal does not."""
    if seal is None:
        return value
    try:
        return seal.open(value, place)
    except NotOpened as err:
        raise CannotOpen("%s in Redis %s %s" % (what, printable_key(place), err)) from None


def printable_key(key: bytes) -> str:
    return key.decode("ascii", "backslashreplace")[:120]


class Unreachable(StoreError):
    """Redis could not be reached: refused, reset, timed out, no master."""


class Refused(StoreError):
    """Redis answered, and refused the command (full, read-only, auth)."""


def _is_refused_login(err: Exception) -> bool:
    """Whether Redis refused the user name or password.  redis-py's
    Cluster client wraps that in an exception of its own."""
    refusals = (redis.AuthenticationError, redis.exceptions.AuthorizationError)
    return isinstance(err, refusals) or isinstance(err.__cause__, refusals)


def _is_unreachable(err: Exception) -> bool:
    """Whether an error means that Redis could not be reached, as opposed
    to Redis refusing what it was asked.  redis-py counts failed
    authentication as a connection error; here it is a refusal."""
    if _is_refused_login(err):
        return False
    return isinstance(err, (redis.ConnectionError, redis.TimeoutError, OSError,
                            redis.exceptions.ClusterDownError,
                            redis.exceptions.RedisClusterException,
                            redis.exceptions.TryAgainError))


def describe_error(err: Exception) -> str:
    """One short line, naming the error: redis-py's messages may hold dumps
    of its objects, and it drops Redis's own error code (OOM, READONLY)
    for an exception class."""
    lines = str(err).strip().splitlines()
    # "No master found for 'x' : {(host, port): {...}, ...}", and where in
    # a script a refused command was.
    text = (lines[0] if lines else "").split(" : {", 1)[0].split(". script: ", 1)[0]
    text = "%s: %s" % (type(err).__name__, text) if text else type(err).__name__
    if len(text) > _ERROR_TEXT:
        text = text[:_ERROR_TEXT - 3] + "..."
    return text


class Endpoint(NamedTuple):
    """Where a redis: table's URL points."""

    kind: str                              # "server", "sentinel" or "cluster"
    url: str                               # the URL as given
    address: str                           # the URL without its credentials
    nodes: tuple[tuple[str, int], ...]     # sentinels or cluster seed nodes
    service: str                           # Sentinel's service name
    db: int
    credentials: Credentials               # from the URL, if any

    @property
    def name(self) -> str:
        """The URL without its secrets, for log lines, stats and metrics."""
        return redact_url(self.url)

    def hosts(self) -> list[str]:
        """The host names to resolve before the chroot jail."""
        if self.kind == "server":
            host = urlsplit(self.address).hostname
            return [host] if host and not self.address.startswith("unix:") else []
        return [host for host, _ in self.nodes]


def parse_url(url: str) -> Endpoint:
    """The Endpoint of a redis: table; StoreError naming what is wrong."""
    address, credentials = split_credentials(url)
    try:
        parts = urlsplit(address)
        if parts.scheme in ("redis+sentinel", "redis+cluster"):
            default_port = 26379 if parts.scheme == "redis+sentinel" else 6379
            nodes = []
            for node in parts.netloc.split(","):
                host, _, port = node.rpartition(":") if ":" in node else (node, "", "")
                if not host:
                    raise ValueError("no host in %r" % node)
                nodes.append((host.strip("[]"), int(port or default_port)))
            path = [p for p in parts.path.split("/") if p]
            if parts.scheme == "redis+cluster":
                return Endpoint("cluster", url, address, tuple(nodes), "", 0, credentials)
            if not path:
                raise ValueError("no service name after the sentinel addresses")
            db = int(path[1]) if len(path) > 1 else 0
            return Endpoint("sentinel", url, address, tuple(nodes), path[0], db, credentials)
        redis.connection.parse_url(address)      # refuses what redis-py would
        return Endpoint("server", url, address, (), "", 0, credentials)
    except ValueError as err:
        raise StoreError("bad Redis URL %s: %s" % (redact_url(url), err)) from None


class RedisLink:
    """The asyncio client of one endpoint, and the pipeline that carries
    every command to it.

    Commands are sent on the event loop.  Those issued in one turn of the
    loop (by every connection waiting on Redis, the ticket keys, cleanup)
    go together, as one pipeline: one write and one read, however many
    clients asked.  One pipeline is in flight at a time; what is issued
    meanwhile goes in the next, as soon as it is answered.  So 64 waiting
    smtpd processes cost Redis a round trip or two, not 64, and the link
    holds one connection (per Cluster node).

    Each pipeline, its connect included, is bounded by the timeout
    (tlsmgr_redis_timeout_ms), and nothing is retried by the library: what
    to do after a failure is the breaker's business.  The client is made
    on first use, in the loop, and kept: after a fail-over a Sentinel
    client asks the sentinels again, and a Cluster client refreshes its
    topology from the nodes it learned, not only from the URL's."""

    def __init__(self, endpoint: Endpoint, settings: RedisSettings):
        self.endpoint = endpoint
        self.timeout = settings.timeout_ms / 1000
        # Each pipeline is bounded as a whole (_exchange()); a timeout for
        # each read besides would cost a timer a reply.  But a Cluster
        # client looks for a new topology only after a timeout of its own,
        # not when the bound cancels it: its reads time out a little
        # sooner, so that it does, and a hung master is left for its
        # replica.  Connecting has a timeout of its own too.
        read_timeout = _CLUSTER_READS * self.timeout if endpoint.kind == "cluster" else None
        self._options: dict[str, Any] = dict(
            socket_timeout=read_timeout, socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), 0), health_check_interval=0)
        # The URL's user name and password come before main.cf's, which
        # serve every redis: table; the password file's, the one private
        # place for a password, before both.
        username = endpoint.credentials.username or settings.username
        passwords = ((settings.file_password, "the password of tlsmgr_redis_password_file"),
                     (endpoint.credentials.password, "the password in the URL"),
                     (settings.password, "the password of tlsmgr_redis_password"))
        password, whose = next((found for found in passwords if found[0]), ("", "no password"))
        if username:
            self._options["username"] = username
        if password:
            self._options["password"] = password
        # What a refused login was given, which names the problem.
        self._credentials = "as user %s, with %s" % (username or "default", whose)
        self._client: Any = None
        self._waiting: list[_Command] = []           # for the next pipeline
        self._in_flight: asyncio.Task[None] | None = None
        self._scripts: dict[str, str] = {}           # source by SHA1, for NOSCRIPT

    @property
    def name(self) -> str:
        return self.endpoint.name

    def describe(self, err: Exception) -> str:
        """describe_error(), and for a refused login what it was given."""
        text = describe_error(err)
        if _is_refused_login(err):
            text += " (%s)" % self._credentials
        return text

    def where(self) -> str:
        """The endpoint in use, as the client last knew it (no I/O): the
        master a Sentinel named, or the nodes of a Cluster."""
        client = self._client
        if client is None:
            return self.name
        try:
            if self.endpoint.kind == "sentinel":
                master = client.connection_pool.master_address
                if master:
                    return "%s (master %s:%d)" % (self.name, master[0], master[1])
            elif self.endpoint.kind == "cluster":
                return "%s (nodes %s)" % (self.name, ",".join(
                    sorted(node.name for node in client.get_nodes())))
        except Exception:
            pass                     # what the library knows is only for show
        return self.name

    def script(self, source: str) -> str:
        """The SHA1 of a Lua script, which send() may then name in an
        EVALSHA: sent as EVAL once should Redis not know it."""
        sha = hashlib.sha1(source.encode()).hexdigest()
        self._scripts[sha] = source
        return sha

    def send(self, words: tuple[Any, ...], breaker: Breaker | None = None) -> Later[Any]:
        """Redis's answer to a command, when the pipeline it goes in is
        answered: its value, or the error, as redis-py raises it, or as
        the breaker that sent it makes it (Breaker.failed())."""
        answer: Later[Any] = Later()
        self._waiting.append(_Command(words, answer, breaker))
        if len(self._waiting) == 1 and self._in_flight is None:
            # After what else this turn of the loop issues.
            asyncio.get_running_loop().call_soon(self._dispatch)
        return answer

    def _dispatch(self) -> None:
        if self._in_flight is not None or not self._waiting:
            return
        batch, self._waiting = self._waiting, []
        self._in_flight = asyncio.get_running_loop().create_task(self._exchange(batch))
        self._in_flight.add_done_callback(self._answered)

    def _answered(self, _: asyncio.Task[None]) -> None:
        self._in_flight = None
        self._dispatch()

    async def _exchange(self, batch: list[_Command]) -> None:
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout):
                if self._client is None:
                    self._client = self._connect()
                sent = [command.words for command in batch]
                if self.endpoint.kind == "cluster":
                    results = await self._cluster_pipeline(sent)
                else:
                    results = await self._pipeline(sent)
        except Exception as err:          # TimeoutError from the bound, among others
            results = [err] * len(batch)
        took = time.monotonic() - started
        for command, result in zip(batch, results):
            breaker = command.breaker
            if breaker is not None:
                breaker.round_trips.observe(took)
            if isinstance(result, redis.exceptions.NoScriptError) \
                    and command.words[0] == "EVALSHA":
                # Redis restarted, or another node: the script itself,
                # which Redis then keeps for the EVALSHAs after.
                words = ("EVAL", self._scripts[command.words[1]], *command.words[2:])
                self._waiting.append(command._replace(words=words))
            elif isinstance(result, Exception):
                command.answer.fail(result if breaker is None else breaker.failed(result))
            else:
                command.answer.settle(result)

    async def _pipeline(self, words: list[tuple[Any, ...]]) -> list[Any]:
        """The replies to commands sent at once on one connection of the
        pool, as Redis sent them (no reply callbacks), an error reply as
        its exception.  What redis-py's Pipeline does, without what this
        does not need of it, which cost twice as much as the exchange."""
        pool = self._client.connection_pool
        connection = await pool.get_connection()
        try:
            await connection.send_packed_command(connection.pack_commands(words))
            results: list[Any] = []
            for _ in words:
                try:
                    results.append(await connection.read_response())
                except redis.ResponseError as err:
                    results.append(err)
        except BaseException:
            # Cancelled by the bound, or the connection broke: replies may
            # still be on their way, for nobody.
            await connection.disconnect(nowait=True)
            raise
        finally:
            await pool.release(connection)
        return results

    async def _cluster_pipeline(self, words: list[tuple[Any, ...]]) -> list[Any]:
        """The same for a Cluster, each command to the node of its slot."""
        pipe = self._client.pipeline(transaction=False)
        for command in words:
            pipe.execute_command(*command)
        return list(await pipe.execute(raise_on_error=False))

    def _connect(self) -> Any:
        endpoint, options = self.endpoint, self._options
        if endpoint.kind == "cluster":
            from redis.asyncio.cluster import ClusterNode, RedisCluster
            return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in endpoint.nodes],
                                **options)
        if endpoint.kind == "sentinel":
            from redis.asyncio.sentinel import Sentinel
            # The credentials are the master's: sentinels have their own.
            sentinel_options = {k: v for k, v in options.items()
                                if k not in ("username", "password")}
            sentinel = Sentinel(list(endpoint.nodes), sentinel_kwargs=sentinel_options,
                                **options)
            return sentinel.master_for(endpoint.service, db=endpoint.db, **options)
        return redis.asyncio.Redis.from_url(endpoint.address, **options)

    def resolve_hosts(self) -> None:
        """Look the host names up now, before the jail: inside it the
        resolver may lack its files, and loads its modules on first use.
        (This blocks, at start, as the rest of start-up does.)"""
        for host in self.endpoint.hosts():
            try:
                socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
            except OSError:
                pass                     # said when it is used, like any failure

    async def close(self) -> None:
        if self._in_flight is not None:
            self._in_flight.cancel()
        if self._client is not None:
            # aclose() from redis-py 5.0.1; before (Debian 12's 4.3), close().
            closing = getattr(self._client, "aclose", None) or self._client.close
            await closing()


class _Command(NamedTuple):
    words: tuple[Any, ...]
    answer: Later[Any]
    breaker: Breaker | None            # that sent it, if one did


class Breaker:
    """Stops asking a Redis that cannot be reached, so that no request
    waits on it, and notices when it is back.

    A failure to reach Redis opens it: calls then fail at once, and a
    probe (a cheap read of the caller's own keys, so that in a Cluster it
    asks the node that matters) runs on the loop every second until Redis
    answers, which closes it.  A command Redis refuses does not open it."""

    def __init__(self, link: RedisLink, probe: tuple[Any, ...],
                 clock: Callable[[], float] = time.monotonic):
        self.link = link
        self.probe = probe
        self.clock = clock
        self.opened_at: float | None = None        # None: closed, calls go through
        self.paused_since: float | None = None     # the same, in wall time
        self.last_error = ""
        self.failures = 0                          # times it opened
        self.recoveries = 0                        # times a probe closed it
        self.round_trips = Histogram()             # every command through it
        self._probing: asyncio.Task[None] | None = None

    def call(self, *command: Any) -> Later[Any]:
        """Redis's answer to a command, later; raises Unreachable at once
        while the breaker is open.  The Later fails with Unreachable or
        Refused, naming the problem."""
        if self.opened_at is not None:
            raise Unreachable("Redis %s is unreachable (%s); it is probed every second"
                              % (self.link.name, self.last_error))
        return self.link.send(command, self)

    def failed(self, err: Exception) -> StoreError:
        """What a command sent through it failed with, as the caller is
        told; a failure to reach Redis opens it."""
        error = self.link.describe(err)
        text = "Redis %s: %s" % (self.link.name, error)
        if _is_unreachable(err):
            self._open(error)
            return Unreachable(text)
        # Whatever else broke (Redis refusing, the client library), the
        # request is a miss or a failed update, never a crash.
        return Refused(text)

    def _open(self, error: str) -> None:
        self.last_error = error
        if self.opened_at is not None:
            return
        self.opened_at = self.clock()
        self.paused_since = time.time()
        self.failures += 1
        self._probing = asyncio.get_running_loop().create_task(self._probe())

    async def _probe(self) -> None:
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            try:
                await self.link.send(self.probe)
            except Exception as err:
                if _is_unreachable(err):
                    self.last_error = self.link.describe(err)
                    continue
            break
        log.info("Redis %s answers again, after %d seconds", self.link.name,
                 round(self.clock() - (self.opened_at or 0)))
        self.opened_at = self.paused_since = None
        self.recoveries += 1
        self._probing = None

    def health(self) -> Health:
        """Whether Redis is asked now, since when not, and what went wrong
        last (the stats; docs/OPERATIONS.md)."""
        return Health(self.link.where(), self.opened_at is not None,
                      None if self.paused_since is None else round(self.paused_since),
                      self.last_error, self.failures, self.recoveries,
                      self.round_trips.snapshot())


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
local at_most = tonumber(ARGV[9])
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
local function over()
  return (max_entries > 0 and redis.call('ZCARD', age) > max_entries)
      or (max_bytes > 0 and tonumber(redis.call('GET', total) or '0') > max_bytes)
end
while expired + evicted < at_most and over() do
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


class _Script:
    """A Lua script, sent by its SHA1 (RedisLink.send() sends the script
    itself should Redis not know it)."""

    def __init__(self, link: RedisLink, source: str):
        self.sha = link.script(source)

    def __call__(self, breaker: Breaker, keys: list[bytes],
                 args: list[Any]) -> Later[Any]:
        return breaker.call("EVALSHA", self.sha, len(keys), *keys, *args)


class RedisStore(Store):
    """One cache's sessions on Redis, shared with every host of the fleet.
    Every method answers later, on the event loop (pending.py)."""

    remote = True

    def __init__(self, url: str, label: str, settings: RedisSettings, timeout: int):
        have = tuple(int(part) for part in redis.__version__.split(".")[:2] if part.isdigit())
        if have < REDIS_PY_FLOOR:
            raise StoreError("a redis: cache needs redis-py %d.%d or later, and this Python "
                             "has %s (Debian 12's python3-redis): use a file or memory: "
                             "cache, or a newer redis-py" % (*REDIS_PY_FLOOR, redis.__version__))
        self.link = RedisLink(parse_url(url), settings)
        self.link.resolve_hosts()            # stores are opened before the jail
        self.settings = settings
        self.timeout = timeout
        self.tag = tag = "{%s%s}" % (settings.key_prefix, label)   # service_names.py's too
        self._sessions = (tag + ":s:").encode()
        self._keys = [self._sessions] + [(tag + suffix).encode()
                                         for suffix in (":age", ":sizes", ":bytes")]
        self._age, self._sizes, self._total = self._keys[1:]
        self.breaker = Breaker(self.link, ("EXISTS", self._total))
        self._save = _Script(self.link, _SAVE)
        self._remove = _Script(self.link, _REMOVE)
        self._prune = _Script(self.link, _PRUNE)

    def get(self, cache_id: bytes) -> MaybeLater[bytes | None]:
        place = self._sessions + cache_id
        return then(self.breaker.call("GET", place),
                    lambda value: None if value is None else self._open(place, value))

    def _open(self, place: bytes, value: bytes) -> bytes:
        """An entry as read from Redis, packed: unsealed, and checked to be one."""
        value = open_from(self.settings.seal, value, place, "the entry")
        if len(value) < STAMP.size:                  # not one of ours
            raise CannotOpen("the entry in Redis %s is too short for an entry"
                             % printable_key(place))
        return value

    def save(self, cache_id: bytes, packed: bytes, limits: Limits,
             cutoff: int) -> MaybeLater[Trimmed]:
        value = seal_for(self.settings.seal, packed, self._sessions + cache_id)
        (timestamp,) = STAMP.unpack_from(packed)
        size = len(cache_id) + len(packed) - STAMP.size
        # Redis keeps the entry one second past its timeout: an entry is
        # still valid at exactly timestamp + timeout.
        args = [cache_id, value, self.timeout + 1, timestamp, size, cutoff,
                limits.entries, limits.bytes, EVICTIONS_PER_SAVE]
        return then(self._save(self.breaker, self._keys, args),
                    lambda trimmed: Trimmed(*trimmed))

    def delete(self, cache_id: bytes) -> MaybeLater[bool]:
        if not cache_id:
            return False            # the empty id asks _REMOVE for the oldest
        return then(self._remove(self.breaker, self._keys, [cache_id]),
                    lambda found: found is not None)

    def expire(self, cutoff: int, budget: int) -> MaybeLater[tuple[list[Entry], bool]]:
        # Redis expires the sessions; only their index entries are left.
        return then(self._prune(self.breaker, self._keys, [cutoff, budget]),
                    lambda pruned: (list[Entry](), pruned < budget))

    def clear(self) -> Later[int]:
        # In steps of half a millisecond of Redis's time, so that it serves
        # the fleet in between; only what was saved before the flush began,
        # so that it ends however fast the fleet saves.  Each step is begun
        # by the answer to the one before, not chained with then(): a chain
        # a step long would settle recursively, as deep as the steps
        # (thousands for a million entries).
        cutoff = int(time.time()) + 1
        cleared: Later[int] = Later()
        removed = 0

        def step() -> None:
            self._prune(self.breaker, self._keys, [cutoff, _CLEAR_STEP]).on_done(stepped)

        def stepped(pruned: Later[int]) -> None:
            nonlocal removed
            error = pruned.error()
            if error is not None:
                cleared.fail(error)
                return
            removed += pruned.result()
            if pruned.result() < _CLEAR_STEP:
                cleared.settle(removed)
            else:
                step()
        step()
        return cleared

    def stamps(self, offset: int, limit: int) -> MaybeLater[list[tuple[bytes, int]]]:
        if limit <= 0:
            return []
        return then(self.breaker.call("ZRANGE", self._age, offset, offset + limit - 1,
                                      "WITHSCORES"),
                    lambda found: [(cache_id, int(float(stamp)))
                                   for cache_id, stamp in pairs(found)])

    def counts(self) -> MaybeLater[tuple[int, int]]:
        both = gather([self.breaker.call("ZCARD", self._age),
                       self.breaker.call("GET", self._total)])
        return then(both, lambda both: (int(both[0]), int(both[1] or 0)))

    def health(self) -> Health:
        return self.breaker.health()

    def close(self) -> Later[None]:
        closed: Later[None] = Later()
        asyncio.get_running_loop().create_task(self.link.close()).add_done_callback(
            lambda _: closed.settle(None))
        return closed


def pairs(flat: list[Any] | dict[Any, Any]) -> list[tuple[Any, Any]]:
    """[a, 1, b, 2] as [(a, 1), (b, 2)]: a WITHSCORES or HGETALL reply, as
    sent (RESP3 sends the one as pairs, the other as a map)."""
    if isinstance(flat, dict):
        return list(flat.items())
    if flat and isinstance(flat[0], (list, tuple)):
        return [(pair[0], pair[1]) for pair in flat]
    return list(zip(flat[::2], flat[1::2]))


_CREATE_KEY = """
-- KEYS: the key of this period, the key by name; ARGV: the packed key (as
-- sealed for the period's place), TTL, the packed key (as sealed for its name's).
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[2])
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

    The keys have a hash tag of their own, so in a Cluster they may be on
    another node than the sessions: they have a breaker of their own.
    Answers come later, on the event loop (pending.py).
    """

    def __init__(self, store: RedisStore):
        self.link = store.link
        self._seal = store.settings.seal
        self._tag = "{%stickets}" % store.settings.key_prefix
        self._create = _Script(self.link, _CREATE_KEY)
        self.breaker = Breaker(self.link, ("EXISTS", (self._tag + ":probe").encode()))

    def _by_name(self, name: bytes) -> bytes:
        return (self._tag + ":name:").encode() + name

    def current(self, period: int, now: int,
                make_key: Callable[[int], bytes]) -> MaybeLater[bytes]:
        """The packed key of the period that contains now; make_key(expires)
        gives a new packed key should this host be the first to ask."""
        # A key issues tickets until the last second of its period: in that
        # second, the next period's key is the current one.
        index = (now + 1) // period
        candidate = make_key((index + 1) * period - 1)
        period_key = ("%s:period:%d" % (self._tag, index)).encode()
        name_key = self._by_name(candidate[:16])
        # A key decrypts for one period after its own: keep it for three.
        args = [seal_for(self._seal, candidate, period_key), 3 * period,
                seal_for(self._seal, candidate, name_key)]

        def made_elsewhere(err: Exception) -> MaybeLater[Any]:
            # A full Redis refuses the script (it may write), but still
            # serves the key another host made: this host takes that one.
            def taken(found: Any) -> Any:
                if found is None:
                    raise err
                return found
            return then(self.breaker.call("GET", period_key), taken)

        found = then(self._create(self.breaker, [period_key, name_key], args),
                     lambda found: found, made_elsewhere, errors=(Refused,))
        return then(found, lambda found: open_from(self._seal, bytes(found), period_key,
                                                   "the ticket key"))

    def health(self) -> Health:
        return self.breaker.health()

    def find(self, name: bytes) -> MaybeLater[bytes | None]:
        name_key = self._by_name(name)
        return then(self.breaker.call("GET", name_key),
                    lambda found: None if found is None else open_from(
                        self._seal, bytes(found), name_key, "the ticket key"))
