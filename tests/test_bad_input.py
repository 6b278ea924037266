"""
Tests of what a server does with bad input, and of how it shuts down.

Bad input: a request that cannot be decoded gets an C{InvalidRequest} or
C{RequestTooLarge} error reply, is acknowledged (never requeued) and is
logged once with its message id, and the server goes on consuming.  A
result that JSON cannot hold becomes an C{EncodingError} reply.  Unicode
text and bodies of many AMQP frames come back unchanged.

Shutdown: C{Server.stop()} and SIGTERM to C{twistd ass} stop consuming, let
the requests in flight finish within the grace period, requeue the rest and
the requests that arrive meanwhile, and close the channels and the
connection.

Bad requests are published on a raw channel, as a client in another
language would send them.  docs/protocol.rst and docs/delivery.rst describe
the behaviour checked here.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, cast

from twisted.internet import defer, error, protocol, reactor, task
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest

import txass
from tests import support
from tests.broker_node import BrokerNode, shared_node
from tests.stages import holding
from tests.support import (
    BROKER_URL,
    EVENT_TIMEOUT,
    Results,
    connect,
    message_count,
    raw_channel,
    remove_after,
    unique_name,
    wait_until,
    within,
)
from txass import _envelope
from txass._connection import AMQPChannel, Delivery, MessageProperties, open_connection, parse_url
from txass._handler import make_dispatcher
from txass._server import Server
from txass._topology import Topology

JSON = "application/json"
PERSISTENT = 2

# The smallest frame size AMQP 0-9-1 allows.  A body frame carries the
# frame size less 8 bytes of frame header and end marker.
SMALL_FRAME_MAX = 4096
BODY_FRAME_PAYLOAD = SMALL_FRAME_MAX - 8

# Seconds by which the reactor's clock and time.monotonic() may disagree
# when a test measures how long a grace period lasted.
CLOCK_SLACK = 0.1

# Text that JSON, UTF-8 and AMQP must all carry unchanged: several scripts,
# a combining accent, characters outside the Basic Multilingual Plane,
# control characters that JSON escapes, the line and paragraph separators,
# a byte order mark, noncharacters, quotes and backslashes.
TRICKY_TEXT = (
    "grüße, 日本語, שלום, e\u0301, 🐇\U0001f600\U0010fffd, "
    "\u0000\u001f\u007f, \u2028\u2029, \ufeff, \ufffd\uffff, \"quoted\" \\ /"
)


def request_body(method: str, data: Any = None, meta: dict[str, Any] | None = None) -> bytes:
    """
    Encode a request envelope as a client in another language would.
    """
    envelope = {"method": method, "data": data, "meta": meta if meta is not None else {}}
    return json.dumps(envelope, ensure_ascii=False).encode("utf-8")


def body_of_size(size: int, method: str = "echo") -> tuple[bytes, str]:
    """
    Return a request body of exactly C{size} bytes whose data is a string of
    C{x}, and that string.
    """
    prefix = f'{{"method":"{method}","data":"'.encode()
    suffix = b'"}'
    text = "x" * (size - len(prefix) - len(suffix))
    body = prefix + text.encode() + suffix
    assert len(body) == size, (len(body), size)
    return body, text


def every_scalar_value() -> str:
    """
    Return a string of every Unicode scalar value: each code point except
    the surrogates, 4,382,592 bytes in UTF-8.
    """
    return "".join(chr(code) for code in range(0x110000) if not 0xD800 <= code <= 0xDFFF)


def fingerprint(data: bytes) -> str:
    """
    Return the size and SHA-256 digest of C{data}, so that a failed check of
    a large body prints one short line.
    """
    return f"{len(data)} bytes, SHA-256 {hashlib.sha256(data).hexdigest()}"


def url_with_frame_max(frame_max: int) -> str:
    separator = "&" if "?" in BROKER_URL else "?"
    return f"{BROKER_URL}{separator}frame_max={frame_max}"


class LogCapture:
    """
    Collects every event of the global log publisher during one test.
    """

    def __init__(self, testcase: unittest.SynchronousTestCase) -> None:
        self.events: list[dict[str, Any]] = []
        # The publisher calls any callable, without checking the interface.
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        testcase.addCleanup(globalLogPublisher.removeObserver, observer)

    def about(self, message_id: str) -> list[dict[str, Any]]:
        """
        Return the events whose C{message_id} field is C{message_id}.
        """
        return [event for event in self.events if event.get("message_id") == message_id]

    def containing(self, text: str) -> list[str]:
        """
        Return the formatted events that contain C{text}.
        """
        formatted = [formatEvent(event) for event in self.events]
        return [line for line in formatted if text in line]


class RawCaller:
    """
    A caller that publishes requests on a channel with publisher confirms
    and collects the replies sent to an exclusive queue of its own, using
    no txass client.

    @ivar replies: Every reply received, by correlation id.
    """

    def __init__(self, channel: AMQPChannel, reply_queue: str) -> None:
        self._channel = channel
        self.reply_queue = reply_queue
        self.replies: dict[str, list[Delivery]] = {}
        self._waiters: dict[str, list[defer.Deferred[Delivery]]] = {}

    @classmethod
    async def open(cls, testcase: unittest.TestCase, url: str = BROKER_URL) -> RawCaller:
        """
        Open a caller on a connection of its own, closed after the test.
        The broker deletes the reply queue with that connection.
        """
        connection = await open_connection(parse_url(url), reactor)
        testcase.addCleanup(connection.close)
        channel = await connection.channel()
        await channel.enable_confirms()
        reply_queue = unique_name("replies")
        await channel.declare_queue(reply_queue, durable=False, exclusive=True)
        caller = cls(channel, reply_queue)
        await channel.consume(reply_queue, caller._received, auto_ack=True)
        return caller

    def _received(self, delivery: Delivery) -> None:
        correlation_id = delivery.properties.correlation_id or ""
        self.replies.setdefault(correlation_id, []).append(delivery)
        for waiter in self._waiters.pop(correlation_id, []):
            waiter.callback(delivery)

    async def publish(
        self,
        service: str,
        body: bytes,
        *,
        method: str | None = "echo",
        content_type: str | None = JSON,
        reply: bool = True,
    ) -> str:
        """
        Publish a request to C{service} and wait for the broker's confirm.

        @param method: The C{type} property, which names the method of the
            error reply to a request that cannot be decoded.
        @param reply: Whether to ask for a reply; without one the request
            is a cast.
        @return: The request's message id, which is also its correlation id.
        """
        message_id = uuid.uuid4().hex
        properties = MessageProperties(
            content_type=content_type,
            delivery_mode=PERSISTENT,
            message_id=message_id,
            correlation_id=message_id,
            reply_to=self.reply_queue if reply else None,
            type=method,
        )
        await within(self._channel.publish(service, service, body, properties, mandatory=True), EVENT_TIMEOUT + 30)
        return message_id

    def reply(self, correlation_id: str, seconds: float = EVENT_TIMEOUT) -> defer.Deferred[Delivery]:
        """
        Return a Deferred firing with the first reply to C{correlation_id}.
        """
        if correlation_id in self.replies:
            return defer.succeed(self.replies[correlation_id][0])
        d: defer.Deferred[Delivery] = defer.Deferred()
        self._waiters.setdefault(correlation_id, []).append(d)
        return within(d, seconds)

    async def envelope(self, correlation_id: str, seconds: float = EVENT_TIMEOUT) -> Any:
        """
        Wait for the reply to C{correlation_id} and return its decoded body.
        """
        delivery = await self.reply(correlation_id, seconds)
        return json.loads(delivery.body.decode("utf-8"))


class Echo:
    """
    The handler of the bad input tests; it records what it serves.
    """

    def __init__(self) -> None:
        self.served: list[Any] = []

    def echo(self, value: Any) -> Any:
        self.served.append(value)
        return value

    def fail(self, text: str) -> Any:
        raise ValueError(text)

    def unencodable(self, kind: str) -> Any:
        return UNENCODABLE_RESULTS[kind]()

    async def unencodable_later(self, kind: str) -> Any:
        await task.deferLater(reactor, 0, lambda: None)
        return UNENCODABLE_RESULTS[kind]()

    def unprintable(self, value: Any) -> Any:
        raise UnprintableError()


class UnprintableError(Exception):
    """
    An exception whose message cannot be rendered as text.
    """

    def __str__(self) -> str:
        raise RuntimeError("this exception has no text")


def _circular() -> list[Any]:
    value: list[Any] = []
    value.append(value)
    return value


# Results that JSON cannot hold, keyed by the name a request passes as data.
UNENCODABLE_RESULTS: dict[str, Callable[[], Any]] = {
    "set": lambda: {1, 2},
    "object": object,
    "bytes": lambda: b"raw bytes",
    "NaN": lambda: float("nan"),
    "infinity": lambda: float("inf"),
    "circular list": _circular,
    "tuple key": lambda: {(1, 2): "pair"},
    "int of 5000 digits": lambda: 10**5000,
    "generator": lambda: (number for number in range(3)),
    "set inside a list": lambda: [1, {"nested": {3}}],
}


class ServedTestCase(unittest.TestCase):
    """
    Serves a fresh service on the shared broker for each test.
    """

    async def serve(self, handler: Any, url: str = BROKER_URL, **options: Any) -> tuple[txass.Broker, str, txass.Server]:
        """
        Serve a new service, with prefetch 1 unless C{options} set another,
        so that a request left unacknowledged holds back every later one.
        """
        name = unique_name("bad-input")
        remove_after(self, name, queues=[Topology.for_service(name).dead_letter_queue])
        broker = await txass.connect(url)
        self.addCleanup(broker.close)
        options.setdefault("prefetch", 1)
        server = await broker.service(name).react(handler, **options)
        return broker, name, server

    def assert_logged_once(self, log: LogCapture, message_id: str) -> None:
        """
        Check that exactly one event names C{message_id}: an error whose
        text contains the message id.
        """
        events = log.about(message_id)
        self.assertEqual(len(events), 1, [formatEvent(event) for event in events])
        self.assertEqual(events[0]["log_level"], LogLevel.error)
        self.assertIn(message_id, formatEvent(events[0]))


# A case of bad input: the body, its content type, and a text the error
# message must contain.
BadCase = tuple[bytes, str | None, str]


class BadRequestTests(ServedTestCase):
    """
    Requests that cannot be decoded, on the real broker.
    """

    async def check_rejected(self, cases: list[BadCase], error_type: str = "InvalidRequest", **options: Any) -> None:
        """
        Publish each case and check that it gets an error reply of
        C{error_type} naming the problem, is logged once with its message
        id, and is acknowledged: a good request sent after them is served
        with prefetch 1, and nothing is left in the queue once the server
        stopped.
        """
        log = LogCapture(self)
        handler = Echo()
        _, name, server = await self.serve(handler, **options)
        caller = await RawCaller.open(self)
        message_ids = []

        for body, content_type, expected_text in cases:
            case = (body[:80], content_type)
            message_id = await caller.publish(name, body, content_type=content_type)
            message_ids.append(message_id)
            envelope = await caller.envelope(message_id)

            self.assertEqual(set(envelope), {"method", "error", "meta"}, case)
            self.assertEqual(envelope["method"], "echo", case)
            self.assertEqual(envelope["meta"], {}, case)
            self.assertEqual(envelope["error"]["type"], error_type, case)
            self.assertIn(expected_text, envelope["error"]["message"], case)
            self.assertIsNone(envelope["error"]["traceback"], case)
            self.assert_logged_once(log, message_id)

        good = await caller.publish(name, request_body("echo", "after"))
        self.assertEqual((await caller.envelope(good))["result"], "after")
        await within(server.stop())

        self.assertEqual(await message_count(self, name), 0)
        self.assertEqual(handler.served, ["after"])
        for message_id in message_ids:
            self.assertEqual(len(caller.replies[message_id]), 1, message_id)
            self.assert_logged_once(log, message_id)

    async def test_body_not_json(self) -> None:
        """
        When a body is text that is not JSON, then the error message reports
        that it is not valid JSON.
        """
        await self.check_rejected(
            [
                (b"echo 21", JSON, "not valid JSON"),
                (b"<request method='echo'/>", JSON, "not valid JSON"),
                (b"{'method': 'echo'}", JSON, "not valid JSON"),
                (b'{"method": "echo",}', JSON, "not valid JSON"),
                (b'{"method": "echo"} {"method": "echo"}', JSON, "not valid JSON"),
                ("\ufeff".encode() + request_body("echo", 1), JSON, "not valid JSON"),
            ]
        )

    async def test_truncated_json(self) -> None:
        """
        When a JSON body is cut short, then the error message reports that it
        is not valid JSON.
        """
        await self.check_rejected(
            [
                (b'{"method": "echo", "data": [1, 2', JSON, "not valid JSON"),
                (b'{"method": "ec', JSON, "not valid JSON"),
                (b"{", JSON, "not valid JSON"),
                (request_body("echo", "x" * 100_000)[:-2], JSON, "not valid JSON"),
                (b"[" * 100_000, JSON, "not valid JSON"),
            ]
        )

    async def test_json_not_envelope(self) -> None:
        """
        When a body is JSON but not an object, then the error message reports
        that an object was expected.
        """
        await self.check_rejected(
            [
                (b"[1, 2]", JSON, "expected an object"),
                (b'"echo"', JSON, "expected an object"),
                (b"42", JSON, "expected an object"),
                (b"null", JSON, "expected an object"),
                (b"true", JSON, "expected an object"),
                (b'[{"method": "echo"}]', JSON, "expected an object"),
            ]
        )

    async def test_method_missing_or_not_string(self) -> None:
        """
        When the envelope has no method, or one that is not a non-empty
        string, then the reply names the method field.
        """
        expected = "field 'method' must be a non-empty string"
        await self.check_rejected(
            [
                (b"{}", JSON, expected),
                (b'{"data": 1}', JSON, expected),
                (b'{"method": null}', JSON, expected),
                (b'{"method": 7}', JSON, expected),
                (b'{"method": ["echo"]}', JSON, expected),
                (b'{"method": {"name": "echo"}}', JSON, expected),
                (b'{"method": true}', JSON, expected),
                (b'{"method": ""}', JSON, expected),
            ]
        )

    async def test_body_not_utf8(self) -> None:
        """
        When a body is not valid UTF-8, then the error message reports that.
        """
        await self.check_rejected(
            [
                (b"\xff\xfe", JSON, "not valid UTF-8"),
                ('{"method": "echo", "data": "café"}'.encode("latin-1"), JSON, "not valid UTF-8"),
                ('{"method": "echo"}'.encode("utf-16"), JSON, "not valid UTF-8"),
                # A surrogate, an overlong "/" and a sequence cut short.
                (b'{"method": "echo", "data": "\xed\xa0\x80"}', JSON, "not valid UTF-8"),
                (b'{"method": "echo", "data": "\xc0\xaf"}', JSON, "not valid UTF-8"),
                (b'{"method": "echo", "data": "\xe6\x97"}', JSON, "not valid UTF-8"),
            ]
        )

    async def test_empty_body(self) -> None:
        """
        When a body is empty, with or without a content type, then the error
        message reports that it is empty.
        """
        await self.check_rejected([(b"", JSON, "body is empty"), (b"", None, "body is empty")])

    async def test_content_type_rejected(self) -> None:
        """
        When a request has a content type other than JSON, then the reply
        names that content type, even though the body is a valid envelope.
        """
        body = request_body("echo", 1)
        cases: list[BadCase] = [
            (body, content_type, f"content type {content_type!r}; only 'application/json' is accepted")
            for content_type in [
                "text/plain",
                "application/octet-stream",
                "application/x-pickle",
                "application/json-seq",
                "application/msgpack",
            ]
        ]
        await self.check_rejected(cases)

    async def test_body_too_large(self) -> None:
        """
        When a body is larger than the maximum request size, then the reply
        is RequestTooLarge naming both sizes, whether or not the body is
        JSON.
        """
        maximum = 1000
        valid, _ = body_of_size(maximum + 1)
        expected = f"request body of {maximum + 1} bytes is larger than the maximum of {maximum} bytes"
        await self.check_rejected(
            [
                (valid, JSON, expected),
                (b"x" * (maximum + 1), JSON, expected),
                (b"x" * (maximum + 1), "text/plain", expected),
                (body_of_size(3 * 1024 * 1024)[0], JSON, "request body of 3145728 bytes"),
            ],
            error_type="RequestTooLarge",
            max_request_size=maximum,
        )

    async def test_body_of_maximum_size_served(self) -> None:
        """
        When a body is exactly the maximum request size, then it is served.
        """
        maximum = 1000
        handler = Echo()
        _, name, _ = await self.serve(handler, max_request_size=maximum)
        caller = await RawCaller.open(self)
        body, text = body_of_size(maximum)

        message_id = await caller.publish(name, body)

        self.assertEqual((await caller.envelope(message_id))["result"], text)

    async def test_bad_casts_acked_and_logged(self) -> None:
        """
        When requests without reply_to cannot be decoded, then each is
        logged once with its message id and acknowledged.
        """
        log = LogCapture(self)
        handler = Echo()
        _, name, server = await self.serve(handler, max_request_size=1000)
        caller = await RawCaller.open(self)
        bodies = [b"not json", b"", b"[1]", b'{"data": 1}', b"\xff", b"x" * 1001]

        message_ids = [await caller.publish(name, body, reply=False) for body in bodies]
        text_id = await caller.publish(name, request_body("echo", 1), content_type="text/plain", reply=False)
        # Deliveries keep their order, and prefetch is 1, so this reply
        # means the server settled every cast before it.
        good = await caller.publish(name, request_body("echo", "after"))
        await caller.envelope(good)
        await within(server.stop())

        self.assertEqual(await message_count(self, name), 0)
        self.assertEqual(handler.served, ["after"])
        for message_id in message_ids + [text_id]:
            self.assert_logged_once(log, message_id)
            self.assertNotIn(message_id, caller.replies)


class UnencodableResultTests(ServedTestCase):
    """
    Results and meta that JSON cannot hold, on the real broker.
    """

    async def test_unencodable_results(self) -> None:
        """
        When a handler returns or resolves to a value JSON cannot hold,
        then the caller gets an EncodingError reply with the request's
        method and meta, the error is logged once with the message id, and
        the request is acknowledged.
        """
        log = LogCapture(self)
        handler = Echo()
        _, name, server = await self.serve(handler)
        caller = await RawCaller.open(self)
        message_ids = []

        for method in ["unencodable", "unencodable_later"]:
            for kind in UNENCODABLE_RESULTS:
                case = (method, kind)
                body = request_body(method, kind, {"trace": "t-1"})
                message_id = await caller.publish(name, body, method=method)
                message_ids.append(message_id)
                envelope = await caller.envelope(message_id)

                self.assertEqual(envelope["method"], method, case)
                self.assertEqual(envelope["meta"], {"trace": "t-1"}, case)
                self.assertNotIn("result", envelope, case)
                self.assertEqual(envelope["error"]["type"], "EncodingError", case)
                self.assertIn("cannot be encoded as JSON", envelope["error"]["message"], case)
                self.assert_logged_once(log, message_id)

        good = await caller.publish(name, request_body("echo", "after"))
        self.assertEqual((await caller.envelope(good))["result"], "after")
        await within(server.stop())

        self.assertEqual(await message_count(self, name), 0)
        for message_id in message_ids:
            self.assertEqual(len(caller.replies[message_id]), 1)

    async def test_unencodable_meta(self) -> None:
        """
        When a request's meta contains NaN, which the server decodes but cannot
        encode again, then the caller gets an EncodingError reply with
        empty meta.
        """
        _, name, _ = await self.serve(Echo())
        caller = await RawCaller.open(self)

        message_id = await caller.publish(name, b'{"method": "echo", "data": 1, "meta": {"limit": NaN}}')
        envelope = await caller.envelope(message_id)

        self.assertEqual(envelope["method"], "echo")
        self.assertEqual(envelope["meta"], {})
        self.assertEqual(envelope["error"]["type"], "EncodingError")

    async def test_unprintable_exception(self) -> None:
        """
        When a handler raises an exception whose str() raises, then the
        caller still gets an error reply naming the exception type, and the
        request is acknowledged.
        """
        log = LogCapture(self)
        handler = Echo()
        _, name, server = await self.serve(handler)
        caller = await RawCaller.open(self)

        message_id = await caller.publish(name, request_body("unprintable", 1), method="unprintable")
        envelope = await caller.envelope(message_id)
        good = await caller.publish(name, request_body("echo", "after"))
        await caller.envelope(good)
        await within(server.stop())

        self.assertEqual(envelope["method"], "unprintable")
        self.assertEqual(envelope["error"]["type"], "UnprintableError")
        self.assertEqual(await message_count(self, name), 0)
        self.assertNotEqual(log.about(message_id), [])
        self.flushLoggedErrors(UnprintableError, RuntimeError)


class UnicodeTests(ServedTestCase):
    """
    Text outside ASCII in every field of a request and its reply.
    """

    async def test_method_names(self) -> None:
        """
        When requests name methods outside ASCII, up to the 255 bytes of
        the type property, then each reply carries the method name, result
        and meta unchanged.  A longer name gets an InvalidRequest error.
        """
        long_name = "ü" * 127
        names = ["grüßen", "日本語", "🐇", "e\u0301", "שלום", "\u00e9\u200d\U0001f600", long_name]
        handler = {name: (lambda value, name=name: [name, value]) for name in names}
        _, name, _ = await self.serve(handler)
        caller = await RawCaller.open(self)

        for method in names:
            meta = {"méthode": method}
            body = request_body(method, TRICKY_TEXT, meta)
            message_id = await caller.publish(name, body, method=method)
            envelope = await caller.envelope(message_id)

            self.assertEqual(envelope, {"method": method, "result": [method, TRICKY_TEXT], "meta": meta})

        too_long = "ü" * 128
        message_id = await caller.publish(name, request_body(too_long, None, {}), method=None)
        envelope = await caller.envelope(message_id)
        self.assertEqual(envelope["error"]["type"], "InvalidRequest")
        self.assertIn("256 bytes", envelope["error"]["message"])

    async def test_missing_unicode_method(self) -> None:
        """
        When a request names a missing method outside ASCII, then the
        MethodNotFound reply carries that name in its method and message.
        """
        _, name, _ = await self.serve({"echo": lambda value: value})
        caller = await RawCaller.open(self)

        message_id = await caller.publish(name, request_body("grüßen🐇", 1), method="grüßen🐇")
        envelope = await caller.envelope(message_id)

        self.assertEqual(envelope["method"], "grüßen🐇")
        self.assertEqual(envelope["error"]["type"], "MethodNotFound")
        self.assertIn("grüßen🐇", envelope["error"]["message"])

    async def test_data_and_meta(self) -> None:
        """
        When data and meta hold text outside ASCII, in keys and values,
        then the reply returns them unchanged, written as raw UTF-8.
        """
        _, name, _ = await self.serve(Echo())
        caller = await RawCaller.open(self)
        data = {TRICKY_TEXT: [TRICKY_TEXT, {"ключ": "значение"}]}
        meta = {TRICKY_TEXT: TRICKY_TEXT, "trace": "日本語"}

        message_id = await caller.publish(name, request_body("echo", data, meta))
        reply = await caller.reply(message_id)

        self.assertEqual(json.loads(reply.body.decode("utf-8")), {"method": "echo", "result": data, "meta": meta})
        self.assertIn("日本語".encode(), reply.body)

    async def test_error_message(self) -> None:
        """
        When a handler raises with a message outside ASCII, then the error
        reply carries the message unchanged.
        """
        _, name, _ = await self.serve(Echo())
        caller = await RawCaller.open(self)

        message_id = await caller.publish(name, request_body("fail", TRICKY_TEXT, {"trace": "ü"}), method="fail")
        envelope = await caller.envelope(message_id)

        self.assertEqual(
            envelope,
            {
                "method": "fail",
                "error": {"type": "ValueError", "message": TRICKY_TEXT, "traceback": None},
                "meta": {"trace": "ü"},
            },
        )
        self.flushLoggedErrors(ValueError)

    async def test_invalid_request_type_property(self) -> None:
        """
        When a request that cannot be decoded has a type property outside
        ASCII, then the error reply's method is that text.
        """
        _, name, _ = await self.serve(Echo())
        caller = await RawCaller.open(self)

        message_id = await caller.publish(name, b"not json", method="grüßen 🐇")
        envelope = await caller.envelope(message_id)

        self.assertEqual(envelope["method"], "grüßen 🐇")
        self.assertEqual(envelope["error"]["type"], "InvalidRequest")

    async def test_txass_client(self) -> None:
        """
        When a txass client calls a method named outside ASCII, then the
        callback of that name receives the result and the meta unchanged.
        """
        broker, name, _ = await self.serve({"grüßen": lambda value: f"grüß dich, {value}"})
        results = Results()
        client = await broker.service(name).client().react(results)

        await client.call("grüßen", TRICKY_TEXT, meta={"ключ": TRICKY_TEXT})
        await results.wait_for(1)
        [(method, value, context)] = results.received

        self.assertEqual(method, "grüßen")
        self.assertEqual(value, f"grüß dich, {TRICKY_TEXT}")
        self.assertEqual(context.meta, {"ключ": TRICKY_TEXT})


class BodySizeTests(ServedTestCase):
    """
    Bodies from none to several MiB, over connections with the smallest
    frame size so that a large body spans many frames.
    """

    timeout = 120

    async def serve_small_frames(self) -> tuple[txass.Broker, str]:
        broker, name, _ = await self.serve(Echo(), url_with_frame_max(SMALL_FRAME_MAX))
        # Checks that the broker agreed to the frame size, so the bodies
        # below do span many frames.
        self.assertEqual(broker._connection._protocol._impl.params.frame_max, SMALL_FRAME_MAX)
        return broker, name

    async def test_frame_boundaries(self) -> None:
        """
        When request bodies are one byte short of, exactly, or one byte
        over one or two body frames, then each result is the data sent.
        """
        _, name = await self.serve_small_frames()
        caller = await RawCaller.open(self, url_with_frame_max(SMALL_FRAME_MAX))
        sizes = [BODY_FRAME_PAYLOAD + offset for offset in (-1, 0, 1)]
        sizes += [2 * BODY_FRAME_PAYLOAD + offset for offset in (-1, 0, 1)]

        for size in sizes:
            body, text = body_of_size(size)
            message_id = await caller.publish(name, body)
            envelope = await caller.envelope(message_id)

            self.assertEqual(envelope, {"method": "echo", "result": text, "meta": {}}, size)

    async def test_several_mib_round_trip(self) -> None:
        """
        When a txass client sends data from an empty string to several MiB,
        including every Unicode scalar value, then each result is equal to
        the data sent.
        """
        broker, name = await self.serve_small_frames()
        results = Results()
        client = await broker.service(name).client().react(results)
        values: list[Any] = [
            "",
            "a",
            [],
            {},
            every_scalar_value(),
            "x" * (3 * 1024 * 1024),
            [{"n": number, "text": "ü" * 20} for number in range(50_000)],
        ]

        for value in values:
            await client.call("echo", value)
        await results.wait_for(len(values), seconds=90)

        received = sorted(fingerprint(json.dumps(value).encode()) for value in results.values())
        sent = sorted(fingerprint(json.dumps(value).encode()) for value in values)
        self.assertEqual(received, sent)

    async def test_several_mib_raw(self) -> None:
        """
        When a raw request of several MiB spans many frames, then the reply
        body is the request body with "data" renamed "result".
        """
        _, name = await self.serve_small_frames()
        caller = await RawCaller.open(self)
        text = every_scalar_value()
        body = json.dumps({"method": "echo", "data": text, "meta": {}}, ensure_ascii=False, separators=(",", ":"))

        message_id = await caller.publish(name, body.encode("utf-8"))
        reply = await caller.reply(message_id, 60)

        expected = json.dumps(
            {"method": "echo", "result": text, "meta": {}}, ensure_ascii=False, separators=(",", ":")
        )
        self.assertGreater(len(reply.body), 4 * 1024 * 1024)
        self.assertEqual(fingerprint(reply.body), fingerprint(expected.encode("utf-8")))


class FakeConsumer:
    """
    An in-memory consumer channel that records acks and rejects.
    """

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        self.on_delivery: Any = None

    async def consume(self, queue: str, on_delivery: Any, *, exclusive: bool = False, on_cancelled: Any = None) -> str:
        self.on_delivery = on_delivery
        return "consumer-1"

    async def cancel(self, consumer_tag: str) -> None:
        pass

    async def set_prefetch(self, count: int) -> None:
        pass

    def ack(self, delivery_tag: int) -> None:
        self.events.append(("ack", delivery_tag))

    def reject(self, delivery_tag: int, *, requeue: bool) -> None:
        self.events.append(("requeue" if requeue else "reject", delivery_tag))

    async def close(self) -> None:
        pass

    def when_closed(self) -> defer.Deferred[Exception]:
        return defer.Deferred()


class FakePublisher:
    """
    An in-memory confirm channel whose confirms the test fires.
    """

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, defer.Deferred[None]]] = []

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
        self.published.append((routing_key, body, confirm))
        return confirm


class AcknowledgementTests(unittest.SynchronousTestCase):
    """
    Which of ack, reject and requeue a server sends for each kind of bad
    input, with in-memory channels.
    """

    MAXIMUM = 100

    def setUp(self) -> None:
        self.log = LogCapture(self)
        self.consumer = FakeConsumer()
        self.publisher = FakePublisher()

        async def get_publisher() -> FakePublisher:
            return self.publisher

        self.server = Server(
            Topology.for_service("svc"),
            make_dispatcher(Echo()),
            broker=None,
            consumer=self.consumer,
            publisher=get_publisher,
            prefetch=10,
            grace=5.0,
            max_request_size=self.MAXIMUM,
            reactor=Clock(),
        )
        self.successResultOf(defer.Deferred.fromCoroutine(self.server.start()))

    def deliver(self, tag: int, body: bytes, content_type: Any = JSON, reply_to: str | None = "replies") -> str:
        message_id = f"request-{tag}"
        self.consumer.on_delivery(
            Delivery(
                body=body,
                delivery_tag=tag,
                redelivered=False,
                exchange="svc",
                routing_key="svc",
                properties=MessageProperties(
                    content_type=content_type,
                    message_id=message_id,
                    correlation_id=message_id,
                    reply_to=reply_to,
                    type="echo",
                ),
            )
        )
        return message_id

    CASES: list[tuple[str, bytes, Any, str]] = [
        ("not JSON", b"echo 21", JSON, "InvalidRequest"),
        ("truncated JSON", b'{"method": "echo", "data": [1', JSON, "InvalidRequest"),
        ("not an envelope", b"[1, 2]", JSON, "InvalidRequest"),
        ("no method", b'{"data": 1}', JSON, "InvalidRequest"),
        ("method not a string", b'{"method": 7}', JSON, "InvalidRequest"),
        ("not UTF-8", b"\xff\xfe", JSON, "InvalidRequest"),
        ("empty", b"", JSON, "InvalidRequest"),
        ("content type", b'{"method": "echo"}', "text/plain", "InvalidRequest"),
        ("content type not UTF-8", b'{"method": "echo"}', b"\xff", "InvalidRequest"),
        ("too large", b"x" * (MAXIMUM + 1), JSON, "RequestTooLarge"),
        ("result is a set", b'{"method": "unencodable", "data": "set"}', JSON, "EncodingError"),
        ("result is an object", b'{"method": "unencodable", "data": "object"}', JSON, "EncodingError"),
    ]

    def test_error_reply_then_ack(self) -> None:
        """
        When a request cannot be decoded, or its result cannot be encoded,
        then one error reply is published, and the request is acknowledged
        once the broker confirmed it: never rejected or requeued.
        """
        for tag, (label, body, content_type, error_type) in enumerate(self.CASES, start=1):
            published = len(self.publisher.published)
            message_id = self.deliver(tag, body, content_type)

            self.assertEqual(len(self.publisher.published), published + 1, label)
            routing_key, reply, confirm = self.publisher.published[-1]
            decoded = _envelope.decode_reply(reply, JSON)
            assert decoded.error is not None, label
            self.assertEqual(routing_key, "replies", label)
            self.assertEqual(decoded.error.type, error_type, label)
            self.assertNotIn(("ack", tag), self.consumer.events, label)

            confirm.callback(None)

            self.assertEqual(self.consumer.events[-1], ("ack", tag), label)
            self.assertEqual(len(self.log.about(message_id)), 1, label)
        self.assertEqual([event for event, _ in self.consumer.events], ["ack"] * len(self.CASES))
        self.assertEqual(self.server.in_flight, 0)

    def test_cast_acked_at_once(self) -> None:
        """
        When a request without reply_to, or with an empty one, cannot be
        decoded, then nothing is published and it is acknowledged at once.
        The result of such a cast is never encoded, so no EncodingError
        case applies.
        """
        cases = [case for case in self.CASES if case[3] != "EncodingError"]
        for tag, (label, body, content_type, _) in enumerate(cases, start=1):
            message_id = self.deliver(tag, body, content_type, reply_to=None if tag % 2 else "")

            self.assertEqual(self.consumer.events[-1], ("ack", tag), label)
            self.assertEqual(len(self.log.about(message_id)), 1, label)
        self.assertEqual(self.publisher.published, [])
        self.assertEqual(len(self.consumer.events), len(cases))


class Gate:
    """
    A handler whose method C{hold} waits until the test releases its label,
    then returns the label and the name of this handler.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.entered: list[str] = []
        self.finished: list[str] = []
        self._waiting: dict[str, defer.Deferred[None]] = {}

    async def hold(self, label: str) -> dict[str, str]:
        self.entered.append(label)
        waiting: defer.Deferred[None] = defer.Deferred()
        self._waiting[label] = waiting
        await waiting
        self.finished.append(label)
        return {"label": label, "server": self.name}

    def release(self, label: str) -> None:
        self._waiting.pop(label).callback(None)

    def release_all(self) -> None:
        for label in list(self._waiting):
            self.release(label)


