"""Answers that may come later: a value now, or a future of it.

A store on the network (stores/redis.py) answers on the event loop, when
Redis has: its methods return an asyncio Future.  A local store answers at
once, with the value itself.  The session cache, the ticket keys and the
request handlers are written once for both: each step that uses a store's
answer is given to then(), which runs it at once on a value, or when the
future is done, on the loop, with no thread and no task.

A local request thus costs one isinstance() more than if no store could
answer later; a request on Redis costs a callback for each step, and its
connection waits for the last (connection.py) while the others go on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar, Union, cast, overload

T = TypeVar("T")
U = TypeVar("U")

# What a store or a handler returns: the answer, or the future one.
Later = asyncio.Future
MaybeLater = Union[T, "asyncio.Future[T]"]


def is_later(result: object) -> bool:
    return isinstance(result, asyncio.Future)


@overload
def then(result: asyncio.Future[T], on_value: Callable[[T], MaybeLater[U]],
         on_error: Callable[[Exception], MaybeLater[U]] | None = None,
         errors: tuple[type[Exception], ...] = ()) -> MaybeLater[U]: ...


@overload
def then(result: T, on_value: Callable[[T], MaybeLater[U]],
         on_error: Callable[[Exception], MaybeLater[U]] | None = None,
         errors: tuple[type[Exception], ...] = ()) -> MaybeLater[U]: ...


def then(result: Any, on_value: Callable[[Any], MaybeLater[U]],
         on_error: Callable[[Exception], MaybeLater[U]] | None = None,
         errors: tuple[type[Exception], ...] = ()) -> MaybeLater[U]:
    """on_value(the answer), at once or when it comes.  When the future
    fails with one of ``errors``, on_error(the error) instead; any other
    error is the outcome.  (An error of a value at hand was raised by the
    call that gave it: the caller catches it there.)"""
    if not isinstance(result, asyncio.Future):
        return on_value(result)
    outcome: asyncio.Future[U] = result.get_loop().create_future()

    def settle(done: asyncio.Future[Any]) -> None:
        if outcome.done():                # cancelled meanwhile
            return
        if done.cancelled():
            outcome.cancel()
            return
        error = done.exception()
        if error is None:
            _follow(outcome, on_value, done.result())
        elif on_error is not None and isinstance(error, errors):
            _follow(outcome, on_error, error)
        else:
            outcome.set_exception(error)

    result.add_done_callback(settle)
    return outcome


def recover(result: MaybeLater[T], on_error: Callable[[Exception], MaybeLater[T]],
            errors: tuple[type[Exception], ...]) -> MaybeLater[T]:
    """The answer, or when the future fails with one of ``errors``,
    on_error(the error)."""
    return then(result, _same, on_error, errors)


def _same(value: T) -> T:
    return value


def _follow(outcome: asyncio.Future[U], step: Callable[[T], MaybeLater[U]],
            argument: T) -> None:
    """outcome is what step(argument) gives, now or later."""
    try:
        result = step(argument)
    except Exception as err:
        outcome.set_exception(err)
        return
    if isinstance(result, asyncio.Future):
        result.add_done_callback(lambda done: _copy(done, outcome))
    else:
        outcome.set_result(result)


def _copy(done: asyncio.Future[U], outcome: asyncio.Future[U]) -> None:
    if outcome.done():
        return
    if done.cancelled():
        outcome.cancel()
    elif (error := done.exception()) is not None:
        outcome.set_exception(error)
    else:
        outcome.set_result(done.result())


def gather(results: list[MaybeLater[T]]) -> MaybeLater[list[T]]:
    """The answers of several, at once if all are at hand."""
    futures = [result for result in results if isinstance(result, asyncio.Future)]
    if not futures:
        return cast("list[T]", results)
    return then(asyncio.gather(*futures), lambda _: [
        result.result() if isinstance(result, asyncio.Future) else result
        for result in results])
