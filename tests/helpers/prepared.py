"""What is slow to make and needed late: begun when the run starts.

The Debian roots and packages (debian_roots.py, debian_package.py) take
minutes to make the first time, most of it waiting on Debian's mirror and
on builds in other processes.  When a run selects tests that need them,
conftest.py begins making them in two threads as soon as the tests are
collected, so that this overlaps the tests that need none of them; a test
that needs one waits for it with ``ready()``.  What was not begun (a test
run alone) is made then, in the test, as before.  A failure is raised in
the test that waits, where it would have been raised without this.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

# Each waits at most this long: every command in making one is bounded
# (BUILD_TIMEOUT), and these are the few commands making one takes.
WAIT = 3600

_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="prepared")
_begun: dict[str, Future[Any]] = {}


def begin(name: str, make: Callable[[], Any]) -> None:
    if name not in _begun:
        _begun[name] = _pool.submit(make)


def ready(name: str, make: Callable[[], Any]) -> Any:
    """What make() made, begun now if it was not."""
    begin(name, make)
    return _begun[name].result(WAIT)


def stop() -> None:
    """At the end of the run: what was begun and not yet started is not."""
    _pool.shutdown(wait=False, cancel_futures=True)
