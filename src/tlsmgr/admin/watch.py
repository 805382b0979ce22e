"""``tlsmgr-ctl stats --watch``: the daemon's counters as rates, refreshed.

Every interval the stats request is sent again, and what each counter
gained since the last one is shown per second, like top(1) or
varnishstat(1).  On a terminal the figures are redrawn in place, on the
alternate screen with the cursor hidden, and the terminal is given back as
it was however the command ends (Ctrl-C, SIGTERM, SIGHUP, the daemon gone,
an error).  When the output is not a terminal, one plain line per interval
is printed, for logs and scripts.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import TextIO

from ..observe.snapshot import Health, Snapshot

# Terminal control (xterm, and what every terminal emulator follows).
_ENTER = "\x1b[?1049h\x1b[?25l"     # the alternate screen; hide the cursor
_LEAVE = "\x1b[?25h\x1b[?1049l"     # show the cursor; back to the main screen
_HOME = "\x1b[H\x1b[2J"             # the top left, the screen cleared

# What ends a watch: Ctrl-C, kill(1), a hang-up.  SIGINT too is set here:
# a shell's background job inherits it ignored, and Python leaves it so.
_ENDING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def counters(stats: Snapshot) -> dict[str, float]:
    """The counters of a stats snapshot, by a flat name."""
    found: dict[str, float] = {}
    for name, count in stats.requests.items():
        found["requests." + name] = count
    for kind, count in stats.errors.items():
        found["errors." + kind] = count
    for label, cache in stats.caches.items():
        for key, count in (("hits", cache.hits), ("misses", cache.misses),
                           ("updates", cache.updates), ("deletes", cache.deletes),
                           ("expired", cache.expired), ("evicted", cache.evicted),
                           ("unopened", cache.unopened)):
            found["%s.%s" % (label, key)] = count
        if cache.redis is not None:
            found["%s.redis_failures" % label] = cache.redis.failures
    for outcome, count in stats.ticket_keys.lookups.items():
        found["tktkey." + outcome] = count
    found["connections.accepted"] = stats.connections.total
    return found


def rates(before: dict[str, float], after: dict[str, float],
          seconds: float) -> dict[str, float]:
    """Per second, what each counter gained (new counters from zero)."""
    return {name: (value - before.get(name, 0)) / seconds
            for name, value in sorted(after.items()) if seconds > 0}


def screen(stats: Snapshot, per_second: dict[str, float], interval: float) -> str:
    """One refresh on a terminal: the state, then the rates that moved."""
    lines = ["tlsmgr: up %d s, %d connections open; every %g s (Ctrl-C to stop)"
             % (stats.uptime, stats.connections.now, interval), ""]
    for label, cache in stats.caches.items():
        text = "%-6s %8d entries %10d bytes  hit ratio %.2f" % (
            label, cache.entries, cache.bytes, cache.hit_ratio)
        if cache.redis is not None:
            text += "  redis " + redis_state(cache.redis)
        lines.append(text)
    lines.append("")
    lines.append("%-28s %12s" % ("per second", ""))
    for name, rate in per_second.items():
        if rate:
            lines.append("%-28s %12.1f" % (name, rate))
    return "\n".join(lines) + "\n"


def redis_state(health: Health) -> str:
    if not health.paused:
        return "reachable (%s)" % health.endpoint
    return "PAUSED since %s: %s" % (
        time.strftime("%H:%M:%S", time.localtime(health.paused_since)), health.last_error)


def plain_line(per_second: dict[str, float]) -> str:
    moved = " ".join("%s=%.1f" % item for item in per_second.items() if item[1])
    return "%s %s" % (time.strftime("%Y-%m-%dT%H:%M:%S"), moved or "idle")


def snapshots(fetch: Callable[[], Snapshot], interval: float,
              sleep: Callable[[float], None] = time.sleep) -> Iterator[
                  tuple[Snapshot, dict[str, float]]]:
    """(stats, rates) every interval, the first after one interval."""
    last, last_at = counters(fetch()), time.monotonic()
    while True:
        sleep(interval)
        stats = fetch()
        now = time.monotonic()
        current = counters(stats)
        yield stats, rates(last, current, now - last_at)
        last, last_at = current, now


def _written(out: TextIO, text: str) -> bool:
    """Whether text reached out.  Not when the terminal hung up (EIO) or
    the reader of a pipe went (EPIPE): the watch is then over, and what is
    still buffered goes to /dev/null, or Python's own flush at exit would
    fail on it again (exit status 120, and a message on stderr)."""
    try:
        out.write(text)
        out.flush()
        return True
    except OSError:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, out.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass                        # no descriptor (a StringIO): nothing at exit either
        return False


def watch(fetch: Callable[[], Snapshot], interval: float, count: int | None = None,
          out: TextIO = sys.stdout) -> int:
    """Show the rates until Ctrl-C, SIGTERM or SIGHUP (or count refreshes);
    exit status 0."""
    on_terminal = out.isatty()
    # Each ends the watch as Ctrl-C does, through the finally below,
    # which gives the terminal back.
    previous = {signum: signal.signal(signum, signal.default_int_handler)
                for signum in _ENDING}
    try:
        if on_terminal and not _written(out, _ENTER):
            return 0
        for number, (stats, per_second) in enumerate(snapshots(fetch, interval), 1):
            shown = (_HOME + screen(stats, per_second, interval) if on_terminal
                     else plain_line(per_second) + "\n")
            if not _written(out, shown) or (count is not None and number >= count):
                break
    except KeyboardInterrupt:
        pass
    finally:
        if on_terminal:
            _written(out, _LEAVE)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0
