"""
Tests of the blocking API L{txass.blocking} on the real broker.

The tests run in trial's reactor thread, so the bridge uses trial's
reactor.  Blocking calls run in other threads, and the tests wait for them
through Deferreds.  Programs in C{tests/blocking_scripts} check what needs a
process of its own: the reactor thread the bridge starts, a reactor the
program runs itself or chooses, interpreter exit, a blocked reactor,
SIGINT and fork().
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from twisted.internet import defer, error, protocol, reactor, task, threads
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.trial import unittest

import txass
import txass.blocking
from tests import support
from tests.support import connect, remove_after, unique_name, within
from txass._bridge import BACKSTOP_MARGIN, BRIDGE, Operation
from txass.blocking import BlockingBroker, ReactorThreadError

T = TypeVar("T")

SCRIPTS = os.path.join(support.TOP, "tests", "blocking_scripts")

# Seconds within which a waiting call must fail once its connection closes.
PROMPT = 5.0

# Seconds within which a program must exit once its main thread returns.
EXIT_BOUND = 5.0

# A loopback address where nothing listens, so any connection is refused.
CLOSED_PORT_URL = "amqp://guest:guest@127.0.0.1:1/%2F"

# A wait in seconds above threading.TIMEOUT_MAX, which locks and events
# reject with OverflowError.
HUGE = 1e10

# Seconds within which a step in a forked child must fail.
AT_ONCE = 0.5

# Seconds within which a forked child must exit once its main module
# returns.  The interpreter's own shutdown took up to about 0.2 s here.
CHILD_EXIT_BOUND = 1.0


class Echo:
    """
    The handler of the tests that get replies.
    """

    def foo(self, input: Any) -> Any:
        return ["server", "foo", input]

    def fail(self, input: Any) -> Any:
        raise ValueError(f"cannot handle {input} ünïcødé")


class Holder:
    """
    A handler whose method C{hold} never replies, and records the data of
    each request it receives.
    """

    def __init__(self) -> None:
        self.received: list[Any] = []
        self._waiters: list[tuple[int, defer.Deferred[None]]] = []

    def hold(self, input: Any) -> defer.Deferred[Any]:
        self.received.append(input)
        ready = [(n, d) for n, d in self._waiters if len(self.received) >= n]
        self._waiters = [(n, d) for n, d in self._waiters if len(self.received) < n]
        for _, d in ready:
            d.callback(None)
        return defer.Deferred()

    def wait_for(self, count: int) -> defer.Deferred[None]:
        """
        Return a Deferred firing once C{count} requests have arrived.
        """
        if len(self.received) >= count:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append((count, d))
        return within(d)


class Gate:
    """
    A handler whose method C{gather} replies to no request until C{count}
    requests wait, then to all of them, each with its own data.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self._waiting: list[tuple[Any, defer.Deferred[Any]]] = []

    def gather(self, input: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self._waiting.append((input, d))
        if len(self._waiting) >= self.count:
            waiting, self._waiting = self._waiting, []
            for value, waiter in waiting:
                waiter.callback(["gathered", value])
        return d


def in_thread(function: Callable[..., T], *args: Any, **kwargs: Any) -> defer.Deferred[T]:
    """
    Run C{function} in a thread of the reactor's pool, bounded in time.
    """
    return within(threads.deferToThread(function, *args, **kwargs), support.EVENT_TIMEOUT * 2)


def timed(function: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, BaseException | None, float]:
    """
    Call C{function} and return its result, the exception it raised, and
    the seconds it took.
    """
    start = time.monotonic()
    try:
        result = function(*args, **kwargs)
    except BaseException as e:
        return None, e, time.monotonic() - start
    return result, None, time.monotonic() - start


class Silent(protocol.Protocol):
    """
    A TCP server that accepts connections and never speaks, so an AMQP
    handshake with it never completes.
    """

    factory: SilentFactory

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if not self.factory.lost.called:
            self.factory.lost.callback(None)


class SilentFactory(protocol.Factory):
    protocol = Silent

    def __init__(self) -> None:
        # Fires when the first connection closes.
        self.lost: defer.Deferred[None] = defer.Deferred()


class BlockingTestCase(unittest.TestCase):
    async def serve(self, handler: Any, **options: Any) -> str:
        """
        Serve a new service with C{handler} and return its name.
        """
        name = unique_name("blocking")
        remove_after(self, name)
        broker = await connect(self)
        await broker.service(name).react(handler, **options)
        return name

    async def blocking_connect(self, url: str = support.BROKER_URL, **options: Any) -> BlockingBroker:
        """
        Connect through the blocking API in a thread; the connection closes
        after the test.
        """
        broker = await in_thread(txass.blocking.connect, url, **options)
        self.addCleanup(lambda: in_thread(broker.close))
        return broker

    async def blocking_client(self, name: str, **options: Any) -> txass.blocking.BlockingRPCClient:
        broker = await self.blocking_connect()
        return await in_thread(broker.rpc, name, **options)


class CallTests(BlockingTestCase):
    async def test_round_trip(self) -> None:
        """
        When a thread calls foo with 42, then the call returns
        ["server", "foo", 42].
        """
        client = await self.blocking_client(await self.serve(Echo))
        result = await in_thread(client.call, "foo", 42)
        self.assertEqual(result, ["server", "foo", 42])

    async def test_remote_error(self) -> None:
        """
        When the handler raises ValueError with a non-ASCII message, then
        the call raises RemoteError with that type name and message.
        """
        client = await self.blocking_client(await self.serve(Echo))
        _, e, _ = await in_thread(timed, client.call, "fail", "x")
        self.assertIsInstance(e, txass.RemoteError)
        assert isinstance(e, txass.RemoteError)
        self.assertEqual(e.type, "ValueError")
        self.assertEqual(e.message, "cannot handle x ünïcødé")
        self.assertEqual(e.method, "fail")
        # The server logs the handler's exception.
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    async def test_call_timeout(self) -> None:
        """
        When no reply comes within the call's timeout, then the call raises
        CallTimeout from the reactor's timer, well before the waiting
        thread would give up by itself.
        """
        holder = Holder()
        name = await self.serve({"hold": holder.hold}, grace=0)
        client = await self.blocking_client(name)
        _, e, seconds = await in_thread(timed, client.call, "hold", 1, timeout=0.5)
        self.assertIsInstance(e, txass.CallTimeout)
        assert isinstance(e, txass.CallTimeout)
        self.assertEqual((e.service, e.method, e.timeout), (name, "hold", 0.5))
        # The reactor's clock and time.monotonic() may differ slightly.
        self.assertGreaterEqual(seconds, 0.45)
        self.assertLess(seconds, 0.5 + BACKSTOP_MARGIN)

    async def test_service_not_found(self) -> None:
        """
        When the service has no queue, then the call raises ServiceNotFound
        naming it.
        """
        name = unique_name("missing")
        client = await self.blocking_client(name)
        _, e, _ = await in_thread(timed, client.call, "foo", 1)
        self.assertIsInstance(e, txass.ServiceNotFound)
        assert isinstance(e, txass.ServiceNotFound)
        self.assertEqual(e.service, name)

    async def test_encoding_error(self) -> None:
        """
        When the data cannot be encoded as JSON, then the call raises
        EncodingError.
        """
        client = await self.blocking_client(await self.serve(Echo))
        _, e, _ = await in_thread(timed, client.call, "foo", {1, 2})
        self.assertIsInstance(e, txass.EncodingError)

    async def test_invalid_timeout(self) -> None:
        """
        When a call gives a timeout of 0, then it raises ValueError.
        """
        client = await self.blocking_client(await self.serve(Echo))
        _, e, _ = await in_thread(timed, client.call, "foo", 1, timeout=0)
        self.assertIsInstance(e, ValueError)

    async def test_invalid_service_name(self) -> None:
        """
        When rpc() is given a name that cannot name a service, then it
        raises InvalidName.
        """
        broker = await self.blocking_connect()
        _, e, _ = await in_thread(timed, broker.rpc, "amq.reserved")
        self.assertIsInstance(e, txass.InvalidName)

    async def test_many_threads(self) -> None:
        """
        When 20 threads call through one BlockingBroker at once, and the
        handler replies only once all 20 requests wait, then each thread
        gets the reply to its own request.
        """
        count = 20
        name = await self.serve(Gate(count), prefetch=count)
        client = await self.blocking_client(name)
        pool = ThreadPool(count, count, "blocking-test")
        pool.start()
        self.addCleanup(pool.stop)
        calls = [threads.deferToThreadPool(reactor, pool, client.call, "gather", number) for number in range(count)]
        results = await within(defer.gatherResults(calls, consumeErrors=True))
        self.assertEqual(results, [["gathered", number] for number in range(count)])


class ReactorThreadTests(BlockingTestCase):
    async def test_call_in_reactor_thread(self) -> None:
        """
        When a call is made in the reactor thread, then it raises
        ReactorThreadError at once, whose message points the caller to the
        Deferred API.
        """
        client = await self.blocking_client(await self.serve(Echo))
        _, e, seconds = timed(client.call, "foo", 1)
        self.assertIsInstance(e, ReactorThreadError)
        self.assertIsInstance(e, txass.TxassError)
        self.assertIsInstance(e, RuntimeError)
        self.assertIn("Broker.rpc", str(e))
        self.assertLess(seconds, 0.1)

    async def test_connect_in_reactor_thread(self) -> None:
        """
        When connect() is called in the reactor thread, then it raises
        ReactorThreadError at once.
        """
        # Trial calls the test before it runs the reactor; wait until it runs.
        await task.deferLater(reactor, 0, lambda: None)
        _, e, seconds = timed(txass.blocking.connect, support.BROKER_URL)
        self.assertIsInstance(e, ReactorThreadError)
        self.assertLess(seconds, 0.1)

    async def test_rpc_in_reactor_thread(self) -> None:
        """
        When rpc() is called in the reactor thread, then it raises
        ReactorThreadError at once.
        """
        broker = await self.blocking_connect()
        _, e, _ = timed(broker.rpc, "echo")
        self.assertIsInstance(e, ReactorThreadError)

    async def test_close_in_reactor_thread(self) -> None:
        """
        When close() is called in the reactor thread, then it raises
        ReactorThreadError and the connection stays open.
        """
        broker = await self.blocking_connect()
        _, e, _ = timed(broker.close)
        self.assertIsInstance(e, ReactorThreadError)
        self.assertTrue(broker.is_open)


class ConnectTests(BlockingTestCase):
    async def test_connect_refused(self) -> None:
        """
        When nothing listens at the address, then connect() raises
        ConnectionFailed naming the port.
        """
        _, e, _ = await in_thread(timed, txass.blocking.connect, CLOSED_PORT_URL)
        self.assertIsInstance(e, txass.ConnectionFailed)
        assert isinstance(e, txass.ConnectionFailed)
        self.assertEqual(e.port, 1)

    async def test_wrong_password(self) -> None:
        """
        When the password is wrong, then connect() raises
        AuthenticationFailed.
        """
        url = support.BROKER_URL.replace("guest:guest@", "guest:wrong@")
        _, e, _ = await in_thread(timed, txass.blocking.connect, url)
        self.assertIsInstance(e, txass.AuthenticationFailed)

    async def test_invalid_url(self) -> None:
        """
        When the URL is not an AMQP URI, then connect() raises InvalidURL.
        """
        _, e, _ = await in_thread(timed, txass.blocking.connect, "http://127.0.0.1/")
        self.assertIsInstance(e, txass.InvalidURL)

    async def test_connect_timeout(self) -> None:
        """
        When the AMQP handshake does not complete within connect()'s
        timeout, then connect() raises ConnectionFailed and the TCP
        connection is closed.
        """
        factory = SilentFactory()
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"amqp://guest:guest@127.0.0.1:{port.getHost().port}/%2F"
        _, e, seconds = await in_thread(timed, txass.blocking.connect, url, timeout=0.5)
        self.assertIsInstance(e, txass.ConnectionFailed)
        self.assertIn("not connected within 0.5 s", str(e))
        self.assertLess(seconds, 0.5 + BACKSTOP_MARGIN)
        await within(factory.lost)


class CloseTests(BlockingTestCase):
    async def test_context_manager(self) -> None:
        """
        When a with block on a BlockingBroker ends, then its connection is
        closed.
        """

        def use() -> BlockingBroker:
            with txass.blocking.connect(support.BROKER_URL) as broker:
                self.assertTrue(broker.is_open)
            return broker

        broker = await in_thread(use)
        self.assertFalse(broker.is_open)
        # The AMQP connection itself, and not only the BlockingBroker, is closed.
        self.assertFalse(broker._bridged.broker.is_open)

    async def test_close_fails_pending_calls(self) -> None:
        """
        When close() runs while three threads wait for replies that never
        come, then each call raises ConnectionLost promptly.
        """
        holder = Holder()
        name = await self.serve({"hold": holder.hold}, grace=0)
        broker = await self.blocking_connect()
        client = await in_thread(broker.rpc, name)
        calls = [in_thread(timed, client.call, "hold", number, timeout=60) for number in range(3)]
        await holder.wait_for(3)
        await in_thread(broker.close)
        outcomes = await within(defer.gatherResults(calls), PROMPT)
        for _, e, seconds in outcomes:
            self.assertIsInstance(e, txass.ConnectionLost)
            self.assertIn("BlockingBroker.close() was called", str(e))
            self.assertLess(seconds, 60)

    async def test_call_after_close(self) -> None:
        """
        When a call is made after close(), then it raises ConnectionLost at
        once.
        """
        name = await self.serve(Echo)
        broker = await self.blocking_connect()
        client = await in_thread(broker.rpc, name)
        await in_thread(broker.close)
        _, e, seconds = await in_thread(timed, client.call, "foo", 1)
        self.assertIsInstance(e, txass.ConnectionLost)
        self.assertLess(seconds, 0.1)

    async def test_rpc_after_close(self) -> None:
        """
        When rpc() is called after close(), then it raises ConnectionLost.
        """
        broker = await self.blocking_connect()
        await in_thread(broker.close)
        _, e, _ = await in_thread(timed, broker.rpc, "echo")
        self.assertIsInstance(e, txass.ConnectionLost)

    async def test_close_twice(self) -> None:
        """
        When close() is called twice, then the second call returns too.
        """
        broker = await self.blocking_connect()
        await in_thread(broker.close)
        _, e, seconds = await in_thread(timed, broker.close)
        self.assertIsNone(e)
        self.assertLess(seconds, 1.0)


class LongWaitTests(BlockingTestCase):
    async def test_close_with_huge_timeout(self) -> None:
        """
        When close() is given a timeout above threading.TIMEOUT_MAX, then
        it closes the connection without OverflowError.
        """
        broker = await self.blocking_connect()
        _, e, _ = await in_thread(timed, broker.close, timeout=HUGE)
        self.assertIsNone(e)
        self.assertFalse(broker._bridged.broker.is_open)

    async def test_wait_above_timeout_max(self) -> None:
        """
        When a thread waits for an operation for longer than
        threading.TIMEOUT_MAX, then it gets the operation's result without
        OverflowError.
        """

        def wait() -> str:
            operation: Operation[str] = Operation(ConnectionError)
            reactor.callFromThread(operation.start, task.deferLater, reactor, 0.1, lambda: "done")
            return BRIDGE.wait(operation, "a test operation", HUGE, TimeoutError)

        result, e, _ = await in_thread(timed, wait)
        self.assertIsNone(e)
        self.assertEqual(result, "done")

    async def test_start_with_far_deadline(self) -> None:
        """
        When the reactor is looked up with a deadline further away than
        threading.TIMEOUT_MAX, then the running reactor is returned without
        OverflowError.
        """
        result, e, _ = await in_thread(timed, lambda: BRIDGE.ensure_running(time.monotonic() + HUGE))
        self.assertIsNone(e)
        self.assertIs(result, reactor)


class LostConnectionTests(BlockingTestCase):
    async def test_reconnects(self) -> None:
        """
        When the connection is cut, then a later call gets its reply once
        the broker has connected again, and the bridge still tracks the
        broker.
        """
        name = await self.serve(Echo)
        proxy = support.TCPProxy(self)
        broker = await self.blocking_connect(proxy.url)
        client = await in_thread(broker.rpc, name)
        proxy.cut()
        result = await in_thread(client.call, "foo", 6, timeout=support.EVENT_TIMEOUT)
        self.flushLoggedErrors()
        self.assertEqual(result, ["server", "foo", 6])
        self.assertIn(broker._bridged, BRIDGE._brokers)

    async def cut_connection(self) -> BlockingBroker:
        """
        Connect through a proxy without reconnection, then cut the
        connection and wait until the broker is closed.
        """
        proxy = support.TCPProxy(self)
        broker = await self.blocking_connect(proxy.url, reconnect=False)
        proxy.cut()
        # The bridge watched the connection first, so it has seen the loss.
        await within(broker._bridged.broker.when_closed())
        self.flushLoggedErrors()
        return broker

    async def test_forgotten(self) -> None:
        """
        When three connections without reconnection are cut in turn and
        none is closed, then the bridge tracks none of them.
        """
        bridged = [(await self.cut_connection())._bridged for _ in range(3)]
        self.assertEqual([b for b in bridged if b in BRIDGE._brokers], [])

    async def test_call_after_loss(self) -> None:
        """
        When a call is made after a connection without reconnection was
        cut, then it raises ConnectionLost at once, saying that the
        connection was lost.
        """
        name = await self.serve(Echo)
        proxy = support.TCPProxy(self)
        broker = await self.blocking_connect(proxy.url, reconnect=False)
        client = await in_thread(broker.rpc, name)
        proxy.cut()
        await within(broker._bridged.broker.when_closed())
        self.flushLoggedErrors()
        _, e, seconds = await in_thread(timed, client.call, "foo", 1)
        self.assertIsInstance(e, txass.ConnectionLost)
        self.assertIn("lost", str(e))
        self.assertLess(seconds, 0.1)

    async def test_close_after_loss(self) -> None:
        """
        When close() is called after a connection without reconnection was
        cut, then it returns at once.
        """
        broker = await self.cut_connection()
        _, e, seconds = await in_thread(timed, broker.close)
        self.assertIsNone(e)
        self.assertLess(seconds, 1.0)


class Script(protocol.ProcessProtocol):
    """
    A program from C{tests/blocking_scripts} run in a child process.
    """

    def __init__(self) -> None:
        self.output = bytearray()
        self.errors = bytearray()
        self.status: error.ProcessDone | error.ProcessTerminated | None = None
        self.ended_at: float | None = None
        self._ended: list[defer.Deferred[None]] = []
        self._output_waiters: list[tuple[str, defer.Deferred[None]]] = []

    @property
    def stdout(self) -> str:
        return self.output.decode("utf-8", "replace")

    def outReceived(self, data: bytes) -> None:
        self.output.extend(data)
        waiting, self._output_waiters = self._output_waiters, []
        for text, d in waiting:
            if text in self.stdout:
                d.callback(None)
            else:
                self._output_waiters.append((text, d))

    def errReceived(self, data: bytes) -> None:
        self.errors.extend(data)

    def processEnded(self, reason: Failure) -> None:
        self.ended_at = time.monotonic()
        self.status = cast("error.ProcessDone | error.ProcessTerminated", reason.value)
        waiting, self._ended = self._ended, []
        for d in waiting:
            d.callback(None)

    def wait_for_output(self, text: str) -> defer.Deferred[None]:
        if text in self.stdout:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._output_waiters.append((text, d))
        return within(d)

    async def wait_for_end(self, seconds: float) -> None:
        """
        Wait until the process ends; kill it if it still runs after
        C{seconds}.

        @raise AssertionError: if it had to be killed.
        """
        if self.status is not None:
            return
        d: defer.Deferred[None] = defer.Deferred()
        self._ended.append(d)
        try:
            await within(d, seconds)
        except defer.TimeoutError:
            await self.kill()
            raise AssertionError(
                f"the program did not exit within {seconds:g} s; output:\n{self.stdout}\n"
                f"errors:\n{self.errors.decode('utf-8', 'replace')}"
            ) from None

    async def kill(self) -> None:
        if self.status is not None or self.transport is None:
            return
        d: defer.Deferred[None] = defer.Deferred()
        self._ended.append(d)
        try:
            self.transport.signalProcess("KILL")
        except error.ProcessExitedAlready:
            return
        await within(d)

    @property
    def exit_code(self) -> int | None:
        assert self.status is not None
        return self.status.exitCode


class ScriptTests(BlockingTestCase):
    def run_script(self, name: str, *arguments: str) -> Script:
        """
        Start C{tests/blocking_scripts/NAME}, killed after the test if it
        still runs.
        """
        script = Script()
        command = [sys.executable, os.path.join(SCRIPTS, name), *arguments]
        reactor.spawnProcess(script, command[0], command, env=support.python_environment(), path=support.TOP)
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(script.kill()))
        return script

    def assert_exited(self, script: Script, code: int = 0) -> None:
        self.assertEqual(
            script.exit_code,
            code,
            f"exit code {script.exit_code}; output:\n{script.stdout}\nerrors:\n{script.errors.decode('utf-8', 'replace')}",
        )

    async def test_plain_program(self) -> None:
        """
        When a program that runs no reactor calls a service, then
        txass.blocking runs the reactor in the thread txass-reactor, the
        program prints the result and exits with 0.
        """
        name = await self.serve(Echo)
        script = self.run_script("plain_call.py", name, "21")
        await script.wait_for_end(support.EVENT_TIMEOUT * 2)
        self.assert_exited(script)
        lines = script.stdout.splitlines()
        self.assertEqual(json.loads(lines[0]), ["server", "foo", 21])
        self.assertEqual(lines[1], "reactor thread: True")

    async def test_concurrent_first_use(self) -> None:
        """
        When 8 threads of a program connect at once as the first use of
        txass.blocking, then exactly one reactor thread starts and every
        thread gets its reply.
        """
        count = 8
        name = await self.serve(Echo)
        script = self.run_script("concurrent_start.py", name, str(count))
        await script.wait_for_end(support.EVENT_TIMEOUT * 2)
        self.assert_exited(script)
        lines = script.stdout.splitlines()
        self.assertEqual(json.loads(lines[0]), [["server", "foo", number] for number in range(count)])
        self.assertEqual(lines[1], "reactor threads: 1")
        self.assertEqual(lines[2], "started: 1, started by another thread: 0")

    async def test_exit_with_pending_calls(self) -> None:
        """
        When the main thread returns while threads that are not daemons
        wait for replies that never come, then each call raises
        ConnectionLost and the program exits within a few seconds.
        """
        count = 4
        holder = Holder()
        name = await self.serve({"hold": holder.hold}, grace=0)
        script = self.run_script("exit_with_pending.py", name, str(count))
        await script.wait_for_output("waiting")
        await holder.wait_for(count)
        returned_at = time.monotonic()
        assert script.transport is not None
        script.transport.write(b"exit\n")
        await script.wait_for_end(support.EVENT_TIMEOUT * 2)
        assert script.ended_at is not None
        self.assert_exited(script)
        self.assertLess(script.ended_at - returned_at, EXIT_BOUND, script.stdout)
        outcomes = sorted(line for line in script.stdout.splitlines() if line.startswith("worker "))
        self.assertEqual(outcomes, [f"worker w{number}: ConnectionLost" for number in range(count)])

    async def test_program_with_own_reactor(self) -> None:
        """
        When a program runs the reactor in a thread of its own before it
        connects, then txass.blocking uses that reactor and starts no
        thread of its own.
        """
        name = await self.serve(Echo)
        script = self.run_script("own_reactor.py", name, "5")
        await script.wait_for_end(support.EVENT_TIMEOUT * 2)
        self.assert_exited(script)
        lines = script.stdout.splitlines()
        self.assertEqual(json.loads(lines[0]), ["server", "foo", 5])
        self.assertEqual(lines[1:], ["reactor thread: False", "stopped"])

    async def test_stopped_reactor(self) -> None:
        """
        When the program stops its own reactor while a thread waits for a
        reply, then the call raises ConnectionLost, and later a connect()
        raises ReactorThreadError and a call raises ConnectionLost.
        """
        holder = Holder()
        name = await self.serve({"hold": holder.hold}, grace=0)
        script = self.run_script("stopped_reactor.py", name)
        await script.wait_for_output("waiting")
        await holder.wait_for(1)
        assert script.transport is not None
        script.transport.write(b"stop\n")
        await script.wait_for_end(support.EVENT_TIMEOUT * 2)
        self.assert_exited(script)
        lines = script.stdout.splitlines()
        self.assertEqual(lines[1:], ["worker: ConnectionLost", "connect: ReactorThreadError", "call: ConnectionLost"])
        self.assertEqual(holder.received, ["worker"])

    async def test_blocked_reactor(self) -> None:
        """
        When the reactor thread is blocked, then a call with a timeout of
        0.5 s raises CallTimeout about 2 s later, before the reactor runs
        again, and the call is never sent.
        """
        name = await self.serve(Echo)
        script = self.run_script("blocked_reactor.py", name)
        await script.wait_for_end(support.EVENT_TIMEOUT * 2)
        self.assert_exited(script)
        lines = script.stdout.splitlines()
        outcome, seconds = lines[0].removeprefix("outcome: ").removesuffix(" s").split(" after ")
        self.assertEqual(outcome, "CallTimeout")
        self.assertGreaterEqual(float(seconds), 0.5 + BACKSTOP_MARGIN - 0.1)
        # The reactor thread is blocked for 6 s.
        self.assertLess(float(seconds), 5.5)
        self.assertEqual(lines[1], "pending: 0, channel opened: False")

    async def test_keyboard_interrupt(self) -> None:
        """
        When SIGINT arrives while the main thread waits for a reply, then
        the call raises KeyboardInterrupt at once and is cancelled.
        """
        holder = Holder()
        name = await self.serve({"hold": holder.hold}, grace=0)
        script = self.run_script("interrupted_call.py", name)
        await holder.wait_for(1)
        assert script.transport is not None
        script.transport.signalProcess("INT")
        await script.wait_for_end(support.EVENT_TIMEOUT * 2)
        self.assert_exited(script)
        lines = script.stdout.splitlines()
        self.assertTrue(lines[0].startswith("interrupted after "), script.stdout)
        self.assertLess(float(lines[0].removeprefix("interrupted after ").removesuffix(" s")), 10)
        # Without the cancellation, the call stays pending for 30 s.
        self.assertEqual(lines[1], "pending: 0")

    async def run_forked(self, *arguments: str) -> dict[str, dict[str, Any]]:
        """
        Run C{forked_child.py} and return the objects it printed by step,
        and the result of the parent's last call under C{"result"}.
        """
        name = await self.serve(Echo)
        script = self.run_script("forked_child.py", name, *arguments)
        await script.wait_for_end(support.EVENT_TIMEOUT * 2)
        self.assert_exited(script)
        lines = [json.loads(line) for line in script.stdout.splitlines()]
        steps = {line["step"]: line for line in lines if isinstance(line, dict)}
        steps["result"] = {"value": [line for line in lines if isinstance(line, list)]}
        return steps

    def assert_at_once(self, step: dict[str, Any], error: str, text: str) -> None:
        self.assertEqual(step["error"], error, step)
        self.assertIn(text, step["message"])
        self.assertLess(step["seconds"], AT_ONCE)

    async def test_forked_call(self) -> None:
        """
        When a process forked after txass.blocking connected makes a call
        on the inherited connection, then the call raises ConnectionLost at
        once, saying that the process was forked.
        """
        steps = await self.run_forked()
        self.assert_at_once(steps["call"], "ConnectionLost", "forked after txass.blocking connected")

    async def test_forked_rpc(self) -> None:
        """
        When a process forked after txass.blocking connected creates an RPC
        client on the inherited connection, then rpc() raises
        ConnectionLost at once.
        """
        steps = await self.run_forked()
        self.assert_at_once(steps["rpc"], "ConnectionLost", "forked after txass.blocking connected")

    async def test_forked_connect(self) -> None:
        """
        When a process forked after txass.blocking connected connects, then
        connect() raises ReactorThreadError at once, saying that the
        reactor thread does not survive fork() and what to do instead.
        """
        steps = await self.run_forked()
        self.assert_at_once(steps["connect"], "ReactorThreadError", "the reactor thread does not survive fork()")
        self.assertIn("forkserver", steps["connect"]["message"])
        self.assertIn("lazy-apps", steps["connect"]["message"])

    async def test_forked_close(self) -> None:
        """
        When a process forked after txass.blocking connected closes the
        inherited connection, then close() returns at once.
        """
        steps = await self.run_forked("close")
        self.assertIsNone(steps["close"]["error"], steps["close"])
        self.assertLess(steps["close"]["seconds"], AT_ONCE)

    async def test_forked_exit(self) -> None:
        """
        When a process forked after txass.blocking connected returns from
        its main module with the inherited connection open, then it exits
        with 0 at once, without waiting for the reactor thread of its
        parent.
        """
        steps = await self.run_forked()
        self.assertEqual(steps["parent"]["code"], 0)
        self.assertLess(steps["parent"]["ended"] - steps["return"]["at"], CHILD_EXIT_BOUND)

    async def test_parent_after_fork(self) -> None:
        """
        When a process forks after txass.blocking connected, then the
        parent's calls still get their replies.
        """
        steps = await self.run_forked()
        self.assertEqual(steps["result"]["value"], [["server", "foo", 2]])

    async def test_fork_before_use(self) -> None:
        """
        When a process forks before it uses txass.blocking, then the child
        connects and calls.
        """
        name = await self.serve(Echo)
        script = self.run_script("fork_before_use.py", name)
        await script.wait_for_end(support.EVENT_TIMEOUT * 2)
        self.assert_exited(script)
        lines = script.stdout.splitlines()
        self.assertEqual(json.loads(lines[0]), ["server", "foo", 4])
        self.assertEqual(lines[2], "child exit code: 0")

    async def test_fork_before_use_warns(self) -> None:
        """
        When a process forks before it uses txass.blocking while its parent
        runs, then the child warns that its reactor is shared with the
        parent.
        """
        name = await self.serve(Echo)
        script = self.run_script("fork_before_use.py", name)
        await script.wait_for_end(support.EVENT_TIMEOUT * 2)
        self.assert_exited(script)
        self.assertEqual(script.stdout.splitlines()[1], "warned: True")

    async def test_reactor_installed_first(self) -> None:
        """
        When a program installs the asyncio reactor before it imports
        txass.blocking, then the calls run on that reactor.
        """
        name = await self.serve(Echo)
        script = self.run_script("chosen_reactor.py", name, "before")
        await script.wait_for_end(support.EVENT_TIMEOUT * 2)
        self.assert_exited(script)
        lines = script.stdout.splitlines()
        self.assertEqual(json.loads(lines[0]), ["server", "foo", 5])
        self.assertEqual(lines[1], "AsyncioSelectorReactor")

    async def test_reactor_installed_after_import(self) -> None:
        """
        When a program installs the asyncio reactor after it imported
        txass.blocking, then the install raises
        ReactorAlreadyInstalledError, since importing txass installed the
        default reactor.
        """
        script = self.run_script("chosen_reactor.py", "unused", "after")
        await script.wait_for_end(support.EVENT_TIMEOUT * 2)
        self.assert_exited(script)
        self.assertEqual(script.stdout.splitlines(), ["ReactorAlreadyInstalledError"])
