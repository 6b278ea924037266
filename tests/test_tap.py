"""
Tests for C{twistd ass}: its options, and stages run by twistd in child
processes that serve the real broker.
"""

from __future__ import annotations

import os
import signal
import textwrap
import time
import uuid
from collections.abc import Callable
from typing import Any, cast

from twisted.internet import defer, error, protocol, reactor, task
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial import unittest

import txass
from tests import support
from tests.stages import crashing, holding
from txass._tap import Options

# A loopback address where nothing listens, so any connection is refused.
CLOSED_PORT_URL = "amqp://guest:s3cret@127.0.0.1:1/%2F"
PASSWORD = "s3cret"

# Seconds a stage gets to load its handler and fail, without a broker.
QUICK_EXIT = 10.0

# Seconds between checks of a polled condition.
POLL_INTERVAL = 0.05

HOLDER = "tests.stages.holding.Holder"
CRASHER = "tests.stages.crashing.Crasher"


class TwistdProcess(protocol.ProcessProtocol):
    """
    A twistd child process: collects its output and reports its end.

    @ivar status: L{None} while it runs, then the L{error.ProcessDone} or
        L{error.ProcessTerminated} it ended with.
    """

    def __init__(self) -> None:
        self._output: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}
        self._end_waiters: list[defer.Deferred[None]] = []
        self._output_waiters: list[tuple[str, defer.Deferred[None]]] = []
        self.status: error.ProcessDone | error.ProcessTerminated | None = None
        self.pid: int | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.pid = self.transport.pid

    @property
    def stdout(self) -> str:
        return self._output[1].decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return self._output[2].decode("utf-8", "replace")

    @property
    def exit_code(self) -> int | None:
        assert self.status is not None
        return self.status.exitCode

    @property
    def exit_signal(self) -> int | None:
        assert self.status is not None
        return getattr(self.status, "signal", None)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self._output.setdefault(childFD, bytearray()).extend(data)
        waiting, self._output_waiters = self._output_waiters, []
        for text, d in waiting:
            if text in self.stdout:
                d.callback(None)
            else:
                self._output_waiters.append((text, d))

    def processEnded(self, reason: Failure) -> None:
        self.status = cast("error.ProcessDone | error.ProcessTerminated", reason.value)
        waiting, self._end_waiters = self._end_waiters, []
        for d in waiting:
            d.callback(None)

    def wait_for_end(self, seconds: float = support.EVENT_TIMEOUT) -> defer.Deferred[None]:
        """
        Return a Deferred firing once the process has ended.
        """
        if self.status is not None:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._end_waiters.append(d)
        return support.within(d, seconds)

    def wait_for_output(self, text: str, seconds: float = support.EVENT_TIMEOUT) -> defer.Deferred[None]:
        """
        Return a Deferred firing once C{text} has appeared on stdout.
        """
        if text in self.stdout:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._output_waiters.append((text, d))

        def explain(failure: Failure) -> Failure:
            # The output shows why the stage did not log C{text}.
            failure.trap(defer.TimeoutError)
            raise AssertionError(f"{text!r} not on stdout within {seconds:g} s; stdout so far:\n{self.stdout}")

        return support.within(d, seconds).addErrback(explain)

    def send_signal(self, name: str) -> None:
        assert self.transport is not None
        self.transport.signalProcess(name)

    async def stop(self) -> None:
        """
        End the process if it still runs: SIGTERM, then SIGKILL if it has
        not ended within L{support.EVENT_TIMEOUT}.
        """
        if self.status is not None:
            return
        try:
            self.send_signal("TERM")
            await self.wait_for_end()
        except defer.TimeoutError:
            self.send_signal("KILL")
            await self.wait_for_end()
        except error.ProcessExitedAlready:
            await self.wait_for_end()


def start_twistd(
    testcase: unittest.TestCase,
    *arguments: str,
    pythonpath: str | None = None,
) -> TwistdProcess:
    """
    Run twistd with C{arguments} in the checkout, stopped after the test.

    @param pythonpath: A directory put first on the child's C{PYTHONPATH}.
    """
    environment = support.python_environment()
    if pythonpath is not None:
        environment["PYTHONPATH"] = os.pathsep.join([pythonpath, environment["PYTHONPATH"]])
    process = TwistdProcess()
    command = support.twistd_command(*arguments)
    reactor.spawnProcess(process, command[0], command, env=environment, path=support.TOP)
    testcase.addCleanup(lambda: defer.Deferred.fromCoroutine(process.stop()))
    return process