class QueueProbe:
    """
    Reads the message and consumer counts of queues on a channel of its
    own.
    """

    def __init__(self, channel: AMQPChannel) -> None:
        self._channel = channel

    @classmethod
    async def open(cls, testcase: unittest.TestCase) -> QueueProbe:
        return cls(await raw_channel(testcase))

    async def ready(self, queue: str) -> int:
        """
        Return the number of messages ready for delivery in C{queue}.
        """
        count, _ = await self._channel.declare_queue(queue, passive=True)
        return count

    async def consumers(self, queue: str) -> int:
        _, count = await self._channel.declare_queue(queue, passive=True)
        return count


async def poll(check: Callable[[], Awaitable[bool]], description: str, seconds: float = EVENT_TIMEOUT) -> None:
    """
    Wait until C{check()} returns true, checking every 50 ms, or fail
    naming C{description} after C{seconds}.
    """
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:g} s waiting for {description}")
        await task.deferLater(reactor, 0.05, lambda: None)


def second_server(label: str) -> dict[str, str]:
    """
    Serve C{hold} at once, for the server that takes over after a stop.
    """
    return {"label": label, "server": "second"}


class ServerStopTests(ServedTestCase):
    """
    C{Server.stop()} with requests in flight, on the real broker.
    """

    GRACE = 1.0

    async def start(self, grace: float) -> tuple[txass.Broker, str, txass.Server, Gate, txass.Client, Results]:
        """
        Serve a new service with a L{Gate} named "first", and return a
        client of it on another connection.
        """
        gate = Gate("first")
        broker, name, server = await self.serve({"hold": gate.hold}, prefetch=10, grace=grace)
        # Cleanups run last in first out, so this one runs before the broker
        # closes, and a failed test does not wait out the grace period.
        self.addCleanup(gate.release_all)
        results = Results()
        client = await (await connect(self)).service(name).client().react(results)
        return broker, name, server, gate, client, results

    async def test_stop_lets_requests_finish(self) -> None:
        """
        When a server stops with requests in flight, then it cancels its
        consumer at once, and replies to and acknowledges the requests that
        finish within the grace period, while a request sent meanwhile
        waits in the queue.
        """
        log = LogCapture(self)
        _, name, server, gate, client, results = await self.start(grace=30)
        probe = await QueueProbe.open(self)
        for label in ["a", "b"]:
            await client.call("hold", label)
        await wait_until(lambda: len(gate.entered) == 2)

        stopping = server.stop()

        async def consumer_cancelled() -> bool:
            return await probe.consumers(name) == 0

        await poll(consumer_cancelled, f"the consumer of {name} to be cancelled")
        self.assertFalse(stopping.called)
        await client.call("hold", "sent while stopping")
        gate.release_all()
        await within(stopping)
        await results.wait_for(2)

        self.assertEqual(sorted(value["label"] for value in results.values()), ["a", "b"])
        self.assertEqual(gate.entered, ["a", "b"])
        self.assertEqual(await probe.ready(name), 1)
        self.assertEqual(log.containing("did not finish within"), [])

    async def test_stop_requeues_after_grace(self) -> None:
        """
        When requests are still running at the end of the grace period,
        then stop requeues them without replying, even once their handlers
        finish, and another server serves them.
        """
        log = LogCapture(self)
        broker, name, server, gate, client, results = await self.start(grace=self.GRACE)
        probe = await QueueProbe.open(self)
        labels = ["finishes", "late-0", "late-1"]
        for label in labels:
            await client.call("hold", label)
        await wait_until(lambda: len(gate.entered) == len(labels))

        started = time.monotonic()
        stopping = server.stop()
        gate.release("finishes")
        await within(stopping, self.GRACE + EVENT_TIMEOUT)
        elapsed = time.monotonic() - started
        await results.wait_for(1)

        self.assertGreaterEqual(elapsed, self.GRACE - CLOCK_SLACK)
        self.assertEqual(await probe.ready(name), 2)
        requeued = f"2 requests to {name} did not finish within {self.GRACE:g} s; requeueing them"
        self.assertEqual(len(log.containing(requeued)), 1)

        # The handlers finish after their requests were requeued, too late
        # to reply.  A reply would first ask the server for its publishing
        # channel, at once as the handler returns, so counting those calls
        # shows whether the server tried.
        channel_requests: list[str] = []
        get_publisher = server._publisher

        def count_publisher_requests() -> Awaitable[Any]:
            channel_requests.append("publisher")
            return get_publisher()

        server._publisher = count_publisher_requests
        gate.release_all()

        self.assertEqual(gate.finished, labels)
        self.assertEqual(channel_requests, [])

        await broker.service(name).react({"hold": second_server})
        await results.wait_for(3)
        served = sorted((value["label"], value["server"]) for value in results.values())

        self.assertEqual(served, [("finishes", "first"), ("late-0", "second"), ("late-1", "second")])

    async def bounce_during_stop(self, labels: list[str]) -> tuple[txass.Broker, str, Gate, Results]:
        """
        Hold one request in flight, have the broker deliver a request per
        label after stop() began, and check that they go back to the queue
        while the server still drains, without running its handler.

        @return: The broker, the service name, the stopped server's gate
            and the client's results.
        """
        broker, name, server, gate, client, results = await self.start(grace=30)
        probe = await QueueProbe.open(self)
        await client.call("hold", "in flight")
        await wait_until(lambda: gate.entered == ["in flight"])

        # The server reads nothing from its socket until resumed, so the
        # requests below reach it only after stop() began.
        transport = broker._connection._protocol.transport
        transport.pauseProducing()
        self.addCleanup(transport.resumeProducing)
        for label in labels:
            await client.call("hold", label)

        async def all_delivered() -> bool:
            return await probe.ready(name) == 0

        await poll(all_delivered, "the broker to deliver the requests")
        stopping = server.stop()
        transport.resumeProducing()

        async def all_requeued() -> bool:
            return await probe.ready(name) == len(labels)

        await poll(all_requeued, "the requests to be requeued")
        self.assertFalse(stopping.called)
        self.assertEqual(gate.entered, ["in flight"])

        gate.release("in flight")
        await within(stopping)
        return broker, name, gate, results

    async def test_requests_arriving_during_stop_requeued(self) -> None:
        """
        When the broker delivers requests to a server after it began to
        stop, then they go back to the queue while the server still drains,
        their handler does not run, and another server serves them.
        """
        broker, name, gate, results = await self.bounce_during_stop(["late-0", "late-1"])

        await broker.service(name).react({"hold": second_server})
        await results.wait_for(3)
        served = sorted((value["label"], value["server"]) for value in results.values())

        self.assertEqual(served, [("in flight", "first"), ("late-0", "second"), ("late-1", "second")])
        self.assertEqual(gate.entered, ["in flight"])

    async def test_requeued_request_not_an_attempt(self) -> None:
        """
        When a request that a stopping server requeued without running it
        reaches a server allowing one attempt, then that server serves it:
        the requeue was no failed attempt.
        """
        broker, name, _, results = await self.bounce_during_stop(["late"])

        await broker.service(name).react({"hold": second_server}, max_attempts=1)
        await results.wait_for(2)
        errors = [value for value in results.values() if isinstance(value, txass.RemoteError)]

        self.assertEqual(errors, [])
        served = sorted((value["label"], value["server"]) for value in results.values())
        self.assertEqual(served, [("in flight", "first"), ("late", "second")])


