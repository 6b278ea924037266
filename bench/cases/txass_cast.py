"""
Measure txass casts end to end: this process casts, and a txass server in
another process handles.

Each round casts C{--count} requests with at most L{PUBLISH_WINDOW} of them
unconfirmed (the Deferred of C{Client.cast} fires on the broker's confirm).
The server (C{cases.txass_server} with C{--prefetch 100} and
C{--report-every COUNT}) runs a handler that does nothing, and the driver
copies its reports to this process's standard input.  The rate counts
from the first cast to the moment the server's handler has run for the
last request of the round.
"""

from __future__ import annotations

import argparse
from typing import Any

from twisted.internet import defer, task

import txass
from benchkit.rounds import Deadline, add_common_options, emit_result, payload, round_log
from cases._twisted import PUBLISH_WINDOW, Window, end_to_end_rounds


async def measure(reactor: Any, options: argparse.Namespace) -> None:
    deadline = Deadline(options.time_limit)
    log = round_log(options)
    broker = await txass.connect(options.url)
    log.queues.append(options.service)
    log.exchanges.append(options.service)
    try:
        client = broker.service(options.service).client()
        data = [payload(number) for number in range(options.count)]

        async def cast_round() -> None:
            window = Window(PUBLISH_WINDOW)
            for item in data:
                await window.acquire()
                window.track(client.cast("noop", item))
            await window.drain()

        await end_to_end_rounds(reactor, log, options.count, deadline, cast_round)
    finally:
        await broker.close()
    emit_result(log.result())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    add_common_options(parser)
    options = parser.parse_args()
    task.react(lambda reactor: defer.Deferred.fromCoroutine(measure(reactor, options)))


if __name__ == "__main__":
    main()
