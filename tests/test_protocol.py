"""
Tests that call txass services over the wire format of docs/protocol.rst.

The callers here use plain pika (a BlockingConnection in a thread of the
reactor's pool, so the reactor keeps serving) and nothing from txass, as a
client written in another language would.  Every name, property and
envelope field they send or expect is spelled out from the document.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from twisted.internet import defer, threads
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial import unittest

import txass
from tests.support import (
    BROKER_URL,
    EVENT_TIMEOUT,
    Results,
    connect,
    remove_after,
    unique_name,
    within,
)

CONTENT_TYPE = "application/json"
PERSISTENT = 2
HEX_ID = re.compile(r"[0-9a-f]{32}\Z")
# AMQP reply codes a broker closes a channel with.
RESOURCE_LOCKED = 405
PRECONDITION_FAILED = 406

T = TypeVar("T")


@dataclass
class Received:
    """
    A message taken from a queue with pika.
    """

    queue: str
    exchange: str
    routing_key: str
    properties: pika.BasicProperties
    body: bytes

    def envelope(self) -> Any:
        return json.loads(self.body.decode("utf-8"))


def request_body(method: str, data: Any = None, meta: dict[str, Any] | None = None) -> bytes:
    """
    Encode a request envelope as the document describes it.
    """
    envelope = {"method": method, "data": data, "meta": meta if meta is not None else {}}
    return json.dumps(envelope).encode("utf-8")


def request_properties(method: str, **overrides: Any) -> dict[str, Any]:
    """
    Return the AMQP properties a caller sets on a request, as keyword
    arguments of C{pika.BasicProperties}.
    """
    message_id = uuid.uuid4().hex
    properties: dict[str, Any] = {
        "content_type": CONTENT_TYPE,
        "delivery_mode": PERSISTENT,
        "message_id": message_id,
        "correlation_id": message_id,
        "type": method,
    }
    properties.update(overrides)
    return properties


def with_channel(action: Callable[[BlockingChannel], T]) -> T:
    """
    Run C{action} on a channel of a new blocking connection, then close the
    connection.  Call it only from a thread.
    """
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:
        return action(connection.channel())
    finally:
        if connection.is_open:
            connection.close()


def in_thread(action: Callable[[BlockingChannel], T]) -> defer.Deferred[T]:
    """
    Run C{action} through L{with_channel} in the reactor's thread pool.
    """
    return within(threads.deferToThread(with_channel, action), EVENT_TIMEOUT + 10)


def call_with_pika(service: str, body: bytes, properties: dict[str, Any]) -> defer.Deferred[Received | None]:
    """
    Publish a request to C{service} with C{reply_to} naming an exclusive
    queue of the caller, and return the first reply, or L{None} if none
    arrives within L{EVENT_TIMEOUT} seconds.
    """

    def call(channel: BlockingChannel) -> Received | None:
        channel.confirm_delivery()
        reply_queue = channel.queue_declare(queue="", exclusive=True).method.queue
        channel.basic_publish(
            exchange=service,
            routing_key=service,
            body=body,
            properties=pika.BasicProperties(reply_to=reply_queue, **properties),
            mandatory=True,
        )
        for method, reply_properties, reply in channel.consume(reply_queue, inactivity_timeout=EVENT_TIMEOUT):
            if method is None:
                return None
            channel.basic_ack(method.delivery_tag)
            return Received(reply_queue, method.exchange, method.routing_key, reply_properties, reply)
        return None

    return in_thread(call)


def publish_with_pika(service: str, body: bytes, properties: dict[str, Any]) -> defer.Deferred[None]:
    """
    Publish a request to C{service} and wait for the broker's confirm.
    """

    def publish(channel: BlockingChannel) -> None:
        channel.confirm_delivery()
        channel.basic_publish(
            exchange=service,
            routing_key=service,
            body=body,
            properties=pika.BasicProperties(**properties),
            mandatory=True,
        )

    return in_thread(publish)


def ready_messages(queue: str) -> defer.Deferred[int]:
    """
    Return the number of messages ready for delivery in C{queue}.
    """
    return in_thread(lambda channel: channel.queue_declare(queue=queue, passive=True).method.message_count)


def declare_reply_code(queue: str, **options: Any) -> defer.Deferred[int | None]:
    """
    Declare C{queue} with C{options}.  Return the reply code the broker
    closed the channel with, or L{None} if it accepted the declaration.
    """

    def declare(channel: BlockingChannel) -> int | None:
        try:
            channel.queue_declare(queue=queue, **options)
        except pika.exceptions.ChannelClosedByBroker as e:
            return int(e.reply_code)
        return None

    return in_thread(declare)


class Calculator:
    """
    The handler of the services under test.
    """

    def identity(self, value: Any) -> Any:
        return value

    def double(self, value: Any) -> Any:
        return value * 2

    def fail(self, value: Any) -> Any:
        raise ValueError(f"cannot use {value!r}")

    def context(self, value: Any) -> dict[str, Any]:
        request = txass.current_request()
        return {
            "message_id": request.message_id,
            "correlation_id": request.correlation_id,
            "reply_to": request.reply_to,
            "headers": request.headers,
            "meta": request.meta,
        }

    def _private(self, value: Any) -> Any:
        return "private"


class ProtocolTestCase(unittest.TestCase):
    """
    Serves a fresh service with L{Calculator} for each test.
    """

    async def serve(
        self,
        handler: Any = Calculator,
        *,
        client_keys: tuple[str, ...] = (),
        send_tracebacks: bool = False,
    ) -> tuple[str, txass.Broker, txass.Server]:
        """
        Serve a new service and return its name, the broker connection and
        the server.  The service and the result queues of C{client_keys} are
        deleted after the test.
        """
        name = unique_name("protocol")
        remove_after(self, name, client_keys=client_keys)
        broker = await connect(self)
        server = await broker.service(name).react(handler, send_tracebacks=send_tracebacks)
        return name, broker, server


class CallTests(ProtocolTestCase):
    async def test_result_envelope(self) -> None:
        """
        When a request names a method, then the reply body is a result
        envelope with the request's method and meta.
        """
        name, _, _ = await self.serve()
        body = request_body("double", 21, {"trace": "t-1"})

        reply = await call_with_pika(name, body, request_properties("double"))

        assert reply is not None, "no reply arrived"
        self.assertEqual(reply.envelope(), {"method": "double", "result": 42, "meta": {"trace": "t-1"}})

    async def test_reply_properties(self) -> None:
        """
        When a server replies, then the reply carries the request's
        correlation id, a new message id, the JSON content type and
        persistent delivery, and nothing else.
        """
        name, _, _ = await self.serve()
        properties = request_properties("double", correlation_id="order-17")

        reply = await call_with_pika(name, request_body("double", 1), properties)

        assert reply is not None, "no reply arrived"
        self.assertEqual(reply.properties.correlation_id, "order-17")
        self.assertEqual(reply.properties.content_type, CONTENT_TYPE)
        self.assertEqual(reply.properties.delivery_mode, PERSISTENT)
        self.assertRegex(reply.properties.message_id, HEX_ID)
        self.assertNotEqual(reply.properties.message_id, properties["message_id"])
        self.assertIsNone(reply.properties.reply_to)
        self.assertIsNone(reply.properties.type)
        self.assertIsNone(reply.properties.headers)

    async def test_reply_routing(self) -> None:
        """
        When a server replies, then it publishes to the default exchange
        with the request's reply_to as routing key.
        """
        name, _, _ = await self.serve()

        reply = await call_with_pika(name, request_body("double", 1), request_properties("double"))

        assert reply is not None, "no reply arrived"
        self.assertEqual(reply.exchange, "")
        self.assertEqual(reply.routing_key, reply.queue)

    async def test_correlation_falls_back(self) -> None:
        """
        When a request has no correlation id, then the reply's correlation
        id is the request's message id.
        """
        name, _, _ = await self.serve()
        properties = request_properties("double", correlation_id=None)

        reply = await call_with_pika(name, request_body("double", 1), properties)

        assert reply is not None, "no reply arrived"
        self.assertEqual(reply.properties.correlation_id, properties["message_id"])

    async def test_handler_sees_properties(self) -> None:
        """
        When a request carries message id, correlation id, reply_to, headers
        and meta, then the handler receives each of them.
        """
        name, _, _ = await self.serve()
        properties = request_properties("context", correlation_id="c-9", headers={"tenant": "acme"})

        reply = await call_with_pika(name, request_body("context", None, {"user": 7}), properties)

        assert reply is not None, "no reply arrived"
        seen = reply.envelope()["result"]
        self.assertEqual(seen["message_id"], properties["message_id"])
        self.assertEqual(seen["correlation_id"], "c-9")
        self.assertEqual(seen["reply_to"], reply.routing_key)
        self.assertEqual(seen["headers"], {"tenant": "acme"})
        self.assertEqual(seen["meta"], {"user": 7})

    async def test_missing_fields_default(self) -> None:
        """
        When a request body has only a method, then data is null and meta
        is an empty object.
        """
        name, _, _ = await self.serve()

        data_reply = await call_with_pika(name, b'{"method":"identity"}', request_properties("identity"))
        meta_reply = await call_with_pika(name, b'{"method":"context"}', request_properties("context"))

        assert data_reply is not None, "no reply to identity"
        assert meta_reply is not None, "no reply to context"
        self.assertEqual(data_reply.envelope(), {"method": "identity", "result": None, "meta": {}})
        self.assertEqual(meta_reply.envelope()["result"]["meta"], {})

    async def test_utf8_body(self) -> None:
        """
        When data contains non-ASCII text, then the reply body carries it as
        UTF-8 without escapes.
        """
        name, _, _ = await self.serve()

        reply = await call_with_pika(name, request_body("double", "é"), request_properties("double"))

        assert reply is not None, "no reply arrived"
        self.assertIn("éé".encode("utf-8"), reply.body)
        self.assertEqual(reply.envelope()["result"], "éé")

    async def test_media_type_parameters(self) -> None:
        """
        When the content type differs in case or has parameters, then the
        request is still accepted as JSON.
        """
        name, _, _ = await self.serve()
        properties = request_properties("double", content_type="Application/JSON; charset=utf-8")

        reply = await call_with_pika(name, request_body("double", 2), properties)

        assert reply is not None, "no reply arrived"
        self.assertEqual(reply.envelope()["result"], 4)

    async def test_missing_content_type(self) -> None:
        """
        When a request has no content type, then it is read as JSON.
        """
        name, _, _ = await self.serve()
        properties = request_properties("double", content_type=None)

        reply = await call_with_pika(name, request_body("double", 3), properties)

        assert reply is not None, "no reply arrived"
        self.assertEqual(reply.envelope()["result"], 6)


class ErrorReplyTests(ProtocolTestCase):
    async def test_handler_raises(self) -> None:
        """
        When the handler raises, then the reply is an error envelope naming
        the exception type and message, without a traceback.
        """
        name, _, _ = await self.serve()
        properties = request_properties("fail")

        reply = await call_with_pika(name, request_body("fail", 5, {"trace": "t-2"}), properties)

        assert reply is not None, "no reply arrived"
        self.assertEqual(
            reply.envelope(),
            {
                "method": "fail",
                "error": {"type": "ValueError", "message": "cannot use 5", "traceback": None},
                "meta": {"trace": "t-2"},
            },
        )
        self.assertEqual(reply.properties.correlation_id, properties["correlation_id"])
        self.flushLoggedErrors(ValueError)

    async def test_traceback_sent(self) -> None:
        """
        When the server sends tracebacks, then the error's traceback is the
        Python traceback text.
        """
        name, _, _ = await self.serve(send_tracebacks=True)

        reply = await call_with_pika(name, request_body("fail", 5), request_properties("fail"))

        assert reply is not None, "no reply arrived"
        traceback = reply.envelope()["error"]["traceback"]
        self.assertTrue(traceback.startswith("Traceback (most recent call last):"), traceback)
        self.assertIn("ValueError: cannot use 5", traceback)
        self.flushLoggedErrors(ValueError)

    async def test_method_not_found(self) -> None:
        """
        When a request names a missing or private method, then the reply is
        a MethodNotFound error.
        """
        name, _, _ = await self.serve()

        for method in ["missing", "_private", "__init__"]:
            reply = await call_with_pika(name, request_body(method, 1), request_properties(method))

            assert reply is not None, f"no reply for {method!r}"
            envelope = reply.envelope()
            self.assertEqual(envelope["method"], method)
            self.assertEqual(envelope["error"]["type"], "MethodNotFound", envelope)

    async def test_attribute_not_callable(self) -> None:
        """
        When a request names an attribute that is not callable, then the
        reply is a MethodNotFound error.
        """
        name, _, _ = await self.serve({"limit": 10, "double": Calculator().double})

        reply = await call_with_pika(name, request_body("limit", 1), request_properties("limit"))

        assert reply is not None, "no reply arrived"
        self.assertEqual(reply.envelope()["error"]["type"], "MethodNotFound")

    async def test_non_json_body(self) -> None:
        """
        When a request body is not JSON, then the reply is an InvalidRequest
        error whose method is the request's type property and whose meta is
        empty.
        """
        name, _, _ = await self.serve()
        properties = request_properties("double")

        reply = await call_with_pika(name, b"double 21", properties)

        assert reply is not None, "no reply arrived"
        envelope = reply.envelope()
        self.assertEqual(envelope["method"], "double")
        self.assertEqual(envelope["meta"], {})
        self.assertEqual(envelope["error"]["type"], "InvalidRequest")
        self.assertIn("not valid JSON", envelope["error"]["message"])
        self.assertEqual(reply.properties.correlation_id, properties["correlation_id"])

    async def test_invalid_envelopes(self) -> None:
        """
        When a request cannot be decoded, then the reply is an InvalidRequest
        error, and the server logs one error with the request's message id.
        The cases: a body that is not UTF-8, empty, truncated JSON, not an
        object, without a method or with a meta that is not an object, and
        a content type that is not JSON.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        name, _, _ = await self.serve()
        cases = [
            (b"\xff\xfe", CONTENT_TYPE),
            (b"", CONTENT_TYPE),
            (b'{"method": "double", "data": [1, 2', CONTENT_TYPE),
            (b"[1, 2]", CONTENT_TYPE),
            (b'{"data": 1}', CONTENT_TYPE),
            (b'{"method": "", "data": 1}', CONTENT_TYPE),
            (b'{"method": 7}', CONTENT_TYPE),
            (b'{"method": "double", "meta": [1]}', CONTENT_TYPE),
            (request_body("double", 1), "text/plain"),
        ]

        for body, content_type in cases:
            properties = request_properties("double", content_type=content_type)
            reply = await call_with_pika(name, body, properties)

            assert reply is not None, f"no reply for {body!r} as {content_type}"
            self.assertEqual(reply.envelope()["error"]["type"], "InvalidRequest", (body, content_type))
            logged = [
                event
                for event in events
                if event.get("message_id") == properties["message_id"] and event.get("log_level") == LogLevel.error
            ]
            self.assertEqual(len(logged), 1, (body, content_type))

    async def test_invalid_request_acked(self) -> None:
        """
        When an invalid request got its error reply, then it is acknowledged:
        nothing is requeued when the server stops.
        """
        name, _, server = await self.serve()

        reply = await call_with_pika(name, b"not json", request_properties("double"))
        await server.stop()

        self.assertIsNotNone(reply)
        self.assertEqual(await ready_messages(name), 0)


