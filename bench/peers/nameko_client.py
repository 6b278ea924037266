"""
A nameko C{ClusterRpcProxy} calling the C{echo} method of C{--service}.

One call at a time for C{--concurrency 1}.  With C{--concurrency K}, the
client starts K calls with C{call_async}, then waits for the oldest
outstanding reply and starts the next call, so K stay outstanding until the
round's C{--count} calls have been made.  Latency runs from starting a call
to collecting its reply, so a reply that arrived early is counted when its
turn in that queue comes.
"""

from __future__ import annotations

import eventlet

eventlet.monkey_patch()

import argparse  # noqa: E402  (eventlet must patch the standard library first)
import collections  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from nameko.standalone.rpc import ClusterRpcProxy  # noqa: E402

from benchkit.rounds import (  # noqa: E402
    Deadline,
    add_common_options,
    emit_result,
    latency_metrics,
    payload,
    round_log,
)

CALL_TIMEOUT = 30.0


class BenchProxy(ClusterRpcProxy):  # type: ignore[misc]
    """
    A cluster proxy whose reply queue name carries the benchmark's names.
    """

    class ServiceContainer(ClusterRpcProxy.ServiceContainer):  # type: ignore[misc]
        service_name = "standalone_rpc_proxy"


def run_round(service: Any, count: int, concurrency: int, deadline: Deadline) -> dict[str, float]:
    latencies: list[float] = []
    started = time.perf_counter()
    if concurrency == 1:
        for index in range(count):
            deadline.check("the round")
            sent = time.perf_counter()
            service.echo(payload(index))
            latencies.append(time.perf_counter() - sent)
    else:
        outstanding: collections.deque[tuple[float, Any]] = collections.deque()
        issued = 0
        while len(latencies) < count:
            deadline.check("the round")
            while issued < count and len(outstanding) < concurrency:
                outstanding.append((time.perf_counter(), service.echo.call_async(payload(issued))))
                issued += 1
            sent, reply = outstanding.popleft()
            reply.result()
            latencies.append(time.perf_counter() - sent)
    elapsed = time.perf_counter() - started
    return {"calls_per_s": count / elapsed, **latency_metrics(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    add_common_options(parser)
    parser.add_argument("--exchange", required=True, help="RPC exchange name")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1], help="calls in flight; one case per value"
    )
    options = parser.parse_args()
    deadline = Deadline(options.time_limit)
    log = round_log(options)
    BenchProxy.ServiceContainer.service_name = f"{options.service}-caller"
    config = {"AMQP_URI": options.url, "rpc_exchange": options.exchange}
    proxy = BenchProxy(config, timeout=CALL_TIMEOUT)
    cluster = proxy.start()
    try:
        reply_queue = proxy._reply_listener.queue.name
        log.queues.extend([f"rpc-{options.service}", reply_queue])
        log.exchanges.append(options.exchange)
        service = cluster[options.service]
        for concurrency in options.concurrency:
            case = "sequential" if concurrency == 1 else f"{concurrency} in flight"
            for index in log.indexes():
                log.record(case, index, run_round(service, options.count, concurrency, deadline))
    finally:
        proxy.stop()
    emit_result(log.result())


if __name__ == "__main__":
    main()
