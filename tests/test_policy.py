"""
Tests of what a server does with a failed request: error replies, retries
through the broker's retry queues, the dead-letter queue, the attempt
limit for requests that never finish, and the handler's C{on_error},
C{resend()} and C{discard()}.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

import txass
from tests.support import BROKER_URL, EVENT_TIMEOUT, Results, connect, message_count, raw_channel, remove_after, unique_name, within
from txass import _envelope
from txass._connection import Delivery, MessageProperties
from txass._policy import ATTEMPTS_HEADER, Retry, delay_milliseconds, previous_attempts
from txass._topology import Topology


class Flaky:
    """
    A handler that fails a number of times per request before it succeeds,
    and records the attempt number it saw each time.
    """

    def __init__(self, failures: int, error: type[Exception] = RuntimeError) -> None:
        self.failures = failures
        self.error = error
        self.attempts: list[int] = []

    def work(self, value: Any) -> Any:
        attempt = txass.current_request().attempt
        self.attempts.append(attempt)
        if attempt <= self.failures:
            raise self.error(f"failure {attempt} of {value!r} \N{SNOWMAN}")
        return ["done", value, attempt]


async def queue_messages(testcase: unittest.TestCase, queue: str) -> list[Delivery]:
    """
    Take every ready message out of C{queue} and return them.
    """
    channel = await raw_channel(testcase)
    count, _ = await channel.declare_queue(queue, passive=True)
    deliveries: list[Delivery] = []
    done: defer.Deferred[None] = defer.Deferred()

    def arrived(delivery: Delivery) -> None:
        deliveries.append(delivery)
        channel.ack(delivery.delivery_tag)
        if len(deliveries) == count and not done.called:
            done.callback(None)

    if count:
        await channel.consume(queue, arrived)
        await within(done)
    return deliveries


def retry_queues(name: str, *milliseconds: int) -> list[str]:
    topology = Topology.for_service(name)
    return [topology.retry_queue(ms) for ms in milliseconds] + [topology.dead_letter_queue]


class PolicyUnitTests(unittest.SynchronousTestCase):
    def test_delay_rounding(self) -> None:
        """
        Delays are rounded to two significant digits of milliseconds, so a
        few retry queues serve many computed delays.
        """
        self.assertEqual(delay_milliseconds(0), 0)
        self.assertEqual(delay_milliseconds(0.0004), 0)
        self.assertEqual(delay_milliseconds(0.001), 1)
        self.assertEqual(delay_milliseconds(1.234), 1200)
        self.assertEqual(delay_milliseconds(0.25), 250)
        self.assertEqual(delay_milliseconds(61.0), 61000)
        self.assertEqual(delay_milliseconds(99.6), 100000)
        for bad in (-1, float("nan"), float("inf"), True, "1", 10**9):
            self.assertRaises(ValueError, delay_milliseconds, bad)

    def test_retry_delays(self) -> None:
        """
        The delay before each attempt grows by the backoff factor and stops
        at the maximum, even after very many attempts.
        """
        policy = Retry(delay=1.0, backoff=3.0, max_delay=20.0)
        self.assertEqual([policy.delay_before(n) for n in range(2, 7)], [1.0, 3.0, 9.0, 20.0, 20.0])
        self.assertEqual(policy.delay_before(10**6), 20.0)

    def test_retry_validation(self) -> None:
        """
        Unusable retry settings raise at once.
        """
        self.assertRaises(ValueError, Retry, delay=-1)
        self.assertRaises(ValueError, Retry, backoff=0.5)
        self.assertRaises(ValueError, Retry, max_delay=float("inf"))
        self.assertRaises(TypeError, Retry, errors=ValueError)  # type: ignore[arg-type]
        self.assertRaises(TypeError, Retry, errors=(1,))  # type: ignore[arg-type]

    def test_retries_not_method_not_found(self) -> None:
        """
        A missing method is never retried, whatever errors the policy names.
        """
        policy = Retry(errors=(Exception,))
        self.assertTrue(policy.retries(RuntimeError()))
        self.assertFalse(policy.retries(txass.MethodNotFound("no")))
        self.assertFalse(Retry(errors=(KeyError,)).retries(ValueError()))

    def test_previous_attempts_header(self) -> None:
        """
        The attempts header counts; a missing, negative or non-integer one
        counts as none.
        """
        self.assertEqual(previous_attempts(None), 0)
        self.assertEqual(previous_attempts({ATTEMPTS_HEADER: 3}), 3)
        for bad in (-1, "3", 2.5, True, None):
            self.assertEqual(previous_attempts({ATTEMPTS_HEADER: bad}), 0)

    def test_reserved_service_names(self) -> None:
        """
        A service cannot take the name of another service's retry or
        dead-letter queue.
        """
        topology = Topology.for_service("orders")
        self.assertEqual(topology.retry_queue(1500), "orders.retry.1500")
        self.assertEqual(topology.dead_letter_queue, "orders.dead-letter")
        for name in ("orders.retry.1500", "orders.dead-letter", "a.retry.b"):
            self.assertRaises(txass.InvalidName, Topology.for_service, name)
        Topology.for_service("orders.retry")
        Topology.for_service("dead-letter.orders")

    def test_react_checks_arguments(self) -> None:
        """
        react() refuses a retry that is not a Retry and an attempt limit out
        of range, before touching the broker.
        """
        service = txass.Service(None, Topology.for_service("unused"))  # type: ignore[arg-type]
        self.assertRaises(TypeError, service.react, Flaky(0), retry=1.0)
        for bad in (0, -1, 1001, 2.0, True):
            self.assertRaises(ValueError, service.react, Flaky(0), max_attempts=bad)

    def test_resend_outside_server(self) -> None:
        """
        resend() and discard() on the context of a result, which no server
        serves, raise a clear error.
        """
        context = txass.RequestContext("svc", "m", None, None, None)
        self.assertRaises(txass.TxassError, context.resend)
        self.assertRaises(txass.TxassError, context.discard)


class RetryTests(unittest.TestCase):
    async def test_default_replies_error_once(self) -> None:
        """
        Without a retry policy, a failing handler runs once and the caller
        gets its error.
        """
        name = unique_name("policy")
        remove_after(self, name)
        broker = await connect(self)
        handler = Flaky(1)
        await broker.service(name).react(handler)
        error = await self.assertFailure(broker.rpc(name).call("work", 1), txass.RemoteError)
        self.assertEqual(error.type, "RuntimeError")
        self.assertEqual(handler.attempts, [1])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    async def test_retry_until_success(self) -> None:
        """
        With a retry policy, a failing request is served again after the
        delay, through the broker's retry queue, until it succeeds.  The
        caller gets only the result.
        """
        name = unique_name("policy")
        remove_after(self, name, queues=retry_queues(name, 50, 100))
        broker = await connect(self)
        handler = Flaky(2)
        await broker.service(name).react(handler, retry=Retry(delay=0.05, backoff=2.0), max_attempts=5)
        result = await broker.rpc(name).call("work", "x")
        self.assertEqual(result, ["done", "x", 3])
        self.assertEqual(handler.attempts, [1, 2, 3])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        channel = await raw_channel(self)
        count, _ = await channel.declare_queue(f"{name}.retry.50", passive=True)
        self.assertEqual(count, 0)
        await channel.declare_queue(f"{name}.retry.100", passive=True)
        self.assertEqual(await message_count(self, name), 0)

    async def test_retry_exhausted_dead_letters(self) -> None:
        """
        A request that fails on every attempt goes to the dead-letter queue
        after the last one, with its error and attempts in headers, and
        the caller gets the handler's error.
        """
        name = unique_name("policy")
        remove_after(self, name, client_keys=["k"], queues=retry_queues(name, 20))
        broker = await connect(self)
        handler = Flaky(100)
        await broker.service(name).react(handler, retry=Retry(delay=0.02, backoff=1.0), max_attempts=3)
        results = Results()
        client = broker.service(name).client(key="k")
        await client.react(results)
        correlation_id = await client.call("work", {"n": 1}, meta={"trace": "t1"})
        await results.wait_for(1)
        _method, value, context = results.received[0]
        self.assertEqual(context.correlation_id, correlation_id)
        self.assertIsInstance(value, txass.RemoteError)
        self.assertEqual(value.type, "RuntimeError")
        self.assertEqual(value.message, "failure 3 of {'n': 1} \N{SNOWMAN}")
        self.assertEqual(handler.attempts, [1, 2, 3])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 3)

        dead = await queue_messages(self, f"{name}.dead-letter")
        self.assertEqual(len(dead), 1)
        properties = dead[0].properties
        headers = properties.headers or {}
        self.assertEqual(headers[ATTEMPTS_HEADER], 3)
        self.assertEqual(headers["x-txass-reason"], "failed")
        self.assertEqual(headers["x-txass-error-type"], "RuntimeError")
        self.assertEqual(headers["x-txass-error-message"], "failure 3 of {'n': 1} \N{SNOWMAN}")
        self.assertIn("RuntimeError", headers["x-txass-error-traceback"])
        self.assertIsInstance(headers["x-txass-dead-lettered-at"], int)
        self.assertNotIn("x-death", headers)
        self.assertEqual(properties.correlation_id, correlation_id)
        self.assertEqual(properties.reply_to, f"{name}.client.k")
        self.assertEqual(properties.delivery_mode, 2)
        self.assertEqual(properties.expiration, None)
        self.assertEqual(await message_count(self, name), 0)

    async def test_errors_not_named_not_retried(self) -> None:
        """
        An error the policy does not name is replied to at once.
        """
        name = unique_name("policy")
        remove_after(self, name)
        broker = await connect(self)
        handler = Flaky(1, error=ValueError)
        await broker.service(name).react(handler, retry=Retry(delay=0.02, errors=(KeyError,)))
        error = await self.assertFailure(broker.rpc(name).call("work", 1), txass.RemoteError)
        self.assertEqual(error.type, "ValueError")
        self.assertEqual(handler.attempts, [1])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    async def test_missing_method_not_retried(self) -> None:
        """
        A request for a missing method is replied to at once, never retried.
        """
        name = unique_name("policy")
        remove_after(self, name)
        broker = await connect(self)
        await broker.service(name).react(Flaky(0), retry=Retry(delay=0.02))
        error = await self.assertFailure(broker.rpc(name).call("missing", 1), txass.RemoteError)
        self.assertEqual(error.type, "MethodNotFound")
        self.assertEqual(await message_count(self, name), 0)


class Hooks:
    """
    A class handler with an on_error hook that acts as the request's data
    directs.
    """

    seen: list[tuple[str, str, int]] = []

    def work(self, value: Any) -> Any:
        request = txass.current_request()
        if value == "resend-once" and request.attempt == 1:
            request.resend(0.02)
            return "ignored"
        if value == "resend-always":
            request.resend(0.01)
            return "ignored"
        if value == "discard":
            request.discard()
            return "ignored"
        if value in ("replace", "hook-resend", "hook-discard") and request.attempt == 1:
            raise KeyError(value)
        return ["ok", value, request.attempt]

    def on_error(self, error: BaseException, request: txass.RequestContext) -> None:
        Hooks.seen.append((type(error).__name__, request.method, request.attempt))
        assert txass.current_request() is request
        if isinstance(error, KeyError) and error.args == ("replace",):
            raise LookupError("replaced by the hook")
        if isinstance(error, KeyError) and error.args == ("hook-resend",):
            request.resend(0.01)
        if isinstance(error, KeyError) and error.args == ("hook-discard",):
            request.discard()


class HookTests(unittest.TestCase):
    def setUp(self) -> None:
        Hooks.seen = []

    async def serve(self, **options: Any) -> tuple[str, txass.Broker]:
        name = unique_name("hooks")
        remove_after(self, name, client_keys=["k"], queues=retry_queues(name, 10, 20, 1000))
        broker = await connect(self)
        await broker.service(name).react(Hooks, **options)
        return name, broker

    async def test_resend_serves_again(self) -> None:
        """
        A request the handler resends is served again after the delay,
        without a reply to the first attempt.
        """
        name, broker = await self.serve()
        result = await broker.rpc(name).call("work", "resend-once")
        self.assertEqual(result, ["ok", "resend-once", 2])

    async def test_resend_limit(self) -> None:
        """
        A request resent on its last attempt goes to the dead-letter queue,
        and the caller gets RequestDeadLettered.
        """
        name, broker = await self.serve(max_attempts=2)
        error = await self.assertFailure(broker.rpc(name).call("work", "resend-always"), txass.RemoteError)
        self.assertEqual(error.type, "RequestDeadLettered")
        dead = await queue_messages(self, f"{name}.dead-letter")
        self.assertEqual([d.properties.headers["x-txass-reason"] for d in dead], ["resent"])  # type: ignore[index]

    async def test_discard_no_reply(self) -> None:
        """
        A discarded request is acknowledged with no reply: the result of a
        later request arrives, and the discarded one's never does.
        """
        name, broker = await self.serve(prefetch=1)
        results = Results()
        client = broker.service(name).client(key="k")
        await client.react(results)
        await client.call("work", "discard")
        later = await client.call("work", "after")
        await results.wait_for(1)
        self.assertEqual([context.correlation_id for _, _, context in results.received], [later])
        self.assertEqual(await message_count(self, name), 0)

    async def test_hook_replaces_error(self) -> None:
        """
        The on_error hook runs in the request's context with the error, and
        an exception it raises is the one the caller gets.
        """
        name, broker = await self.serve()
        error = await self.assertFailure(broker.rpc(name).call("work", "replace"), txass.RemoteError)
        self.assertEqual((error.type, error.message), ("LookupError", "replaced by the hook"))
        self.assertEqual(Hooks.seen, [("KeyError", "work", 1)])
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    async def test_hook_resends(self) -> None:
        """
        The on_error hook can resend the request, which then succeeds.
        """
        name, broker = await self.serve()
        result = await broker.rpc(name).call("work", "hook-resend")
        self.assertEqual(result, ["ok", "hook-resend", 2])

    async def test_hook_discards(self) -> None:
        """
        The on_error hook can discard the request: no reply, acknowledged.
        """
        name, broker = await self.serve()
        error = await self.assertFailure(broker.rpc(name).call("work", "hook-discard", timeout=1.0), txass.CallTimeout)
        self.assertIn("1", str(error))
        self.assertEqual(await message_count(self, name), 0)

    async def test_hook_not_for_missing_method(self) -> None:
        """
        A request for a missing method runs no handler code, the hook
        included, and the hook itself cannot be called as a method.
        """
        name, broker = await self.serve()
        for method in ("missing", "on_error"):
            error = await self.assertFailure(broker.rpc(name).call(method, 1), txass.RemoteError)
            self.assertEqual(error.type, "MethodNotFound")
        self.assertEqual(Hooks.seen, [])


class UnfinishedTests(unittest.TestCase):
    async def leave_unfinished(self, name: str, previous: int | None) -> None:
        """
        Publish a request to C{name} and make the broker deliver it once
        without it being acknowledged, so its next delivery is a
        redelivery.
        """
        channel = await raw_channel(self)
        await channel.declare_exchange(name, "direct", durable=True)
        await channel.declare_queue(name, durable=True)
        await channel.bind_queue(name, name, name)
        headers = {} if previous is None else {ATTEMPTS_HEADER: previous}
        await channel.enable_confirms()
        await channel.publish(
            name,
            name,
            _envelope.encode_request("work", "w"),
            MessageProperties(
                content_type="application/json",
                message_id="m-unfinished",
                correlation_id="m-unfinished",
                reply_to=f"{name}.client.k",
                delivery_mode=2,
                headers=headers,
            ),
        )
        arrived: defer.Deferred[Delivery] = defer.Deferred()
        await channel.consume(name, lambda delivery: arrived.called or arrived.callback(delivery))
        await within(arrived)
        await channel.close()

    async def test_redelivery_counts_attempt(self) -> None:
        """
        A request delivered again after a delivery that did not finish is
        served as its second attempt.
        """
        name = unique_name("unfinished")
        remove_after(self, name, client_keys=["k"], queues=retry_queues(name))
        await self.leave_unfinished(name, None)
        broker = await connect(self)
        results = Results()
        await broker.service(name).client(key="k").react(results)
        handler = Flaky(0)
        await broker.service(name).react(handler, max_attempts=3)
        await results.wait_for(1)
        self.assertEqual(results.received[0][1], ["done", "w", 2])
        self.assertEqual(handler.attempts, [2])
        self.assertEqual(await message_count(self, name), 0)

    async def test_redelivery_limit(self) -> None:
        """
        A request whose last allowed attempt did not finish goes to the
        dead-letter queue without running the handler, and the caller gets
        RequestDeadLettered.
        """
        name = unique_name("unfinished")
        remove_after(self, name, client_keys=["k"], queues=retry_queues(name))
        await self.leave_unfinished(name, 2)
        broker = await connect(self)
        results = Results()
        await broker.service(name).client(key="k").react(results)
        handler = Flaky(0)
        await broker.service(name).react(handler, max_attempts=3)
        await results.wait_for(1)
        value = results.received[0][1]
        self.assertIsInstance(value, txass.RemoteError)
        self.assertEqual(value.type, "RequestDeadLettered")
        self.assertIn("did not finish in 3 of 3 attempts", value.message)
        self.assertEqual(handler.attempts, [])
        dead = await queue_messages(self, f"{name}.dead-letter")
        self.assertEqual(len(dead), 1)
        headers = dead[0].properties.headers or {}
        self.assertEqual((headers["x-txass-reason"], headers[ATTEMPTS_HEADER]), ("unfinished", 3))
        self.assertEqual(dead[0].properties.message_id, "m-unfinished")



class Blocking:
    """
    A handler whose method blocks its thread until the test releases it.
    """

    def __init__(self) -> None:
        self.release = threading.Event()
        self.threads: list[int] = []

    @txass.in_thread
    def wait(self, value: Any) -> Any:
        self.threads.append(threading.get_ident())
        request = txass.current_request()
        if not self.release.wait(EVENT_TIMEOUT):
            raise TimeoutError("the test did not release the handler")
        return [value, request.method, request.attempt]

    @txass.in_thread
    def resend_once(self, value: Any) -> Any:
        request = txass.current_request()
        if request.attempt == 1:
            request.resend(0.01)
        return request.attempt

    def quick(self, value: Any) -> Any:
        return value


class InThreadTests(unittest.TestCase):
    async def test_blocking_method_in_thread(self) -> None:
        """
        A method decorated with in_thread runs outside the reactor thread
        with its request's context, while the server goes on serving other
        requests.
        """
        name = unique_name("thread")
        remove_after(self, name)
        broker = await connect(self)
        handler = Blocking()
        self.addCleanup(handler.release.set)
        await broker.service(name).react(handler)
        rpc = broker.rpc(name)
        blocked = rpc.call("wait", "w")
        self.assertEqual(await rpc.call("quick", "q"), "q")
        self.assertFalse(blocked.called)
        handler.release.set()
        self.assertEqual(await blocked, ["w", "wait", 1])
        self.assertNotEqual(handler.threads, [threading.get_ident()])
        self.assertEqual(len(handler.threads), 1)

    async def test_resend_from_thread(self) -> None:
        """
        resend() called in the thread of an in_thread method takes effect.
        """
        name = unique_name("thread")
        remove_after(self, name, queues=retry_queues(name, 10))
        broker = await connect(self)
        await broker.service(name).react(Blocking())
        self.assertEqual(await broker.rpc(name).call("resend_once", None), 2)


class RetryLimitTests(unittest.TestCase):
    async def test_rpc_retries_within_timeout(self) -> None:
        """
        An RPC call's request is retried only while its caller waits.  Each
        retry waits its full delay, because the call's expiration does not
        cut it short.  When the next delay would outlast the call's timeout,
        the caller gets the error at once.
        """
        name = unique_name("policy")
        remove_after(self, name, queues=retry_queues(name, 300, 600, 1200))
        broker = await connect(self)
        handler = Flaky(100)
        started: list[float] = []
        original = handler.work

        def work(value: Any) -> Any:
            started.append(time.monotonic())
            return original(value)

        await broker.service(name).react({"work": work}, retry=Retry(delay=0.3, backoff=2.0), max_attempts=10)
        error = await self.assertFailure(broker.rpc(name).call("work", 1, timeout=1.5), txass.RemoteError)
        self.assertEqual(error.type, "RuntimeError")
        self.assertEqual(handler.attempts, [1, 2, 3])
        self.assertGreaterEqual(started[1] - started[0], 0.25)
        self.assertGreaterEqual(started[2] - started[1], 0.55)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 3)

    async def test_dead_letter_fits_small_frames(self) -> None:
        """
        On a connection with the smallest frame size AMQP allows, a request
        whose error text is long and not ASCII is still dead-lettered with
        its error type and a shortened message, and the caller gets the
        handler's error.
        """
        name = unique_name("policy")
        remove_after(self, name)
        broker = await connect(self, f"{BROKER_URL}?frame_max=4096")

        def fail(value: Any) -> None:
            raise ValueError("\N{SNOWMAN}" * 5000)

        await broker.service(name).react({"fail": fail}, retry=Retry(delay=0.01), max_attempts=1)
        error = await self.assertFailure(broker.rpc(name).call("fail", None), txass.RemoteError)
        self.assertEqual(error.type, "ValueError")
        dead = await queue_messages(self, f"{name}.dead-letter")
        headers = dead[0].properties.headers or {}
        self.assertEqual(headers["x-txass-error-type"], "ValueError")
        self.assertLess(len(headers["x-txass-error-message"].encode("utf-8")), 4096)
        self.assertTrue(headers["x-txass-error-message"].endswith("[...truncated]"))
        self.assertTrue(broker.is_open)
        self.flushLoggedErrors(ValueError)

    async def test_dead_letter_replaces_old_error(self) -> None:
        """
        A request dead-lettered again carries only the error of its last
        attempt: no traceback is left from an earlier one.
        """
        name = unique_name("policy")
        remove_after(self, name)
        channel = await raw_channel(self)
        await channel.declare_exchange(name, "direct", durable=True)
        await channel.declare_queue(name, durable=True)
        await channel.bind_queue(name, name, name)
        await channel.enable_confirms()
        stale = {"x-txass-error-traceback": "an old traceback", "x-txass-reason": "failed", "x-txass-attempts": 0}
        await channel.publish(
            name,
            name,
            _envelope.encode_request("work", "resend-always"),
            MessageProperties(content_type="application/json", message_id="m-again", headers=stale),
        )
        broker = await connect(self)
        await broker.service(name).react(Hooks, max_attempts=1)
        dead = await queue_messages_when(self, f"{name}.dead-letter", 1)
        headers = dead[0].properties.headers or {}
        self.assertEqual(headers["x-txass-reason"], "resent")
        self.assertNotIn("x-txass-error-traceback", headers)


async def queue_messages_when(testcase: unittest.TestCase, queue: str, count: int) -> list[Delivery]:
    """
    Wait until C{queue} exists and contains C{count} ready messages, then
    take them out.
    """
    channel = await raw_channel(testcase)

    async def ready() -> int:
        try:
            number, _ = await channel.declare_queue(queue, passive=True)
        except txass.ChannelClosed:
            return -1
        return number

    deadline = time.monotonic() + EVENT_TIMEOUT
    while await ready() < count:
        if channel is not None and not channel.is_open:
            channel = await raw_channel(testcase)
        if time.monotonic() > deadline:
            raise AssertionError(f"{queue} did not get {count} messages within {EVENT_TIMEOUT} s")
        await task.deferLater(reactor, 0.05, lambda: None)
    return await queue_messages(testcase, queue)


class MisuseTests(unittest.SynchronousTestCase):
    def test_in_thread_misuse(self) -> None:
        """
        in_thread raises TypeError when it decorates a staticmethod or
        classmethod object, or a coroutine function, rather than failing
        when a request arrives.
        """
        for wrapped in (staticmethod(len), classmethod(len)):
            with self.assertRaises(TypeError) as caught:
                txass.in_thread(wrapped)  # type: ignore[arg-type]
            self.assertIn("below @", str(caught.exception))

        async def coroutine(value: Any) -> Any:
            return value

        self.assertRaises(TypeError, txass.in_thread, coroutine)

    def test_in_thread_generators(self) -> None:
        """
        in_thread refuses generator functions and objects that are not
        callable, saying which.
        """

        def generator(value: Any) -> Any:
            yield value

        with self.assertRaises(TypeError) as caught:
            txass.in_thread(generator)
        self.assertIn("generator function", str(caught.exception))
        with self.assertRaises(TypeError) as caught:
            txass.in_thread(42)  # type: ignore[arg-type]
        self.assertIn("not callable", str(caught.exception))

    def test_retry_delay_above_maximum(self) -> None:
        """
        A first delay longer than the longest delay raises ValueError.
        """
        self.assertRaises(ValueError, Retry, delay=10.0, max_delay=1.0)
        self.assertEqual(Retry(delay=1.0, max_delay=1.0).delay_before(5), 1.0)

    def test_largest_delay_within_limit(self) -> None:
        """
        The largest delay rounds to no more than the documented maximum.
        """
        self.assertLessEqual(delay_milliseconds(30 * 24 * 3600.0), 30 * 24 * 3600 * 1000)


class RemainingTimeTests(unittest.TestCase):
    async def test_zero_delay_resends_use_up_time(self) -> None:
        """
        Resends without delay of an RPC request count the time the handler
        took, so they stop once the caller's timeout would pass, and the
        caller gets a TimeoutError reply rather than no reply.
        """
        name = unique_name("policy")
        remove_after(self, name)
        broker = await connect(self)
        runs: list[int] = []

        async def busy(value: Any) -> None:
            runs.append(txass.current_request().attempt)
            await task.deferLater(reactor, 0.2, lambda: None)
            txass.current_request().resend(0)

        await broker.service(name).react({"busy": busy}, max_attempts=100)
        error = await self.assertFailure(broker.rpc(name).call("busy", None, timeout=1.0), txass.RemoteError)
        self.assertEqual(error.type, "TimeoutError")
        self.assertLessEqual(len(runs), 5)


class RetryQueueExpiryTests(unittest.TestCase):
    async def test_retry_queue_expires(self) -> None:
        """
        A retry queue is declared to expire after its delay plus an hour
        unused, and again before each copy, so the queues of delays no
        longer used go away and a queue in use never does.
        """
        from tests.support import rabbitmqctl

        name = unique_name("policy")
        remove_after(self, name, queues=retry_queues(name, 50))
        broker = await connect(self)
        handler = Flaky(2)
        await broker.service(name).react(handler, retry=Retry(delay=0.05, backoff=1.0))
        self.assertEqual(await broker.rpc(name).call("work", 1), ["done", 1, 3])
        listing = rabbitmqctl("list_queues", "name", "arguments")
        [line] = [line for line in listing.splitlines() if line.startswith(f"{name}.retry.50\t")]
        self.assertIn('"x-expires",3600050', line.replace(" ", "").replace("{", "").replace("}", ""))
        self.flushLoggedErrors(RuntimeError)