def start_stage(
    testcase: unittest.TestCase,
    service: str,
    handler: str,
    *options: str,
    pythonpath: str | None = None,
) -> TwistdProcess:
    """
    Run C{twistd -n ass} serving C{service} with C{handler}, its pid file in
    a temporary directory so that stages never share one.
    """
    pidfile = os.path.join(make_directory(testcase), "twistd.pid")
    return start_twistd(
        testcase,
        "-n",
        f"--pidfile={pidfile}",
        "ass",
        "--service",
        service,
        "--reactor",
        handler,
        *options,
        pythonpath=pythonpath,
    )


def make_directory(testcase: unittest.TestCase) -> str:
    path = os.path.abspath(testcase.mktemp())
    os.makedirs(path)
    return path


async def wait_until(condition: Callable[[], bool], description: str, seconds: float = support.EVENT_TIMEOUT) -> None:
    """
    Poll C{condition} until it is true.

    @raise AssertionError: naming C{description} if it is still false after
        C{seconds}.
    """
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:g} s waiting for {description}")
        await task.deferLater(reactor, POLL_INTERVAL, lambda: None)


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def callbacks(results: support.Results, *methods: str) -> dict[str, Callable[[Any], None]]:
    """
    Return a mapping handler that records the results of C{methods} in
    C{results}.  The object itself cannot be the handler, since txass calls
    only methods that a handler has without running its C{__getattr__}.
    """
    return {method: getattr(results, method) for method in methods}


def normalize_space(text: str) -> str:
    return " ".join(text.split())


def parse(*arguments: str) -> Options:
    options = Options()
    options.parseOptions(list(arguments))
    return options


