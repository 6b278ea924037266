"""
Helpers shared by the tests that talk to the real RabbitMQ broker.

Every broker test works under names of its own made by L{unique_name} and
deletes them afterwards, so tests never see each other's messages and the
shared broker is left as it was found.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import quote

from twisted.internet import defer, reactor, task
from twisted.protocols import portforward
from twisted.trial import unittest

import txass
from txass._connection import AMQPChannel, open_connection, parse_url

BROKER_URL = os.environ.get("TXASS_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")

# How long a test waits for an event the broker should produce at once.
EVENT_TIMEOUT = 15.0

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def unique_name(prefix: str = "test") -> str:
    """
    Return a service name no other test or run uses.
    """
    return f"txass-test.{prefix}.{uuid.uuid4().hex[:12]}"


async def wait_until(condition: Any, seconds: float = 30.0) -> None:
    """
    Wait until C{condition()} is true, checking every 20 ms, or fail after
    C{seconds}; for states that no event announces.
    """
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {seconds} s")
        await task.deferLater(reactor, 0.02, lambda: None)


def within(d: defer.Deferred[Any], seconds: float = EVENT_TIMEOUT) -> defer.Deferred[Any]:
    """
    Return C{d}, failing with L{defer.TimeoutError} if it has not fired
    within C{seconds}.
    """
    return d.addTimeout(seconds, reactor)


async def connect(testcase: unittest.TestCase, url: str = BROKER_URL) -> txass.Broker:
    """
    Connect to the test broker; the connection closes after the test.
    """
    broker = await txass.connect(url)
    testcase.addCleanup(broker.close)
    return broker


async def raw_channel(testcase: unittest.TestCase) -> AMQPChannel:
    """
    Open a channel on a connection of its own, closed after the test.
    """
    connection = await open_connection(parse_url(BROKER_URL), reactor)
    testcase.addCleanup(connection.close)
    return await connection.channel()


def remove_after(testcase: unittest.TestCase, service: str, client_keys: Iterable[str] = (), queues: Iterable[str] = ()) -> None:
    """
    Delete the exchange and queues of C{service}, and of its clients with
    C{client_keys}, after the test.
    """
    # Every service has a queue of unfinished requests, and may have a
    # dead-letter queue; deleting a queue that does not exist is no error.
    own = [service, f"{service}.unfinished", f"{service}.dead-letter"]
    names = own + [f"{service}.client.{key}" for key in client_keys] + [q for q in queues if q not in own]

    async def remove() -> None:
        connection = await open_connection(parse_url(BROKER_URL), reactor)
        try:
            for queue in names:
                channel = await connection.channel()
                await channel.delete_queue(queue)
                await channel.close()
            channel = await connection.channel()
            await channel.delete_exchange(service)
            await channel.close()
        finally:
            await connection.close()

    testcase.addCleanup(lambda: defer.Deferred.fromCoroutine(remove()))


async def message_count(testcase: unittest.TestCase, queue: str) -> int:
    """
    Return the number of ready messages in C{queue}.
    """
    channel = await raw_channel(testcase)
    count, _consumers = await channel.declare_queue(queue, passive=True)
    return count


class Results(Mapping[str, Any]):
    """
    A result handler for clients: records every (method, value, context)
    it receives and fires waiters once a number of results arrived.

    It is a mapping handler with a recording callback for every public
    method name, so C{client.react(results)} accepts results of any method.
    """

    def __init__(self) -> None:
        self.received: list[tuple[str, Any, txass.RequestContext]] = []
        self._waiters: list[tuple[int, defer.Deferred[None]]] = []

    def __getitem__(self, name: str) -> Any:
        if name.startswith("_"):
            raise KeyError(name)

        def record(value: Any) -> None:
            self.received.append((name, value, txass.current_request()))
            self._wake()

        return record

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return self[name]

    def _wake(self) -> None:
        ready = [(n, d) for n, d in self._waiters if len(self.received) >= n]
        self._waiters = [(n, d) for n, d in self._waiters if len(self.received) < n]
        for _, d in ready:
            d.callback(None)

    def values(self) -> list[Any]:
        return [value for _, value, _ in self.received]

    def wait_for(self, count: int, seconds: float = EVENT_TIMEOUT) -> defer.Deferred[None]:
        """
        Return a Deferred firing once C{count} results have arrived.
        """
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append((count, d))
        self._wake()
        return within(d, seconds)


def python_environment(**extra: str) -> dict[str, str]:
    """
    Return an environment for child processes that import this checkout.
    """
    environment = dict(os.environ)
    paths = [TOP] + [p for p in environment.get("PYTHONPATH", "").split(os.pathsep) if p]
    environment["PYTHONPATH"] = os.pathsep.join(paths)
    environment["TXASS_BROKER_URL"] = BROKER_URL
    environment.update(extra)
    return environment


def twistd_command(*arguments: str) -> list[str]:
    """
    Return the command line running twistd with this interpreter.
    """
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", *arguments]


def rabbitmqctl(*arguments: str) -> str:
    """
    Run C{rabbitmqctl} against the test broker and return its output.
    """
    result = subprocess.run(
        ["rabbitmqctl", "-q", *arguments],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/sbin"},
    )
    return result.stdout


class _ProxyServer(portforward.ProxyServer):
    def connectionMade(self) -> None:
        self.factory.proxy.connections.add(self)  # type: ignore[attr-defined]
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        # A frozen network carries nothing, not even a new handshake.  The
        # base class resumes reading once it reaches the broker, so the
        # bytes are dropped here instead.
        if not self.factory.proxy.frozen:  # type: ignore[attr-defined]
            super().dataReceived(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.proxy.connections.discard(self)  # type: ignore[attr-defined]
        super().connectionLost(reason)


class TCPProxy:
    """
    A TCP proxy of the test's own on a loopback port, forwarding to the
    test broker, whose connections a test can cut.

    @ivar url: The broker URL that connects through the proxy.
    """

    def __init__(self, testcase: unittest.TestCase) -> None:
        address = parse_url(BROKER_URL)
        factory = portforward.ProxyFactory(address.host, address.port)
        factory.protocol = _ProxyServer
        factory.proxy = self  # type: ignore[attr-defined]
        self.connections: set[portforward.ProxyServer] = set()
        self.frozen = False
        self._port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        testcase.addCleanup(self.close)
        port = self._port.getHost().port
        self.url = f"amqp://{address.user}:{address.password}@127.0.0.1:{port}/{quote(address.vhost, safe='')}"

    def cut(self) -> None:
        """
        Abort every connection through the proxy, on both sides, as a
        network failure would.
        """
        for connection in list(self.connections):
            connection.transport.abortConnection()
            if connection.peer is not None:
                connection.peer.transport.abortConnection()

    def freeze(self) -> None:
        """
        Stop forwarding in both directions while keeping the connections
        open, as a network that drops every packet would.  New connections
        are accepted but carry nothing either.
        """
        self.frozen = True
        for connection in list(self.connections):
            connection.transport.pauseProducing()
            if connection.peer is not None:
                connection.peer.transport.pauseProducing()

    def thaw(self) -> None:
        """
        Forward again what new connections send; the connections frozen
        before stay silent until cut.
        """
        self.frozen = False

    def close(self) -> defer.Deferred[None]:
        self.cut()
        result: defer.Deferred[None] = defer.maybeDeferred(self._port.stopListening)
        return result
