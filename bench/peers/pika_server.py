"""
The server of a hand-rolled RPC pair on pika's BlockingConnection.

It consumes a queue with prefetch 100, decodes each JSON request, publishes
the same data as the reply to the request's C{reply_to} with its
correlation id, and acknowledges the request.  It prints C{{"event":
"ready"}} once it consumes, and runs until it is terminated.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel

from benchkit.rounds import DEFAULT_URL, emit_event

PREFETCH = 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL, help="AMQP URI of the broker")
    parser.add_argument("--service", required=True, help="queue to serve")
    options = parser.parse_args()

    connection = pika.BlockingConnection(pika.URLParameters(options.url))
    channel = connection.channel()
    channel.queue_declare(queue=options.service)
    channel.basic_qos(prefetch_count=PREFETCH)

    def on_request(channel: BlockingChannel, method: Any, properties: pika.BasicProperties, body: bytes) -> None:
        data = json.loads(body)
        reply = json.dumps(data, separators=(",", ":")).encode()
        channel.basic_publish(
            exchange="",
            routing_key=properties.reply_to,
            body=reply,
            properties=pika.BasicProperties(
                content_type="application/json", correlation_id=properties.correlation_id
            ),
        )
        channel.basic_ack(method.delivery_tag)

    channel.basic_consume(queue=options.service, on_message_callback=on_request)
    emit_event("ready")
    channel.start_consuming()


if __name__ == "__main__":
    main()
