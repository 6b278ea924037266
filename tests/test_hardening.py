"""
Tests of requests and settings built to abuse a service: oversized
headers, replies sent as requests, names reached through a metaclass,
unusual files and URLs.
"""

from __future__ import annotations

import abc
import os
import types
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

import txass
from tests.support import Results, connect, message_count, raw_channel, remove_after, unique_name, within
from txass import _envelope
from txass._connection import MessageProperties, parse_url, read_url_file
from txass._handler import make_dispatcher
from txass._policy import Retry

try:
    import msgpack
except ImportError:
    msgpack = None


class Failing:
    def work(self, value: Any) -> None:
        raise RuntimeError("always")

    def generator_exit(self, value: Any) -> None:
        raise GeneratorExit()


class Target:
    ran: list[Any] = []

    def close_all(self, value: Any) -> str:
        Target.ran.append(value)
        return "closed"


class Echo:
    def echo(self, value: Any) -> Any:
        return value


async def publish(testcase: unittest.TestCase, name: str, body: bytes, **properties: Any) -> None:
    channel = await raw_channel(testcase)
    await channel.enable_confirms()
    await channel.publish(name, name, body, MessageProperties(content_type="application/json", **properties))


class AbuseTests(unittest.TestCase):
    async def test_headers_too_large_to_copy(self) -> None:
        """
        A request whose headers nearly fill a frame is not copied where the
        copy's added headers would not fit (here, to the dead-letter queue
        after the last attempt), because the broker would close the
        server's connection for it.  The caller gets the handler's error,
        and the connection stays open.
        """
        name = unique_name("abuse")
        remove_after(self, name, client_keys=["k"], queues=[f"{name}.retry.10"])
        broker = await connect(self)
        await broker.service(name).react(Failing, retry=Retry(delay=0.01, backoff=1.0))
        results = Results()
        client = broker.service(name).client(key="k")
        await client.react(results)

        pad = "x" * (131072 - 200)
        await publish(
            self,
            name,
            _envelope.encode_request("work", 1),
            message_id="m-big",
            correlation_id="m-big",
            reply_to=client.queue,
            headers={"pad": pad},
        )
        await results.wait_for(1)

        value = results.received[0][1]
        self.assertIsInstance(value, txass.RemoteError)
        self.assertEqual(value.type, "RuntimeError")
        self.assertTrue(broker.is_open)
        self.assertEqual(await message_count(self, name), 0)
        self.flushLoggedErrors(RuntimeError)

    async def test_reply_is_not_a_request(self) -> None:
        """
        A reply envelope that reaches a service queue, for example because
        a caller of another service named that queue as its reply_to, runs
        no method there.
        """
        source = unique_name("abuse")
        target = unique_name("abuse")
        remove_after(self, source)
        remove_after(self, target)
        broker = await connect(self)
        Target.ran = []
        await broker.service(source).react(Echo)
        await broker.service(target).react(Target)
        await publish(
            self,
            source,
            _envelope.encode_request("close_all", None),
            message_id="m-deputy",
            reply_to=target,
        )
        await publish(self, target, _envelope.encode_request("close_all", "direct"), message_id="m-direct")

        async def served() -> None:
            while Target.ran != ["direct"]:
                await defer.Deferred.fromCoroutine(_pause())

        await within(defer.Deferred.fromCoroutine(served()))
        self.assertEqual(Target.ran, ["direct"])
        self.assertEqual(await message_count(self, target), 0)

    async def test_generator_exit_gets_reply(self) -> None:
        """
        A handler that raises GeneratorExit gets an error reply, like any
        other exception.
        """
        name = unique_name("abuse")
        remove_after(self, name)
        broker = await connect(self)
        await broker.service(name).react(Failing)
        error = await self.assertFailure(broker.rpc(name).call("generator_exit", None), txass.RemoteError)
        self.assertEqual(error.type, "GeneratorExit")
        self.flushLoggedErrors(GeneratorExit)


async def _pause() -> None:
    from twisted.internet import reactor, task

    await task.deferLater(reactor, 0.02, lambda: None)


class Abstract(abc.ABC):
    constructed = 0

    def __init__(self) -> None:
        Abstract.constructed += 1

    def work(self, value: Any) -> Any:
        return value

    class Helper:
        def __init__(self, value: Any) -> None:
            pass


