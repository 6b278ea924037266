"""
An aio-pika C{JsonRPC} client calling the method C{--service}.

With C{--concurrency K}, K tasks each make their next call as soon as their
last one returned, so K calls are in flight until the round's C{--count}
calls have been made.  Each round reports calls per second and the 50th
and 99th percentile of the time from C{call()} to its result.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import aio_pika
from aio_pika.patterns import RPC, JsonRPC

from benchkit.rounds import Deadline, RoundTimeout, add_common_options, emit_result, latency_metrics, payload, round_log


async def run_round(rpc: RPC, method: str, count: int, concurrency: int, deadline: Deadline) -> dict[str, float]:
    latencies: list[float] = []
    next_index = 0

    async def caller() -> None:
        nonlocal next_index
        while next_index < count:
            data = payload(next_index)
            next_index += 1
            sent = time.perf_counter()
            await rpc.call(method, kwargs={"data": data})
            latencies.append(time.perf_counter() - sent)

    started = time.perf_counter()
    try:
        await asyncio.wait_for(asyncio.gather(*(caller() for _ in range(concurrency))), deadline.remaining())
    except asyncio.TimeoutError:
        raise RoundTimeout(f"{len(latencies)} of {count} calls finished within the time limit") from None
    elapsed = time.perf_counter() - started
    return {"calls_per_s": count / elapsed, **latency_metrics(latencies)}


async def measure(options: argparse.Namespace) -> None:
    deadline = Deadline(options.time_limit)
    log = round_log(options)
    connection = await aio_pika.connect(options.url)
    async with connection:
        channel = await connection.channel()
        rpc = await JsonRPC.create(channel)
        for concurrency in options.concurrency:
            case = "sequential" if concurrency == 1 else f"{concurrency} in flight"
            for index in log.indexes():
                log.record(case, index, await run_round(rpc, options.service, options.count, concurrency, deadline))
        await rpc.close()
    log.queues.append(options.service)
    emit_result(log.result())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    add_common_options(parser)
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1], help="calls in flight; one case per value"
    )
    options = parser.parse_args()
    asyncio.run(measure(options))


if __name__ == "__main__":
    main()
