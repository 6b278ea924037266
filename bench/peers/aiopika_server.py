"""
An aio-pika C{JsonRPC} server whose method C{--service} returns its data.

Its channel has prefetch 100 and aio-pika's default publisher confirms.
The method's queue is named after the service and deleted automatically
when the server stops.  It prints C{{"event": "ready"}} once it consumes,
and runs until it is terminated.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import aio_pika
from aio_pika.patterns import JsonRPC

from benchkit.rounds import DEFAULT_URL, emit_event

PREFETCH = 100


async def echo(*, data: Any) -> Any:
    return data


async def serve(options: argparse.Namespace) -> None:
    connection = await aio_pika.connect(options.url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        rpc = await JsonRPC.create(channel)
        await rpc.register(options.service, echo, auto_delete=True)
        emit_event("ready")
        await asyncio.Future()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL, help="AMQP URI of the broker")
    parser.add_argument("--service", required=True, help="method name, and name of its queue")
    options = parser.parse_args()
    asyncio.run(serve(options))


if __name__ == "__main__":
    main()
