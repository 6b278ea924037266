"""
Tests of servers and clients of one service on the real broker.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial import unittest

import txass
from tests import handler_module
from tests.support import Results, connect, message_count, raw_channel, remove_after, unique_name, within


class Echo:
    """
    The echo handler of the walkthrough, plus a few methods for the tests.
    """

    runs: list[str] = []

    def foo(self, input: Any) -> Any:
        return ["server", "foo", input]

    def later(self, input: Any) -> defer.Deferred[Any]:
        return task.deferLater(reactor, 0.01, lambda: ["later", input])

    async def coroutine(self, input: Any) -> Any:
        await task.deferLater(reactor, 0.01, lambda: None)
        return ["coroutine", input]

    def fail(self, input: Any) -> Any:
        raise ValueError(f"cannot handle {input} ünïcødé")

    def unencodable(self, input: Any) -> Any:
        return {1, 2, 3}

    def record(self, input: Any) -> None:
        Echo.runs.append(input)

    def _private(self, input: Any) -> Any:
        Echo.runs.append("private ran")
        return "private"

    constant = 42


class ContextHandler:
    """
    A handler that reports, after a random delay, the context it reads.
    """

    async def report(self, input: Any) -> Any:
        before = txass.current_request()
        await task.deferLater(reactor, random.uniform(0, 0.05), lambda: None)
        after = txass.current_request()
        return {
            "input": input,
            "before": [before.message_id, before.correlation_id, before.meta],
            "after": [after.message_id, after.correlation_id, after.meta, after.headers, after.redelivered],
        }


async def context_report(input: Any) -> Any:
    return await ContextHandler().report(input)


class ServiceTests(unittest.TestCase):
    async def serve(self, handler: Any, **options: Any) -> tuple[txass.Broker, str, txass.Server]:
        name = unique_name("svc")
        remove_after(self, name)
        broker = await connect(self)
        server = await broker.service(name).react(handler, **options)
        return broker, name, server

    async def client(self, broker: txass.Broker, name: str) -> tuple[txass.Client, Results]:
        results = Results()
        client = broker.service(name).client()
        await client.react(results)
        return client, results

    async def test_echo_round_trip(self) -> None:
        """
        When a client calls foo with 42, then its foo callback receives
        ["server", "foo", 42] with the correlation id the call returned.
        """
        broker, name, _ = await self.serve(Echo)
        client, results = await self.client(broker, name)
        correlation_id = await client.call("foo", 42)
        await results.wait_for(1)
        method, value, context = results.received[0]
        self.assertEqual(method, "foo")
        self.assertEqual(value, ["server", "foo", 42])
        self.assertEqual(context.correlation_id, correlation_id)

    async def test_deferred_and_coroutine_results(self) -> None:
        """
        When a method returns a Deferred or is a coroutine, then its
        eventual result is the reply.
        """
        broker, name, _ = await self.serve(Echo)
        client, results = await self.client(broker, name)
        await client.call("later", 1)
        await client.call("coroutine", 2)
        await results.wait_for(2)
        self.assertEqual(sorted(results.values()), [["coroutine", 2], ["later", 1]])

    async def test_handler_kinds(self) -> None:
        """
        When the handler is a class, a module, a mapping or an object, then
        each serves its methods.
        """
        cases: list[tuple[Any, str, Any]] = [
            (Echo, "foo", ["server", "foo", 3]),
            (handler_module, "double", 6),
            ({"triple": lambda x: x * 3}, "triple", 9),
            (Echo(), "foo", ["server", "foo", 3]),
        ]
        for handler, method, expected in cases:
            broker, name, _ = await self.serve(handler)
            client, results = await self.client(broker, name)
            await client.call(method, 3)
            await results.wait_for(1)
            self.assertEqual(results.values(), [expected])

    async def test_unreachable_names(self) -> None:
        """
        When a request names a missing or non-callable attribute, then the
        caller's callback of that name gets a MethodNotFound error.
        """
        broker, name, _ = await self.serve(Echo)
        client, results = await self.client(broker, name)
        for method in ["missing", "constant"]:
            await client.call(method, 1)
        await results.wait_for(2)
        for method, value, _ in results.received:
            self.assertIsInstance(value, txass.RemoteError, method)
            self.assertEqual(value.type, "MethodNotFound", method)

    async def test_private_names_run_nothing(self) -> None:
        """
        When a request names a private attribute, then the reply is a
        MethodNotFound error and no handler code runs.
        """
        Echo.runs = []
        broker, name, _ = await self.serve(Echo)
        queue = unique_name("reply")
        remove_after(self, name, queues=[queue])
        channel = await raw_channel(self)
        await channel.declare_queue(queue, durable=False)
        replies: list[bytes] = []
        both: defer.Deferred[None] = defer.Deferred()

        def arrived(delivery: Any) -> None:
            replies.append(delivery.body)
            if len(replies) == 2:
                both.callback(None)

        await channel.consume(queue, arrived)
        client = broker.service(name).client()
        await client.call("_private", 1, reply_to=queue)
        await client.call("__init__", 1, reply_to=queue)
        await within(both)
        for body in replies:
            self.assertIn(b'"type":"MethodNotFound"', body)
        self.assertEqual(Echo.runs, [])

    async def test_error_reply(self) -> None:
        """
        When a handler raises, then the callback receives a RemoteError with
        the type and message, and the server keeps serving.
        """
        broker, name, _ = await self.serve(Echo)
        client, results = await self.client(broker, name)
        await client.call("fail", 7)
        await client.call("foo", 8)
        await results.wait_for(2)
        errors = dict((method, value) for method, value, _ in results.received)
        self.assertEqual(errors["fail"], txass.RemoteError("ValueError", "cannot handle 7 ünïcødé", None, "fail"))
        self.assertEqual(errors["foo"], ["server", "foo", 8])
        self.flushLoggedErrors(ValueError)

    async def test_error_logged_with_ids(self) -> None:
        """
        When a handler raises, then the error is logged with the service,
        method and the request's message id.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        broker, name, _ = await self.serve(Echo)
        client, results = await self.client(broker, name)
        correlation_id = await client.call("fail", 1)
        await results.wait_for(1)
        logged = [e for e in events if e.get("log_failure") is not None and e.get("service") == name]
        self.assertEqual(len(logged), 1)
        self.assertEqual(logged[0]["method"], "fail")
        self.assertEqual(logged[0]["message_id"], correlation_id)
        self.assertEqual(logged[0]["log_level"], LogLevel.error)
        self.flushLoggedErrors(ValueError)

    async def test_error_request_acked(self) -> None:
        """
        When a handler raises, then the request is acknowledged, not left
        for redelivery.
        """
        broker, name, server = await self.serve(Echo)
        client, results = await self.client(broker, name)
        await client.call("fail", 1)
        await results.wait_for(1)
        await server.stop()
        self.assertEqual(await message_count(self, name), 0)
        self.flushLoggedErrors(ValueError)

    async def test_unencodable_result(self) -> None:
        """
        When a handler returns a value JSON cannot hold, then the caller gets
        an EncodingError reply.
        """
        broker, name, _ = await self.serve(Echo)
        client, results = await self.client(broker, name)
        await client.call("unencodable", None)
        await results.wait_for(1)
        error = results.values()[0]
        self.assertIsInstance(error, txass.RemoteError)
        self.assertEqual(error.type, "EncodingError")

    async def test_unencodable_request(self) -> None:
        """
        When call is given data JSON cannot hold, then its Deferred fails
        with EncodingError.
        """
        broker, name, _ = await self.serve(Echo)
        client = broker.service(name).client()
        await self.assertFailure(client.call("foo", object()), txass.EncodingError)

    async def test_tracebacks_when_enabled(self) -> None:
        """
        When a service sends tracebacks, then the RemoteError carries the
        remote traceback text; by default it does not.
        """
        broker, name, _ = await self.serve(Echo, send_tracebacks=True)
        client, results = await self.client(broker, name)
        await client.call("fail", 1)
        await results.wait_for(1)
        error = results.values()[0]
        self.assertIn("Traceback", error.traceback)
        self.assertIn("cannot handle 1", error.traceback)
        self.flushLoggedErrors(ValueError)

    async def test_cast(self) -> None:
        """
        When a client casts, then the handler runs and no result arrives.
        """
        Echo.runs = []
        broker, name, server = await self.serve(Echo)
        client, results = await self.client(broker, name)
        await client.cast("record", "x")
        await client.call("foo", "after")
        await results.wait_for(1)
        self.assertEqual(Echo.runs, ["x"])
        self.assertEqual(results.values(), [["server", "foo", "after"]])

    async def test_routing_key(self) -> None:
        """
        When a call names another client's key, then that client receives
        the result and the caller does not.
        """
        broker, name, _ = await self.serve(Echo)
        remove_after(self, name, client_keys=["a", "b"])
        caller = broker.service(name).client(key="a")
        caller_results = Results()
        await caller.react(caller_results)
        receiver = broker.service(name).client(key="b")
        receiver_results = Results()
        await receiver.react(receiver_results)
        await caller.call("foo", 1, routing_key="b")
        await caller.call("foo", 2)
        await receiver_results.wait_for(1)
        await caller_results.wait_for(1)
        self.assertEqual(receiver_results.values(), [["server", "foo", 1]])
        self.assertEqual(caller_results.values(), [["server", "foo", 2]])

    async def test_reply_to(self) -> None:
        """
        When a call names a reply_to queue, then the reply goes to that queue.
        """
        broker, name, _ = await self.serve(Echo)
        queue = unique_name("reply")
        remove_after(self, name, queues=[queue])
        channel = await raw_channel(self)
        await channel.declare_queue(queue, durable=False)
        arrived: defer.Deferred[Any] = defer.Deferred()
        await channel.consume(queue, lambda delivery: arrived.called or arrived.callback(delivery))
        client = broker.service(name).client()
        correlation_id = await client.call("foo", 5, reply_to=queue)
        delivery = await within(arrived)
        self.assertEqual(delivery.properties.correlation_id, correlation_id)
        self.assertIn(b'"result":["server","foo",5]', delivery.body)

    async def test_routing_key_and_reply_to_exclusive(self) -> None:
        """
        When a call names both routing_key and reply_to, then it fails with
        ValueError.
        """
        broker = await connect(self)
        client = broker.service(unique_name("x")).client()
        await self.assertFailure(client.call("foo", 1, routing_key="a", reply_to="q"), ValueError)

    async def test_meta_round_trip(self) -> None:
        """
        When a call carries meta, then the handler reads it and the result
        callback receives it again.
        """
        broker, name, _ = await self.serve(ContextHandler)
        client, results = await self.client(broker, name)
        await client.call("report", 1, meta={"trace": "t-1", "user": "ünï"})
        await results.wait_for(1)
        _, value, context = results.received[0]
        self.assertEqual(value["before"][2], {"trace": "t-1", "user": "ünï"})
        self.assertEqual(context.meta, {"trace": "t-1", "user": "ünï"})

    async def test_context_with_many_in_flight(self) -> None:
        """
        When many requests are in flight at once, then each handler call
        reads its own request's context before and after awaiting, for
        class, module, mapping and object handlers.
        """
        handlers: list[Any] = [
            ContextHandler,
            ContextHandler(),
            {"report": context_report},
        ]
        for handler in handlers:
            broker, name, _ = await self.serve(handler, prefetch=50)
            client, results = await self.client(broker, name)
            sent = {}
            for number in range(100):
                correlation_id = await client.call("report", number, meta={"n": number})
                sent[correlation_id] = number
            await results.wait_for(100, seconds=30)
            for _, value, context in results.received:
                number = sent[context.correlation_id]
                self.assertEqual(value["input"], number)
                self.assertEqual(value["before"], [context.correlation_id, context.correlation_id, {"n": number}])
                self.assertEqual(value["after"][:3], value["before"])
                self.assertFalse(value["after"][4])

    async def test_context_in_module_handler(self) -> None:
        """
        When a module handler reads the context, then it sees the caller's
        meta.
        """
        broker, name, _ = await self.serve(handler_module)
        client, results = await self.client(broker, name)
        await client.call("echo_meta", None, meta={"who": "module"})
        await results.wait_for(1)
        self.assertEqual(results.values(), [{"who": "module"}])

    async def test_stage_feeds_next(self) -> None:
        """
        When a handler calls another service through the broker in its
        context, then that service receives the request.
        """
        broker = await connect(self)
        first, second = unique_name("first"), unique_name("second")
        remove_after(self, first)
        remove_after(self, second)
        received = Results()

        class Forward:
            async def work(self, value: Any) -> str:
                request = txass.current_request()
                assert request.broker is not None
                await request.broker.service(second).client().cast("store", value * 2)
                return "forwarded"

        await broker.service(second).react({"store": received.store})
        await broker.service(first).react(Forward)
        client, results = await self.client(broker, first)
        await client.call("work", 21)
        await received.wait_for(1)
        await results.wait_for(1)
        self.assertEqual(received.values(), [42])
        self.assertEqual(results.values(), ["forwarded"])

    async def test_no_current_request_outside(self) -> None:
        """
        When current_request is called outside handler code, then it raises
        NoCurrentRequest.
        """
        self.assertRaises(txass.NoCurrentRequest, txass.current_request)

    async def test_invalid_prefetch(self) -> None:
        """
        When react is given a prefetch below 1, then it raises ValueError.
        """
        broker = await connect(self)
        service = broker.service(unique_name("p"))
        self.assertRaises(ValueError, service.react, Echo, prefetch=0)


