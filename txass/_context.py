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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from txass.errors import NoCurrentRequest

if TYPE_CHECKING:
    from txass._broker import Broker


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
    @ivar redelivered: Whether the broker delivered this message before, to
        this or another consumer, without it being acknowledged.
    @ivar broker: The L{Broker} the message arrived on, for calling other
        services.
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
