"""
Measure txass casts end to end: a client casts, a server in the same
process handles.

Each round casts C{--count} requests with at most L{PUBLISH_WINDOW} of them
unconfirmed (the Deferred of C{Client.cast} fires on the broker's confirm),
to a server with prefetch 100 whose handler does nothing.  Client and
server use a connection each.  The rate counts from the first cast to the
moment the server's handler has run for the last request.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from twisted.internet import defer, task

import txass
from benchkit.rounds import Deadline, RoundTimeout, add_common_options, emit_result, payload, round_log
from cases._twisted import PUBLISH_WINDOW, Window

PREFETCH = 100


class Counter:
    """
    The server's handler: counts requests and fires C{done} at a target.
    """

    def __init__(self) -> None:
        self.handled = 0
        self.target = 0
        self.done: defer.Deferred[float] = defer.Deferred()

    def expect(self, target: int) -> defer.Deferred[float]:
        self.handled = 0
        self.target = target
        self.done = defer.Deferred()
        return self.done

    def noop(self, data: Any) -> None:
        self.handled += 1
        if self.handled == self.target:
            self.done.callback(time.perf_counter())


async def measure(reactor: Any, options: argparse.Namespace) -> None:
    deadline = Deadline(options.time_limit)
    log = round_log(options)
    counter = Counter()
    server_broker = await txass.connect(options.url)
    client_broker = await txass.connect(options.url)
    log.queues.append(options.service)
    log.exchanges.append(options.service)
    try:
        await server_broker.service(options.service).react(counter, prefetch=PREFETCH)
        client = client_broker.service(options.service).client()
        for index in log.indexes():
            data = [payload(number) for number in range(options.count)]
            handled = counter.expect(options.count)
            timeout = reactor.callLater(deadline.remaining(), handled.cancel)
            window = Window(PUBLISH_WINDOW)
            started = time.perf_counter()
            for item in data:
                await window.acquire()
                window.track(client.cast("noop", item))
            await window.drain()
            confirmed = time.perf_counter()
            try:
                finished = await handled
            except defer.CancelledError:
                raise RoundTimeout(f"the server did not handle {options.count} casts within the time limit")
            timeout.cancel()
            log.record(
                "",
                index,
                {
                    "requests_per_s": options.count / (finished - started),
                    "confirmed_per_s": options.count / (confirmed - started),
                },
            )
    finally:
        await client_broker.close()
        await server_broker.close()
    emit_result(log.result())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    add_common_options(parser)
    options = parser.parse_args()
    task.react(lambda reactor: defer.Deferred.fromCoroutine(measure(reactor, options)))


if __name__ == "__main__":
    main()