class StageProcess(protocol.ProcessProtocol):
    """
    A C{twistd -n ass} child process: collects its output and reports its
    end.
    """

    def __init__(self) -> None:
        self._output = bytearray()
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.status: BaseException | None = None

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self._output.extend(data)

    def processEnded(self, reason: Failure) -> None:
        self.status = reason.value
        self.ended.callback(None)

    @property
    def output(self) -> str:
        return self._output.decode("utf-8", "replace")

    @property
    def exit_code(self) -> int | None:
        code: int | None = getattr(self.status, "exitCode", None)
        return code

    def signal(self, name: str) -> None:
        # IProcessTransport declares signalProcess without self, which
        # mypy reads as one argument too many.
        transport: Any = self.transport
        transport.signalProcess(name)

    async def kill(self) -> None:
        """
        Kill the process if a failed test left it running.
        """
        if self.status is not None:
            return
        try:
            self.signal("KILL")
        except error.ProcessExitedAlready:
            pass
        await within(self.ended)


def start_stage(testcase: unittest.TestCase, service: str, handler: str, *options: str) -> StageProcess:
    """
    Run C{twistd -n ass} serving C{service} with C{handler}, killed after
    the test if it still runs.
    """
    directory = os.path.abspath(testcase.mktemp())
    os.makedirs(directory)
    command = support.twistd_command(
        "-n", f"--pidfile={directory}/twistd.pid", "ass", "--service", service, "--reactor", handler, *options
    )
    process = StageProcess()
    spawner: Any = reactor
    spawner.spawnProcess(process, command[0], command, env=support.python_environment(), path=support.TOP)
    testcase.addCleanup(lambda: defer.Deferred.fromCoroutine(process.kill()))
    return process


