"""
The client of a hand-rolled RPC pair on pika's BlockingConnection.

Replies come through RabbitMQ's direct reply-to, matched to requests by
correlation id.  With C{--concurrency K} the client publishes K requests,
then publishes the next one each time a reply arrives, so K stay
outstanding until the round's C{--count} calls have been made; K = 1 is
one call at a time.  Each round reports calls per second and the 50th and
99th percentile of the time from publishing a request to its reply.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel

from benchkit.rounds import Deadline, add_common_options, emit_result, encoded_payload, latency_metrics, round_log

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"

# The maximum seconds one wait for replies blocks before the deadline is
# checked again.
POLL_SECONDS = 0.5


class Caller:
    """
    Publishes requests and matches their replies by correlation id.
    """

    def __init__(self, connection: pika.BlockingConnection, queue: str) -> None:
        self.connection = connection
        self.queue = queue
        self.channel = connection.channel()
        self.channel.basic_consume(queue=DIRECT_REPLY_TO, on_message_callback=self._on_reply, auto_ack=True)
        self.sent_at: dict[str, float] = {}
        self.latencies: list[float] = []
        self.count = 0
        self.issued = 0

    def _send(self) -> None:
        correlation_id = uuid.uuid4().hex
        body = encoded_payload(self.issued)
        self.issued += 1
        self.sent_at[correlation_id] = time.perf_counter()
        self.channel.basic_publish(
            exchange="",
            routing_key=self.queue,
            body=body,
            properties=pika.BasicProperties(
                content_type="application/json", correlation_id=correlation_id, reply_to=DIRECT_REPLY_TO
            ),
        )

    def _on_reply(self, channel: BlockingChannel, method: Any, properties: pika.BasicProperties, body: bytes) -> None:
        sent = self.sent_at.pop(properties.correlation_id, None)
        if sent is None:
            return
        json.loads(body)
        self.latencies.append(time.perf_counter() - sent)
        if self.issued < self.count:
            self._send()

    def run_round(self, count: int, concurrency: int, deadline: Deadline) -> dict[str, float]:
        self.count = count
        self.issued = 0
        self.latencies = []
        started = time.perf_counter()
        for _ in range(min(concurrency, count)):
            self._send()
        while len(self.latencies) < count:
            deadline.check("the round")
            self.connection.process_data_events(time_limit=min(POLL_SECONDS, deadline.remaining()))
        elapsed = time.perf_counter() - started
        return {"calls_per_s": count / elapsed, **latency_metrics(self.latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    add_common_options(parser)
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1], help="calls in flight; one case per value"
    )
    options = parser.parse_args()
    deadline = Deadline(options.time_limit)
    log = round_log(options)
    connection = pika.BlockingConnection(pika.URLParameters(options.url))
    try:
        caller = Caller(connection, options.service)
        for concurrency in options.concurrency:
            case = "sequential" if concurrency == 1 else f"{concurrency} in flight"
            for index in log.indexes():
                log.record(case, index, caller.run_round(options.count, concurrency, deadline))
    finally:
        connection.close()
    log.queues.append(options.service)
    emit_result(log.result())


if __name__ == "__main__":
    main()