class CastTests(ProtocolTestCase):
    async def test_cast_served_and_acked(self) -> None:
        """
        When a request has no reply_to, then the handler serves it and the
        request is acknowledged: nothing is requeued when the server stops.
        """
        received: list[Any] = []
        served: defer.Deferred[None] = defer.Deferred()

        def record(value: Any) -> None:
            received.append(value)
            served.callback(None)

        name, _, server = await self.serve({"record": record})

        await publish_with_pika(name, request_body("record", {"n": 1}), request_properties("record"))
        await within(served)
        await server.stop()

        self.assertEqual(received, [{"n": 1}])
        self.assertEqual(await ready_messages(name), 0)

    async def test_failing_cast_acked(self) -> None:
        """
        When the handler of a cast raises, then the request is still
        acknowledged.
        """
        failed: defer.Deferred[None] = defer.Deferred()

        def explode(value: Any) -> None:
            failed.callback(None)
            raise ValueError("no")

        name, _, server = await self.serve({"explode": explode})

        await publish_with_pika(name, request_body("explode"), request_properties("explode"))
        await within(failed)
        await server.stop()

        self.assertEqual(await ready_messages(name), 0)
        self.flushLoggedErrors(ValueError)

    async def test_unroutable_reply_acked(self) -> None:
        """
        When reply_to names no queue, then the request is still
        acknowledged.
        """
        served: defer.Deferred[None] = defer.Deferred()

        def record(value: Any) -> str:
            served.callback(None)
            return "lost"

        name, _, server = await self.serve({"record": record})
        properties = request_properties("record", reply_to=unique_name("nowhere"))

        await publish_with_pika(name, request_body("record"), properties)
        await within(served)
        await server.stop()

        self.assertEqual(await ready_messages(name), 0)


