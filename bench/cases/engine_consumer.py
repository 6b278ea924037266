"""
Consume with pika's Twisted adapter alone, in a process of its own, until
SIGTERM: the consumer half of the engine floor's end-to-end case.

It declares the durable queue C{--service}, consumes it with prefetch 100,
and decodes and acknowledges each message on its own, as the engine floor's
consume rounds do.  It prints JSON events on standard output: C{ready} once
it consumes, and C{handled} each time the messages acknowledged in all
reach a multiple of C{--report-every}, with the L{shared_clock} time of the
last one.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import pika.exceptions
from twisted.internet import defer, task

from benchkit.rounds import DEFAULT_URL, emit_event, shared_clock
from cases.engine_floor import PREFETCH, open_connection


async def consume(reactor: Any, options: argparse.Namespace) -> None:
    connection = await open_connection(reactor, options.url)
    stopping = False

    def stop() -> defer.Deferred[Any] | None:
        # Runs before the reactor stops on SIGTERM or SIGINT.
        nonlocal stopping
        stopping = True
        closed: defer.Deferred[Any] | None = connection.close()
        return closed

    reactor.addSystemEventTrigger("before", "shutdown", stop)
    channel = await connection.channel()
    await channel.queue_declare(queue=options.service, durable=True)
    await channel.basic_qos(prefetch_count=PREFETCH)
    messages, _ = await channel.basic_consume(queue=options.service, auto_ack=False)
    emit_event("ready")
    handled = 0
    while True:
        try:
            message = await messages.get()
        except pika.exceptions.AMQPError:
            # Closing the connection at shutdown fails the pending get.
            if stopping:
                return
            raise
        json.loads(message.body)
        channel.basic_ack(message.method.delivery_tag)
        handled += 1
        if handled % options.report_every == 0:
            emit_event("handled", handled=handled, at=shared_clock())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL, help="AMQP URI of the broker")
    parser.add_argument("--service", required=True, help="queue to declare and consume")
    parser.add_argument(
        "--report-every",
        type=int,
        required=True,
        metavar="N",
        help="print a handled event each time the messages handled reach a multiple of N",
    )
    options = parser.parse_args()
    if options.report_every < 1:
        parser.error(f"--report-every must be at least 1, not {options.report_every}")
    task.react(lambda reactor: defer.Deferred.fromCoroutine(consume(reactor, options)))


if __name__ == "__main__":
    main()
