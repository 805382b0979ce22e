"""Which master.cf service names the fleet's smtpd processes run under.

Postfix's smtpd names a session it saves in the smtpd cache
``<session id in hex>&s=<service>&l=<OpenSSL version number>``, where
<service> is the master.cf service name it runs as, exactly as written
there ("smtp", "25", "192.0.2.1:smtp" are three names); from Postfix 3.12
on (HISTORY 20260805) it also puts a digest of that name in the TLS
session id context, which every session ticket carries.  A session made on
one host of a fleet therefore resumes on another only when the other's
smtpd runs under the same service name (and, for the cache, the same
OpenSSL build): a difference is silent, a full handshake each time.

So each host with its smtpd cache on Redis reads its smtpd services from
master.cf at start, says them in the fleet's Redis (a hash beside the
sessions, one field per host, sealed like everything else written there),
and every CHECK_INTERVAL seconds reads the others' and the ids of the
newest sessions.  It warns, once per process for each, about

* a host whose smtpd listens on a port that this host also serves under
  another service name, and
* sessions in the cache whose id ends in a service name and OpenSSL build
  that no smtpd of this host has: this host never looks them up (made by
  a host that differs, or by one that serves other ports, which had better
  have a key prefix of its own).
"""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from ..stores import StoreError
from ..stores.redis import RedisStore, open_from, pairs, printable_key, seal_for
from ..util import log
from ..util.pending import gather, then
from .protocol import printable

CHECK_INTERVAL = 60.0
# A host not heard of for this long has gone (or changed its master.cf):
# its record is dropped.
GONE_AFTER = 10 * CHECK_INTERVAL
SAMPLE = 64                  # newest session ids looked at in each check
_RECORD_BYTES = 4096         # a record read from Redis is untrusted
_SHOWN = 60                  # characters of a name from Redis in a log line
_SUFFIX = b"&s="
_FIX = "give the service one name on every host of the fleet"


class Listener(NamedTuple):
    """An smtpd service of master.cf: its name, and where it listens
    whatever its name (a TCP port, or the name itself for unix and pass
    services, which have no other identity)."""

    name: str
    where: str


# The services whose name ends the cache ids of the sessions they save:
# smtpd's, and postscreen's, whose tlsproxy saves under it (postscreen's
# STARTTLS, postscreen_tls_conf.c).
_NAMED = frozenset({"smtpd", "postscreen"})


def smtpd_listeners(master_cf: str) -> list[Listener]:
    """The services of a master.cf text that save sessions in the smtpd
    cache under their name: smtpd's and postscreen's (comments, blank lines
    and continuation lines as master(8) reads them)."""
    entries: list[str] = []
    for line in master_cf.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace() and entries:
            entries[-1] += " " + line.strip()
        else:
            entries.append(line.strip())
    found = []
    for entry in entries:
        fields = entry.split()
        if len(fields) >= 8 and fields[7].rsplit("/", 1)[-1] in _NAMED:
            found.append(Listener(fields[0], _where(fields[0], fields[1])))
    return found


def _where(name: str, kind: str) -> str:
    if kind != "inet":
        return "%s service %s" % (kind, name)
    port = name.rsplit(":", 1)[-1]
    if not port.isdigit():
        try:
            port = str(socket.getservbyname(port, "tcp"))
        except OSError:
            pass                           # a name /etc/services lacks: as it is
    return "port %s" % port


def read_listeners(config_directory: str) -> list[Listener]:
    """This host's smtpd services; none when master.cf cannot be read (a
    stand-alone daemon has none to say)."""
    try:
        text = (Path(config_directory) / "master.cf").read_text(errors="replace")
    except OSError:
        return []
    return smtpd_listeners(text)


def suffix(name: str, openssl: int) -> bytes:
    """The end of the smtpd cache ids of a service (Postfix tls_server.c)."""
    return b"&s=%s&l=%d" % (name.encode(), openssl)


def host_field(myhostname: str, config_directory: str) -> bytes:
    """This host's field of the hash: its name, and a digest that tells
    apart two hosts (or two instances) that have the same myhostname."""
    try:
        machine = Path("/etc/machine-id").read_bytes().strip()
    except OSError:
        machine = socket.gethostname().encode()
    digest = hashlib.sha256(machine + b"\0" + config_directory.encode()).hexdigest()[:12]
    return ("%s %s" % (myhostname, digest)).encode()


def _shown(text: object) -> str:
    """A text read from Redis, fit for one log line."""
    shown = printable(str(text).encode("ascii", "replace"))
    return shown[:_SHOWN] + ("..." if len(shown) > _SHOWN else "")