class ClientQueueTests(ProtocolTestCase):
    async def test_keyed_client_receives(self) -> None:
        """
        When a pika request names S.client.KEY as reply_to, then the txass
        client with that key receives the result in its callback.
        """
        name, broker, _ = await self.serve(client_keys=("web",))
        results = Results()
        # The dispatcher finds callbacks by static lookup, which does not see
        # the callbacks Results makes in __getattr__, so map the name here.
        await broker.service(name).client(key="web").react({"double": results.double})
        properties = request_properties("double", reply_to=f"{name}.client.web", correlation_id="k-1")

        await publish_with_pika(name, request_body("double", 8, {"page": 2}), properties)
        await results.wait_for(1)

        method, value, context = results.received[0]
        self.assertEqual(method, "double")
        self.assertEqual(value, 16)
        self.assertEqual(context.correlation_id, "k-1")
        self.assertEqual(context.meta, {"page": 2})

    async def test_keyed_queue_declaration(self) -> None:
        """
        When a caller declares S.client.KEY durable and not exclusive, then
        the broker accepts it as the queue the txass client declared, and
        rejects a non-durable declaration.
        """
        name = unique_name("protocol")
        remove_after(self, name, client_keys=["web"])
        broker = await connect(self)
        await broker.service(name).client(key="web").react(Results())
        queue = f"{name}.client.web"

        self.assertIsNone(await declare_reply_code(queue, durable=True, exclusive=False))
        self.assertEqual(await declare_reply_code(queue, durable=False), PRECONDITION_FAILED)

    async def test_temporary_queue_exclusive(self) -> None:
        """
        When a client has no key, then its result queue is named
        S.client.tmp-<32 hex digits> and other connections cannot use it.
        """
        name = unique_name("protocol")
        remove_after(self, name)
        broker = await connect(self)
        client = await broker.service(name).client().react(Results())

        self.assertRegex(client.queue, re.escape(f"{name}.client.tmp-") + "[0-9a-f]{32}\\Z")
        self.assertEqual(await declare_reply_code(client.queue, passive=True), RESOURCE_LOCKED)


