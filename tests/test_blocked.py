"""
Tests of RPC calls while the broker blocks publishing, on a RabbitMQ node of
the test's own: a memory alarm raised with C{set_vm_memory_high_watermark}
blocks every publishing connection until it clears.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

import txass
from tests.broker_node import BrokerNode, start_node
from tests.support import unique_name, wait_until, within


class Echo:
    def echo(self, value: Any) -> Any:
        return value


class BlockedBrokerTests(unittest.TestCase):
    async def blocked_broker(self) -> tuple[BrokerNode, txass.Broker, txass.RPCClient]:
        """
        Start a node, serve a service on it, and raise a memory alarm that
        blocks the RPC client's connection.
        """
        node = await start_node(self)
        name = unique_name("blocked")
        server_broker = await txass.connect(node.url)
        self.addCleanup(server_broker.close)
        await server_broker.service(name).react(Echo, grace=0)
        broker = await txass.connect(node.url)
        self.addCleanup(broker.close)
        rpc = broker.rpc(name)
        self.assertEqual(await within(rpc.call("echo", "before")), "before")
        await node.ctl("set_vm_memory_high_watermark", "0")
        # RabbitMQ blocks a connection when it next publishes.
        probe = rpc.call("echo", "probe", timeout=60)
        await wait_until(lambda: broker._blocked is not None)
        probe.addErrback(lambda _: None)
        return node, broker, rpc

    async def test_call_while_blocked(self) -> None:
        """
        When the broker blocks publishing, then a call made meanwhile is not
        sent and fails after its timeout with BrokerBlocked naming the
        broker's reason.
        """
        node, broker, rpc = await self.blocked_broker()
        started = time.monotonic()
        try:
            await within(rpc.call("echo", "blocked", timeout=0.5))
        except txass.BrokerBlocked as e:
            error = e
        else:
            self.fail("the call succeeded while the broker blocked publishing")
        # The reactor's clock and time.monotonic() may differ slightly.
        self.assertGreaterEqual(time.monotonic() - started, 0.45)
        self.assertIsInstance(error, txass.CallTimeout)
        self.assertIn("memory", error.reason)
        self.assertIn("not sent", str(error))
        await node.ctl("set_vm_memory_high_watermark", "0.4")

    async def test_resume_after_unblock(self) -> None:
        """
        When the broker unblocks publishing, then a call that waited
        meanwhile is sent and gets its reply.
        """
        node, broker, rpc = await self.blocked_broker()
        waiting = rpc.call("echo", "waited", timeout=60)
        await node.ctl("set_vm_memory_high_watermark", "0.4")
        self.assertEqual(await within(waiting, 30), "waited")
        self.assertIsNone(broker._blocked)
        self.assertEqual(await within(rpc.call("echo", "after")), "after")
        self.flushLoggedErrors()
