"""
Tests of the decoding of deliveries outside pika, and of how the protocol
splits received bytes between that decoder and pika.
"""

from __future__ import annotations

import struct
from typing import Any

from pika import frame, spec
from twisted.trial import unittest

from txass._connection import FastConsumer, MessageProperties, _PikaProtocol
from txass._frames import INCOMPLETE, RawDelivery, encode_publish, parse_delivery

CHANNEL = 3
FRAME_MAX = 4096


def deliver_frames(
    body: bytes = b'{"m":"echo"}',
    *,
    channel: int = CHANNEL,
    consumer_tag: str = "ctag1.abc",
    delivery_tag: int = 7,
    redelivered: bool = False,
    properties: spec.BasicProperties | None = None,
    body_frame_size: int = FRAME_MAX,
) -> bytes:
    """
    Encode a delivery with pika's own encoder: method, header and body
    frames, the body split into frames of at most C{body_frame_size} bytes.
    """
    method = spec.Basic.Deliver(
        consumer_tag=consumer_tag,
        delivery_tag=delivery_tag,
        redelivered=redelivered,
        exchange="txass-test.exchange",
        routing_key="txass-test.key",
    )
    if properties is None:
        properties = spec.BasicProperties(content_type="application/json", correlation_id="c1", delivery_mode=2)
    frames = [frame.Method(channel, method).marshal(), frame.Header(channel, len(body), properties).marshal()]
    for start in range(0, len(body), body_frame_size):
        frames.append(frame.Body(channel, body[start : start + body_frame_size]).marshal())
    return b"".join(frames)


def method_frame(method: Any, channel: int = CHANNEL) -> bytes:
    return frame.Method(channel, method).marshal()


def pika_decoding(data: bytes) -> tuple[Any, Any, bytes]:
    """
    Decode a delivery's frames with pika: its method, properties and body.
    """
    offset = 0
    decoded = []
    while offset < len(data):
        consumed, value = frame.decode_frame(data[offset:])
        decoded.append(value)
        offset += consumed
    method, header, *bodies = decoded
    return method.method, header.properties, b"".join(part.fragment for part in bodies)


def fields(properties: Any) -> dict[str, Any]:
    """
    Return the properties that MessageProperties keeps, from pika's or
    from MessageProperties.
    """
    names = [
        "content_type",
        "content_encoding",
        "headers",
        "delivery_mode",
        "correlation_id",
        "reply_to",
        "message_id",
        "type",
        "timestamp",
        "app_id",
        "expiration",
    ]
    return {name: getattr(properties, name) for name in names}


