"""
A fault test of txass's delivery promise: a request that the broker
confirmed gets a result at least once, across a killed server, cut
connections and a broker restart.

A private RabbitMQ node serves one service.  Two C{twistd ass} stage
processes serve it, and a keyed result client in the test process calls
it a few thousand times.  While requests and results are in flight, the
test kills a stage with SIGKILL and starts a replacement, cuts every
connection through the TCP proxies, and restarts the node.  At the end
every number sent has a successful result, every confirmed request has
its result, duplicates are dropped by correlation id, and every queue is
empty.

The client and the stages each connect through a TCP proxy of the test's
own, so that a cut drops the stages' connections too: their replies and
acknowledgements in flight are lost, as well as the client's confirms and
results.  The output of each stage goes to a file in the test's temporary
directory, whose path a failure message names.
"""

# Trial's assertion methods have no annotations.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import collections
import os
import shutil
import signal
import time
from collections.abc import Callable
from typing import Any, cast

from twisted.internet import defer, error, protocol, task
from twisted.internet import reactor as global_reactor
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial import unittest

import txass
from tests import support
from tests.broker_node import BrokerNode, start_node

# The reactor's interfaces have no type information mypy can use.
reactor: Any = global_reactor

log = Logger()

HANDLER = "tests.chaos_handler.Handler"
NODE_LOG = "node.log"
CLIENT_KEY = "chaos"

# The client sends the numbers 0, 1, 2 ... in batches of BATCH_SIZE calls
# made side by side.  A batch starts only while at most MAX_PENDING
# numbers sent before it have no result.  Sending goes on until every
# fault has been made and TAIL_CALLS numbers more have been sent, so
# requests are in flight when each fault takes effect, and the stages must
# serve again after the last one.  MAX_CALLS bounds the run.
BATCH_SIZE = 100
MAX_PENDING = 1000
TAIL_CALLS = 500
MAX_CALLS = 20000

# How many times one number is sent at most: the first call and the calls
# made again after a call failed with ConnectionLost.
MAX_ATTEMPTS = 5

# How many more numbers get a result before each fault is made.
RESULTS_BETWEEN_FAULTS = 500

# The stages that serve at once, before the kill and after the replacement.
STAGE_COUNT = 2

# Timeouts, in seconds.  A reconnection after the restart waits for the
# node, plus txass's backoff delays of 0.5, 1, 2, 4 and 8 s with up to 1 s
# of jitter each.  The restart took 5.4 to 8.1 s in 18 runs of this test
# on a 2-core machine with RabbitMQ 3.10.8, and a whole run 17 to 21 s.
STAGE_START_TIMEOUT = 30.0
STAGE_STOP_TIMEOUT = 15.0
RECONNECT_TIMEOUT = 45.0
CALL_TIMEOUT = 45.0
PROGRESS_TIMEOUT = 60.0
RESTART_TIMEOUT = 60.0
DRAIN_TIMEOUT = 30.0

# The seconds a stage may take to finish its requests after SIGTERM.
STAGE_GRACE = "5"

# Text in a stage's log that shows an error nothing handled.
UNHANDLED_ERROR_SIGNS = ("Unhandled error in Deferred", "Traceback (most recent call last)")

# Seconds between two listings of the node's queues.
QUEUE_POLL_INTERVAL = 0.2


