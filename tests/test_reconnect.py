"""
Tests of reconnection: servers, clients and RPC clients go on after the
connection drops, the broker restarts, or a channel or consumer is closed.

Connections are cut with a TCP proxy of the test's own, and restarts use a
RabbitMQ node of the test's own, so the shared broker is never disturbed.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

import txass
from tests.broker_node import start_node
from tests.support import Results, TCPProxy, connect, rabbitmqctl, raw_channel, remove_after, unique_name, wait_until, within


class Echo:
    def echo(self, value: Any) -> Any:
        return value


def consumer_count(queue: str) -> int:
    """
    Return the number of consumers of C{queue} on the shared broker, as
    rabbitmqctl lists them.
    """
    lines = rabbitmqctl("list_consumers", "queue_name").splitlines()
    return sum(1 for line in lines if line.strip() == queue)


def fast_retry(attempt: int) -> float:
    return 0.1


async def serve_through_proxy(testcase: unittest.TestCase) -> tuple[TCPProxy, txass.Broker, txass.Server, str]:
    """
    Serve a new service over a connection through a proxy of the test's
    own, on a broker that reconnects after 0.1 s.
    """
    name = unique_name("reconnect")
    remove_after(testcase, name)
    proxy = TCPProxy(testcase)
    broker = await connect(testcase, proxy.url)
    broker._retry_policy = fast_retry
    server = await broker.service(name).react(Echo, grace=0)
    return proxy, broker, server, name


class ProxyCutTests(unittest.TestCase):

    async def test_server_and_rpc_resume(self) -> None:
        """
        When the connection is cut three times, then after each reconnect
        the server consumes again with exactly one consumer, and RPC calls
        succeed.
        """
        proxy, broker, server, name = await serve_through_proxy(self)
        rpc = broker.rpc(name)
        self.assertEqual(await within(rpc.call("echo", "first")), "first")
        for round in range(3):
            generation = server._generation
            proxy.cut()
            await wait_until(lambda: server.state == "running" and server._generation > generation)
            self.assertEqual(await within(rpc.call("echo", round, timeout=10)), round)
            self.assertEqual(consumer_count(name), 1)
        self.flushLoggedErrors()

    async def test_call_waits_for_reconnect(self) -> None:
        """
        When an RPC call is made while the broker reconnects, then it waits
        for the new connection and gets its reply.
        """
        proxy, broker, server, name = await serve_through_proxy(self)
        broker._retry_policy = lambda attempt: 0.5
        rpc = broker.rpc(name)
        self.assertEqual(await within(rpc.call("echo", 1)), 1)
        proxy.cut()
        await wait_until(lambda: broker._reconnecting is not None)
        self.assertFalse(broker.is_open)
        self.assertEqual(await within(rpc.call("echo", "during", timeout=10)), "during")
        self.flushLoggedErrors()

    async def test_call_from_errback_of_lost_call(self) -> None:
        """
        When a call fails because the connection dropped, then a call made
        straight from its errback waits for the new connection and gets its
        reply.
        """
        proxy, broker, server, name = await serve_through_proxy(self)
        rpc = broker.rpc(name)
        self.assertEqual(await within(rpc.call("echo", 1)), 1)

        def again(failure: Any) -> defer.Deferred[Any]:
            failure.trap(txass.ConnectionLost)
            return rpc.call("echo", "again", timeout=10)

        proxy.freeze()
        lost = rpc.call("echo", "lost", timeout=10).addErrback(again)
        proxy.thaw()
        proxy.cut()
        self.assertEqual(await within(lost), "again")
        self.flushLoggedErrors()

    async def test_client_resumes(self) -> None:
        """
        When the connection of a keyed client is cut, then it consumes its
        result queue again and receives results.
        """
        proxy, broker, server, name = await serve_through_proxy(self)
        remove_after(self, name, client_keys=["k"])
        results = Results()
        client = await broker.service(name).client(key="k").react(results)
        await client.call("echo", 1)
        await results.wait_for(1)
        # Let the client acknowledge the result before the cut.
        await task.deferLater(reactor, 0.1, lambda: None)
        proxy.cut()
        await wait_until(lambda: server._generation == 1 and server.state == "running")
        await wait_until(lambda: client._channel is not None and client._channel.is_open)
        await within(client.call("echo", 2), 10)
        await wait_until(lambda: 2 in results.values())
        self.assertEqual(results.values(), [1, 2])
        await wait_until(lambda: consumer_count(f"{name}.client.k") == 1, 10)
        self.flushLoggedErrors()

    async def test_when_closed_only_on_close(self) -> None:
        """
        When the connection is cut on a reconnecting broker, then
        when_closed() does not fire; it fires once close() is called.
        """
        proxy, broker, server, name = await serve_through_proxy(self)
        closed = broker.when_closed()
        proxy.cut()
        await wait_until(lambda: server.state == "running" and broker.is_open and server._generation == 1)
        self.assertFalse(closed.called)
        await broker.close()
        self.assertIsInstance(await within(closed), txass.ConnectionLost)
        self.flushLoggedErrors()

    async def test_heartbeat_detects_dead_peer(self) -> None:
        """
        When the network stops carrying packets, then heartbeats detect it
        within a few intervals and the broker reconnects.
        """
        name = unique_name("heartbeat")
        remove_after(self, name)
        proxy = TCPProxy(self)
        broker = await connect(self, proxy.url + "?heartbeat=1")
        broker._retry_policy = fast_retry
        server = await broker.service(name).react(Echo, grace=0)
        started = time.monotonic()
        proxy.freeze()
        await wait_until(lambda: broker._reconnecting is not None, 20)
        # Two intervals of 1 s, checked every half interval.
        self.assertLess(time.monotonic() - started, 5)
        proxy.thaw()
        await wait_until(lambda: server._generation == 1 and server.state == "running", 20)
        self.assertEqual(await within(broker.rpc(name).call("echo", "alive")), "alive")
        self.flushLoggedErrors()

    async def test_without_reconnect(self) -> None:
        """
        When a broker made with reconnect=False loses its connection, then
        its servers stop and when_closed() fires.
        """
        name = unique_name("reconnect")
        remove_after(self, name)
        proxy = TCPProxy(self)
        broker = await txass.connect(proxy.url, reconnect=False)
        self.addCleanup(broker.close)
        server = await broker.service(name).react(Echo, grace=0)
        proxy.cut()
        await within(server.when_stopped())
        self.assertIsInstance(await within(broker.when_closed()), txass.ConnectionLost)
        self.flushLoggedErrors()


class RaceTests(unittest.TestCase):
    async def test_scheduled_resume_cancelled_by_loss(self) -> None:
        """
        When the connection drops while a server waits for its scheduled
        resumption, then only the reconnection resumes it, with one
        consumer.
        """
        name = unique_name("reconnect")
        remove_after(self, name)
        proxy = TCPProxy(self)
        broker = await connect(self, proxy.url)
        broker._retry_policy = fast_retry
        server = await broker.service(name).react(Echo, grace=0)
        channel = await raw_channel(self)
        await channel.delete_queue(name)
        await wait_until(lambda: server.state == "interrupted" and bool(broker._scheduled))
        proxy.cut()
        await wait_until(lambda: broker._reconnecting is not None)
        self.assertEqual(broker._scheduled, set())
        await wait_until(lambda: server.state == "running")
        self.assertEqual(server._generation, 1)
        await wait_until(lambda: consumer_count(name) == 1, 10)
        self.flushLoggedErrors()

    async def test_resume_once(self) -> None:
        """
        When a server is asked to resume twice before the first resumption
        finished, then it consumes again only once.
        """
        name = unique_name("reconnect")
        remove_after(self, name)
        broker = await connect(self)
        server = await broker.service(name).react(Echo, grace=0)
        await server._consumer.close()  # type: ignore[attr-defined]
        broker._resume_server(server)
        broker._resume_server(server)
        await wait_until(lambda: server.state == "running")
        self.assertEqual(server._generation, 1)
        self.assertEqual(consumer_count(name), 1)
        self.flushLoggedErrors()

    async def test_queue_deleted_while_interrupted(self) -> None:
        """
        When the service queue is deleted while a server waits to consume
        again, then the server declares it again and resumes, rather than
        stop.
        """
        name = unique_name("reconnect")
        remove_after(self, name)
        broker = await connect(self)
        server = await broker.service(name).react(Echo, grace=0)
        await server._consumer.close()  # type: ignore[attr-defined]
        channel = await raw_channel(self)
        await channel.delete_queue(name)
        await wait_until(lambda: server.state == "running" and server._generation >= 1)
        self.assertEqual(await within(broker.rpc(name).call("echo", "served")), "served")
        self.flushLoggedErrors()

    async def test_close_on_frozen_connection(self) -> None:
        """
        When the network stops carrying packets and heartbeats are off,
        then close() still ends within a bounded time, its waits for the
        broker running side by side.
        """
        name = unique_name("reconnect")
        remove_after(self, name, client_keys=["k"])
        proxy = TCPProxy(self)
        broker = await txass.connect(proxy.url + "?heartbeat=0")
        server = await broker.service(name).react(Echo, grace=0)
        await broker.service(name).client(key="k").react(Results())
        await within(broker.rpc(name).call("echo", 1))
        await within(broker.rpc(name, direct_reply_to=False).call("echo", 2))
        proxy.freeze()
        started = time.monotonic()
        await within(broker.close(), 40)
        # Cancelling the consumer, closing its channel and closing the
        # connection may each wait 5 s for the frozen broker.
        self.assertLess(time.monotonic() - started, 20)
        self.assertEqual(server.state, "stopped")
        self.flushLoggedErrors()

    async def test_close_during_connection_attempt(self) -> None:
        """
        When close() is called while a reconnection attempt waits for the
        broker's handshake, then the attempt is cancelled and nothing of it
        is left running.
        """
        name = unique_name("reconnect")
        remove_after(self, name)
        proxy = TCPProxy(self)
        broker = await connect(self, proxy.url)
        broker._retry_policy = fast_retry
        await broker.service(name).react(Echo, grace=0)
        proxy.freeze()
        proxy.cut()
        # The delay before the first attempt has passed: the attempt waits.
        await wait_until(lambda: broker._waiting is not None and broker._retry_call is None)
        started = time.monotonic()
        await within(broker.close())
        self.assertLess(time.monotonic() - started, 5)
        self.assertIsNone(broker._waiting)
        self.assertFalse(broker.is_open)
        self.flushLoggedErrors()

    async def test_backoff_grows_across_short_connections(self) -> None:
        """
        When each new connection is lost soon after it opened, then the
        attempt count keeps growing, so the delays keep backing off.
        """
        proxy, broker, server, _ = await serve_through_proxy(self)
        for expected in (1, 2):
            generation = server._generation
            proxy.cut()
            await wait_until(lambda: server.state == "running" and server._generation > generation)
            self.assertEqual(broker._attempt, expected)
        self.flushLoggedErrors()


class ChannelLossTests(unittest.TestCase):
    async def test_deleted_queue_declared_again(self) -> None:
        """
        When the service queue is deleted under a running server, then the
        server declares it again and serves the next call.
        """
        name = unique_name("reconnect")
        remove_after(self, name)
        broker = await connect(self)
        server = await broker.service(name).react(Echo, grace=0)
        channel = await raw_channel(self)
        await channel.delete_queue(name)
        await wait_until(lambda: server._generation == 1 and server.state == "running")
        self.assertEqual(await within(broker.rpc(name).call("echo", "back")), "back")
        self.assertEqual(consumer_count(name), 1)
        self.flushLoggedErrors()

    async def test_closed_consumer_channel(self) -> None:
        """
        When a server's consumer channel closes, then it consumes again on
        a new channel.
        """
        name = unique_name("reconnect")
        remove_after(self, name)
        broker = await connect(self)
        server = await broker.service(name).react(Echo, grace=0)
        await server._consumer.close()  # type: ignore[attr-defined]
        await wait_until(lambda: server._generation == 1 and server.state == "running")
        self.assertEqual(await within(broker.rpc(name).call("echo", "again")), "again")
        self.flushLoggedErrors()

    async def test_stop_while_interrupted(self) -> None:
        """
        When a server is stopped while it waits to consume again, then it
        stops and does not consume again.
        """
        name = unique_name("reconnect")
        remove_after(self, name)
        broker = await connect(self)
        server = await broker.service(name).react(Echo, grace=0)
        await server._consumer.close()  # type: ignore[attr-defined]
        self.assertEqual(server.state, "interrupted")
        self.assertEqual(len(broker._scheduled), 1)
        await within(server.stop())
        self.assertEqual(server.state, "stopped")
        # The resumption scheduled when the channel closed has run.
        await wait_until(lambda: not broker._scheduled)
        self.assertEqual(server.state, "stopped")
        self.assertEqual(consumer_count(name), 0)
        self.flushLoggedErrors()


class BrokerRestartTests(unittest.TestCase):
    async def test_restart(self) -> None:
        """
        When the broker restarts, then the server and the RPC client of a
        reconnecting broker go on, with one consumer.
        """
        node = await start_node(self)
        name = unique_name("restart")
        broker = await txass.connect(node.url)
        self.addCleanup(broker.close)
        broker._retry_policy = lambda attempt: 0.5
        server = await broker.service(name).react(Echo, grace=0)
        rpc = broker.rpc(name)
        self.assertEqual(await within(rpc.call("echo", "before")), "before")
        await node.restart()
        await wait_until(lambda: server._generation == 1 and server.state == "running", 60)
        self.assertEqual(await within(rpc.call("echo", "after", timeout=20), 30), "after")
        consumers = (await node.ctl("list_consumers", "queue_name")).split()
        self.assertEqual(consumers.count(name), 1)
        self.flushLoggedErrors()
