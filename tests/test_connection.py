"""
Tests for broker URLs and for opening connections.
"""

from __future__ import annotations

import socket
from typing import Any

import pika.exceptions

from twisted.internet import defer, protocol, reactor
from twisted.trial import unittest
from twisted.trial.unittest import SynchronousTestCase

import txass
from tests.support import BROKER_URL, connect, remove_after, unique_name, wait_until, within
from txass._connection import (
    DEFAULT_URL,
    HOLD_LIMIT,
    AMQPChannel,
    InvalidURL,
    MessageProperties,
    _describe_handshake_error,
    _PikaProtocol,
    _SendBuffer,
    _WritesThroughProtocol,
    parse_url,
)


def closed_port() -> int:
    """
    Return a loopback port nothing listens on.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ParseURLTests(SynchronousTestCase):
    def test_full_url(self) -> None:
        """
        When every part is given, then each is parsed, the vhost
        percent-decoded.
        """
        address = parse_url("amqp://alice:p%40ss@broker.example:5673/my%2Fvhost?heartbeat=15&connection_timeout=2.5")
        self.assertEqual(address.host, "broker.example")
        self.assertEqual(address.port, 5673)
        self.assertEqual(address.user, "alice")
        self.assertEqual(address.password, "p@ss")
        self.assertEqual(address.vhost, "my/vhost")
        self.assertEqual(address.heartbeat, 15)
        self.assertEqual(address.connection_timeout, 2.5)
        self.assertFalse(address.tls)

    def test_default_vhost(self) -> None:
        """
        When the path is empty or %2F, then the vhost is /.
        """
        for url in ["amqp://h", "amqp://h/", "amqp://h/%2F"]:
            with self.subTest(url=url):
                self.assertEqual(parse_url(url).vhost, "/")

    def test_default_url(self) -> None:
        """
        When no URL is given and TXASS_BROKER_URL is unset, then the guest
        account on localhost is used.
        """
        self.patch_environment(None)
        address = parse_url(None)
        self.assertEqual((address.host, address.port, address.vhost, address.user), ("localhost", 5672, "/", "guest"))
        self.assertEqual(DEFAULT_URL, "amqp://guest:guest@localhost:5672/%2F")

    def test_environment_url(self) -> None:
        """
        When TXASS_BROKER_URL is set, then it is the default.
        """
        self.patch_environment("amqp://bob:pw@127.0.0.2:5999/v")
        address = parse_url(None)
        self.assertEqual((address.host, address.port, address.vhost, address.user), ("127.0.0.2", 5999, "v", "bob"))

    def patch_environment(self, value: str | None) -> None:
        import os

        old = os.environ.pop("TXASS_BROKER_URL", None)
        if value is not None:
            os.environ["TXASS_BROKER_URL"] = value

        def restore() -> None:
            os.environ.pop("TXASS_BROKER_URL", None)
            if old is not None:
                os.environ["TXASS_BROKER_URL"] = old

        self.addCleanup(restore)

    def test_amqps_port(self) -> None:
        """
        When the scheme is amqps, then TLS is on and the port is 5671.
        """
        address = parse_url("amqps://h")
        self.assertTrue(address.tls)
        self.assertEqual(address.port, 5671)

    def test_invalid_urls(self) -> None:
        """
        When a URL has another scheme, a bad port or an unknown or invalid
        option, then InvalidURL is raised.
        """
        for url in [
            "http://h",
            "amqp://h:notaport",
            "amqp://h?bogus=1",
            "amqp://h?heartbeat=x",
            "amqp://h?heartbeat=-1",
            "amqp://h?frame_max=1",
            "amqp://h?channel_max=70000",
            "amqp://h?heartbeat=100000",
            "amqp://h?heartbeat=1.5",
            "amqp://h?connection_timeout=nan",
            "amqp://h?connection_timeout=0",
        ]:
            with self.subTest(url=url):
                self.assertRaises(InvalidURL, parse_url, url)

    def test_unreadable_url_hides_password(self) -> None:
        """
        When a password contains an unescaped character that makes the URL
        unreadable, then the InvalidURL message contains no part of it.
        """
        for url in [
            "amqp://guest:s3cr#etpw@127.0.0.1:5672/%2F",
            "amqp://guest:s3cr?etpw@127.0.0.1:5672/%2F",
            "amqp://guest:s3cr/etpw@127.0.0.1:5672/%2F",
            "amqp://guest:s3cr\uff0fetpw@127.0.0.1:5672/%2F",
        ]:
            with self.subTest(url=url):
                with self.assertRaises(InvalidURL) as caught:
                    parse_url(url)
                self.assertNotIn("s3cr", str(caught.exception))

    def test_handshake_cut_not_blamed_on_login(self) -> None:
        """
        When the socket closes during the AMQP login without a reason from
        the broker, then the error is a plain ConnectionFailed that names
        both possible causes, not AuthenticationFailed or VhostNotFound.
        """
        address = parse_url("amqp://alice:s3cret@127.0.0.1:5672/%2F")
        for guess in (
            pika.exceptions.ProbableAuthenticationError("ConnectionLost()"),
            pika.exceptions.ProbableAccessDeniedError("ConnectionLost()"),
        ):
            with self.subTest(guess=guess):
                error = _describe_handshake_error(address, guess)
                self.assertIs(type(error), txass.ConnectionFailed)
                self.assertIn("the network failed", str(error))

    def test_safe_url_hides_password(self) -> None:
        """
        When an address is shown, then the password is replaced by ***.
        """
        address = parse_url("amqp://alice:s3cret@h:1/v")
        self.assertEqual(address.safe_url(), "amqp://alice:***@h:1/v")
        self.assertNotIn("s3cret", repr(address))


class ConnectTests(unittest.TestCase):
    async def test_connects(self) -> None:
        """
        When the broker is reachable, then connect fires with an open Broker.
        """
        broker = await connect(self)
        self.assertTrue(broker.is_open)

    async def test_refused(self) -> None:
        """
        When nothing listens at the address, then connect fails with
        ConnectionFailed naming host, port, vhost and user, not the password.
        """
        port = closed_port()
        d = txass.connect(f"amqp://alice:s3cret@127.0.0.1:{port}/%2F")
        error = await self.assertFailure(within(d), txass.ConnectionFailed)
        message = str(error)
        self.assertIn(f"127.0.0.1:{port}", message)
        self.assertIn("'/'", message)
        self.assertIn("'alice'", message)
        self.assertIn("refused", message)
        self.assertNotIn("s3cret", message)
        self.assertNotIn("s3cret", repr(error))

    async def test_wrong_password(self) -> None:
        """
        When the password is wrong, then connect fails with
        AuthenticationFailed, without the password in the message.
        """
        d = txass.connect("amqp://guest:wr0ng-pass@127.0.0.1:5672/%2F")
        error = await self.assertFailure(within(d), txass.AuthenticationFailed)
        self.assertIn("'guest'", str(error))
        self.assertIn("password", str(error))
        self.assertNotIn("wr0ng-pass", str(error))

    async def test_missing_vhost(self) -> None:
        """
        When the vhost does not exist, then connect fails with VhostNotFound
        naming the vhost.
        """
        vhost = unique_name("no-vhost")
        d = txass.connect(f"amqp://guest:guest@127.0.0.1:5672/{vhost}")
        error = await self.assertFailure(within(d), txass.VhostNotFound)
        self.assertIn(repr(vhost), str(error))
        self.assertIn("127.0.0.1:5672", str(error))

    async def test_close_fires_when_closed(self) -> None:
        """
        When a broker is closed, then when_closed fires and is_open is false.
        """
        broker = await txass.connect(BROKER_URL)
        closed = broker.when_closed()
        await broker.close()
        reason = await within(closed)
        self.assertIsInstance(reason, txass.ConnectionLost)
        self.assertFalse(broker.is_open)

    async def test_invalid_url_fails_deferred(self) -> None:
        """
        When the URL is invalid, then the Deferred fails with InvalidURL.
        """
        await self.assertFailure(txass.connect("http://localhost"), txass.InvalidURL)


class ConnectionLossTests(unittest.TestCase):
    async def test_call_fails_with_connection_lost(self) -> None:
        """
        When the connection drops while a call waits for its confirm, then
        the call fails with txass.ConnectionLost.
        """
        name = unique_name("lost")
        remove_after(self, name)
        broker = await txass.connect(BROKER_URL)
        self.addCleanup(broker.close)
        client = broker.service(name).client()
        await client.call("foo", 1)
        pending = client.call("foo", 2)
        transport = broker._connection._protocol.transport
        reactor.callLater(0, transport.abortConnection)
        await self.assertFailure(within(pending), txass.ConnectionLost)


class _RawChannel:
    """
    The part of pika's channel that AMQPChannel acknowledges on.
    """

    def __init__(self) -> None:
        self.frames: list[tuple[str, int, bool]] = []
        self.is_open = True
        self._channel = self
        self.on_closed: defer.Deferred[None] = defer.Deferred()

    def add_on_cancel_callback(self, callback: object) -> None:
        pass

    def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        self.frames.append(("ack", delivery_tag, multiple))

    def basic_reject(self, delivery_tag: int, requeue: bool = True) -> None:
        self.frames.append(("reject", delivery_tag, requeue))

    def close(self) -> None:
        self.frames.append(("close", 0, False))


class _Receiving:
    receiving = False

    def __init__(self) -> None:
        self.after_receiving: list[object] = []

    def finish(self) -> None:
        self.receiving = False
        waiting, self.after_receiving = self.after_receiving, []
        for send in waiting:
            send()  # type: ignore[operator]


class AckBatchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.raw = _RawChannel()
        self.protocol = _Receiving()
        self.channel = AMQPChannel(self.raw, confirms=False, reactor=reactor, protocol=self.protocol)  # type: ignore[arg-type]
        self.channel._unsettled.extend(range(1, 7))

    def test_acks_batched_while_receiving(self) -> None:
        """
        Acknowledgements made while data is handled go out once it is done:
        one multiple-ack for the run at the start of the unsettled
        deliveries, and one frame for each other.
        """
        self.protocol.receiving = True
        for tag in (2, 1, 4):
            self.channel.ack(tag)
        self.assertEqual(self.raw.frames, [])
        self.protocol.finish()
        self.assertEqual(self.raw.frames, [("ack", 2, True), ("ack", 4, False)])
        self.assertEqual(list(self.channel._unsettled), [3, 4, 5, 6])

    def test_single_ack_not_multiple(self) -> None:
        """
        A run of one acknowledgement goes out as a plain ack, not a
        multiple-ack.
        """
        self.protocol.receiving = True
        self.channel.ack(1)
        self.protocol.finish()
        self.assertEqual(self.raw.frames, [("ack", 1, False)])

    def test_later_ack_moves_past_settled(self) -> None:
        """
        An acknowledgement made outside received data goes out at once, and
        the deliveries settled behind it are forgotten, so a later
        multiple-ack never covers a delivery still being served.
        """
        self.protocol.receiving = True
        self.channel.ack(4)
        self.protocol.finish()
        self.channel.reject(1, requeue=True)
        self.channel.ack(3)
        self.assertEqual(list(self.channel._unsettled), [2, 3, 4, 5, 6])
        self.channel.ack(2)
        self.assertEqual(list(self.channel._unsettled), [5, 6])
        self.protocol.receiving = True
        self.channel.ack(6)
        self.protocol.finish()
        self.assertEqual(
            self.raw.frames,
            [("ack", 4, False), ("reject", 1, True), ("ack", 3, False), ("ack", 2, False), ("ack", 6, False)],
        )

    def test_closed_channel_sends_nothing(self) -> None:
        """
        Acknowledgements held back for a channel that closed meanwhile are
        dropped: the broker requeues those deliveries.
        """
        self.protocol.receiving = True
        self.channel.ack(1)
        self.raw.is_open = False
        self.protocol.finish()
        self.assertEqual(self.raw.frames, [])

    def test_close_sends_held_acks(self) -> None:
        """
        Closing the channel while acknowledgements are held back sends them
        first, so served deliveries are not requeued.
        """
        self.protocol.receiving = True
        self.channel.ack(1)
        self.channel.ack(2)
        closing = defer.Deferred.fromCoroutine(self.channel.close())
        self.assertEqual(self.raw.frames[:1], [("ack", 2, True)])
        self.protocol.finish()
        self.assertEqual(self.raw.frames[1:], [("close", 0, False)])
        self.raw.on_closed.callback(None)
        self.successResultOf(closing)


class SendNowTests(unittest.TestCase):
    async def connection_with_channel(self) -> tuple[Any, Any, AMQPChannel, list[bytes]]:
        """
        Connect, open a channel, and record what is written to the socket
        directly, outside the reactor's writes.
        """
        broker = await connect(self)
        protocol = broker._connection._protocol
        socket_transport = protocol.socket_transport
        assert socket_transport is not None
        channel = await broker._connection.channel()
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(channel.close()))
        written: list[bytes] = []
        write_some = socket_transport.writeSomeData

        def record(data: bytes) -> Any:
            written.append(bytes(data))
            return write_some(data)

        self.patch(socket_transport, "writeSomeData", record)
        start_writing = socket_transport.startWriting

        def watch() -> None:
            self.watched += 1
            start_writing()

        self.watched = 0
        self.patch(socket_transport, "startWriting", watch)
        return protocol, socket_transport, channel, written

    def receive(self, protocol: Any, during: Any) -> None:
        """
        Hand the protocol a heartbeat frame, which pika handles without a
        reply, and call C{during} while it is handled.
        """
        original = protocol._impl.data_received
        self.patch(protocol._impl, "data_received", lambda data: (original(data), during()))
        protocol.dataReceived(b"\x08\x00\x00\x00\x00\x00\x00\xce")

    async def test_sent_before_receiving_returns(self) -> None:
        """
        When several messages are published while the connection handles
        received data, then they leave in one write to the socket before
        the handling returns, and the reactor is never asked to watch the
        socket for writing.
        """
        protocol, socket_transport, channel, written = await self.connection_with_channel()
        queues = [unique_name("nowhere") for _ in range(3)]

        def publish() -> None:
            for queue in queues:
                channel.publish("", queue, b"{}", MessageProperties())

        self.receive(protocol, publish)
        self.assertEqual(self.watched, 0)
        self.assertEqual(len(written), 1)
        self.assertEqual([written[0].find(queue.encode()) >= 0 for queue in queues], [True, True, True])

    async def test_pika_writes_keep_their_order(self) -> None:
        """
        When frames that pika encodes and frames that txass encodes are
        written while received data is handled, then they reach the socket
        in the order written.
        """
        protocol, socket_transport, channel, written = await self.connection_with_channel()
        first, by_pika, last = (unique_name(kind) for kind in ("first", "pika", "last"))

        def publish() -> None:
            channel.publish("", first, b"{}", MessageProperties())
            channel._raw.basic_publish("", by_pika, b"{}")
            channel.publish("", last, b"{}", MessageProperties())

        self.receive(protocol, publish)
        sent = b"".join(written)
        positions = [sent.find(name.encode()) for name in (first, by_pika, last)]
        self.assertNotIn(-1, positions)
        self.assertEqual(positions, sorted(positions))

    async def test_large_writes_go_to_the_transport(self) -> None:
        """
        When more than the hold limit is written while received data is
        handled, then the writes go to the transport at once, in order, so
        that a full buffer pauses the senders as without holding.
        """
        protocol, socket_transport, channel, written = await self.connection_with_channel()
        small, large = unique_name("small"), unique_name("large")
        held_after: list[int] = []

        def publish() -> None:
            channel.publish("", small, b"{}", MessageProperties())
            channel.publish("", large, b"x" * HOLD_LIMIT, MessageProperties())
            held_after.append(protocol._held_bytes)

        self.receive(protocol, publish)
        self.assertEqual(held_after, [0])
        await wait_until(lambda: socket_transport not in reactor.getWriters(), 10)
        sent = b"".join(written)
        self.assertLess(0, sent.find(small.encode()))
        self.assertLess(sent.find(small.encode()), sent.find(large.encode()))

    async def test_nothing_sent_inside_a_write(self) -> None:
        """
        When a write while received data is handled goes past the hold
        limit, then nothing is sent from inside it.  Sending could resume
        paused senders, and their writes would land among the frames of a
        message that pika writes one frame at a time.
        """
        protocol, socket_transport, channel, written = await self.connection_with_channel()
        write = protocol.write
        inside: list[bool] = []
        sent_inside: list[bool] = []

        def write_and_watch(data: bytes) -> None:
            inside.append(True)
            try:
                write(data)
            finally:
                inside.pop()

        def record(data: bytes) -> Any:
            sent_inside.append(bool(inside))
            return write_some(data)

        write_some = socket_transport.writeSomeData
        self.patch(protocol, "write", write_and_watch)
        self.patch(socket_transport, "writeSomeData", record)

        def publish() -> None:
            channel.publish("", unique_name("small"), b"{}", MessageProperties())
            channel.publish("", unique_name("large"), b"x" * HOLD_LIMIT, MessageProperties())

        self.receive(protocol, publish)
        await wait_until(lambda: socket_transport not in reactor.getWriters(), 10)
        self.assertTrue(sent_inside)
        self.assertNotIn(True, sent_inside)

    async def test_nothing_sent_after_abort(self) -> None:
        """
        When the connection is aborted while writes are held, then they are
        not sent, as Twisted sends nothing after an abort.
        """
        protocol, socket_transport, channel, written = await self.connection_with_channel()

        def publish_and_abort() -> None:
            channel.publish("", unique_name("nowhere"), b"{}", MessageProperties())
            protocol.transport.abortConnection()

        self.receive(protocol, publish_and_abort)
        await wait_until(lambda: protocol.transport is None or not socket_transport.connected, 10)
        self.assertEqual(written, [])

    def test_held_writes_sent_before_closing(self) -> None:
        """
        When pika closes the transport while writes are held, then they are
        written to the transport before it closes.
        """
        calls: list[tuple[str, bytes]] = []

        class Transport:
            def write(self, data: bytes) -> None:
                calls.append(("write", data))

            def loseConnection(self) -> None:
                calls.append(("close", b""))

        protocol = _PikaProtocol.__new__(_PikaProtocol)
        protocol.transport = Transport()
        protocol._held_writes = [b"reply", b"ack"]
        protocol._held_bytes = 8
        _WritesThroughProtocol(protocol).loseConnection()
        self.assertEqual(calls, [("write", b"replyack"), ("close", b"")])


# More than the kernel buffers of a loopback connection hold (an estimate:
# they hold a few megabytes), so the rest waits in the transport.
MORE_THAN_SOCKETS_HOLD = b"x" * 64_000_000


class _Holding(protocol.Protocol):
    """
    A server protocol that reads nothing until the test resumes its
    transport.
    """

    def connectionMade(self) -> None:
        self.transport.pauseProducing()
        self.factory.connected.callback(self)  # type: ignore[attr-defined]


class _Writer(protocol.Protocol):
    def connectionMade(self) -> None:
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.factory.connected.callback(self)  # type: ignore[attr-defined]

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


class SendBufferTests(unittest.TestCase):
    async def connected_pair(self) -> tuple[_Writer, _Holding]:
        server_factory = protocol.Factory.forProtocol(_Holding)
        server_factory.connected = defer.Deferred()  # type: ignore[attr-defined]
        port = reactor.listenTCP(0, server_factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        client_factory = protocol.ClientFactory.forProtocol(_Writer)
        client_factory.connected = defer.Deferred()  # type: ignore[attr-defined]
        reactor.connectTCP("127.0.0.1", port.getHost().port, client_factory)  # type: ignore[attr-defined]
        writer = await within(client_factory.connected)
        holding = await within(server_factory.connected)
        self.addCleanup(writer.transport.abortConnection)
        self.addCleanup(holding.transport.abortConnection)
        return writer, holding

    async def test_full_and_drained(self) -> None:
        """
        When more is written than the socket takes, then the buffer is full
        until the peer reads again, and its drained callbacks run then.
        """
        writer, holding = await self.connected_pair()
        buffer = _SendBuffer(writer.transport)
        writer.transport.registerProducer(buffer, True)
        drained: list[bool] = []
        buffer.on_drained(lambda: drained.append(buffer.full))
        writer.transport.write(MORE_THAN_SOCKETS_HOLD)
        self.assertTrue(buffer.full)
        self.assertEqual(drained, [])
        holding.transport.resumeProducing()
        await wait_until(lambda: bool(drained))
        self.assertEqual(drained, [False])

    async def test_closes_after_draining_while_full(self) -> None:
        """
        When the connection is closed while its buffer is full, then it
        still closes once the peer has read everything.
        """
        writer, holding = await self.connected_pair()
        buffer = _SendBuffer(writer.transport)
        writer.transport.registerProducer(buffer, True)
        writer.transport.write(MORE_THAN_SOCKETS_HOLD)
        self.assertTrue(buffer.full)
        writer.transport.loseConnection()
        holding.transport.resumeProducing()
        await within(writer.lost)


class PublishTests(unittest.TestCase):
    async def test_unencodable_fails_deferred(self) -> None:
        """
        When a property cannot be encoded, then publish on a confirm channel
        returns a failed Deferred rather than raising, and the channel stays
        open.
        """
        broker = await connect(self)
        channel = await broker._connection.channel(confirms=True)
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(channel.close()))
        queue = unique_name("unencodable")
        for properties in [MessageProperties(correlation_id="\udcff"), MessageProperties(headers={1: "x"})]:
            with self.subTest(properties=properties):
                published = channel.publish("", queue, b"{}", properties)
                self.assertIsInstance(published, defer.Deferred)
                self.failureResultOf(published)
        self.assertTrue(channel.is_open)

    async def test_returns_matched_by_message_id(self) -> None:
        """
        When unroutable mandatory messages are published among routed ones
        and ones the broker rejects, then each publish gets its own outcome:
        the returned ones UnroutableMessage, the rejected ones
        PublishFailed, the others success.
        """
        # Small frames spread each body over several frames.
        broker = await connect(self, f"{BROKER_URL}?frame_max=4096")
        channel = await broker._connection.channel(confirms=True)
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(channel.close()))
        queue = unique_name("returns")
        remove_after(self, queue)
        setup = await broker._connection.channel()
        await setup.declare_queue(queue, arguments={"x-max-length": 10, "x-overflow": "reject-publish"})
        await setup.close()
        nowhere = unique_name("nowhere")

        published = []
        for number in range(300):
            properties = MessageProperties(message_id=f"m{number}")
            routing_key = f"{nowhere}.{number}" if number % 7 == 3 else queue
            # With bodies of up to 9 KB in 4 KB frames, a return blamed on
            # the wrong publish showed in 3 of 7 runs before the fix.
            published.append(channel.publish("", routing_key, b"x" * (number * 31), properties, mandatory=True))
        outcomes = []
        for succeeded, value in await within(defer.DeferredList(published, consumeErrors=True), 30):
            outcomes.append("ok" if succeeded else type(value.value).__name__)

        returned = [number for number in range(300) if number % 7 == 3]
        routed = [number for number in range(300) if number % 7 != 3]
        self.assertEqual({outcomes[number] for number in returned}, {"UnroutableMessage"})
        self.assertEqual([outcomes[number] for number in routed[:10]], ["ok"] * 10)
        self.assertEqual({outcomes[number] for number in routed[10:]}, {"PublishFailed"})


class FrameCodecBrokerTests(unittest.TestCase):
    async def test_round_trip_through_broker(self) -> None:
        """
        When messages published with txass's encoder go through the broker
        to a consumer that txass's decoder serves, then each arrives with
        its body and properties, including bodies over several frames.
        """
        broker = await connect(self, f"{BROKER_URL}?frame_max=4096")
        connection = broker._connection
        protocol = connection._protocol
        queue = unique_name("codec")
        remove_after(self, queue)
        consumer = await connection.channel()
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(consumer.close()))
        await consumer.declare_queue(queue)
        received: list[Any] = []
        arrived: defer.Deferred[None] = defer.Deferred()
        bodies = [b"", b"{}", bytes(range(256)) * 16, b"\xce" * 20_000]

        def on_delivery(delivery: Any) -> None:
            received.append(delivery)
            consumer.ack(delivery.delivery_tag)
            if len(received) == len(bodies):
                arrived.callback(None)

        tag = await consumer.consume(queue, on_delivery)
        self.assertIn((consumer._raw.channel_number, tag), protocol.fast_consumers)

        publisher = await connection.channel(confirms=True)
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(publisher.close()))
        sent = []
        for number, body in enumerate(bodies):
            properties = MessageProperties(
                content_type="application/json",
                headers={"x-txass-attempts": number, "nested": {"list": [1, "two", b"three"]}},
                delivery_mode=2,
                correlation_id=f"c{number}",
                reply_to="amq.rabbitmq.reply-to.abc",
                message_id=f"m{number}",
                type="caf\xe9",
                timestamp=1_796_450_268 + number,
                app_id="txass",
                expiration="60000",
            )
            sent.append(properties)
            await publisher.publish("", queue, body, properties, mandatory=True)
        await within(arrived)

        self.assertEqual([delivery.body for delivery in received], bodies)
        self.assertEqual([delivery.properties for delivery in received], sent)
        self.assertEqual({delivery.routing_key for delivery in received}, {queue})