class StageProcess(protocol.ProcessProtocol):
    """
    A C{twistd -n ass} stage run as a child process, its output written to
    a log file.

    @ivar status: L{None} while it runs, then the L{error.ProcessDone} or
        L{error.ProcessTerminated} it ended with.
    """

    def __init__(self, label: str, log_path: str) -> None:
        self.label = label
        self.log_path = log_path
        self.pid: int | None = None
        self.status: error.ProcessDone | error.ProcessTerminated | None = None
        self._end_waiters: list[defer.Deferred[None]] = []

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.pid = self.transport.pid

    def processEnded(self, reason: Failure) -> None:
        self.status = cast("error.ProcessDone | error.ProcessTerminated", reason.value)
        waiters, self._end_waiters = self._end_waiters, []
        for d in waiters:
            d.callback(None)

    @property
    def exit_code(self) -> int | None:
        assert self.status is not None
        return self.status.exitCode

    @property
    def exit_signal(self) -> int | None:
        assert self.status is not None
        return getattr(self.status, "signal", None)

    def output(self) -> str:
        with open(self.log_path, errors="replace") as text:
            return text.read()

    def describe(self) -> str:
        return f"stage {self.label} (pid {self.pid}, log {self.log_path})"

    def send_signal(self, number: signal.Signals) -> None:
        """
        Send signal C{number} to the process if it runs.  Until the reactor
        has reaped the process, its pid cannot belong to another process.
        """
        if self.status is None and self.pid is not None:
            os.kill(self.pid, number)

    def wait_for_end(self, seconds: float) -> defer.Deferred[None]:
        if self.status is not None:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._end_waiters.append(d)
        return support.within(d, seconds)

    async def stop(self) -> None:
        """
        End the process if it still runs: SIGTERM, then SIGKILL if it has
        not ended within L{STAGE_STOP_TIMEOUT}.
        """
        if self.status is not None:
            return
        try:
            self.send_signal(signal.SIGTERM)
            await self.wait_for_end(STAGE_STOP_TIMEOUT)
        except defer.TimeoutError:
            log.error("{stage} did not exit after SIGTERM; killing it", stage=self.describe())
            self.send_signal(signal.SIGKILL)
            await self.wait_for_end(STAGE_STOP_TIMEOUT)


class Tally:
    """
    What the client sent and received, by number and by correlation id.

    @ivar started: How many numbers the client started to send: the
        numbers 0 to C{started - 1}.
    @ivar calls_waiting: How many calls wait for the broker's confirm.
    @ivar sent: The number of each request the broker confirmed, by
        correlation id.
    @ivar failed_calls: How many calls failed with ConnectionLost, by
        number.  Such a request may still have reached the broker.
    @ivar accepted: The first result received for each correlation id.
    @ivar replied: The numbers with a successful result.
    @ivar duplicates: How many results were dropped because their
        correlation id had been accepted before.
    @ivar redelivered_results: How many results, duplicates included, the
        broker marked as redelivered.
    @ivar duplicate_mismatches: Dropped results whose number differs from
        that of the accepted one, with their correlation id.
    @ivar invalid: Results that are not a successful reply to an echo
        request, with their correlation id.
    @ivar served_by: How many accepted results each stage process served,
        by process id.
    @ivar last_number: The number before which sending stops, set once
        every fault has been made; L{None} until then.
    @ivar sending_done: Whether every number up to C{last_number} has been
        sent and confirmed.
    """

    def __init__(self) -> None:
        self.started = 0
        self.calls_waiting = 0
        self.sent: dict[str, int] = {}
        self.failed_calls: collections.Counter[int] = collections.Counter()
        self.accepted: dict[str, Any] = {}
        self.replied: set[int] = set()
        self.duplicates = 0
        self.redelivered_results = 0
        self.duplicate_mismatches: list[tuple[str, Any, Any]] = []
        self.invalid: list[tuple[str | None, Any]] = []
        self.served_by: collections.Counter[int] = collections.Counter()
        self.last_number: int | None = None
        self.sending_done = False
        self._waiters: list[tuple[Callable[[], bool], defer.Deferred[None]]] = []

    def confirmed(self, correlation_id: str, number: int) -> None:
        self.sent[correlation_id] = number
        self._wake()

    def call_failed(self, number: int) -> None:
        self.failed_calls[number] += 1

    def receive(self, correlation_id: str | None, redelivered: bool, result: Any) -> None:
        if redelivered:
            self.redelivered_results += 1
        if correlation_id is None:
            self.invalid.append((correlation_id, result))
            return
        if correlation_id in self.accepted:
            self.duplicates += 1
            if _number_of(result) != _number_of(self.accepted[correlation_id]):
                self.duplicate_mismatches.append((correlation_id, self.accepted[correlation_id], result))
            return
        self.accepted[correlation_id] = result
        number = _number_of(result)
        if number is None:
            self.invalid.append((correlation_id, result))
        else:
            self.replied.add(number)
            self.served_by[result["pid"]] += 1
        self._wake()

    def finish_sending(self) -> None:
        self.sending_done = True
        self._wake()

    def in_flight(self) -> int:
        """
        Return how many numbers the client started to send have no result.
        """
        return self.started - len(self.replied)

    def confirmed_without_result(self) -> list[str]:
        """
        Return the correlation ids of confirmed requests without a result.
        """
        return [correlation_id for correlation_id in self.sent if correlation_id not in self.accepted]

    def complete(self) -> bool:
        """
        Return whether sending has ended, every number sent has a result and
        every confirmed request has its result.
        """
        return self.sending_done and self.in_flight() == 0 and not self.confirmed_without_result()

    def summary(self) -> str:
        pending = sorted(set(range(self.started)) - self.replied)
        return (
            f"{len(self.replied)} of {self.started} numbers with a result, {len(self.sent)} requests confirmed, "
            f"{len(self.confirmed_without_result())} confirmed requests without a result, "
            f"{sum(self.failed_calls.values())} failed calls, {self.duplicates} duplicates dropped, "
            f"{len(self.invalid)} invalid results, first numbers without a result {pending[:10]}"
        )

    def wait_for(self, condition: Callable[[], bool], seconds: float, description: str) -> defer.Deferred[None]:
        """
        Return a Deferred firing once C{condition()} is true, checked after
        every confirmed call and every result.  It fails with an
        AssertionError naming C{description} after C{seconds}.
        """
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append((condition, d))
        self._wake()

        def timed_out(failure: Failure) -> None:
            failure.trap(defer.TimeoutError)
            raise AssertionError(f"timed out after {seconds:g} s waiting for {description}: {self.summary()}")

        return support.within(d, seconds).addErrback(timed_out)

    def _wake(self) -> None:
        waiting, self._waiters = self._waiters, []
        for condition, d in waiting:
            if d.called:
                continue
            if condition():
                d.callback(None)
            else:
                self._waiters.append((condition, d))