class StageShutdownTests(unittest.TestCase):
    """
    SIGTERM to a C{twistd ass} stage with requests that outlast its grace
    period.
    """

    timeout = 90

    async def test_sigterm_requeues_unfinished(self) -> None:
        """
        When SIGTERM arrives while requests run past the grace period, then
        the stage requeues them without replying, closes its connection,
        exits with status 0 after the grace period, and another server
        serves them.
        """
        service = unique_name("stage-grace")
        remove_after(self, service)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        process = start_stage(self, service, "tests.stages.holding.Holder", "--grace", "1")
        broker = await connect(self)
        results = Results()
        client = await broker.service(service).client().react(results)
        labels = [f"unfinished-{number}" for number in range(3)]
        for label in labels:
            await client.call("hold", {"directory": directory, "label": label})
        await wait_until(lambda: all(os.path.exists(holding.started_file(directory, label)) for label in labels))

        signalled = time.monotonic()
        process.signal("TERM")
        await within(process.ended, 30)
        elapsed = time.monotonic() - signalled
        output = process.output

        self.assertEqual(process.exit_code, 0, output)
        self.assertGreaterEqual(elapsed, 1 - CLOCK_SLACK)
        self.assertIn(f"stopping {service}: 3 requests in flight", output)
        self.assertIn(f"3 requests to {service} did not finish within 1 s; requeueing them", output)
        self.assertIn(f"stopped serving {service}", output)
        self.assertIn("closed connection to", output)
        self.assertNotIn("did not confirm closing", output)
        self.assertNotIn("Traceback", output)
        self.assertEqual(await message_count(self, service), 3)

        with open(os.path.join(directory, holding.RELEASE_FILE), "w"):
            pass
        await broker.service(service).react(holding.Holder)
        await results.wait_for(3)

        self.assertEqual(len(results.values()), 3)
        self.assertEqual(sorted(value["label"] for value in results.values()), labels)
        self.assertEqual({value["pid"] for value in results.values()}, {os.getpid()})


