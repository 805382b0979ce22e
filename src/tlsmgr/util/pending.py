"""Answers that may come later: a value now, or a Later of it.

A store on the network (stores/redis.py) answers when Redis has: its
methods return a Later.  A local store answers at once, with the value
itself.  The session cache, the ticket keys and the request handlers are
written once for both: each step that uses a store's answer is given to
then(), which runs it at once on a value, or as soon as the Later is
settled.

A Later is not an asyncio Future.  Everything here runs on the event
loop's one thread, so a Later runs its callbacks the moment it is
settled, not on a later turn of the loop: an answer from Redis goes
through the store, the cache and the handler to its connection in one
call, without a turn of the loop, a task or a thread for each step.
(asyncio's futures cost a call_soon() and a turn for each, which was
most of a request's time.)  Code that awaits, as the metrics do, awaits a
Later as it would a future.

Hazard: a callback runs inside whatever settles the Later (RedisLink's
reading of a pipeline's answers, say), so it must not assume it runs on
a turn of its own; and an error it raises is logged, not passed on, so
that the other callbacks, and the other answers, still run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator
from typing import Any, Generic, TypeAlias, TypeVar, overload

from . import log

T = TypeVar("T")
U = TypeVar("U")

_UNSETTLED: Any = object()


class Later(Generic[T]):
    """A value or an error to come, on the loop's thread."""

    __slots__ = ("_callbacks", "_error", "_value")

    def __init__(self) -> None:
        self._value: T = _UNSETTLED
        self._error: Exception | None = None
        self._callbacks: list[Callable[[Later[T]], None]] = []

    def done(self) -> bool:
        return self._value is not _UNSETTLED or self._error is not None

    def error(self) -> Exception | None:
        """The error it was settled with, if any (settled, it must be)."""
        return self._error

    def result(self) -> T:
        """Its value; raises its error (settled, it must be)."""
        if self._error is not None:
            raise self._error
        return self._value

    def settle(self, value: T) -> None:
        if not self.done():
            self._value = value
            self._run_callbacks()

    def fail(self, error: Exception) -> None:
        if not self.done():
            self._error = error
            self._run_callbacks()

    def on_done(self, callback: Callable[[Later[T]], None]) -> None:
        """callback(self) once settled: now, if it is."""
        if self.done():
            _call(callback, self)
        else:
            self._callbacks.append(callback)

    def _run_callbacks(self) -> None:
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            _call(callback, self)

    def __await__(self) -> Generator[Any, None, T]:
        if not self.done():
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.on_done(lambda _: _wake(waiter))
            yield from waiter.__await__()
        return self.result()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _call(callback: Callable[[Later[T]], None], later: Later[T]) -> None:
    try:
        callback(later)
    except Exception as err:          # a bug: one line, and the others go on
        log.error("unexpected %s in a callback of an answer from the network: %s",
                  type(err).__name__, err)


# What a store or a handler returns: the answer, or the Later one.
MaybeLater: TypeAlias = "T | Later[T]"


def settled(value: T) -> Later[T]:
    """A Later already settled with value."""
    later: Later[T] = Later()
    later.settle(value)
    return later


@overload
def then(result: Later[T], on_value: Callable[[T], MaybeLater[U]],
         on_error: Callable[[Exception], MaybeLater[U]] | None = None,
         errors: tuple[type[Exception], ...] = ()) -> MaybeLater[U]: ...


@overload
def then(result: T, on_value: Callable[[T], MaybeLater[U]],
         on_error: Callable[[Exception], MaybeLater[U]] | None = None,
         errors: tuple[type[Exception], ...] = ()) -> MaybeLater[U]: ...


def then(result: Any, on_value: Callable[[Any], MaybeLater[U]],
         on_error: Callable[[Exception], MaybeLater[U]] | None = None,
         errors: tuple[type[Exception], ...] = ()) -> MaybeLater[U]:
    """on_value(the answer), at once or when it comes.  When the Later
    fails with one of ``errors``, on_error(the error) instead; any other
    error is the outcome.  (An error of a value at hand was raised by the
    call that gave it: the caller catches it there.)"""
    if not isinstance(result, Later):
        return on_value(result)
    outcome: Later[U] = Later()

    def settle(done: Later[Any]) -> None:
        error = done.error()
        if error is None:
            _follow(outcome, on_value, done.result())
        elif on_error is not None and isinstance(error, errors):
            _follow(outcome, on_error, error)
        else:
            outcome.fail(error)

    result.on_done(settle)
    return outcome


def recover(result: MaybeLater[T], on_error: Callable[[Exception], MaybeLater[T]],
            errors: tuple[type[Exception], ...]) -> MaybeLater[T]:
    """The answer, or when the Later fails with one of ``errors``,
    on_error(the error)."""
    return then(result, _same, on_error, errors)


def _same(value: T) -> T:
    return value


def _follow(outcome: Later[U], step: Callable[[T], MaybeLater[U]], argument: T) -> None:
    """outcome is what step(argument) gives, now or later."""
    try:
        result = step(argument)
    except Exception as err:
        outcome.fail(err)
        return
    if isinstance(result, Later):
        result.on_done(lambda done: _copy(done, outcome))
    else:
        outcome.settle(result)


def _copy(done: Later[U], outcome: Later[U]) -> None:
    error = done.error()
    if error is not None:
        outcome.fail(error)
    else:
        outcome.settle(done.result())


def gather(results: list[MaybeLater[T]]) -> MaybeLater[list[T]]:
    """The answers of several, at once if all are at hand; the first error
    of any, if one fails."""
    waiting = [result for result in results if isinstance(result, Later)]
    if not waiting:
        return results                              # type: ignore[return-value]
    together: Later[list[T]] = Later()
    left = [len(waiting)]

    def one_done(done: Later[T]) -> None:
        error = done.error()
        if error is not None:
            together.fail(error)
            return
        left[0] -= 1
        if left[0] == 0:
            together.settle([result.result() if isinstance(result, Later) else result
                             for result in results])

    for result in waiting:
        result.on_done(one_done)
    return together
