"""
Request/response calls: a Deferred that fires with the handler's result.

Every call of one service over one broker connection goes through a
L{_Caller}: one AMQP channel, with publisher confirms, that publishes the
requests and receives their replies.  Replies come through RabbitMQ's
direct reply-to (the pseudo-queue C{amq.rabbitmq.reply-to}), so no queue is
declared for them and none is left behind when the process dies; a broker
without it gets an exclusive queue that it deletes with the connection.
Replies are matched to calls by correlation id alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.base import DelayedCall
from twisted.logger import Logger

from txass import _envelope
from txass._connection import AMQPChannel, Delivery, MessageProperties
from txass._server import new_message_id
from txass._topology import Topology
from txass._util import SharedResult
from txass.errors import (
    CallTimeout,
    ChannelClosed,
    ConnectionLost,
    InvalidReply,
    InvalidRequest,
    ServiceNotFound,
    TxassError,
    UnroutableMessage,
)

if TYPE_CHECKING:
    from txass._broker import Broker

DEFAULT_TIMEOUT = 30.0

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

    @raise ValueError: if it is not a finite number greater than 0.
    """
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be a finite number of seconds greater than 0, not {timeout!r}")
    return float(timeout)


@dataclass(eq=False)
class _Call:
    """
    A call waiting for its reply.
    """

    method: str
    correlation_id: str
    deferred: defer.Deferred[Any]
    timer: DelayedCall | None = None
    # The channel the request was published on, once it was.
    channel: AMQPChannel | None = field(default=None, repr=False)

    def stop_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()