class ParseDeliveryTests(unittest.TestCase):
    def parse(self, data: bytes) -> Any:
        buffer = bytearray(data)
        _, channel, size = struct.unpack_from(">BHI", buffer, 0)
        return parse_delivery(buffer, 0, channel, size)

    def assert_same_as_pika(self, data: bytes) -> RawDelivery:
        delivery = self.parse(data)
        assert isinstance(delivery, RawDelivery)
        method, properties, body = pika_decoding(data)
        self.assertEqual(delivery.consumer_tag, method.consumer_tag)
        self.assertEqual(delivery.delivery_tag, method.delivery_tag)
        self.assertEqual(delivery.redelivered, method.redelivered)
        self.assertEqual(delivery.exchange, method.exchange)
        self.assertEqual(delivery.routing_key, method.routing_key)
        self.assertEqual(fields(MessageProperties(**delivery.properties)), fields(properties))
        self.assertEqual(delivery.body, body)
        self.assertEqual(delivery.end, len(data))
        return delivery

    def test_every_property(self) -> None:
        """
        When a delivery has every basic property, then each decodes as pika
        decodes it.
        """
        properties = spec.BasicProperties(
            content_type="application/json",
            content_encoding="identity",
            headers={"x-txass-attempts": 2, "nested": {"list": [1, "two", b"three"]}, "text": b"long"},
            delivery_mode=2,
            priority=5,
            correlation_id="correlation",
            reply_to="amq.rabbitmq.reply-to.g1h2",
            expiration="30000",
            message_id="message",
            timestamp=1_796_450_268,
            type="echo",
            user_id="guest",
            app_id="txass",
            cluster_id="cluster",
        )
        self.assert_same_as_pika(deliver_frames(properties=properties, redelivered=True))

    def test_no_properties(self) -> None:
        """
        When a delivery has no property at all, then each is None.
        """
        delivery = self.assert_same_as_pika(deliver_frames(properties=spec.BasicProperties()))
        self.assertEqual(set(fields(MessageProperties(**delivery.properties)).values()), {None})

    def test_text_that_is_not_utf8(self) -> None:
        """
        When a short string is not UTF-8, then it stays bytes, as pika
        leaves it.
        """
        data = deliver_frames(properties=spec.BasicProperties(message_id=b"caf\xe9"))
        delivery = self.assert_same_as_pika(data)
        self.assertEqual(delivery.properties["message_id"], b"caf\xe9")

    def test_body_in_several_frames(self) -> None:
        """
        When the body spans several body frames, then they are joined and
        every frame is counted.
        """
        body = bytes(range(256)) * 40
        delivery = self.assert_same_as_pika(deliver_frames(body, body_frame_size=1000))
        self.assertEqual(delivery.frames, 2 + 11)

    def test_empty_body(self) -> None:
        """
        When the body is empty, then the delivery ends with its header.
        """
        delivery = self.assert_same_as_pika(deliver_frames(b""))
        self.assertEqual(delivery.body, b"")
        self.assertEqual(delivery.frames, 2)

    def test_every_truncation_incomplete(self) -> None:
        """
        When the bytes end anywhere after the method frame and before the
        last body frame ends, then the delivery is incomplete.
        """
        data = deliver_frames(b"x" * 50, body_frame_size=20)
        method_end = len(method_frame(spec.Basic.Deliver("ctag1.abc", 7, False, "txass-test.exchange", "txass-test.key")))
        for length in range(method_end, len(data)):
            with self.subTest(length=length):
                self.assertIs(self.parse(data[:length]), INCOMPLETE)

    def test_other_channel_between(self) -> None:
        """
        When a frame of another channel comes between the method and its
        header, then the delivery is left to pika.
        """
        data = deliver_frames()
        method_end = data.index(b"\xce") + 1
        heartbeat = frame.Heartbeat().marshal()
        self.assertIsNone(self.parse(data[:method_end] + heartbeat + data[method_end:]))

    def test_header_of_other_channel(self) -> None:
        """
        When the content header is on another channel, then the delivery is
        left to pika.
        """
        data = deliver_frames()
        method_end = data.index(b"\xce") + 1
        header = frame.Header(CHANNEL + 1, 12, spec.BasicProperties()).marshal()
        self.assertIsNone(self.parse(data[:method_end] + header))

    def test_bad_frame_end(self) -> None:
        """
        When a frame does not end with the frame-end byte, then the delivery
        is left to pika, which reports the error.
        """
        data = bytearray(deliver_frames())
        data[-1] = 0
        self.assertIsNone(self.parse(bytes(data)))

    def test_body_longer_than_announced(self) -> None:
        """
        When the body frames hold more bytes than the header announced, then
        the delivery is left to pika.
        """
        data = deliver_frames(b"0123456789")
        header_end = data.index(b"\xce", data.index(b"\xce") + 1) + 1
        longer = frame.Body(CHANNEL, b"0123456789AB").marshal()
        self.assertIsNone(self.parse(data[:header_end] + longer))


class FakeConnection:
    """
    Stands in for pika's connection under the protocol: records what
    reaches it.
    """

    def __init__(self, events: list[tuple[str, Any]]) -> None:
        self.events = events
        self.is_open = True
        self.bytes_received = 0
        self.frames_received = 0

    def data_received(self, data: bytes) -> None:
        self.events.append(("pika", data))


def make_protocol(events: list[tuple[str, Any]]) -> _PikaProtocol:
    protocol = _PikaProtocol.__new__(_PikaProtocol)
    protocol._impl = FakeConnection(events)
    protocol._received = bytearray()
    protocol.fast_consumers = {}
    return protocol


class FakeChannel:
    is_open = True


