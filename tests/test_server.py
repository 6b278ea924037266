"""
Tests of the server's acknowledgement rules with in-memory channels.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txass import _envelope
from txass._connection import Delivery, MessageProperties
from txass._handler import make_dispatcher
from txass._server import Server
from txass._topology import Topology
from txass.errors import ChannelClosed, ConnectionLost, PublishFailed, UnroutableMessage


class FakeConsumer:
    """
    An in-memory consumer channel that records acks and rejects.
    """

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.on_delivery: Any = None
        self.cancelled = False
        self.closed = False
        self._closed: defer.Deferred[Exception] = defer.Deferred()
        # What the next send raises, if anything.
        self.publish_error: Exception | None = None

    async def consume(self, queue: str, on_delivery: Any, *, exclusive: bool = False, on_cancelled: Any = None) -> str:
        self.on_delivery = on_delivery
        return "tag-1"

    async def cancel(self, consumer_tag: str) -> None:
        self.cancelled = True

    async def set_prefetch(self, count: int) -> None:
        self.prefetch = count

    def ack(self, delivery_tag: int) -> None:
        self.events.append(("ack", delivery_tag))

    def reject(self, delivery_tag: int, *, requeue: bool) -> None:
        self.events.append(("requeue" if requeue else "reject", delivery_tag))

    async def close(self) -> None:
        self.closed = True

    def when_closed(self) -> defer.Deferred[Exception]:
        return self._closed

    def send(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: MessageProperties,
        *,
        mandatory: bool = False,
    ) -> None:
        # A channel without publisher confirms: publishing succeeds or fails
        # at once.
        if self.publish_error is not None:
            raise self.publish_error
        self.events.append(("reply", routing_key))


class FakePublisher:
    """
    An in-memory confirm channel whose confirms the test fires.
    """

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, MessageProperties, defer.Deferred[None]]] = []

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: MessageProperties,
        *,
        mandatory: bool = False,
    ) -> defer.Deferred[None]:
        confirm: defer.Deferred[None] = defer.Deferred()
        self.published.append((routing_key, body, properties, confirm))
        return confirm


def delivery(tag: int, method: str, data: Any = None, reply_to: str | None = "replies", body: bytes | None = None) -> Delivery:
    return Delivery(
        body=body if body is not None else _envelope.encode_request(method, data),
        delivery_tag=tag,
        redelivered=False,
        exchange="svc",
        routing_key="svc",
        properties=MessageProperties(
            content_type="application/json",
            message_id=f"m{tag}",
            correlation_id=f"m{tag}",
            reply_to=reply_to,
        ),
    )


class Handler:
    def __init__(self) -> None:
        self.pending: dict[Any, defer.Deferred[Any]] = {}
        self.ran: list[Any] = []

    def slow(self, key: Any) -> defer.Deferred[Any]:
        self.ran.append(key)
        d: defer.Deferred[Any] = defer.Deferred()
        self.pending[key] = d
        return d

    def quick(self, value: Any) -> Any:
        self.ran.append(value)
        return value


class ServerAckTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.consumer = FakeConsumer()
        self.publisher = FakePublisher()
        self.handler = Handler()
        self.clock = Clock()

        async def get_publisher() -> FakePublisher:
            return self.publisher

        self.server = Server(
            Topology.for_service("svc"),
            make_dispatcher(self.handler),
            broker=None,
            consumer=self.consumer,
            publisher=get_publisher,
            prefetch=10,
            grace=5.0,
            reactor=self.clock,
        )
        self.successResultOf(defer.Deferred.fromCoroutine(self.server.start()))

    def test_ack_after_confirm(self) -> None:
        """
        When a reply is published, then the request is acknowledged only
        after the broker confirmed the reply.
        """
        self.consumer.on_delivery(delivery(1, "quick", 5))
        self.assertEqual(len(self.publisher.published), 1)
        self.assertEqual(self.consumer.events, [])
        self.publisher.published[0][3].callback(None)
        self.assertEqual(self.consumer.events, [("ack", 1)])

    def test_reply_properties(self) -> None:
        """
        When a reply is published, then it is persistent JSON to the
        reply_to queue with the request's correlation id.
        """
        self.consumer.on_delivery(delivery(1, "quick", 5))
        routing_key, body, properties, _ = self.publisher.published[0]
        self.assertEqual(routing_key, "replies")
        self.assertEqual(properties.correlation_id, "m1")
        self.assertEqual(properties.delivery_mode, 2)
        self.assertEqual(properties.content_type, "application/json")
        self.assertEqual(_envelope.decode_reply(body, None).result, 5)

    def test_cast_acked_after_handler(self) -> None:
        """
        When a cast is handled, then it is acknowledged once the handler
        finished, and nothing is published.
        """
        self.consumer.on_delivery(delivery(1, "slow", "a", reply_to=None))
        self.assertEqual(self.consumer.events, [])
        self.handler.pending["a"].callback("done")
        self.assertEqual(self.consumer.events, [("ack", 1)])
        self.assertEqual(self.publisher.published, [])

    def test_unroutable_reply_acked(self) -> None:
        """
        When the reply queue does not exist, then the request is still
        acknowledged.
        """
        self.consumer.on_delivery(delivery(1, "quick", 5))
        self.publisher.published[0][3].errback(UnroutableMessage("", "replies"))
        self.assertEqual(self.consumer.events, [("ack", 1)])

    def test_connection_lost_before_confirm(self) -> None:
        """
        When the connection is lost before the reply is confirmed, then the
        request is not acknowledged, so the broker redelivers it.
        """
        self.consumer.on_delivery(delivery(1, "quick", 5))
        self.publisher.published[0][3].errback(ConnectionLost("gone"))
        self.assertEqual(self.consumer.events, [])
        self.assertEqual(len(self.publisher.published), 1)
        self.flushLoggedErrors()

    def test_reply_channel_closed_once(self) -> None:
        """
        When the broker closes the reply channel once, then the reply is
        published again and the request acknowledged after its confirm.
        """
        self.consumer.on_delivery(delivery(1, "quick", 5))
        self.publisher.published[0][3].errback(ChannelClosed(504, "CHANNEL_ERROR"))
        self.assertEqual(len(self.publisher.published), 2)
        self.assertEqual(self.publisher.published[1][1], self.publisher.published[0][1])
        self.publisher.published[1][3].callback(None)
        self.assertEqual(self.consumer.events, [("ack", 1)])

    def test_reply_channel_closed_twice(self) -> None:
        """
        When the reply cannot be published twice, for example because it is
        too large, then an error reply is sent instead and the request is
        acknowledged.
        """
        self.consumer.on_delivery(delivery(1, "quick", 5))
        for attempt in range(2):
            self.publisher.published[attempt][3].errback(ChannelClosed(406, "PRECONDITION_FAILED - message size"))
        reply = _envelope.decode_reply(self.publisher.published[2][1], None)
        assert reply.error is not None
        self.assertEqual(reply.error.type, "PublishFailed")
        self.assertIn("message size", reply.error.message)
        self.publisher.published[2][3].callback(None)
        self.assertEqual(self.consumer.events, [("ack", 1)])

    def test_no_reply_possible(self) -> None:
        """
        When neither the reply nor the error reply can be published, then
        the request is rejected without requeueing.
        """
        self.consumer.on_delivery(delivery(1, "quick", 5))
        for attempt in range(3):
            self.publisher.published[attempt][3].errback(ChannelClosed(406, "PRECONDITION_FAILED"))
        self.assertEqual(len(self.publisher.published), 3)
        self.assertEqual(self.consumer.events, [("reject", 1)])
        self.flushLoggedErrors()

    def test_nacked_reply_not_requeued(self) -> None:
        """
        When the broker nacks the reply, then it is dropped and the request
        acknowledged, so the request does not loop.
        """
        self.consumer.on_delivery(delivery(1, "quick", 5))
        self.publisher.published[0][3].errback(PublishFailed("nack"))
        self.assertEqual(self.consumer.events, [("ack", 1)])
        self.assertEqual(len(self.publisher.published), 1)

    def test_direct_reply_acknowledged_at_once(self) -> None:
        """
        When the reply goes to a direct reply-to destination, then it is
        published on the request's channel without waiting for a confirm,
        and the request is acknowledged right after it.
        """
        caller = "amq.rabbitmq.reply-to.caller-1"
        self.consumer.on_delivery(delivery(1, "quick", 5, reply_to=caller))
        self.assertEqual(self.consumer.events, [("reply", caller), ("ack", 1)])
        self.assertEqual(self.publisher.published, [])

    def test_direct_reply_channel_closed(self) -> None:
        """
        When the request's channel closed before its direct reply could be
        published, then the request is neither acknowledged nor rejected,
        since the broker delivers it again.
        """
        self.consumer.publish_error = ChannelClosed(504, "CHANNEL_ERROR")
        self.consumer.on_delivery(delivery(1, "quick", 5, reply_to="amq.rabbitmq.reply-to.caller-1"))
        self.assertEqual(self.consumer.events, [])
        self.assertEqual(self.publisher.published, [])

    def test_direct_reply_after_channel_replaced(self) -> None:
        """
        When the consumer's channel was replaced while the handler ran, then
        the direct reply is not sent on the new channel and the request is
        not acknowledged, since the broker delivers it again.
        """
        self.consumer.on_delivery(delivery(1, "slow", "a", reply_to="amq.rabbitmq.reply-to.caller-1"))
        self.server._generation += 1
        self.handler.pending["a"].callback("done")
        self.assertEqual(self.consumer.events, [])
        self.assertEqual(self.publisher.published, [])

    def test_invalid_request_error_reply(self) -> None:
        """
        When the body is not an envelope, then an InvalidRequest error reply
        is sent and the request is acknowledged after its confirm.
        """
        self.consumer.on_delivery(delivery(1, "quick", body=b"garbage"))
        reply = _envelope.decode_reply(self.publisher.published[0][1], None)
        assert reply.error is not None
        self.assertEqual(reply.error.type, "InvalidRequest")
        self.publisher.published[0][3].callback(None)
        self.assertEqual(self.consumer.events, [("ack", 1)])

    def test_stop_waits_for_in_flight(self) -> None:
        """
        When the server stops with a request in flight, then it cancels its
        consumer, lets the request finish and acknowledges it before closing.
        """
        self.consumer.on_delivery(delivery(1, "slow", "a", reply_to=None))
        stopped = self.server.stop()
        self.assertTrue(self.consumer.cancelled)
        self.assertNoResult(stopped)
        self.handler.pending["a"].callback(None)
        self.successResultOf(stopped)
        self.assertEqual(self.consumer.events, [("ack", 1)])
        self.assertTrue(self.consumer.closed)

    def test_delivery_while_draining_given_back(self) -> None:
        """
        When a request arrives while the server drains, then an unchanged
        copy goes back to the service queue, the request is acknowledged
        once the copy is confirmed, and its handler does not run.  So the
        request does not come back redelivered, counting an attempt.
        """
        self.consumer.on_delivery(delivery(1, "slow", "a", reply_to=None))
        self.server.stop()
        self.consumer.on_delivery(delivery(2, "quick", "b"))
        routing_key, body, properties, confirm = self.publisher.published[-1]
        self.assertEqual(routing_key, "svc")
        self.assertEqual(body, delivery(2, "quick", "b").body)
        self.assertEqual((properties.message_id, properties.reply_to), ("m2", "replies"))
        self.assertEqual(self.consumer.events, [])
        confirm.callback(None)
        self.assertEqual(self.consumer.events, [("ack", 2)])
        self.assertEqual(self.handler.ran, ["a"])
        self.handler.pending["a"].callback(None)

    def test_delivery_while_draining_requeued(self) -> None:
        """
        When a request arrives while the server drains and its copy cannot
        be published, then it is requeued instead.
        """
        self.consumer.on_delivery(delivery(1, "slow", "a", reply_to=None))
        self.server.stop()
        self.consumer.on_delivery(delivery(2, "quick", "b"))
        self.publisher.published[-1][3].errback(ChannelClosed(406, "PRECONDITION_FAILED"))
        self.publisher.published[-1][3].errback(ChannelClosed(406, "PRECONDITION_FAILED"))
        self.assertEqual(self.consumer.events, [("requeue", 2)])
        self.assertEqual(self.handler.ran, ["a"])
        self.handler.pending["a"].callback(None)
        self.flushLoggedErrors()

    def test_grace_expiry_requeues(self) -> None:
        """
        When a request is still running after the grace period, then it is
        requeued, and it is not acknowledged when it finishes later.
        """
        self.consumer.on_delivery(delivery(1, "slow", "a", reply_to=None))
        stopped = self.server.stop()
        self.clock.advance(4.9)
        self.assertNoResult(stopped)
        self.clock.advance(0.2)
        self.successResultOf(stopped)
        self.assertEqual(self.consumer.events, [("requeue", 1)])
        self.handler.pending["a"].callback(None)
        self.assertEqual(self.consumer.events, [("requeue", 1)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_no_reply_after_grace(self) -> None:
        """
        When a call finishes after its request was requeued at the end of
        the grace period, then no reply is published, since the request will
        be served again.
        """
        self.consumer.on_delivery(delivery(1, "slow", "a"))
        self.server.stop()
        self.clock.advance(5.1)
        self.handler.pending["a"].callback("late")
        self.assertEqual(self.publisher.published, [])
        self.assertEqual(self.consumer.events, [("requeue", 1)])

    def test_unexpected_failure_rejects(self) -> None:
        """
        When serving fails inside txass itself, then the request is rejected
        without requeueing, so it cannot block the server.
        """

        def broken(*args: Any, **kwargs: Any) -> defer.Deferred[None]:
            raise RuntimeError("publisher broken")

        self.publisher.publish = broken  # type: ignore[method-assign]
        self.consumer.on_delivery(delivery(1, "quick", 5))
        self.assertEqual(self.consumer.events, [("reject", 1)])
        self.assertEqual(self.server.in_flight, 0)
        self.flushLoggedErrors(RuntimeError)
