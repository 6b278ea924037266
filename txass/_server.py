"""
The server side of a service: consume a request, dispatch it to the
handler, publish the reply, then acknowledge the request.
"""

from __future__ import annotations

import math
import os
import time
import traceback as traceback_module
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from txass import _envelope
from txass._connection import Delivery, MessageProperties
from txass import _policy
from txass._envelope import JSON, Codec
from txass._context import Disposition, RequestContext, run_in_context
from txass._handler import Dispatcher, call_handler
from txass._policy import Retry
from txass._topology import Topology
from txass._util import MessageLogger, wait_at_most, when_done
from txass.errors import (
    ChannelClosed,
    ConnectionLost,
    EncodingError,
    InvalidRequest,
    MessageTooLarge,
    MethodNotFound,
    PublishFailed,
    RequestDeadLettered,
    RequestTooLarge,
    TxassError,
    UnroutableMessage,
)

if TYPE_CHECKING:
    from txass._broker import Broker

PERSISTENT = 2

# The default maximum size of a request body, in bytes.
DEFAULT_MAX_REQUEST_SIZE = 8 * 1024 * 1024

# The bytes of a content header frame besides the properties: the frame's
# own header and end (8), class, weight and body size (12).
_HEADER_FRAME_OVERHEAD = 20

# Headers the broker sets on a message it dead-letters or redelivers.  A
# copy that txass publishes again leaves them out: the attempts header
# counts instead, and they would only grow.
_BROKER_HEADERS = frozenset(
    {
        "x-death",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
        "x-delivery-count",
    }
)


class ConsumerChannel(Protocol):
    """
    The part of an AMQP channel a server consumes with.
    """

    async def consume(self, queue: str, on_delivery: Any, *, exclusive: bool = False, on_cancelled: Any = None) -> str: ...

    async def cancel(self, consumer_tag: str) -> None: ...

    async def set_prefetch(self, count: int) -> None: ...

    def ack(self, delivery_tag: int) -> None: ...

    def reject(self, delivery_tag: int, *, requeue: bool) -> None: ...

    async def close(self) -> None: ...

    def when_closed(self) -> defer.Deferred[Exception]: ...

    def send(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: MessageProperties,
        *,
        mandatory: bool = False,
    ) -> None: ...


class PublishChannel(Protocol):
    """
    The part of an AMQP channel a server publishes replies with.
    """

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: MessageProperties,
        *,
        mandatory: bool = False,
    ) -> defer.Deferred[None]: ...


# The prefix of the reply destinations of RabbitMQ's direct reply-to.
DIRECT_REPLY_PREFIX = "amq.rabbitmq.reply-to."


def _can_return(reply_to: str) -> bool:
    """
    Return whether a reply to C{reply_to} can be published as mandatory.

    RabbitMQ returns a mandatory message sent to a direct reply-to
    destination as unroutable even when it delivers it, so such replies
    are published without the flag.  The broker drops one whose caller is
    gone.
    """
    return not reply_to.startswith(DIRECT_REPLY_PREFIX)


def new_message_id() -> str:
    """
    Return 128 random bits from the operating system as 32 lowercase hex
    digits: a message or correlation id that no one can guess.
    """
    return os.urandom(16).hex()