class SplitFramesTests(unittest.TestCase):
    def setUp(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.protocol = make_protocol(self.events)
        self.channel = FakeChannel()

        def deliver(delivery: RawDelivery) -> None:
            self.events.append(("fast", delivery.delivery_tag))

        self.protocol.fast_consumers[(CHANNEL, "ctag1.abc")] = FastConsumer(self.channel, deliver)

    def feed(self, data: bytes, chunk: int | None = None) -> None:
        if chunk is None:
            self.protocol._split_frames(data)
            return
        for start in range(0, len(data), chunk):
            self.protocol._split_frames(data[start : start + chunk])

    def pika_bytes(self) -> bytes:
        return b"".join(data for kind, data in self.events if kind == "pika")

    def test_order_kept(self) -> None:
        """
        When deliveries of a fast consumer come among other frames, then
        each goes to the consumer and the rest to pika, in the order
        received.
        """
        ack = method_frame(spec.Basic.Ack(delivery_tag=1))
        heartbeat = frame.Heartbeat().marshal()
        other = deliver_frames(consumer_tag="ctag1.other", delivery_tag=2)
        self.feed(ack + deliver_frames(delivery_tag=1) + heartbeat + other + deliver_frames(delivery_tag=3))

        self.assertEqual(self.events, [("pika", ack), ("fast", 1), ("pika", heartbeat + other), ("fast", 3)])

    def test_every_chunk_size(self) -> None:
        """
        When the same bytes arrive in chunks of any size, then every frame
        reaches pika or the consumer once, in order: a delivery that
        arrived whole goes to the consumer, and one split between chunks to
        pika.
        """
        ack = method_frame(spec.Basic.Ack(delivery_tag=1))
        deliveries = {1: deliver_frames(b"y" * 300, delivery_tag=1, body_frame_size=100), 2: deliver_frames(delivery_tag=2)}
        stream = ack + deliveries[1] + ack + deliveries[2]
        for chunk in [*range(1, 60), len(stream)]:
            with self.subTest(chunk=chunk):
                del self.events[:]
                self.protocol._received = bytearray()
                self.feed(stream, chunk)
                handed_on = b"".join(data if kind == "pika" else deliveries[data] for kind, data in self.events)
                self.assertEqual(handed_on, stream)
                self.assertEqual(self.protocol._received, bytearray())
        self.assertEqual([event for event in self.events if event[0] == "fast"], [("fast", 1), ("fast", 2)])

    def test_split_delivery_goes_to_pika(self) -> None:
        """
        When a delivery's method frame has arrived but not the rest, then
        pika receives what has arrived, and the rest when it comes.
        """
        data = deliver_frames(b"z" * 30, body_frame_size=10)
        method_end = data.index(b"\xce") + 1
        self.feed(data[: method_end + 3])
        self.feed(data[method_end + 3 :])
        self.assertEqual(self.events, [("pika", data[:method_end]), ("pika", data[method_end:])])

    def test_counted_for_heartbeats(self) -> None:
        """
        When a delivery is taken from pika, then pika's connection still
        counts its bytes and frames, which its heartbeat checker reads.
        """
        data = deliver_frames(b"z" * 30, body_frame_size=10)
        self.feed(data)
        self.assertEqual(self.protocol._impl.bytes_received, len(data))
        self.assertEqual(self.protocol._impl.frames_received, 5)

    def test_closing_channel_goes_to_pika(self) -> None:
        """
        When the consumer's channel is no longer open, as while it closes,
        then pika receives the delivery's frames.
        """
        self.channel.is_open = False
        data = deliver_frames()
        self.feed(data)
        self.assertEqual(self.events, [("pika", data)])

    def test_closed_connection_goes_to_pika(self) -> None:
        """
        When pika's connection is no longer open, then deliveries go to pika.
        """
        self.protocol._impl.is_open = False
        data = deliver_frames()
        self.feed(data)
        self.assertEqual(self.events, [("pika", data)])

    def test_receiving_again_while_handing_on(self) -> None:
        """
        When code run by pika or by the consumer makes the protocol handle
        received data again, then no frame is handed on twice.
        """
        ack = method_frame(spec.Basic.Ack(delivery_tag=1))
        connection = self.protocol._impl
        original = connection.data_received

        def reenter(data: bytes) -> None:
            original(data)
            self.protocol._split_frames(b"")

        connection.data_received = reenter

        def deliver(delivery: RawDelivery) -> None:
            self.events.append(("fast", delivery.delivery_tag))
            self.protocol._split_frames(b"")

        self.protocol.fast_consumers[(CHANNEL, "ctag1.abc")] = FastConsumer(self.channel, deliver)
        self.feed(ack + deliver_frames(delivery_tag=1) + ack + deliver_frames(delivery_tag=2) + ack)

        self.assertEqual(self.events, [("pika", ack), ("fast", 1), ("pika", ack), ("fast", 2), ("pika", ack)])

    def test_protocol_header_goes_to_pika(self) -> None:
        """
        When the broker sends an AMQP protocol header rather than
        frames, then every byte goes to pika, which reports the version.
        """
        header = b"AMQP\x00\x00\x09\x01"
        self.feed(header)
        self.feed(b"more")
        self.assertEqual(self.pika_bytes(), header + b"more")
        self.assertIsNone(self.protocol._received)


def pika_publish(
    exchange: str, routing_key: str, mandatory: bool, properties: MessageProperties, body: bytes, body_max: int
) -> bytes:
    """
    Encode a basic.publish as pika's connection does before writing it.
    """
    method = spec.Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=mandatory)
    frames = [
        frame.Method(CHANNEL, method).marshal(),
        frame.Header(CHANNEL, len(body), properties.to_pika()).marshal(),
    ]
    for start in range(0, len(body), body_max):
        frames.append(frame.Body(CHANNEL, body[start : start + body_max]).marshal())
    return b"".join(frames)