class TopologyTests(ProtocolTestCase):
    async def test_service_declarations(self) -> None:
        """
        When a caller declares S as a durable direct exchange and S as a
        durable queue bound with key S, then the broker accepts each as the
        objects the server declared.
        """
        name, _, _ = await self.serve()

        # The broker closes the channel, and pika raises, on any mismatch.
        def declare(channel: BlockingChannel) -> None:
            channel.exchange_declare(exchange=name, exchange_type="direct", durable=True)
            channel.queue_declare(queue=name, durable=True, exclusive=False, auto_delete=False)
            channel.queue_bind(queue=name, exchange=name, routing_key=name)

        await in_thread(declare)

    async def test_other_declaration_rejected(self) -> None:
        """
        When a caller declares S with other arguments, then the broker
        closes its channel with PRECONDITION_FAILED.
        """
        name, _, _ = await self.serve()

        code = await declare_reply_code(name, durable=True, arguments={"x-max-length": 5})

        self.assertEqual(code, PRECONDITION_FAILED)

    async def test_request_from_txass(self) -> None:
        """
        When a txass client calls and casts, then the requests in queue S
        carry the documented envelope and properties.
        """
        name = unique_name("protocol")
        remove_after(self, name, client_keys=["web"])
        broker = await connect(self)
        client = broker.service(name).client(key="web")
        call_id = await client.call("double", {"x": 1}, meta={"trace": "t-3"})
        cast_id = await client.cast("record", [1])

        def take_two(channel: BlockingChannel) -> list[Received]:
            messages = []
            for _ in range(2):
                method, properties, body = channel.basic_get(queue=name, auto_ack=True)
                if method is not None:
                    messages.append(Received(name, method.exchange, method.routing_key, properties, body))
            return messages

        messages = await in_thread(take_two)

        self.assertEqual(len(messages), 2)
        call, cast = messages

        self.assertEqual((call.exchange, call.routing_key), (name, name))
        self.assertEqual(call.envelope(), {"method": "double", "data": {"x": 1}, "meta": {"trace": "t-3"}})
        self.assertEqual(call.properties.content_type, CONTENT_TYPE)
        self.assertEqual(call.properties.delivery_mode, PERSISTENT)
        self.assertEqual(call.properties.message_id, call_id)
        self.assertEqual(call.properties.correlation_id, call_id)
        self.assertEqual(call.properties.reply_to, f"{name}.client.web")
        self.assertEqual(call.properties.type, "double")
        self.assertIsNone(call.properties.headers)
        self.assertEqual(cast.envelope(), {"method": "record", "data": [1], "meta": {}})
        self.assertEqual(cast.properties.message_id, cast_id)
        self.assertIsNone(cast.properties.reply_to)


class PublisherChannelTests(ProtocolTestCase):
    async def test_reply_after_channel_error(self) -> None:
        """
        When another publisher on the server's connection had its channel
        closed by the broker, then the server still replies to requests.
        """
        name, broker, _ = await self.serve()
        other = unique_name("protocol-other")
        remove_after(self, other)
        client = broker.service(other).client()
        await client.call("double", 1)
        await in_thread(lambda channel: channel.exchange_delete(exchange=other))

        # Publishing to the deleted exchange makes the broker close the
        # channel with 404 NOT_FOUND.  The server publishes its replies on
        # the same channel, because one broker connection shares one.
        with self.assertRaises(txass.ChannelClosed):
            await within(client.call("double", 2))
        reply = await call_with_pika(name, request_body("double", 3), request_properties("double"))

        self.assertIsNotNone(reply, "no reply after the shared publisher channel closed")
