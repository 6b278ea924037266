"""
Queue requests for a txass service that no server consumes yet.

Casts C{--count} requests of method C{noop}, with at most
L{PUBLISH_WINDOW} unconfirmed, and prints the cast rate.  The service's
exchange and queue are declared by the first cast.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from twisted.internet import defer, task

import txass
from benchkit.rounds import DEFAULT_URL, Deadline, emit_result, payload
from cases._twisted import PUBLISH_WINDOW, Window


async def fill(reactor: Any, options: argparse.Namespace) -> None:
    deadline = Deadline(options.time_limit)
    broker = await txass.connect(options.url)
    try:
        client = broker.service(options.service).client()
        window = Window(PUBLISH_WINDOW)
        started = time.perf_counter()
        for index in range(options.count):
            await window.acquire()
            window.track(client.cast("noop", payload(index)))
            deadline.check("queueing the backlog")
        await window.drain()
        elapsed = time.perf_counter() - started
    finally:
        await broker.close()
    emit_result({"casts_per_s": options.count / elapsed, "seconds": elapsed})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL, help="AMQP URI of the broker")
    parser.add_argument("--service", required=True, help="service to queue requests for")
    parser.add_argument("--count", type=int, required=True, help="requests to queue")
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds after which the worker gives up")
    options = parser.parse_args()
    task.react(lambda reactor: defer.Deferred.fromCoroutine(fill(reactor, options)))


if __name__ == "__main__":
    main()