class ClientQueueTests(unittest.TestCase):
    async def test_cast_declares_no_result_queue(self) -> None:
        """
        When a client only casts, then no result queue is declared for it
        and the broker does not keep track of it.
        """
        name = unique_name("cast")
        remove_after(self, name)
        broker = await connect(self)
        client = broker.service(name).client()
        await client.cast("record", 1)
        channel = await raw_channel(self)
        error = await self.assertFailure(
            defer.Deferred.fromCoroutine(channel.declare_queue(client.queue, passive=True)), txass.ChannelClosed
        )
        self.assertEqual(error.reply_code, 404)
        self.assertEqual(len(broker._clients), 0)

    async def test_routing_key_results_wait(self) -> None:
        """
        When a call routes its result to a key whose client has not started,
        then the result waits in that key's durable queue and reaches the
        client once it reacts.
        """
        name = unique_name("routed")
        remove_after(self, name, client_keys=["later"])
        broker = await connect(self)
        await broker.service(name).react(Echo)
        await broker.service(name).client().call("foo", 9, routing_key="later")
        queue = f"{name}.client.later"
        for _ in range(100):
            if await message_count(self, queue) == 1:
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        results = Results()
        await broker.service(name).client(key="later").react(results)
        await results.wait_for(1)
        self.assertEqual(results.values(), [["server", "foo", 9]])