class FleetServices:
    """This host's smtpd service names in the fleet's Redis, and the
    warnings about hosts and sessions that cannot resume here."""

    def __init__(self, store: RedisStore, listeners: list[Listener], myhostname: str,
                 field: bytes, openssl: int = ssl.OPENSSL_VERSION_NUMBER,
                 clock: Callable[[], float] = time.time):
        self.store = store
        self.listeners = listeners
        self.myhostname = myhostname
        self.field = field
        self.openssl = openssl
        self.clock = clock
        self.hosts_key = (store.tag + ":hosts").encode()
        self._suffixes = {suffix(listener.name, openssl) for listener in listeners}
        self._said: set[tuple[str, ...]] = set()         # each warning once
        self._unopened = log.RateLimitedWarning()        # a writer of Redis may cause it

    def check(self) -> float:
        """Say this host's services, then look at the others' and at the
        newest sessions; the seconds until the next check."""
        now = self.clock()
        record = json.dumps({"host": self.myhostname, "at": int(now), "openssl": self.openssl,
                             "services": {each.where: each.name for each in self.listeners}})
        place = self.hosts_key + b"\0" + self.field
        breaker = self.store.breaker
        try:
            # One pipeline: what is read is answered after the write.
            answers = gather([
                breaker.call("HSET", self.hosts_key, self.field,
                             seal_for(self.store.settings.seal, record.encode(), place)),
                breaker.call("EXPIRE", self.hosts_key, int(GONE_AFTER)),
                breaker.call("HGETALL", self.hosts_key),
                # ZRANGE counts a negative offset from the newest.
                self.store.stamps(-SAMPLE, SAMPLE)])
        except StoreError:
            return CHECK_INTERVAL            # the store's own warnings say why
        then(answers, lambda found: self._compare(found[2], found[3], now),
             lambda err: None, (StoreError,))
        return CHECK_INTERVAL

    def _compare(self, hosts: Any, newest: list[tuple[bytes, int]], now: float) -> None:
        for field, value in pairs(hosts):
            if bytes(field) != self.field:
                self._compare_host(bytes(field), bytes(value), now)
        self._compare_sessions([cache_id for cache_id, _ in newest])

    def _read(self, field: bytes, value: bytes) -> dict[str, Any] | None:
        place = self.hosts_key + b"\0" + field
        try:
            record = json.loads(open_from(self.store.settings.seal, value[:_RECORD_BYTES],
                                          place, "the record of a host"))
            if not (isinstance(record, dict) and isinstance(record.get("at"), int)
                    and isinstance(record.get("services"), dict)):
                raise ValueError("not a record of this daemon's")
        except StoreError as err:
            self._unopened("smtpd service names of the fleet: %s -- ignored", err)
            return None
        except (ValueError, RecursionError) as err:
            self._unopened("smtpd service names of the fleet: the record of a host in Redis "
                           "%s is not one (%s) -- ignored", printable_key(place), _shown(err))
            return None
        return record

    def _compare_host(self, field: bytes, value: bytes, now: float) -> None:
        record = self._read(field, value)
        if record is None:
            return
        if record["at"] < now - GONE_AFTER:
            try:
                self.store.breaker.call("HDEL", self.hosts_key, field)
            except StoreError:
                pass                      # the next check drops it
            return
        host = _shown(record.get("host"))
        theirs = record["services"]
        for listener in self.listeners:
            other = theirs.get(listener.where)
            if not isinstance(other, str) or other == listener.name:
                continue
            self._say(("host", host, listener.where, other),
                      "fleet host %s serves %s as master.cf service \"%s\", this host as "
                      "\"%s\": TLS sessions never resume between them (the session cache; "
                      "with Postfix 3.12 and later, tickets too); %s",
                      host, listener.where, _shown(other), listener.name, _FIX)

    def _compare_sessions(self, cache_ids: list[bytes]) -> None:
        if not self._suffixes:
            return                        # no smtpd here: nothing it would look up
        foreign = Counter(cache_id[cache_id.find(_SUFFIX):] for cache_id in cache_ids
                          if _SUFFIX in cache_id)
        mine = b", ".join(sorted(self._suffixes)).decode(errors="replace")
        for end, count in sorted(foreign.items()):
            if end in self._suffixes:
                continue
            shown = _shown(end.decode(errors="replace"))
            self._say(("sessions", shown),
                      "smtpd TLS session cache: %d of the newest %d sessions in Redis end "
                      "in \"%s\", which no smtpd here looks up (it uses %s): made by a host "
                      "with another service name or OpenSSL; give all hosts one master.cf "
                      "name and OpenSSL, or another tlsmgr_redis_key_prefix",
                      count, len(cache_ids), shown, _shown(mine))

    def _say(self, what: tuple[str, ...], text: str, *args: object) -> None:
        if what not in self._said:
            self._said.add(what)
            log.warn(text, *args)


def fleet_task(store: RedisStore, config_directory: str,
               myhostname: str) -> list[Callable[[], float | None]]:
    """The check as a housekeeping task of the server; master.cf is read
    now, before the jail."""
    listeners = read_listeners(config_directory)
    services = FleetServices(store, listeners, myhostname,
                             host_field(myhostname, config_directory))
    return [services.check]