class Server:
    """
    One consumer of a service's request queue.

    L{Service.react} starts it.  A request whose handler fails gets an error
    reply, or, with a L{Retry} policy, is served again after a delay; a
    request still failing, or never finished, after C{max_attempts}
    attempts goes to the service's dead-letter queue.  Its lifecycle is C{starting}, C{running},
    C{draining}, C{stopped}: while draining it takes no new request, lets
    the requests in flight finish and be acknowledged, and requeues those
    that do not finish within the grace period.

    @ivar in_flight: The number of requests being served.
    """

    log = MessageLogger()

    def __init__(
        self,
        topology: Topology,
        dispatcher: Dispatcher,
        *,
        broker: Broker | None,
        consumer: ConsumerChannel,
        publisher: Callable[[], Awaitable[PublishChannel]],
        prefetch: int,
        grace: float | None,
        send_tracebacks: bool = False,
        max_request_size: int = DEFAULT_MAX_REQUEST_SIZE,
        codecs: tuple[Codec, ...] = (JSON,),
        retry: Retry | None = None,
        max_attempts: int = _policy.DEFAULT_MAX_ATTEMPTS,
        declare_queue: Callable[[str, bool], Awaitable[None]] | None = None,
        reactor: Any,
    ) -> None:
        self.topology = topology
        self.dispatcher = dispatcher
        self.broker = broker
        self._consumer = consumer
        self._publisher = publisher
        self.prefetch = prefetch
        self.grace = grace
        self.send_tracebacks = send_tracebacks
        self.max_request_size = max_request_size
        self.codecs = codecs
        self.retry = retry
        self.max_attempts = max_attempts
        self._declare_queue = declare_queue
        self._reactor = reactor
        self.state = "starting"
        # The consumers of the service queue and of its queue of
        # unfinished requests.
        self._consumer_tags: list[str] = []
        # Counts the consumer channels this server has had.  A request is
        # known by (generation, delivery tag), because delivery tags start
        # again at 1 on each channel.
        self._generation = 0
        # Whether the broker is resuming this server now.
        self._resuming = False
        self._in_flight: dict[tuple[int, int], defer.Deferred[None]] = {}
        # Requests requeued when the grace period ran out, or left on a
        # channel that closed.  Their handlers may still finish, but must
        # not reply to them or acknowledge them.
        self._abandoned: set[tuple[int, int]] = set()
        self._stopping: defer.Deferred[None] | None = None
        self._stopped: list[defer.Deferred[None]] = []
        # Requests, by message id, whose copy for another attempt is being
        # published; each Deferred fires once the original is settled.
        self._moving: dict[str, defer.Deferred[None]] = {}
        # When each request in flight arrived, in reactor seconds.
        self._received: dict[tuple[int, int], float] = {}

    @property
    def service(self) -> str:
        return self.topology.service

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def start(self) -> None:
        """
        Set the prefetch limit and start consuming the request queue.
        """
        generation = self._generation
        consumer = self._consumer
        consumer.when_closed().addCallback(self._on_channel_closed, generation)
        self._consumer_tags = []
        # RabbitMQ applies a prefetch limit to each consumer started after
        # it.  Unfinished requests are taken one at a time, so a request
        # that kills its server cannot take others of them with it.
        for queue, prefetch in ((self.topology.queue, self.prefetch), (self.topology.unfinished_queue, 1)):
            await consumer.set_prefetch(prefetch)
            tag = await consumer.consume(
                queue,
                lambda delivery: self._on_delivery(delivery, generation, consumer),
                on_cancelled=lambda queue=queue: self._on_cancelled(queue),
            )
            self._consumer_tags.append(tag)
        self.state = "running"
        self.log.info(
            "serving {service} with {handler} (prefetch {prefetch})",
            service=self.service,
            handler=self.dispatcher.description,
            prefetch=self.prefetch,
        )

    @property
    def _resumes(self) -> bool:
        """
        Whether this server consumes again after its channel closed, rather
        than stop.
        """
        return self.broker is not None and self.broker._reconnects

    def _on_cancelled(self, queue: str) -> None:
        if self.state != "running":
            return
        self._consumer_tags = []
        if not self._resumes:
            self.log.error(
                "the broker cancelled the consumer of {service} (was queue {queue!r} deleted?); "
                "this server stops taking requests",
                service=self.service,
                queue=queue,
            )
            self.stop()
            return
        assert self.broker is not None
        self.log.error(
            "the broker cancelled the consumer of {service} (was queue {queue!r} deleted?); "
            "declaring the queue again and resuming",
            service=self.service,
            queue=queue,
        )
        self.broker._forget_declarations(self.topology, None)
        # Closing the channel makes the server resume on a new one.
        defer.Deferred.fromCoroutine(self._consumer.close())

    def _on_channel_closed(self, reason: Exception, generation: int) -> None:
        if generation != self._generation or self.state in ("stopped", "draining", "interrupted"):
            return
        lost = [key for key in self._in_flight if key[0] == generation]
        for key in lost:
            self._abandoned.add(key)
            self._in_flight.pop(key, None)
        self._consumer_tags = []
        if not self._resumes:
            self.state = "stopped"
            self.log.error(
                "server of {service} stopped consuming: {reason}; {count} requests in flight will be redelivered",
                service=self.service,
                reason=reason,
                count=len(lost),
            )
            self._notify_stopped()
            return
        assert self.broker is not None
        self.state = "interrupted"
        self.log.error(
            "server of {service} stopped consuming: {reason}; {count} requests in flight will be "
            "redelivered, and the server resumes once it has a channel again",
            service=self.service,
            reason=reason,
            count=len(lost),
        )
        self.broker._server_interrupted(self)

    async def resume(self, consumer: ConsumerChannel) -> None:
        """
        Consume the request queue again on a new channel, after the last one
        closed.  Does nothing but close C{consumer} unless the server is
        interrupted.
        """
        if self.state != "interrupted":
            await consumer.close()
            return
        self._generation += 1
        self._consumer = consumer
        await self.start()

    def fail(self, reason: Exception) -> None:
        """
        Stop an interrupted server that cannot resume.
        """
        if self.state != "interrupted":
            return
        self.state = "stopped"
        self.log.error(
            "server of {service} cannot resume and stops: {reason}",
            service=self.service,
            reason=reason,
        )
        self._notify_stopped()

    def _ack(self, key: tuple[int, int]) -> None:
        if key[0] == self._generation:
            self._consumer.ack(key[1])

    def _reject(self, key: tuple[int, int], *, requeue: bool) -> None:
        if key[0] == self._generation:
            self._consumer.reject(key[1], requeue=requeue)

    def _on_delivery(self, delivery: Delivery, generation: int, consumer: ConsumerChannel) -> None:
        key = (generation, delivery.delivery_tag)
        if generation != self._generation:
            # A consumer this server no longer uses: its deliveries go back
            # to the queue, and its channel is closed.
            consumer.reject(delivery.delivery_tag, requeue=True)
            self.log.warn(
                "server of {service} received a request on a channel it no longer uses; closing it",
                service=self.service,
            )
            defer.Deferred.fromCoroutine(consumer.close())
            return
        if self.state not in ("running", "starting"):
            # Deliveries can still arrive between basic.cancel and its
            # cancel-ok; they go back to the queue for another server.
            # (While starting, the first consumer already receives.)
            if self.state == "draining":
                giving_back = defer.Deferred.fromCoroutine(self._give_back(delivery, key))
                if not giving_back.called:
                    self._in_flight[key] = giving_back
                giving_back.addBoth(self._finished, delivery, key)
            else:
                self._reject(key, requeue=True)
            return
        self._received[key] = self._reactor.seconds()
        d = defer.Deferred.fromCoroutine(self._serve(delivery, key))
        if not d.called:
            self._in_flight[key] = d
        d.addBoth(self._finished, delivery, key)

    def _finished(self, result: Any, delivery: Delivery, key: tuple[int, int]) -> None:
        self._in_flight.pop(key, None)
        self._received.pop(key, None)
        if isinstance(result, Failure):
            # A fault of txass itself, not of the handler.  The request is
            # rejected without requeueing, so it cannot block this or the
            # next server in a loop.
            self.log.failure(
                "unexpected error serving request {message_id} to {service}; rejecting it",
                result,
                message_id=delivery.properties.message_id,
                service=self.service,
            )
            if key not in self._abandoned:
                self._reject(key, requeue=False)
        # The request is done with, so its key can be forgotten.
        self._abandoned.discard(key)

    async def _serve(self, delivery: Delivery, key: tuple[int, int]) -> None:
        properties = delivery.properties
        try:
            if len(delivery.body) > self.max_request_size:
                # Checked before decoding, so an oversized body costs no
                # parsing.
                raise RequestTooLarge(
                    f"request body of {len(delivery.body)} bytes is larger than the maximum of "
                    f"{self.max_request_size} bytes for service {self.service!r}"
                )
            request = _envelope.decode_request(delivery.body, properties.content_type, self.codecs)
        except InvalidRequest as e:
            self.log.error(
                "invalid request {message_id} to {service}: {error}",
                message_id=properties.message_id,
                service=self.service,
                error=e,
            )
            method = properties.type if isinstance(properties.type, str) else ""
            await self._reply_and_ack(delivery, key, method, {}, self._error_body(method, e, {}))
            return

        attempts = _policy.previous_attempts(properties.headers)
        if delivery.redelivered or attempts:
            # The request may be one that makes its server crash.  A copy
            # that this server published can arrive before the broker has
            # confirmed it, and so before the original is acknowledged.  It
            # waits until that acknowledgement is written to the socket,
            # because a crash before then would leave both to be served.
            moving = self._moving.get(properties.message_id) if properties.message_id else None
            if moving is not None:
                await when_done(moving)
            await self._after_pending_writes()
            if key in self._abandoned:
                return
        if delivery.redelivered:
            # The broker delivers this copy again because its last delivery
            # was never finished: its server died or lost its connection.
            # That counts as an attempt, and the count has to be carried by
            # a new copy of the request, since a classic queue keeps none.
            attempts += 1
            self.log.warn(
                "request {message_id} to {service} was redelivered: attempt {attempt} of {max_attempts} "
                "did not finish",
                message_id=properties.message_id,
                service=self.service,
                attempt=attempts,
                max_attempts=self.max_attempts,
            )
            await self._again_or_dead_letter(
                delivery,
                key,
                request,
                attempts,
                _policy.UNFINISHED,
                None,
                RequestDeadLettered(
                    f"request to {self.service}.{request.method} did not finish in {attempts} of "
                    f"{self.max_attempts} attempts (did it make its server crash?) and was moved to "
                    f"{self.topology.dead_letter_queue!r}"
                ),
            )
            return

        await self._handle(delivery, key, request, attempts)

    async def _give_back(self, delivery: Delivery, key: tuple[int, int]) -> None:
        """
        Return a request that arrived while this server stops to its queue
        as an unchanged copy, so that it does not come back redelivered,
        counting an attempt it never had.
        """
        queue = self.topology.queue
        if delivery.routing_key == self.topology.unfinished_queue:
            queue = self.topology.unfinished_queue
        copied = await self._publish_copy(
            delivery, key, queue, {}, persistent=False, keep=True, expiration=delivery.properties.expiration
        )
        if copied == "copied":
            if key not in self._abandoned:
                self._ack(key)
        elif copied == "failed" and key not in self._abandoned:
            self._reject(key, requeue=True)

    async def _handle(self, delivery: Delivery, key: tuple[int, int], request: _envelope.Request, attempts: int) -> None:
        """
        Run the handler for a request with C{attempts} attempts behind it,
        then reply, retry, or dead-letter as the outcome and the policy require.
        """
        properties = delivery.properties
        disposition = Disposition()
        context = RequestContext(
            service=self.service,
            method=request.method,
            message_id=properties.message_id,
            correlation_id=properties.correlation_id,
            reply_to=properties.reply_to,
            headers=dict(properties.headers or {}),
            meta=request.meta,
            # A copy published again for a later attempt is a new message
            # to the broker, but not to the handler.
            redelivered=delivery.redelivered or attempts > 0,
            broker=self.broker,
            attempt=attempts + 1,
            disposition=disposition,
        )
        served_by: list[Callable[..., Any]] = []
        outcome = run_in_context(context, self._invoke, request, served_by)
        error: BaseException | None = None
        try:
            result = await outcome
        except GeneratorExit:
            if not outcome.called:
                # This coroutine is being closed, because the handler's
                # Deferred was dropped unfired after the request was
                # requeued.
                raise
            # The handler itself raised GeneratorExit: its failure like any
            # other.
            result = None
            error = GeneratorExit()
            failure = Failure(error)
            self._log_handler_error(context, failure)
        except BaseException as e:
            # SystemExit or asyncio.CancelledError raised by a handler is its
            # failure like any other, not a reason to leave the request.
            error = e
            failure = Failure()
            chosen_by_handler = disposition.action is not None
            hook = None
            if not isinstance(e, MethodNotFound):
                function = served_by[0] if served_by else None
                hook = self.dispatcher.error_hook(function)
            if hook is not None:
                # The handler's own error is logged below, whatever error the
                # hook reports instead.
                error, _ = await self._run_error_hook(hook, context, error, failure)
            if disposition.action is None:
                self._log_handler_error(context, failure)
            else:
                self.log.info(
                    "handler {service}.{method} raised {error_type} for request {message_id}, "
                    "and {who} asked to {action} the request",
                    service=self.service,
                    method=context.method,
                    error_type=type(e).__name__,
                    message_id=context.message_id,
                    who="the handler" if chosen_by_handler else "its on_error hook",
                    action=disposition.action,
                )

        if disposition.action == "discard":
            self.log.debug(
                "request {message_id} to {service}.{method} discarded by its handler",
                message_id=properties.message_id,
                service=self.service,
                method=request.method,
            )
            if key not in self._abandoned:
                self._ack(key)
            return
        if disposition.action == "resend":
            await self._again_or_dead_letter(
                delivery,
                key,
                request,
                attempts + 1,
                _policy.RESENT,
                disposition.delay,
                RequestDeadLettered(
                    f"request to {self.service}.{request.method} was resent by its handler on attempt "
                    f"{attempts + 1} of {self.max_attempts} and was moved to {self.topology.dead_letter_queue!r}"
                ),
            )
            return
        if error is not None:
            if self.retry is not None and self.retry.retries(error):
                await self._again_or_dead_letter(
                    delivery, key, request, attempts + 1, _policy.FAILED, None, error
                )
                return
            body: bytes | None = self._error_body(request.method, error, request.meta, request.codec)
        else:
            body = self._result_body(context, result, request.meta, request.codec)
        await self._reply_and_ack(delivery, key, request.method, request.meta, body, request.codec)

    async def _after_pending_writes(self) -> None:
        """
        Wait until the reactor has run its I/O once more, which writes what
        this turn queued on the connection.
        """
        for _ in range(2):
            await deferLater(self._reactor, 0, lambda: None)

    async def _run_error_hook(
        self, hook: Callable[..., Any], context: RequestContext, error: BaseException, failure: Failure
    ) -> tuple[BaseException, Failure]:
        """
        Call the handler's C{on_error(error, request)} hook.

        @return: The error to report and its failure: C{error}, or the
            exception the hook raised instead.
        """
        try:
            await run_in_context(context, call_handler, hook, error, context)
        except GeneratorExit:
            raise
        except BaseException as e:
            replaced = Failure()
            if e is not error:
                self.log.info(
                    "on_error hook of {service} replaced {error_type} with {replacement_type} "
                    "for request {message_id}",
                    service=self.service,
                    error_type=type(error).__name__,
                    replacement_type=type(e).__name__,
                    message_id=context.message_id,
                )
            return e, replaced
        return error, failure

    async def _again_or_dead_letter(
        self,
        delivery: Delivery,
        key: tuple[int, int],
        request: _envelope.Request,
        attempts: int,
        reason: str,
        delay: float | None,
        error: BaseException,
    ) -> None:
        """
        Publish a new copy of a request that has had C{attempts} attempts:
        for another attempt after a delay, or, once it reached the maximum,
        to the dead-letter queue, replying with C{error}.  Acknowledge the
        request once the copy is confirmed.

        Meanwhile the request is marked as moving, so that its copy,
        arriving early on this server, waits until the original is
        acknowledged.
        """
        message_id = delivery.properties.message_id
        settled: defer.Deferred[None] = defer.Deferred()
        if message_id:
            self._moving[message_id] = settled
        try:
            if key in self._abandoned:
                return
            properties = delivery.properties
            if attempts >= self.max_attempts:
                await self._dead_letter(delivery, key, request, attempts, reason, error)
                return
            if delay is None:
                if reason == _policy.UNFINISHED:
                    delay = 0.0
                elif self.retry is not None:
                    delay = self.retry.delay_before(attempts + 1)
                else:
                    delay = Retry().delay_before(attempts + 1)
            milliseconds = _policy.delay_milliseconds(delay)
            queue = self.topology.retry_queue(milliseconds) if milliseconds else self.topology.queue
            if reason == _policy.UNFINISHED:
                # Served one at a time, at once: the restart of a crashed
                # server is delay enough.
                milliseconds = 0
                queue = self.topology.unfinished_queue
            headers: dict[str, Any] = {_policy.ATTEMPTS_HEADER: attempts}
            expiration = properties.expiration
            budget = _policy.remaining_time(properties.headers, properties.expiration)
            if budget is not None:
                # An RPC caller stops waiting when its timeout ends, so an
                # attempt after that would be wasted.  The broker drops the
                # expiration of a message it moves out of a retry queue, so
                # the time left travels in a header, less the time this
                # server held the request.
                now = self._reactor.seconds()
                serving = math.ceil((now - self._received.get(key, now)) * 1000)
                budget -= serving
                # The next attempt is taken to last as long as this one did.
                if budget - milliseconds <= serving:
                    self.log.info(
                        "request {message_id} to {service}.{method} is not tried again: its caller stops "
                        "waiting before the next attempt",
                        message_id=properties.message_id,
                        service=self.service,
                        method=request.method,
                    )
                    too_late = TimeoutError(
                        f"request to {self.service}.{request.method} is not served again: its caller's "
                        f"timeout ends before attempt {attempts + 1} could start"
                    )
                    await self._reply_error(delivery, key, request, error, too_late)
                    return
                headers[_policy.REMAINING_HEADER] = budget - milliseconds
                expiration = str(budget) if not milliseconds else None
            copied = await self._publish_copy(delivery, key, queue, headers, persistent=False, expiration=expiration)
            if copied == "lost":
                return
            if copied == "copied":
                self.log.info(
                    "request {message_id} to {service}.{method} will be served again in {delay:g} s "
                    "(attempt {next_attempt} of {max_attempts})",
                    message_id=properties.message_id,
                    service=self.service,
                    method=request.method,
                    delay=milliseconds / 1000,
                    next_attempt=attempts + 1,
                    max_attempts=self.max_attempts,
                )
                if key not in self._abandoned:
                    self._ack(key)
                return
            # Without a copy in a queue, replying is the only way left to end
            # the request.
            self.log.error(
                "request {message_id} to {service}.{method} cannot be queued for another attempt; "
                "replying with an error instead",
                message_id=properties.message_id,
                service=self.service,
                method=request.method,
            )
            instead = PublishFailed(
                f"request to {self.service}.{request.method} could not be queued for another attempt "
                f"(attempt {attempts} of {self.max_attempts}); see the server's log"
            )
            await self._reply_error(delivery, key, request, error, instead)
        finally:
            # The copy, when it arrives here, still waits for the reactor to
            # write this acknowledgement (see _serve).
            if message_id and self._moving.get(message_id) is settled:
                del self._moving[message_id]
            settled.callback(None)

    async def _reply_error(
        self,
        delivery: Delivery,
        key: tuple[int, int],
        request: _envelope.Request,
        error: BaseException,
        instead: BaseException,
    ) -> None:
        """
        Reply to a request with C{error} and acknowledge it, ending it
        without another attempt.  A L{RequestDeadLettered} error, which
        would claim a move that did not happen, is replaced by C{instead}.
        """
        if isinstance(error, RequestDeadLettered):
            error = instead
        body = self._error_body(request.method, error, request.meta, request.codec)
        await self._reply_and_ack(delivery, key, request.method, request.meta, body, request.codec)

    async def _dead_letter(
        self,
        delivery: Delivery,
        key: tuple[int, int],
        request: _envelope.Request,
        attempts: int,
        reason: str,
        error: BaseException,
    ) -> None:
        """
        Move a request that has had its last attempt to the service's
        dead-letter queue, with its error in headers, then reply with
        C{error} and acknowledge it.  When the copy cannot be published,
        reply and reject the request without requeueing it.
        """
        properties = delivery.properties
        queue = self.topology.dead_letter_queue
        headers = self._error_headers(properties.headers, attempts, reason, error)
        copied = await self._publish_copy(delivery, key, queue, headers, persistent=True)
        if copied == "lost":
            return

        if copied == "copied":
            self.log.error(
                "request {message_id} to {service}.{method} moved to {queue!r} after {attempts} attempts "
                "({reason}: {error_type}: {error})",
                message_id=properties.message_id,
                service=self.service,
                method=request.method,
                queue=queue,
                attempts=attempts,
                reason=reason,
                error_type=type(error).__name__,
                error=error,
            )
            body = self._error_body(request.method, error, request.meta, request.codec)
            await self._reply_and_ack(delivery, key, request.method, request.meta, body, request.codec)
            return

        self.log.error(
            "request {message_id} to {service}.{method} failed after {attempts} attempts and cannot "
            "be moved to {queue!r}; replying with its error and rejecting it",
            message_id=properties.message_id,
            service=self.service,
            method=request.method,
            attempts=attempts,
            queue=queue,
        )
        if isinstance(error, RequestDeadLettered):
            error = PublishFailed(
                f"request to {self.service}.{request.method} failed after {attempts} attempts and could not "
                f"be moved to {queue!r}; see the server's log"
            )
        if properties.reply_to:
            body = self._error_body(request.method, error, request.meta, request.codec)
            await self._publish_reply(delivery, key, request.method, request.meta, body, request.codec)
        # Rejected without requeueing, so a dead-letter exchange that an
        # operator's policy gives the service queue still catches it.
        if key not in self._abandoned:
            self._abandoned.add(key)
            self._reject(key, requeue=False)

    def _error_headers(
        self, request_headers: dict[str, Any] | None, attempts: int, reason: str, error: BaseException
    ) -> dict[str, Any]:
        """
        Return the headers that record why a request was dead-lettered,
        with error texts cut so that the whole content header fits in one
        frame of this connection beside the request's own headers.
        """
        room = self._frame_max() - 1024 - _policy.encoded_size(request_headers)
        message = _policy.shorten(_describe(error), min(_policy.MAX_ERROR_MESSAGE, max(room // 2, 0)))
        headers: dict[str, Any] = {
            _policy.ATTEMPTS_HEADER: attempts,
            _policy.REASON_HEADER: reason,
            _policy.ERROR_TYPE_HEADER: type(error).__name__,
            _policy.ERROR_MESSAGE_HEADER: message,
            _policy.DEAD_LETTERED_AT_HEADER: int(time.time()),
        }
        room -= len(message.encode("utf-8", "replace"))
        if error.__traceback__ is not None and room > 256:
            text = "".join(traceback_module.format_exception(error))
            # The end of a traceback is the most useful part, so the start
            # is cut.
            headers[_policy.ERROR_TRACEBACK_HEADER] = _policy.shorten_start(
                text, min(_policy.MAX_ERROR_TRACEBACK, room)
            )
        return headers

    def _frame_max(self) -> int:
        """
        Return the largest frame the connection carries, in bytes.
        """
        try:
            frame_max = int(self.broker._connection._protocol._impl.params.frame_max)  # type: ignore[union-attr]
        except (AttributeError, TypeError, ValueError):
            return _policy.MIN_FRAME_MAX
        return max(frame_max, _policy.MIN_FRAME_MAX)

    async def _publish_copy(
        self,
        delivery: Delivery,
        key: tuple[int, int],
        queue: str,
        headers: dict[str, Any],
        *,
        persistent: bool,
        keep: bool = False,
        expiration: str | None = None,
    ) -> str:
        """
        Publish a copy of a request to C{queue} with C{headers} added, and
        wait for the broker's confirm.  The queue is declared first (once
        per connection), and again if the broker returns the copy.

        @param persistent: Whether the copy is persistent and never
            expires, as a dead-lettered request must be; otherwise it keeps
            the request's delivery mode.
        @param keep: Whether the copy keeps txass's own headers as they
            are, rather than lose those of earlier attempts.
        @param expiration: The copy's per-message TTL in milliseconds, as
            the AMQP property's text, or L{None} for none.
        @return: C{"copied"} once the broker confirmed the copy, C{"lost"}
            when the connection was lost (the broker then delivers the
            request again), or C{"failed"}.
        """
        properties = delivery.properties
        dropped = _BROKER_HEADERS if keep else _BROKER_HEADERS | _policy.ATTEMPT_HEADERS
        merged = {name: value for name, value in (properties.headers or {}).items() if name not in dropped}
        merged.update(headers)
        copy = MessageProperties(
            content_type=properties.content_type,
            content_encoding=properties.content_encoding,
            headers=merged,
            delivery_mode=PERSISTENT if persistent else properties.delivery_mode,
            correlation_id=properties.correlation_id,
            reply_to=properties.reply_to,
            message_id=properties.message_id,
            type=properties.type,
            timestamp=properties.timestamp,
            app_id=properties.app_id,
            expiration=expiration,
        )
        header_size = _HEADER_FRAME_OVERHEAD + len(b"".join(copy.to_pika().encode()))
        if header_size > self._frame_max():
            # The broker would close the whole connection for it, and the
            # request would come back to do that again.
            self.log.error(
                "request {message_id} to {service} not copied to {queue!r}: its properties would take "
                "{size} bytes, more than the connection's frame size of {frame_max} bytes",
                message_id=properties.message_id,
                service=self.service,
                queue=queue,
                size=header_size,
                frame_max=self._frame_max(),
            )
            return "failed"
        # A retry queue expires when unused, and publishing does not count
        # as use, so it is declared before every copy.
        retry = self.topology.is_retry_queue(queue)
        for again in (False, True):
            try:
                if self._declare_queue is not None:
                    await self._declare_queue(queue, again or retry)
                publisher = await self._publisher()
                await publisher.publish("", queue, delivery.body, copy, mandatory=True)
                return "copied"
            except UnroutableMessage:
                # The queue was deleted since it was declared.
                continue
            except ConnectionLost as e:
                self.log.error(
                    "request {message_id} to {service} not copied to {queue!r}: {error}; it will be redelivered",
                    message_id=properties.message_id,
                    service=self.service,
                    queue=queue,
                    error=e,
                )
                self._abandoned.add(key)
                return "lost"
            except TxassError as e:
                self.log.error(
                    "request {message_id} to {service} not copied to {queue!r}: {error}",
                    message_id=properties.message_id,
                    service=self.service,
                    queue=queue,
                    error=e,
                )
        return "failed"

    def _invoke(self, request: _envelope.Request, served_by: list[Callable[..., Any]]) -> defer.Deferred[Any]:
        try:
            function = self.dispatcher.resolve(request.method)
        except Exception:
            return defer.fail()
        served_by.append(function)
        return call_handler(function, request.data)

    def _log_handler_error(self, context: RequestContext, failure: Failure) -> None:
        if failure.check(MethodNotFound):
            self.log.warn(
                "request {message_id} (correlation id {correlation_id}) to {service} "
                "rejected: {error}",
                message_id=context.message_id,
                correlation_id=context.correlation_id,
                service=self.service,
                error=failure.value,
            )
            return
        self.log.failure(
            "handler {service}.{method} raised {error_type} for request {message_id} "
            "(correlation id {correlation_id})",
            failure,
            # A handler's exception is an error of one request, reported
            # in an error reply; critical is kept for faults of txass.
            level=LogLevel.error,
            service=self.service,
            method=context.method,
            error_type=failure.type.__name__ if failure.type else "error",
            message_id=context.message_id,
            correlation_id=context.correlation_id,
        )

    def _result_body(self, context: RequestContext, result: Any, meta: dict[str, Any], codec: Codec) -> bytes | None:
        if context.reply_to is None:
            return None
        try:
            return _envelope.encode_result(context.method, result, meta, codec)
        except EncodingError as e:
            self.log.error(
                "result of {service}.{method} for request {message_id} cannot be sent: {error}",
                service=self.service,
                method=context.method,
                message_id=context.message_id,
                error=e,
            )
            return self._error_body(context.method, e, meta, codec)

    def _error_body(self, method: str, error: BaseException, meta: dict[str, Any], codec: Codec = JSON) -> bytes:
        text: str | None = None
        if self.send_tracebacks:
            text = "".join(traceback_module.format_exception(error))
        return _envelope.encode_error(method, type(error).__name__, _describe(error), meta, text, codec)

    async def _reply_and_ack(
        self,
        delivery: Delivery,
        key: tuple[int, int],
        method: str,
        meta: dict[str, Any],
        body: bytes | None,
        codec: Codec = JSON,
    ) -> None:
        properties = delivery.properties
        reply_to = properties.reply_to
        if key in self._abandoned:
            # Requeued, or left on a channel that closed; it will be served
            # again, so a reply now would be a duplicate.
            return
        if reply_to and body is not None:
            if not await self._publish_reply(delivery, key, method, meta, body, codec):
                return
        if key not in self._abandoned:
            self._ack(key)

    async def _publish_reply(
        self,
        delivery: Delivery,
        key: tuple[int, int],
        method: str,
        meta: dict[str, Any],
        body: bytes,
        codec: Codec = JSON,
    ) -> bool:
        """
        Publish the reply to a request and, when it goes to a queue, wait for
        the broker's confirm.

        A reply to a direct reply-to destination goes out on the channel
        the request came on, without a confirm, and the request is
        acknowledged right behind it.  The broker passes such a reply
        straight to the caller's channel, or drops it when the caller is
        gone, so a confirm would tell nothing more.

        A reply to a queue goes on the server's confirm channel.  One the
        broker returns (no such queue) or nacks (for example a full queue
        that rejects publishes) is dropped with a log line, since serving
        the request again would only repeat that.  When the broker closes
        the reply channel, the reply is tried once more on a new channel,
        then replaced by a short error reply, so an oversized reply cannot
        block the server.

        @return: Whether the request may now be acknowledged.
        """
        properties = delivery.properties
        reply_to = properties.reply_to
        assert reply_to
        direct = not _can_return(reply_to)
        last_error: Exception | None = None
        # The reply, the reply again on a new channel, then an error reply.
        attempts: list[bytes | None] = [body, body, None]
        for payload in attempts:
            if payload is None:
                payload = _envelope.encode_error(
                    method, "PublishFailed", f"the reply could not be published: {last_error}", meta, None, codec
                )
            reply_properties = MessageProperties(
                content_type=codec.content_type,
                correlation_id=properties.correlation_id or properties.message_id,
                message_id=new_message_id(),
                delivery_mode=PERSISTENT,
            )
            try:
                if direct:
                    if key[0] != self._generation:
                        # The request's channel is gone, so the broker
                        # delivers the request again.
                        self.log.warn(
                            "reply to request {message_id} of {service} not sent: its channel is closed; "
                            "the request will be redelivered",
                            message_id=properties.message_id,
                            service=self.service,
                        )
                        return False
                    self._consumer.send("", reply_to, payload, reply_properties)
                else:
                    publisher = await self._publisher()
                    await publisher.publish("", reply_to, payload, reply_properties, mandatory=True)
                return True
            except MessageTooLarge as e:
                self.log.error(
                    "reply to request {message_id} of {service}.{method} not sent: {error}; "
                    "sending an error reply instead",
                    message_id=properties.message_id,
                    service=self.service,
                    method=method,
                    error=e,
                )
                last_error = e
                # Sending the same reply again would fail the same way.
                attempts[1] = None
            except UnroutableMessage:
                self.log.warn(
                    "reply to request {message_id} of {service}.{method} dropped: no queue named {reply_to!r}",
                    message_id=properties.message_id,
                    service=self.service,
                    method=method,
                    reply_to=reply_to,
                )
                return True
            except PublishFailed as e:
                self.log.error(
                    "reply to request {message_id} of {service}.{method} dropped: {error} "
                    "(is queue {reply_to!r} full?)",
                    message_id=properties.message_id,
                    service=self.service,
                    method=method,
                    error=e,
                    reply_to=reply_to,
                )
                return True
            except (ConnectionLost, ChannelClosed) as e:
                if isinstance(e, ConnectionLost) or direct:
                    # The request stays unacknowledged on a connection, or a
                    # channel, that is gone, so the broker delivers it again.
                    self.log.error(
                        "reply to request {message_id} of {service} not sent: {error}; "
                        "the request will be redelivered",
                        message_id=properties.message_id,
                        service=self.service,
                        error=e,
                    )
                    return False
                self.log.warn(
                    "reply to request {message_id} of {service} not sent: {error}; trying again",
                    message_id=properties.message_id,
                    service=self.service,
                    error=e,
                )
                last_error = e
        self.log.error(
            "no reply to request {message_id} of {service} could be sent; rejecting it",
            message_id=properties.message_id,
            service=self.service,
        )
        self._abandoned.add(key)
        self._reject(key, requeue=False)
        return False

    def stop(self, grace: float | None = -1.0) -> defer.Deferred[None]:
        """
        Stop taking requests, let those in flight finish, and close the
        consumer's channel.

        @param grace: Seconds to wait for requests in flight; the server's
            own grace period when not given, forever when L{None}.  Requests
            still running after it are requeued for another server.
        @return: A Deferred that fires with L{None} once stopped; it never
            fails.
        """
        if self._stopping is None:
            if grace is not None and grace < 0:
                grace = self.grace
            self._stopping = defer.Deferred.fromCoroutine(self._drain(grace))
        return when_done(self._stopping)

    async def _drain(self, grace: float | None) -> None:
        previous = self.state
        self.state = "draining"
        self.log.info(
            "stopping {service}: {count} requests in flight",
            service=self.service,
            count=len(self._in_flight),
        )
        if previous not in ("stopped", "interrupted"):
            # Each cancel waits a bounded time for the broker, so they run
            # side by side rather than add up.
            cancels = [defer.Deferred.fromCoroutine(self._consumer.cancel(tag)) for tag in self._consumer_tags]
            for success, outcome in await defer.DeferredList(cancels, consumeErrors=True):
                if not success:
                    failure = cast(Failure, outcome)
                    failure.trap(TxassError)
                    self.log.warn("cancelling consumer of {service} failed: {error}", service=self.service, error=failure.value)
        if self._in_flight:
            # Handlers still running after the grace period are not
            # cancelled: they may not support it, and their requests go back
            # to the queue whatever they do.
            pending = defer.DeferredList(list(self._in_flight.values()), consumeErrors=True)
            if grace is None:
                await pending
            else:
                await wait_at_most(pending, grace, self._reactor)
            if self._in_flight:
                unfinished = sorted(self._in_flight)
                self.log.warn(
                    "{count} requests to {service} did not finish within {grace:g} s; "
                    "requeueing them",
                    count=len(unfinished),
                    service=self.service,
                    grace=grace,
                )
                for key in unfinished:
                    self._reject(key, requeue=True)
                    self._abandoned.add(key)
                    self._in_flight.pop(key, None)
        try:
            await self._consumer.close()
        except TxassError:
            pass
        self.state = "stopped"
        self.log.info("stopped serving {service}", service=self.service)
        self._notify_stopped()

    def when_stopped(self) -> defer.Deferred[None]:
        """
        Return a Deferred that fires once the server has stopped: by
        L{stop}, because its channel or connection closed on a broker that
        does not reconnect, or because it could not resume.
        """
        d: defer.Deferred[None] = defer.Deferred()
        if self.state == "stopped":
            d.callback(None)
        else:
            self._stopped.append(d)
        return d

    def _notify_stopped(self) -> None:
        waiting, self._stopped = self._stopped, []
        for d in waiting:
            d.callback(None)


def _describe(error: BaseException) -> str:
    """
    Return the message of C{error}, even when its C{__str__} fails.
    """
    try:
        return str(error)
    except Exception as e:
        return f"<the message of this {type(error).__name__} cannot be shown: {type(e).__name__}>"
