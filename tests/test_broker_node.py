"""
Tests of the private RabbitMQ node that fault tests restart and kill.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from typing import Any

from twisted.internet import reactor, utils
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import ClientCreator, Protocol
from twisted.trial import unittest

import txass
from tests import broker_node
from tests.broker_node import BrokerNode, BrokerNodeError, find_rabbitmq, shared_node, start_node
from tests.support import connect, rabbitmqctl, unique_name, within
from txass._connection import MessageProperties, open_connection, parse_url

# Settings of the node shared by NodeTests; a config line of its own shows
# that extra lines reach the node.
SHARED_CONFIG = ["consumer_timeout = 5000"]


class Adder:
    def add(self, numbers: list[int]) -> int:
        return sum(numbers)


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """
    Return the addresses and ports that process C{pid} listens on with TCP,
    read from C{/proc}.
    """
    inodes = set()
    for descriptor in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{descriptor}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    addresses = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        with open(f"/proc/net/{table}") as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                # State 0A is LISTEN.
                if state != "0A" or inode not in inodes:
                    continue
                address, port = local.split(":")
                raw = bytes.fromhex(address)
                # The kernel prints each 32-bit word in host (little-endian) order.
                packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                addresses.add((socket.inet_ntop(family, packed), int(port, 16)))
    return addresses


def listener_pid(port: int) -> int | None:
    """
    Return the pid of the process listening on 127.0.0.1:C{port}.
    """
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if ("127.0.0.1", port) in listening_addresses(int(entry)):
                    return int(entry)
            except OSError:
                continue
    return None


def node_processes(node: BrokerNode) -> list[int]:
    """
    Return the pids of the processes that run with C{node}'s data folder.
    """
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit() and broker_node._runs_in(int(entry), node.directory)]


def shared_broker_state() -> dict[str, Any]:
    """
    Return what a private node must leave unchanged on the shared broker.
    """
    return {
        "pid": listener_pid(parse_url().port),
        "vhosts": sorted(rabbitmqctl("list_vhosts", "name").split()),
        "users": sorted(rabbitmqctl("list_users").splitlines()),
    }


async def declare_with_message(url: str, queue: str) -> None:
    """
    Declare durable C{queue} and put one persistent message in it.
    """
    connection = await open_connection(parse_url(url), reactor)
    try:
        channel = await connection.channel(confirms=True)
        await channel.declare_queue(queue, durable=True)
        await channel.publish("", queue, b"kept", MessageProperties(delivery_mode=2))
    finally:
        await connection.close()


async def queue_length(url: str, queue: str) -> int:
    """
    Return the number of ready messages in C{queue}, which must exist.
    """
    connection = await open_connection(parse_url(url), reactor)
    try:
        channel = await connection.channel()
        count, _consumers = await channel.declare_queue(queue, passive=True)
        return count
    finally:
        await connection.close()


class NodeTests(unittest.TestCase):
    """
    Tests on the node shared by this class.
    """

    async def test_rpc_round_trip(self) -> None:
        """
        When a service runs on a private node, then an RPC call through
        the node's URL returns its result.
        """
        node = await shared_node(self, SHARED_CONFIG)
        broker = await connect(self, node.url)
        name = unique_name("node")
        await broker.service(name).react(Adder)
        self.assertEqual(await within(broker.rpc(name).call("add", [1, 2, 3])), 6)

    async def test_config_lines(self) -> None:
        """
        When a node is made with extra config lines, then it runs with
        those settings.
        """
        node = await shared_node(self, SHARED_CONFIG)
        self.assertEqual(await node.ctl("eval", "application:get_env(rabbit, consumer_timeout)."), "{ok,5000}\n")

    async def test_loopback_ports(self) -> None:
        """
        When a node runs, then it listens on its AMQP and distribution
        ports on 127.0.0.1 and nowhere else.
        """
        node = await shared_node(self, SHARED_CONFIG)
        assert node.pid is not None
        self.assertEqual(listening_addresses(node.pid), {("127.0.0.1", node.port), ("127.0.0.1", node.dist_port)})

    async def test_restart_keeps_durable_queue(self) -> None:
        """
        When a node restarts, then a durable queue and its persistent
        message are still there.
        """
        node = await shared_node(self, SHARED_CONFIG)
        queue = unique_name("durable")
        await declare_with_message(node.url, queue)
        old_pid = node.pid
        await node.restart()
        self.assertNotEqual(node.pid, old_pid)
        self.assertEqual(await queue_length(node.url, queue), 1)

    async def test_kill_closes_connection(self) -> None:
        """
        When a node is killed, then a txass connection to it reports the
        loss.
        """
        node = await shared_node(self, SHARED_CONFIG)
        broker = await txass.connect(node.url, reconnect=False)
        self.addCleanup(broker.close)
        closed = broker.when_closed()
        await node.kill()
        self.assertIsInstance(await within(closed), txass.ConnectionLost)
        self.assertFalse(node.running)

    async def test_stop_ends_node(self) -> None:
        """
        When a node stops, then its OS process is gone and its AMQP port
        refuses connections.
        """
        node = await shared_node(self, SHARED_CONFIG)
        pid = node.pid
        await node.stop()
        self.assertFalse(node.running)
        self.assertFalse(os.path.exists(f"/proc/{pid}"))
        with self.assertRaises(ConnectionRefusedError):
            await ClientCreator(reactor, Protocol).connectTCP("127.0.0.1", node.port)

    async def test_shared_node_restarts(self) -> None:
        """
        When the shared node was killed, then asking for it again starts
        the same node on the same port.
        """
        node = await shared_node(self, SHARED_CONFIG)
        await node.kill()
        again = await shared_node(self, SHARED_CONFIG)
        self.assertIs(again, node)
        self.assertTrue(again.running)
        broker = await connect(self, again.url)
        self.assertTrue(broker.is_open)

    async def test_ctl_rejects_other_node(self) -> None:
        """
        When ctl is given a node name, then it raises ValueError.
        """
        node = await shared_node(self, SHARED_CONFIG)
        for arguments in (["-n", "rabbit@localhost", "status"], ["--node=rabbit@localhost", "status"]):
            with self.assertRaises(ValueError):
                node.ctl(*arguments)

    async def test_ctl_reports_failure(self) -> None:
        """
        When a rabbitmqctl command fails, then ctl fails with
        BrokerNodeError naming the command.
        """
        node = await shared_node(self, SHARED_CONFIG)
        with self.assertRaises(BrokerNodeError) as caught:
            await node.ctl("list_queues", "no_such_column")
        self.assertIn("rabbitmqctl list_queues no_such_column", str(caught.exception))
        self.assertIn("exit code 64", str(caught.exception))


class OwnNodeTests(unittest.TestCase):
    """
    Tests that need a node of their own, or none.
    """

    async def test_shared_broker_untouched(self) -> None:
        """
        When a private node starts, serves a queue and is killed, then the
        shared broker keeps its process, vhosts and users, and never has
        that queue.
        """
        before = shared_broker_state()
        node = await start_node(self)
        queue = unique_name("private")
        await declare_with_message(node.url, queue)
        await node.kill()
        await node.close()
        self.assertEqual(shared_broker_state(), before)
        self.assertNotIn(queue, rabbitmqctl("list_queues", "name").split())

    async def test_close_removes_folder(self) -> None:
        """
        When a node is closed, then its process is gone, its folder is
        removed and it cannot start again.
        """
        node = await start_node(self)
        pid = node.pid
        self.assertNotEqual(node_processes(node), [])
        await node.close()
        self.assertFalse(os.path.exists(f"/proc/{pid}"))
        self.assertEqual(node_processes(node), [])
        self.assertFalse(os.path.exists(node.directory))
        with self.assertRaises(BrokerNodeError):
            await node.start()

    async def test_stale_node_removed(self) -> None:
        """
        When the process that started a node has died, then the next
        helper's sweep kills that node and removes its folder.
        """
        node = await start_node(self)
        pid = node.pid
        # The pid of a process that has ended plays the dead test process.
        dead = await utils.getProcessOutput(sys.executable, ["-c", "import os; print(os.getpid())"])
        with open(os.path.join(node.directory, "owner.pid"), "wb") as owner:
            owner.write(dead)
        self.patch(broker_node, "_stale_checked", False)
        exited = node.when_exited()
        broker_node._remove_stale_directories()
        self.assertFalse(os.path.exists(node.directory))
        await within(exited)
        self.assertFalse(os.path.exists(f"/proc/{pid}"))

    async def test_invalid_config_fails_start(self) -> None:
        """
        When a config line is invalid, then start fails with
        BrokerNodeError quoting the node's error about that line.
        """
        node = BrokerNode(["no_such_setting = 1"])
        self.addCleanup(node.close)
        with self.assertRaises(BrokerNodeError) as caught:
            await node.start()
        self.assertIn("exited while starting", str(caught.exception))
        self.assertIn("no_such_setting", str(caught.exception))
        self.assertFalse(node.running)

    async def test_start_timeout_kills_node(self) -> None:
        """
        When a node has not started within its start timeout, then start
        fails with BrokerNodeError and the node's process is gone.
        """
        node = BrokerNode(start_timeout=1)
        self.addCleanup(node.close)
        with self.assertRaises(BrokerNodeError) as caught:
            await node.start()
        self.assertIn("waiting for node", str(caught.exception))
        self.assertFalse(node.running)
        self.assertEqual(node_processes(node), [])

    def test_skip_without_rabbitmq(self) -> None:
        """
        When rabbitmq-server is in none of the searched folders, then
        finding it raises SkipTest naming the folders.
        """
        empty = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, empty)
        with self.assertRaises(unittest.SkipTest) as caught:
            find_rabbitmq([empty])
        self.assertIn("rabbitmq-server is not installed", str(caught.exception))
        self.assertIn(empty, str(caught.exception))

    def test_debian_wrapper_skipped(self) -> None:
        """
        When the scripts found are Debian's user-switching wrappers, then
        the scripts they run are used.
        """
        scripts = find_rabbitmq()
        for path in (scripts.server, scripts.ctl):
            self.assertNotEqual(os.path.basename(path), "rabbitmq-script-wrapper")
            self.assertTrue(os.access(path, os.X_OK), path)
