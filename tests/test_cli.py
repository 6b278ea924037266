"""
Tests of the C{txass call} command line, run as C{python -m txass} in child
processes against the real broker and servers started by the tests.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import json
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from twisted.internet import defer, error, protocol, reactor
from twisted.python.failure import Failure
from twisted.trial import unittest

import txass
from tests import support
from txass import _cli
from txass._connection import Delivery, MessageProperties
from txass.errors import BrokerBlocked, InvalidReply

PASSWORD = "s3cret-pw"

# The maximum seconds a command of these tests takes.  The services they
# call reply at once, or the calls use timeouts of a second or less.
COMMAND_TIMEOUT = 30.0

# A --timeout short enough to keep the test fast, long enough to be sure the
# handler has the request before the call times out.
SHORT_TIMEOUT = 0.5

# Seconds allowed, beyond SHORT_TIMEOUT, between the handler receiving the
# request and the command exiting after its timeout.  The default timeout
# is 30 s, so a command that ignored --timeout fails this check.
TIMEOUT_SLACK = 10.0

# The control characters a server puts in its error replies to rewrite the
# operator's terminal: escape sequences, bell, carriage return, the C1
# control sequence introducer, and DEL.
CONTROLS = "\x1b[2J\x07\r\x9b31m\x7f"
CONTROLS_ESCAPED = "\\x1b[2J\\x07\\r\\x9b31m\\x7f"

# The value of PYTHONUNBUFFERED that leaves stdout buffered, as it is
# unless a user asks otherwise.  What a buffered stdout failed to write
# stays buffered, for Python to try again at exit.
BUFFERED = ""


@dataclass(frozen=True)
class Outcome:
    """
    How a C{txass} child process ended.

    @ivar code: The exit status, or L{None} when a signal killed it.
    @ivar stdout: Everything it wrote to stdout.
    @ivar stderr: Everything it wrote to stderr, decoded as UTF-8.
    """

    code: int | None
    stdout: bytes
    stderr: str


class CommandProcess(protocol.ProcessProtocol):
    """
    A C{txass} child process: collects its output and reports its end.
    """

    def __init__(self) -> None:
        self._output: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}
        self._stderr_waiters: list[tuple[str, defer.Deferred[None]]] = []
        self.ended: defer.Deferred[Outcome] = defer.Deferred()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self._output.setdefault(childFD, bytearray()).extend(data)
        if childFD == 2:
            self._wake()

    def _wake(self) -> None:
        stderr = self._output[2].decode("utf-8", "replace")
        waiting = self._stderr_waiters
        self._stderr_waiters = [(text, d) for text, d in waiting if text not in stderr]
        for text, d in waiting:
            if text in stderr:
                d.callback(None)

    def wait_for_stderr(self, text: str) -> defer.Deferred[None]:
        """
        Return a Deferred that fires once the process has written C{text}
        to stderr, failing if that takes longer than the usual event
        timeout.
        """
        d: defer.Deferred[None] = defer.Deferred()
        self._stderr_waiters.append((text, d))
        self._wake()
        return support.within(d)

    def close_stdout(self) -> None:
        """
        Close the end of the process's stdout pipe that this side reads, so
        that writing to it fails as writing to a closed pipe does.
        """
        assert self.transport is not None
        self.transport.closeStdout()

    def processEnded(self, reason: Failure) -> None:
        status = cast("error.ProcessDone | error.ProcessTerminated", reason.value)
        self.ended.callback(
            Outcome(
                code=status.exitCode,
                stdout=bytes(self._output[1]),
                stderr=self._output[2].decode("utf-8", "replace"),
            )
        )

    def send_signal(self, name: str) -> None:
        assert self.transport is not None
        self.transport.signalProcess(name)


def start_command(
    testcase: unittest.TestCase,
    *arguments: str,
    child_fds: dict[int, str | int] | None = None,
    **environment: str,
) -> CommandProcess:
    """
    Start C{python -m txass} with C{arguments}; it is killed after the test
    if it still runs.

    @param child_fds: The file descriptors of the child, as the C{childFDs}
        of C{spawnProcess}; by default stdin, stdout and stderr are pipes.
    @param environment: Variables added to the child's environment, which
        points C{TXASS_BROKER_URL} at the test broker.
    """
    process = CommandProcess()
    command = [sys.executable, "-m", "txass", *arguments]
    reactor.spawnProcess(
        process,
        command[0],
        command,
        env=support.python_environment(**environment),
        path=support.TOP,
        childFDs=child_fds,
    )

    def kill() -> defer.Deferred[Any] | None:
        if process.ended.called:
            return None
        process.send_signal("KILL")
        return process.ended

    testcase.addCleanup(kill)
    return process


async def run_command(testcase: unittest.TestCase, *arguments: str, **environment: str) -> Outcome:
    """
    Run C{python -m txass} with C{arguments} and return how it ended.
    """
    process = start_command(testcase, *arguments, **environment)
    outcome: Outcome = await support.within(process.ended, COMMAND_TIMEOUT)
    return outcome


def closed_port() -> int:
    """
    Return a loopback TCP port where nothing listens.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class SilentListener(protocol.Factory):
    """
    A TCP server that accepts connections and never sends a byte, so an
    AMQP handshake with it waits.

    @ivar connected: Fires once a client has connected.
    """

    def __init__(self) -> None:
        self.connected: defer.Deferred[None] = defer.Deferred()

    def buildProtocol(self, addr: Any) -> protocol.Protocol:
        if not self.connected.called:
            self.connected.callback(None)
        return protocol.Protocol()


