"""
Measure txass RPC calls through C{broker.rpc(service).call}.

The service runs in another process (C{cases.txass_server}).  With
C{--concurrency 1} one call is in flight at a time.  With C{--concurrency
K}, K callers each make their next call as soon as their last one returned,
so K calls are in flight until the round's C{--count} calls have been made.
Each round reports calls per second and the 50th and 99th percentile of
the time from C{call()} to its result.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from twisted.internet import defer, task

import txass
from benchkit.rounds import Deadline, add_common_options, emit_result, latency_metrics, payload, round_log

CALL_TIMEOUT = 30.0


async def run_round(rpc: txass.RPCClient, count: int, concurrency: int, deadline: Deadline) -> dict[str, float]:
    latencies: list[float] = []
    next_index = 0

    async def caller() -> None:
        nonlocal next_index
        while next_index < count:
            data = payload(next_index)
            next_index += 1
            deadline.check("the round")
            sent = time.perf_counter()
            await rpc.call("echo", data, timeout=min(CALL_TIMEOUT, max(deadline.remaining(), 0.1)))
            latencies.append(time.perf_counter() - sent)

    started = time.perf_counter()
    callers = [defer.Deferred.fromCoroutine(caller()) for _ in range(concurrency)]
    try:
        await defer.gatherResults(callers, consumeErrors=True)
    except defer.FirstError as error:
        error.subFailure.raiseException()
    elapsed = time.perf_counter() - started
    return {"calls_per_s": count / elapsed, **latency_metrics(latencies)}


async def measure(reactor: Any, options: argparse.Namespace) -> None:
    deadline = Deadline(options.time_limit)
    log = round_log(options)
    broker = await txass.connect(options.url)
    try:
        rpc = broker.rpc(options.service)
        for concurrency in options.concurrency:
            case = "sequential" if concurrency == 1 else f"{concurrency} in flight"
            for index in log.indexes():
                log.record(case, index, await run_round(rpc, options.count, concurrency, deadline))
    finally:
        await broker.close()
    emit_result(log.result())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    add_common_options(parser)
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1], help="calls in flight; one case per value"
    )
    options = parser.parse_args()
    task.react(lambda reactor: defer.Deferred.fromCoroutine(measure(reactor, options)))


if __name__ == "__main__":
    main()
