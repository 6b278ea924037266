"""
Request/response calls: a Deferred that fires with the handler's result.

Every RPC call over one broker connection goes through one L{_Caller}: one
AMQP channel that publishes the requests of every service and receives
their replies.  Replies come through RabbitMQ's direct reply-to (the
pseudo-queue C{amq.rabbitmq.reply-to}), so no queue is declared for them
and none is left behind when the process dies; a broker without it gets an
exclusive queue that it deletes with the connection.  Replies are matched
to calls by correlation id alone.

Requests are published without publisher confirms: the reply confirms a
call, and a confirm would cost the broker and both ends work on the path of
every call.  The C{mandatory} flag still makes the broker return a request
that no queue takes, which fails its call at once.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.base import DelayedCall

from txass import _envelope
from txass._connection import AMQPChannel, Delivery, MessageProperties
from txass._server import new_message_id
from txass._topology import Topology
from txass._util import MessageLogger, SharedResult
from txass.errors import (
    BrokerBlocked,
    CallTimeout,
    ChannelClosed,
    ConnectionLost,
    InvalidReply,
    InvalidRequest,
    ServiceNotFound,
)

if TYPE_CHECKING:
    from txass._broker import Broker

DEFAULT_TIMEOUT = 30.0

# The maximum timeout of a call, in seconds (about 31 years), so that every
# timer and TTL computed from it stays in range.
MAX_TIMEOUT = 1e9

# RabbitMQ's pseudo-queue for replies sent straight to the calling channel.
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"

# The maximum per-message TTL given to a request, in milliseconds (about
# 49 days).  RabbitMQ 3.10 accepts it, and closes the channel for an
# expiration above its own limit (1e15 ms failed there).
MAX_EXPIRATION = 2**32 - 1

# Requests of RPC calls are not persistent: a caller that gave up on its
# reply gains nothing from a request that survives a broker restart.
TRANSIENT = 1


def check_timeout(timeout: object) -> float:
    """
    Return C{timeout} if it is a usable number of seconds.

    @raise ValueError: if it is not a finite number greater than 0 and at
        most L{MAX_TIMEOUT}.
    """
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        try:
            if 0 < timeout <= MAX_TIMEOUT:
                return float(timeout)
        except OverflowError:
            pass
    raise ValueError(
        f"timeout must be a number of seconds greater than 0 and at most {MAX_TIMEOUT:g}, not {timeout!r}"
    )


@dataclass(eq=False)
class _Call:
    """
    A call waiting for its reply.
    """

    topology: Topology
    method: str
    correlation_id: str
    deferred: defer.Deferred[Any]
    timeout: float
    codec: _envelope.Codec = _envelope.JSON
    timer: DelayedCall | None = None
    # Fired to let the call try to publish, while it waits for room.
    waiter: defer.Deferred[None] | None = field(default=None, repr=False)
    # The channel the request was published on, once it was.
    channel: AMQPChannel | None = field(default=None, repr=False)

    @property
    def service(self) -> str:
        return self.topology.service

    def stop_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()


class _Caller:
    """
    The channel, reply consumer and calls in flight shared by every
    L{RPCClient} on one broker connection.
    """

    log = MessageLogger()

    def __init__(self, broker: Broker, *, direct_reply_to: bool) -> None:
        self._broker = broker
        self.direct_reply_to = direct_reply_to
        self._pending: dict[str, _Call] = {}
        self._pending_by_service: Counter[str] = Counter()
        self._channel: SharedResult[tuple[AMQPChannel, str]] = SharedResult(self._open)
        self._closed: Exception | None = None
        # Calls waiting, unsent, for the connection's send buffer to drain
        # or for the broker to unblock, so that a broker that stops taking
        # requests cannot make them pile up in memory.
        self._waiting: deque[defer.Deferred[None]] = deque()

    def pending(self, service: str) -> int:
        return self._pending_by_service[service]

    async def _open(self) -> tuple[AMQPChannel, str]:
        if self.direct_reply_to:
            try:
                return await self._open_with(DIRECT_REPLY_TO)
            except ChannelClosed as e:
                # A broker without direct reply-to rejects the consumer.
                self.log.info(
                    "direct reply-to is not available ({error}); replies to RPC calls go to an exclusive queue",
                    error=e,
                )
                self.direct_reply_to = False
        return await self._open_with(f"txass.reply.{uuid.uuid4().hex}")

    async def _open_with(self, reply_to: str) -> tuple[AMQPChannel, str]:
        channel = await self._broker._open_channel(wait=True)
        channel.on_returned(self._on_returned)
        try:
            if reply_to != DIRECT_REPLY_TO:
                await channel.declare_queue(reply_to, durable=False, exclusive=True, auto_delete=True)
            # Direct reply-to needs automatic acknowledgement; for a queue
            # it costs nothing, since a reply is only worth its one delivery.
            await channel.consume(
                reply_to,
                self._on_reply,
                auto_ack=True,
                on_cancelled=lambda: self._on_cancelled(channel, reply_to),
            )
        except Exception:
            await channel.close()
            raise
        channel.when_closed().addCallback(self._on_channel_closed, channel)
        return channel, reply_to

    def _on_cancelled(self, channel: AMQPChannel, reply_to: str) -> None:
        self.log.error(
            "the broker cancelled the consumer of reply queue {queue!r} (was it deleted?); "
            "RPC calls in flight lose their replies",
            queue=reply_to,
        )
        # Closing the channel fails the calls sent on it, and the next call
        # opens a new one.
        defer.Deferred.fromCoroutine(channel.close())

    def _on_channel_closed(self, reason: Exception, channel: AMQPChannel) -> None:
        self._forget_channel(channel)
        lost = [call for call in self._pending.values() if call.channel is channel]
        if lost and self._closed is None:
            self.log.error("{count} RPC calls lost their replies: {reason}", count=len(lost), reason=reason)
        for call in lost:
            self._fail(call, self._lost(call, reason))

    def _forget_channel(self, channel: AMQPChannel) -> None:
        current = self._channel.current()
        if current is not None and current[0] is channel:
            self._channel.reset()

    def call(
        self, topology: Topology, method: str, body: bytes, timeout: float, codec: _envelope.Codec = _envelope.JSON
    ) -> defer.Deferred[Any]:
        correlation_id = new_message_id()
        d: defer.Deferred[Any] = defer.Deferred(lambda _: self._forget(correlation_id))
        call = _Call(topology, method, correlation_id, d, timeout, codec)
        self._pending[correlation_id] = call
        self._pending_by_service[topology.service] += 1
        call.timer = self._broker._reactor.callLater(timeout, self._expire, correlation_id)
        current = self._channel.current()
        if current is not None and current[0].is_open and self._may_send() and self._closed is None:
            # The common case, without a coroutine: publish now.
            self._publish(call, body, *current)
        else:
            defer.Deferred.fromCoroutine(self._send(call, body))
        return d

    def _check_open(self) -> None:
        if self._closed is not None:
            raise self._closed
        if self._broker._closing is not None:
            raise ConnectionLost("Broker.close() was called")

    def _may_send(self) -> bool:
        """
        Return whether a request may be published now: the broker does not
        block publishing, and the connection's send buffer is not full.
        """
        broker = self._broker
        return broker._blocked is None and not broker._connection.send_buffer_full

    async def _send(self, call: _Call, body: bytes) -> None:
        """
        Publish the request of C{call} once the channel is open and the
        request may be sent.
        """
        try:
            self._check_open()
            channel, reply_to = await self._channel.get()
            while not self._may_send():
                call.waiter = defer.Deferred()
                self._waiting.append(call.waiter)
                await call.waiter
                call.waiter = None
                if call.correlation_id not in self._pending:
                    return
                self._check_open()
            if call.correlation_id not in self._pending:
                # Timed out or cancelled while the channel opened.
                return
            if not channel.is_open:
                # The channel closed, and the close notice has not reached
                # this caller yet.
                self._forget_channel(channel)
                channel, reply_to = await self._channel.get()
        except Exception as e:
            self._fail(call, e)
            return
        self._publish(call, body, channel, reply_to)

    def _publish(self, call: _Call, body: bytes, channel: AMQPChannel, reply_to: str) -> None:
        properties = MessageProperties(
            content_type=call.codec.content_type,
            delivery_mode=TRANSIENT,
            message_id=call.correlation_id,
            correlation_id=call.correlation_id,
            reply_to=reply_to,
            type=call.method,
            # The broker drops a request still queued when its caller
            # stops waiting for the reply.
            expiration=str(min(math.ceil(call.timeout * 1000), MAX_EXPIRATION)),
        )
        # The default exchange routes to the service queue if it exists and
        # returns the request otherwise (see _on_returned), so a missing
        # service is reported and not created.
        try:
            channel.send("", call.topology.queue, body, properties, mandatory=True)
        except (ConnectionLost, ChannelClosed) as e:
            self._fail(
                call, ConnectionLost(f"{e} while calling {call.service}.{call.method}; the request was not sent")
            )
        except Exception as e:
            self._fail(call, e)
        else:
            call.channel = channel

    def _on_returned(self, properties: MessageProperties) -> None:
        # Called by the AMQP engine: nothing may escape from here.
        correlation_id = properties.correlation_id
        call = self._pending.get(correlation_id) if correlation_id else None
        if call is not None:
            self._fail(call, ServiceNotFound(call.service, self._broker.address.vhost))

    def wake_all(self) -> None:
        """
        Let every waiting call try to publish again, for example because the
        broker unblocked the connection.
        """
        waiting, self._waiting = self._waiting, deque()
        for waiter in waiting:
            if not waiter.called:
                waiter.callback(None)

    def _lost(self, call: _Call, reason: Exception) -> ConnectionLost:
        return ConnectionLost(
            f"{reason} while calling {call.service}.{call.method}; the request may or may not "
            f"have been served, and its reply is lost"
        )

    def _on_reply(self, delivery: Delivery) -> None:
        # Called by the AMQP engine: nothing may escape from here.
        try:
            self._settle(delivery)
        except Exception:
            self.log.failure(
                "unexpected error receiving reply {correlation_id}",
                correlation_id=delivery.properties.correlation_id,
            )

    def _settle(self, delivery: Delivery) -> None:
        properties = delivery.properties
        correlation_id = properties.correlation_id
        call = self._remove(correlation_id) if correlation_id else None
        if call is None:
            self.log.debug(
                "reply {correlation_id} dropped: no call waits for it "
                "(it timed out, was cancelled, or was never made)",
                correlation_id=correlation_id,
            )
            return
        try:
            reply = _envelope.decode_reply(delivery.body, properties.content_type, (_envelope.JSON, call.codec))
        except InvalidRequest as e:
            call.deferred.errback(InvalidReply(f"reply to {call.service}.{call.method} is not a txass reply: {e}"))
            return
        if reply.error is not None:
            call.deferred.errback(reply.error)
        else:
            call.deferred.callback(reply.result)

    def _remove(self, correlation_id: str) -> _Call | None:
        """
        Forget a pending call and stop its timer.

        @return: The call, or L{None} if no call waits with that id.
        """
        call = self._pending.pop(correlation_id, None)
        if call is None:
            return None
        call.stop_timer()
        if call.waiter is not None and not call.waiter.called:
            # Ends the wait of its _send, which then finds the call gone.
            call.waiter.callback(None)
        remaining = self._pending_by_service[call.service] - 1
        if remaining:
            self._pending_by_service[call.service] = remaining
        else:
            del self._pending_by_service[call.service]
        return call

    def _expire(self, correlation_id: str) -> None:
        call = self._remove(correlation_id)
        if call is None:
            return
        blocked = self._broker._blocked
        if blocked is not None and call.channel is None:
            call.deferred.errback(BrokerBlocked(call.service, call.method, call.timeout, blocked))
        else:
            call.deferred.errback(CallTimeout(call.service, call.method, call.timeout))

    def _forget(self, correlation_id: str) -> None:
        self._remove(correlation_id)

    def _fail(self, call: _Call, error: Exception) -> None:
        if self._remove(call.correlation_id) is not None:
            call.deferred.errback(error)

    async def close(self) -> None:
        """
        Fail every call in flight and close the channel.
        """
        if self._closed is None:
            self._closed = ConnectionLost("Broker.close() was called")
        for call in list(self._pending.values()):
            self._fail(
                call,
                ConnectionLost(
                    f"Broker.close() was called while calling {call.service}.{call.method}; the request "
                    f"may or may not have been served, and its reply is lost"
                ),
            )
        self.wake_all()
        current = self._channel.current()
        if current is not None:
            await current[0].close()


class RPCClient:
    """
    A caller of one service whose calls fire Deferreds with the results;
    L{Broker.rpc} creates it.

    RPC clients are cheap: every RPC client on one broker connection shares
    one channel and one reply destination.

    @ivar timeout: The timeout of a call that does not give its own, in
        seconds.
    """

    def __init__(self, caller: _Caller, topology: Topology, timeout: float, codec: _envelope.Codec = _envelope.JSON) -> None:
        self._caller = caller
        self.topology = topology
        self.timeout = timeout
        self.codec = codec

    @property
    def service(self) -> str:
        return self.topology.service

    @property
    def pending(self) -> int:
        """
        The number of calls of this service, over this broker connection,
        still waiting for their replies.
        """
        return self._caller.pending(self.service)

    def __repr__(self) -> str:
        return f"<RPCClient of {self.service!r} on {self._caller._broker!r}>"

    def call(
        self,
        method: str,
        data: Any = None,
        *,
        meta: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> defer.Deferred[Any]:
        """
        Call C{method} of the service with C{data} and wait for the result.

        The request is not persistent, and the broker drops it if it is
        still queued when the timeout runs out.  Cancelling the returned
        Deferred abandons the call: a reply that arrives later is dropped.

        @param meta: A dict of JSON values passed to the handler with the
            request.
        @param timeout: Seconds to wait for the reply; this client's
            C{timeout} when not given.
        @return: A Deferred that fires with the handler's result.  It fails
            with L{txass.RemoteError} when the handler raised (carrying the
            remote exception's type name and message),
            L{txass.errors.CallTimeout} when no reply came in time (as
            L{txass.errors.BrokerBlocked} when the broker blocked publishing
            all that time), L{txass.errors.ServiceNotFound} at once when the
            broker has no queue for the service,
            L{txass.errors.EncodingError} when C{data} or C{meta} cannot be
            encoded as JSON, L{txass.errors.MessageTooLarge} when the request
            is larger than the broker accepts, L{txass.errors.ConnectionLost}
            when the connection or channel closed before the reply came (the
            request may have been served), and L{txass.errors.InvalidReply}
            when the reply is not a txass reply.
        @raise ValueError: if C{timeout} is not a number of seconds greater
            than 0 and at most L{MAX_TIMEOUT}.
        """
        seconds = self.timeout if timeout is None else check_timeout(timeout)
        try:
            body = _envelope.encode_request(method, data, meta, self.codec)
        except Exception:
            return defer.fail()
        return self._caller.call(self.topology, method, body, seconds, self.codec)