class Handler:
    """
    The handler of the services the commands call.
    """

    def echo(self, data: Any) -> Any:
        return data

    def meta(self, data: Any) -> Any:
        return txass.current_request().meta

    def fail(self, data: Any) -> Any:
        raise ValueError("bad input")


class Holder:
    """
    A handler whose C{hold} method never returns a result, and which
    records when the first request arrived.
    """

    def __init__(self) -> None:
        self.received: defer.Deferred[float] = defer.Deferred()

    def hold(self, data: Any) -> defer.Deferred[None]:
        if not self.received.called:
            self.received.callback(time.monotonic())
        return defer.Deferred()


class RawResponder:
    """
    A consumer of a service queue that replies to every request with a
    fixed body, as a server that is not txass could.
    """

    def __init__(self, channel: Any, body: bytes) -> None:
        self._channel = channel
        self._body = body

    def __call__(self, delivery: Delivery) -> None:
        properties = MessageProperties(
            content_type="application/json",
            correlation_id=delivery.properties.correlation_id,
        )
        reply_to = delivery.properties.reply_to
        assert reply_to is not None
        self._channel.publish("", reply_to, self._body, properties)


class CallTests(unittest.TestCase):
    async def serve(self, handler: Any, **options: Any) -> str:
        """
        Serve a new service with C{handler}; return its name.
        """
        name = support.unique_name("cli")
        support.remove_after(self, name)
        broker = await support.connect(self)
        await broker.service(name).react(handler, **options)
        return name

    async def serve_raw(self, body: bytes) -> str:
        """
        Serve a new service with a L{RawResponder} replying C{body}; return
        its name.
        """
        name = support.unique_name("cli-raw")
        support.remove_after(self, name)
        channel = await support.raw_channel(self)
        await channel.declare_queue(name, durable=True)
        await channel.consume(name, RawResponder(channel, body), auto_ack=True)
        return name

    async def test_non_ascii_result(self) -> None:
        """
        When a call succeeds, then stdout contains the result as one line of
        JSON with non-ASCII text as is, and the exit status is 0.
        """
        name = await self.serve(Handler)
        data = '{"text": "ünïcødé ✓ 日本", "numbers": [1, 2.5, null], "ok": true}'
        outcome = await run_command(self, "call", name, "echo", data, PYTHONIOENCODING="utf-8")
        self.assertEqual(outcome.code, 0, outcome.stderr)
        expected = '{"text": "ünïcødé ✓ 日本", "numbers": [1, 2.5, null], "ok": true}\n'
        self.assertEqual(outcome.stdout, expected.encode("utf-8"))

    async def test_success_stderr_empty(self) -> None:
        """
        When a call succeeds without --verbose, then nothing is written to
        stderr.
        """
        name = await self.serve(Handler)
        outcome = await run_command(self, "call", name, "echo", "1")
        self.assertEqual(outcome.code, 0, outcome.stderr)
        self.assertEqual(outcome.stderr, "")

    async def test_ascii_stdout_escapes(self) -> None:
        """
        When stdout cannot encode the non-ASCII text of a result, then it is
        written as JSON escapes and the exit status is 0.
        """
        name = await self.serve(Handler)
        outcome = await run_command(self, "call", name, "echo", '"ünï ✓"', PYTHONIOENCODING="ascii")
        self.assertEqual(outcome.code, 0, outcome.stderr)
        self.assertEqual(outcome.stdout, b'"\\u00fcn\\u00ef \\u2713"\n')

    async def test_data_omitted_is_null(self) -> None:
        """
        When JSON_DATA is omitted, then the handler receives null.
        """
        name = await self.serve(Handler)
        outcome = await run_command(self, "call", name, "echo")
        self.assertEqual(outcome.code, 0, outcome.stderr)
        self.assertEqual(outcome.stdout, b"null\n")

    async def test_meta_reaches_handler(self) -> None:
        """
        When --meta gives a JSON object, then the handler reads it as
        current_request().meta.
        """
        name = await self.serve(Handler)
        outcome = await run_command(self, "call", name, "meta", "--meta", '{"user": "öps", "n": 2}')
        self.assertEqual(outcome.code, 0, outcome.stderr)
        self.assertEqual(json.loads(outcome.stdout), {"user": "öps", "n": 2})

    async def test_verbose_logs_to_stderr(self) -> None:
        """
        When --verbose is given, then log events go to stderr and stdout
        contains the result alone.
        """
        name = await self.serve(Handler)
        outcome = await run_command(self, "call", "--verbose", name, "echo", "[1, 2]")
        self.assertEqual(outcome.code, 0, outcome.stderr)
        self.assertEqual(outcome.stdout, b"[1, 2]\n")
        self.assertIn("connected to amqp://guest:***@", outcome.stderr)

    async def test_remote_error(self) -> None:
        """
        When the handler raises, then stderr names the remote type and
        message, stdout is empty and the exit status is 1.
        """
        name = await self.serve(Handler)
        outcome = await run_command(self, "call", name, "fail", "1")
        self.flushLoggedErrors(ValueError)
        self.assertEqual(outcome.code, 1, outcome.stderr)
        self.assertIn("remote error: ValueError: bad input", outcome.stderr)
        self.assertNotIn("Traceback", outcome.stderr)
        self.assertEqual(outcome.stdout, b"")

    async def test_remote_traceback(self) -> None:
        """
        When the service sends tracebacks, then stderr shows the remote
        traceback after the remote error.
        """
        name = await self.serve(Handler, send_tracebacks=True)
        outcome = await run_command(self, "call", name, "fail", "1")
        self.flushLoggedErrors(ValueError)
        self.assertEqual(outcome.code, 1, outcome.stderr)
        error_at = outcome.stderr.find("remote error: ValueError: bad input")
        traceback_at = outcome.stderr.find("Traceback (most recent call last):")
        self.assertNotEqual(error_at, -1, outcome.stderr)
        self.assertGreater(traceback_at, error_at, outcome.stderr)
        self.assertIn("in fail", outcome.stderr)

    async def test_invalid_reply(self) -> None:
        """
        When the reply is not a txass reply, then stderr reports it and
        the exit status is 1.
        """
        name = await self.serve_raw(b"[1, 2]")
        outcome = await run_command(self, "call", name, "echo", "1")
        self.assertEqual(outcome.code, 1, outcome.stderr)
        self.assertIn("is not a txass reply", outcome.stderr)
        self.assertEqual(outcome.stdout, b"")

    async def test_result_not_json(self) -> None:
        """
        When the result contains NaN, which is not JSON, then stderr reports
        that it cannot be printed and the exit status is 1.
        """
        name = await self.serve_raw(b'{"method": "echo", "result": [NaN], "meta": {}}')
        outcome = await run_command(self, "call", name, "echo", "1")
        self.assertEqual(outcome.code, 1, outcome.stderr)
        self.assertIn("the result cannot be printed as JSON", outcome.stderr)
        self.assertEqual(outcome.stdout, b"")

    async def test_remote_error_escaped(self) -> None:
        """
        When the remote type and message contain control characters and
        line breaks, then stderr shows them as visible escapes on one line.
        """
        error = {"type": f"Evil{CONTROLS}", "message": f"one\ntwo\t{CONTROLS}"}
        name = await self.serve_raw(json.dumps({"method": "echo", "error": error, "meta": {}}).encode())
        outcome = await run_command(self, "call", name, "echo", "1")
        self.assertEqual(outcome.code, 1, outcome.stderr)
        self.assertEqual(
            outcome.stderr,
            f"txass call: remote error: Evil{CONTROLS_ESCAPED}: one\\ntwo\\t{CONTROLS_ESCAPED}\n",
        )

    async def test_remote_traceback_escaped(self) -> None:
        """
        When the remote traceback contains control characters, then stderr
        shows them as visible escapes, keeping the traceback's line breaks
        and tabs.
        """
        traceback = f"Traceback (most recent call last):\n\tframe{CONTROLS}\nValueError\n"
        error = {"type": "ValueError", "message": "bad", "traceback": traceback}
        name = await self.serve_raw(json.dumps({"method": "echo", "error": error, "meta": {}}).encode())
        outcome = await run_command(self, "call", name, "echo", "1")
        self.assertEqual(outcome.code, 1, outcome.stderr)
        self.assertEqual(
            outcome.stderr,
            "txass call: remote error: ValueError: bad\n"
            f"Traceback (most recent call last):\n\tframe{CONTROLS_ESCAPED}\nValueError\n",
        )

    async def test_result_to_closed_pipe(self) -> None:
        """
        When stdout is a pipe whose reader has gone, then stderr reports in
        one line that the result could not be written and the exit status
        is 74.
        """
        name = await self.serve(Handler)
        process = start_command(self, "call", name, "echo", "1", PYTHONUNBUFFERED=BUFFERED)
        process.close_stdout()
        outcome = await support.within(process.ended, COMMAND_TIMEOUT)
        self.assertEqual(outcome.code, 74, outcome.stderr)
        self.assertEqual(outcome.stderr, "txass call: failed to write the result to stdout: Broken pipe\n")

    async def test_result_to_full_device(self) -> None:
        """
        When stdout is a device with no space left, then stderr reports in
        one line that the result could not be written and the exit status
        is 74.
        """
        name = await self.serve(Handler)
        full = os.open("/dev/full", os.O_WRONLY)
        try:
            process = start_command(
                self, "call", name, "echo", "1", child_fds={0: "w", 1: full, 2: "r"}, PYTHONUNBUFFERED=BUFFERED
            )
        finally:
            os.close(full)
        outcome = await support.within(process.ended, COMMAND_TIMEOUT)
        self.assertEqual(outcome.code, 74, outcome.stderr)
        self.assertEqual(outcome.stderr, "txass call: failed to write the result to stdout: No space left on device\n")

    async def test_error_to_full_device(self) -> None:
        """
        When stderr is a device with no space left, then a failed call
        still exits with the status of its failure.
        """
        name = await self.serve(Handler)
        full = os.open("/dev/full", os.O_WRONLY)
        try:
            process = start_command(
                self, "call", name, "fail", "1", child_fds={0: "w", 1: "r", 2: full}, PYTHONUNBUFFERED=BUFFERED
            )
        finally:
            os.close(full)
        outcome = await support.within(process.ended, COMMAND_TIMEOUT)
        self.flushLoggedErrors(ValueError)
        self.assertEqual(outcome.code, 1)
        self.assertEqual(outcome.stdout, b"")

    async def test_result_stdout_closed(self) -> None:
        """
        When the process has no stdout, then stderr reports in one line
        that the result could not be written and the exit status is 74.
        """
        name = await self.serve(Handler)
        process = start_command(self, "call", name, "echo", "1", child_fds={0: "w", 2: "r"})
        outcome = await support.within(process.ended, COMMAND_TIMEOUT)
        self.assertEqual(outcome.code, 74, outcome.stderr)
        self.assertEqual(outcome.stderr, "txass call: failed to write the result: stdout is closed\n")

    async def test_timeout(self) -> None:
        """
        When no reply comes within --timeout, then the command exits with
        status 3 soon after the timeout, naming service, method and seconds.
        """
        holder = Holder()
        name = await self.serve(holder, grace=0)
        started = time.monotonic()
        process = start_command(self, "call", name, "hold", "1", "--timeout", str(SHORT_TIMEOUT))
        received = await support.within(holder.received)
        outcome = await support.within(process.ended, COMMAND_TIMEOUT)
        ended = time.monotonic()
        self.assertEqual(outcome.code, 3, outcome.stderr)
        self.assertGreaterEqual(ended - started, SHORT_TIMEOUT)
        self.assertLess(ended - received, SHORT_TIMEOUT + TIMEOUT_SLACK)
        self.assertIn(f"no reply from {name}.hold within {SHORT_TIMEOUT:g} s", outcome.stderr)
        self.assertEqual(outcome.stdout, b"")

    async def test_interrupted(self) -> None:
        """
        When SIGINT arrives while the command waits for the reply, then it
        exits with status 130 and prints nothing on stdout.
        """
        holder = Holder()
        name = await self.serve(holder, grace=0)
        process = start_command(self, "call", name, "hold", "1")
        await support.within(holder.received)
        process.send_signal("INT")
        outcome = await support.within(process.ended, COMMAND_TIMEOUT)
        self.assertEqual(outcome.code, 128 + signal.SIGINT, outcome.stderr)
        self.assertIn(f"interrupted while waiting for the reply of {name}.hold", outcome.stderr)
        self.assertEqual(outcome.stdout, b"")

    async def test_terminated(self) -> None:
        """
        When SIGTERM arrives while the command waits for the reply, then it
        exits with status 143 and prints nothing on stdout.
        """
        holder = Holder()
        name = await self.serve(holder, grace=0)
        process = start_command(self, "call", name, "hold", "1")
        await support.within(holder.received)
        process.send_signal("TERM")
        outcome = await support.within(process.ended, COMMAND_TIMEOUT)
        self.assertEqual(outcome.code, 128 + signal.SIGTERM, outcome.stderr)
        self.assertEqual(outcome.stdout, b"")

    async def test_signal_while_closing(self) -> None:
        """
        When SIGINT arrives while the command waits for the connection to
        close after a timeout, then it exits at once with status 130.
        """
        holder = Holder()
        name = await self.serve(holder, grace=0)
        proxy = support.TCPProxy(self)
        process = start_command(self, "call", "-b", proxy.url, name, "hold", "1", "-t", str(SHORT_TIMEOUT))
        await support.within(holder.received)
        # The proxy forwards nothing more, so closing waits for the broker.
        proxy.freeze()
        await process.wait_for_stderr("timed out: ")
        signalled = time.monotonic()
        process.send_signal("INT")
        outcome = await support.within(process.ended, COMMAND_TIMEOUT)
        # Without the signal, closing would last CLOSE_TIMEOUT.
        self.assertLess(time.monotonic() - signalled, _cli.CLOSE_TIMEOUT)
        self.assertEqual(outcome.code, 128 + signal.SIGINT, outcome.stderr)
        self.assertTrue(
            outcome.stderr.endswith("txass call: interrupted while closing the connection to the broker\n"),
            outcome.stderr,
        )

    async def test_second_signal_while_closing(self) -> None:
        """
        When SIGTERM follows SIGINT while the command closes the connection
        after cancelling the call, then it exits at once with status 143.
        """
        holder = Holder()
        name = await self.serve(holder, grace=0)
        proxy = support.TCPProxy(self)
        process = start_command(self, "call", "-b", proxy.url, name, "hold", "1")
        await support.within(holder.received)
        proxy.freeze()
        process.send_signal("INT")
        await process.wait_for_stderr(f"interrupted while waiting for the reply of {name}.hold")
        signalled = time.monotonic()
        process.send_signal("TERM")
        outcome = await support.within(process.ended, COMMAND_TIMEOUT)
        # Without the signal, closing would last CLOSE_TIMEOUT.
        self.assertLess(time.monotonic() - signalled, _cli.CLOSE_TIMEOUT)
        self.assertEqual(outcome.code, 128 + signal.SIGTERM, outcome.stderr)
        self.assertTrue(
            outcome.stderr.endswith("txass call: interrupted while closing the connection to the broker\n"),
            outcome.stderr,
        )

    async def test_interrupted_connecting(self) -> None:
        """
        When SIGINT arrives during the AMQP handshake, then the command exits
        with status 130 at once, saying it waited for the connection.
        """
        listener = SilentListener()
        port = reactor.listenTCP(0, listener, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        url = f"amqp://guest:{PASSWORD}@127.0.0.1:{port.getHost().port}/%2F"
        process = start_command(self, "call", "--broker", url, "anything", "echo", "1")
        await support.within(listener.connected)
        process.send_signal("INT")
        outcome = await support.within(process.ended, COMMAND_TIMEOUT)
        self.assertEqual(outcome.code, 128 + signal.SIGINT, outcome.stderr)
        self.assertIn("interrupted while waiting for the connection to the broker", outcome.stderr)
        self.assertNotIn(PASSWORD, outcome.stderr)

    async def test_connection_lost(self) -> None:
        """
        When the connection is cut while the command waits for the reply,
        then it exits with status 4 and prints nothing on stdout.
        """
        holder = Holder()
        name = await self.serve(holder, grace=0)
        proxy = support.TCPProxy(self)
        process = start_command(self, "call", "--broker", proxy.url, name, "hold", "1")
        await support.within(holder.received)
        proxy.cut()
        outcome = await support.within(process.ended, COMMAND_TIMEOUT)
        self.assertEqual(outcome.code, 4, outcome.stderr)
        self.assertIn(f"while calling {name}.hold", outcome.stderr)
        self.assertEqual(outcome.stdout, b"")

    async def test_no_such_service(self) -> None:
        """
        When no queue exists for the service, then stderr reports it and
        that a server must run first, and the exit status is 5.
        """
        name = support.unique_name("cli-missing")
        outcome = await run_command(self, "call", name, "echo", "1")
        self.assertEqual(outcome.code, 5, outcome.stderr)
        self.assertIn(f"no such service {name!r}", outcome.stderr)
        self.assertIn("start a server of the service first", outcome.stderr)
        self.assertEqual(outcome.stdout, b"")

    async def test_connection_refused(self) -> None:
        """
        When nothing listens at the broker address, then the exit status is
        4 and stderr explains it without the password.
        """
        url = f"amqp://guest:{PASSWORD}@127.0.0.1:{closed_port()}/%2F"
        outcome = await run_command(self, "call", "--broker", url, "anything", "echo", "1")
        self.assertEqual(outcome.code, 4, outcome.stderr)
        self.assertIn("connection refused", outcome.stderr)
        self.assertNotIn(PASSWORD, outcome.stderr)
        self.assertEqual(outcome.stdout, b"")

    async def test_verbose_hides_password(self) -> None:
        """
        When --verbose logs a failed connection, then the password appears
        nowhere in the output.
        """
        url = f"amqp://guest:{PASSWORD}@127.0.0.1:{closed_port()}/%2F"
        outcome = await run_command(self, "call", "-v", "-b", url, "anything", "echo", "1")
        self.assertEqual(outcome.code, 4, outcome.stderr)
        self.assertIn("connection refused", outcome.stderr)
        self.assertNotIn(PASSWORD, outcome.stderr)
        self.assertNotIn(PASSWORD.encode(), outcome.stdout)

    async def test_invalid_broker_url(self) -> None:
        """
        When --broker is not a usable AMQP URI, then the exit status is 2
        and the error names the option without the password.
        """
        cases = [
            f"http://guest:{PASSWORD}@127.0.0.1/",
            f"amqp://guest:{PASSWORD}@127.0.0.1:port/",
            f"amqp://guest:{PASSWORD}@127.0.0.1/?unknown=1",
        ]
        for url in cases:
            outcome = await run_command(self, "call", "--broker", url, "anything", "echo")
            self.assertEqual(outcome.code, 2, (url, outcome.stderr))
            self.assertIn("argument -b/--broker: ", outcome.stderr)
            self.assertNotIn(PASSWORD, outcome.stderr)

    async def test_invalid_environment_url(self) -> None:
        """
        When $TXASS_BROKER_URL is not a usable AMQP URI and --broker is not
        given, then the exit status is 2 and the error names the variable.
        """
        url = f"http://guest:{PASSWORD}@127.0.0.1/"
        outcome = await run_command(self, "call", "anything", "echo", TXASS_BROKER_URL=url)
        self.assertEqual(outcome.code, 2, outcome.stderr)
        self.assertIn("environment variable TXASS_BROKER_URL: invalid broker URL scheme", outcome.stderr)
        self.assertNotIn(PASSWORD, outcome.stderr)


class UsageTests(unittest.TestCase):
    async def assert_usage_error(self, arguments: list[str], message: str) -> None:
        """
        Check that C{txass} with C{arguments} exits with status 2, writes
        C{message} to stderr and nothing to stdout.
        """
        outcome = await run_command(self, *arguments)
        self.assertEqual(outcome.code, 2, (arguments, outcome.stderr))
        self.assertIn(message, outcome.stderr)
        self.assertEqual(outcome.stdout, b"")

    async def test_invalid_json_data(self) -> None:
        """
        When JSON_DATA is not valid JSON, then the exit status is 2 and the
        error names the argument.
        """
        for data in ["{bad", "hello", "NaN", "[1, Infinity]"]:
            await self.assert_usage_error(["call", "anything", "echo", data], "argument JSON_DATA: not valid JSON: ")

    async def test_invalid_meta(self) -> None:
        """
        When --meta is not a JSON object, then the exit status is 2 and the
        error names the option.
        """
        cases = [
            ("{bad", "argument --meta: not valid JSON: "),
            ("[1]", "argument --meta: must be a JSON object"),
            ("null", "argument --meta: must be a JSON object"),
            ('"text"', "argument --meta: must be a JSON object"),
        ]
        for meta, message in cases:
            await self.assert_usage_error(["call", "anything", "echo", "--meta", meta], message)

    async def test_invalid_timeout(self) -> None:
        """
        When --timeout is not a number of seconds greater than 0, then the
        exit status is 2 and the error names the option.
        """
        for timeout in ["0", "-1", "nan", "inf", "soon", ""]:
            await self.assert_usage_error(
                ["call", "anything", "echo", f"--timeout={timeout}"],
                "argument -t/--timeout: timeout must be a number of seconds greater than 0",
            )

    async def test_timeout_too_large(self) -> None:
        """
        When --timeout is above the maximum timeout of a call, then the exit
        status is 2 and the error names the option and the maximum.
        """
        for timeout in ["1e306", "1e10"]:
            await self.assert_usage_error(
                ["call", "anything", "echo", f"--timeout={timeout}"],
                "argument -t/--timeout: timeout must be a number of seconds greater than 0 and at most 1e+09",
            )

    async def test_invalid_service_name(self) -> None:
        """
        When SERVICE cannot name a service, then the exit status is 2 and
        the error names the argument.
        """
        await self.assert_usage_error(["call", "no spaces", "echo"], "argument SERVICE: invalid service name")

    async def test_empty_method(self) -> None:
        """
        When METHOD is empty, then the exit status is 2 and the error names
        the argument.
        """
        await self.assert_usage_error(["call", "anything", ""], "argument METHOD: method must be 1 to 255 bytes")

    async def test_no_command(self) -> None:
        """
        When no subcommand is given, then the usage is printed and the exit
        status is 2.
        """
        await self.assert_usage_error([], "usage: txass ")

    async def test_help_lists_commands(self) -> None:
        """
        When --help is given, then the subcommands are listed and the exit
        status is 0.
        """
        outcome = await run_command(self, "--help")
        self.assertEqual(outcome.code, 0, outcome.stderr)
        self.assertRegex(outcome.stdout.decode(), r"\n\s+call\s+Call a method of a service")

    async def test_call_help_documents_statuses(self) -> None:
        """
        When call --help is given, then every exit status is documented.
        """
        outcome = await run_command(self, "call", "--help")
        self.assertEqual(outcome.code, 0, outcome.stderr)
        text = outcome.stdout.decode()
        statuses = {
            "0": "the call succeeded",
            "1": "remote error",
            "2": "usage error",
            "3": "timeout",
            "4": "connection error",
            "5": "service not found",
            "70": "internal error",
            "74": "output error",
            "128+N": "interrupted by signal N",
        }
        for status, meaning in statuses.items():
            self.assertRegex(text, rf"\n  {re.escape(status)} +{meaning}", status)

    async def test_call_help_documents_units(self) -> None:
        """
        When call --help is given, then each option with a quantity states
        its unit and default.
        """
        outcome = await run_command(self, "call", "--help")
        self.assertEqual(outcome.code, 0, outcome.stderr)
        text = " ".join(outcome.stdout.decode().split())
        self.assertIn("--timeout SECONDS Seconds to wait for the reply", text)
        self.assertIn("[default: 30]", text)
        self.assertIn("[default: $TXASS_BROKER_URL, else amqp://guest:guest@localhost:5672/%2F]", text)

    async def test_version(self) -> None:
        """
        When --version is given, then the version is printed and the exit
        status is 0.
        """
        outcome = await run_command(self, "--version")
        self.assertEqual(outcome.code, 0, outcome.stderr)
        self.assertEqual(outcome.stdout, f"txass {txass.__version__}\n".encode())


class OutputTests(unittest.SynchronousTestCase):
    def test_line_escapes_controls(self) -> None:
        """
        When text for one line contains C0 and C1 controls, DEL, line
        breaks or tabs, then printable_line writes each as a visible escape.
        """
        self.assertEqual(
            _cli.printable_line("a\x00\x1b[1m\x07\r\n\t\x7f\x80\x9b\x9fz"),
            "a\\x00\\x1b[1m\\x07\\r\\n\\t\\x7f\\x80\\x9b\\x9fz",
        )

    def test_line_escapes_unicode_controls(self) -> None:
        """
        When text for one line contains bidirectional overrides, line or
        paragraph separators or a lone surrogate, then printable_line
        writes each as a visible escape.
        """
        self.assertEqual(
            _cli.printable_line("a\u202eb\u2066c\u2028d\u2029e\udc80f"),
            "a\\u202eb\\u2066c\\u2028d\\u2029e\\udc80f",
        )

    def test_line_keeps_text(self) -> None:
        """
        When text contains no controls, then printable_line returns it
        unchanged, non-ASCII letters and backslashes included.
        """
        text = "ünïcødé ✓ 日本 C:\\path \xa0\u200e"
        self.assertEqual(_cli.printable_line(text), text)

    def test_block_keeps_layout(self) -> None:
        """
        When a traceback contains line breaks, tabs and other controls, then
        printable_block keeps the line breaks and tabs and escapes the rest.
        """
        self.assertEqual(
            _cli.printable_block("one\n\ttwo\r\x1b]0;x\x07\x85\n"),
            "one\n\ttwo\\r\\x1b]0;x\\x07\\x85\n",
        )

    def test_log_writer_escapes(self) -> None:
        """
        When a log event with control characters is written through the
        log stream of --verbose, then they reach stderr escaped, line
        breaks kept.
        """
        stream = io.StringIO()
        writer = _cli._EscapingWriter(stream)
        writer.write("reply \x1b[31mred\x9b\n")
        writer.flush()
        self.assertEqual(stream.getvalue(), "reply \\x1b[31mred\\x9b\n")

    def test_result_nested_too_deeply(self) -> None:
        """
        When a result is nested deeper than Python can encode, then
        format_result raises InvalidReply saying so.
        """
        value: list[Any] = []
        for _ in range(sys.getrecursionlimit() + 10):
            value = [value]
        with self.assertRaises(InvalidReply) as caught:
            _cli.format_result(value, "utf-8")
        self.assertIn("nested too deeply", str(caught.exception))

    def test_broker_blocked(self) -> None:
        """
        When a call times out because the broker blocked publishing, then
        the message gives the reason and does not claim that the request
        may still be served.
        """
        arguments = _cli.CallArguments(
            service="svc", method="do", data=None, meta={}, timeout=1.0, url="amqp://localhost/"
        )
        status, message = _cli.describe_failure(BrokerBlocked("svc", "do", 1.0, "low on memory"), arguments)
        self.assertEqual(status, 3)
        self.assertIn("the broker blocked publishing (low on memory)", message)
        self.assertNotIn("may still be served", message)

    def test_timeout_overflow(self) -> None:
        """
        When checking a timeout overflows, then --timeout reports a usage
        error rather than an internal one.
        """

        def overflow(timeout: object) -> float:
            raise OverflowError("too large")

        self.patch(_cli, "check_timeout", overflow)
        with self.assertRaises(argparse.ArgumentTypeError) as caught:
            _cli._timeout("1e300")
        self.assertEqual(str(caught.exception), "invalid timeout '1e300': too large")


class ConsoleScriptTests(unittest.SynchronousTestCase):
    def test_console_script_declared(self) -> None:
        """
        When txass is installed, then its metadata declares the console
        script txass running txass._cli:main.
        """
        # The egg-info directory a build leaves in the checkout is metadata
        # too, but only an installer writes the INSTALLER file.
        installed = [
            distribution
            for distribution in importlib.metadata.distributions(name="txass")
            if distribution.read_text("INSTALLER") is not None
        ]
        if not installed:
            raise unittest.SkipTest("txass is not installed")
        distribution = installed[0]
        scripts = [
            entry_point
            for entry_point in distribution.entry_points
            if entry_point.group == "console_scripts" and entry_point.name == "txass"
        ]
        self.assertEqual(len(scripts), 1, distribution.entry_points)
        self.assertEqual(scripts[0].value, "txass._cli:main")
        main: Callable[..., Any] = scripts[0].load()
        from txass._cli import main as cli_main

        self.assertIs(main, cli_main)
