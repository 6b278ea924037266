"""
Tests of the RPC client on the real broker.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial import unittest

import txass
import txass._connection
import txass._rpc
from txass._connection import MessageProperties
from tests.support import (
    BROKER_URL,
    EVENT_TIMEOUT,
    TCPProxy,
    connect,
    message_count,
    python_environment,
    rabbitmqctl,
    raw_channel,
    remove_after,
    unique_name,
    within,
)


class Calculator:
    """
    A handler whose methods return at once, later, never, or raise.
    """

    # Deferreds of calls to "hold", fired by the tests.
    held: list[defer.Deferred[Any]] = []

    def add(self, numbers: list[int]) -> int:
        return sum(numbers)

    def echo(self, value: Any) -> Any:
        return value

    def meta(self, _: Any) -> Any:
        return txass.current_request().meta

    def grow(self, size: int) -> str:
        return "x" * size

    def fail(self, value: Any) -> Any:
        raise ValueError(f"cannot take {value}: ünïcødé ✓")

    async def slow(self, seconds: float) -> str:
        await task.deferLater(reactor, seconds, lambda: None)
        return f"slept {seconds}"

    def hold(self, _: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        Calculator.held.append(d)
        return d


class Impostor:
    """
    A handler that publishes extra messages to the caller's reply
    destination before its own reply.
    """

    def __init__(self, publish: Any) -> None:
        self.publish = publish

    async def spoof(self, _: Any) -> str:
        request = txass.current_request()
        assert request.reply_to is not None
        body = json.dumps({"method": "spoof", "result": "forged", "meta": {}}).encode()
        # A reply with an unknown correlation id, and one with none.
        await self.publish(request.reply_to, body, MessageProperties(correlation_id="not-a-call"))
        await self.publish(request.reply_to, body, MessageProperties())
        return "genuine"

    async def garble(self, _: Any) -> str:
        request = txass.current_request()
        assert request.reply_to is not None
        await self.publish(request.reply_to, b"\xff not json", MessageProperties(correlation_id=request.correlation_id))
        return "too late"


class RPCTestCase(unittest.TestCase):
    def setUp(self) -> None:
        Calculator.held.clear()

    async def serve(self, handler: Any = Calculator, *, servers: int = 1, **options: Any) -> tuple[txass.Broker, str]:
        name = unique_name("rpc")
        remove_after(self, name)
        broker = await connect(self)
        # Requests held by a test go back to the queue when it ends.
        options.setdefault("grace", 0)
        for _ in range(servers):
            await broker.service(name).react(handler, **options)
        return broker, name

    async def failure_of(self, d: defer.Deferred[Any], seconds: float = EVENT_TIMEOUT) -> BaseException:
        """
        Wait for C{d} to fail and return its exception.
        """
        try:
            result = await within(d, seconds)
        except defer.TimeoutError:
            self.fail(f"the call did not end within {seconds} s")
        except BaseException as e:
            return e
        self.fail(f"the call succeeded with {result!r}")


class ResultTests(RPCTestCase):
    async def test_result(self) -> None:
        """
        When a service handler returns a value, then the call fires with it.
        """
        broker, name = await self.serve()
        self.assertEqual(await within(broker.rpc(name).call("add", [1, 2, 3])), 6)

    async def test_data_omitted(self) -> None:
        """
        When a call passes no data, then the handler receives None.
        """
        broker, name = await self.serve()
        self.assertIsNone(await within(broker.rpc(name).call("echo")))

    async def test_unicode_round_trip(self) -> None:
        """
        When data contains text outside ASCII, then the result contains it
        unchanged.
        """
        broker, name = await self.serve()
        value = {"text": "Grüße, 世界, 🐇", "list": [1.5, None, True]}
        self.assertEqual(await within(broker.rpc(name).call("echo", value)), value)

    async def test_unicode_method_name(self) -> None:
        """
        When a mapping handler exposes a method name outside ASCII, then a
        call to it returns its result, with meta unchanged.
        """
        broker, name = await self.serve({"grüßen": lambda value: f"grüß dich, {value}", "💬": lambda value: value})
        rpc = broker.rpc(name)
        self.assertEqual(await within(rpc.call("grüßen", "Ada")), "grüß dich, Ada")
        self.assertEqual(await within(rpc.call("💬", "🐇", meta={"ключ": "значение"})), "🐇")

    async def test_meta(self) -> None:
        """
        When a call passes meta, then the handler reads it from the request.
        """
        broker, name = await self.serve()
        meta = {"trace": "abc", "user": "ünï"}
        self.assertEqual(await within(broker.rpc(name).call("meta", meta=meta)), meta)

    async def test_unencodable_data(self) -> None:
        """
        When data cannot be encoded as JSON, then the call fails at once
        with EncodingError and nothing is pending.
        """
        broker, name = await self.serve()
        rpc = broker.rpc(name)
        error = await self.failure_of(rpc.call("echo", {1, 2}))
        self.assertIsInstance(error, txass.EncodingError)
        self.assertEqual(rpc.pending, 0)

    async def test_concurrent_calls_through_three_servers(self) -> None:
        """
        When 300 calls are in flight at once through three servers, then
        each call fires with the result of its own request.
        """
        broker, name = await self.serve(servers=3)
        rpc = broker.rpc(name)
        calls = [rpc.call("add", [number, 1000]) for number in range(300)]
        results = await within(defer.gatherResults(calls), 60)
        self.assertEqual(results, [number + 1000 for number in range(300)])
        self.assertEqual(rpc.pending, 0)

    async def test_clients_share_one_caller(self) -> None:
        """
        When several RPC clients of one service call at once, then each
        call fires with its own result and all share the pending count.
        """
        broker, name = await self.serve()
        first, second = broker.rpc(name), broker.rpc(name, timeout=5)
        calls = [first.call("echo", "a"), second.call("echo", "b")]
        self.assertEqual(second.pending, 2)
        self.assertEqual(await within(defer.gatherResults(calls)), ["a", "b"])

    async def test_exclusive_reply_queue(self) -> None:
        """
        When direct reply-to is turned off, then replies come through an
        exclusive queue that is gone once the broker is closed.
        """
        broker, name = await self.serve()
        rpc = broker.rpc(name, direct_reply_to=False)
        results = await within(defer.gatherResults([rpc.call("add", [n, n]) for n in range(20)]))
        self.assertEqual(results, [2 * n for n in range(20)])
        current = rpc._caller._channel.current()
        assert current is not None
        reply_queue = current[1]
        self.assertTrue(reply_queue.startswith("txass.reply."), reply_queue)
        self.assertIn(reply_queue, rabbitmqctl("list_queues", "name").split())
        await broker.close()
        self.assertNotIn(reply_queue, rabbitmqctl("list_queues", "name").split())

    async def test_direct_reply_no_warning(self) -> None:
        """
        When a server replies to a direct reply-to destination, then it
        logs no warning about the reply being dropped.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        broker, name = await self.serve()
        await within(broker.rpc(name).call("echo", 1))
        warnings = [e for e in events if e.get("log_level", LogLevel.info) >= LogLevel.warn]
        self.assertEqual(warnings, [])