class EncodePublishTests(unittest.TestCase):
    def assert_same_as_pika(
        self,
        properties: MessageProperties,
        body: bytes = b'{"r":1}',
        *,
        mandatory: bool = True,
        body_max: int = FRAME_MAX - 8,
    ) -> None:
        encoded = encode_publish(CHANNEL, "", "txass-test.queue", mandatory, properties, body, body_max)
        assert encoded is not None
        data, frames = encoded
        self.assertEqual(data, pika_publish("", "txass-test.queue", mandatory, properties, body, body_max))
        self.assertEqual(frames, 2 + -(-len(body) // body_max))

    def test_every_property(self) -> None:
        """
        When every property that txass sets is given, then the bytes are
        pika's.
        """
        self.assert_same_as_pika(
            MessageProperties(
                content_type="application/json",
                content_encoding="identity",
                headers={"x-txass-attempts": 3, "nested": {"list": [1, "two"]}, "bytes": b"\x00\xff"},
                delivery_mode=2,
                correlation_id="correlation",
                reply_to="amq.rabbitmq.reply-to.g1h2",
                message_id="message",
                type="echo",
                timestamp=1_796_450_268,
                app_id="txass",
                expiration="30000",
            )
        )

    def test_no_properties(self) -> None:
        """
        When no property is given, then the bytes are pika's.
        """
        self.assert_same_as_pika(MessageProperties())

    def test_not_mandatory(self) -> None:
        """
        When the message is not mandatory, then the bytes are pika's.
        """
        self.assert_same_as_pika(MessageProperties(correlation_id="c"), mandatory=False)

    def test_body_sizes(self) -> None:
        """
        When the body is empty, fills a frame exactly, or needs several,
        then the bytes are pika's.
        """
        for size in (0, 1, 99, 100, 101, 350):
            with self.subTest(size=size):
                self.assert_same_as_pika(MessageProperties(type="echo"), bytes(size), body_max=100)

    def test_text_beyond_ascii(self) -> None:
        """
        When a short string has characters beyond ASCII, then it is encoded
        as UTF-8, as pika does.
        """
        self.assert_same_as_pika(MessageProperties(message_id="caf\xe9-\u65e5\u672c"))

    def test_left_to_pika(self) -> None:
        """
        When a value is one pika would reject or convert, then nothing is
        encoded, so that pika handles it.
        """
        cases = [
            MessageProperties(message_id="x" * 256),
            MessageProperties(delivery_mode=256),
            MessageProperties(timestamp=-1),
            MessageProperties(correlation_id=7),  # type: ignore[arg-type]
            MessageProperties(headers={"x" * 256: 1}),
            MessageProperties(correlation_id="\udcff"),
            MessageProperties(headers={1: "x"}),  # type: ignore[dict-item]
        ]
        for properties in cases:
            with self.subTest(properties=properties):
                self.assertIsNone(encode_publish(CHANNEL, "", "q", True, properties, b"", 100))
        self.assertIsNone(encode_publish(CHANNEL, "", "q" * 256, True, MessageProperties(), b"", 100))