class OptionsTests(unittest.TestCase):
    """
    The command-line options of C{twistd ass}, parsed in this process.
    """

    def test_service_required(self) -> None:
        """
        When --service is missing, then parsing raises a UsageError naming it.
        """
        with self.assertRaises(usage.UsageError) as caught:
            parse("--reactor", "examples.echo.Echo")
        self.assertIn("--service", str(caught.exception))

    def test_reactor_required(self) -> None:
        """
        When --reactor is missing, then parsing raises a UsageError naming it.
        """
        with self.assertRaises(usage.UsageError) as caught:
            parse("--service", "echo")
        self.assertIn("--reactor", str(caught.exception))

    def test_handler_alias(self) -> None:
        """
        When --handler is given in place of --reactor, then it sets the
        handler path.
        """
        options = parse("--service", "echo", "--handler", "examples.echo.Echo")
        self.assertEqual(options["reactor"], "examples.echo.Echo")

    def test_handler_and_reactor_differ(self) -> None:
        """
        When --handler and --reactor name different handlers, then parsing
        raises a UsageError.
        """
        with self.assertRaises(usage.UsageError):
            parse("--service", "echo", "--handler", "examples.echo.Echo", "--reactor", "examples.echo.Other")

    def test_invalid_service_name(self) -> None:
        """
        When the service name cannot name a service, then parsing raises a
        UsageError naming it.
        """
        for name in ["amq.echo", "echo service", "-echo", "x" * 201]:
            with self.subTest(name=name):
                with self.assertRaises(usage.UsageError) as caught:
                    parse("--service", name, "--reactor", "examples.echo.Echo")
                self.assertIn(repr(name), str(caught.exception))

    def test_invalid_broker_url(self) -> None:
        """
        When the broker URL is not a usable AMQP URI, then parsing raises a
        UsageError that does not show the password.
        """
        urls = [
            f"http://guest:{PASSWORD}@127.0.0.1/",
            f"amqp://guest:{PASSWORD}@127.0.0.1:99999/%2F",
            f"amqp://guest:{PASSWORD}@127.0.0.1/%2F?heartbeat=soon",
            f"amqp://guest:{PASSWORD}@127.0.0.1/%2F?unknown=1",
        ]
        for url in urls:
            with self.subTest(url=url):
                with self.assertRaises(usage.UsageError) as caught:
                    parse("--service", "echo", "--reactor", "examples.echo.Echo", "--broker", url)
                self.assertNotIn(PASSWORD, str(caught.exception))

    def test_negative_grace(self) -> None:
        """
        When --grace is negative, then parsing raises a UsageError naming it.
        """
        with self.assertRaises(usage.UsageError) as caught:
            parse("--service", "echo", "--reactor", "examples.echo.Echo", "--grace=-1")
        self.assertIn("--grace", str(caught.exception))

    def test_grace_not_a_number(self) -> None:
        """
        When --grace is NaN, then parsing raises a UsageError, since no
        timeout can be set from it.
        """
        with self.assertRaises(usage.UsageError):
            parse("--service", "echo", "--reactor", "examples.echo.Echo", "--grace", "nan")

    def test_grace_zero(self) -> None:
        """
        When --grace is 0, then parsing accepts it.
        """
        options = parse("--service", "echo", "--reactor", "examples.echo.Echo", "--grace", "0")
        self.assertEqual(options["grace"], 0.0)

    def test_prefetch_out_of_range(self) -> None:
        """
        When --prefetch is not an integer from 1 to 65535, then parsing
        raises a UsageError.
        """
        for value in ["0", "-1", "65536", "ten", "1.5"]:
            with self.subTest(value=value):
                with self.assertRaises(usage.UsageError):
                    parse("--service", "echo", "--reactor", "examples.echo.Echo", "--prefetch", value)

    def test_prefetch_limits(self) -> None:
        """
        When --prefetch is 1 or 65535, then parsing accepts it as an integer.
        """
        for value in [1, 65535]:
            with self.subTest(value=value):
                options = parse("--service", "echo", "--reactor", "examples.echo.Echo", "--prefetch", str(value))
                self.assertEqual(options["prefetch"], value)

    def test_max_request_size(self) -> None:
        """
        When --max-request-size is a positive integer, then parsing accepts
        it, and otherwise raises a UsageError naming the option.
        """
        options = parse("--service", "echo", "--reactor", "examples.echo.Echo", "--max-request-size", "1024")
        self.assertEqual(options["max-request-size"], 1024)
        for value in ["0", "-5", "big", "1.5"]:
            with self.subTest(value=value):
                with self.assertRaises(usage.UsageError) as caught:
                    parse("--service", "echo", "--reactor", "examples.echo.Echo", "--max-request-size", value)
                self.assertIn("--max-request-size", str(caught.exception))

    def test_retry_options(self) -> None:
        """
        --retry-delay turns on a retry policy with the backoff and maximum
        delay given, and without it failed requests are not retried.
        """
        base = ["--service", "echo", "--reactor", "examples.echo.Echo"]
        self.assertIsNone(parse(*base)["retry"])
        options = parse(*base, "--retry-delay", "0.5", "--retry-backoff", "3", "--retry-max-delay", "60")
        self.assertEqual(options["retry"], txass.Retry(delay=0.5, backoff=3.0, max_delay=60.0))
        for arguments in (["--retry-delay", "-1"], ["--retry-delay", "1", "--retry-backoff", "0.5"]):
            with self.subTest(arguments=arguments):
                with self.assertRaises(usage.UsageError) as caught:
                    parse(*base, *arguments)
                self.assertIn("--retry-delay", str(caught.exception))

    def test_long_first_retry_delay(self) -> None:
        """
        A first retry delay longer than the default longest delay raises
        that longest delay rather than fail on an option never given.
        """
        base = ["--service", "echo", "--reactor", "examples.echo.Echo"]
        options = parse(*base, "--retry-delay", "400")
        self.assertEqual(options["retry"], txass.Retry(delay=400.0, backoff=2.0, max_delay=400.0))

    def test_retry_tuning_needs_delay(self) -> None:
        """
        --retry-backoff or --retry-max-delay without --retry-delay is a
        usage error, not a setting that silently does nothing.
        """
        base = ["--service", "echo", "--reactor", "examples.echo.Echo"]
        for arguments in (["--retry-backoff", "3"], ["--retry-max-delay", "60"]):
            with self.subTest(arguments=arguments):
                with self.assertRaises(usage.UsageError) as caught:
                    parse(*base, *arguments)
                self.assertIn("needs --retry-delay", str(caught.exception))

    def test_max_attempts(self) -> None:
        """
        --max-attempts accepts 1 to 1000 and defaults to 5.
        """
        base = ["--service", "echo", "--reactor", "examples.echo.Echo"]
        self.assertEqual(parse(*base)["max-attempts"], 5)
        self.assertEqual(parse(*base, "--max-attempts", "1000")["max-attempts"], 1000)
        for value in ["0", "1001", "two"]:
            with self.subTest(value=value):
                with self.assertRaises(usage.UsageError) as caught:
                    parse(*base, "--max-attempts", value)
                self.assertIn("--max-attempts", str(caught.exception))

    async def test_help(self) -> None:
        """
        When twistd ass is run with --help, then it exits 0 and the text
        names every option and the units of --grace and --prefetch.
        """
        process = start_twistd(self, "ass", "--help")
        await process.wait_for_end(QUICK_EXIT)
        text = normalize_space(process.stdout)

        self.assertEqual(process.exit_code, 0)
        for option in ["--service", "--reactor", "--handler", "--broker", "--prefetch", "--grace", "--tracebacks"]:
            with self.subTest(option=option):
                self.assertIn(option, text)
        self.assertIn("Seconds to let requests in flight finish", text)
        self.assertIn("(1 to 65535)", text)
        self.assertIn("amqp://user:password@host:5672/%2F", text)


