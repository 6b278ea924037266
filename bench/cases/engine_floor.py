"""
Measure pika's Twisted adapter alone: the ceiling for any library on it.

Each round publishes C{--count} persistent JSON messages of about 100 bytes
to a durable queue, with publisher confirms and at most
L{PUBLISH_WINDOW} unconfirmed, and then consumes them with prefetch 100,
decoding each body and acknowledging each message on its own.  The publish
rate counts from the first publish to the last confirm, and the consume
rate from C{basic.consume} to the last acknowledgement.  Publisher and
consumer use a connection each.

C{cases.engine_publisher} and C{cases.engine_consumer} do the same work in
two processes at once.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from typing import Any

import pika
from pika.adapters.twisted_connection import TwistedChannel, TwistedProtocolConnection
from twisted.internet import defer, protocol, task

from benchkit.rounds import Deadline, RoundLog, add_common_options, emit_result, encoded_payload, round_log
from cases._twisted import PUBLISH_WINDOW, Window

PREFETCH = 100


async def open_connection(reactor: Any, url: str) -> TwistedProtocolConnection:
    parameters = pika.URLParameters(url)
    creator = protocol.ClientCreator(reactor, TwistedProtocolConnection, parameters)
    connection: TwistedProtocolConnection = await creator.connectTCP(parameters.host, parameters.port)
    await connection.ready
    return connection


async def publish_bodies(channel: TwistedChannel, queue: str, bodies: list[bytes], deadline: Deadline) -> None:
    """
    Publish C{bodies} as persistent messages, with at most
    L{PUBLISH_WINDOW} unconfirmed, and wait for their confirms.
    """
    window = Window(PUBLISH_WINDOW)
    for body in bodies:
        await window.acquire()
        properties = pika.BasicProperties(
            content_type="application/json", delivery_mode=2, message_id=uuid.uuid4().hex
        )
        window.track(channel.basic_publish("", queue, body, properties))
        deadline.check("publishing")
    await window.drain()


async def publish_round(channel: TwistedChannel, queue: str, count: int, deadline: Deadline) -> float:
    """
    Publish C{count} messages and wait for their confirms; return seconds.
    """
    bodies = [encoded_payload(index) for index in range(count)]
    started = time.perf_counter()
    await publish_bodies(channel, queue, bodies, deadline)
    return time.perf_counter() - started


async def consume_round(channel: TwistedChannel, queue: str, count: int, deadline: Deadline) -> float:
    """
    Consume and acknowledge C{count} messages; return seconds.
    """
    started = time.perf_counter()
    messages, consumer_tag = await channel.basic_consume(queue=queue, auto_ack=False)
    for _ in range(count):
        message = await messages.get()
        json.loads(message.body)
        channel.basic_ack(message.method.delivery_tag)
        deadline.check("consuming")
    elapsed = time.perf_counter() - started
    await channel.basic_cancel(consumer_tag)
    return elapsed


async def measure(reactor: Any, options: argparse.Namespace) -> None:
    deadline = Deadline(options.time_limit)
    log: RoundLog = round_log(options)
    queue = options.service
    publisher = await open_connection(reactor, options.url)
    consumer = await open_connection(reactor, options.url)
    try:
        publish_channel = await publisher.channel()
        await publish_channel.queue_declare(queue=queue, durable=True)
        log.queues.append(queue)
        await publish_channel.confirm_delivery()
        consume_channel = await consumer.channel()
        await consume_channel.basic_qos(prefetch_count=PREFETCH)
        for index in log.indexes():
            published = await publish_round(publish_channel, queue, options.count, deadline)
            consumed = await consume_round(consume_channel, queue, options.count, deadline)
            log.record(
                "",
                index,
                {
                    "publish_per_s": options.count / published,
                    "consume_per_s": options.count / consumed,
                },
            )
        await publish_channel.queue_delete(queue=queue)
    finally:
        for connection in (publisher, consumer):
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
