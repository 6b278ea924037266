"""
Tests of how servers and clients survive bad messages, misbehaving
handlers and callbacks, and their own users' mistakes.
"""

from __future__ import annotations

import asyncio
import gc
import json
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

import txass
from tests.support import Results, connect, raw_channel, remove_after, unique_name, within
from txass._connection import MessageProperties


class Handler:
    def ok(self, value: Any) -> str:
        return "served"

    def echo(self, value: Any) -> Any:
        return value

    def surrogate_error(self, value: Any) -> Any:
        # os.fsdecode of a file name that is not UTF-8 gives such text.
        raise ValueError(b"/tmp/caf\xe9".decode("utf-8", "surrogateescape"))

    def exits(self, value: Any) -> Any:
        raise SystemExit(3)

    async def cancelled(self, value: Any) -> Any:
        raise asyncio.CancelledError()

    def never(self, value: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        Handler.unfired.append(d)
        return d

    # Deferreds returned by "never", which never fire.
    unfired: list[defer.Deferred[Any]] = []


class ServerFaultTests(unittest.TestCase):
    async def serve(self) -> tuple[txass.Broker, str, txass.Client, Results]:
        name = unique_name("fault")
        remove_after(self, name)
        broker = await connect(self)
        # With prefetch 1, a request left unacknowledged blocks every later one.
        await broker.service(name).react(Handler, prefetch=1)
        results = Results()
        client = await broker.service(name).client().react(results)
        return broker, name, client, results

    async def test_surrogate_method(self) -> None:
        """
        When a foreign request names a method with a lone surrogate, then
        its caller gets an error reply and the next request is served.
        """
        broker, name, client, results = await self.serve()
        channel = await raw_channel(self)
        await channel.enable_confirms()
        body = json.dumps({"method": "\ud800", "data": None}).encode()
        properties = MessageProperties(content_type="application/json", reply_to=client.queue, message_id="poison")
        await channel.publish(name, name, body, properties)
        await client.call("ok")
        await results.wait_for(2)
        error = results.values()[0]
        self.assertIsInstance(error, txass.RemoteError)
        self.assertEqual(error.type, "MethodNotFound")
        self.assertEqual(results.values()[1], "served")

    async def test_surrogate_error_message(self) -> None:
        """
        When a handler raises with text holding lone surrogates, then the
        caller gets the error reply and the next request is served.
        """
        broker, name, client, results = await self.serve()
        await client.call("surrogate_error")
        await client.call("ok")
        await results.wait_for(2)
        error = results.values()[0]
        self.assertIsInstance(error, txass.RemoteError)
        self.assertEqual(error.type, "ValueError")
        self.assertIn("/tmp/caf", error.message)
        self.assertEqual(results.values()[1], "served")
        self.flushLoggedErrors(ValueError)

    async def test_system_exit_in_handler(self) -> None:
        """
        When a handler raises SystemExit, then the caller gets an error reply
        and the server goes on serving.
        """
        broker, name, client, results = await self.serve()
        await client.call("exits")
        await client.call("ok")
        await results.wait_for(2)
        self.assertEqual(results.values()[0].type, "SystemExit")
        self.assertEqual(results.values()[1], "served")
        self.flushLoggedErrors(SystemExit)

    async def test_cancelled_error_in_handler(self) -> None:
        """
        When a coroutine handler raises asyncio.CancelledError, then the
        caller gets an error reply and the server goes on serving.
        """
        broker, name, client, results = await self.serve()
        await client.call("cancelled")
        await client.call("ok")
        await results.wait_for(2)
        self.assertEqual(results.values()[0].type, "CancelledError")
        self.assertEqual(results.values()[1], "served")
        self.flushLoggedErrors(asyncio.CancelledError)

    async def test_unfired_handler_dropped(self) -> None:
        """
        When a handler's Deferred never fires and is dropped after its
        request was requeued, then nothing is logged as an error.
        """
        name = unique_name("fault")
        remove_after(self, name)
        broker = await connect(self)
        server = await broker.service(name).react(Handler, grace=0)
        Handler.unfired.clear()
        await broker.service(name).client().call("never")
        while not Handler.unfired:
            await task.deferLater(reactor, 0.01, lambda: None)
        await server.stop()
        Handler.unfired.clear()
        gc.collect()
        self.assertEqual(self.flushLoggedErrors(), [])


class ClientFaultTests(unittest.TestCase):
    async def test_callback_system_exit(self) -> None:
        """
        When a result callback raises SystemExit, then the connection stays
        open and later results still arrive.
        """
        name = unique_name("callback")
        remove_after(self, name)
        broker = await connect(self)
        await broker.service(name).react(Handler)
        results = Results()

        def exits(value: Any) -> None:
            raise SystemExit(1)

        client = await broker.service(name).client().react({"ok": exits, "echo": results.echo})
        await client.call("ok")
        await client.call("echo", 1)
        await results.wait_for(1)
        self.assertTrue(broker.is_open)
        self.assertEqual(results.values(), [1])
        self.flushLoggedErrors(SystemExit)

    async def test_callback_keyboard_interrupt(self) -> None:
        """
        When a result callback raises KeyboardInterrupt, then the connection
        stays open and later results still arrive.
        """
        name = unique_name("interrupt")
        remove_after(self, name)
        broker = await connect(self)
        await broker.service(name).react(Handler)
        results = Results()

        def interrupts(value: Any) -> None:
            raise KeyboardInterrupt()

        client = await broker.service(name).client().react({"ok": interrupts, "echo": results.echo})
        await client.call("ok")
        await client.call("echo", 2)
        await results.wait_for(1)
        self.assertTrue(broker.is_open)
        self.assertEqual(results.values(), [2])
        self.flushLoggedErrors(KeyboardInterrupt)

    async def test_react_twice_one_consumer(self) -> None:
        """
        When react is called twice at once, then the client has one consumer
        and its results are acknowledged on the channel they came from.
        """
        name = unique_name("twice")
        remove_after(self, name, client_keys=["k"])
        broker = await connect(self)
        await broker.service(name).react(Handler)
        first, second = Results(), Results()
        client = broker.service(name).client(key="k")
        await defer.gatherResults([client.react(first), client.react(second)])
        channel = await raw_channel(self)
        _, consumers = await channel.declare_queue(client.queue, passive=True)
        self.assertEqual(consumers, 1)
        for _ in range(5):
            await client.call("ok")
        await second.wait_for(5)
        self.assertEqual(first.values(), [])
        self.assertTrue(broker.is_open)
        await client.stop()
        _, consumers = await channel.declare_queue(client.queue, passive=True)
        self.assertEqual(consumers, 0)

    async def test_stop_bounded_by_grace(self) -> None:
        """
        When a result callback never finishes, then stop returns after the
        grace period.
        """
        name = unique_name("stuck")
        remove_after(self, name)
        broker = await connect(self)
        await broker.service(name).react(Handler)
        entered: defer.Deferred[None] = defer.Deferred()

        def never(value: Any) -> defer.Deferred[None]:
            entered.callback(None)
            return defer.Deferred()

        client = await broker.service(name).client().react({"ok": never})
        await client.call("ok")
        await within(entered)
        await within(client.stop(grace=0.1), 5)

    async def test_deleted_result_queue(self) -> None:
        """
        When a keyed client's result queue is deleted, then calling react
        again declares it and results arrive again.
        """
        name = unique_name("deleted")
        remove_after(self, name, client_keys=["k"])
        broker = await connect(self)
        await broker.service(name).react(Handler)
        results = Results()
        client = await broker.service(name).client(key="k").react(results)
        channel = await raw_channel(self)
        await channel.delete_queue(client.queue)
        for _ in range(100):
            if not broker._clients:
                break
            await task.deferLater(reactor, 0.02, lambda: None)
        await client.react(results)
        await client.call("ok")
        await results.wait_for(1)
        self.assertEqual(results.values(), ["served"])

    async def test_method_name_limits(self) -> None:
        """
        When a method name is empty or longer than 255 UTF-8 bytes, then the
        call fails with ValueError and nothing is sent.
        """
        name = unique_name("names")
        remove_after(self, name)
        broker = await connect(self)
        client = broker.service(name).client()
        for method in ["", "é" * 128, "\ud800"]:
            await self.assertFailure(client.call(method), ValueError)
            await self.assertFailure(client.cast(method), ValueError)

    async def test_client_prefetch_range(self) -> None:
        """
        When a client reacts with a prefetch outside 1 to 65535, then react
        raises ValueError.
        """
        name = unique_name("prefetch")
        remove_after(self, name)
        broker = await connect(self)
        client = broker.service(name).client()
        for prefetch in [0, 70000, True]:
            self.assertRaises(ValueError, client.react, Results(), prefetch=prefetch)

    async def test_close_fails_pending_call(self) -> None:
        """
        When the broker is closed while a call waits for its confirm, then
        the call fails with ConnectionLost saying this client closed it.
        """
        name = unique_name("closing")
        remove_after(self, name)
        broker = await txass.connect()
        client = broker.service(name).client()
        await client.call("ok")
        pending = [client.call("ok", number) for number in range(50)]
        await broker.close()
        outcomes = await defer.DeferredList(pending, consumeErrors=True)
        for succeeded, value in outcomes:
            if not succeeded:
                self.assertIsInstance(value.value, txass.ConnectionLost)
                self.assertIn("this client", str(value.value))


class DeclarationFaultTests(unittest.TestCase):
    async def test_refused_declaration_isolated(self) -> None:
        """
        When one service's declaration is refused, then another service
        reacting at the same time on the same broker still starts.
        """
        bad, good = unique_name("bad"), unique_name("good")
        remove_after(self, bad)
        remove_after(self, good)
        channel = await raw_channel(self)
        await channel.declare_queue(bad, durable=True, arguments={"x-max-length": 5})
        broker = await connect(self)
        outcomes = await defer.DeferredList(
            [broker.service(bad).react(Handler), broker.service(good).react(Handler)], consumeErrors=True
        )
        self.assertFalse(outcomes[0][0])
        self.assertIsInstance(outcomes[0][1].value, txass.ChannelClosed)
        self.assertTrue(outcomes[1][0], outcomes[1][1])


class PublisherIsolationTests(unittest.TestCase):
    async def test_deleted_exchange_isolated(self) -> None:
        """
        When calls to a service whose exchange was deleted fail, then calls
        to another service in flight at the same time still succeed.
        """
        gone, healthy = unique_name("gone"), unique_name("healthy")
        remove_after(self, gone)
        remove_after(self, healthy)
        broker = await connect(self)
        gone_client = broker.service(gone).client()
        await gone_client.cast("ok")
        channel = await raw_channel(self)
        await channel.delete_exchange(gone)
        healthy_client = broker.service(healthy).client()
        await healthy_client.cast("ok")

        casts = [healthy_client.cast("ok", number) for number in range(100)]
        failing = gone_client.cast("ok")
        casts += [healthy_client.cast("ok", number) for number in range(100)]

        await self.assertFailure(failing, txass.ChannelClosed)
        outcomes = await defer.DeferredList(casts, consumeErrors=True)
        self.assertEqual([value for succeeded, value in outcomes if not succeeded], [])


class CloseWhileStartingTests(unittest.TestCase):
    async def test_close_during_react(self) -> None:
        """
        When the broker is closed while servers and clients are starting,
        then each start fails with a txass error and no Deferred is left
        failing unhandled.
        """
        name = unique_name("starting")
        remove_after(self, name, client_keys=["k"])
        for turns in range(4):
            broker = await txass.connect()
            service = broker.service(name)
            starts = [service.react(Handler), service.client().react(Results()), service.client(key="k").call("ok")]
            for _ in range(turns):
                await task.deferLater(reactor, 0.002, lambda: None)
            await within(broker.close())
            for succeeded, value in await defer.DeferredList(starts, consumeErrors=True):
                if not succeeded:
                    self.assertIsInstance(value.value, txass.TxassError)
        gc.collect()
        await task.deferLater(reactor, 0, lambda: None)
        self.assertEqual(self.flushLoggedErrors(), [])

    async def test_close_drains_requests_taken_while_starting(self) -> None:
        """
        When the broker is closed while a server starts and the server has
        already taken a request, then the request gets its reply and is
        acknowledged before the connection closes, and the start fails
        with ConnectionLost.
        """
        name = unique_name("close-starting")
        remove_after(self, name)
        client_broker = await connect(self)
        results = Results()
        client = await client_broker.service(name).client().react(results)
        await client.call("hold", "queued before the server")

        entered: defer.Deferred[None] = defer.Deferred()
        release: defer.Deferred[str] = defer.Deferred()

        class Holder:
            def hold(self, value: Any) -> defer.Deferred[str]:
                entered.callback(None)
                return release

        broker = await txass.connect()
        self.addCleanup(broker.close)
        starting = broker.service(name).react(Holder)
        await within(entered)
        # The request waited in the queue, so it comes right behind the
        # first consume-ok, before the server's other consumer is set up.
        self.assertFalse(starting.called, "the server finished starting before it took the request")
        closing = broker.close()
        release.callback("answered")

        await within(closing)
        await results.wait_for(1)
        self.assertEqual(results.values(), ["answered"])
        await self.assertFailure(starting, txass.ConnectionLost)
        channel = await raw_channel(self)
        self.assertEqual(await channel.declare_queue(name, passive=True), (0, 0))


class LifecycleRaceTests(unittest.TestCase):
    async def consumers(self, queue: str) -> int:
        channel = await raw_channel(self)
        _, count = await channel.declare_queue(queue, passive=True)
        return count

    async def test_stop_during_react(self) -> None:
        """
        When stop is called while react is still starting, then no consumer
        is left once both have finished.
        """
        name = unique_name("stopreact")
        remove_after(self, name, client_keys=["k"])
        broker = await connect(self)
        client = broker.service(name).client(key="k")
        reacting = client.react(Results())
        await client.stop()
        await reacting
        self.assertEqual(await self.consumers(client.queue), 0)

    async def test_cancel_react_at_each_step(self) -> None:
        """
        When react is cancelled at each point of its start in turn, then the
        connection stays usable, no error is logged, no consumer is left
        behind and the broker closes promptly.
        """
        name = unique_name("cancel-react")
        remove_after(self, name)
        broker = await txass.connect()
        self.addCleanup(broker.close)
        results = Results()
        client = await broker.service(name).client().react(results)
        for turns in range(12):
            starting = broker.service(name).react(Handler)
            for _ in range(turns):
                await task.deferLater(reactor, 0, lambda: None)
            starting.cancel()
            try:
                server = await starting
            except defer.CancelledError:
                continue
            await server.stop()

        await broker.service(name).react(Handler)
        await client.call("ok")
        await results.wait_for(1)

        self.assertEqual(await self.consumers(name), 1)
        await within(broker.close(), 6)
        self.assertEqual(self.flushLoggedErrors(), [])

    async def test_react_stop_react_stop(self) -> None:
        """
        When react, stop, react and stop follow each other at once, then no
        consumer is left.
        """
        name = unique_name("cycle")
        remove_after(self, name, client_keys=["k"])
        broker = await connect(self)
        client = broker.service(name).client(key="k")
        first = client.react(Results())
        client.stop()
        second = client.react(Results())
        await defer.gatherResults([first, second])
        await client.stop()
        self.assertEqual(await self.consumers(client.queue), 0)

    async def test_result_queue_deleted_while_stopped(self) -> None:
        """
        When a keyed client's queue is deleted while it is stopped, then
        reacting again declares it and results arrive.
        """
        name = unique_name("gone-stopped")
        remove_after(self, name, client_keys=["k"])
        broker = await connect(self)
        await broker.service(name).react(Handler)
        results = Results()
        client = await broker.service(name).client(key="k").react(results)
        await client.stop()
        channel = await raw_channel(self)
        await channel.delete_queue(client.queue)
        await client.react(results)
        await client.call("ok")
        await results.wait_for(1)
        self.assertEqual(results.values(), ["served"])

    async def test_service_queue_deleted(self) -> None:
        """
        When a service's queue is deleted after this connection declared it,
        then the next server and the next call declare it again.
        """
        name = unique_name("gone-service")
        remove_after(self, name)
        broker = await connect(self)
        client = broker.service(name).client()
        results = Results()
        await client.react(results)
        channel = await raw_channel(self)
        await channel.delete_queue(name)
        await client.call("ok")
        await broker.service(name).react(Handler)
        await results.wait_for(1)
        self.assertEqual(results.values(), ["served"])

    async def test_react_during_close(self) -> None:
        """
        When a server finishes starting while Broker.close drains another
        one, then its react fails with ConnectionLost instead of leaving a
        server that close never stopped.
        """
        name = unique_name("late")
        remove_after(self, name)
        broker = await txass.connect()
        entered: defer.Deferred[None] = defer.Deferred()
        release: defer.Deferred[None] = defer.Deferred()

        def hold(value: Any) -> defer.Deferred[None]:
            entered.callback(None)
            return release

        await broker.service(name).react({"hold": hold}, grace=10)
        await broker.service(name).client().cast("hold")
        await within(entered)

        late = broker.service(name).react(Handler)
        closing = broker.close()
        outcome = (await defer.DeferredList([late], consumeErrors=True))[0]
        release.callback(None)
        await within(closing)

        self.assertFalse(outcome[0], outcome[1])
        self.assertIsInstance(outcome[1].value, txass.ConnectionLost)
        self.assertEqual(len(broker._servers), 0)
