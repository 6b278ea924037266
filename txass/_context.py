"""
The context of the request a handler is serving, or the result a client
callback is receiving.

Each delivery is dispatched in a copy of the current L{contextvars} context
that contains its own L{RequestContext}.  Coroutines started there keep that
copy across every C{await}, so each of many requests in flight at once reads
its own context, whatever the kind of handler.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from twisted.internet import defer, threads

from txass._policy import delay_milliseconds
from txass.errors import NoCurrentRequest, TxassError

if TYPE_CHECKING:
    from txass._broker import Broker


@dataclass(slots=True)
class Disposition:
    """
    The handler's choice for its request in place of a reply.

    @ivar action: C{"resend"}, C{"discard"}, or L{None} for the usual
        reply and acknowledgement.
    @ivar delay: Seconds to wait before a resent request is served again,
        or L{None} for the service's own delay.
    """

    action: str | None = None
    delay: float | None = None


@dataclass(frozen=True, slots=True)
class RequestContext:
    """
    The message a handler is handling, as the handler can read it.

    @ivar service: The name of the service.
    @ivar method: The method the request named.
    @ivar message_id: The AMQP C{message_id} of the message.
    @ivar correlation_id: The AMQP C{correlation_id}.  For a result, it is
        the correlation id of the request.
    @ivar reply_to: Where the reply goes, or L{None} for a cast or a result.
    @ivar headers: The AMQP headers table (empty when absent).
    @ivar meta: The caller's C{meta} dict from the request envelope.
    @ivar redelivered: Whether this request may have been handled before:
        an earlier attempt failed, was resent, or never finished (its
        server crashed or lost its connection).  For a result, whether the
        broker delivered it before without it being acknowledged.
    @ivar broker: The L{Broker} the message arrived on, for calling other
        services.
    @ivar attempt: Which attempt at serving the request this is: 1 the
        first time, 2 after one failed or unfinished attempt, and so on.
    """

    service: str
    method: str
    message_id: str | None
    correlation_id: str | None
    reply_to: str | None
    headers: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    redelivered: bool = False
    broker: Broker | None = None
    attempt: int = 1
    disposition: Disposition | None = field(default=None, repr=False, compare=False)

    def _disposition(self, operation: str) -> Disposition:
        if self.disposition is None:
            raise TxassError(f"{operation}() works only on a request that a server is serving, not on a result")
        return self.disposition

    def resend(self, delay: float | None = None) -> None:
        """
        Put the request back in the queue, to be served again later, instead
        of replying to it.

        Call it from the handler or its C{on_error} hook; the handler's
        result or error is then ignored.  The resent request counts as an
        attempt: once the service's maximum number of attempts is reached,
        it goes to the service's dead-letter queue and the caller gets an
        error reply.

        @param delay: Seconds to wait first, rounded to two significant
            digits; the service's retry delay for the next attempt when not
            given.
        """
        if delay is not None:
            delay_milliseconds(delay)
        disposition = self._disposition("resend")
        disposition.action = "resend"
        disposition.delay = delay

    def discard(self) -> None:
        """
        Acknowledge the request without replying to it.

        Call it from the handler or its C{on_error} hook; the handler's
        result or error is then ignored and the caller gets no reply.
        """
        disposition = self._disposition("discard")
        disposition.action = "discard"
        disposition.delay = None


_current: contextvars.ContextVar[RequestContext] = contextvars.ContextVar("txass_request")


def current_request() -> RequestContext:
    """
    Return the context of the request being served, or of the result being
    received, by the calling handler code.

    It works in the body of a plain method and in coroutines across
    C{await}.  A callback added to a Deferred runs in the context of the
    code that fires it, so read the context before returning a Deferred
    and keep what the callback needs.

    @raise NoCurrentRequest: when called outside handler code.
    """
    try:
        return _current.get()
    except LookupError:
        raise NoCurrentRequest(
            "no current request: current_request() works only inside a handler "
            "method while it serves a request or receives a result"
        ) from None


def run_in_context(request: RequestContext, function: Any, *args: Any) -> Any:
    """
    Call C{function(*args)} in a fresh context in which
    L{current_request} returns C{request}.
    """
    context = contextvars.copy_context()
    context.run(_current.set, request)
    return context.run(function, *args)


T = TypeVar("T")


def in_thread(function: Callable[..., T]) -> Callable[..., defer.Deferred[T]]:
    """
    Decorate a handler method, or a result callback, so that it runs in the
    reactor's thread pool and may block.

    The decorated callable returns a Deferred of the function's result.  It
    runs in a copy of the caller's context, so L{current_request} works in
    the thread, and L{RequestContext.resend} and L{RequestContext.discard}
    may be called there.  The reactor goes on serving other requests
    meanwhile; the pool has 10 threads unless the application resizes it
    with C{reactor.suggestThreadPoolSize}.
    """

    if isinstance(function, (staticmethod, classmethod)):
        raise TypeError(
            f"put @in_thread below @{type(function).__name__}, so that it decorates the function itself"
        )
    if not callable(function):
        raise TypeError(f"@in_thread decorates a function, and {function!r} is not callable")
    if inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function):
        raise TypeError(
            f"@in_thread takes a plain blocking function, not {function!r}: a coroutine function "
            f"does not block, so run it in the reactor thread without @in_thread"
        )
    if inspect.isgeneratorfunction(function):
        raise TypeError(
            f"@in_thread takes a plain blocking function, not the generator function {function!r}: "
            f"its body would run later, outside the thread"
        )

    @functools.wraps(function)
    def run(*arguments: Any, **keywords: Any) -> defer.Deferred[T]:
        from twisted.internet import reactor

        context = contextvars.copy_context()
        pool = reactor.getThreadPool()
        return threads.deferToThreadPool(reactor, pool, context.run, function, *arguments, **keywords)

    return run