class _Caller:
    """
    The channel, reply consumer and calls in flight shared by every
    L{RPCClient} of one service on one broker connection.
    """

    log = Logger()

    def __init__(self, broker: Broker, topology: Topology, *, direct_reply_to: bool) -> None:
        self._broker = broker
        self.topology = topology
        self.direct_reply_to = direct_reply_to
        self._pending: dict[str, _Call] = {}
        self._channel: SharedResult[tuple[AMQPChannel, str]] = SharedResult(self._open)
        self._closed: Exception | None = None

    @property
    def service(self) -> str:
        return self.topology.service

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def _open(self) -> tuple[AMQPChannel, str]:
        if self.direct_reply_to:
            try:
                return await self._open_with(DIRECT_REPLY_TO)
            except ChannelClosed as e:
                # A broker without direct reply-to rejects the consumer.
                self.log.info(
                    "direct reply-to is not available ({error}); replies to calls of {service} "
                    "go to an exclusive queue",
                    error=e,
                    service=self.service,
                )
                self.direct_reply_to = False
        return await self._open_with(self.topology.temporary_client_queue())

    async def _open_with(self, reply_to: str) -> tuple[AMQPChannel, str]:
        channel = await self._broker._open_channel(confirms=True)
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
            "the broker cancelled the consumer of reply queue {queue!r} of {service} (was it deleted?); "
            "calls in flight lose their replies",
            queue=reply_to,
            service=self.service,
        )
        # Closing the channel fails the calls sent on it, and the next call
        # opens a new one.
        defer.Deferred.fromCoroutine(channel.close())

    def _on_channel_closed(self, reason: Exception, channel: AMQPChannel) -> None:
        if self._channel.current() is not None and self._channel.current()[0] is channel:  # type: ignore[index]
            self._channel.reset()
        lost = [call for call in self._pending.values() if call.channel is channel]
        if lost and self._closed is None:
            self.log.error(
                "{count} calls to {service} lost their replies: {reason}",
                count=len(lost),
                service=self.service,
                reason=reason,
            )
        for call in lost:
            self._fail(call.correlation_id, self._lost(call, reason))

    def call(self, method: str, body: bytes, timeout: float) -> defer.Deferred[Any]:
        correlation_id = new_message_id()
        d: defer.Deferred[Any] = defer.Deferred(lambda _: self._forget(correlation_id))
        call = _Call(method, correlation_id, d)
        self._pending[correlation_id] = call
        call.timer = self._broker._reactor.callLater(timeout, self._expire, correlation_id, timeout)
        defer.Deferred.fromCoroutine(self._send(call, body, timeout))
        return d

    async def _send(self, call: _Call, body: bytes, timeout: float) -> None:
        try:
            if self._closed is not None:
                raise self._closed
            channel, reply_to = await self._channel.get()
            if call.correlation_id not in self._pending:
                # Timed out or cancelled while the channel opened.
                return
            call.channel = channel
            properties = MessageProperties(
                content_type=_envelope.CONTENT_TYPE,
                delivery_mode=TRANSIENT,
                message_id=call.correlation_id,
                correlation_id=call.correlation_id,
                reply_to=reply_to,
                type=call.method,
                # The broker drops a request still queued when its caller
                # stops waiting for the reply.
                expiration=str(min(math.ceil(timeout * 1000), MAX_EXPIRATION)),
            )
            # The default exchange routes to the service queue if it exists
            # and returns the request otherwise, so a missing service is
            # reported and not created.
            await channel.publish("", self.topology.queue, body, properties, mandatory=True)
        except UnroutableMessage:
            self._fail(call.correlation_id, ServiceNotFound(self.service, self._broker.address.vhost))
        except (ConnectionLost, ChannelClosed) as e:
            if call.channel is not None:
                # The channel closed before the broker confirmed the request.
                e = self._lost(call, e)
            self._fail(call.correlation_id, e)
        except Exception as e:
            self._fail(call.correlation_id, e)

    def _lost(self, call: _Call, reason: Exception) -> ConnectionLost:
        return ConnectionLost(
            f"{reason} while calling {self.service}.{call.method}; the request may or may not "
            f"have been served, and its reply is lost"
        )

    def _on_reply(self, delivery: Delivery) -> None:
        # Called by the AMQP engine: nothing may escape from here.
        try:
            self._settle(delivery)
        except Exception:
            self.log.failure(
                "unexpected error receiving reply {correlation_id} of {service}",
                correlation_id=delivery.properties.correlation_id,
                service=self.service,
            )

    def _settle(self, delivery: Delivery) -> None:
        properties = delivery.properties
        correlation_id = properties.correlation_id
        call = self._pending.pop(correlation_id, None) if correlation_id else None
        if call is None:
            self.log.debug(
                "reply {correlation_id} of {service} dropped: no call waits for it "
                "(it timed out, was cancelled, or was never made)",
                correlation_id=correlation_id,
                service=self.service,
            )
            return
        call.stop_timer()
        try:
            reply = _envelope.decode_reply(delivery.body, properties.content_type)
        except InvalidRequest as e:
            call.deferred.errback(InvalidReply(f"reply to {self.service}.{call.method} is not a txass reply: {e}"))
            return
        if reply.error is not None:
            call.deferred.errback(reply.error)
        else:
            call.deferred.callback(reply.result)

    def _expire(self, correlation_id: str, timeout: float) -> None:
        call = self._pending.pop(correlation_id, None)
        if call is not None:
            call.deferred.errback(CallTimeout(self.service, call.method, timeout))

    def _forget(self, correlation_id: str) -> None:
        call = self._pending.pop(correlation_id, None)
        if call is not None:
            call.stop_timer()

    def _fail(self, correlation_id: str, error: Exception) -> None:
        call = self._pending.pop(correlation_id, None)
        if call is None:
            return
        call.stop_timer()
        call.deferred.errback(error)

    async def close(self) -> None:
        """
        Fail every call in flight and close the channel.
        """
        if self._closed is None:
            self._closed = ConnectionLost("Broker.close() was called")
        for correlation_id, call in list(self._pending.items()):
            self._fail(
                correlation_id,
                ConnectionLost(
                    f"Broker.close() was called while calling {self.service}.{call.method}; the request "
                    f"may or may not have been served, and its reply is lost"
                ),
            )
        current = self._channel.current()
        if current is not None:
            try:
                await current[0].close()
            except TxassError:
                pass


class RPCClient:
    """
    A caller of one service whose calls fire Deferreds with the results;
    L{Broker.rpc} creates it.

    RPC clients are cheap: every client of one service on one broker
    shares one channel and one reply destination.

    @ivar timeout: The timeout of a call that does not give its own, in
        seconds.
    """

    def __init__(self, caller: _Caller, timeout: float) -> None:
        self._caller = caller
        self.timeout = timeout

    @property
    def service(self) -> str:
        return self._caller.service

    @property
    def pending(self) -> int:
        """
        The number of calls of this service, over this broker connection,
        still waiting for their replies.
        """
        return self._caller.pending

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
            L{txass.errors.CallTimeout} when no reply came in time,
            L{txass.errors.ServiceNotFound} at once when the broker has no
            queue for the service, L{txass.errors.EncodingError} when
            C{data} or C{meta} cannot be encoded as JSON,
            L{txass.errors.ConnectionLost} when the connection or channel
            closed before the reply came (the request may have been
            served), and L{txass.errors.InvalidReply} when the reply is not
            a txass reply.
        @raise ValueError: if C{timeout} is not a number greater than 0.
        """
        seconds = self.timeout if timeout is None else check_timeout(timeout)
        try:
            body = _envelope.encode_request(method, data, meta)
        except Exception:
            return defer.fail()
        return self._caller.call(method, body, seconds)