class HandlerImportTests(unittest.TestCase):
    """
    A handler path that cannot be imported stops C{twistd ass} before it
    connects.
    """

    async def assert_import_fails(self, handler: str, pythonpath: str | None = None) -> str:
        """
        Run a stage with C{handler} and a broker URL where nothing listens,
        check that it exits non-zero with a one-line error naming
        C{handler} and without trying to connect, and return that line.
        """
        process = start_stage(
            self,
            support.unique_name("tap-import"),
            handler,
            "--broker",
            CLOSED_PORT_URL,
            pythonpath=pythonpath,
        )
        await process.wait_for_end(QUICK_EXIT)
        lines = process.stderr.splitlines()

        self.assertNotEqual(process.exit_code, 0)
        self.assertEqual(len(lines), 1, process.stderr)
        self.assertIn(repr(handler), lines[0])
        self.assertNotIn("127.0.0.1:1", process.stdout + process.stderr)
        self.assertNotIn(PASSWORD, process.stdout + process.stderr)
        return lines[0]

    def write_module(self, source: str) -> tuple[str, str]:
        """
        Write a module of a fresh name with C{source} into a new directory
        and return the directory and the module name.
        """
        directory = make_directory(self)
        name = f"tap_stage_{uuid.uuid4().hex}"
        with open(os.path.join(directory, f"{name}.py"), "w") as f:
            f.write(textwrap.dedent(source))
        return directory, name

    async def test_missing_module(self) -> None:
        """
        When the handler's module does not exist, then the stage exits
        non-zero with one line naming the path.
        """
        line = await self.assert_import_fails("tap_no_such_module.Echo")
        self.assertIn("tap_no_such_module", line)

    async def test_missing_attribute(self) -> None:
        """
        When the handler's module has no such attribute, then the stage
        exits non-zero with one line naming the attribute.
        """
        line = await self.assert_import_fails("examples.echo.NoSuchHandler")
        self.assertIn("NoSuchHandler", line)

    async def test_import_error_inside(self) -> None:
        """
        When the handler's module raises ImportError while it is imported,
        then the stage exits non-zero with one line carrying that error.
        """
        directory, name = self.write_module(
            """
            raise ImportError("the compiled part of this module failed to load")
            """
        )
        line = await self.assert_import_fails(f"{name}.Handler", directory)
        self.assertIn("the compiled part of this module failed to load", line)

    async def test_missing_dependency(self) -> None:
        """
        When the handler's module imports a module that does not exist,
        then the stage exits non-zero with one line naming that dependency.
        """
        directory, name = self.write_module(
            """
            import tap_missing_dependency


            class Handler:
                def foo(self, value):
                    return value
            """
        )
        line = await self.assert_import_fails(f"{name}.Handler", directory)
        self.assertIn("tap_missing_dependency", line)


# A handler module that no other test imports, written under a fresh name by
# ServingTests.  Each handler kind returns its kind, the doubled input, the
# number of calls its object has served, and the serving process's id.
UNKNOWN_MODULE_SOURCE = '''
import os


def _reply(kind, value, calls):
    return {"kind": kind, "double": value * 2, "calls": calls, "pid": os.getpid()}


class Doubler:
    def __init__(self):
        self.calls = 0

    def double(self, value):
        self.calls += 1
        return _reply("class", value, self.calls)


def double(value):
    return _reply("module", value, 1)


MAPPING = {"double": lambda value: _reply("mapping", value, 1)}


class _Counter:
    def __init__(self):
        self.calls = 0

    def double(self, value):
        self.calls += 1
        return _reply("object", value, self.calls)


COUNTER = _Counter()
'''


