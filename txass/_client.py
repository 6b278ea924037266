"""
The client side of a service: send requests without waiting, and receive
each result in the callback method of the same name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from txass import _envelope
from txass._connection import TERMINAL_REPLY_CODES, AMQPChannel, Delivery, MessageProperties
from txass._context import RequestContext, run_in_context
from txass._handler import Dispatcher, call_handler, make_dispatcher
from txass._server import PERSISTENT, new_message_id
from txass._topology import Topology
from txass._util import MessageLogger, SharedResult, wait_at_most, when_done
from txass.errors import ChannelClosed, ConnectionLost, InvalidRequest, MethodNotFound, TxassError, UnroutableMessage

if TYPE_CHECKING:
    from txass._broker import Broker

DEFAULT_RESULT_PREFETCH = 100

# Seconds before a client whose result channel closed on an open
# connection consumes again.
CHANNEL_RETRY_DELAY = 1.0
DEFAULT_STOP_GRACE = 30.0

# The AMQP reply code for a missing queue or exchange.
NOT_FOUND = 404


class Client:
    """
    A caller of one service; L{Service.client} creates it.

    @ivar key: The client key, or L{None} for a client whose result queue
        is temporary.
    @ivar queue: The name of the queue this client's results go to.
    """

    log = MessageLogger()

    def __init__(self, broker: Broker, topology: Topology, key: str | None, codec: _envelope.Codec = _envelope.JSON) -> None:
        self._broker = broker
        self.topology = topology
        self.key = key
        self.codec = codec
        if key is None:
            self.queue = topology.temporary_client_queue()
        else:
            self.queue = topology.client_queue(key)
        self._channel: AMQPChannel | None = None
        self._consumer_tag: str | None = None
        self._starting: SharedResult[None] | None = None
        # Counts calls to stop(), so that a consumer still starting when
        # stop() runs can tell that it must cancel itself.
        self._generation = 0
        self._dispatcher: Dispatcher | None = None
        self._prefetch = DEFAULT_RESULT_PREFETCH
        # Whether the result channel closed and the client consumes again
        # once it can.
        self._interrupted = False
        self._pending: set[defer.Deferred[None]] = set()

    @property
    def service(self) -> str:
        return self.topology.service

    def __repr__(self) -> str:
        return f"<Client of {self.service!r} results to {self.queue!r}>"

    async def _declare_own_queue(self) -> None:
        await self._broker._declare_result_queue(self.queue, durable=self.key is not None)

    def react(self, handler: Any, *, prefetch: int = DEFAULT_RESULT_PREFETCH) -> defer.Deferred[Client]:
        """
        Start receiving results: the result of C{call("foo", ...)} is passed
        to C{handler.foo(result)}.

        C{handler} is a class, a module, a mapping or an object, as for
        L{Service.react}.  A failed request passes a L{txass.RemoteError} in
        place of the result.  Inside the callback, L{txass.current_request}
        returns the reply's context: its correlation id and the request's
        C{meta}.

        Calling it again replaces the handler; the client keeps one
        consumer, with the prefetch of the first call.

        @param prefetch: The maximum number of results handled at once
            (1 to 65535).
        @return: A Deferred that fires with this client once it consumes its
            result queue.  It fails with L{txass.errors.ConnectionLost} or
            L{txass.errors.ChannelClosed} if the broker cannot be used.
        """
        dispatcher = make_dispatcher(handler)
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or not 1 <= prefetch <= 65535:
            raise ValueError(f"prefetch must be an integer from 1 to 65535, not {prefetch!r}")
        return defer.Deferred.fromCoroutine(self._react(dispatcher, prefetch))

    async def _react(self, dispatcher: Dispatcher, prefetch: int) -> Client:
        self._dispatcher = dispatcher
        self._interrupted = False
        if self._starting is None:
            self._prefetch = prefetch
            self._starting = SharedResult(lambda: self._start_consuming(prefetch))
        await self._starting.get()
        return self

    async def _start_consuming(self, prefetch: int) -> None:
        generation = self._generation
        try:
            channel, tag = await self._consume(prefetch)
        except ChannelClosed as e:
            if e.reply_code != NOT_FOUND:
                raise
            # The queue was deleted since this connection declared it.
            self._broker._forget_declarations(self.topology, self.queue)
            channel, tag = await self._consume(prefetch)
        if generation != self._generation or self._broker._closing is not None:
            # stop() or Broker.close() ran while the consumer started.
            await channel.cancel(tag)
            await channel.close()
            if self._broker._closing is not None:
                raise ConnectionLost("Broker.close() was called while the client was starting")
            return
        self._channel, self._consumer_tag = channel, tag
        channel.when_closed().addCallback(self._on_channel_closed, channel)
        self._broker._clients.add(self)
        self.log.info(
            "receiving results of {service} from {queue}",
            service=self.service,
            queue=self.queue,
        )

    async def _consume(self, prefetch: int) -> tuple[AMQPChannel, str]:
        await self._broker._declare_service(self.topology)
        await self._declare_own_queue()
        channel = await self._broker._open_channel()
        try:
            await channel.set_prefetch(prefetch)
            tag = await channel.consume(
                self.queue,
                lambda delivery: self._on_delivery(channel, delivery),
                on_cancelled=self._on_cancelled,
            )
        except Exception:
            await channel.close()
            raise
        return channel, tag

    def _on_cancelled(self) -> None:
        self._broker._forget_declarations(None, self.queue)
        if not self._broker._reconnects:
            self.log.error(
                "the broker cancelled the consumer of result queue {queue!r} (was it deleted?); "
                "call react() again to declare it and receive results",
                queue=self.queue,
            )
            self.stop()
            return
        self.log.error(
            "the broker cancelled the consumer of result queue {queue!r} (was it deleted?); "
            "declaring it again and resuming",
            queue=self.queue,
        )
        channel = self._channel
        if channel is not None:
            # Closing the channel makes the client resume on a new one.
            defer.Deferred.fromCoroutine(channel.close())

    def _on_channel_closed(self, reason: Exception, channel: AMQPChannel) -> None:
        if channel is not self._channel or not self._broker._reconnects or self._broker._closing is not None:
            return
        self._channel = None
        self._consumer_tag = None
        self._starting = None
        self._interrupted = True
        self.log.error(
            "result channel of {queue} closed: {reason}; the client consumes again once it can",
            queue=self.queue,
            reason=reason,
        )
        if self._broker.is_open:
            self._broker._later(CHANNEL_RETRY_DELAY, self._resume)

    def _resume(self) -> None:
        """
        Consume the result queue again after its channel closed.
        """
        if not self._interrupted or self._dispatcher is None or self._broker._closing is not None:
            return
        if not self._broker.is_open:
            # The reconnection resumes it.
            return
        resumed = defer.Deferred.fromCoroutine(self._react(self._dispatcher, self._prefetch))

        def failed(failure: Failure) -> None:
            self._interrupted = True
            error = failure.value
            if isinstance(error, ChannelClosed) and error.reply_code in TERMINAL_REPLY_CODES:
                self._interrupted = False
                self.log.failure(
                    "the client of {queue} cannot consume its results again", failure, queue=self.queue
                )
                return
            if not failure.check(ConnectionLost):
                self.log.warn(
                    "the client of {queue} could not consume its results again: {error}; retrying",
                    queue=self.queue,
                    error=failure.value,
                )
            if self._broker.is_open and self._broker._reconnecting is None:
                # Retried here, since a reconnection that finished meanwhile
                # will not resume this client again.
                self._broker._later(CHANNEL_RETRY_DELAY, self._resume)

        resumed.addCallbacks(
            lambda _: self.log.info("receiving results from {queue} again", queue=self.queue), failed
        )

    def _on_delivery(self, channel: AMQPChannel, delivery: Delivery) -> None:
        try:
            self._dispatch(channel, delivery)
        except BaseException:
            # Nothing may escape into the AMQP engine, which would drop the
            # connection with every server and client on it.
            self.log.failure(
                "unexpected error receiving result {message_id} from {queue}",
                message_id=delivery.properties.message_id,
                queue=self.queue,
            )
            channel.ack(delivery.delivery_tag)

    def _dispatch(self, channel: AMQPChannel, delivery: Delivery) -> None:
        properties = delivery.properties
        try:
            reply = _envelope.decode_reply(delivery.body, properties.content_type, (_envelope.JSON, self.codec))
        except InvalidRequest as e:
            self.log.error(
                "invalid reply {message_id} in {queue} dropped: {error}",
                message_id=properties.message_id,
                queue=self.queue,
                error=e,
            )
            channel.ack(delivery.delivery_tag)
            return
        context = RequestContext(
            service=self.service,
            method=reply.method,
            message_id=properties.message_id,
            correlation_id=properties.correlation_id,
            reply_to=None,
            headers=dict(properties.headers or {}),
            meta=reply.meta,
            redelivered=delivery.redelivered,
            broker=self._broker,
        )
        value: Any = reply.error if reply.error is not None else reply.result
        d = run_in_context(context, self._invoke, reply.method, value)
        self._pending.add(d)
        d.addBoth(self._settle, channel, delivery, context)
        d.addBoth(lambda _: self._pending.discard(d))

    def _invoke(self, method: str, value: Any) -> defer.Deferred[Any]:
        assert self._dispatcher is not None
        try:
            function = self._dispatcher.resolve(method)
        except Exception:
            return defer.fail()
        return call_handler(function, value)

    def _settle(self, result: Any, channel: AMQPChannel, delivery: Delivery, context: RequestContext) -> None:
        if isinstance(result, Failure):
            if result.check(MethodNotFound):
                self.log.error(
                    "result {correlation_id} of {service}.{method} dropped: {error}",
                    correlation_id=context.correlation_id,
                    service=self.service,
                    method=context.method,
                    error=result.value,
                )
            else:
                self.log.failure(
                    "result callback {method} of {service} failed for {correlation_id}",
                    result,
                    level=LogLevel.error,
                    method=context.method,
                    service=self.service,
                    correlation_id=context.correlation_id,
                )
        # A failing callback does not requeue the result: it would fail again.
        channel.ack(delivery.delivery_tag)

    def _reply_destination(self, routing_key: str | None, reply_to: str | None) -> str:
        if routing_key is not None and reply_to is not None:
            raise ValueError("pass routing_key or reply_to, not both")
        if reply_to is not None:
            if not isinstance(reply_to, str) or not reply_to:
                raise ValueError(f"reply_to must be a non-empty queue name, not {reply_to!r}")
            return reply_to
        if routing_key is not None:
            return self.topology.client_queue(routing_key)
        return self.queue

    def call(
        self,
        method: str,
        data: Any = None,
        *,
        meta: dict[str, Any] | None = None,
        routing_key: str | None = None,
        reply_to: str | None = None,
    ) -> defer.Deferred[str]:
        """
        Send a request whose result goes to a callback.

        The result goes to this client's C{handler.<method>}, or with
        C{routing_key} to the client of this service with that key, or with
        C{reply_to} to the queue of that name.  With C{routing_key}, that
        client's durable result queue is declared, so the result waits there
        until the client reacts.

        @param meta: A dict of JSON values passed to the handler with the
            request and returned with its result.
        @return: A Deferred that fires with the request's correlation id
            once the broker has confirmed it (stored it durably), not with
            the result.  It fails with L{txass.errors.EncodingError} if
            C{data} or C{meta} cannot be encoded as JSON,
            L{txass.errors.PublishFailed} if the broker rejected it, and
            L{txass.errors.ConnectionLost} if the connection closed first.
        """
        try:
            destination = self._reply_destination(routing_key, reply_to)
            body = _envelope.encode_request(method, data, meta, self.codec)
        except Exception:
            return defer.fail()
        routed = routing_key is not None and reply_to is None
        return defer.Deferred.fromCoroutine(self._send(method, body, destination, routed))

    def cast(self, method: str, data: Any = None, *, meta: dict[str, Any] | None = None) -> defer.Deferred[str]:
        """
        Send a request that gets no reply.

        @return: A Deferred that fires with the request's message id once
            the broker has confirmed it; it fails as for L{call}.
        """
        try:
            body = _envelope.encode_request(method, data, meta, self.codec)
        except Exception:
            return defer.fail()
        return defer.Deferred.fromCoroutine(self._send(method, body, None))

    async def _send(self, method: str, body: bytes, reply_to: str | None, routed: bool = False) -> str:
        await self._broker._declare_service(self.topology)
        if reply_to == self.queue:
            await self._declare_own_queue()
        elif routed and reply_to is not None:
            # Results for another client's key wait in its durable queue
            # until that client reacts.
            await self._broker._declare_result_queue(reply_to, durable=True)
        message_id = new_message_id()
        properties = MessageProperties(
            content_type=self.codec.content_type,
            delivery_mode=PERSISTENT,
            message_id=message_id,
            correlation_id=message_id,
            reply_to=reply_to,
            type=method,
        )
        publisher = await self._broker._publisher(self.service)
        try:
            await publisher.publish(self.topology.exchange, self.topology.routing_key, body, properties, mandatory=True)
        except UnroutableMessage:
            # The service queue was deleted since this connection declared
            # it.  A returned message was not stored, so sending it again
            # cannot make a duplicate.
            self._broker._forget_declarations(self.topology, None)
            await self._broker._declare_service(self.topology)
            publisher = await self._broker._publisher(self.service)
            await publisher.publish(self.topology.exchange, self.topology.routing_key, body, properties, mandatory=True)
        return message_id

    def stop(self, grace: float = DEFAULT_STOP_GRACE) -> defer.Deferred[None]:
        """
        Stop receiving results, let running callbacks finish, and close the
        channel used for results.

        Results that arrive afterwards wait in a keyed client's queue.

        @param grace: Seconds to wait for running callbacks; results whose
            callbacks run longer go back to the queue unacknowledged.
        @return: A Deferred that fires with L{None}; it never fails.
        """
        return when_done(defer.Deferred.fromCoroutine(self._stop(grace)))

    async def _stop(self, grace: float) -> None:
        self._interrupted = False
        self._broker._clients.discard(self)
        self._starting = None
        self._generation += 1
        channel, self._channel = self._channel, None
        tag, self._consumer_tag = self._consumer_tag, None
        if channel is None:
            return
        try:
            if tag is not None:
                await channel.cancel(tag)
            if self._pending:
                await wait_at_most(
                    defer.DeferredList(list(self._pending), consumeErrors=True), grace, self._broker._reactor
                )
                if self._pending:
                    self.log.warn(
                        "{count} result callbacks of {queue} did not finish within {grace:g} s; "
                        "their results go back to the queue",
                        count=len(self._pending),
                        queue=self.queue,
                        grace=grace,
                    )
            await channel.close()
        except TxassError:
            pass

