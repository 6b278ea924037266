"""
Tests of txass's delivery promises on the real broker: durability, waiting
requests and results, competing servers and separate clients.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

import txass
from tests.support import Results, connect, message_count, raw_channel, remove_after, unique_name, within


class Slow:
    """
    A handler that records how many requests run at once on each server.
    """

    def __init__(self, label: str, delay: float = 0.02) -> None:
        self.label = label
        self.delay = delay
        self.running = 0
        self.max_running = 0
        self.served = 0

    async def work(self, value: Any) -> Any:
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            await task.deferLater(reactor, self.delay, lambda: None)
        finally:
            self.running -= 1
        self.served += 1
        return [self.label, value]


class DurabilityTests(unittest.TestCase):
    async def test_exchange_and_queue_durable(self) -> None:
        """
        When a service is declared, then its exchange and queue are durable:
        declaring them non-durable is refused with 406 PRECONDITION_FAILED.
        """
        name = unique_name("durable")
        remove_after(self, name)
        broker = await connect(self)
        await broker.service(name).react(Slow("s"))

        channel = await raw_channel(self)
        error = await self.assertFailure(
            defer.Deferred.fromCoroutine(channel.declare_queue(name, durable=False)), txass.ChannelClosed
        )
        self.assertEqual(error.reply_code, 406)

        channel = await raw_channel(self)
        error = await self.assertFailure(
            defer.Deferred.fromCoroutine(channel.declare_exchange(name, "direct", durable=False)),
            txass.ChannelClosed,
        )
        self.assertEqual(error.reply_code, 406)

    async def test_requests_persistent(self) -> None:
        """
        When a client calls, then the request is published persistent
        (delivery mode 2) with message id, correlation id and reply_to.
        """
        name = unique_name("persistent")
        remove_after(self, name, client_keys=["k"])
        broker = await connect(self)
        client = broker.service(name).client(key="k")
        correlation_id = await client.call("work", 1)

        channel = await raw_channel(self)
        arrived: defer.Deferred[Any] = defer.Deferred()
        await channel.consume(name, lambda delivery: arrived.called or arrived.callback(delivery))
        delivery = await within(arrived)
        channel.reject(delivery.delivery_tag, requeue=True)
        self.assertEqual(delivery.properties.delivery_mode, 2)
        self.assertEqual(delivery.properties.message_id, correlation_id)
        self.assertEqual(delivery.properties.correlation_id, correlation_id)
        self.assertEqual(delivery.properties.reply_to, f"{name}.client.k")


class WaitingTests(unittest.TestCase):
    async def test_requests_wait_for_server(self) -> None:
        """
        When requests are sent while no server runs, then a server started
        later serves every one of them.
        """
        name = unique_name("wait")
        remove_after(self, name)
        broker = await connect(self)
        client = broker.service(name).client()
        results = Results()
        await client.react(results)
        for number in range(20):
            await client.call("work", number)
        self.assertEqual(await message_count(self, name), 20)

        await broker.service(name).react(Slow("late", delay=0))
        await results.wait_for(20)
        self.assertEqual(sorted(value[1] for value in results.values()), list(range(20)))

    async def test_results_wait_for_keyed_client(self) -> None:
        """
        When a keyed client is down while its results arrive, then they wait
        in its durable queue and reach the client that reacts again.
        """
        name = unique_name("results")
        remove_after(self, name, client_keys=["web"])
        server_broker = await connect(self)
        handler = Slow("srv", delay=0)
        await server_broker.service(name).react(handler)

        first = await txass.connect()
        sender = first.service(name).client(key="web")
        for number in range(5):
            await sender.call("work", number)
        await first.close()

        queue = f"{name}.client.web"
        deadline = 100
        while await message_count(self, queue) < 5 and deadline:
            deadline -= 1
            await task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(await message_count(self, queue), 5)

        second = await connect(self)
        results = Results()
        await second.service(name).client(key="web").react(results)
        await results.wait_for(5)
        self.assertEqual(sorted(value[1] for value in results.values()), list(range(5)))

    async def test_temporary_queue_removed(self) -> None:
        """
        When a client without a key closes its connection, then its result
        queue is gone.
        """
        name = unique_name("tmp")
        remove_after(self, name)
        broker = await txass.connect()
        client = broker.service(name).client()
        await client.react(Results())
        await broker.close()
        channel = await raw_channel(self)
        error = await self.assertFailure(
            defer.Deferred.fromCoroutine(channel.declare_queue(client.queue, passive=True)), txass.ChannelClosed
        )
        self.assertEqual(error.reply_code, 404)


class SharingTests(unittest.TestCase):
    async def test_two_servers_share_load(self) -> None:
        """
        When two servers on separate connections serve one service, then
        both take requests and each runs at most its prefetch at once.
        """
        name = unique_name("share")
        remove_after(self, name)
        first, second = Slow("first"), Slow("second")
        await (await connect(self)).service(name).react(first, prefetch=3)
        await (await connect(self)).service(name).react(second, prefetch=3)

        caller = await connect(self)
        client = caller.service(name).client()
        results = Results()
        await client.react(results)
        for number in range(60):
            await client.call("work", number)
        await results.wait_for(60, seconds=30)

        self.assertEqual(first.served + second.served, 60)
        self.assertGreater(first.served, 0)
        self.assertGreater(second.served, 0)
        self.assertLessEqual(first.max_running, 3)
        self.assertLessEqual(second.max_running, 3)

    async def test_default_prefetch_bounds_concurrency(self) -> None:
        """
        When a server uses the default prefetch, then it runs at most 10
        requests at once, and reaches 10 with a backlog.
        """
        name = unique_name("prefetch")
        remove_after(self, name)
        handler = Slow("only", delay=0.05)
        server = await (await connect(self)).service(name).react(handler)
        self.assertEqual(server.prefetch, 10)
        caller = await connect(self)
        client = caller.service(name).client()
        results = Results()
        await client.react(results)
        await defer.gatherResults([client.call("work", number) for number in range(40)])
        await results.wait_for(40, seconds=30)
        self.assertEqual(handler.max_running, 10)

    async def test_clients_receive_only_their_results(self) -> None:
        """
        When several clients call one service at once, then each receives
        exactly the results of its own calls.
        """
        name = unique_name("clients")
        keys = ["a", "b", "c"]
        remove_after(self, name, client_keys=keys)
        await (await connect(self)).service(name).react(Slow("s", delay=0))

        clients = []
        for key in keys:
            broker = await connect(self)
            client = broker.service(name).client(key=key)
            results = Results()
            await client.react(results)
            clients.append((key, client, results))

        calls = [client.call("work", f"{key}-{number}") for number in range(30) for key, client, _ in clients]
        await defer.gatherResults(calls)
        for key, _, results in clients:
            await results.wait_for(30)
            values = sorted(value[1] for value in results.values())
            self.assertEqual(values, sorted(f"{key}-{number}" for number in range(30)))