class ServingTests(unittest.TestCase):
    """
    C{twistd -n ass} serving the real broker.
    """

    timeout = 60

    async def call_stage(self, service: str, method: str, inputs: list[Any]) -> list[Any]:
        """
        Call C{method} of C{service} once per input and return the results
        as they arrive.
        """
        broker = await support.connect(self)
        results = support.Results()
        client = broker.service(service).client()
        await client.react(callbacks(results, method))
        for value in inputs:
            await client.call(method, value)
        await results.wait_for(len(inputs))
        return results.values()

    async def test_echo_example(self) -> None:
        """
        When twistd serves examples.echo.Echo from the checkout, then a
        client in this process receives its result.
        """
        service = support.unique_name("tap-echo")
        support.remove_after(self, service)
        start_stage(self, service, "examples.echo.Echo")

        values = await self.call_stage(service, "foo", [42])

        self.assertEqual(values, [["server", "foo", 42]])

    async def serve_unknown_module(self, attribute: str | None) -> tuple[TwistdProcess, list[dict[str, Any]]]:
        """
        Write L{UNKNOWN_MODULE_SOURCE} under a fresh module name, serve
        C{attribute} of it (the module itself for L{None}) and call its
        C{double} twice, with 1 and 2.

        @return: The stage and the results, ordered by input.
        """
        directory = make_directory(self)
        module = f"tap_unknown_{uuid.uuid4().hex}"
        with open(os.path.join(directory, f"{module}.py"), "w") as f:
            f.write(UNKNOWN_MODULE_SOURCE)
        handler = module if attribute is None else f"{module}.{attribute}"
        service = support.unique_name("tap-unknown")
        support.remove_after(self, service)
        process = start_stage(self, service, handler, pythonpath=directory)

        values = await self.call_stage(service, "double", [1, 2])

        return process, sorted(values, key=lambda value: value["double"])

    async def test_unknown_class(self) -> None:
        """
        When the handler is a class of a module no other test imports, then the
        stage serves each request with a fresh instance.
        """
        process, values = await self.serve_unknown_module("Doubler")

        self.assertEqual([value["kind"] for value in values], ["class", "class"])
        self.assertEqual([value["double"] for value in values], [2, 4])
        self.assertEqual([value["calls"] for value in values], [1, 1])
        self.assertEqual({value["pid"] for value in values}, {process.pid})

    async def test_unknown_module(self) -> None:
        """
        When the handler is a module no other test imports, then the stage serves
        requests with its functions.
        """
        process, values = await self.serve_unknown_module(None)

        self.assertEqual([value["kind"] for value in values], ["module", "module"])
        self.assertEqual([value["double"] for value in values], [2, 4])
        self.assertEqual({value["pid"] for value in values}, {process.pid})

    async def test_unknown_mapping(self) -> None:
        """
        When the handler is a mapping of a module no other test imports, then the
        stage serves requests with its callables.
        """
        process, values = await self.serve_unknown_module("MAPPING")

        self.assertEqual([value["kind"] for value in values], ["mapping", "mapping"])
        self.assertEqual([value["double"] for value in values], [2, 4])
        self.assertEqual({value["pid"] for value in values}, {process.pid})

    async def test_unknown_object(self) -> None:
        """
        When the handler is an object of a module no other test imports, then the
        stage serves every request with that one object.
        """
        process, values = await self.serve_unknown_module("COUNTER")

        self.assertEqual([value["kind"] for value in values], ["object", "object"])
        self.assertEqual([value["double"] for value in values], [2, 4])
        self.assertEqual(sorted(value["calls"] for value in values), [1, 2])
        self.assertEqual({value["pid"] for value in values}, {process.pid})

    async def test_connection_refused(self) -> None:
        """
        When nothing listens at the broker address, then the stage exits
        non-zero with an error naming host and port, not the password.
        """
        process = start_stage(
            self,
            support.unique_name("tap-refused"),
            "examples.echo.Echo",
            "--broker",
            CLOSED_PORT_URL,
        )
        await process.wait_for_end(QUICK_EXIT)
        output = process.stdout + process.stderr

        self.assertNotEqual(process.exit_code, 0)
        self.assertRegex(output, r"127\.0\.0\.1:1\b")
        self.assertIn("connection refused", output)
        self.assertNotIn(PASSWORD, output)


class SharingStagesTests(unittest.TestCase):
    """
    Several C{twistd -n ass} processes serving one service.
    """

    timeout = 60

    async def test_two_stages_share_load(self) -> None:
        """
        When two stage processes serve one service, then both serve a share
        of the requests and every request gets one reply.
        """
        service = support.unique_name("tap-share")
        support.remove_after(self, service)
        stages = [
            start_stage(self, service, "tests.stages.pid.Pid", "--prefetch", "2"),
            start_stage(self, service, "tests.stages.pid.Pid", "--prefetch", "2"),
        ]
        channel = await support.raw_channel(self)
        # Declared as the stages declare it, so that polling it never fails.
        await channel.declare_queue(service, durable=True)

        async def consumers() -> int:
            _, count = await channel.declare_queue(service, passive=True)
            return count

        for _ in range(200):
            if await consumers() == 2:
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(await consumers(), 2)

        broker = await support.connect(self)
        results = support.Results()
        client = broker.service(service).client()
        await client.react(results)
        for number in range(40):
            await client.call("pid", number)
        await results.wait_for(40, seconds=30)

        pids = [value[0] for value in results.values()]
        self.assertEqual(sorted(value[1] for value in results.values()), list(range(40)))
        self.assertEqual(set(pids), {stage.pid for stage in stages})