class HandlerLookupTests(unittest.SynchronousTestCase):
    def test_metaclass_methods_unreachable(self) -> None:
        """
        Methods of a handler class's metaclass, such as ABCMeta.register,
        are not reachable, and checking them runs no constructor.
        """
        dispatcher = make_dispatcher(Abstract)
        Abstract.constructed = 0
        for name in ("register", "mro"):
            with self.assertRaises(txass.MethodNotFound):
                dispatcher.resolve(name)
        self.assertEqual(Abstract.constructed, 0)
        self.assertRaises(txass.InvalidHandler, make_dispatcher, Abstract, expose=["register"])

    def test_nested_class_unreachable(self) -> None:
        """
        A class stored as an attribute of a handler is not a method.
        """
        with self.assertRaises(txass.MethodNotFound) as caught:
            make_dispatcher(Abstract).resolve("Helper")
        self.assertIn("is a class", str(caught.exception))

    def test_bad_all(self) -> None:
        """
        A module handler whose __all__ is not a list of names is refused
        with InvalidHandler, not a TypeError.
        """
        for value in (5, [1, 2]):
            module = types.ModuleType("odd_handler")
            module.__all__ = value  # type: ignore[attr-defined]
            self.assertRaises(txass.InvalidHandler, make_dispatcher, module)


class InputLimitTests(unittest.SynchronousTestCase):
    def test_long_method_name(self) -> None:
        """
        A request whose method name is longer than 255 bytes is invalid,
        and the error does not repeat the name.
        """
        body = _envelope.encode_json({"method": "\u0085" * 5000, "data": None})
        with self.assertRaises(txass.InvalidRequest) as caught:
            _envelope.decode_request(body, None)
        self.assertLess(len(str(caught.exception)), 200)

    def test_msgpack_timestamp_plain(self) -> None:
        """
        A MessagePack timestamp becomes an integer of nanoseconds, so a
        handler receives only plain data.
        """
        if msgpack is None:
            raise unittest.SkipTest("the msgpack package is not installed")
        codec = _envelope.get_codec("msgpack")
        body = msgpack.packb({"method": "echo", "data": msgpack.Timestamp(1, 5)}, datetime=False)
        request = _envelope.decode_request(body, "application/msgpack", (codec,))
        self.assertEqual(request.data, 1_000_000_005)


class SettingsTests(unittest.SynchronousTestCase):
    def test_url_file_not_regular(self) -> None:
        """
        A broker URL file that is a FIFO or a device is refused at once,
        without opening it.
        """
        fifo = self.mktemp()
        os.mkfifo(fifo, 0o600)
        for path in (fifo, "/dev/zero"):
            with self.assertRaises(txass.InvalidURL) as caught:
                read_url_file(path)
            self.assertIn("not a regular file", str(caught.exception))

    def test_unencoded_password_characters(self) -> None:
        """
        A password with an unencoded '/' makes the URL invalid, with a
        message that shows no part of it.
        """
        with self.assertRaises(txass.InvalidURL) as caught:
            parse_url("amqp://user:9999/S3cr3t@127.0.0.1/vh")
        self.assertNotIn("S3cr3t", str(caught.exception))

    def test_repeated_option(self) -> None:
        """
        An option given twice is refused rather than its last value used.
        """
        self.assertRaises(txass.InvalidURL, parse_url, "amqps://h/?insecure_skip_verify=false&insecure_skip_verify=true")
        self.assertRaises(txass.InvalidURL, parse_url, "amqp://h/?heartbeat=5&heartbeat=6")





class LogEscapeTests(unittest.SynchronousTestCase):
    def test_ids_escaped_in_logs(self) -> None:
        """
        A message id with a carriage return, a line feed and a terminal
        escape is logged with those characters escaped, so it cannot forge
        a log line.  Other fields are left as they are.
        """
        from twisted.logger import LogLevel, globalLogPublisher

        from txass._util import MessageLogger

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        MessageLogger(namespace="test").emit(
            LogLevel.info, "request {message_id}", message_id="a\r\n2026 [fake] \x1b[31mred", service="s\n"
        )
        [event] = [e for e in events if e.get("log_namespace") == "test"]
        self.assertEqual(event["message_id"], "a\\r\\n2026 [fake] \\x1b[31mred")
        self.assertEqual(event["service"], "s\n")


class UnfinishedQueueTests(unittest.TestCase):
    async def test_deleted_unfinished_queue_named(self) -> None:
        """
        When the queue of unfinished requests is deleted, then the server
        logs that queue's name, declares it again and consumes it again.
        """
        from twisted.logger import globalLogPublisher

        from tests.support import rabbitmqctl, wait_until

        name = unique_name("abuse")
        remove_after(self, name)
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        broker = await connect(self)
        await broker.service(name).react(Echo)
        channel = await raw_channel(self)
        await channel.delete_queue(f"{name}.unfinished")

        def consumers(queue: str) -> int:
            for line in rabbitmqctl("list_queues", "name", "consumers").splitlines():
                fields = line.split()
                if fields and fields[0] == queue:
                    return int(fields[1])
            return 0

        await wait_until(lambda: consumers(f"{name}.unfinished") == 1 and consumers(name) == 1, 30)
        cancelled = [event for event in events if "cancelled the consumer" in event.get("log_format", "")]
        self.assertEqual([event["queue"] for event in cancelled], [f"{name}.unfinished"])
        self.assertEqual(await broker.rpc(name).call("echo", 1), 1)
