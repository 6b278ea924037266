"""
Publish with pika's Twisted adapter alone while C{cases.engine_consumer}
consumes in another process: the engine floor's end-to-end case.

Each round publishes C{--count} persistent JSON messages of about 100 bytes
to the durable queue C{--service}, with publisher confirms and at most
L{PUBLISH_WINDOW} unconfirmed, as the engine floor's publish rounds do.
The driver copies the consumer's reports to this process's standard input.
The rate counts from the first publish to the moment the consumer has
acknowledged the last message of the round.
"""

from __future__ import annotations

import argparse
from typing import Any

from twisted.internet import defer, task

from benchkit.rounds import Deadline, add_common_options, emit_result, encoded_payload, round_log
from cases._twisted import end_to_end_rounds
from cases.engine_floor import open_connection, publish_bodies


async def measure(reactor: Any, options: argparse.Namespace) -> None:
    deadline = Deadline(options.time_limit)
    log = round_log(options)
    queue = options.service
    connection = await open_connection(reactor, options.url)
    try:
        channel = await connection.channel()
        await channel.queue_declare(queue=queue, durable=True)
        log.queues.append(queue)
        await channel.confirm_delivery()
        bodies = [encoded_payload(index) for index in range(options.count)]

        async def publish_round() -> None:
            await publish_bodies(channel, queue, bodies, deadline)

        await end_to_end_rounds(reactor, log, options.count, deadline, publish_round)
    finally:
        closed = connection.close()
        if closed is not None:
            await closed
    emit_result(log.result())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    add_common_options(parser)
    options = parser.parse_args()
    task.react(lambda reactor: defer.Deferred.fromCoroutine(measure(reactor, options)))


if __name__ == "__main__":
    main()