class DaemonTests(unittest.TestCase):
    """
    C{twistd ass} without C{-n}: a daemon with a pid file and a log file.
    """

    timeout = 60

    async def test_daemon_lifecycle(self) -> None:
        """
        When the stage runs as a daemon, then it writes its pid file, serves
        a call, and on SIGTERM exits, removes the pid file and logs its
        start and stop.
        """
        service = support.unique_name("tap-daemon")
        support.remove_after(self, service)
        directory = make_directory(self)
        pidfile = os.path.join(directory, "twistd.pid")
        logfile = os.path.join(directory, "twistd.log")
        launcher = start_twistd(
            self,
            f"--pidfile={pidfile}",
            f"--logfile={logfile}",
            "ass",
            "--service",
            service,
            "--reactor",
            "examples.echo.Echo",
        )
        self.addCleanup(self.kill_daemon, pidfile, service)

        await launcher.wait_for_end()
        self.assertEqual(launcher.exit_code, 0, launcher.stderr)
        await wait_until(lambda: read_pid(pidfile) is not None, f"pid file {pidfile}")
        pid = read_pid(pidfile)
        assert pid is not None
        self.assertNotEqual(pid, launcher.pid)

        broker = await support.connect(self)
        results = support.Results()
        client = broker.service(service).client()
        await client.react(callbacks(results, "foo"))
        await client.call("foo", 42)
        await results.wait_for(1)
        self.assertEqual(results.values(), [["server", "foo", 42]])

        os.kill(pid, signal.SIGTERM)
        await wait_until(lambda: not process_exists(pid), f"daemon {pid} to exit")
        self.assertFalse(os.path.exists(pidfile))

        with open(logfile) as f:
            log = f.read()
        self.assertIn(f"serving {service} with handler class Echo", log)
        self.assertIn(f"SIGTERM received: draining {service}", log)
        self.assertIn(f"stopped serving {service}", log)

    def kill_daemon(self, pidfile: str, service: str) -> None:
        """
        Kill the daemon of C{service} if a failed test left it running.
        """
        pid = read_pid(pidfile)
        if pid is None or not process_exists(pid):
            return
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read()
        except OSError:
            return
        if service.encode() in command:
            os.kill(pid, signal.SIGKILL)


def read_pid(pidfile: str) -> int | None:
    try:
        with open(pidfile) as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


