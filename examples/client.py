"""
The client of the txass walkthrough: call the echo service and print each
result as it arrives.

Start the echo server first, then run this from the checkout:

    twistd -n ass --service echo --reactor examples.echo.Echo
    python -m examples.client [--service NAME] [--key KEY] [--count N] [--broker URL] [--timeout SECONDS]

Give the server and the client the same service name.  With --service,
several users of one broker can each run the walkthrough under a name of
their own.

The exit status is 0 once every result of this run arrived, and 1 when the
connection fails, the service name or key is invalid, or the results do not
all arrive within the timeout.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from typing import Any

from twisted.internet import defer, task
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

import txass

DEFAULT_SERVICE = "echo"

# The data of the requests, taken in turn, so the first request is foo(42).
SAMPLE_DATA: list[Any] = [42, "hello", [1, 2, 3], {"answer": 42}]
METHODS = ["foo", "bar"]


class PrintResults:
    """
    The result handler: C{foo} and C{bar} receive the results of the
    requests of the same name.

    The client gets one instance, so that this one object receives every
    result and can tell when all results of this run have arrived.  Each
    request carries C{meta={"run": run_id}}, which comes back with its
    result, so the handler can recognize the results of an earlier run of a
    keyed client.

    Only C{foo} and C{bar} are marked with C{@txass.expose}, so the client
    logs and drops a result of any other method, such as C{missing}, instead
    of passing it to that method.
    """

    def __init__(self, run_id: str, expected: int) -> None:
        self._run_id = run_id
        self._expected = expected
        self._arrived: set[str | None] = set()
        self.all_arrived: defer.Deferred[None] = defer.Deferred()

    @txass.expose
    def foo(self, result: Any) -> None:
        self._show(result)

    @txass.expose
    def bar(self, result: Any) -> None:
        self._show(result)

    def _show(self, result: Any) -> None:
        request = txass.current_request()
        if isinstance(result, txass.RemoteError):
            text = f"error {result.type}: {result.message}"
        else:
            text = repr(result)
        if request.meta.get("run") != self._run_id:
            print(f"{request.method} {request.correlation_id} -> {text} (earlier run)", flush=True)
            return
        print(f"{request.method} {request.correlation_id} -> {text}", flush=True)
        # A set, because a redelivered request (after a server crashed or
        # ran out of grace period) can yield two results with one id.
        self._arrived.add(request.correlation_id)
        if len(self._arrived) >= self._expected and not self.all_arrived.called:
            self.all_arrived.callback(None)

    def missing(self) -> int:
        return self._expected - len(self._arrived)


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.client",
        description="Call the echo service and print each result as it arrives.",
    )
    parser.add_argument(
        "--service",
        default=DEFAULT_SERVICE,
        metavar="NAME",
        help="name of the service to call, served by examples.echo.Echo (default: echo)",
    )
    parser.add_argument(
        "--key",
        help="client key: results go to the durable queue NAME.client.KEY and wait there "
        "while this client is down (default: a temporary queue deleted on exit)",
    )
    parser.add_argument("--count", type=int, default=4, help="number of requests to send (default: 4)")
    parser.add_argument(
        "--broker",
        help="AMQP URI of the broker (default: $TXASS_BROKER_URL, else amqp://guest:guest@localhost:5672/%%2F)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds to wait for all results before exiting with status 1 (default: 30)",
    )
    arguments = parser.parse_args(argv)
    if arguments.count < 1:
        parser.error(f"--count must be at least 1, not {arguments.count}")
    if arguments.timeout <= 0:
        parser.error(f"--timeout must be a positive number of seconds, not {arguments.timeout:g}")
    return arguments


def log_warnings_to_stderr() -> None:
    """
    Show the warnings and errors txass logs, such as a result dropped
    because the handler has no method for it.
    """
    warnings = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr), [warnings])],
        redirectStandardIO=False,
    )


async def main(reactor: Any, argv: list[str]) -> None:
    arguments = parse_arguments(argv)
    log_warnings_to_stderr()
    run_id = uuid.uuid4().hex
    results = PrintResults(run_id, arguments.count)

    try:
        broker = await txass.connect(arguments.broker, reactor=reactor)
    except txass.TxassError as e:
        print(f"examples.client: {e}", file=sys.stderr)
        raise SystemExit(1)

    try:
        client = broker.service(arguments.service).client(key=arguments.key)
        await client.react(results)
        print(f"results go to queue {client.queue}", flush=True)

        for i in range(arguments.count):
            method = METHODS[i % len(METHODS)]
            data = SAMPLE_DATA[i % len(SAMPLE_DATA)]
            # call() fires once the broker has stored the request, not when
            # the result arrives: the result goes to results.foo or bar.
            correlation_id = await client.call(method, data, meta={"run": run_id})
            print(f"sent {method}({data!r}) as {correlation_id}", flush=True)

        try:
            await results.all_arrived.addTimeout(arguments.timeout, reactor)
        except defer.TimeoutError:
            print(
                f"examples.client: timed out after {arguments.timeout:g} s: "
                f"{results.missing()} of {arguments.count} results missing; "
                f"is a server of {arguments.service!r} running?",
                file=sys.stderr,
            )
            raise SystemExit(1)
    except txass.TxassError as e:
        print(f"examples.client: {e}", file=sys.stderr)
        raise SystemExit(1)
    finally:
        await broker.close()


if __name__ == "__main__":
    task.react(main, [sys.argv[1:]])
