"""
Tests of the body formats a service accepts: JSON by default, MessagePack
when a service names it, and nothing else.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

import txass
from tests.support import Results, connect, raw_channel, remove_after, unique_name, within
from txass import _envelope
from txass._connection import Delivery, MessageProperties

try:
    import msgpack
except ImportError:
    msgpack = None

NO_MSGPACK = "the msgpack package is not installed" if msgpack is None else None


class Echo:
    def echo(self, value: Any) -> Any:
        return value

    def kind(self, value: Any) -> str:
        return type(value).__name__

    def fail(self, value: Any) -> None:
        raise ValueError(f"failed on {value!r}")


class CodecUnitTests(unittest.SynchronousTestCase):
    def test_unknown_codec(self) -> None:
        """
        Only 'json' and 'msgpack' name codecs; pickle is not one.
        """
        for name in ("pickle", "yaml", "", None, b"json"):
            self.assertRaises(ValueError, _envelope.get_codec, name)
        self.assertIs(_envelope.get_codec("json"), _envelope.JSON)

    def test_codec_list(self) -> None:
        """
        A codec list must be a non-empty list of names, not one string.
        """
        self.assertRaises(ValueError, _envelope.get_codecs, "json")
        self.assertRaises(ValueError, _envelope.get_codecs, [])
        self.assertEqual(_envelope.get_codecs(["json", "json"]), (_envelope.JSON,))

    def test_react_checks_codecs(self) -> None:
        """
        react() and client() raise ValueError for an unknown codec.
        """
        service = txass.Service(None, _topology("unused"))  # type: ignore[arg-type]
        self.assertRaises(ValueError, service.react, Echo, codecs=["pickle"])
        self.assertRaises(ValueError, service.client, codec="pickle")

    def test_json_rejects_msgpack_content(self) -> None:
        """
        A JSON-only decoder rejects a MessagePack content type, naming what
        it accepts.
        """
        with self.assertRaises(txass.InvalidRequest) as caught:
            _envelope.decode_request(b"\x80", "application/msgpack")
        self.assertIn("'application/json'", str(caught.exception))

    def test_msgpack_round_trip(self) -> None:
        """
        MessagePack envelopes carry bytes and Unicode exactly.
        """
        if msgpack is None:
            raise unittest.SkipTest(NO_MSGPACK)
        codec = _envelope.get_codec("msgpack")
        data = {"raw": b"\x00\xff" * 3, "text": "\N{SNOWMAN} caf\u00e9", "n": [1, 2.5, None, True]}
        body = _envelope.encode_request("echo", data, {"trace": "t"}, codec)
        request = _envelope.decode_request(body, "application/msgpack", (_envelope.JSON, codec))
        self.assertEqual(request.data, data)
        self.assertEqual(request.meta, {"trace": "t"})
        self.assertIs(request.codec, codec)

    def test_msgpack_refuses_extensions(self) -> None:
        """
        A MessagePack body with an extension type is an invalid request, so
        no application decoder runs on request data.
        """
        if msgpack is None:
            raise unittest.SkipTest(NO_MSGPACK)
        codec = _envelope.get_codec("msgpack")
        body = msgpack.packb({"method": "echo", "data": msgpack.ExtType(5, b"x")})
        with self.assertRaises(txass.InvalidRequest) as caught:
            _envelope.decode_request(body, "application/msgpack", (codec,))
        self.assertIn("extension type 5", str(caught.exception))

    def test_msgpack_invalid_bodies(self) -> None:
        """
        Truncated, trailing-garbage and non-map MessagePack bodies are
        invalid requests.
        """
        if msgpack is None:
            raise unittest.SkipTest(NO_MSGPACK)
        codec = _envelope.get_codec("msgpack")
        good = msgpack.packb({"method": "echo", "data": 1})
        for body in (good[:-1], good + b"\x01", msgpack.packb([1, 2]), b""):
            with self.subTest(body=body):
                self.assertRaises(txass.InvalidRequest, _envelope.decode_request, body, "application/msgpack", (codec,))

    def test_msgpack_unencodable(self) -> None:
        """
        A value MessagePack cannot carry raises EncodingError.
        """
        if msgpack is None:
            raise unittest.SkipTest(NO_MSGPACK)
        codec = _envelope.get_codec("msgpack")
        for value in ({1, 2}, object(), 2**70):
            self.assertRaises(txass.EncodingError, _envelope.encode_request, "echo", value, None, codec)


def _topology(name: str) -> Any:
    from txass._topology import Topology

    return Topology.for_service(name)


class CodecBrokerTests(unittest.TestCase):
    async def test_msgpack_service(self) -> None:
        """
        A service that accepts MessagePack serves MessagePack calls with
        MessagePack replies carrying bytes, and JSON calls with JSON.
        """
        if msgpack is None:
            raise unittest.SkipTest(NO_MSGPACK)
        name = unique_name("codec")
        remove_after(self, name)
        broker = await connect(self)
        await broker.service(name).react(Echo, codecs=["json", "msgpack"])
        packed = broker.rpc(name, codec="msgpack")
        self.assertEqual(await packed.call("echo", {"b": b"\x00\x01"}), {"b": b"\x00\x01"})
        self.assertEqual(await packed.call("kind", b"x"), "bytes")
        error = await self.assertFailure(packed.call("fail", b"\xff"), txass.RemoteError)
        self.assertEqual(error.type, "ValueError")
        self.assertEqual(await broker.rpc(name).call("echo", ["j"]), ["j"])
        self.flushLoggedErrors(ValueError)

    async def test_msgpack_client_results(self) -> None:
        """
        A result client that sends MessagePack receives its results.
        """
        if msgpack is None:
            raise unittest.SkipTest(NO_MSGPACK)
        name = unique_name("codec")
        remove_after(self, name)
        broker = await connect(self)
        await broker.service(name).react(Echo, codecs=["msgpack"])
        results = Results()
        client = broker.service(name).client(codec="msgpack")
        await client.react(results)
        await client.call("echo", b"\x01\x02")
        await results.wait_for(1)
        self.assertEqual(results.received[0][1], b"\x01\x02")

    async def test_json_service_rejects_msgpack(self) -> None:
        """
        A service that accepts only JSON replies to a MessagePack request
        with an InvalidRequest error, in JSON, naming the content types it
        accepts, and the handler does not run.
        """
        if msgpack is None:
            raise unittest.SkipTest(NO_MSGPACK)
        name = unique_name("codec")
        remove_after(self, name)
        broker = await connect(self)
        await broker.service(name).react(Echo)
        error = await self.assertFailure(broker.rpc(name, codec="msgpack").call("echo", 1), txass.RemoteError)
        self.assertEqual(error.type, "InvalidRequest")
        self.assertIn("application/msgpack", error.message)
        self.assertIn("only 'application/json' is accepted", error.message)

    async def test_msgpack_only_rejects_json(self) -> None:
        """
        A service that accepts only MessagePack rejects a JSON request.
        """
        if msgpack is None:
            raise unittest.SkipTest(NO_MSGPACK)
        name = unique_name("codec")
        remove_after(self, name)
        broker = await connect(self)
        await broker.service(name).react(Echo, codecs=["msgpack"])
        error = await self.assertFailure(broker.rpc(name).call("echo", 1), txass.RemoteError)
        self.assertEqual(error.type, "InvalidRequest")
        self.assertIn("only 'application/msgpack' is accepted", error.message)

    async def test_reply_content_type(self) -> None:
        """
        The reply to a MessagePack request has the MessagePack content type.
        """
        if msgpack is None:
            raise unittest.SkipTest(NO_MSGPACK)
        name = unique_name("codec")
        reply_queue = f"{name}.replies"
        remove_after(self, name, queues=[reply_queue])
        broker = await connect(self)
        await broker.service(name).react(Echo, codecs=["msgpack"])
        channel = await raw_channel(self)
        await channel.declare_queue(reply_queue, durable=False)
        await channel.enable_confirms()
        codec = _envelope.get_codec("msgpack")
        await channel.publish(
            name,
            name,
            _envelope.encode_request("echo", b"z", None, codec),
            MessageProperties(content_type="application/msgpack", message_id="m1", correlation_id="m1", reply_to=reply_queue),
        )
        arrived: defer.Deferred[Delivery] = defer.Deferred()
        await channel.consume(reply_queue, lambda delivery: arrived.called or arrived.callback(delivery))
        delivery = await within(arrived)
        self.assertEqual(delivery.properties.content_type, "application/msgpack")
        self.assertEqual(msgpack.unpackb(delivery.body), {"method": "echo", "result": b"z", "meta": {}})