class RequestSizeTests(RPCTestCase):
    async def test_large_request_round_trip(self) -> None:
        """
        When a request of 5 MiB, spanning many AMQP frames, is sent, then
        the result is the same data, byte for byte.
        """
        broker, name = await self.serve()
        value = "ü" * (5 * 1024 * 1024 // 2)
        self.assertEqual(await within(broker.rpc(name).call("echo", value), 60), value)

    async def test_empty_string_round_trip(self) -> None:
        """
        When a request carries an empty string, then the result is the
        empty string.
        """
        broker, name = await self.serve()
        self.assertEqual(await within(broker.rpc(name).call("echo", "")), "")

    async def test_request_too_large(self) -> None:
        """
        When a request is larger than the service's maximum request size,
        then the call fails with a RequestTooLarge remote error naming both
        sizes, and the server serves the next request.
        """
        broker, name = await self.serve(max_request_size=1000)
        rpc = broker.rpc(name)
        error = await self.failure_of(rpc.call("echo", "x" * 2000))
        assert isinstance(error, txass.RemoteError)
        self.assertEqual(error.type, "RequestTooLarge")
        self.assertIn("larger than the maximum of 1000 bytes", error.message)
        self.assertEqual(await within(rpc.call("echo", "small")), "small")

    async def test_invalid_max_request_size(self) -> None:
        """
        When the maximum request size is not a positive integer, then
        react() raises ValueError at once.
        """
        name = unique_name("rpc")
        broker = await connect(self)
        for size in [0, -1, 1.5, True, "big"]:
            self.assertRaises(ValueError, broker.service(name).react, Calculator, max_request_size=size)


class SharedChannelTests(RPCTestCase):
    async def test_many_services_one_channel(self) -> None:
        """
        When calls go to more services than the connection has channels,
        then each call still gets its own outcome, because all services
        share one channel.
        """
        broker, name = await self.serve()
        limited = await connect(self, BROKER_URL + "?channel_max=8")
        for number in range(12):
            error = await self.failure_of(limited.rpc(f"{name}-missing-{number}").call("echo"))
            self.assertIsInstance(error, txass.ServiceNotFound)
        self.assertEqual(await within(limited.rpc(name).call("echo", "still works")), "still works")

    async def test_missing_services_at_once(self) -> None:
        """
        When calls to many missing services and to a running one are made
        at once on the shared channel, then each missing one fails with
        ServiceNotFound naming its own service, and the running one gets
        its result.
        """
        broker, name = await self.serve()
        missing = [f"{name}-missing-{number}" for number in range(20)]
        calls = [broker.rpc(service).call("echo", service) for service in missing]
        served = broker.rpc(name).call("echo", "served")
        for service, call in zip(missing, calls):
            error = await self.failure_of(call)
            assert isinstance(error, txass.ServiceNotFound), error
            self.assertEqual(error.service, service)
        self.assertEqual(await within(served), "served")

    async def test_oversized_request_fails_alone(self) -> None:
        """
        When a request is larger than the broker accepts, then that call
        alone fails with MessageTooLarge, nothing is sent, and a call in
        flight on the same channel gets its reply.
        """
        self.patch(txass._connection, "MAX_MESSAGE_SIZE", 1000)
        broker, name = await self.serve()
        rpc = broker.rpc(name)
        slow = rpc.call("slow", 0.2)
        error = await self.failure_of(rpc.call("echo", "x" * 2000))
        self.assertIsInstance(error, txass.MessageTooLarge)
        self.assertIn("not sent", str(error))
        self.assertEqual(await within(slow), "slept 0.2")

    async def test_oversized_reply(self) -> None:
        """
        When a result is larger than the broker accepts, then the caller
        gets an error reply saying so, and the server goes on serving.
        """
        self.patch(txass._connection, "MAX_MESSAGE_SIZE", 1000)
        broker, name = await self.serve()
        rpc = broker.rpc(name)
        error = await self.failure_of(rpc.call("grow", 2000))
        assert isinstance(error, txass.RemoteError)
        self.assertEqual(error.type, "PublishFailed")
        self.assertIn("larger than the maximum", error.message)
        self.assertEqual(await within(rpc.call("echo", "small")), "small")

    async def test_call_after_close_started(self) -> None:
        """
        When a call is made while Broker.close() waits for a server to
        drain, then it fails with ConnectionLost and is not sent.
        """
        broker, name = await self.serve(grace=5)
        rpc = broker.rpc(name)
        held = rpc.call("hold", timeout=10)
        while not Calculator.held:
            await task.deferLater(reactor, 0.01, lambda: None)
        closing = broker.close()
        # A caller of the other reply mode is created only now.
        late = broker.rpc(name, direct_reply_to=False).call("echo", "late")
        again = rpc.call("echo", "again")
        for call in (late, again):
            error = await self.failure_of(call)
            self.assertIsInstance(error, txass.ConnectionLost)
        Calculator.held.pop().callback("done")
        await within(closing)
        error = await self.failure_of(held)
        self.assertIsInstance(error, txass.ConnectionLost)
        # Neither request reached the queue.
        self.assertEqual(await message_count(self, name), 0)

    async def test_retry_after_channel_loss(self) -> None:
        """
        When a call fails because its channel closed before the confirm,
        then a call made at once in its errback goes out on a new channel.
        """
        broker, name = await self.serve()
        rpc = broker.rpc(name)
        self.assertEqual(await within(rpc.call("echo", 1)), 1)
        current = rpc._caller._channel.current()
        assert current is not None
        retried: list[defer.Deferred[Any]] = []

        def retry(failure: Any) -> None:
            failure.trap(txass.ConnectionLost)
            retried.append(rpc.call("echo", "retried"))

        first = rpc.call("echo", "first")
        first.addErrback(retry)
        await current[0].close()
        await within(first)
        self.assertEqual(len(retried), 1)
        self.assertEqual(await within(retried[0]), "retried")


class FlowControlTests(RPCTestCase):
    async def test_calls_wait_for_send_buffer(self) -> None:
        """
        When more is written at once than the connection's send buffer
        holds, then the calls that do not fit wait unsent, and every call
        still gets its result.
        """
        broker, name = await self.serve(prefetch=50)
        rpc = broker.rpc(name)
        self.assertEqual(await within(rpc.call("echo", 0)), 0)
        big = "x" * 100_000
        calls = [rpc.call("echo", f"{n}{big}") for n in range(40)]
        self.assertTrue(broker._connection.send_buffer_full)
        self.assertTrue([w for w in rpc._caller._waiting if not w.called])
        results = await within(defer.gatherResults(calls))
        self.assertEqual(results, [f"{n}{big}" for n in range(40)])
        self.assertFalse(broker._connection.send_buffer_full)

    async def test_frozen_broker_bounds_unsent(self) -> None:
        """
        When the broker stops taking data, then only as many requests are
        written as the socket buffers hold, the others time out unsent,
        and none of them stays waiting.
        """
        name = unique_name("rpc")
        remove_after(self, name)
        server_broker = await connect(self)
        await server_broker.service(name).react(Calculator, grace=0)
        proxy = TCPProxy(self)
        broker = await connect(self, proxy.url)
        rpc = broker.rpc(name)
        self.assertEqual(await within(rpc.call("echo", 0)), 0)
        written: list[str] = []
        publish = txass._rpc._Caller._publish

        def counting(caller: Any, call: Any, *args: Any) -> None:
            written.append(call.correlation_id)
            publish(caller, call, *args)

        self.patch(txass._rpc._Caller, "_publish", counting)
        proxy.freeze()
        big = "x" * 500_000
        calls = [rpc.call("echo", big, timeout=3) for _ in range(200)]
        outcomes = await within(defer.DeferredList(calls, consumeErrors=True))
        self.assertTrue(all(not ok and f.check(txass.CallTimeout) for ok, f in outcomes))
        # An estimate: the kernel buffers of both sockets hold a few
        # megabytes, so far fewer than 100 requests of 500 KB fit.
        self.assertLess(len(written), 100)
        self.assertEqual([w for w in rpc._caller._waiting if not w.called], [])
        self.assertEqual(rpc.pending, 0)
        proxy.cut()
        self.flushLoggedErrors()


class RemoteErrorTests(RPCTestCase):
    async def test_remote_error(self) -> None:
        """
        When the handler raises, then the call fails with RemoteError
        carrying the exception's type name and non-ASCII message, without
        a traceback.
        """
        broker, name = await self.serve()
        error = await self.failure_of(broker.rpc(name).call("fail", 7))
        self.assertIsInstance(error, txass.RemoteError)
        assert isinstance(error, txass.RemoteError)
        self.assertEqual((error.type, error.message, error.method), ("ValueError", "cannot take 7: ünïcødé ✓", "fail"))
        self.assertIsNone(error.traceback)
        self.flushLoggedErrors(ValueError)

    async def test_remote_traceback(self) -> None:
        """
        When the service sends tracebacks, then the RemoteError carries the
        remote traceback text.
        """
        broker, name = await self.serve(send_tracebacks=True)
        error = await self.failure_of(broker.rpc(name).call("fail", 7))
        assert isinstance(error, txass.RemoteError)
        assert error.traceback is not None
        self.assertIn("raise ValueError", error.traceback)
        self.flushLoggedErrors(ValueError)

    async def test_missing_method(self) -> None:
        """
        When the method does not exist, then the call fails with a
        RemoteError of type MethodNotFound.
        """
        broker, name = await self.serve()
        error = await self.failure_of(broker.rpc(name).call("_private"))
        assert isinstance(error, txass.RemoteError)
        self.assertEqual(error.type, "MethodNotFound")


class TimeoutTests(RPCTestCase):
    async def test_timeout_error(self) -> None:
        """
        When no reply comes within the call's timeout, then the call fails
        with CallTimeout naming the service, method and seconds, and nothing
        is pending.
        """
        broker, name = await self.serve()
        rpc = broker.rpc(name)
        started = time.monotonic()
        error = await self.failure_of(rpc.call("hold", timeout=0.3))
        elapsed = time.monotonic() - started
        self.assertIsInstance(error, txass.CallTimeout)
        self.assertIsInstance(error, TimeoutError)
        self.assertIn(name, str(error))
        self.assertIn("hold", str(error))
        self.assertIn("0.3 s", str(error))
        # The reactor's clock and time.monotonic() may differ slightly.
        self.assertGreaterEqual(elapsed, 0.25)
        self.assertLess(elapsed, 5)
        self.assertEqual(rpc.pending, 0)

    async def test_client_default_timeout(self) -> None:
        """
        When a call gives no timeout, then the client's default applies.
        """
        broker, name = await self.serve()
        error = await self.failure_of(broker.rpc(name, timeout=0.2).call("hold"))
        assert isinstance(error, txass.CallTimeout)
        self.assertEqual(error.timeout, 0.2)

    async def test_late_reply_dropped(self) -> None:
        """
        When a reply arrives after its call timed out, then it is dropped
        with a debug log line, and the next call gets its own result.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        broker, name = await self.serve()
        rpc = broker.rpc(name)
        Calculator.held.clear()
        error = await self.failure_of(rpc.call("hold", "first", timeout=0.2))
        self.assertIsInstance(error, txass.CallTimeout)
        self.assertEqual(len(Calculator.held), 1)
        second = rpc.call("slow", 0.2)
        Calculator.held.pop().callback("late answer")
        self.assertEqual(await within(second), "slept 0.2")
        dropped = [e for e in events if "no call waits for it" in e.get("log_format", "")]
        self.assertEqual(len(dropped), 1)
        self.assertEqual(dropped[0]["log_level"], LogLevel.debug)
        self.assertEqual(rpc.pending, 0)

    async def test_timed_out_calls_leave_nothing_pending(self) -> None:
        """
        When many calls time out, then none of them stays pending.
        """
        broker, name = await self.serve()
        rpc = broker.rpc(name)
        calls = [rpc.call("hold", n, timeout=0.2) for n in range(50)]
        outcomes = await within(defer.DeferredList(calls, consumeErrors=True))
        self.assertTrue(all(not ok and f.check(txass.CallTimeout) for ok, f in outcomes))
        self.assertEqual(rpc.pending, 0)
        self.assertEqual(rpc._caller._pending, {})

    async def test_expired_request_not_served(self) -> None:
        """
        When a request waits in the queue past its call's timeout, then the
        broker drops it rather than hand it to a server later.
        """
        name = unique_name("rpc")
        remove_after(self, name)
        broker = await connect(self)
        server = await broker.service(name).react(Calculator, grace=0)
        await server.stop()
        rpc = broker.rpc(name)
        error = await self.failure_of(rpc.call("echo", "stale", timeout=0.2))
        self.assertIsInstance(error, txass.CallTimeout)
        deadline = time.monotonic() + EVENT_TIMEOUT
        while await message_count(self, name) and time.monotonic() < deadline:
            await task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(await message_count(self, name), 0)

    async def test_long_timeout(self) -> None:
        """
        When a call's timeout is longer than any per-message TTL the broker
        accepts, then the call still succeeds.
        """
        broker, name = await self.serve()
        self.assertEqual(await within(broker.rpc(name).call("echo", 5, timeout=1e9)), 5)

    async def test_invalid_timeout(self) -> None:
        """
        When a timeout is not a positive number, then ValueError is raised
        at once.
        """
        broker, name = await self.serve()
        rpc = broker.rpc(name)
        for timeout in [0, -1, float("nan"), float("inf"), "5", True, 1e9 + 1, 10**400]:
            self.assertRaises(ValueError, rpc.call, "echo", timeout=timeout)
            self.assertRaises(ValueError, broker.rpc, name, timeout=timeout)
        self.assertEqual(rpc.pending, 0)


class MatchingTests(RPCTestCase):
    async def spoofing_service(self) -> tuple[txass.Broker, str]:
        channel = await raw_channel(self)
        await channel.enable_confirms()

        def publish(reply_to: str, body: bytes, properties: MessageProperties) -> defer.Deferred[None]:
            return channel.publish("", reply_to, body, properties)

        return await self.serve(Impostor(publish))

    async def test_unknown_correlation_ids_dropped(self) -> None:
        """
        When replies with an unknown or a missing correlation id reach the
        reply destination, then they are dropped and the call fires with
        its own reply.
        """
        broker, name = await self.spoofing_service()
        rpc = broker.rpc(name)
        self.assertEqual(await within(rpc.call("spoof")), "genuine")
        self.assertEqual(rpc.pending, 0)

    async def test_unknown_correlation_ids_dropped_from_queue(self) -> None:
        """
        When replies with unknown correlation ids reach an exclusive reply
        queue, then they are dropped and the call fires with its own reply.
        """
        broker, name = await self.spoofing_service()
        rpc = broker.rpc(name, direct_reply_to=False)
        self.assertEqual(await within(rpc.call("spoof")), "genuine")

    async def test_invalid_reply(self) -> None:
        """
        When the reply to a call is not a reply envelope, then the call
        fails with InvalidReply, and the real reply that follows is dropped.
        """
        broker, name = await self.spoofing_service()
        rpc = broker.rpc(name)
        error = await self.failure_of(rpc.call("garble"))
        self.assertIsInstance(error, txass.InvalidReply)
        self.assertEqual(await within(rpc.call("spoof")), "genuine")


class CancelTests(RPCTestCase):
    async def test_cancel(self) -> None:
        """
        When a call is cancelled, then it fails with CancelledError, nothing
        is pending, and its reply arriving later is dropped.
        """
        broker, name = await self.serve()
        rpc = broker.rpc(name)
        Calculator.held.clear()
        call = rpc.call("hold")
        while not Calculator.held:
            await task.deferLater(reactor, 0.01, lambda: None)
        call.cancel()
        error = await self.failure_of(call)
        self.assertIsInstance(error, defer.CancelledError)
        self.assertEqual(rpc.pending, 0)
        Calculator.held.pop().callback("late")
        self.assertEqual(await within(rpc.call("echo", "next")), "next")

    async def test_cancel_before_sent(self) -> None:
        """
        When a call is cancelled before its request was published, then it
        fails with CancelledError and the request is never served.
        """
        broker, name = await self.serve()
        rpc = broker.rpc(name)
        call = rpc.call("hold")
        call.cancel()
        error = await self.failure_of(call)
        self.assertIsInstance(error, defer.CancelledError)
        Calculator.held.clear()
        self.assertEqual(await within(rpc.call("echo", "after")), "after")
        self.assertEqual(Calculator.held, [])


class MissingServiceTests(RPCTestCase):
    async def test_no_such_service(self) -> None:
        """
        When the service has no queue on the broker, then the call fails at
        once with ServiceNotFound, long before its timeout, and declares
        nothing.
        """
        name = unique_name("missing")
        remove_after(self, name)
        broker = await connect(self)
        started = time.monotonic()
        error = await self.failure_of(broker.rpc(name).call("echo", 1, timeout=60))
        self.assertLess(time.monotonic() - started, 10)
        self.assertIsInstance(error, txass.ServiceNotFound)
        assert isinstance(error, txass.ServiceNotFound)
        self.assertEqual(error.service, name)
        self.assertIn("no such service", str(error))
        channel = await raw_channel(self)
        with self.assertRaises(txass.ChannelClosed):
            await channel.declare_queue(name, passive=True)

    async def test_queue_without_server(self) -> None:
        """
        When the service queue exists but no server runs, then the request
        waits and a server started later serves it.
        """
        name = unique_name("later")
        remove_after(self, name)
        broker = await connect(self)
        await (await broker.service(name).react(Calculator, grace=0)).stop()
        call = broker.rpc(name).call("add", [2, 2])
        await broker.service(name).react(Calculator, grace=0)
        self.assertEqual(await within(call), 4)


class ConnectionLossTests(RPCTestCase):
    async def test_connection_lost(self) -> None:
        """
        When the connection is lost with calls in flight, then every one of
        them fails promptly with ConnectionLost saying the reply is lost,
        and a call made right after waits for the new connection.
        """
        name = unique_name("rpc")
        remove_after(self, name)
        server_broker = await connect(self)
        await server_broker.service(name).react(Calculator, grace=0, prefetch=30)
        proxy = TCPProxy(self)
        broker = await connect(self, proxy.url)
        rpc = broker.rpc(name)
        self.assertEqual(await within(rpc.call("echo", 0)), 0)
        calls = [rpc.call("hold", n, timeout=60) for n in range(20)]
        while len(Calculator.held) < 20:
            await task.deferLater(reactor, 0.01, lambda: None)
        started = time.monotonic()
        proxy.cut()
        outcomes = await within(defer.DeferredList(calls, consumeErrors=True))
        self.assertLess(time.monotonic() - started, 10)
        for ok, failure in outcomes:
            self.assertFalse(ok)
            self.assertIsInstance(failure.value, txass.ConnectionLost)
            self.assertIn("reply is lost", str(failure.value))
        self.assertEqual(rpc.pending, 0)
        Calculator.held.clear()
        # The broker reconnects, and a call made meanwhile waits for it.
        self.assertEqual(await within(rpc.call("echo", 1, timeout=10)), 1)
        self.flushLoggedErrors()

    async def test_close_fails_pending(self) -> None:
        """
        When the broker is closed with calls in flight, then they fail with
        ConnectionLost, and calls made afterwards fail the same way.
        """
        broker, name = await self.serve()
        rpc = broker.rpc(name)
        await within(rpc.call("echo", 1))
        calls = [rpc.call("hold", n) for n in range(10)]
        await broker.close()
        outcomes = await within(defer.DeferredList(calls, consumeErrors=True))
        self.assertTrue(all(not ok and f.check(txass.ConnectionLost) for ok, f in outcomes))
        error = await self.failure_of(rpc.call("echo", 2))
        self.assertIsInstance(error, txass.ConnectionLost)

    async def test_reply_channel_reopened(self) -> None:
        """
        When the channel of an RPC client closes, then the calls on it fail
        and the next call opens a new one.
        """
        broker, name = await self.serve()
        rpc = broker.rpc(name)
        self.assertEqual(await within(rpc.call("echo", 1)), 1)
        current = rpc._caller._channel.current()
        assert current is not None
        held = rpc.call("hold")
        await current[0].close()
        error = await self.failure_of(held)
        self.assertIsInstance(error, txass.ConnectionLost)
        self.assertEqual(await within(rpc.call("echo", 2)), 2)


class _Collect(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.started: defer.Deferred[None] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if b"calling" in self.output and not self.started.called:
            self.started.callback(None)

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)


CALLER_SCRIPT = """
import sys
from twisted.internet import task, defer
import txass

async def main(reactor):
    broker = await txass.connect()
    rpc = broker.rpc(sys.argv[1])
    calls = [rpc.call("hold", n, timeout=120) for n in range(5)]
    await rpc.call("echo", 1)
    print("calling", flush=True)
    await defer.DeferredList(calls)

task.react(main)
"""


class LeftoverQueueTests(RPCTestCase):
    def reply_queues(self, name: str) -> list[str]:
        own = {f"{name}.unfinished"}
        return [queue for queue in rabbitmqctl("list_queues", "name").split() if queue.startswith(name + ".") and queue not in own]

    async def test_sequential_calls_leave_no_queue(self) -> None:
        """
        When 500 calls are made one after another, then no queue but the
        service's exists afterwards.
        """
        broker, name = await self.serve()
        rpc = broker.rpc(name)
        for number in range(500):
            self.assertEqual(await rpc.call("echo", number), number)
        await broker.close()
        self.assertEqual(self.reply_queues(name), [])

    async def test_killed_caller_leaves_no_queue(self) -> None:
        """
        When a caller process is killed with SIGKILL while its calls wait,
        then no queue of it is left on the broker.
        """
        broker, name = await self.serve()
        collect = _Collect()
        process = reactor.spawnProcess(  # type: ignore[attr-defined]
            collect,
            sys.executable,
            [sys.executable, "-c", CALLER_SCRIPT, name],
            env=python_environment(),
        )
        self.addCleanup(lambda: collect.ended if collect.ended.called else _kill(process, collect))
        await within(collect.started)
        process.signalProcess("KILL")
        await within(collect.ended)
        self.assertEqual(self.reply_queues(name), [])
        Calculator.held.clear()


def _kill(process: Any, collect: _Collect) -> defer.Deferred[None]:
    process.signalProcess("KILL")
    return collect.ended