def _number_of(result: Any) -> int | None:
    """
    Return the number a successful echo result carries, or L{None} for an
    error or a value the handler does not return.
    """
    if not isinstance(result, dict) or set(result) != {"n", "pid"}:
        return None
    number = result["n"]
    if not isinstance(number, int) or isinstance(number, bool):
        return None
    return number


class ResultHandler:
    """
    The client's handler: passes each echo result to the tally.
    """

    def __init__(self, tally: Tally) -> None:
        self._tally = tally

    def echo(self, result: Any) -> None:
        context = txass.current_request()
        self._tally.receive(context.correlation_id, context.redelivered, result)


class ChaosTests(unittest.TestCase):
    # A backstop only: every wait in the test has a shorter timeout.
    timeout = 240

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.stages: list[StageProcess] = []
        self.service = support.unique_name("chaos")
        # How many numbers had no result when each fault took effect, by
        # fault.
        self.in_flight_at: dict[str, int] = {}

    def proxy_to(self, node: BrokerNode) -> support.TCPProxy:
        """
        Return a TCP proxy to C{node}, closed after the test.
        """
        # TCPProxy forwards to support.BROKER_URL as it is when the proxy
        # is created.
        patcher = self.patch(support, "BROKER_URL", node.url)
        try:
            return support.TCPProxy(self)
        finally:
            patcher.restore()

    def start_stage(self, label: str, url: str) -> StageProcess:
        """
        Run a stage serving the service through the broker at C{url}.  It
        is stopped after the test.
        """
        stage = StageProcess(label, os.path.join(self.directory, f"stage-{label}.log"))

        command = support.twistd_command(
            "-n",
            "--pidfile=",
            "ass",
            "--service",
            self.service,
            "--reactor",
            HANDLER,
            "--broker",
            url,
            "--grace",
            STAGE_GRACE,
        )
        environment = support.python_environment(TXASS_BROKER_URL=url)
        # The output goes to a file, which stays after the test as evidence.
        null = os.open(os.devnull, os.O_RDONLY)
        output = os.open(stage.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            reactor.spawnProcess(
                stage, command[0], command, env=environment, path=support.TOP, childFDs={0: null, 1: output, 2: output}
            )
        finally:
            os.close(null)
            os.close(output)

        self.addCleanup(lambda: defer.Deferred.fromCoroutine(stage.stop()))
        self.stages.append(stage)
        return stage

    async def wait_serving(self, stage: StageProcess) -> None:
        """
        Wait until C{stage} logs that it consumes the service's queue.
        """
        started = f"serving {self.service} with"
        try:
            await support.wait_until(lambda: stage.status is not None or started in stage.output(), STAGE_START_TIMEOUT)
        except AssertionError:
            raise AssertionError(f"{stage.describe()} did not start serving within {STAGE_START_TIMEOUT:g} s") from None
        self.assertIsNone(stage.status, f"{stage.describe()} exited while starting:\n{stage.output()}")

    def evidence(self) -> str:
        stages = ", ".join(stage.describe() for stage in self.stages)
        return f"{stages}; node log {os.path.join(self.directory, NODE_LOG)}"

    def keep_node_log(self, node: BrokerNode) -> None:
        """
        Copy the node's log into the test's directory, since closing the
        node removes its own.
        """
        if os.path.exists(node.log_file):
            shutil.copyfile(node.log_file, os.path.join(self.directory, NODE_LOG))

    async def list_queues(self, node: BrokerNode) -> dict[str, tuple[int, int]]:
        """
        Return the number of messages, ready or unacknowledged, and of
        consumers, of each queue of the node's default vhost.
        """
        listing = await node.ctl("list_queues", "--no-table-headers", "name", "messages", "consumers")
        queues = {}
        for line in listing.splitlines():
            if line.strip():
                name, messages, consumers = line.rsplit(None, 2)
                queues[name] = (int(messages), int(consumers))
        return queues

    async def wait_for_queues(
        self,
        node: BrokerNode,
        condition: Callable[[dict[str, tuple[int, int]]], bool],
        seconds: float,
        description: str,
    ) -> dict[str, tuple[int, int]]:
        """
        Wait until two listings of the node's queues in a row meet
        C{condition}, and return the last one.  It fails naming
        C{description} and the last listing after C{seconds}.
        """
        deadline = time.monotonic() + seconds
        met_in_a_row = 0
        while True:
            queues = await self.list_queues(node)
            met_in_a_row = met_in_a_row + 1 if condition(queues) else 0
            if met_in_a_row == 2:
                return queues
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {seconds:g} s waiting for {description}; queues (messages, consumers): "
                    f"{queues}; {self.evidence()}"
                )
            await task.deferLater(reactor, QUEUE_POLL_INTERVAL, lambda: None)

    async def send(self, client: txass.Client, broker: txass.Broker, tally: Tally, number: int) -> None:
        """
        Call C{echo} with C{number} until the broker confirms a request,
        sending it again after a call that failed with ConnectionLost.
        """
        for _ in range(MAX_ATTEMPTS):
            if not broker.is_open:
                try:
                    await support.wait_until(lambda: broker.is_open, RECONNECT_TIMEOUT)
                except AssertionError:
                    raise AssertionError(f"the client did not reconnect within {RECONNECT_TIMEOUT:g} s") from None
            tally.calls_waiting += 1
            try:
                correlation_id = await support.within(client.call("echo", {"n": number}), CALL_TIMEOUT)
            except txass.ConnectionLost:
                tally.call_failed(number)
                continue
            except defer.TimeoutError:
                raise AssertionError(
                    f"the call for number {number} was neither confirmed nor failed within {CALL_TIMEOUT:g} s"
                ) from None
            finally:
                tally.calls_waiting -= 1
            tally.confirmed(correlation_id, number)
            return
        raise AssertionError(f"the call for number {number} failed {MAX_ATTEMPTS} times with ConnectionLost")

    async def send_all(self, client: txass.Client, broker: txass.Broker, tally: Tally) -> None:
        """
        Send numbers in batches until the tail after the last fault has been
        sent.
        """
        while tally.last_number is None or tally.started < tally.last_number:
            self.assertLess(tally.started, MAX_CALLS, f"the faults were not all made within {MAX_CALLS} calls")
            start = tally.started
            await tally.wait_for(
                lambda: len(tally.replied) >= start - MAX_PENDING,
                PROGRESS_TIMEOUT,
                f"results before sending numbers from {start}",
            )
            numbers = range(start, start + BATCH_SIZE)
            tally.started = numbers.stop
            await defer.gatherResults(
                [defer.Deferred.fromCoroutine(self.send(client, broker, tally, number)) for number in numbers],
                consumeErrors=True,
            )
        tally.finish_sending()

    async def make_faults(
        self,
        tally: Tally,
        node: BrokerNode,
        broker: txass.Broker,
        client_proxy: support.TCPProxy,
        stage_proxy: support.TCPProxy,
    ) -> None:
        """
        Kill a stage and start a replacement, cut the proxies, and restart
        the node, each once more numbers have a result.
        """

        async def more_results(fault: str) -> None:
            # Calls still waiting for their confirm usually fail with
            # ConnectionLost at a fault and are sent again.  A confirm read
            # before the cut still counts, so some runs have no failed call.
            target = len(tally.replied) + RESULTS_BETWEEN_FAULTS
            await tally.wait_for(
                lambda: len(tally.replied) >= target and tally.calls_waiting > 0,
                PROGRESS_TIMEOUT,
                f"{target} numbers with a result and calls waiting for their confirm before {fault}",
            )
            log.info("{fault}: {summary}", fault=fault, summary=tally.summary())

        await more_results("killing a stage")
        victim = self.stages[0]
        self.in_flight_at["kill"] = tally.in_flight()
        victim.send_signal(signal.SIGKILL)
        await victim.wait_for_end(STAGE_STOP_TIMEOUT)
        replacement = self.start_stage("replacement", stage_proxy.url)
        await self.wait_serving(replacement)

        await more_results("cutting the proxies")
        self.in_flight_at["cut"] = tally.in_flight()
        client_proxy.cut()
        stage_proxy.cut()

        await more_results("restarting the node")
        restarted = support.within(node.restart(), RESTART_TIMEOUT)
        # The node closes the connections a moment after the restart began,
        # while the client goes on sending.
        await support.wait_until(lambda: not broker.is_open or restarted.called, RESTART_TIMEOUT)
        # Measured when the client lost its connection, or when the restart
        # ended if the client saw no loss.
        self.in_flight_at["restart"] = tally.in_flight()
        await restarted
        tally.last_number = tally.started + TAIL_CALLS
        log.info("node restarted; sending numbers up to {last}", last=tally.last_number)

    async def test_promise_under_faults(self) -> None:
        """
        When a stage is killed, the connections are cut and the node
        restarts while calls are served, then every number has a result,
        every confirmed request has exactly one accepted result, and every
        queue is empty.
        """
        started = time.monotonic()
        node = await start_node(self)
        self.addCleanup(self.keep_node_log, node)
        client_proxy = self.proxy_to(node)
        stage_proxy = self.proxy_to(node)
        for label in ("first", "second"):
            self.start_stage(label, stage_proxy.url)
        for stage in list(self.stages):
            await self.wait_serving(stage)

        broker = await txass.connect(client_proxy.url)
        self.addCleanup(broker.close)
        tally = Tally()
        client = broker.service(self.service).client(key=CLIENT_KEY)
        await client.react(ResultHandler(tally))

        sending = defer.Deferred.fromCoroutine(self.send_all(client, broker, tally))
        faults = defer.Deferred.fromCoroutine(self.make_faults(tally, node, broker, client_proxy, stage_proxy))
        # When one of them fails, the other is cancelled after the test.
        self.addCleanup(sending.cancel)
        self.addCleanup(faults.cancel)
        await defer.gatherResults([sending, faults], consumeErrors=True)
        # An invalid result ends the wait at once, so the checks below report it.
        await tally.wait_for(
            lambda: tally.complete() or bool(tally.invalid),
            PROGRESS_TIMEOUT,
            "a result for every number and every confirmed request",
        )
        result_queue = f"{self.service}.client.{CLIENT_KEY}"
        await self.wait_for_queues(
            node,
            lambda queues: queues.get(self.service, (0, 0))[1] == STAGE_COUNT and not any(m for m, _ in queues.values()),
            DRAIN_TIMEOUT,
            f"{STAGE_COUNT} consumers of {self.service} and empty queues",
        )

        for stage in self.stages:
            if stage.status is None:
                stage.send_signal(signal.SIGTERM)
        for stage in self.stages:
            try:
                await stage.wait_for_end(STAGE_STOP_TIMEOUT)
            except defer.TimeoutError:
                self.fail(f"{stage.describe()} did not exit within {STAGE_STOP_TIMEOUT:g} s after SIGTERM")
        queues = await self.list_queues(node)
        elapsed = time.monotonic() - started

        resent = sorted(number for number, failures in tally.failed_calls.items() if failures)
        # Results whose request the broker stored although its call failed.
        results_of_failed_calls = {
            correlation_id: result for correlation_id, result in tally.accepted.items() if correlation_id not in tally.sent
        }
        ids_by_number: dict[int, list[str]] = collections.defaultdict(list)
        for correlation_id, result in tally.accepted.items():
            number = _number_of(result)
            if number is not None:
                ids_by_number[number].append(correlation_id)
        replied_twice = sorted(number for number, ids in ids_by_number.items() if len(ids) > 1)
        log.info(
            "chaos test: {calls} numbers, {confirmed} confirmed requests, {failed} failed calls, "
            "{resent} numbers sent again, {unknown} results of failed calls, {twice} numbers with two results, "
            "{duplicates} duplicates dropped, {redelivered} results marked redelivered, "
            "numbers in flight at each fault {in_flight}, served by {served_by}, "
            "node restart {restart:.1f} s, elapsed {elapsed:.1f} s",
            calls=tally.started,
            confirmed=len(tally.sent),
            failed=sum(tally.failed_calls.values()),
            resent=len(resent),
            unknown=len(results_of_failed_calls),
            twice=len(replied_twice),
            duplicates=tally.duplicates,
            redelivered=tally.redelivered_results,
            in_flight=self.in_flight_at,
            served_by=dict(tally.served_by),
            restart=node.durations.get("restart", 0.0),
            elapsed=elapsed,
        )

        victim, *survivors = self.stages
        self.assertEqual(victim.exit_signal, signal.SIGKILL, victim.describe())
        for stage in survivors:
            self.assertEqual(stage.exit_code, 0, f"{stage.describe()} ended with {stage.status}")
        for stage in self.stages:
            for sign in UNHANDLED_ERROR_SIGNS:
                self.assertNotIn(sign, stage.output(), stage.describe())
        self.assertEqual(tally.invalid, [], self.evidence())
        self.assertEqual(tally.duplicate_mismatches, [], self.evidence())
        self.assertEqual(sorted(tally.replied), list(range(tally.started)), self.evidence())
        self.assertEqual(tally.confirmed_without_result(), [], self.evidence())
        for correlation_id, number in tally.sent.items():
            self.assertEqual(_number_of(tally.accepted[correlation_id]), number, correlation_id)
        for correlation_id, result in results_of_failed_calls.items():
            self.assertIn(_number_of(result), resent, f"result {correlation_id} of a request the client did not send")
        for number in replied_twice:
            self.assertLessEqual(len(ids_by_number[number]), 1 + tally.failed_calls[number], f"number {number}")
        self.assertIn(self.service, queues)
        self.assertIn(result_queue, queues)
        self.assertEqual({name: counts for name, counts in queues.items() if counts[0]}, {}, self.evidence())