class ShutdownTests(unittest.TestCase):
    """
    What happens to requests in flight when a stage is stopped or killed.
    """

    timeout = 60

    async def start_client(self, service: str) -> tuple[txass.Broker, txass.Client, support.Results]:
        broker = await support.connect(self)
        results = support.Results()
        client = broker.service(service).client()
        await client.react(callbacks(results, "hold"))
        return broker, client, results

    async def hold(self, client: txass.Client, directory: str, labels: list[str]) -> None:
        """
        Send a C{hold} request for each label.
        """
        for label in labels:
            await client.call("hold", {"directory": directory, "label": label})

    async def wait_started(self, directory: str, labels: list[str]) -> None:
        """
        Wait until the handler has entered the request of each label.
        """
        await wait_until(
            lambda: all(os.path.exists(holding.started_file(directory, label)) for label in labels),
            f"requests {labels} to be in flight",
        )

    def release(self, directory: str) -> None:
        with open(os.path.join(directory, holding.RELEASE_FILE), "w"):
            pass

    async def test_sigterm_finishes_in_flight(self) -> None:
        """
        When SIGTERM arrives with requests in flight, then the stage replies
        to each of them, leaves none in the queue and exits with status 0.
        """
        service = support.unique_name("tap-drain")
        support.remove_after(self, service)
        directory = make_directory(self)
        process = start_stage(self, service, HOLDER)
        _, client, results = await self.start_client(service)
        in_flight = ["in-flight-0", "in-flight-1", "in-flight-2"]
        await self.hold(client, directory, in_flight)
        await self.wait_started(directory, in_flight)

        process.send_signal("TERM")
        await process.wait_for_output(f"stopping {service}: 3 requests in flight")
        self.release(directory)
        await process.wait_for_end()
        await results.wait_for(len(in_flight))
        values = results.values()

        self.assertEqual(process.exit_code, 0, process.stdout)
        self.assertEqual(sorted(value["label"] for value in values), in_flight)
        self.assertEqual({value["pid"] for value in values}, {process.pid})
        self.assertEqual({value["redelivered"] for value in values}, {False})
        self.assertEqual(await support.message_count(self, service), 0)

    async def test_sigterm_while_starting(self) -> None:
        """
        When SIGTERM arrives while the stage is still starting but has
        already taken a request, then the stage finishes starting, replies
        to that request and exits with status 0.
        """
        service = support.unique_name("tap-starting")
        support.remove_after(self, service)
        directory = make_directory(self)
        _, client, results = await self.start_client(service)
        # Queued before the stage starts, the request arrives right behind
        # the stage's first consume-ok, and the handler sends SIGTERM before
        # the stage's other consumer is set up.
        await client.call("hold", {"directory": directory, "label": "queued", "terminate": True})
        process = start_stage(self, service, HOLDER)

        await process.wait_for_output(f"stopping {service}: 1 requests in flight")
        self.release(directory)
        await process.wait_for_end()
        await results.wait_for(1)
        [value] = results.values()
        output = process.stdout

        self.assertEqual(process.exit_code, 0, output)
        self.assertLess(output.index("SIGTERM received: draining"), output.index(f"serving {service} with"), output)
        self.assertEqual((value["label"], value["pid"], value["redelivered"]), ("queued", process.pid, False))
        self.assertEqual(await support.message_count(self, service), 0)

    async def test_second_sigterm_while_draining(self) -> None:
        """
        When a second SIGTERM arrives while the stage drains, then it is
        logged as such, the drain goes on and the stage exits with status 0.
        """
        service = support.unique_name("tap-twice")
        support.remove_after(self, service)
        directory = make_directory(self)
        process = start_stage(self, service, HOLDER)
        _, client, results = await self.start_client(service)
        await self.hold(client, directory, ["held"])
        await self.wait_started(directory, ["held"])

        process.send_signal("TERM")
        await process.wait_for_output(f"stopping {service}: 1 requests in flight")
        process.send_signal("TERM")
        await process.wait_for_output("SIGTERM received again")
        self.release(directory)
        await process.wait_for_end()
        await results.wait_for(1)

        self.assertEqual(process.exit_code, 0, process.stdout)
        self.assertNotIn("ReactorNotRunning", process.stdout)
        self.assertNotIn("Traceback", process.stdout)

    async def test_sigterm_while_connecting(self) -> None:
        """
        When SIGTERM arrives while the stage is still connecting, then it
        exits with status 0 without blaming the broker.
        """
        accepted: defer.Deferred[None] = defer.Deferred()

        class Silent(protocol.Protocol):
            def connectionMade(self) -> None:
                if not accepted.called:
                    accepted.callback(None)

        port = reactor.listenTCP(0, protocol.Factory.forProtocol(Silent), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"amqp://guest:guest@127.0.0.1:{port.getHost().port}/%2F"
        service = support.unique_name("tap-connecting")
        process = start_stage(self, service, "examples.echo.Echo", "--broker", url)
        await support.within(accepted)
        await process.wait_for_output("Starting factory")

        process.send_signal("TERM")
        await process.wait_for_end()

        self.assertEqual(process.exit_code, 0, process.stdout)
        self.assertNotIn("cannot serve", process.stdout)
        self.assertIn("stopped before serving", process.stdout)

    async def test_sigterm_keeps_new_requests(self) -> None:
        """
        When requests arrive while a stage drains, then they wait in the
        queue and a second server serves them.
        """
        service = support.unique_name("tap-drain")
        support.remove_after(self, service)
        directory = make_directory(self)
        process = start_stage(self, service, HOLDER)
        broker, client, results = await self.start_client(service)
        await self.hold(client, directory, ["in-flight"])
        await self.wait_started(directory, ["in-flight"])

        process.send_signal("TERM")
        await process.wait_for_output(f"stopping {service}: 1 requests in flight")
        during_drain = ["during-drain-0", "during-drain-1"]
        await self.hold(client, directory, during_drain)
        self.release(directory)
        await process.wait_for_end()

        self.assertEqual(process.exit_code, 0, process.stdout)
        for label in during_drain:
            self.assertFalse(os.path.exists(holding.started_file(directory, label)), label)
        self.assertEqual(await support.message_count(self, service), len(during_drain))

        await broker.service(service).react(holding.Holder)
        await results.wait_for(1 + len(during_drain))
        served_by = sorted((value["label"], value["pid"]) for value in results.values())

        self.assertEqual(
            served_by,
            [("during-drain-0", os.getpid()), ("during-drain-1", os.getpid()), ("in-flight", process.pid)],
        )

    async def test_sigkill_redelivers(self) -> None:
        """
        When a stage is killed with a request in flight, then a second
        server receives that request marked as redelivered.
        """
        service = support.unique_name("tap-kill")
        support.remove_after(self, service)
        directory = make_directory(self)
        process = start_stage(self, service, HOLDER)
        broker, client, results = await self.start_client(service)
        await self.hold(client, directory, ["killed"])
        await self.wait_started(directory, ["killed"])

        process.send_signal("KILL")
        await process.wait_for_end()
        self.release(directory)
        await broker.service(service).react(holding.Holder)
        await results.wait_for(1)
        [value] = results.values()

        self.assertEqual(process.exit_signal, signal.SIGKILL)
        self.assertEqual(value["label"], "killed")
        self.assertEqual(value["pid"], os.getpid())
        self.assertIs(value["redelivered"], True)
        self.assertEqual(value["attempt"], 2)


class PoisonRequestTests(unittest.TestCase):
    """
    A request that ends its server process every time it is served.
    """

    timeout = 90

    async def test_crashing_request_dead_lettered(self) -> None:
        """
        When a request ends its stage's process on every attempt, then after
        the maximum number of attempts the next stage moves it to the
        dead-letter queue without serving it, replies with
        RequestDeadLettered, and keeps running.
        """
        service = support.unique_name("tap-poison")
        dead_letter_queue = f"{service}.dead-letter"
        support.remove_after(self, service, queues=[dead_letter_queue])
        broker = await support.connect(self)
        results = support.Results()
        client = broker.service(service).client()
        await client.react(callbacks(results, "crash"))
        await client.call("crash", None)

        for _ in range(2):
            crashed = start_stage(self, service, CRASHER, "--max-attempts", "2")
            await crashed.wait_for_end(QUICK_EXIT * 3)
            self.assertEqual(crashed.exit_code, crashing.CRASH_STATUS, crashed.stdout)
        survivor = start_stage(self, service, CRASHER, "--max-attempts", "2")
        await results.wait_for(1)
        [(_, value, _)] = results.received

        self.assertIsInstance(value, txass.RemoteError)
        self.assertEqual(value.type, "RequestDeadLettered")
        self.assertIn("did not finish in 2 of 2 attempts", value.message)
        self.assertEqual(await support.message_count(self, dead_letter_queue), 1)
        self.assertEqual(await support.message_count(self, service), 0)
        self.assertIsNone(survivor.status)
        await survivor.stop()
        self.assertEqual(survivor.exit_code, 0, survivor.stdout)

    async def test_crashing_request_spares_others(self) -> None:
        """
        When a request ends its stage's process every time, with other
        requests delivered beside it, then only it goes to the dead-letter
        queue: each of the others is served, at most once more than it
        would have been.
        """
        service = support.unique_name("tap-poison")
        dead_letter_queue = f"{service}.dead-letter"
        support.remove_after(self, service, queues=[dead_letter_queue, f"{service}.retry.1000"])
        broker = await support.connect(self)
        results = support.Results()
        client = broker.service(service).client()
        await client.react(callbacks(results, "crash", "slow"))
        await client.call("crash", None)
        innocent = 20
        for number in range(innocent):
            await client.call("slow", number)

        survivor = None
        for _ in range(6):
            stage = start_stage(self, service, CRASHER, "--max-attempts", "3", "--prefetch", "10")
            ended = stage.wait_for_end(QUICK_EXIT * 3)
            waiting = results.wait_for(innocent + 1, QUICK_EXIT * 3)
            await defer.DeferredList([ended, waiting], fireOnOneCallback=True, consumeErrors=True)
            if stage.status is None:
                survivor = stage
                break
            self.assertEqual(stage.exit_code, crashing.CRASH_STATUS, stage.stdout)
        self.assertIsNotNone(survivor, "the request kept ending every stage")
        await results.wait_for(innocent + 1)

        slow = [value for method, value, _ in results.received if method == "slow"]
        self.assertEqual([value for value in slow if isinstance(value, txass.RemoteError)], [])
        [dead] = [value for method, value, _ in results.received if method == "crash"]
        self.assertEqual(dead.type, "RequestDeadLettered")
        self.assertEqual(sorted(value["value"] for value in slow), list(range(innocent)))
        self.assertEqual(await support.message_count(self, dead_letter_queue), 1)
        assert survivor is not None
        await survivor.stop()
