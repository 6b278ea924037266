"""
Small helpers shared by the other modules: asynchronous waits, and a
logger for message events.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from twisted.internet import defer
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

T = TypeVar("T")


def when_done(source: defer.Deferred[Any]) -> defer.Deferred[None]:
    """
    Return a new Deferred that fires with L{None} once C{source} has fired,
    whatever its result; C{source} keeps its result for other callbacks.
    """
    done: defer.Deferred[None] = defer.Deferred()

    def fire(result: object) -> object:
        done.callback(None)
        return result

    source.addBoth(fire)
    return done


async def wait_at_most(d: defer.Deferred[Any], seconds: float, reactor: Any) -> bool:
    """
    Wait until C{d} fires or C{seconds} pass, without cancelling C{d}.

    @return: Whether C{d} fired in time.
    """
    done = when_done(d)
    if done.called:
        return True
    timer: defer.Deferred[None] = defer.Deferred()
    call = reactor.callLater(seconds, timer.callback, None)
    await defer.DeferredList([done, timer], fireOnOneCallback=True, consumeErrors=True)
    if call.active():
        call.cancel()
        return True
    return done.called


class SharedResult(Generic[T]):
    """
    Compute a value with an async function once, sharing the one run with
    every caller that asks while it runs.

    After a failure the next call runs the function again, and L{reset}
    drops a value that went stale (such as a closed channel).
    """

    def __init__(self, function: Callable[[], Awaitable[T]]) -> None:
        self._function = function
        self._has_value = False
        self._value: T | None = None
        self._waiters: list[defer.Deferred[T]] | None = None

    def reset(self) -> None:
        self._has_value = False
        self._value = None

    def current(self) -> T | None:
        """
        Return the value if one was computed, without computing it.
        """
        return self._value if self._has_value else None

    async def get(self) -> T:
        if self._has_value:
            return self._value  # type: ignore[return-value]
        waiter: defer.Deferred[T] = defer.Deferred()
        if self._waiters is None:
            # Callers resume in the order they asked, the first one first.
            self._waiters = [waiter]
            defer.Deferred.fromCoroutine(self._compute())
        else:
            self._waiters.append(waiter)
        return await waiter

    async def _compute(self) -> None:
        try:
            value = await self._function()
        except BaseException:
            failure = Failure()
            waiters, self._waiters = self._waiters or [], None
            for waiter in waiters:
                waiter.errback(failure)
            return
        self._value, self._has_value = value, True
        waiters, self._waiters = self._waiters or [], None
        for waiter in waiters:
            waiter.callback(value)


# Control characters, including the C1 range and the line and paragraph
# separators, which would let a message property forge a log line or
# reach a terminal as an escape sequence.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escaped(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


class MessageLogger(Logger):
    """
    A logger for events about messages: the string values of fields whose
    names end in C{_id}, such as the C{message_id} and C{correlation_id}
    that a publisher chose, have their control characters escaped.
    """

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: object) -> None:
        for name, value in kwargs.items():
            if name.endswith("_id") and isinstance(value, str) and _CONTROL.search(value):
                kwargs[name] = _CONTROL.sub(_escaped, value)
        super().emit(level, format, **kwargs)