async def connection_channels(node: BrokerNode, port: int) -> int | None:
    """
    Return how many channels C{node} counts on the connection from local
    port C{port}, or L{None} if it lists no such connection.
    """
    output = await node.ctl("list_connections", "peer_port", "channels")
    for line in output.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0] == str(port):
            return int(fields[1])
    return None


async def closing_line(node: BrokerNode, port: int) -> str:
    """
    Wait until C{node} logs the end of the connection from local port
    C{port}, and return that line.

    RabbitMQ 3.10 logs "closing AMQP connection" at the info level after
    the client's connection.close, and at the warning level, followed by
    "client unexpectedly closed TCP connection", when the socket closed
    without it.
    """
    found: list[str] = []

    async def logged() -> bool:
        with open(node.log_file, encoding="utf-8", errors="replace") as f:
            found[:] = [line for line in f if "closing AMQP connection" in line and f"(127.0.0.1:{port} -> " in line]
        return bool(found)

    await poll(logged, f"the node to log the end of the connection from port {port}")
    return found[0]


class CleanCloseTests(unittest.TestCase):
    """
    How the broker records the end of a stopped server's connection, on a
    node of the test class's own whose log distinguishes a connection.close
    from a dropped socket.
    """

    timeout = 120

    async def test_server_stop_and_broker_close(self) -> None:
        """
        When a server stops, then its channels close and its connection
        stays open; when the broker connection closes, then the node logs
        a clean close.
        """
        node = await shared_node(self)
        name = unique_name("clean-close")
        broker = await txass.connect(node.url)
        self.addCleanup(broker.close)
        server = await broker.service(name).react(Echo())
        caller = await txass.connect(node.url)
        self.addCleanup(caller.close)
        # A reply to a queue opens the server's publishing channel.
        results = support.Results()
        client = await caller.service(name).client(key=f"{name}-results").react(results)
        await within(client.call("echo", 1))
        await results.wait_for(1)
        port = broker._connection._protocol.transport.getHost().port

        channels = await connection_channels(node, port)
        assert channels is not None, f"no connection from port {port}"
        self.assertGreaterEqual(channels, 2)
        await within(server.stop())

        async def channels_closed() -> bool:
            return await connection_channels(node, port) == 0

        await poll(channels_closed, "the server's channels to close")
        self.assertTrue(broker.is_open)
        await within(broker.close())
        line = await closing_line(node, port)

        self.assertIn("[info]", line)

    async def test_stage_sigterm_closes_cleanly(self) -> None:
        """
        When SIGTERM stops a stage whose request outlasts the grace period,
        then the node logs a clean close of the stage's connection.
        """
        node = await shared_node(self)
        service = unique_name("clean-stage")
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        process = start_stage(self, service, "tests.stages.holding.Holder", "--grace", "0.5", "--broker", node.url)
        broker = await txass.connect(node.url)
        self.addCleanup(broker.close)
        client = await broker.service(service).client().react(Results())
        await client.call("hold", {"directory": directory, "label": "held"})
        await wait_until(lambda: os.path.exists(holding.started_file(directory, "held")))
        own_port = broker._connection._protocol.transport.getHost().port
        output = await node.ctl("list_connections", "peer_port")
        ports = {int(field) for field in output.split() if field.isdigit()} - {own_port}
        self.assertEqual(len(ports), 1, output)
        [stage_port] = ports

        process.signal("TERM")
        await within(process.ended, 30)
        line = await closing_line(node, stage_port)

        self.assertEqual(process.exit_code, 0, process.output)
        self.assertIn("[info]", line)
